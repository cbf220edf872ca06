#!/usr/bin/env python3
"""The PyTorch side of graft's training benchmark (scripts/bench_train.sh).

transformers + PEFT train a LoRA (r, alpha 2r, dropout 0) on q_proj,v_proj of SmolLM2-135M-Instruct
(the GGUF graft uses, dequantized to float32 by transformers' GGUF loader — PyTorch has no CPU path
for a Q4_1 base) with AdamW (torch defaults, lr 2e-3), on the workload `graft bench-train` runs:
batch × seq ids ((b·seq + i)·7919 mod 10000 + 100) mod vocab, every token labelled; one warm-up step,
then `steps` measured steps. Prints one JSON line: tokens/s, seconds per step, peak RSS, losses.

Pinned: torch 2.5.1, transformers 4.57.1, peft 0.21.2, gguf 0.19.0 (smollm2_common.PINNED).
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm2_common as common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    common.check_versions()
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = common.load_base_model()
    model.config.use_cache = False
    vocab = model.config.vocab_size
    cfg = LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    ids = torch.tensor(
        [[(((b * a.seq_len + i) * 7919) % 10000 + 100) % vocab for i in range(a.seq_len)] for b in range(a.batch_size)],
        dtype=torch.long,
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    def step():
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        return out.loss.item()

    step()
    t0 = time.perf_counter()
    losses = [step() for _ in range(a.steps)]
    secs = time.perf_counter() - t0
    tokens = a.steps * a.batch_size * a.seq_len
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"engine": "transformers+peft", "base": "f32", "batch_size": a.batch_size, "seq_len": a.seq_len,
                      "steps": a.steps, "r": a.r, "threads": a.threads, "tokens_per_s": tokens / secs,
                      "seconds_per_step": secs / a.steps, "peak_rss_mib": peak, "losses": losses}))


if __name__ == "__main__":
    main()
