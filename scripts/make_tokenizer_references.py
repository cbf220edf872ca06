#!/usr/bin/env python3
"""What transformers' tokenizers built from GGUF metadata do, for graft-text's byte-exact tests.

For each real GGUF that `scripts/fetch_models.sh` fetches (Qwen2.5-Coder 0.5B and 1.5B Instruct,
Gemma 3 270M; all Q4_K_M), this loads `AutoTokenizer.from_pretrained(models_dir, gguf_file=...)`
(transformers' GGUF tokenizer converter, reading only the metadata) and records:

- strings -> ids (`add_special_tokens=False` and the default `True`) and the decode of those ids;
- conversations -> `apply_chat_template(tokenize=False)` text and its ids (where the GGUF has a
  chat template: Gemma 3 270M, a base model, has none);
- for Qwen2.5-Coder 0.5B, the same strings under the other byte-level BPE pre-tokenizer types
  transformers knows (`tokenizer.ggml.pre` set to each in the metadata and the result of
  transformers' `convert_gguf_tokenizer`), so those pre-types are checked on a real vocabulary;
- for Gemma 3 270M, the same strings with `general.architecture` set to `llama`: transformers'
  generic sentencepiece (Llama) conversion, merges rebuilt from the scores, on a real vocabulary.

Writes tests/fixtures/tokenizers/gguf_tokenizers.json (byte-for-byte reproducible). Needs
transformers 5.25.0 and gguf 0.19.0 (checked); no network. Run from anywhere:

    scripts/fetch_models.sh && python scripts/make_tokenizer_references.py
"""

import hashlib
import json
import sys
from pathlib import Path

import transformers
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
OUT = REPO / "tests" / "fixtures" / "tokenizers" / "gguf_tokenizers.json"

PINNED = {"transformers": "5.25.0", "gguf": "0.19.0"}

# name, file under models/, sha256 (as scripts/fetch_models.sh checks it)
FILES = [
    ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
     "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
     "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    ("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf",
     "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
]

STRINGS = [
    "",
    " ",
    "Hello, world!",
    "Hello world",
    " Hello world",
    "hello   world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, DON'T you think? We've WE'VE",
    "ALL CAPS AND lower case MiXeD",
    "Numbers: 0 7 42 123 1234 12345678 3.14159 1,000,000 2024-06-01 0x1F 1e-5",
    "a  1",
    "x = 10000000000;  y=-2.5e3",
    "Café résumé naïve façade coöperate",
    "e\u0301 (decomposed) vs \u00e9 (composed)",
    "Grüße aus Köln! Ærøskøbing, Œuvre",
    "Привет, мир! Как дела?",
    "你好，世界！这是一个测试。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 문장입니다.",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "Emoji: 😀 🤖 🎉 👍🏽 ❤️",
    "Family: 👨\u200d👩\u200d👧\u200d👦 flags: 🇫🇷🇯🇵",
    "Math: ∑ ∫ √ ∞ ≠ ≤ ≥ π ∂ ∇",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{v:?}\");\n}\n",
    "<div class=\"a\">&nbsp;<br/></div>",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "   leading spaces",
    "trailing spaces   ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n\n\n",
    "windows\r\nline\r\nendings",
    "many        spaces   between",
    "\n\n\n\n",
    "\t\t\t",
    "mixed \t \n \r\n whitespace  \n",
    "  \u00a0 non-breaking\u00a0space",
    "Some\u200bzero\u200bwidth",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<bos>hello<eos>",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<pad><unk><mask>",
    "[multimodal]",
    "<unused0>",
    "URL: https://example.com/path?query=1&x=y#frag",
    "email@example.com, @handle, #hashtag",
    "Ünïcödé ☃ ♠♣♥♦ ©®™ ½ ¼ ¾ °C",
    "\u0000\u0001 control \u007f chars",
    "\ufeffBOM at start",
    "iPhone JavaScript getElementById McDonald's XMLHttpRequest camelCase snake_case",
    "HELLO'S THEY'RE we'd 1234567 ١٢٣ ½",
]

CONVERSATIONS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "user", "content": "What is the capital of France?"}], False),
    ([{"role": "system", "content": "You are a pirate."},
      {"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are a helpful coding assistant."},
      {"role": "user", "content": "Write a Python function that reverses a string."},
      {"role": "assistant", "content": "def rev(s):\n    return s[::-1]"},
      {"role": "user", "content": "Now in Rust, please."}], True),
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello! How can I help?"}], False),
    ([{"role": "user", "content": "Unicode: café 日本 🤖\n\ttabs  and  spaces"}], True),
    ([{"role": "system", "content": ""},
      {"role": "user", "content": ""}], True),
    ([{"role": "user", "content": "first"},
      {"role": "assistant", "content": "second"},
      {"role": "user", "content": "third"},
      {"role": "assistant", "content": "fourth"}], True),
]

# The byte-level pre-types transformers maps to a split regex, one per distinct regex (the other
# names in its table are aliases of these), plus plain GPT-2 (no entry: ByteLevel's own regex).
PRE_VARIANTS = ["default", "llama-bpe", "tekken", "gpt-4o", "qwen35", "deepseek-r1-qwen"]


def check_versions():
    import importlib.metadata as md

    got = {k: md.version(k) for k in PINNED}
    if got != PINNED:
        sys.exit(f"need {PINNED}, have {got}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ids_of(enc):
    return list(enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc)


def model_refs(name, file, tok):
    enc = []
    for text in STRINGS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids_default = tok(text)["input_ids"]
        enc.append({
            "text": text,
            "ids": ids,
            "ids_default": ids_default,
            "decode": tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "decode_skip_special": tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
        })
    chats = []
    if tok.chat_template:
        for messages, gen in CONVERSATIONS:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ids = ids_of(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen))
            # apply_chat_template tokenizes its text without adding special tokens.
            assert ids == tok(text, add_special_tokens=False)["input_ids"], name
            chats.append({"messages": messages, "add_generation_prompt": gen, "text": text, "ids": ids})
    return {
        "file": file,
        "tokenizer_class": type(tok).__name__,
        "vocab_size": len(tok),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "adds_bos_by_default": tok("a")["input_ids"][:1] == [tok.bos_token_id] if tok.bos_token_id is not None else False,
        "chat_template": tok.chat_template,
        "encode": enc,
        "chat": chats,
    }


def pre_variants(path):
    """The strings under other pre-types: transformers' own conversion of this file's metadata
    with `tokenizer.ggml.pre` replaced."""
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tdict, _ = get_gguf_tokenizer(str(path))
    out = {}
    for pre in PRE_VARIANTS:
        backend, _ = convert_gguf_tokenizer(arch, dict(tdict, pre_tokenizer_type=pre))
        out[pre] = [backend.encode(t, add_special_tokens=False).ids for t in STRINGS]
    return out


def spm_variant(path):
    """The strings through transformers' generic sentencepiece builder (as for a Llama 2 file)."""
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    _, tdict, _ = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer("llama", tdict)
    return [backend.encode(t, add_special_tokens=False).ids for t in STRINGS]


def main():
    check_versions()
    import tokenizers

    doc = {
        "format_version": 1,
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "gguf": PINNED["gguf"]},
        "source": "AutoTokenizer.from_pretrained(models_dir, gguf_file=...) (transformers' GGUF tokenizer converter)",
        "notes": [
            "encode[].ids: tokenizer(text, add_special_tokens=False).input_ids; ids_default: tokenizer(text).input_ids.",
            "encode[].decode: decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False); decode_skip_special: the same with skip_special_tokens=True.",
            "chat[].text: apply_chat_template(messages, tokenize=False, add_generation_prompt=...); ids: the same tokenized (no special tokens added).",
            "spm_llama_variant: gemma-3-270m's metadata converted as general.architecture=llama (transformers' generic sentencepiece builder), encode(text, add_special_tokens=False).ids per string.",
            "pre_split_regexes: transformers' GGUF_PRE_TOKENIZER_SPLITS (tokenizer.ggml.pre -> the split regex before ByteLevel).",
            "pre_variants: qwen2.5-coder-0.5b's metadata with tokenizer.ggml.pre replaced, through transformers.integrations.gguf.convert_gguf_tokenizer; encode(text, add_special_tokens=False).ids per string, in the order of strings.",
        ],
        "strings": STRINGS,
        "models": {},
    }
    for name, file, want_sha in FILES:
        path = MODELS / file
        if not path.is_file():
            sys.exit(f"{path} is missing: run scripts/fetch_models.sh")
        got = sha256(path)
        if got != want_sha:
            sys.exit(f"{path}: sha256 {got}, expected {want_sha}")
        print(f"{name}: loading the tokenizer ...", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(str(MODELS), gguf_file=file)
        doc["models"][name] = dict(model_refs(name, file, tok), sha256=want_sha)
        if name == "qwen2.5-coder-0.5b":
            print(f"{name}: pre-tokenizer variants ...", file=sys.stderr)
            doc["pre_variants"] = {"model": name, "ids": pre_variants(path)}
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

            doc["pre_split_regexes"] = dict(sorted(GGUF_PRE_TOKENIZER_SPLITS.items()))
        if name == "gemma-3-270m":
            print(f"{name}: as a generic sentencepiece (llama) file ...", file=sys.stderr)
            doc["spm_llama_variant"] = {"model": name, "ids": spm_variant(path)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n = {k: (len(v["encode"]), len(v["chat"])) for k, v in doc["models"].items()}
    print(f"wrote {OUT}: (strings, conversations) per model {n}", file=sys.stderr)


if __name__ == "__main__":
    main()
