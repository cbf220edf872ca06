#!/usr/bin/env python3
"""Records what transformers + PEFT do with graft's default real model, for graft's Rust tests.

Pinned versions (asserted at start)
    torch 2.5.1, transformers 4.57.1, peft 0.21.2, gguf 0.19.0 (plus safetensors, numpy). CPU, float32.

How to run (from the repository root)
    scripts/fetch_default_model.sh                    # models/SmolLM2-135M-Instruct.Q4_1.gguf (git-ignored)
    python scripts/make_real_references.py            # about a minute or two on 2 CPU cores

    Reads the GGUF (dequantized to f32 by transformers' GGUF loader), the tokenizer transformers builds
    from the GGUF, and the committed adapter adapters/smollm2-pirate/ (see scripts/make_demo_adapter.py).
    Rewrites these files in tests/fixtures/real/ (its README.md is hand-written) and nothing else:

    generation.json           3 chat prompts: the templated prompt text and ids, and PEFT's greedy
                              generate() (KV cache) of exactly 24 new tokens with the adapter and with
                              it disabled (PeftModel.disable_adapter()): ids, text, the step where EOS
                              (<|im_end|>, id 2) would have stopped it, and per step the two largest
                              logits and their gap. Each run is re-checked by a no-cache greedy loop.
    logits.safetensors        f32 [vocab] prefill logits of the last prompt position for prompt 0,
                              keys "with_adapter" and "without_adapter".
    tokenizer_cases.json      strings -> ids (add_special_tokens=False) and decodes, plus the
                              tokenizer's special-token facts. Also the ids under SmolLM2's own
                              pre-tokenizer (see "ids_smollm_pretokenizer" below).
    chat_template_cases.json  conversations -> apply_chat_template(tokenize=False) strings (and ids),
                              plus the raw tokenizer.chat_template string from the GGUF metadata.
    tokenizer.json            tokenizer.save_pretrained()'s tokenizer.json of the GGUF-built tokenizer.

Facts about transformers 4.57.1's GGUF tokenizer for this file (recorded in tokenizer_cases.json):
    it is a LlamaTokenizerFast built by GGUFLlamaConverter in its "llama-3" mode (tokenizer.ggml.model
    is gpt2): BPE with byte_fallback, pre-tokenizer ByteLevel(add_prefix_space=False, use_regex=True),
    i.e. the plain GPT-2 regex; the GGUF's pre-type "smollm" (split every \\p{N} first) is ignored.
    Its post-processor prepends bos by default and both bos_token and eos_token come out as
    <|im_start|> (id 1), although the GGUF says add_bos_token=false and eos_token_id=2. The prompt ids
    below are therefore always made with add_special_tokens=False (as apply_chat_template does).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm2_common as common  # noqa: E402

common.reexec_with_fixed_hashseed()

import copy  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

OUT_DIR = os.path.join(common.REPO_ROOT, "tests", "fixtures", "real")
NEW_TOKENS = 24
FORMAT_VERSION = 1
GENERATED = ["generation.json", "logits.safetensors", "tokenizer_cases.json", "chat_template_cases.json",
             "tokenizer.json"]  # README.md in OUT_DIR is hand-written and left alone

PROMPTS = [
    "What is the capital of France?",
    "How do I boil an egg?",
    "Name three colors.",
]

TOKENIZER_STRINGS = [
    "",
    "Hello world",
    "Hello, world!",
    " Hello",
    "  leading two spaces",
    "trailing space ",
    "multiple   spaces   between",
    "line one\nline two",
    "blank lines\n\n\nafter",
    "tab\tseparated\tvalues",
    "\t\tindented with tabs",
    "12345",
    "3.14",
    "The year 2024 had 366 days.",
    "a  1",
    "x =  42",
    "Total:   1000000",
    "\n  12",
    "½ cup and x² + y²",
    "don't, can't, it's, we're, I'll, they've, I'd",
    "DON'T SHOUT",
    "Punctuation!?... (parentheses) [brackets] {braces} \"quotes\" 'single'",
    "email@example.com https://huggingface.co/HuggingFaceTB",
    "café naïve résumé",
    "Straße Øre Ångström",
    "Привет, мир!",
    "東京は日本の首都です。",
    "你好，世界",
    "안녕하세요",
    "مرحبا بالعالم",
    "😀🎉👍🏽",
    "I ❤️ Rust 🦀!",
    "def add(a, b):\n    return a + b\n",
    "fn main() { println!(\"hi\"); }",
    "<|im_start|>user\nHi<|im_end|>\n",
    "text<|im_end|>more",
    "<|endoftext|>",
    "<|im_start|>",
    "▁sentencepiece▁marker",
    "<0x41> looks like a byte token",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "Arr, matey! Yo ho ho!",
]

CHAT_CASES = [
    {"name": "single_user_no_system_gen", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"name": "single_user_no_system_nogen", "add_generation_prompt": False,
     "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"name": "system_and_user_gen", "add_generation_prompt": True,
     "messages": [{"role": "system", "content": "You are a pirate."},
                  {"role": "user", "content": "Hello!"}]},
    {"name": "multi_turn_gen", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello! How can I help?"},
                  {"role": "user", "content": "Tell me a joke."}]},
    {"name": "multi_turn_with_system_nogen", "add_generation_prompt": False,
     "messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"name": "multiline_unicode_content_gen", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": "Translate:\n  café 東京 😀\n\tdone"}]},
    {"name": "empty_user_content_gen", "add_generation_prompt": True,
     "messages": [{"role": "user", "content": ""}]},
]


def top2(logits_row):
    vals, idx = torch.topk(logits_row.float(), 2)
    return {"top1_id": int(idx[0]), "top1_logit": float(vals[0]), "top2_id": int(idx[1]),
            "top2_logit": float(vals[1]), "gap": float(vals[0] - vals[1])}


def greedy_generate(model, ids, pad_id):
    """PEFT's generate(): greedy, KV cache, exactly NEW_TOKENS tokens (no EOS stop)."""
    gc = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=0, eos_token_id=None,
                          pad_token_id=pad_id, bos_token_id=None, num_beams=1, use_cache=True,
                          output_logits=True, return_dict_in_generate=True)
    input_ids = torch.tensor([ids])
    # generate() refills a missing eos_token_id from the model's own generation_config (eos 2 from the
    # GGUF); blank it there for the call so that all NEW_TOKENS argmax tokens are produced.
    inner = model.get_base_model()
    saved = inner.generation_config.eos_token_id
    inner.generation_config.eos_token_id = None
    try:
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 generation_config=gc, use_model_defaults=False)
    finally:
        inner.generation_config.eos_token_id = saved
    new = out.sequences[0, len(ids):].tolist()
    assert len(new) == NEW_TOKENS, len(new)
    steps = [top2(l[0]) for l in out.logits]
    assert [s["top1_id"] for s in steps] == new
    return new, steps, out.logits[0][0].clone()


def greedy_nocache(model, ids):
    """Independent check: full recompute (no cache) argmax at every step."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            seq.append(int(torch.argmax(logits)))
    return seq[len(ids):]


def main():
    versions = common.check_versions()
    torch.manual_seed(0)
    t_start = time.time()
    tokenizer = common.load_tokenizer()
    base = common.load_base_model()
    model = PeftModel.from_pretrained(base, common.ADAPTER_DIR)
    model.eval()
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos_id == 2

    os.makedirs(OUT_DIR, exist_ok=True)
    for name in GENERATED:
        if os.path.exists(os.path.join(OUT_DIR, name)):
            os.remove(os.path.join(OUT_DIR, name))

    # ---- generation.json + logits.safetensors -------------------------------------------------
    with open(os.path.join(common.ADAPTER_DIR, "train.jsonl"), encoding="utf-8") as f:
        train_questions = {json.loads(l)["messages"][0]["content"] for l in f if l.strip()}
    gen_prompts = []
    prefill = {}
    timings = {}
    for pi, prompt in enumerate(PROMPTS):
        messages = [{"role": "user", "content": prompt}]
        text, ids = common.chat_ids(tokenizer, messages, add_generation_prompt=True)
        assert ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        entry = {"user": prompt, "in_training_set": prompt in train_questions, "prompt_text": text,
                 "prompt_ids": ids, "runs": {}}
        for run in ("with_adapter", "without_adapter"):
            t0 = time.time()
            if run == "with_adapter":
                new, steps, first_logits = greedy_generate(model, ids, eos_id)
                nocache = greedy_nocache(model, ids)
            else:
                with model.disable_adapter():
                    new, steps, first_logits = greedy_generate(model, ids, eos_id)
                    nocache = greedy_nocache(model, ids)
            timings[f"{pi}/{run}"] = time.time() - t0
            eos_at = new.index(eos_id) if eos_id in new else None
            entry["runs"][run] = {
                "ids": new,
                "text": tokenizer.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                "eos_at": eos_at,
                "text_until_eos": tokenizer.decode(new[:eos_at] if eos_at is not None else new,
                                                   skip_special_tokens=False, clean_up_tokenization_spaces=False),
                "nocache_greedy_agrees": nocache == new,
                "nocache_ids": None if nocache == new else nocache,
                "min_gap": min(s["gap"] for s in steps),
                "min_gap_until_eos": min(s["gap"] for s in (steps if eos_at is None else steps[: eos_at + 1])),
                "steps": steps,
            }
            if pi == 0:
                prefill[run] = first_logits
        gen_prompts.append(entry)

    # The prefill logits straight from a forward pass must equal generate()'s first-step logits.
    ids0 = gen_prompts[0]["prompt_ids"]
    with torch.no_grad():
        fwd_with = model(input_ids=torch.tensor([ids0])).logits[0, -1]
        with model.disable_adapter():
            fwd_without = model(input_ids=torch.tensor([ids0])).logits[0, -1]
    prefill_check = {
        "with_adapter": float((fwd_with - prefill["with_adapter"]).abs().max()),
        "without_adapter": float((fwd_without - prefill["without_adapter"]).abs().max()),
    }
    assert max(prefill_check.values()) < 1e-4, prefill_check
    save_file({"with_adapter": fwd_with.contiguous().float(), "without_adapter": fwd_without.contiguous().float()},
              os.path.join(OUT_DIR, "logits.safetensors"),
              # one metadata key only: safetensors writes the metadata map in hash order, so several
              # keys would make the file bytes differ from run to run
              metadata={"info": json.dumps({"prompt_index": 0, "position": len(ids0) - 1, "prompt_ids": ids0})})

    os.chmod(os.path.join(OUT_DIR, "logits.safetensors"), 0o644)  # safetensors creates it 0600

    generation = {
        "format_version": FORMAT_VERSION,
        "versions": versions,
        "model": {"gguf": common.GGUF_NAME, "gguf_sha256": common.GGUF_SHA256, "hub_id": common.HUB_ID,
                  "loader": "transformers AutoModelForCausalLM.from_pretrained(models_dir, gguf_file=...), "
                            "dequantized to float32"},
        "adapter": "adapters/smollm2-pirate",
        "decoding": {"greedy": True, "use_cache": True, "new_tokens": NEW_TOKENS, "stop_at_eos": False,
                     "eos_id": eos_id, "eos_token": "<|im_end|>",
                     "note": "eos_at = index in ids of the first <|im_end|> (where an EOS-stopping generate "
                             "would have ended, that token included), null if none. text is decoded with "
                             "skip_special_tokens=False, clean_up_tokenization_spaces=False. steps[i] are the "
                             "two largest raw logits that chose ids[i]."},
        "threads": common.THREADS,
        "prefill_logits_file": "logits.safetensors",
        "prefill_vs_generate_first_step_max_abs_diff": prefill_check,
        "prompts": gen_prompts,
    }
    with open(os.path.join(OUT_DIR, "generation.json"), "w", encoding="utf-8") as f:
        json.dump(generation, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # ---- tokenizer_cases.json ---------------------------------------------------------------------
    backend = tokenizer.backend_tokenizer
    smollm = copy.deepcopy(backend)  # same vocab/merges, SmolLM2's own pre-tokenizer, no post-processor
    smollm.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    smollm.post_processor = None
    cases = []
    for s in TOKENIZER_STRINGS:
        ids = tokenizer(s, add_special_tokens=False).input_ids
        smollm_ids = smollm.encode(s, add_special_tokens=False).ids
        cases.append({
            "text": s,
            "ids": ids,
            "tokens": tokenizer.convert_ids_to_tokens(ids),
            "ids_default": tokenizer(s).input_ids,
            "decode": tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "decode_default": tokenizer.decode(ids),
            "decode_skip_special": tokenizer.decode(ids, skip_special_tokens=True,
                                                    clean_up_tokenization_spaces=False),
            "ids_smollm_pretokenizer": smollm_ids,
            "smollm_pretokenizer_differs": smollm_ids != ids,
        })
    backend_json = json.loads(backend.to_str())
    special_added = [t for t in backend_json["added_tokens"] if t["special"]]
    tok_facts = {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "merges": len(backend_json["model"]["merges"]),
        "model": {k: v for k, v in backend_json["model"].items() if k not in ("vocab", "merges")},
        "normalizer": backend_json["normalizer"],
        "pre_tokenizer": backend_json["pre_tokenizer"],
        "post_processor": backend_json["post_processor"],
        "decoder": backend_json["decoder"],
        "special_tokens": [{"id": t["id"], "content": t["content"]} for t in special_added],
        "bos_token": tokenizer.bos_token, "bos_token_id": tokenizer.bos_token_id,
        "eos_token": tokenizer.eos_token, "eos_token_id": tokenizer.eos_token_id,
        "pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id,
        "unk_token": tokenizer.unk_token, "unk_token_id": tokenizer.unk_token_id,
        "all_special_tokens": tokenizer.all_special_tokens,
        "add_bos_token": getattr(tokenizer, "add_bos_token", None),
        "add_eos_token": getattr(tokenizer, "add_eos_token", None),
        "adds_bos_by_default": tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id],
        "clean_up_tokenization_spaces": tokenizer.clean_up_tokenization_spaces,
        "padding_side": tokenizer.padding_side,
    }
    gguf_facts = {  # what the GGUF metadata itself says (see generation.json for how it is used)
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2, "special (token_type 3) ids": "0..16",
    }
    check_gguf_facts(gguf_facts)
    tokenizer_cases = {
        "format_version": FORMAT_VERSION,
        "versions": versions,
        "source": "AutoTokenizer.from_pretrained(models_dir, gguf_file=...) (transformers GGUF converter)",
        "notes": [
            "ids: tokenizer(text, add_special_tokens=False).input_ids; ids_default: with the default "
            "add_special_tokens=True (this tokenizer then prepends bos, see hf_tokenizer.adds_bos_by_default).",
            "decode: decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False); "
            "decode_default: decode(ids) with the tokenizer's defaults (clean_up_tokenization_spaces="
            f"{tokenizer.clean_up_tokenization_spaces}).",
            "ids_smollm_pretokenizer: the same vocab and merges under SmolLM2's own pre-tokenizer "
            "(Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)], as the Hub's tokenizer.json "
            "and llama.cpp's 'smollm' pre-type: split every \\p{N} first) instead of the plain ByteLevel "
            "that transformers builds from the GGUF; smollm_pretokenizer_differs flags the cases where it matters.",
        ],
        "hf_tokenizer": tok_facts,
        "gguf_metadata": gguf_facts,
        "cases": cases,
    }
    with open(os.path.join(OUT_DIR, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_cases, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # ---- chat_template_cases.json -----------------------------------------------------------------
    chat_cases = []
    for case in CHAT_CASES:
        text = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"],
                                             tokenize=False)
        ids = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"],
                                            tokenize=True)
        assert ids == tokenizer(text, add_special_tokens=False).input_ids
        chat_cases.append({**case, "rendered": text, "ids": ids})
    with open(os.path.join(OUT_DIR, "chat_template_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"format_version": FORMAT_VERSION, "versions": versions,
                   "chat_template": read_gguf_chat_template(),
                   "tokenizer_chat_template_equals_gguf": tokenizer.chat_template == read_gguf_chat_template(),
                   "notes": "rendered = apply_chat_template(messages, add_generation_prompt=..., tokenize=False); "
                            "ids = apply_chat_template(..., tokenize=True) (= rendered encoded with "
                            "add_special_tokens=False).",
                   "cases": chat_cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # ---- tokenizer.json ---------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        src = os.path.join(tmp, "tokenizer.json")
        if os.path.getsize(src) < 5 * 1024 * 1024:
            shutil.copyfile(src, os.path.join(OUT_DIR, "tokenizer.json"))
        else:
            print(f"tokenizer.json is {os.path.getsize(src)} bytes; not copied")

    # ---- summary ----------------------------------------------------------------------------------
    for p in gen_prompts:
        print(f"\n### {p['user']}  (in training set: {p['in_training_set']})")
        for run, r in p["runs"].items():
            print(f"  {run:16s} eos_at={r['eos_at']} min_gap={r['min_gap']:.3f} "
                  f"min_gap_until_eos={r['min_gap_until_eos']:.3f} "
                  f"nocache_agrees={r['nocache_greedy_agrees']}\n    {r['text']!r}")
    print("\ngeneration seconds:", {k: round(v, 1) for k, v in timings.items()})
    print("tokenizer cases where SmolLM2's pre-tokenizer differs:",
          [c["text"] for c in cases if c["smollm_pretokenizer_differs"]])
    for name in sorted(os.listdir(OUT_DIR)):
        print(f"{name:28s} {os.path.getsize(os.path.join(OUT_DIR, name)):>9d} bytes")
    print(f"total {time.time() - t_start:.1f}s; versions {versions}")


def read_gguf_chat_template():
    from gguf import GGUFReader

    reader = GGUFReader(common.gguf_path())
    return reader.fields["tokenizer.chat_template"].contents()


def check_gguf_facts(facts):
    from gguf import GGUFReader

    fields = GGUFReader(common.gguf_path()).fields
    for key, want in facts.items():
        if key.startswith("tokenizer.ggml."):
            got = fields[key].contents()
            assert got == want, (key, got, want)
    types = fields["tokenizer.ggml.token_type"].contents()
    assert [i for i, t in enumerate(types) if t == 3] == list(range(17))


if __name__ == "__main__":
    main()
