#!/usr/bin/env python3
"""transformers' f32 prefill for scripts/bench_prefill.sh: ONE forward over P prompt tokens into an
empty cache (eager attention, torch.inference_mode, --threads threads), best of --runs after one
warm-up, for a GGUF dequantized to f32 by transformers' GGUF loader. Prints JSON lines
{"model", "prompt_tokens", "prefill_tok_s", "versions"}. Versions are recorded, not pinned (run
with /work/py5: torch 2.6.0, transformers 5.25.0)."""
import argparse
import importlib.metadata as md
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--prompts", default="128,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    d, f = os.path.split(os.path.abspath(a.gguf))
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    versions = {k: md.version(k) for k in ("torch", "transformers")}
    for p in [int(x) for x in a.prompts.split(",")]:
        ids = torch.tensor([[(i * 7919) % 10000 + 100 for i in range(p)]])
        best = float("inf")
        with torch.inference_mode():
            for r in range(a.runs + 1):
                t = time.perf_counter()
                m(input_ids=ids, use_cache=True)
                s = time.perf_counter() - t
                if r > 0:
                    best = min(best, s)
        print(json.dumps({"engine": "transformers f32", "model": f, "prompt_tokens": p,
                          "prefill_tok_s": p / best, "threads": a.threads, "versions": versions}), flush=True)


if __name__ == "__main__":
    main()
