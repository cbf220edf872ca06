#!/usr/bin/env python3
"""Builds the fuzz corpora (fuzz/corpus/<target>/) from the repository's fixtures at run time, so
that no large seed is committed: tests/fixtures/**/*.gguf, *.safetensors, adapter_config.json and
config.json files, chat templates from the fixtures, small hand-made tokenizers, and, when the
git-ignored models/*.gguf are there, small GGUFs made from their headers (their metadata with
arrays cut short, and some tensors of each type with one or two rows). Seeds are named by their
content's hash, so running it again adds nothing twice. Standard library only."""

import glob
import hashlib
import json
import os
import random
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def add(target, data, limit=1 << 20):
    if isinstance(data, str):
        data = data.encode()
    if len(data) > limit:
        return
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16])
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)


def read(p):
    with open(p, "rb") as f:
        return f.read()


# ---- GGUF reading and writing (enough for seeds) -------------------------------------------

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# ggml type -> (block length, block bytes)
GGML = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
        10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 30: (1, 2)}


class R:
    def __init__(self, f):
        self.f = f

    def take(self, n):
        b = self.f.read(n)
        if len(b) != n:
            raise EOFError
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        return self.take(self.u64()).decode("utf-8", "replace")

    def value(self, ty, cut):
        if ty in SCALARS:
            fmt = SCALARS[ty]
            return (ty, struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0])
        if ty == 8:
            return (8, self.string())
        if ty == 9:
            ety, n = self.u32(), self.u64()
            vals = [self.value(ety, cut)[1] for _ in range(n)]
            return (9, (ety, vals[:cut]))
        raise ValueError(f"type {ty}")


def read_gguf(path, cut=10**9):
    """(metadata [(key, (type, value))], tensors [(name, dims, type, offset)], data offset)."""
    with open(path, "rb") as f:
        r = R(f)
        assert r.take(4) == b"GGUF"
        r.u32()
        nt, nkv = r.u64(), r.u64()
        meta = []
        for _ in range(nkv):
            k = r.string()
            meta.append((k, r.value(r.u32(), cut)))
        tensors = []
        for _ in range(nt):
            name = r.string()
            nd = r.u32()
            dims = [r.u64() for _ in range(nd)]
            tensors.append((name, dims, r.u32(), r.u64()))
        align = dict(meta).get("general.alignment", (4, 32))[1]
        data_off = (f.tell() + align - 1) // align * align
    return meta, tensors, data_off


def put_str(out, s):
    b = s.encode()
    out += struct.pack("<Q", len(b)) + b


def put_value(out, ty, v):
    if ty in SCALARS:
        out += struct.pack(SCALARS[ty], v)
    elif ty == 8:
        put_str(out, v)
    else:
        ety, vals = v
        out += struct.pack("<IQ", ety, len(vals))
        for x in vals:
            put_value(out, ety, x)


def write_gguf(meta, tensors):
    """meta: [(key, (type, value))]; tensors: [(name, dims, type, data)]; 32-byte alignment."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
    for k, (ty, v) in meta:
        put_str(out, k)
        out += struct.pack("<I", ty)
        put_value(out, ty, v)
    off = 0
    for name, dims, ty, data in tensors:
        put_str(out, name)
        out += struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, off)
        off += (len(data) + 31) // 32 * 32
    out += b"\0" * (-len(out) % 32)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % 32)
    return bytes(out)


# ---- targets ---------------------------------------------------------------------------------

def gguf_seeds():
    for p in sorted(glob.glob(os.path.join(FIX, "**", "*.gguf"), recursive=True)):
        b = read(p)
        add("gguf_header", b)
        add("gguf_model", b)
        add("gguf_tokenizer", b)
    rng = random.Random(1)
    for p in sorted(glob.glob(os.path.join(ROOT, "models", "*.gguf"))):
        try:
            meta, tensors, data_off = read_gguf(p, cut=256)
        except Exception as e:  # a partial download, say
            print(f"make_corpus: skipping {p}: {e}", file=sys.stderr)
            continue
        # the real metadata (arrays cut to 256), no tensors
        add("gguf_header", write_gguf(meta, []))
        add("gguf_tokenizer", write_gguf(meta, []))
        # the metadata and, per tensor type, up to three tensors cut to one or two rows of real data
        picked, per_type = [], {}
        with open(p, "rb") as f:
            for name, dims, ty, off in tensors:
                if ty not in GGML or per_type.get(ty, 0) >= 3:
                    continue
                per_type[ty] = per_type.get(ty, 0) + 1
                bl, bb = GGML[ty]
                dims2 = [dims[0]] + [1] * (len(dims) - 1)
                if len(dims) > 1:
                    dims2[1] = min(dims[1], 2)
                n = dims[0] // bl * bb * (dims2[1] if len(dims) > 1 else 1)
                f.seek(data_off + off)
                picked.append((name, dims2, ty, f.read(n)))
        g = write_gguf(meta, picked)
        add("gguf_header", g, limit=4 << 20)
        add("gguf_model", g, limit=4 << 20)
        # blocks of real data for the block decoders: [qtype index, rows, blocks, tokens, flags]
        order = [0, 1, 30, 8, 2, 3, 6, 7, 10, 11, 12, 13, 14]  # graft's QType order
        for name, dims, ty, data in picked:
            if ty in order:
                bl, bb = GGML[ty]
                blocks = min(dims[0] // bl, 4)
                add("quant_blocks", bytes([order.index(ty), 2, blocks, 2, 0]) + data[: 2 * blocks * bb])
        # the tokenizer metadata as JSON, the vocabulary cut to 1000 (merges within it)
        m = {k: v for k, (ty, v) in read_gguf(p, cut=10**9)[0] if k.startswith("tokenizer.") or k == "general.architecture"}
        toks = m.get("tokenizer.ggml.tokens", (8, []))[1][:1000]
        j = {}
        for k, v in m.items():
            if isinstance(v, tuple):
                v = v[1][: len(toks)] if k != "tokenizer.ggml.merges" else v[1]
            j[k] = v
        if "tokenizer.ggml.merges" in j:
            have = set(toks)
            j["tokenizer.ggml.merges"] = [x for x in j["tokenizer.ggml.merges"]
                                          if " " in x and all(t in have for t in x.split(" ", 1)) and x.replace(" ", "", 1) in have][:2000]
        add("gguf_tokenizer", json.dumps(j, ensure_ascii=False))
        if "tokenizer.chat_template" in j:
            add("gguf_tokenizer", j["tokenizer.chat_template"])


def quant_seeds():
    rng = random.Random(2)
    # per QType index: (block length, block bytes) in graft's order
    shapes = [(1, 4), (1, 2), (1, 2), (32, 34), (32, 18), (32, 20), (32, 22), (32, 24),
              (256, 84), (256, 110), (256, 144), (256, 176), (256, 210), (1, 1), (64, 32)]
    for i, (bl, bb) in enumerate(shapes):
        for rows, blocks, n, flags in [(2, 1, 1, 0), (3, 2, 2, 0), (1, 1, 3, 1), (2, 1, 1, 2)]:
            data = bytearray(rng.getrandbits(8) for _ in range(rows * blocks * bb + 16))
            # keep f16 scales small and finite: a zero high byte at each block's start
            for b in range(0, len(data), bb):
                if b + 1 < len(data):
                    data[b + 1] = 0x2c
            add("quant_blocks", bytes([i, rows, blocks, n, flags]) + bytes(data))


def safetensors_seeds():
    files = sorted(glob.glob(os.path.join(FIX, "**", "*.safetensors"), recursive=True))
    for p in files:
        add("safetensors_header", read(p), limit=64 << 10)
    add("safetensors_header", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")


def adapter_seeds():
    lib = read(os.path.join(ROOT, "fuzz", "src", "lib.rs")).decode()
    adapters = lib.split("pub const ADAPTERS")[1]
    paths = re.findall(r'include_bytes!\("\.\./\.\./(tests/fixtures/[^"]+)/adapter_model\.safetensors"\)', adapters)
    bases = re.findall(r"\((\d+), include_bytes!", adapters)
    for i, d in enumerate(paths):
        cfg = read(os.path.join(ROOT, d, "adapter_config.json"))
        add("adapter_config", bytes([0x1E, i]) + cfg)
        if i == 0:
            add("adapter_config", cfg)
        st = read(os.path.join(ROOT, d, "adapter_model.safetensors"))
        if len(cfg) < 65536:
            add("adapter_config", bytes([0x1F, int(bases[i])]) + struct.pack("<H", len(cfg)) + cfg + st, limit=64 << 10)
    for p in sorted(glob.glob(os.path.join(FIX, "**", "adapter_config.json"), recursive=True)):
        add("adapter_config", read(p))


def model_config_seeds():
    ps = sorted(glob.glob(os.path.join(FIX, "**", "config*.json"), recursive=True))
    names = ["llama", "llama-tied", "opt", "gemma2", "gemma3", "llama3", "mistral", "phi3", "qwen2", "qwen3"]
    for p in ps:
        b = read(p)
        try:
            cfg = json.loads(b)
        except ValueError:
            continue
        if not isinstance(cfg, dict) or "model_type" not in cfg:
            continue
        add("model_config", b)
        # the same with a quantizing selector on its own base
        parts = p.split(os.sep)
        base = next((names.index(x) for x in reversed(parts) if x in names), None)
        if base is not None:
            s = next(s for s in range(0x10, 0x20) if s % len(names) == base)
            add("model_config", bytes([s]) + b)


def tokenizer_seeds():
    gpt2 = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ", "Ġa", "<|im_start|>", "<|im_end|>", "é"],
            "tokenizer.ggml.token_type": [1, 1, 1, 1, 1, 3, 3, 4],
            "tokenizer.ggml.merges": ["a b", "Ġ a"],
            "tokenizer.ggml.bos_token_id": 5, "tokenizer.ggml.eos_token_id": 6,
            "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}
    for pre in ["qwen2", "llama-bpe", "smollm", "gpt2", "tekken", "gpt-4o", "qwen35", "default"]:
        add("gguf_tokenizer", json.dumps(dict(gpt2, **{"tokenizer.ggml.pre": pre}), ensure_ascii=False))
    spm = {"tokenizer.ggml.model": "llama", "general.architecture": "llama",
           "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "<0x41>", "  "],
           "tokenizer.ggml.scores": [0, 0, 0, -1, -2, -3, -1.5, -2.5, 0, -9],
           "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1, 6, 1],
           "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
           "tokenizer.ggml.add_bos_token": True,
           "tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m.content | trim }}{% endfor %}"}
    add("gguf_tokenizer", json.dumps(spm, ensure_ascii=False))
    add("gguf_tokenizer", json.dumps(dict(spm, **{"general.architecture": "gemma3"}), ensure_ascii=False))
    with_merges = dict(spm, **{"tokenizer.ggml.merges": ["▁ a", "a b"]})
    del with_merges["tokenizer.ggml.scores"]
    add("gguf_tokenizer", json.dumps(with_merges, ensure_ascii=False))
    # the same as GGUF metadata
    def gval(v):
        if isinstance(v, bool):
            return (7, v)
        if isinstance(v, int):
            return (4, v) if v >= 0 else (5, v)
        if isinstance(v, float):
            return (6, v)
        if isinstance(v, str):
            return (8, v)
        e = gval(v[0])[0] if v else 8
        if e in (4, 5) and any(isinstance(x, float) for x in v):
            e = 6
        elif e == 4 and any(x < 0 for x in v):
            e = 5
        return (9, (e, v))
    for doc in [gpt2, spm]:
        add("gguf_tokenizer", write_gguf([(k, gval(v)) for k, v in doc.items()], []))
    cases = json.loads(read(os.path.join(FIX, "real", "chat_template_cases.json")))
    add("gguf_tokenizer", cases["chat_template"])
    add("gguf_tokenizer", "{% for i in range(3) %}{{ messages[i]['content'] | upper }}{% endfor %}{{ 'x'.split('y') }}")


def main():
    gguf_seeds()
    quant_seeds()
    safetensors_seeds()
    adapter_seeds()
    model_config_seeds()
    tokenizer_seeds()
    for t in sorted(os.listdir(OUT)):
        n = len(os.listdir(os.path.join(OUT, t)))
        print(f"corpus/{t}: {n} files")


if __name__ == "__main__":
    main()
