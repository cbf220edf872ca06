//! One block of the GGML formats Q5_0, Q5_1 and the K-quants (Q2_K … Q6_K) decoded to f32, as
//! ggml's `dequantize_row_*` and gguf-py's `gguf.quants.dequantize` define them (layouts in
//! ggml-common.h; all multi-byte fields little-endian, "f16" IEEE half).
//!
//! Exactness: every product here is exact in f32 (an f16 scale has 11 significant bits, a
//! sub-block scale at most 8 and a quant at most 6, so `d·sc·q` needs at most 24), and each value
//! rounds once, at the final `− dmin·m` or `+ m`. So the order of the multiplications, and
//! whether a compiler or GPU fuses the last step into an FMA, cannot change a bit: the values are
//! gguf-py's bit for bit (`kquant_tests.rs` checks that against its output).

use crate::kernels::f16_at;
use crate::QType;

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block, from its 12
/// packed bytes (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The signed 6-bit scale of sub-block `j` (0..16) of a Q3_K super-block, from its 12 packed
/// bytes: the low four bits in nibbles of bytes 0..8, the high two in bit pairs of bytes 8..12.
#[inline(always)]
pub(crate) fn scale_q3k(j: usize, s: &[u8]) -> i32 {
    let lo = (s[j % 8] >> (4 * (j / 8))) & 0x0f;
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    i32::from(lo | (hi << 4)) - 32
}

#[inline(always)]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Decodes one block `blk` (`qtype.block_bytes()` bytes) of Q5_0, Q5_1 or a K-quant into `out`
/// (`qtype.block_len()` values). Other formats leave `out` as it is (they are decoded elsewhere).
#[inline(always)]
pub(crate) fn dequantize_block(qtype: QType, blk: &[u8], out: &mut [f32]) {
    match qtype {
        // d (f16), qh (u32: the fifth bit of each element), qs[16] (low nibbles: elements 0..16,
        // high nibbles 16..32); value d·(q − 16).
        QType::Q5_0 => {
            let d = f16_at(blk, 0);
            let qh = u32_at(blk, 2);
            let qs = &blk[6..22];
            for j in 0..16 {
                let q0 = u32::from(qs[j] & 0x0f) | (((qh >> j) & 1) << 4);
                let q1 = u32::from(qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
                out[j] = d * (q0 as i32 - 16) as f32;
                out[j + 16] = d * (q1 as i32 - 16) as f32;
            }
        }
        // d, m (f16), qh, qs[16] as Q5_0; value d·q + m.
        QType::Q5_1 => {
            let d = f16_at(blk, 0);
            let m = f16_at(blk, 2);
            let qh = u32_at(blk, 4);
            let qs = &blk[8..24];
            for j in 0..16 {
                let q0 = u32::from(qs[j] & 0x0f) | (((qh >> j) & 1) << 4);
                let q1 = u32::from(qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
                out[j] = d * q0 as f32 + m;
                out[j + 16] = d * q1 as f32 + m;
            }
        }
        // scales[16] (low nibble: scale, high: min of a 16-value sub-block), qs[64] (2 bits per
        // value: bits 2s..2s+2 of byte 32h + l are element 128h + 32s + l), d, dmin (f16).
        QType::Q2_K => {
            let sc = &blk[0..16];
            let qs = &blk[16..80];
            let d = f16_at(blk, 80);
            let dmin = f16_at(blk, 82);
            // loops by sub-block (not by element) so that the inner one vectorises
            for j in 0..16 {
                let (h, s, l0) = (j / 8, (j / 2) % 4, 16 * (j % 2));
                let dl = d * f32::from(sc[j] & 0x0f);
                let ml = dmin * f32::from(sc[j] >> 4);
                let q = &qs[32 * h + l0..32 * h + l0 + 16];
                for (o, q) in out[16 * j..16 * j + 16].iter_mut().zip(q) {
                    *o = dl * f32::from((q >> (2 * s)) & 3) - ml;
                }
            }
        }
        // hmask[32] (bit e/32 of byte e%32: the high bit of element e, *set* meaning no −4),
        // qs[64] (low two bits, placed as Q2_K's), scales[12] (16 signed 6-bit), d (f16).
        QType::Q3_K => {
            let hmask = &blk[0..32];
            let qs = &blk[32..96];
            let sc = &blk[96..108];
            let d = f16_at(blk, 108);
            for j in 0..16 {
                // sub-block j: half h, bit pair s, bytes l0..l0 + 16; its high bits are bit j/2
                let (h, s, l0) = (j / 8, (j / 2) % 4, 16 * (j % 2));
                let dl = d * scale_q3k(j, sc) as f32;
                let q = &qs[32 * h + l0..32 * h + l0 + 16];
                let m = &hmask[l0..l0 + 16];
                for ((o, q), m) in out[16 * j..16 * j + 16].iter_mut().zip(q).zip(m) {
                    let low = i32::from((q >> (2 * s)) & 3);
                    let hb = i32::from((m >> (j / 2)) & 1);
                    *o = dl * (low - 4 + 4 * hb) as f32;
                }
            }
        }
        // d, dmin (f16), scales[12] (eight 6-bit scales and mins), qs[128] (per 64 values:
        // low nibbles of 32 bytes are the first 32, high nibbles the next 32).
        QType::Q4_K => {
            let d = f16_at(blk, 0);
            let dmin = f16_at(blk, 2);
            let sc = &blk[4..16];
            let qs = &blk[16..144];
            for c in 0..4 {
                let q = &qs[32 * c..32 * c + 32];
                for t in 0..2 {
                    let (s, m) = scale_min_k4(2 * c + t, sc);
                    let dl = d * f32::from(s);
                    let ml = dmin * f32::from(m);
                    let o = &mut out[64 * c + 32 * t..64 * c + 32 * t + 32];
                    for l in 0..32 {
                        o[l] = dl * f32::from((q[l] >> (4 * t)) & 0x0f) - ml;
                    }
                }
            }
        }
        // Q4_K's d, dmin, scales and qs (bytes 48..176), plus qh[32] (bytes 16..48): bit e/32
        // of byte e%32 is the fifth bit of element e.
        QType::Q5_K => {
            let d = f16_at(blk, 0);
            let dmin = f16_at(blk, 2);
            let sc = &blk[4..16];
            let qh = &blk[16..48];
            let qs = &blk[48..176];
            for c in 0..4 {
                let q = &qs[32 * c..32 * c + 32];
                for t in 0..2 {
                    let j = 2 * c + t;
                    let (s, m) = scale_min_k4(j, sc);
                    let dl = d * f32::from(s);
                    let ml = dmin * f32::from(m);
                    let o = &mut out[32 * j..32 * j + 32];
                    for l in 0..32 {
                        let v = ((q[l] >> (4 * t)) & 0x0f) | (((qh[l] >> j) & 1) << 4);
                        o[l] = dl * f32::from(v) - ml;
                    }
                }
            }
        }
        // ql[128] (low four bits), qh[64] (high two bits), scales[16] (i8, one per 16 values),
        // d (f16); per half h of 128 values, element 128h + r takes nibble r/64 of
        // ql[64h + r%64] and bit pair r/32 of qh[32h + r%32]; value d·sc·(q − 32).
        QType::Q6_K => {
            let ql = &blk[0..128];
            let qh = &blk[128..192];
            let sc = &blk[192..208];
            let d = f16_at(blk, 208);
            // by sub-block of 16 (r0 = its first element within half h), so that the inner
            // loop vectorises
            for j in 0..16 {
                let (h, r0) = (j / 8, 16 * (j % 8));
                let dl = d * f32::from(sc[j] as i8);
                let ql = &ql[64 * h + r0 % 64..64 * h + r0 % 64 + 16];
                let qh = &qh[32 * h + r0 % 32..32 * h + r0 % 32 + 16];
                let (ls, hs) = (4 * (r0 / 64), 2 * (r0 / 32));
                for ((o, l), hb) in out[16 * j..16 * j + 16].iter_mut().zip(ql).zip(qh) {
                    let q = i32::from(((l >> ls) & 0x0f) | (((hb >> hs) & 3) << 4)) - 32;
                    *o = dl * q as f32;
                }
            }
        }
        _ => {}
    }
}
