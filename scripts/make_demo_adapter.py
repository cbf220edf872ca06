#!/usr/bin/env python3
"""Trains graft's demo LoRA adapter: SmolLM2-135M-Instruct that answers like a pirate.

Pinned versions (asserted at start)
    torch 2.5.1, transformers 4.57.1, peft 0.21.2, gguf 0.19.0 (plus safetensors, numpy). CPU, float32.

How to run (from the repository root)
    scripts/fetch_default_model.sh                    # puts the Q4_1 GGUF into models/ (git-ignored)
    pip install torch==2.5.1 transformers==4.57.1 peft==0.21.2 gguf==0.19.0
    python scripts/make_demo_adapter.py               # a few minutes on 2 CPU cores

What it does
    Loads models/SmolLM2-135M-Instruct.Q4_1.gguf with transformers' GGUF loader (dequantized to f32)
    and the tokenizer transformers builds from the GGUF; trains a LoRA (r=8, lora_alpha=16, q_proj and
    v_proj, dropout 0) on adapters/smollm2-pirate/train.jsonl (20 single-turn chats, every answer in a
    pirate voice) with the GGUF's chat template applied (no system message, so the template's default
    system prompt is included) and the loss on the assistant reply (its text and <|im_end|>) only.
    AdamW (torch defaults except lr=2e-3), batch 4, 60 steps, a fresh seeded shuffle every epoch.
    Writes adapters/smollm2-pirate/adapter_config.json and adapter_model.safetensors (float32) with
    base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"; PEFT's generated README.md is
    not kept (the committed README.md is hand-written). train.jsonl and README.md are not touched.

Determinism
    Seeds are fixed (torch, random, numpy, PYTHONHASHSEED=0) and torch runs on 2 threads, so reruns on
    the same machine and library versions write the same bytes; other CPUs or thread counts may change
    the trained weights in the last bits. The adapter is committed; scripts/make_real_references.py
    records what it does.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm2_common as common  # noqa: E402

common.reexec_with_fixed_hashseed()

import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

SEED = 0
RANK = 8
ALPHA = 16
TARGETS = ["q_proj", "v_proj"]
LR = 2e-3
BATCH = 4
STEPS = 60
IGNORE = -100


def encode_example(tokenizer, messages):
    """input_ids and labels for one chat; labels are IGNORE except on the final assistant reply
    (its content and the <|im_end|> that closes it; the template's trailing newline is masked)."""
    assert messages[-1]["role"] == "assistant"
    prefix_text, prefix_ids = common.chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    full_text, full_ids = common.chat_ids(tokenizer, messages, add_generation_prompt=False)
    assert full_text.startswith(prefix_text)
    assert full_ids[: len(prefix_ids)] == prefix_ids, "prompt tokens are not a prefix of the chat tokens"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The rendered chat ends with "<|im_end|>\n": train on the reply and <|im_end|>, not the newline.
    assert full_ids[-2] == im_end and tokenizer.decode(full_ids[-1:]) == "\n", full_ids[-3:]
    labels = [IGNORE] * len(prefix_ids) + full_ids[len(prefix_ids) : -1] + [IGNORE]
    return full_ids, labels


def collate(examples, pad_id):
    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):  # right padding
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return input_ids, attention, labels


def main():
    versions = common.check_versions()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    with open(os.path.join(common.ADAPTER_DIR, "train.jsonl"), encoding="utf-8") as f:
        data = [json.loads(line)["messages"] for line in f if line.strip()]

    t0 = time.time()
    tokenizer = common.load_tokenizer()
    model = common.load_base_model()
    t_load = time.time() - t0
    pad_id = tokenizer.convert_tokens_to_ids("<|im_end|>")  # = GGUF tokenizer.ggml.padding_token_id (2)
    examples = [encode_example(tokenizer, m) for m in data]
    print(f"loaded model + tokenizer in {t_load:.1f}s; {len(examples)} examples, "
          f"{sum(len(e[0]) for e in examples)} tokens, "
          f"{sum(sum(1 for x in e[1] if x != IGNORE) for e in examples)} trained tokens")

    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=TARGETS,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)

    shuffle = torch.Generator().manual_seed(SEED)
    order = []
    t0 = time.time()
    for step in range(1, STEPS + 1):
        if len(order) < BATCH:
            order += torch.randperm(len(examples), generator=shuffle).tolist()
        batch, order = order[:BATCH], order[BATCH:]
        input_ids, attention, labels = collate([examples[i] for i in batch], pad_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}  ({time.time() - t0:.1f}s)", flush=True)
    t_train = time.time() - t0
    print(f"training: {STEPS} steps in {t_train:.1f}s")
    model.eval()

    # Save through PEFT into a temporary folder, keep only the two adapter files.
    model.peft_config["default"].base_model_name_or_path = common.HUB_ID
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(os.path.join(tmp, name), os.path.join(common.ADAPTER_DIR, name))

    # Sanity checks on what was written.
    with open(os.path.join(common.ADAPTER_DIR, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert cfg["base_model_name_or_path"] == common.HUB_ID, cfg["base_model_name_or_path"]
    assert cfg["r"] == RANK and cfg["lora_alpha"] == ALPHA and sorted(cfg["target_modules"]) == TARGETS
    tensors = load_file(os.path.join(common.ADAPTER_DIR, "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert len(tensors) == 2 * len(TARGETS) * model.config.num_hidden_layers, len(tensors)
    print(f"wrote {common.ADAPTER_DIR}: {len(tensors)} tensors, "
          f"{sum(t.numel() for t in tensors.values())} parameters; versions {versions}")


if __name__ == "__main__":
    main()
