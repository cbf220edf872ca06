"""Shared helpers for scripts/make_demo_adapter.py and scripts/make_real_references.py.

Loads graft's default demo model, SmolLM2-135M-Instruct as the Q4_1 GGUF fetched by
scripts/fetch_default_model.sh, with transformers' GGUF loader (dequantized to float32), and the
tokenizer transformers builds from the GGUF metadata. Pinned versions: torch 2.5.1,
transformers 4.57.1, peft 0.21.2, gguf 0.19.0 (checked by check_versions()).
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTER_DIR = os.path.join(REPO_ROOT, "adapters", "smollm2-pirate")
THREADS = 2  # fixed so that float reductions (and hence the written numbers) do not depend on the machine

PINNED = {"torch": "2.5.1", "transformers": "4.57.1", "peft": "0.21.2", "gguf": "0.19.0"}


def reexec_with_fixed_hashseed():
    """PEFT writes some config lists (target_modules) from Python sets; fix the hash seed so the
    written adapter_config.json is byte-for-byte reproducible."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]])


def check_versions():
    import importlib.metadata as md

    got = {name: md.version(name) for name in PINNED}
    bad = {k: (v, PINNED[k]) for k, v in got.items() if v.split("+")[0] != PINNED[k]}
    if bad:
        sys.exit(f"version mismatch (got, pinned): {bad}")
    return got


def gguf_path():
    path = os.path.join(MODELS_DIR, GGUF_NAME)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing; run scripts/fetch_default_model.sh first")
    return path


def load_tokenizer():
    from transformers import AutoTokenizer

    gguf_path()
    return AutoTokenizer.from_pretrained(MODELS_DIR, gguf_file=GGUF_NAME)


def load_base_model():
    import torch
    from transformers import AutoModelForCausalLM

    gguf_path()
    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(MODELS_DIR, gguf_file=GGUF_NAME, torch_dtype=torch.float32)
    # The GGUF loader dequantizes everything to plain float32 nn.Linear/Embedding weights; drop any
    # quantization bookkeeping so PEFT and save_pretrained treat it as an ordinary float32 model.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.eval()
    for p in model.parameters():
        assert p.dtype == torch.float32, p.dtype
    return model


def chat_ids(tokenizer, messages, add_generation_prompt):
    """Renders messages with the GGUF chat template and tokenizes the text WITHOUT special-token
    post-processing (the GGUF-built tokenizer would otherwise prepend an extra BOS)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return text, ids
