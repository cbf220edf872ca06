#!/usr/bin/env python3
"""Checks that 🤗 PEFT loads an adapter written by graft and computes the same logits as graft did.

Usage (from the repository root or anywhere)
    python scripts/check_peft_loads_graft_adapter.py --base BASE_DIR --adapter ADAPTER_DIR \\
        --logits LOGITS.safetensors [--tol 1e-4]

    BASE_DIR      a transformers model folder (config.json + safetensors), e.g. tests/fixtures/models/llama
    ADAPTER_DIR   adapter_config.json + adapter_model.safetensors as graft saved them
    LOGITS        safetensors with "input_ids": int64 [n] or [1, n] and "logits": f32 [n, vocab] or
                  [1, n, vocab], computed by graft for that base + adapter
    --tol         maximum allowed max|peft − graft| / max|peft| (default 1e-4)

What it does
    Loads the base with transformers (eager attention, float32, CPU), then
    PeftModel.from_pretrained(base, ADAPTER_DIR). Loading must be clean: any warning about missing or
    unexpected keys fails the check, and so does any difference between the file's tensors and what the
    loaded model's get_peft_model_state_dict() holds (key set and values; PEFT itself does not warn about
    unexpected keys). It then runs input_ids (batch 1, no attention mask, use_cache=False, eval mode) and
    compares the logits. Exit status 0 = pass, 1 = logits differ by more than tol, 2 = load problem or
    bad input file.

Pinned versions (asserted): torch 2.5.1, transformers 4.57.1, peft 0.21.2.
"""

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import logging  # noqa: E402
import warnings  # noqa: E402

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel, get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

PINNED = {"torch": "2.5.1", "transformers": "4.57.1", "peft": "0.21.2"}
KEY_WORDS = ("missing", "unexpected")


def fail(code: int, msg: str):
    print(f"FAIL: {msg}")
    sys.exit(code)


def check_versions():
    got = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    bad = {k: (got[k], v) for k, v in PINNED.items() if got[k] != v}
    if bad:
        fail(2, f"version mismatch (got, want): {bad}")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"log[{record.name}]: {record.getMessage()}")


def read_logits_file(path, tokens=None):
    t = load_file(path)
    if tokens is not None:
        # `graft logits --tokens … --out FILE` writes only the logits.
        t.setdefault("input_ids", torch.tensor(tokens, dtype=torch.int64))
    for k in ("input_ids", "logits"):
        if k not in t:
            fail(2, f"{path}: no tensor {k!r} (has {sorted(t)})")
    ids, logits = t["input_ids"], t["logits"]
    if ids.dtype != torch.int64:
        fail(2, f"{path}: input_ids must be int64, got {ids.dtype}")
    if logits.dtype != torch.float32:
        fail(2, f"{path}: logits must be float32, got {logits.dtype}")
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if logits.dim() == 3 and logits.shape[0] == 1:
        logits = logits[0]
    if ids.dim() != 1 or logits.dim() != 2 or logits.shape[0] != ids.shape[0]:
        fail(2, f"{path}: want input_ids [n] / [1,n] and logits [n,vocab] / [1,n,vocab], "
                f"got {tuple(t['input_ids'].shape)} and {tuple(t['logits'].shape)}")
    return ids, logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--logits", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--gguf-file", help="the base is this GGUF file inside --base (dequantized by transformers)")
    ap.add_argument("--tokens", help="comma-separated ids, when the logits file holds no input_ids")
    args = ap.parse_args()

    check_versions()
    torch.set_num_threads(1)
    tokens = [int(x) for x in args.tokens.split(",")] if args.tokens else None
    ids, graft_logits = read_logits_file(args.logits, tokens)

    handler = _Collect()
    for name in ("transformers", "peft"):
        logging.getLogger(name).addHandler(handler)
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
        base = AutoModelForCausalLM.from_pretrained(args.base, attn_implementation="eager", dtype=torch.float32, **kw)
        model = PeftModel.from_pretrained(base, args.adapter)
    model.eval()
    msgs = [f"{w.category.__name__}: {w.message}" for w in caught] + handler.messages
    for m in msgs:
        print(f"warning: {m}")
    bad = [m for m in msgs if any(w in m.lower() for w in KEY_WORDS)]
    if bad:
        fail(2, f"loading gave {len(bad)} missing/unexpected-key warning(s)")

    # PEFT does not warn about unexpected keys: compare the file with what the model now holds.
    saved = load_file(os.path.join(args.adapter, "adapter_model.safetensors"))
    held = get_peft_model_state_dict(model)
    unexpected = sorted(set(saved) - set(held))
    missing = sorted(set(held) - set(saved))
    if unexpected or missing:
        fail(2, f"adapter keys do not match the model: unexpected {unexpected}, missing {missing}")
    not_loaded = [k for k in saved if held[k].shape != saved[k].shape or not torch.equal(held[k].to(saved[k].dtype), saved[k])]
    if not_loaded:
        fail(2, f"tensors not loaded as saved: {not_loaded}")
    print(f"loaded {len(saved)} adapter tensors ({model.peft_config['default'].peft_type.value}), no missing/unexpected keys")

    with torch.no_grad():
        peft_logits = model(input_ids=ids[None], use_cache=False).logits[0].to(torch.float32)
    if peft_logits.shape != graft_logits.shape:
        fail(2, f"logits shape: peft {tuple(peft_logits.shape)}, graft {tuple(graft_logits.shape)}")
    diff = (peft_logits - graft_logits).abs()
    max_diff = diff.max().item()
    scale = peft_logits.abs().max().item()
    rel = max_diff / scale if scale > 0 else float("inf")
    pos, col = divmod(int(diff.argmax()), diff.shape[1])
    print(
        f"n={ids.shape[0]} vocab={diff.shape[1]}  max|diff|={max_diff:.3e} (position {pos}, token {col})  "
        f"max|logit|={scale:.4g}  relative={rel:.3e}  tol={args.tol:g}"
    )
    if not rel <= args.tol:
        fail(1, f"relative difference {rel:.3e} > tol {args.tol:g}")
    print("PASS")


if __name__ == "__main__":
    main()
