#!/usr/bin/env python3
"""The transformers + PEFT baseline for `graft serve`: greedy generation for batches whose rows use
different LoRA adapters (PEFT's mixed-adapter batches, generate(..., adapter_names=[...])), on the CPU.

Pinned (asserted): torch 2.6.0, transformers 5.25.0, peft 0.21.2, gguf 0.19.0.

    scripts/fetch_models.sh qwen2.5-coder-0.5b
    LLAMA_CPP=… /work/py5/bin/python scripts/make_bench_lora.py --count 32
    /work/py5/bin/python scripts/bench_serve_peft.py [--batch-sizes 1,8,32] [--runs 2] [--budget 600]

Model: models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, dequantized to float32 by transformers' GGUF
loader (eager attention). Adapters: the 32 of models/bench-lora/qwen2.5-coder-0.5b/many/aXX/adapter
(LoRA r=16, alpha 32, on all 7 linear layers; make_bench_lora.py --count 32), loaded into one
PeftModel under the names a00 … a31 (PeftModel.from_pretrained for a00, load_adapter for the rest),
all resident for every case.

Workload: the same fixed English prompt in every row (its first --prompt-tokens tokens, default 32,
by the GGUF's own tokenizer, no chat template, so no padding); --new-tokens (default 32) greedy
tokens per row with EOS ignored (min_new_tokens), KV cache on; torch.set_num_threads(--threads,
default 2), torch.inference_mode(). For each batch size B the cases are, by adapter_names:

    base        every row "__base__" (PEFT skips the LoRA layers' extra work for those rows)
    one         every row "a00"
    spread-8    row i -> a{i mod 8}
    spread-32   row i -> a{i mod 32}

A spread case with no more distinct adapters than a smaller case already run for this B is the
same computation (e.g. spread-32 at B=8 is spread-8) and is not run again; the table says so.

Per case: one untimed warm-up generate per batch size, then --runs timed runs of the full generate
(best kept): out tok/s = B * new_tokens / seconds (prefill included, i.e. what a client sees). The
prefill alone is timed as generate(max_new_tokens=1) (best of --runs), and decode tok/s =
B * (new_tokens - 1) / (full - prefill). "other load" is the share of the machine's CPU time that
other processes used during the timed runs (/proc/stat minus this process): with 2 threads on
2 cores compare figures only where it is near 0%. A batch size is skipped when, extrapolated from the
previous one (x B ratio), it would take the whole run past --budget seconds, and so is a case when the
previous case of its batch size took longer than what is left of --budget.

With --synthetic (for the lent GPU host, which has no model files and other package versions:
scripts/gpu_serve_bench.sh): a random-weight Qwen2.5-0.5B of the same config and 32 random LoRA
adapters of the same shape (r=16, alpha 32, 7 targets, init_lora_weights=False), token ids
1000.. as the prompt; --device cuda --dtype bfloat16 there; versions are recorded, not asserted.

Prints a markdown table and then one JSON line with everything.
"""

import argparse
import importlib.metadata as md
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's per-tensor progress bar

ROOT = Path(__file__).resolve().parent.parent
PINS = {"torch": "2.6.0", "transformers": "5.25.0", "peft": "0.21.2", "gguf": "0.19.0"}
GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MANY = ROOT / "models" / "bench-lora" / "qwen2.5-coder-0.5b" / "many"
PROMPT = ("Write a Python function that returns the n-th Fibonacci number using memoization, then explain "
          "in two short sentences why its running time is linear and how much memory it needs.")
CASES = [("base", 0), ("one", 1), ("spread-8", 8), ("spread-32", 32)]


def check_versions():
    got = {name: md.version(name).split("+")[0] for name in PINS}
    bad = {k: (v, PINS[k]) for k, v in got.items() if v != PINS[k]}
    if bad:
        sys.exit(f"version mismatch (installed, pinned): {bad}")
    return got


class CpuShare:
    """The share of the machine's CPU time used by OTHER processes between start() and stop()."""

    @staticmethod
    def _sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        total = sum(v[:8])  # user nice system idle iowait irq softirq steal
        busy = total - v[3] - v[4]
        with open("/proc/self/stat") as f:
            s = f.read().rsplit(")", 1)[1].split()
        mine = int(s[11]) + int(s[12])  # utime + stime of this process, in clock ticks like /proc/stat
        return total, busy, mine

    def start(self):
        self.t0 = self._sample()

    def stop(self):
        t1 = self._sample()
        total = t1[0] - self.t0[0]
        other = (t1[1] - self.t0[1]) - (t1[2] - self.t0[2])
        return max(0.0, other / total) if total > 0 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run (default 600)")
    ap.add_argument("--synthetic", action="store_true", help="random weights of the same shapes (no files)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.synthetic:
        versions = {name: md.version(name) for name in ("torch", "transformers", "peft")}
    else:
        versions = check_versions()

    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    names = [f"a{i:02d}" for i in range(32)]
    dtype = getattr(torch, args.dtype)
    if args.synthetic:
        from peft import LoraConfig, get_peft_model
        from transformers import Qwen2Config
        t0 = time.perf_counter()
        cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                          rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(args.device)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        lcfg = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"])
        model = get_peft_model(base, lcfg, adapter_name=names[0])
        for n in names[1:]:
            model.add_adapter(n, lcfg)
        model.to(args.device)
        model.eval()
        t_adapters = time.perf_counter() - t0
        ids = list(range(1000, 1000 + args.prompt_tokens))

        class _Tok:
            pad_token_id = 0
            eos_token_id = 0

            @staticmethod
            def decode(t):
                return " ".join(str(int(x)) for x in t[:8])
        tok = _Tok()
    else:
        gguf = ROOT / "models" / GGUF
        if not gguf.exists():
            sys.exit(f"{gguf} is missing: scripts/fetch_models.sh qwen2.5-coder-0.5b")
        missing = [n for n in names if not (MANY / n / "adapter" / "adapter_model.safetensors").exists()]
        if missing:
            sys.exit(f"{MANY}/{missing[0]}/adapter is missing: scripts/make_bench_lora.py --count 32")

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        if len(ids) < args.prompt_tokens:
            sys.exit(f"the prompt has only {len(ids)} tokens")
        ids = ids[:args.prompt_tokens]
        t0 = time.perf_counter()
        base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                    attn_implementation="eager")
        # the GGUF loader leaves quantization bookkeeping behind; the weights are plain float32 nn.Linear
        if getattr(base.config, "quantization_config", None) is not None:
            del base.config.quantization_config
        if getattr(base, "hf_quantizer", None) is not None:
            base.hf_quantizer = None
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = PeftModel.from_pretrained(base, str(MANY / names[0] / "adapter"), adapter_name=names[0])
        for n in names[1:]:
            model.load_adapter(str(MANY / n / "adapter"), adapter_name=n)
        model.eval()
        t_adapters = time.perf_counter() - t0
        for p in model.parameters():
            assert p.dtype == torch.float32, p.dtype
    print(f"loaded the base in {t_base:.1f} s and {len(names)} adapters in {t_adapters:.1f} s; "
          f"prompt {len(ids)} tokens, {args.new_tokens} new, {args.threads} threads, {args.device} {args.dtype}",
          flush=True)

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def generate(batch, adapter_names, new):
        x = torch.tensor([ids] * batch, dtype=torch.long, device=args.device)
        with torch.inference_mode():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), adapter_names=adapter_names,
                                 do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=pad)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            secs = time.perf_counter() - t
        assert out.shape == (batch, len(ids) + new), out.shape
        return secs, out[:, len(ids):]

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results, rows = [], []
    load = CpuShare()
    prev = None  # (batch size, seconds it took)
    for bi, b in enumerate(batch_sizes):
        if prev is not None:
            left = args.budget - (time.perf_counter() - t_start)
            guess = prev[1] * b / prev[0]
            if guess > left:
                print(f"skipping batch {b}: about {guess:.0f} s needed, {left:.0f} s of --budget left", flush=True)
                rows.append(f"| {b} | (skipped: ~{guess:.0f} s needed, {left:.0f} s left of --budget) | | | | | | |")
                continue
        t_b = time.perf_counter()
        generate(b, ["__base__"] * b, args.new_tokens)  # warm-up
        done = {}  # distinct adapter count -> case name already run for this batch size
        toks_base = None
        last_case = None  # seconds the previous case of this batch size took
        for case, k in CASES:
            distinct = min(k, b)
            if k > 1 and distinct in done:
                rows.append(f"| {b} | {case} | {distinct} | = {done[distinct]} | | | | |")
                results.append({"batch": b, "case": case, "distinct_adapters": distinct, "same_as": done[distinct]})
                continue
            left = args.budget - (time.perf_counter() - t_start)
            if last_case is not None and last_case > left:
                print(f"skipping batch {b} {case}: about {last_case:.0f} s needed, {left:.0f} s of --budget left",
                      flush=True)
                rows.append(f"| {b} | {case} | {distinct} | (skipped: --budget) | | | | |")
                results.append({"batch": b, "case": case, "distinct_adapters": distinct, "skipped": "budget"})
                continue
            done[distinct] = case
            t_case = time.perf_counter()
            adapter_names = ["__base__"] * b if k == 0 else [names[i % k] for i in range(b)]
            load.start()
            full, pre = [], []
            for _ in range(args.runs):
                secs, toks = generate(b, adapter_names, args.new_tokens)
                full.append(secs)
                pre.append(generate(b, adapter_names, 1)[0])
            other = load.stop()
            best, best_pre = min(full), min(pre)
            tok_s = b * args.new_tokens / best
            dec_s = b * (args.new_tokens - 1) / (best - best_pre) if best > best_pre else float("nan")
            if k == 0:
                toks_base = toks
            changed = None if toks_base is None or k == 0 else \
                sum(int(not torch.equal(toks[i], toks_base[i])) for i in range(b))
            r = {"batch": b, "case": case, "distinct_adapters": distinct, "adapter_names": sorted(set(adapter_names)),
                 "seconds": full, "prefill_seconds": pre, "out_tok_s": tok_s, "prefill_tok_s": b * len(ids) / best_pre,
                 "decode_tok_s": dec_s, "other_load": other, "rows_differing_from_base": changed,
                 "row0_text": tok.decode(toks[0])}
            results.append(r)
            rows.append(f"| {b} | {case} | {distinct} | {tok_s:.1f} | {best:.2f} | {b * len(ids) / best_pre:.0f} | "
                        f"{dec_s:.1f} | {other:.0%} |")
            print(rows[-1], flush=True)
            last_case = time.perf_counter() - t_case
        prev = (b, time.perf_counter() - t_b)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    machine = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                   platform.processor())
    print()
    what = "a random-weight Qwen2.5-0.5B" if args.synthetic else f"Qwen2.5-Coder-0.5B f32 (from {GGUF})"
    print(f"transformers + PEFT, {what}, {args.device} {args.dtype}, 32 LoRA r=16 adapters resident; "
          f"{machine}, {os.cpu_count()} cores, {args.threads} threads; prompt {len(ids)} tokens, "
          f"{args.new_tokens} new greedy, best of {args.runs}")
    print()
    print("| batch | case | distinct adapters | out tok/s | seconds | prefill tok/s | decode tok/s | other load |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print(f"\npeak RSS {peak:.0f} MiB; total {time.perf_counter() - t_start:.0f} s")
    print(json.dumps({"engine": "transformers+peft", "model": "synthetic" if args.synthetic else GGUF,
                      "device": args.device, "dtype": args.dtype, "adapters_loaded": len(names),
                      "lora": {"r": 16, "alpha": 32, "targets": 7}, "machine": machine, "cores": os.cpu_count(),
                      "threads": args.threads, "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
                      "runs": args.runs, "versions": versions, "load_seconds": {"base": t_base, "adapters": t_adapters},
                      "peak_rss_mib": peak, "results": results}))


if __name__ == "__main__":
    main()
