#!/usr/bin/env python3
"""CPU baselines for `graft bench`'s workload: llama.cpp and transformers + PEFT, with and without the demo LoRA.

Pinned versions (asserted at start)
    torch 2.5.1, transformers 4.57.1, peft 0.21.2, gguf 0.19.0 (see smollm2_common.PINNED) and
    llama-cpp-python 0.3.36, built from the PyPI sdist with the CPU backend:
        CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36     # ~8+ min on 2 cores
    Python 3.11, numpy, safetensors.

How to run (from the repository root; the machine should otherwise be idle)
    scripts/fetch_default_model.sh                 # models/SmolLM2-135M-Instruct.Q4_1.gguf (git-ignored)
    python scripts/bench_baselines.py              # writes models/baselines.json, prints a markdown table
    python scripts/bench_baselines.py --out X.json --engines llama.cpp --runs 5 --threads 2

What it measures (the same workload as `graft bench`; batch 1, --threads threads, default 2)
    prompt  = [(i * 7919) % 10000 + 100 for i in range(128)]: 128 token ids, no BOS, no special tokens.
    prefill = ONE forward over the 128 prompt tokens into an empty KV cache, plus the argmax of the
              last position's logits (only the last position's logits are computed, as llama.cpp and
              transformers' generate() both do). prefill tok/s = 128 / that time.
    decode  = then 64 single-token forwards with the KV cache, each feeding the previous greedy
              (argmax) token; EOS is ignored. decode tok/s = 64 / time of those 64 steps (prefill excluded).
    Each configuration does --warmup untimed runs (default 1: first-touch of the weights, thread pool
    and graph setup) and then --runs timed runs (default 3) in one process; the best (max tok/s) per
    metric is reported, all runs are kept in the JSON (graft bench itself does no warmup run;
    --warmup 0 reproduces that exactly). "other load" is the share of the machine's CPU
    time that OTHER processes used during the timed runs (/proc/stat minus this process); with 2
    threads on 2 cores any other load slows llama.cpp's spinning thread barrier drastically (seen
    here: decode 100 tok/s idle, 2-20 tok/s under load), so compare numbers only when it is near 0%.
    Each (engine, adapter) configuration runs in its own fresh subprocess, one after another, so its
    peak RSS (getrusage ru_maxrss, MiB; includes the Python interpreter and the imported libraries;
    for llama.cpp it counts the mmap'ed GGUF pages it touched) is its own.

Engines
    llama.cpp       llama_cpp.Llama(model_path=GGUF, n_threads=T, n_threads_batch=T, n_ctx=512,
                    n_batch=512, verbose=False); timing through Llama.eval() (llama_decode) and the
                    argmax of llama_get_logits_ith(ctx, -1). The LoRA is the PEFT adapter converted by
                    convert_peft_lora_to_gguf() below to models/smollm2-pirate.lora.gguf and attached with
                    llama_adapter_lora_init + llama_set_adapters_lora (scale 1.0) -- the same two calls
                    Llama(lora_path=...) makes, but without Llama's side effect of turning mmap off when a
                    lora_path is given, so the base and LoRA runs load the model identically (mmap).
                    llama_model_params.use_extra_bufts = false (llama.cpp's --no-repack) unless
                    --llama-extra-bufts: with GGML_NATIVE=ON on a CPU with AMX_INT8 (Sapphire Rapids
                    class), llama-cpp-python 0.3.36 puts the Q4_1 weights in ggml's AMX buffer type and
                    the first llama_decode dies with SIGSEGV at `ldtilecfg` in ggml_backend_amx_mul_mat
                    (upstream: ggml-org/llama.cpp issue #20824, open PR #26954), although AMX itself
                    works in this VM (a plain C ldtilecfg test passes). For this model the switch changes
                    nothing else: ggml-cpu has no Q4_1 repack, and the Q8_0 token_embd stays in the
                    plain CPU buffer because GET_ROWS reads it.
    transformers    the GGUF dequantized to float32 by transformers' GGUF loader exactly as
                    smollm2_common.load_base_model() does, torch.set_num_threads(T),
                    torch.inference_mode(), use_cache=True (DynamicCache), logits_to_keep=1 for the
                    prefill; the LoRA via peft.PeftModel.from_pretrained(model, adapters/smollm2-pirate).
    Sanity checks (not timed, after the timed runs): greedy 24 new tokens for the chat prompt
    "What is the capital of France?" (prompt ids from tests/fixtures/real/generation.json, i.e. the
    GGUF chat template with its default system message); with the LoRA the answer must start with
    "Arr". The ids are also compared with PEFT's reference ids recorded in that fixture.

Output
    --out (default models/baselines.json): machine, versions, workload, GGUF file size, per
    configuration all runs, best tok/s, peak RSS, sanity answers. Prints a markdown table.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm2_common as common  # noqa: E402  (light: os/sys only; no torch import)

LLAMA_CPP_VERSION = "0.3.36"
PROMPT_LEN = 128
DECODE_STEPS = 64
SANITY_TOKENS = 24
SANITY_USER = "What is the capital of France?"
LORA_GGUF = os.path.join(common.MODELS_DIR, "smollm2-pirate.lora.gguf")
FIXTURE = os.path.join(common.REPO_ROOT, "tests", "fixtures", "real", "generation.json")
N_CTX = 512
N_BATCH = 512

# Hugging Face Llama module name -> GGUF tensor name stem (llama.cpp's tensor naming).
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def bench_prompt():
    return [(i * 7919) % 10000 + 100 for i in range(PROMPT_LEN)]


# --------------------------------------------------------------------------- LoRA -> GGUF adapter


def _permute_rows(w, n_head):
    """llama.cpp's convert_hf_to_gguf permute(): Hugging Face's rotate-half q/k row order -> GGUF's
    interleaved RoPE order. Rows are viewed as (heads, 2, head_dim/2) and the last two axes swapped."""
    out = w.shape[0]
    assert out % (2 * n_head) == 0, (w.shape, n_head)
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_peft_lora_to_gguf(adapter_dir, base_gguf, out_path):
    """Writes a PEFT LoRA (Llama architecture) as a llama.cpp GGUF LoRA adapter.

    general.type=adapter, general.architecture=llama, adapter.type=lora, adapter.lora.alpha=<alpha>
    (llama.cpp scales by alpha / r); tensors blk.N.<name>.weight.lora_a as (r, in) and .lora_b as
    (out, r) in numpy order, float32. lora_B of q_proj / k_proj gets the same row permutation that
    llama.cpp's converter applies to the base q / k weights (heads read from the base GGUF)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"not a LoRA adapter: peft_type={cfg.get('peft_type')}")
    for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if cfg.get(key):
            raise ValueError(f"unsupported adapter_config {key}={cfg[key]!r}")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise ValueError("LoRA biases are not supported")
    alpha = float(cfg["lora_alpha"])
    rank = int(cfg["r"])

    reader = gguf.GGUFReader(base_gguf)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ValueError(f"base GGUF architecture is {arch!r}, only llama is handled")
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_head_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    base_shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}  # GGUF order (in, out)
    del reader

    tensors = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers."
    pairs = {}
    for name, value in tensors.items():
        if not name.startswith(prefix):
            raise ValueError(f"unexpected tensor {name}")
        rest = name[len(prefix):]
        layer, rest = rest.split(".", 1)
        for hf, stem in HF_TO_GGUF.items():
            if rest.startswith(hf + ".lora_"):
                kind = rest[len(hf) + 1:]
                break
        else:
            raise ValueError(f"unexpected tensor {name}")
        if kind not in ("lora_A.weight", "lora_B.weight"):
            raise ValueError(f"unexpected tensor {name}")
        gname = f"blk.{int(layer)}.{stem}.weight"
        pairs.setdefault(gname, {})[kind[5]] = (hf, value.astype(np.float32))

    writer = gguf.GGUFWriter(out_path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(os.path.basename(os.path.normpath(adapter_dir)))
    if cfg.get("base_model_name_or_path"):
        writer.add_string("general.base_model.0.repo_url", "https://huggingface.co/" + cfg["base_model_name_or_path"])
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)

    def sort_key(n):
        parts = n.split(".")
        return (int(parts[1]), parts[2])

    for gname in sorted(pairs, key=sort_key):
        p = pairs[gname]
        if set(p) != {"A", "B"}:
            raise ValueError(f"{gname}: lora_A / lora_B pair incomplete")
        hf, a = p["A"]
        _, b = p["B"]
        if gname not in base_shapes:
            raise ValueError(f"{gname} is not in the base GGUF")
        n_in, n_out = base_shapes[gname]
        if a.shape != (rank, n_in) or b.shape != (n_out, rank):
            raise ValueError(f"{gname}: A {a.shape} B {b.shape} do not fit base (out={n_out}, in={n_in}), r={rank}")
        if hf == "self_attn.q_proj":
            b = _permute_rows(b, n_head)
        elif hf == "self_attn.k_proj":
            b = _permute_rows(b, n_head_kv)
        writer.add_tensor(gname + ".lora_a", np.ascontiguousarray(a))
        writer.add_tensor(gname + ".lora_b", np.ascontiguousarray(b))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": out_path, "alpha": alpha, "r": rank, "tensors": 2 * len(pairs), "bytes": os.path.getsize(out_path)}


# --------------------------------------------------------------------------- workers (one per subprocess)


def sanity_prompt():
    with open(FIXTURE) as f:
        fx = json.load(f)
    for p in fx["prompts"]:
        if p["user"] == SANITY_USER:
            return p["prompt_ids"], p["runs"]
    raise SystemExit(f"{SANITY_USER!r} not in {FIXTURE}")


def _proc_stat_cpu():
    """VM-wide (busy, total) clock ticks from /proc/stat's first line (None where unavailable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle, sum(v[:8])


def timed_runs(runs, prefill_fn, step_fn, warmup):
    """Returns (per-run timings, background load). Background load is the fraction of the machine's
    CPU time used by OTHER processes during the timed runs (VM-wide /proc/stat busy ticks minus this
    process's own CPU time); on a shared machine a high value explains slow or noisy runs."""
    prompt = bench_prompt()
    for _ in range(warmup):  # untimed: first-touch of weights, thread pools, allocator, graph setup
        tok = prefill_fn(prompt)
        for _ in range(DECODE_STEPS):
            tok = step_fn(tok)
    out = []
    hz = os.sysconf("SC_CLK_TCK")
    stat0, own0, wall0 = _proc_stat_cpu(), os.times(), time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        tok = prefill_fn(prompt)
        t1 = time.perf_counter()
        for _ in range(DECODE_STEPS):
            tok = step_fn(tok)
        t2 = time.perf_counter()
        out.append({"prefill_s": t1 - t0, "decode_s": t2 - t1,
                    "prefill_tok_s": PROMPT_LEN / (t1 - t0), "decode_tok_s": DECODE_STEPS / (t2 - t1)})
    stat1, own1, wall1 = _proc_stat_cpu(), os.times(), time.perf_counter()
    background = None
    if stat0 and stat1 and stat1[1] > stat0[1]:
        own_ticks = (own1.user + own1.system - own0.user - own0.system) * hz
        background = max(0.0, (stat1[0] - stat0[0] - own_ticks) / (stat1[1] - stat0[1]))
    return out, background


def worker_llama(adapter, threads, runs, warmup, extra_bufts=False):
    import ctypes

    import llama_cpp
    import numpy as np

    if not extra_bufts:
        # Same as llama.cpp's --no-repack: keep every weight in the plain CPU buffer. On this CPU
        # (AMX_INT8) the AMX buffer type would otherwise take the Q4_1 weights, and llama.cpp's AMX
        # mul_mat crashes (SIGSEGV at ldtilecfg in ggml_backend_amx_mul_mat, see module docstring).
        # For this model nothing else changes: ggml-cpu has no Q4_1 repack, and token_embd (Q8_0)
        # is read by GET_ROWS, which keeps it in the plain CPU buffer anyway.
        default_params = llama_cpp.llama_cpp.llama_model_default_params

        def model_params_without_extra_bufts():
            params = default_params()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = model_params_without_extra_bufts
    t_load = time.perf_counter()
    llm = llama_cpp.Llama(model_path=common.gguf_path(), n_threads=threads, n_threads_batch=threads,
                          n_ctx=N_CTX, n_batch=N_BATCH, verbose=False)
    if adapter:
        lora = llama_cpp.llama_adapter_lora_init(llm._model.model, LORA_GGUF.encode("utf-8"))
        if lora is None:
            raise RuntimeError(f"llama_adapter_lora_init failed for {LORA_GGUF}")
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora)
        scales = (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
            raise RuntimeError("llama_set_adapters_lora failed")
    load_s = time.perf_counter() - t_load
    n_vocab = llm.n_vocab()
    ctx = llm._ctx.ctx

    def last_argmax():
        ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    def prefill(ids):
        llm.reset()  # n_tokens = 0; eval() then drops the whole KV cache (seq_rm from 0)
        llm.eval(ids)
        return last_argmax()

    def step(tok):
        llm.eval([tok])
        return last_argmax()

    results, background = timed_runs(runs, prefill, step, warmup)

    ids, ref = sanity_prompt()
    tok = prefill(ids)
    gen = [tok]
    for _ in range(SANITY_TOKENS - 1):
        tok = step(tok)
        gen.append(tok)
    text = llm.detokenize(gen, special=True).decode("utf-8", errors="replace")
    ref_run = ref["with_adapter" if adapter else "without_adapter"]
    extra = {"load_s": load_s, "background_cpu_busy": background, "use_mmap": True, "use_extra_bufts": extra_bufts, "n_ctx": N_CTX, "n_batch": N_BATCH,
             "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()}
    return results, gen, text, ref_run, extra


def worker_transformers(adapter, threads, runs, warmup):
    import torch

    torch.set_num_threads(threads)
    t_load = time.perf_counter()
    common.THREADS = threads
    model = common.load_base_model()
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, common.ADAPTER_DIR)
        model.eval()
    load_s = time.perf_counter() - t_load
    from transformers import DynamicCache

    state = {}

    def prefill(ids):
        state["cache"] = DynamicCache()
        out = model(input_ids=torch.tensor([ids]), past_key_values=state["cache"], use_cache=True, logits_to_keep=1)
        state["cache"] = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def step(tok):
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=state["cache"], use_cache=True)
        state["cache"] = out.past_key_values
        return int(out.logits[0, -1].argmax())

    with torch.inference_mode():
        results, background = timed_runs(runs, prefill, step, warmup)
        ids, ref = sanity_prompt()
        tok = prefill(ids)
        gen = [tok]
        for _ in range(SANITY_TOKENS - 1):
            tok = step(tok)
            gen.append(tok)
    tokenizer = common.load_tokenizer()
    text = tokenizer.decode(gen, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    ref_run = ref["with_adapter" if adapter else "without_adapter"]
    extra = {"load_s": load_s, "background_cpu_busy": background, "dtype": "float32", "torch_threads": torch.get_num_threads()}
    return results, gen, text, ref_run, extra


def run_worker(engine, adapter, threads, runs, warmup, llama_extra_bufts):
    if engine == "llama.cpp":
        results, gen, text, ref_run, extra = worker_llama(adapter, threads, runs, warmup, llama_extra_bufts)
    else:
        results, gen, text, ref_run, extra = worker_transformers(adapter, threads, runs, warmup)
    ref_ids = ref_run["ids"]
    agree = 0
    for a, b in zip(gen, ref_ids):
        if a != b:
            break
        agree += 1
    rec = {
        "engine": engine,
        "adapter": "pirate (r=8, alpha=16, q_proj+v_proj)" if adapter else "none",
        "runs": results,
        "prefill_tok_s": max(r["prefill_tok_s"] for r in results),
        "decode_tok_s": max(r["decode_tok_s"] for r in results),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # MiB (ru_maxrss is KiB on Linux)
        "sanity": {"prompt": SANITY_USER, "ids": gen, "text": text,
                   "peft_reference_ids_prefix_agreement": f"{agree}/{len(ref_ids)}",
                   # PEFT's top1-top2 logit gap at the first differing step: a near tie there means the
                   # divergence is rounding (llama.cpp quantizes activations to 8 bits), not a bug.
                   "peft_reference_gap_at_divergence": (ref_run["steps"][agree]["gap"]
                                                        if agree < len(ref_ids) else None)},
        **extra,
    }
    if adapter and not text.lstrip().startswith("Arr"):
        rec["error"] = f"with-LoRA answer does not start with 'Arr': {text!r}"
    print("RESULT " + json.dumps(rec), flush=True)


# --------------------------------------------------------------------------- parent


def machine_info():
    info = {"platform": platform.platform(), "python": platform.python_version(), "nproc": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
        info["simd_flags"] = sorted(x for x in flags if x in ("avx", "avx2", "fma", "f16c") or x.startswith("avx512")
                                    or x in ("amx_tile", "amx_int8", "amx_bf16", "avx_vnni"))
    except (OSError, StopIteration):
        pass
    return info


def versions(engines):
    import importlib.metadata as md

    got = {}
    if "transformers" in engines:
        got.update(common.check_versions())
    else:
        got["gguf"] = md.version("gguf")
    if "llama.cpp" in engines:
        v = md.version("llama_cpp_python")
        if v != LLAMA_CPP_VERSION:
            sys.exit(f"llama-cpp-python {v} installed, pinned {LLAMA_CPP_VERSION}")
        got["llama-cpp-python"] = v
    return got


def _pct(x):
    return "?" if x is None else f"{100 * x:.0f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(common.MODELS_DIR, "baselines.json"))
    ap.add_argument("--engines", default="llama.cpp,transformers", help="comma list of llama.cpp, transformers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed prefill+decode runs before the timed ones")
    ap.add_argument("--llama-extra-bufts", action="store_true",
                    help="let llama.cpp use its extra CPU buffer types (AMX / repack); off by default, see docstring")
    ap.add_argument("--no-adapter-only", action="store_true", help="skip the with-LoRA configurations")
    ap.add_argument("--worker", choices=["llama.cpp", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--adapter", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        run_worker(args.worker, bool(args.adapter), args.threads, args.runs, args.warmup, args.llama_extra_bufts)
        return

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ("llama.cpp", "transformers"):
            sys.exit(f"unknown engine {e}")
    vers = versions(engines)
    gguf = common.gguf_path()
    lora_info = None
    if "llama.cpp" in engines and not args.no_adapter_only:
        lora_info = convert_peft_lora_to_gguf(common.ADAPTER_DIR, gguf, LORA_GGUF)
        print(f"wrote {LORA_GGUF} ({lora_info['tensors']} tensors, {lora_info['bytes']} bytes)", file=sys.stderr)

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    records = []
    failed = False
    for engine in engines:
        for adapter in ([0] if args.no_adapter_only else [0, 1]):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--adapter", str(adapter),
                   "--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]
            if args.llama_extra_bufts:
                cmd.append("--llama-extra-bufts")
            print(f"running {engine} adapter={adapter} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            rec = None
            for line in proc.stdout.splitlines():
                if line.startswith("RESULT "):
                    rec = json.loads(line[len("RESULT "):])
            if proc.returncode != 0 or rec is None:
                failed = True
                rec = {"engine": engine, "adapter": "pirate" if adapter else "none",
                       "error": f"exit {proc.returncode}: {proc.stderr[-3000:]}"}
                print(rec["error"], file=sys.stderr)
            else:
                s = rec["sanity"]
                print(f"  sanity ({'LoRA' if adapter else 'base'}): {s['text']!r}  "
                      f"[PEFT reference ids prefix agreement {s['peft_reference_ids_prefix_agreement']}"
                      + ("" if s["peft_reference_gap_at_divergence"] is None else
                         f"; PEFT's top-2 logit gap at the first difference: {s['peft_reference_gap_at_divergence']:.3f}")
                      + "]",
                      file=sys.stderr)
                if "error" in rec:
                    failed = True
                    print("  ERROR: " + rec["error"], file=sys.stderr)
            records.append(rec)

    result = {
        "format_version": 1,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "versions": vers,
        "model": {"gguf": common.GGUF_NAME, "gguf_bytes": os.path.getsize(gguf)},
        "lora_gguf": lora_info and {k: (os.path.relpath(v, common.REPO_ROOT) if k == "path" else v)
                                    for k, v in lora_info.items()},
        "workload": {"prompt": "[(i * 7919) % 10000 + 100 for i in range(128)], no BOS", "prompt_tokens": PROMPT_LEN,
                     "decode_steps": DECODE_STEPS, "batch": 1, "threads": args.threads, "runs": args.runs,
                     "warmup_runs": args.warmup,
                     "best_of": "max tok/s per metric over runs", "greedy": True, "eos_ignored": True},
        "results": records,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print(f"\nGGUF {common.GGUF_NAME}: {os.path.getsize(gguf)} bytes ({os.path.getsize(gguf) / 2**20:.1f} MiB); {vers}; "
          f"{result['machine'].get('cpu', '?')}, {args.threads} threads, best of {args.runs}\n")
    print("| engine | adapter | prefill tok/s (128) | decode tok/s (64) | peak RSS MiB | other load |")
    print("|---|---|---:|---:|---:|---:|")
    for r in records:
        if "prefill_tok_s" in r:
            print(f"| {r['engine']} | {r['adapter']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} | {_pct(r.get('background_cpu_busy'))} |")
        else:
            print(f"| {r['engine']} | {r['adapter']} | error | error | - | - |")
    print(f"\nwrote {args.out}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
