#!/usr/bin/env python3
"""What transformers + PEFT compute with the real Qwen2.5-Coder-0.5B-Instruct and Gemma 3 270M
Q4_K_M GGUFs and a small LoRA on each, for graft's real-model tests.

Pins (asserted): torch 2.6.0, transformers 5.25.0, peft 0.21.2, gguf 0.19.0. CPU, float32.

    scripts/fetch_models.sh qwen2.5-coder-0.5b gemma-3-270m     # the GGUFs, into models/
    /work/py5/bin/python scripts/make_real_arch_references.py   # a few minutes on 2 cores

transformers loads each GGUF with `gguf_file=` (every Q4_K/Q6_K/Q5_0/Q8_0 tensor dequantized to
float32 by gguf-py), so the references are the numbers of the dequantized model. For each model
it writes tests/fixtures/real_arch/<name>/:

    adapter/                  a LoRA (r=4, alpha=8, q_proj and v_proj of every layer) made here by
                              PEFT with seeded values (A ~ N(0, 1/in), B ~ N(0, 0.05²)), saved by
                              PeftModel.save_pretrained
    logits.safetensors        f32 [vocab] prefill logits at the last prompt position, keys
                              `with_adapter` / `without_adapter`
    generation.json           the prompt (text and ids), and PEFT's greedy generate() (KV cache) of
                              16 new tokens with and without the adapter, with the two best logits'
                              gap at every step
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "real_arch"
NEW = 16
PINS = {"torch": "2.6.0", "transformers": "5.25.0", "peft": "0.21.2"}

MODELS = {
    "qwen2.5-coder-0.5b": {
        "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "hub_id": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "chat": [{"role": "user", "content": "Write a Python function that tells whether a number is prime."}],
    },
    "gemma-3-270m": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "hub_id": "google/gemma-3-270m",
        "text": "The three primary colours are",
    },
}


def check_versions():
    import gguf  # noqa: F401

    got = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__, "peft": peft.__version__}
    bad = {k: (got[k], v) for k, v in PINS.items() if got[k] != v}
    if bad:
        sys.exit(f"version mismatch (got, want): {bad}")
    return got


def load(spec):
    path = ROOT / "models" / spec["file"]
    if not path.is_file():
        sys.exit(f"{path} is missing: run scripts/fetch_models.sh")
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    m.config._attn_implementation = "eager"
    return tok, m.eval()


def prompt_ids(spec, tok):
    if "chat" in spec:
        text = tok.apply_chat_template(spec["chat"], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        text = spec["text"]
        ids = tok(text)["input_ids"]  # the base model's BOS as its tokenizer adds it
    return text, ids


@torch.no_grad()
def greedy(model, ids):
    """generate() without sampling, and the gap between the best two logits at each step."""
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    new = out.sequences[0, len(ids):].tolist()
    gaps = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        gaps.append(float(top[0] - top[1]))
    return new, gaps


@torch.no_grad()
def last_logits(model, ids):
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float().contiguous().clone()


def make_adapter(model, name, dest: Path, hub_id):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if ".lora_A." in n:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif ".lora_B." in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    pm.peft_config["default"].base_model_name_or_path = hub_id
    with tempfile.TemporaryDirectory() as td:
        pm.save_pretrained(td, safe_serialization=True)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(td) / f, dest / f)
    return pm.unload()


def main():
    versions = check_versions()
    torch.set_num_threads(2)
    for name, spec in MODELS.items():
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        tok, model = load(spec)
        text, ids = prompt_ids(spec, tok)
        model = make_adapter(model, name, d / "adapter", spec["hub_id"])
        pm = PeftModel.from_pretrained(model, str(d / "adapter")).eval()
        with_logits = last_logits(pm, ids)
        with_tokens, with_gaps = greedy(pm, ids)
        with pm.disable_adapter():
            without_logits = last_logits(pm, ids)
            without_tokens, without_gaps = greedy(pm, ids)
        diff = float((with_logits - without_logits).abs().max())
        assert diff > 0.1, f"{name}: the adapter changes the logits by only {diff}"
        save_file({"with_adapter": with_logits, "without_adapter": without_logits}, str(d / "logits.safetensors"))
        gen = {
            "model": spec["file"],
            "hub_id": spec["hub_id"],
            "versions": versions,
            "prompt_text": text,
            "prompt_ids": ids,
            "max_new_tokens": NEW,
            "with_adapter": {"ids": with_tokens, "gaps": with_gaps, "text": tok.decode(with_tokens)},
            "without_adapter": {"ids": without_tokens, "gaps": without_gaps, "text": tok.decode(without_tokens)},
            "adapter_changes_logits_by": diff,
        }
        (d / "generation.json").write_text(json.dumps(gen, indent=1, ensure_ascii=False) + "\n")
        print(name, len(ids), "prompt tokens; with:", repr(gen["with_adapter"]["text"]), "min gap", min(with_gaps))
        print(name, "without:", repr(gen["without_adapter"]["text"]), "min gap", min(without_gaps))


if __name__ == "__main__":
    main()
