#!/usr/bin/env python3
"""Training reference fixtures for graft: a few AdamW steps on PEFT adapters, recorded step by step.

Purpose
    For each case it builds a PEFT adapter on one of the tiny base models in tests/fixtures/models/,
    saves the *initial* adapter with PEFT's save_pretrained, runs 3 optimisation steps on one fixed batch
    (HF causal-LM loss -> backward -> clip_grad_norm_(1.0) -> torch.optim.AdamW.step -> zero_grad) and
    records the losses, the pre-clipping gradient norms, the step-1 gradients, the parameters after steps
    1 and 3, the final adapter (save_pretrained again) and the final model's logits. graft's Rust training
    code is tested against these files.

Pinned versions (asserted at start)
    torch 2.5.1, transformers 4.57.1, peft 0.21.2 (plus safetensors, numpy). CPU, float32, 1 thread.

How to run (from anywhere; paths are resolved from the repository root)
    python scripts/make_train_fixtures.py

    It deletes and rewrites tests/fixtures/train/ and touches nothing else. It only reads
    tests/fixtures/models/{llama,llama-tied}/ (written by tests/fixtures/gen_fixtures.py). It runs in a
    few seconds. CI does not run it; the generated files are committed.

Checks (the script fails if any fails)
    - every trainable parameter maps to exactly one key of get_peft_model_state_dict (matched by storage),
      with the same shape, and the saved adapter_model.safetensors holds exactly those keys (plus the
      "base_model.model." prefix) with those shapes and values;
    - initial/ and final/ reload onto a fresh base (PeftModel.from_pretrained) without missing-key
      warnings and with no unexpected keys, and reproduce the in-memory logits bit for bit;
    - training again from the reloaded initial/ (is_trainable=True) reproduces every recorded number bit
      for bit, so the fixture is self-contained: initial/ + batch + hyper-parameters => expected.

Output layout and conventions: see tests/fixtures/train/README.md.
"""

import os
import sys

# PEFT writes some config lists (target_modules, ...) from Python sets, whose order depends on string
# hashing: re-exec with a fixed PYTHONHASHSEED so adapter_config.json is reproducible.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

PINNED = {"torch": "2.5.1", "transformers": "4.57.1", "peft": "0.21.2"}

ROOT = Path(__file__).resolve().parents[1]
MODELS_REL = Path("tests/fixtures/models")
OUT_REL = Path("tests/fixtures/train")
PREFIX = "base_model.model."

# Optimisation (identical for every case).
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
STEPS = 3

# Seeds: torch.manual_seed(MODEL_SEED) right before get_peft_model (PEFT's init of A/B uses the global
# RNG), a private generator for the batch and one for the IA3 start values.
MODEL_SEED = 1234
BATCH_SEED = 20240611
IA3_SEED = 7

# The batch: 2 rows x 10 tokens, ids in [3, 127]; row 1 is right-padded (pad id 0) after 7 tokens; the
# first PROMPT_LEN label positions of each row are masked (-100), and so are padded positions.
BATCH, SEQ = 2, 10
ROW1_LEN = 7
PAD_ID = 0
PROMPT_LEN = 3

ATTN_IMPL = "eager"


# --------------------------------------------------------------------------------------------------
# setup helpers
# --------------------------------------------------------------------------------------------------


def check_versions():
    got = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    bad = {k: (got[k], v) for k, v in PINNED.items() if got[k] != v}
    if bad:
        sys.exit(f"make_train_fixtures.py: version mismatch (got, want): {bad}")
    return {**got, "safetensors": safetensors.__version__, "numpy": numpy.__version__}


CONTEXT = ["setup"]
CAPTURED = {}  # context -> list of unique warning messages


def _record(msg: str):
    msg = msg.replace(str(ROOT) + "/", "")
    lst = CAPTURED.setdefault(CONTEXT[0], [])
    if msg not in lst:
        lst.append(msg)


def _showwarning(message, category, filename, lineno, file=None, line=None):
    _record(f"{category.__name__}: {message}")


class _LogHandler(logging.Handler):
    def emit(self, record):
        _record(f"log[{record.name}]: {record.getMessage()}")


def install_capture():
    warnings.simplefilter("always")
    warnings.showwarning = _showwarning
    h = _LogHandler(level=logging.WARNING)
    for name in ("transformers", "peft"):
        logging.getLogger(name).addHandler(h)
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()


def load_base(model: str):
    m = AutoModelForCausalLM.from_pretrained(
        str(MODELS_REL / model), attn_implementation=ATTN_IMPL, dtype=torch.float32
    )
    return m.eval()


def make_batch():
    g = torch.Generator().manual_seed(BATCH_SEED)
    input_ids = torch.randint(3, 128, (BATCH, SEQ), generator=g, dtype=torch.int64)
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    attention_mask[1, ROW1_LEN:] = 0
    input_ids[1, ROW1_LEN:] = PAD_ID
    labels = input_ids.clone()
    labels[:, :PROMPT_LEN] = -100
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------


def hook_ia3_start(pm):
    """Every ia3_l := 1 + 0.1 * N(0, 1) (seeded), so the start is not the identity."""
    g = torch.Generator().manual_seed(IA3_SEED)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".ia3_l." in name:
                p.copy_(1.0 + 0.1 * torch.randn(tuple(p.shape), generator=g, dtype=torch.float32))


CASES = [
    {
        "name": "lora",
        "model": "llama",
        "config": lambda: LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            lora_dropout=0.0,
            init_lora_weights=False,
        ),
        "description": (
            "Plain LoRA r=4, lora_alpha=8 (scale alpha/r = 2) on q_proj, v_proj, down_proj of both layers. "
            "init_lora_weights=False: lora_A and lora_B both keep nn.Linear's default kaiming-uniform init "
            "(drawn from the global RNG after torch.manual_seed), so both are non-zero and both get gradients."
        ),
    },
    {
        "name": "lora_rslora",
        "model": "llama",
        "config": lambda: LoraConfig(
            r=4,
            lora_alpha=8,
            use_rslora=True,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            rank_pattern={"down_proj": 2},
            alpha_pattern={"o_proj": 4},
            lora_dropout=0.0,
            init_lora_weights=False,
        ),
        "description": (
            "rsLoRA (scale alpha/sqrt(r)) on all 7 Linear projections of both layers, r=4, lora_alpha=8, "
            "rank_pattern {down_proj: 2}, alpha_pattern {o_proj: 4}. Scales: q/k/v/gate/up 8/sqrt(4) = 4, "
            "o_proj 4/sqrt(4) = 2, down_proj 8/sqrt(2) = 5.657 (rank 2). init_lora_weights=False."
        ),
    },
    {
        "name": "ia3",
        "model": "llama",
        "config": lambda: IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        "hook": hook_ia3_start,
        "description": (
            "IA3 on k_proj, v_proj (output scaling: y = (W x) * l, ia3_l shape (out, 1) = (16, 1)) and "
            "down_proj as feedforward module (input scaling: y = W (x * l), ia3_l shape (1, in) = (1, 64)). "
            "After get_peft_model every ia3_l was set to 1 + 0.1 * N(0, 1) (seeded), so the start is not all "
            "ones. Saved keys end in '.ia3_l' (no '.weight'); weight decay applies to ia3_l like to any "
            "trainable parameter (it decays towards 0, not towards 1)."
        ),
    },
    {
        "name": "modules_to_save",
        "model": "llama",
        "config": lambda: LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            init_lora_weights=False,
            modules_to_save=["lm_head"],
        ),
        "description": (
            "LoRA r=4, lora_alpha=8 (scale 2) on q_proj, v_proj with init_lora_weights=False, plus "
            "modules_to_save=['lm_head']: PEFT wraps lm_head in a ModulesToSaveWrapper holding a trainable "
            "deep copy (modules_to_save.default) and the frozen original; the copy is trained in full and "
            "saved as 'base_model.model.lm_head.weight' (key 'lm_head.weight' here)."
        ),
    },
    {
        "name": "modules_to_save_tied",
        "model": "llama-tied",
        "config": lambda: LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            init_lora_weights=False,
            modules_to_save=["lm_head"],
        ),
        "description": None,  # filled in from what was observed (see tied_notes)
    },
]


# --------------------------------------------------------------------------------------------------
# key mapping, saving, training
# --------------------------------------------------------------------------------------------------


def trainable_params(pm):
    return [(n, p) for n, p in pm.named_parameters() if p.requires_grad]


def key_map(pm):
    """{parameter name: saved key without PREFIX}, matched by storage against get_peft_model_state_dict."""
    sd = get_peft_model_state_dict(pm)
    by_ptr = {}
    for k, v in sd.items():
        assert k.startswith(PREFIX), k
        assert v.data_ptr() not in by_ptr, f"two saved keys share storage: {k}"
        by_ptr[v.data_ptr()] = (k[len(PREFIX):], tuple(v.shape))
    out = {}
    for name, p in trainable_params(pm):
        assert p.data_ptr() in by_ptr, f"trainable parameter {name} has no saved key"
        key, shape = by_ptr[p.data_ptr()]
        assert shape == tuple(p.shape), (name, key, shape, tuple(p.shape))
        out[name] = key
    assert sorted(out.values()) == sorted(k for k, _ in by_ptr.values()), "saved keys != trainable parameters"
    assert len(set(out.values())) == len(out)
    return out


def save_peft(pm, dest: Path):
    """PeftModel.save_pretrained into dest/ (adapter_config.json + adapter_model.safetensors; README dropped)."""
    with tempfile.TemporaryDirectory() as td:
        pm.save_pretrained(td, safe_serialization=True)
        written = sorted(str(p.relative_to(td)) for p in Path(td).rglob("*") if p.is_file())
        extra = [w for w in written if w not in ("adapter_config.json", "adapter_model.safetensors", "README.md")]
        assert not extra, f"PEFT wrote unexpected files: {extra}"
        dest.mkdir(parents=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(Path(td) / f, dest / f)


def check_saved(dest: Path, pm, kmap):
    """The saved file holds exactly the trainable parameters (shape and value)."""
    saved = load_file(str(dest / "adapter_model.safetensors"))
    params = dict(trainable_params(pm))
    want = {PREFIX + k: n for n, k in kmap.items()}
    assert sorted(saved) == sorted(want), (sorted(saved), sorted(want))
    for k, n in want.items():
        assert saved[k].dtype == torch.float32, k
        assert tuple(saved[k].shape) == tuple(params[n].shape), k
        assert torch.equal(saved[k], params[n].detach()), k


@torch.no_grad()
def logits_of(pm, batch):
    was_training = pm.training
    pm.eval()
    out = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    pm.train(was_training)
    return out.logits.detach().to(torch.float32).clone().contiguous()


def train(pm, batch, kmap):
    """3 steps of loss -> backward -> clip_grad_norm_ -> AdamW.step -> zero_grad; returns the records."""
    pm.train()
    named = trainable_params(pm)
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    losses, norms, rec = [], [], {}
    for step in range(1, STEPS + 1):
        out = pm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            use_cache=False,
        )
        loss = out.loss
        loss.backward()
        losses.append(loss.detach().clone())
        if step == 1:
            for n, p in named:
                assert p.grad is not None and p.grad.abs().max() > 0, f"no gradient for {n}"
                rec["grad." + kmap[n]] = p.grad.detach().clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm=MAX_GRAD_NORM)
        norms.append(total.detach().clone())
        opt.step()
        opt.zero_grad()
        if step in (1, STEPS):
            for n, p in named:
                rec[f"after{step}." + kmap[n]] = p.detach().clone()
    rec["loss"] = torch.stack(losses).to(torch.float32)
    rec["grad_norm"] = torch.stack(norms).to(torch.float32)
    return {k: v.contiguous() for k, v in rec.items()}


def reload(model: str, adapter_dir: Path, is_trainable: bool, ctx: str):
    CONTEXT[0] = ctx
    base = load_base(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    for w in caught:
        _record(f"{w.category.__name__}: {w.message}")
        msg = str(w.message).lower()
        assert "missing" not in msg and "unexpected" not in msg, f"{ctx}: {w.message}"
    # no unexpected keys either (PeftModel.from_pretrained does not warn about those)
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    sd = get_peft_model_state_dict(pm)
    assert sorted(sd) == sorted(saved), f"{ctx}: keys differ: {sorted(set(sd) ^ set(saved))}"
    for k in saved:
        assert torch.equal(sd[k], saved[k]), f"{ctx}: {k} not loaded"
    return pm


# --------------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------------


def tied_notes(case_dir: Path, pm, base_files_embed, kmap):
    """What PEFT did with modules_to_save=['lm_head'] on a tied model (after training)."""
    inner = pm.base_model.model
    wrapper = inner.lm_head
    embed = inner.model.embed_tokens.weight
    orig = wrapper.original_module.weight
    copy = wrapper.modules_to_save["default"].weight
    saved = sorted(load_file(str(case_dir / "final" / "adapter_model.safetensors")))
    init_head = load_file(str(case_dir / "initial" / "adapter_model.safetensors"))[PREFIX + "lm_head.weight"]
    notes = {
        "lm_head_type": type(wrapper).__name__,
        "original_lm_head_still_tied_to_embed_tokens": orig.data_ptr() == embed.data_ptr(),
        "trained_copy_shares_storage_with_embed_tokens": copy.data_ptr() == embed.data_ptr(),
        "embed_tokens_unchanged_after_training": bool(torch.equal(embed.detach(), base_files_embed)),
        "embed_tokens_requires_grad": bool(embed.requires_grad),
        "trained_lm_head_differs_from_embed_tokens": not bool(torch.equal(copy.detach(), embed.detach())),
        "saved_keys_with_embed_or_lm_head": [k for k in saved if "embed" in k or "lm_head" in k],
        "initial_lm_head_equals_base_embed_tokens": bool(torch.equal(init_head, base_files_embed)),
        "ensure_weight_tying": bool(getattr(pm.peft_config["default"], "ensure_weight_tying", False)),
    }
    assert notes["embed_tokens_unchanged_after_training"]
    assert notes["initial_lm_head_equals_base_embed_tokens"]
    assert notes["original_lm_head_still_tied_to_embed_tokens"]
    assert not notes["trained_copy_shares_storage_with_embed_tokens"]
    assert notes["trained_lm_head_differs_from_embed_tokens"]
    assert notes["saved_keys_with_embed_or_lm_head"] == ["base_model.model.lm_head.weight"]
    desc = (
        "Same config as modules_to_save (LoRA r=4, alpha 8 on q_proj/v_proj, init_lora_weights=False, "
        "modules_to_save=['lm_head']) on llama-tied (tie_word_embeddings=true, 3 layers, q/k/v/o biases, "
        "1 KV head; no lm_head.weight in the base files). PEFT (ensure_weight_tying left at its default "
        "False) wraps lm_head in a ModulesToSaveWrapper whose trainable copy is a deep copy of the tied "
        "weight, i.e. a NEW tensor initialised to embed_tokens.weight; it warns 'Model has "
        "`tie_word_embeddings=True` and a tied layer is part of the adapter, but `ensure_weight_tying` is "
        "not set to True ...'. Training updates only that copy: embed_tokens (frozen, still tied to the "
        "wrapper's original_module) is bit-identical to the base after 3 steps, and the input embedding "
        "uses it unchanged, while the output projection uses the trained copy, so after training the model "
        "is effectively UNTIED. The saved state dict has the LoRA keys plus 'base_model.model.lm_head.weight' "
        "(128 x 32, the full trained copy) and no embed_tokens key; initial/ holds the copy's start value, "
        "which equals the base's embed_tokens.weight. Loading final/ onto a fresh llama-tied base "
        "reproduces final_logits.safetensors exactly (PEFT puts the saved lm_head.weight into a new copy and "
        "leaves the tied embedding alone). A graft implementation must therefore untie: gradient flows into "
        "the lm_head copy only, never into embed_tokens."
    )
    return notes, desc


def dumps(obj) -> str:
    """json.dumps(indent=2), with lists of numbers kept on one line."""
    s = json.dumps(obj, indent=2, ensure_ascii=False)
    s = re.sub(r"\[\s+([-+0-9.e]+(?:,\s+[-+0-9.e]+)*)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", s)
    return s + "\n"


def run_case(case, batch, versions, out_root: Path):
    name, model = case["name"], case["model"]
    case_dir = out_root / name
    case_dir.mkdir(parents=True)

    CONTEXT[0] = f"{name}: get_peft_model"
    base = load_base(model)
    torch.manual_seed(MODEL_SEED)
    pm = get_peft_model(base, case["config"]())
    if case.get("hook"):
        case["hook"](pm)
    pm.train()
    kmap = key_map(pm)
    initial_logits = logits_of(pm, batch)

    CONTEXT[0] = f"{name}: save initial"
    save_peft(pm, case_dir / "initial")
    check_saved(case_dir / "initial", pm, kmap)

    CONTEXT[0] = f"{name}: train"
    rec = train(pm, batch, kmap)
    CONTEXT[0] = f"{name}: save final"
    save_peft(pm, case_dir / "final")
    check_saved(case_dir / "final", pm, kmap)
    final_logits = logits_of(pm, batch)

    # files + reloaded model reproduce everything
    pm_i = reload(model, case_dir / "initial", False, f"{name}: reload initial")
    assert torch.equal(logits_of(pm_i, batch), initial_logits), f"{name}: initial/ does not reproduce logits"
    pm_f = reload(model, case_dir / "final", False, f"{name}: reload final")
    assert torch.equal(logits_of(pm_f, batch), final_logits), f"{name}: final/ does not reproduce logits"
    pm_t = reload(model, case_dir / "initial", True, f"{name}: retrain from initial")
    kmap_t = key_map(pm_t)
    assert sorted(kmap_t.values()) == sorted(kmap.values())
    rec_t = train(pm_t, batch, kmap_t)
    assert sorted(rec_t) == sorted(rec)
    for k in rec:
        assert torch.equal(rec_t[k], rec[k]), f"{name}: retraining from initial/ changed {k}"

    description = case["description"]
    notes = {}
    if name == "modules_to_save_tied":
        fresh = load_base(model)
        files_embed = fresh.model.embed_tokens.weight.detach().clone()
        notes, description = tied_notes(case_dir, pm, files_embed, kmap)

    save_file({k: batch[k].contiguous() for k in ("input_ids", "attention_mask", "labels")}, str(case_dir / "batch.safetensors"))
    save_file(dict(sorted(rec.items())), str(case_dir / "expected.safetensors"))
    save_file({"logits": final_logits}, str(case_dir / "final_logits.safetensors"))

    loss = rec["loss"].tolist()
    gn = rec["grad_norm"].tolist()
    clip = [min(1.0, MAX_GRAD_NORM / (n + 1e-6)) for n in gn]
    keys = sorted(kmap.values())
    shapes = {k: list(rec["grad." + k].shape) for k in keys}
    cj = {
        "model": model,
        "description": description,
        "lr": LR,
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": WEIGHT_DECAY,
        "max_grad_norm": MAX_GRAD_NORM,
        "steps": STEPS,
        "trainable_keys": keys,
        "shapes": shapes,
        "seeds": {"torch.manual_seed before get_peft_model": MODEL_SEED, "batch": BATCH_SEED}
        | ({"ia3_l": IA3_SEED} if case.get("hook") else {}),
        "observed": {
            "loss": [float(f"{x:.6g}") for x in loss],
            "grad_norm": [float(f"{x:.6g}") for x in gn],
            "clip_coef": [float(f"{x:.6g}") for x in clip],
            "num_label_tokens_after_shift": int((batch["labels"][:, 1:] != -100).sum()),
            "max_abs_final_logit": float(f"{final_logits.abs().max().item():.6g}"),
        },
        "peft_warnings": sorted(
            {m for ctx, msgs in CAPTURED.items() if ctx.startswith(name + ":") for m in msgs}
        ),
        "versions": versions,
    }
    if notes:
        cj["tied_notes"] = notes
    (case_dir / "case.json").write_text(dumps(cj))
    return cj


def main():
    versions = check_versions()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    install_capture()
    os.chdir(ROOT)
    out_root = OUT_REL
    readme = out_root / "README.md"
    keep_readme = readme.read_bytes() if readme.exists() else None
    if out_root.exists():
        shutil.rmtree(out_root)
    out_root.mkdir(parents=True)
    if keep_readme is not None:  # the README is hand-written; keep it
        readme.write_bytes(keep_readme)

    batch = make_batch()
    summary = []
    for case in CASES:
        cj = run_case(case, batch, versions, out_root)
        summary.append((case["name"], cj))

    print(f"wrote {OUT_REL}/ (torch {versions['torch']}, transformers {versions['transformers']}, peft {versions['peft']})")
    for name, cj in summary:
        size = sum(p.stat().st_size for p in (out_root / name).rglob("*") if p.is_file())
        o = cj["observed"]
        print(
            f"  {name:22s} {len(cj['trainable_keys']):3d} keys  {size / 1024:6.1f} KiB  "
            f"loss {o['loss']}  grad_norm {o['grad_norm']}"
        )
    other = {k: v for k, v in CAPTURED.items() if v}
    if other:
        print("warnings:")
        for ctx, msgs in other.items():
            for m in msgs:
                print(f"  [{ctx}] {m}")


if __name__ == "__main__":
    main()
