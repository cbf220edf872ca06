#!/usr/bin/env python3
"""The LoRA adapters of scripts/bench_models.sh: r=16 on every linear layer of the Qwen2.5-Coder
0.5B and 1.5B models, made by PEFT, and the same adapters converted to GGUF by llama.cpp's own
convert_lora_to_gguf.py, so that graft and llama.cpp run one adapter.

Pins (asserted): torch 2.6.0, transformers 5.25.0, peft 0.21.2; llama.cpp's converter and gguf-py
from the llama-cpp-python 0.3.36 sdist (LLAMA_CPP points at its vendor/llama.cpp).

    scripts/fetch_models.sh qwen2.5-coder-0.5b qwen2.5-coder-1.5b
    LLAMA_CPP=… /work/py5/bin/python scripts/make_bench_lora.py [NAME…]
    LLAMA_CPP=… /work/py5/bin/python scripts/make_bench_lora.py --count 32

For each model it writes models/bench-lora/<name>/ (git-ignored, like the models):

    base/config.json        the model's config as transformers reads it from the GGUF (the
                            converter needs a Hugging Face config next to the adapter)
    adapter/                the PEFT adapter: LoRA r=16, alpha=32, dropout 0, on q/k/v/o_proj and
                            gate/up/down_proj of every layer, seeded values (A ~ N(0, 1/in),
                            B ~ N(0, 0.02²), generator seed 1), saved by PeftModel.save_pretrained
    adapter.gguf            the same adapter, converted by convert_lora_to_gguf.py (f32)

With --count N (the multi-adapter serving benchmarks, scripts/bench_serve_peft.py) it makes, for
qwen2.5-coder-0.5b only, N distinct adapters of that same shape instead of the single one:

    base/config.json        as above
    many/a00 … many/a{N-1}  each an adapter/ and an adapter.gguf as above, the values drawn from
                            generator seed 100 + i for many/a{i} (so no two are alike, and none
                            equals the single adapter's seed 1); 34 MB + 34 MB each

The values only need to be non-zero (the benchmarks time the adapter, the tests check its
numbers); the base weights are never read, so the model is built from its config alone.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers
import peft
from peft import LoraConfig, get_peft_model

ROOT = Path(__file__).resolve().parent.parent
PINS = {"torch": "2.6.0", "transformers": "5.25.0", "peft": "0.21.2"}
MODELS = {
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "qwen2.5-coder-1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MANY_MODEL = "qwen2.5-coder-0.5b"  # the only model --count makes adapters for
MANY_SEED = 100  # many/a{i} draws its values from generator seed MANY_SEED + i


def fill(pm, seed):
    """Overwrites every LoRA A and B of pm with seeded values: A ~ N(0, 1/in), B ~ N(0, 0.02²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def convert(converter, llama_cpp, base, adapter, outfile):
    env = {**os.environ, "PYTHONPATH": str(llama_cpp / "gguf-py")}
    subprocess.run(
        [sys.executable, str(converter), "--base", str(base), "--outtype", "f32",
         "--outfile", str(outfile), str(adapter)],
        check=True, env=env)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"models to make the adapter for (default: all of {', '.join(MODELS)})")
    ap.add_argument("--count", type=int, default=None, metavar="N",
                    help=f"make N distinct adapters in models/bench-lora/{MANY_MODEL}/many/aXX "
                         f"instead (only {MANY_MODEL})")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}: one of {', '.join(MODELS)}")
    for mod, want in PINS.items():
        have = {"torch": torch, "transformers": transformers, "peft": peft}[mod].__version__.split("+")[0]
        if have != want:
            sys.exit(f"{mod} {have} installed, this script is pinned to {want}")
    llama_cpp = Path(os.environ.get("LLAMA_CPP", "/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp"))
    converter = llama_cpp / "convert_lora_to_gguf.py"
    if not converter.exists():
        sys.exit(f"{converter} not found: set LLAMA_CPP to the llama.cpp source folder")
    if args.count is not None:
        if args.count < 1 or args.count > 100:
            sys.exit("--count must be 1 … 100 (the folders are named a00 … a99)")
        if any(n != MANY_MODEL for n in args.names):
            sys.exit(f"--count makes adapters for {MANY_MODEL} only")
        names = [MANY_MODEL]
    else:
        names = args.names or list(MODELS)
    for name in names:
        gguf = ROOT / "models" / MODELS[name]
        if not gguf.exists():
            print(f"skipping {name}: {gguf} not fetched (scripts/fetch_models.sh {name})")
            continue
        out = ROOT / "models" / "bench-lora" / name
        cfg = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the GGUF's config has no `architectures`; the converter picks its class by it
        cfg.architectures = ["Qwen2ForCausalLM"]
        cfg.save_pretrained(out / "base")
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
        pm = get_peft_model(model, lcfg)
        pm.peft_config["default"].base_model_name_or_path = f"models/{MODELS[name]}"
        if args.count is None:
            jobs = [(1, out)]
        else:
            jobs = [(MANY_SEED + i, out / "many" / f"a{i:02d}") for i in range(args.count)]
        for seed, dest in jobs:
            fill(pm, seed)
            pm.save_pretrained(dest / "adapter")
            convert(converter, llama_cpp, out / "base", dest / "adapter", dest / "adapter.gguf")
            print(f"{name}: {dest}")
        del pm, model


if __name__ == "__main__":
    main()
