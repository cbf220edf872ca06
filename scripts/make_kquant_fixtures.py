#!/usr/bin/env python3
"""Reference fixture for graft-quant's GGUF block formats Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Purpose
    graft decodes these formats itself (crates/graft-quant). The reference for their block layouts is
    gguf-py's `gguf.quants.dequantize`, the decoder of llama.cpp's own Python package. This script makes
    random but valid blocks of each format (random bytes; the f16 scale fields overwritten with finite
    halves), dequantizes them with gguf-py and writes the raw bytes and the expected f32 values into one
    small safetensors file, which graft-quant's tests (`src/kquant_tests.rs`) compare bit for bit.

Pinned versions (asserted at start)
    gguf 0.17.1, numpy. Nothing is installed by this script; for example:
        python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf==0.17.1 numpy
        /tmp/gguf-venv/bin/python scripts/make_kquant_fixtures.py

Output
    crates/graft-quant/tests/fixtures/kquants.safetensors (rewritten; nothing else is touched), with, per
    format NAME (q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k):
        NAME.raw  U8  [rows, row_bytes]   the blocks, row by row, as a GGUF file stores them
        NAME.deq  F32 [rows, cols]        gguf.quants.dequantize of NAME.raw
    and metadata (gguf and numpy versions, seed, generator). Row counts are odd; each row holds several
    blocks. Deterministic: the same versions and seed give the same file byte for byte.

Which scale values are tested
    Every f16 field (d, dmin, m) is drawn from a mix of: typical model magnitudes (1e-4 .. 1e-1, both
    signs), any finite f16 bit pattern (subnormals and values up to 65504 included), and the specials
    +0, -0, the smallest and the largest subnormal and the largest finite half of either sign (each
    at least once per field and format). The 6-bit/8-bit sub-block scales and the
    quants are the random bytes themselves, so every bit of them is exercised.
"""

import json
import struct
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

GGUF_VERSION = "0.17.1"
SEED = 20_260_101

if version("gguf") != GGUF_VERSION:
    sys.exit(f"gguf=={GGUF_VERSION} is required (found {version('gguf')}); see the docstring")

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

# name, type, byte offsets of the block's f16 fields (ggml-common.h), rows, blocks per row
FORMATS = [
    ("q5_0", T.Q5_0, [0], 7, 5),
    ("q5_1", T.Q5_1, [0, 2], 5, 5),
    ("q2_k", T.Q2_K, [80, 82], 5, 3),
    ("q3_k", T.Q3_K, [108], 3, 4),
    ("q4_k", T.Q4_K, [0, 2], 5, 3),
    ("q5_k", T.Q5_K, [0, 2], 5, 3),
    ("q6_k", T.Q6_K, [208], 3, 4),
]

SPECIALS = np.array([0x0000, 0x8000, 0x0001, 0x7BFF, 0xFBFF, 0x03FF], dtype=np.uint16)


def f16_fields(rng: np.random.Generator, n: int) -> np.ndarray:
    """n finite halves as u16 bits: each special once (at random places), then a third typical
    magnitudes and two thirds any finite pattern, with more specials mixed in."""
    typical = (rng.uniform(1e-4, 1e-1, n) * rng.choice([-1.0, 1.0], n)).astype(np.float16).view(np.uint16)
    anybits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    # exponent 31 is inf/NaN: clear its top exponent bit to keep the pattern finite
    anybits = np.where((anybits & 0x7C00) == 0x7C00, anybits & ~np.uint16(0x4000), anybits).astype(np.uint16)
    pick = rng.integers(0, 3, n)
    out = np.where(pick == 0, typical, anybits).astype(np.uint16)
    special = rng.random(n) < 0.15
    out[special] = rng.choice(SPECIALS, int(special.sum()))
    out[rng.permutation(n)[: len(SPECIALS)]] = SPECIALS
    assert np.isfinite(out.view(np.float16)).all()
    return out


def main() -> None:
    rng = np.random.default_rng(SEED)
    root = Path(__file__).resolve().parent.parent
    out_path = root / "crates/graft-quant/tests/fixtures/kquants.safetensors"
    tensors: list[tuple[str, str, list[int], bytes]] = []
    for name, qtype, f16_offsets, rows, blocks in FORMATS:
        block_len, block_bytes = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (rows, blocks, block_bytes), dtype=np.uint16).astype(np.uint8)
        for off in f16_offsets:
            bits = f16_fields(rng, rows * blocks).reshape(rows, blocks)
            raw[:, :, off] = (bits & 0xFF).astype(np.uint8)
            raw[:, :, off + 1] = (bits >> 8).astype(np.uint8)
        raw = raw.reshape(rows, blocks * block_bytes)
        deq = dequantize(raw, qtype)
        cols = blocks * block_len
        assert deq.dtype == np.float32 and deq.shape == (rows, cols), (name, deq.dtype, deq.shape)
        assert np.isfinite(deq).all(), name
        tensors.append((f"{name}.raw", "U8", [rows, blocks * block_bytes], raw.tobytes()))
        tensors.append((f"{name}.deq", "F32", [rows, cols], deq.astype("<f4").tobytes()))
        print(f"{name}: {rows} rows x {cols} values ({blocks} blocks of {block_len}, {block_bytes} bytes each)")

    # safetensors by hand (no extra package): u64 header length, JSON header, data
    header: dict = {
        "__metadata__": {
            "generator": "scripts/make_kquant_fixtures.py",
            "reference": "gguf.quants.dequantize",
            "gguf": version("gguf"),
            "numpy": np.__version__,
            "seed": str(SEED),
        }
    }
    data = b""
    for key, dtype, shape, payload in tensors:
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    print(f"wrote {out_path.relative_to(root)} ({out_path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
