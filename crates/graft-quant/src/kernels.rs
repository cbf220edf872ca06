//! CPU kernels: y = x · Wᵀ with W quantized, x in f32.
//!
//! Exactness first: activations stay f32 and weights are dequantized block by block in
//! registers, so the result equals "dequantize, then f32 matmul" up to summation order (the
//! promise is PEFT's numbers on the dequantized model). For one or a few tokens each block is
//! decoded and dotted in one pass; for more tokens a row is decoded once into a small buffer and
//! reused for every token. Rows are split across threads (rayon), and on x86-64 the same code is
//! compiled a second time with AVX2+FMA and picked at run time, so the binary stays portable.
//! Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K (every format of Q4_0/Q4_1/Q8_0, Q4_K_M and
//! Q5_K_M files) have hand-written AVX2 row dots; Q2_K and Q3_K, like every format on the
//! portable path (the only one on wasm32), decode a block at a time into a buffer on the stack
//! and dot it.

use rayon::prelude::*;

use crate::{QMatrix, QType};

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] = fmadd::<FMA>(x[k], y[k], acc[k]);
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s = fmadd::<FMA>(*x, *y, s);
    }
    acc.iter().sum::<f32>() + s
}

/// IEEE half → f32, exact, inlined (half's own conversion is an out-of-line call with run-time
/// CPU detection, too slow per block).
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    let h = u16::from_le_bytes([b[i], b[i + 1]]);
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    if exp == 0 {
        let v = mant as f32 * (1.0 / 16_777_216.0);
        return if sign != 0 { -v } else { v };
    }
    if exp == 31 {
        return f32::from_bits(sign | 0x7f80_0000 | (mant << 13));
    }
    f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13))
}

/// One row of a block format dotted with one token, decoding in registers: 32 lanes of
/// accumulators across the whole row (one horizontal sum per row). `xsum` holds the per-block
/// sums of x, which carry the Q4 offsets (−8·d for Q4_0, m for Q4_1). Q5_0, Q5_1 and the
/// K-quants decode one block into a stack buffer and dot that.
#[inline(always)]
fn fused_row_dot<const FMA: bool>(qtype: QType, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let mut offset = 0f32;
    match qtype {
        QType::Q8_0 => {
            for (blk, xs) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
                let d = f16_at(blk, 0);
                let q = &blk[2..34];
                for j in 0..32 {
                    acc[j] = fmadd::<FMA>(d * f32::from(q[j] as i8), xs[j], acc[j]);
                }
            }
        }
        QType::Q4_0 | QType::Q4_1 => {
            let (stride, skip) = if qtype == QType::Q4_0 {
                (18, 2)
            } else {
                (20, 4)
            };
            for (b, (blk, xs)) in row.chunks_exact(stride).zip(x.chunks_exact(32)).enumerate() {
                let d = f16_at(blk, 0);
                let m = if qtype == QType::Q4_0 {
                    -8.0 * d
                } else {
                    f16_at(blk, 2)
                };
                let q = &blk[skip..skip + 16];
                for j in 0..16 {
                    acc[j] = fmadd::<FMA>(d * f32::from(q[j] & 0x0f), xs[j], acc[j]);
                    acc[j + 16] = fmadd::<FMA>(d * f32::from(q[j] >> 4), xs[j + 16], acc[j + 16]);
                }
                offset = fmadd::<FMA>(m, xsum[b], offset);
            }
        }
        q if is_block_format(q) => {
            let (bl, bb) = (q.block_len(), q.block_bytes());
            let mut buf = [0f32; 256];
            for (blk, xs) in row.chunks_exact(bb).zip(x.chunks_exact(bl)) {
                crate::blocks::dequantize_block(q, blk, &mut buf[..bl]);
                for (w, xc) in buf[..bl].chunks_exact(32).zip(xs.chunks_exact(32)) {
                    for j in 0..32 {
                        acc[j] = fmadd::<FMA>(w[j], xc[j], acc[j]);
                    }
                }
            }
        }
        _ => {}
    }
    acc.iter().sum::<f32>() + offset
}

/// The GGML block formats, whose rows are dotted block by block for a few tokens.
#[inline(always)]
fn is_block_format(q: QType) -> bool {
    matches!(
        q,
        QType::Q8_0
            | QType::Q4_0
            | QType::Q4_1
            | QType::Q5_0
            | QType::Q5_1
            | QType::Q2_K
            | QType::Q3_K
            | QType::Q4_K
            | QType::Q5_K
            | QType::Q6_K
    )
}

/// Hand-written AVX2+FMA row dots for the GGML block formats (the autovectorised generic code
/// keeps its accumulators on the stack and runs ~3× slower).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// How far ahead of the current block to prefetch the weights. Measured on the 2-core
    /// development VM streaming 83 MB of Q4_1: 160 B ahead 3.5, 640 B 7.9, 2.5 KB 12.9 GMAC/s
    /// per thread (`cargo test --release -p graft-quant speed -- --ignored --nocapture`).
    pub(crate) const PREFETCH_BYTES: usize = 2560;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The f16 scale (and min) at the start of a block, via F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn scales(blk: &[u8]) -> __m128 {
        let bits = u32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
    }

    /// Eight f32 lanes of each half of sixteen unsigned (`SIGNED` false) or signed bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen<const SIGNED: bool>(q: __m128i) -> (__m256, __m256) {
        if SIGNED {
            (
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))),
            )
        } else {
            (
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8))),
            )
        }
    }

    /// Sixteen widened weights times the first 16 values of `x`, as eight lanes of partial sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot16(w: (__m256, __m256), x: &[f32]) -> __m256 {
        let x = &x[..16];
        // SAFETY: `x` has 16 values.
        let (x0, x1) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(x.as_ptr().add(8)),
            )
        };
        _mm256_fmadd_ps(w.1, x1, _mm256_mul_ps(w.0, x0))
    }

    // Every kernel below takes N tokens' activations: each block of the row is decoded once
    // and multiplied into each token's own accumulators, with the same operations in the same
    // order for every token whatever N is, so a token's result is bit for bit its one-token
    // result (what a server batching several sequences' decode steps needs).

    /// Q4_0 (`skip` 2, offset −8·d) and Q4_1 (`skip` 4, offset m) rows.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `row` holds whole `stride`-byte blocks
    /// (`stride` ≥ `skip` + 16), and each `x` and `xsum` cover as many 32-value blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_dot<const N: usize>(
        row: &[u8],
        stride: usize,
        skip: usize,
        x: [&[f32]; N],
        xsum: [&[f32]; N],
    ) -> [f32; N] {
        let mask = _mm_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offset = [0f32; N];
        for (b, blk) in row.chunks_exact(stride).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let dm = scales(blk);
            let d = _mm_cvtss_f32(dm);
            let m = if skip == 4 {
                _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1))
            } else {
                -8.0 * d
            };
            let q = load16(&blk[skip..]);
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
            let (w0, w1) = widen::<false>(lo);
            let (w2, w3) = widen::<false>(hi);
            let dv = _mm256_broadcastss_ps(dm);
            for k in 0..N {
                let xs = &x[k][32 * b..32 * b + 32];
                // SAFETY: `xs` has 32 values.
                let (x0, x1, x2, x3) = unsafe {
                    let xp = xs.as_ptr();
                    (
                        _mm256_loadu_ps(xp),
                        _mm256_loadu_ps(xp.add(8)),
                        _mm256_loadu_ps(xp.add(16)),
                        _mm256_loadu_ps(xp.add(24)),
                    )
                };
                let s01 = _mm256_fmadd_ps(w1, x1, _mm256_mul_ps(w0, x0));
                let s23 = _mm256_fmadd_ps(w3, x3, _mm256_mul_ps(w2, x2));
                acc[k] = _mm256_fmadd_ps(dv, _mm256_add_ps(s01, s23), acc[k]);
                offset[k] = m.mul_add(xsum[k][b], offset[k]);
            }
        }
        std::array::from_fn(|k| hsum(acc[k]) + offset[k])
    }

    /// Q8_0 rows.
    ///
    /// # Safety
    /// As [`q4_dot`], with 34-byte blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_dot<const N: usize>(row: &[u8], x: [&[f32]; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, blk) in row.chunks_exact(34).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let d = _mm256_broadcastss_ps(scales(blk));
            let qs = &blk[2..34];
            let mut w = [_mm256_setzero_ps(); 4];
            for (g, wg) in w.iter_mut().enumerate() {
                // SAFETY: `qs` has 32 bytes.
                let q = unsafe { _mm_loadl_epi64(qs.as_ptr().add(8 * g) as *const __m128i) };
                *wg = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            }
            for k in 0..N {
                let xs = &x[k][32 * b..32 * b + 32];
                let mut s = [_mm256_setzero_ps(); 2];
                for (g, wg) in w.iter().enumerate() {
                    // SAFETY: `xs` has 32 values.
                    let xv = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * g)) };
                    s[g % 2] = _mm256_fmadd_ps(*wg, xv, s[g % 2]);
                }
                acc[k] = _mm256_fmadd_ps(d, _mm256_add_ps(s[0], s[1]), acc[k]);
            }
        }
        std::array::from_fn(|k| hsum(acc[k]))
    }

    /// Sixteen bytes from the start of `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn load16(b: &[u8]) -> __m128i {
        let b = &b[..16];
        // SAFETY: `b` has 16 bytes.
        unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) }
    }

    /// Bits 0..16 of `v` as sixteen bytes: 16 where the bit is set, 0 where not (Q5_0's fifth
    /// bit, already in place above the nibble).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bit16_bytes(v: u32) -> __m128i {
        // byte i takes byte i/8 of v, then keeps bit i%8
        let spread = _mm_shuffle_epi8(
            _mm_cvtsi32_si128(v as i32),
            _mm_set_epi64x(0x0101_0101_0101_0101, 0),
        );
        let bit = _mm_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm_cmpeq_epi8(_mm_and_si128(spread, bit), bit);
        _mm_and_si128(set, _mm_set1_epi8(16))
    }

    /// Q5_0 (`skip` 2: value d·(q − 16)) and Q5_1 (`skip` 4: value d·q + m) rows, q = nibble |
    /// fifth bit << 4; the −16·d or m offsets are carried by the per-block sums of x.
    ///
    /// # Safety
    /// As [`q4_dot`], with 22-byte (Q5_0) or 24-byte (Q5_1) blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q5_dot<const N: usize>(
        row: &[u8],
        skip: usize,
        x: [&[f32]; N],
        xsum: [&[f32]; N],
    ) -> [f32; N] {
        let mask = _mm_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offset = [0f32; N];
        for (b, blk) in row.chunks_exact(skip + 20).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let d = super::f16_at(blk, 0);
            let m = if skip == 4 {
                super::f16_at(blk, 2)
            } else {
                -16.0 * d
            };
            let qh = u32::from_le_bytes([blk[skip], blk[skip + 1], blk[skip + 2], blk[skip + 3]]);
            let q = load16(&blk[skip + 4..]);
            let lo = _mm_or_si128(_mm_and_si128(q, mask), bit16_bytes(qh & 0xffff));
            let hi = _mm_or_si128(
                _mm_and_si128(_mm_srli_epi16(q, 4), mask),
                bit16_bytes(qh >> 16),
            );
            let (wl, wh) = (widen::<false>(lo), widen::<false>(hi));
            let dv = _mm256_set1_ps(d);
            for k in 0..N {
                let xs = &x[k][32 * b..32 * b + 32];
                let s = _mm256_add_ps(dot16(wl, &xs[..16]), dot16(wh, &xs[16..]));
                acc[k] = _mm256_fmadd_ps(dv, s, acc[k]);
                offset[k] = m.mul_add(xsum[k][b], offset[k]);
            }
        }
        std::array::from_fn(|k| hsum(acc[k]) + offset[k])
    }

    /// Q4_K (`FIFTH` false, 144-byte blocks) and Q5_K (`FIFTH` true, 176-byte blocks, the
    /// fifth bits from qh: bit j of byte l for element 32j + l) rows: per 32-value sub-block,
    /// (d·sc)·Σq·x in the vector accumulator and the min term dmin·m·Σx from the per-32 sums
    /// of x (`xsum`, eight per super-block).
    ///
    /// # Safety
    /// As [`q4_dot`], with whole blocks of 256 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn qk_dot<const FIFTH: bool, const N: usize>(
        row: &[u8],
        x: [&[f32]; N],
        xsum: [&[f32]; N],
    ) -> [f32; N] {
        let mask = _mm_set1_epi8(0x0f);
        let one = _mm_set1_epi8(1);
        let (stride, qs0) = if FIFTH { (176, 48) } else { (144, 16) };
        let mut acc = [_mm256_setzero_ps(); N];
        let mut mins = [0f32; N];
        for (bi, blk) in row.chunks_exact(stride).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let dm = scales(blk);
            let d = _mm_cvtss_f32(dm);
            let dmin = _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1));
            let sc = &blk[4..16];
            let (h0, h1) = if FIFTH {
                (load16(&blk[16..]), load16(&blk[32..]))
            } else {
                (_mm_setzero_si128(), _mm_setzero_si128())
            };
            for c in 0..4 {
                // 32 bytes: low nibbles are sub-block 2c, high nibbles sub-block 2c + 1
                let q0 = load16(&blk[qs0 + 32 * c..]);
                let q1 = load16(&blk[qs0 + 16 + 32 * c..]);
                let halves = [
                    (_mm_and_si128(q0, mask), _mm_and_si128(q1, mask)),
                    (
                        _mm_and_si128(_mm_srli_epi16(q0, 4), mask),
                        _mm_and_si128(_mm_srli_epi16(q1, 4), mask),
                    ),
                ];
                for (t, (a, b)) in halves.into_iter().enumerate() {
                    let j = 2 * c + t;
                    let (a, b) = if FIFTH {
                        // bit j of each qh byte, moved to bit 4
                        let sh = _mm_cvtsi32_si128(j as i32);
                        let fifth = |h: __m128i| {
                            _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(h, sh), one), 4)
                        };
                        (_mm_or_si128(a, fifth(h0)), _mm_or_si128(b, fifth(h1)))
                    } else {
                        (a, b)
                    };
                    let (s, m) = crate::blocks::scale_min_k4(j, sc);
                    let (wa, wb) = (widen::<false>(a), widen::<false>(b));
                    let dv = _mm256_set1_ps(d * f32::from(s));
                    let mm = dmin * f32::from(m);
                    for k in 0..N {
                        let xj = &x[k][256 * bi + 32 * j..256 * bi + 32 * j + 32];
                        let sum = _mm256_add_ps(dot16(wa, xj), dot16(wb, &xj[16..]));
                        acc[k] = _mm256_fmadd_ps(dv, sum, acc[k]);
                        mins[k] = mm.mul_add(xsum[k][8 * bi + j], mins[k]);
                    }
                }
            }
        }
        std::array::from_fn(|k| hsum(acc[k]) - mins[k])
    }

    /// Q6_K rows: per 16-value group, (d·sc)·Σ(q − 32)·x.
    ///
    /// # Safety
    /// As [`q4_dot`], with 210-byte blocks of 256 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6k_dot<const N: usize>(row: &[u8], x: [&[f32]; N]) -> [f32; N] {
        let m4 = _mm_set1_epi8(0x0f);
        let m2 = _mm_set1_epi8(3);
        let off = _mm_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); N];
        for (bi, blk) in row.chunks_exact(210).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let d = super::f16_at(blk, 208);
            let sc = &blk[192..208];
            for h in 0..2 {
                let ql = &blk[64 * h..64 * h + 64];
                let qh = &blk[128 + 32 * h..160 + 32 * h];
                for l0 in [0, 16] {
                    let a = load16(&ql[l0..]);
                    let b = load16(&ql[32 + l0..]);
                    let hb = load16(&qh[l0..]);
                    // (low four bits, high two bits, first element within the half)
                    let parts = [
                        (_mm_and_si128(a, m4), hb, l0),
                        (_mm_and_si128(b, m4), _mm_srli_epi16(hb, 2), 32 + l0),
                        (
                            _mm_and_si128(_mm_srli_epi16(a, 4), m4),
                            _mm_srli_epi16(hb, 4),
                            64 + l0,
                        ),
                        (
                            _mm_and_si128(_mm_srli_epi16(b, 4), m4),
                            _mm_srli_epi16(hb, 6),
                            96 + l0,
                        ),
                    ];
                    for (lo, hi, e) in parts {
                        let q = _mm_or_si128(lo, _mm_slli_epi16(_mm_and_si128(hi, m2), 4));
                        let w = widen::<true>(_mm_sub_epi8(q, off));
                        let scale = _mm256_set1_ps(d * f32::from(sc[8 * h + e / 16] as i8));
                        for k in 0..N {
                            let xh = &x[k][256 * bi + 128 * h..256 * bi + 128 * h + 128];
                            let sum = dot16(w, &xh[e..]);
                            acc[k] = _mm256_fmadd_ps(scale, sum, acc[k]);
                        }
                    }
                }
            }
        }
        std::array::from_fn(|k| hsum(acc[k]))
    }
}

/// Rows `r0..` of the output into `out` ((rows in chunk) × n, by weight row).
#[inline(always)]
#[cfg(test)]
pub(crate) fn rows_generic<const FMA: bool>(
    m: &QMatrix,
    x: &[f32],
    xsum: &[f32],
    n: usize,
    r0: usize,
    out: &mut [f32],
) {
    rows_generic_as::<FMA>(m, x, xsum, &[], n, r0, out, false)
}

/// [`rows_generic`]; with `per_token`, every token takes the one-token path (the fused block
/// dot), so each token's outputs are bit for bit what a one-token call gives, whatever `n` is:
/// what a server batching several sequences' decode steps needs to give each the numbers it
/// gets alone.
///
/// `acts`, when not empty, holds each token's activations rounded to 8 bits (the opt-in path
/// of [`crate::int8`]; the caller checked the format and the CPU): the fused path then dots
/// the weights' integer codes with them instead of x.
// inline(always): inlined into `rows_avx2`, the FMA variant is compiled with AVX2+FMA; called
// out of line, its scalar `mul_add`s become calls into libm (measured: a third of decode time).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn rows_generic_as<const FMA: bool>(
    m: &QMatrix,
    x: &[f32],
    xsum: &[f32],
    acts: &[crate::int8::QActs],
    n: usize,
    r0: usize,
    out: &mut [f32],
    per_token: bool,
) {
    let rows = out.len() / n.max(1);
    let fused = (n < 4 || per_token) && is_block_format(m.qtype);
    let rb = m.data.len() / m.rows.max(1);
    let nb = m.cols / 32;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = acts; // the 8-bit kernels are x86-64 only (`int8::supports` says no elsewhere)
    #[cfg(target_arch = "x86_64")]
    if FMA && fused && acts.len() == n {
        for i in 0..rows {
            let row = &m.data[(r0 + i) * rb..(r0 + i + 1) * rb];
            let o = &mut out[i * n..(i + 1) * n];
            int8_row(m.qtype, row, acts, o);
        }
        return;
    }
    if fused {
        let xt = |t: usize| &x[t * m.cols..(t + 1) * m.cols];
        let st = |t: usize| &xsum[t * nb..(t + 1) * nb];
        for i in 0..rows {
            let row = &m.data[(r0 + i) * rb..(r0 + i + 1) * rb];
            let o = &mut out[i * n..(i + 1) * n];
            let mut t = 0;
            if FMA {
                // four tokens per decode of the row (the same numbers as one at a time)
                while t + 4 <= n {
                    let r = fused_rows_dot_fast::<4>(
                        m.qtype,
                        row,
                        std::array::from_fn(|k| xt(t + k)),
                        std::array::from_fn(|k| st(t + k)),
                    );
                    o[t..t + 4].copy_from_slice(&r);
                    t += 4;
                }
                while t + 2 <= n {
                    let r = fused_rows_dot_fast::<2>(
                        m.qtype,
                        row,
                        [xt(t), xt(t + 1)],
                        [st(t), st(t + 1)],
                    );
                    o[t..t + 2].copy_from_slice(&r);
                    t += 2;
                }
            }
            for (t, ot) in o.iter_mut().enumerate().skip(t) {
                *ot = if FMA {
                    fused_row_dot_fast(m.qtype, row, xt(t), st(t))
                } else {
                    fused_row_dot::<false>(m.qtype, row, xt(t), st(t))
                };
            }
        }
        return;
    }
    // Many tokens: decode TILE rows once, then each token's x is loaded once for all of them
    // (the accumulators of TILE rows stay in registers).
    const TILE: usize = 8;
    let cols = m.cols;
    let mut buf = vec![0f32; TILE * cols];
    let mut i = 0;
    while i < rows {
        let tile = TILE.min(rows - i);
        for k in 0..tile {
            m.dequantize_row(r0 + i + k, &mut buf[k * cols..(k + 1) * cols]);
        }
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            if tile == TILE {
                let d = dot_tile::<FMA>(&buf, xt, cols);
                for k in 0..TILE {
                    out[(i + k) * n + t] = d[k];
                }
            } else {
                for k in 0..tile {
                    out[(i + k) * n + t] = dot::<FMA>(&buf[k * cols..(k + 1) * cols], xt);
                }
            }
        }
        i += tile;
    }
}

/// Eight rows of `w` (8 × cols) dotted with one `x`: each 8-wide slice of x is loaded once for
/// all eight rows.
#[inline(always)]
fn dot_tile<const FMA: bool>(w: &[f32], x: &[f32], cols: usize) -> [f32; 8] {
    let mut acc = [[0f32; 8]; 8];
    let full = cols - cols % 8;
    let mut k = 0;
    while k < full {
        let xv: &[f32] = &x[k..k + 8];
        for (r, a) in acc.iter_mut().enumerate() {
            let wr = &w[r * cols + k..r * cols + k + 8];
            for l in 0..8 {
                a[l] = fmadd::<FMA>(wr[l], xv[l], a[l]);
            }
        }
        k += 8;
    }
    let mut out = [0f32; 8];
    for r in 0..8 {
        let mut s: f32 = acc[r].iter().sum();
        for kk in full..cols {
            s = fmadd::<FMA>(w[r * cols + kk], x[kk], s);
        }
        out[r] = s;
    }
    out
}

/// One row against every token's 8-bit activations, four tokens per decode of the row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn int8_row(qtype: QType, row: &[u8], acts: &[crate::int8::QActs], o: &mut [f32]) {
    use crate::int8::rows_dot;
    let n = acts.len();
    let mut t = 0;
    // SAFETY: reached only from `rows_avx2` (AVX2, FMA and F16C detected), with `acts` built
    // only for formats `int8::supports` takes; the row is whole blocks and each `acts` covers
    // the row's columns.
    unsafe {
        while t + 4 <= n {
            if let Some(r) = rows_dot::<4>(qtype, row, std::array::from_fn(|k| &acts[t + k])) {
                o[t..t + 4].copy_from_slice(&r);
            }
            t += 4;
        }
        while t < n {
            if let Some(r) = rows_dot::<1>(qtype, row, [&acts[t]]) {
                o[t] = r[0];
            }
            t += 1;
        }
    }
}

/// The AVX2 row dots; only reached through `rows_avx2`, i.e. after AVX2+FMA were detected.
#[inline(always)]
#[allow(unsafe_code)]
fn fused_row_dot_fast(qtype: QType, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    fused_rows_dot_fast::<1>(qtype, row, [x], [xsum])[0]
}

/// [`fused_row_dot_fast`] for N tokens at once: the row decoded once, each token's result
/// bit for bit its one-token result.
#[inline(always)]
#[allow(unsafe_code)]
fn fused_rows_dot_fast<const N: usize>(
    qtype: QType,
    row: &[u8],
    x: [&[f32]; N],
    xsum: [&[f32]; N],
) -> [f32; N] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rows_generic::<true>` (the only caller) runs inside `rows_avx2`, which `rows`
        // calls only when the CPU has AVX2, FMA and F16C; the slices are whole blocks of one row.
        unsafe {
            match qtype {
                QType::Q8_0 => return avx2::q8_dot(row, x),
                QType::Q4_0 => return avx2::q4_dot(row, 18, 2, x, xsum),
                QType::Q4_1 => return avx2::q4_dot(row, 20, 4, x, xsum),
                QType::Q5_0 => return avx2::q5_dot(row, 2, x, xsum),
                QType::Q5_1 => return avx2::q5_dot(row, 4, x, xsum),
                QType::Q4_K => return avx2::qk_dot::<false, N>(row, x, xsum),
                QType::Q5_K => return avx2::qk_dot::<true, N>(row, x, xsum),
                QType::Q6_K => return avx2::q6k_dot(row, x),
                _ => {}
            }
        }
    }
    // decode-and-dot, compiled here with AVX2+FMA enabled (inlined into rows_avx2)
    std::array::from_fn(|k| fused_row_dot::<true>(qtype, row, x[k], xsum[k]))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn rows_avx2(
    m: &QMatrix,
    x: &[f32],
    xsum: &[f32],
    acts: &[crate::int8::QActs],
    n: usize,
    r0: usize,
    out: &mut [f32],
    per_token: bool,
) {
    rows_generic_as::<true>(m, x, xsum, acts, n, r0, out, per_token)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| crate::cpu::isa() >= crate::cpu::Isa::Avx2)
}

#[cfg(test)]
pub(crate) fn rows(m: &QMatrix, x: &[f32], xsum: &[f32], n: usize, r0: usize, out: &mut [f32]) {
    rows_as(m, x, xsum, &[], n, r0, out, false)
}

#[allow(unsafe_code, clippy::too_many_arguments)]
fn rows_as(
    m: &QMatrix,
    x: &[f32],
    xsum: &[f32],
    acts: &[crate::int8::QActs],
    n: usize,
    r0: usize,
    out: &mut [f32],
    per_token: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `rows_avx2` only needs the CPU to support AVX2, FMA and F16C, checked just above.
        unsafe { rows_avx2(m, x, xsum, acts, n, r0, out, per_token) };
        return;
    }
    rows_generic_as::<false>(m, x, xsum, acts, n, r0, out, per_token)
}

/// Each token's activations rounded to 8 bits when the opt-in path is on and takes this
/// matrix on the decode path (`fused` in [`rows_generic_as`]); empty otherwise.
fn int8_acts(m: &QMatrix, x: &[f32], n: usize, per_token: bool) -> Vec<crate::int8::QActs> {
    if (n < 4 || per_token)
        && m.cols.is_multiple_of(32)
        && crate::int8::int8_activations()
        && crate::int8::supports(m.qtype)
    {
        x.chunks_exact(m.cols)
            .map(crate::int8::QActs::new)
            .collect()
    } else {
        Vec::new()
    }
}

/// y (n, rows) = x (n, cols) · Wᵀ for a few tokens (decode), on the spinning pool.
pub fn matvec_spin(m: &std::sync::Arc<QMatrix>, x: &[f32], n: usize) -> Vec<f32> {
    matvec_spin_as(m, x, n, false)
}

/// [`matvec_spin`] with each token computed as alone (see [`rows_generic_as`]).
pub fn matvec_spin_per_token(m: &std::sync::Arc<QMatrix>, x: &[f32], n: usize) -> Vec<f32> {
    matvec_spin_as(m, x, n, true)
}

fn matvec_spin_as(m: &std::sync::Arc<QMatrix>, x: &[f32], n: usize, per_token: bool) -> Vec<f32> {
    use std::sync::{Arc, Mutex};
    let pool = crate::pool::SpinPool::global();
    let parts = pool.parts().min(m.rows.max(1));
    if parts <= 1 || m.rows * m.cols * n < 1 << 15 {
        return matmul_as(m, x, n, per_token);
    }
    let xsum: Vec<f32> = if m.cols.is_multiple_of(32) {
        x.chunks_exact(32).map(|c| c.iter().sum()).collect()
    } else {
        Vec::new()
    };
    let acts = Arc::new(int8_acts(m, x, n, per_token));
    let per = m.rows.div_ceil(parts);
    let slots: Arc<Vec<Mutex<Vec<f32>>>> =
        Arc::new((0..pool.parts()).map(|_| Mutex::new(Vec::new())).collect());
    let (mm, xa, xs, sl) = (
        m.clone(),
        Arc::new(x.to_vec()),
        Arc::new(xsum),
        slots.clone(),
    );
    pool.run(Arc::new(move |part| {
        let r0 = (part * per).min(mm.rows);
        let r1 = (r0 + per).min(mm.rows);
        let mut local = vec![0f32; (r1 - r0) * n];
        if r1 > r0 {
            rows_as(&mm, &xa, &xs, &acts, n, r0, &mut local, per_token);
        }
        *sl[part].lock().unwrap_or_else(|p| p.into_inner()) = local;
    }));
    let mut out_t = Vec::with_capacity(m.rows * n);
    for s in slots.iter() {
        out_t.extend_from_slice(&s.lock().unwrap_or_else(|p| p.into_inner()));
    }
    if n == 1 {
        return out_t;
    }
    let mut y = vec![0f32; n * m.rows];
    for r in 0..m.rows {
        for t in 0..n {
            y[t * m.rows + r] = out_t[r * n + t];
        }
    }
    y
}

/// y (n, rows) = x (n, cols) · Wᵀ.
pub fn matmul(m: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    matmul_as(m, x, n, false)
}

fn matmul_as(m: &QMatrix, x: &[f32], n: usize, per_token: bool) -> Vec<f32> {
    let xsum: Vec<f32> = if m.cols.is_multiple_of(32) {
        x.chunks_exact(32).map(|c| c.iter().sum()).collect()
    } else {
        Vec::new()
    };
    let acts = int8_acts(m, x, n, per_token);
    // out_t is (rows, n); transposed into (n, rows) at the end when n > 1.
    let mut out_t = vec![0f32; m.rows * n];
    let work = m.rows * m.cols * n.max(1);
    if work < 1 << 15 || m.rows < 2 {
        rows_as(m, x, &xsum, &acts, n, 0, &mut out_t, per_token);
    } else {
        // Chunks of rows big enough to amortise scheduling, small enough to balance.
        let threads = rayon::current_num_threads().max(1);
        let per = m.rows.div_ceil(threads).max(8);
        out_t
            .par_chunks_mut(per * n)
            .enumerate()
            .for_each(|(ci, chunk)| {
                rows_as(m, x, &xsum, &acts, n, ci * per, chunk, per_token);
            });
    }
    if n == 1 {
        return out_t;
    }
    let mut y = vec![0f32; n * m.rows];
    for r in 0..m.rows {
        for t in 0..n {
            y[t * m.rows + r] = out_t[r * n + t];
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; n * rows];
        for t in 0..n {
            for r in 0..rows {
                y[t * rows + r] = (0..cols)
                    .map(|k| w[r * cols + k] as f64 * x[t * cols + k] as f64)
                    .sum();
            }
        }
        y
    }

    /// Every format's kernel equals "dequantize, then matmul" up to f32 summation order, over
    /// many shapes (odd sizes, one row, one column, several tokens on both code paths).
    #[test]
    fn kernels_match_dequantized_reference_over_shapes() {
        let shapes = [
            (3, 33, 2),
            (7, 1, 1),
            (1, 64, 1),
            (3, 64, 2),
            (17, 128, 1),
            (5, 192, 7),
            (300, 256, 1),
            (260, 320, 3),
            (64, 1024, 1),
            (1000, 96, 5),
        ];
        for &(rows, cols, n) in &shapes {
            for q in [
                QType::F32,
                QType::F16,
                QType::BF16,
                QType::Int8,
                QType::Q8_0,
                QType::Q4_0,
                QType::Q4_1,
                QType::Nf4,
            ] {
                if cols % q.block_len() != 0 && q != QType::Nf4 {
                    continue;
                }
                let w = lcg(rows * cols, 7 + rows as u64);
                let x = lcg(n * cols, 11 + cols as u64);
                let m = QMatrix::quantize(q, rows, cols, &w).unwrap();
                let deq = m.dequantize();
                let want = reference(&deq, &x, rows, cols, n);
                let got = m.matmul(&x, n).unwrap();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let (t, r) = (i / rows, i % rows);
                    // f32 summation error bound: ~ cols · ε · Σ|w x|.
                    let mag: f64 = (0..cols)
                        .map(|k| (deq[r * cols + k] as f64 * x[t * cols + k] as f64).abs())
                        .sum();
                    let tol = 4.0 * cols as f64 * f32::EPSILON as f64 * mag + 1e-6;
                    assert!(
                        (*a as f64 - b).abs() <= tol,
                        "{q:?} {rows}x{cols} n={n} at {i}: {a} vs {b} (tol {tol})"
                    );
                }
            }
        }
    }

    /// The portable path (no AVX2) against the dispatched one, which on an AVX2 machine is the
    /// hand-written kernel.
    #[test]
    fn portable_and_dispatched_paths_agree() {
        for q in [
            QType::Q8_0,
            QType::Q4_0,
            QType::Q4_1,
            QType::Nf4,
            QType::F16,
        ] {
            for &(nrows, cols, n) in &[(5, 64, 1), (9, 256, 2), (33, 96, 3), (4, 128, 6)] {
                let w = lcg(nrows * cols, 5);
                let x = lcg(n * cols, 9);
                let m = QMatrix::quantize(q, nrows, cols, &w).unwrap();
                let xsum: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
                let mut portable = vec![0f32; nrows * n];
                rows_generic::<false>(&m, &x, &xsum, n, 0, &mut portable);
                let mut dispatched = vec![0f32; nrows * n];
                rows(&m, &x, &xsum, n, 0, &mut dispatched);
                for (a, b) in portable.iter().zip(&dispatched) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{q:?} {nrows}x{cols} n={n}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantization_error_is_bounded_per_format() {
        let (rows, cols) = (64, 256);
        let w = lcg(rows * cols, 3);
        for (q, max_abs) in [
            (QType::F16, 1e-3),
            (QType::BF16, 8e-3),
            (QType::Int8, 1e-2),
            (QType::Q8_0, 1e-2),
            (QType::Q4_0, 0.15),
            (QType::Q4_1, 0.1),
            (QType::Nf4, 0.16),
        ] {
            let m = QMatrix::quantize(q, rows, cols, &w).unwrap();
            let d = m.dequantize();
            let err = w
                .iter()
                .zip(&d)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err <= max_abs,
                "{q:?}: max abs error {err} on values in [-1, 1]"
            );
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(matches!(
            QMatrix::quantize(QType::Q4_0, 2, 33, &[0.0; 66]),
            Err(crate::Error::NotBlockAligned { .. })
        ));
        assert!(matches!(
            QMatrix::from_raw(QType::Q8_0, 2, 32, vec![0; 67], vec![]),
            Err(crate::Error::WrongSize { .. })
        ));
        assert!(matches!(
            QMatrix::quantize(QType::Q8_0, 1, 32, &[f32::NAN; 32]),
            Err(crate::Error::NonFinite { .. })
        ));
        let m = QMatrix::quantize(QType::Q8_0, 1, 32, &[0.5; 32]).unwrap();
        assert!(m.matmul(&[0.0; 31], 1).is_err());
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Not a correctness test: `cargo test --release -p graft-quant speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing probe, run by hand"]
    fn matvec_speed() {
        let (rows, cols) = (1536, 576);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let m = QMatrix::quantize(QType::Q4_1, rows, cols, &w).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 / 13.0).collect();
        let xs: Vec<f32> = (0..cols * 128).map(|i| (i % 13) as f32 / 13.0).collect();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let t = std::time::Instant::now();
                let mut s = 0f32;
                for _ in 0..20 {
                    s += m.matmul(&xs, 128).unwrap()[0];
                }
                let dt = t.elapsed().as_secs_f64();
                println!(
                    "{threads} threads, 128 tokens: {:.2} GMAC/s ({s})",
                    (rows * cols * 128 * 20) as f64 / dt / 1e9
                );
            });
        }
        // 150 distinct matrices (≈ 83 MB of Q4_1): weights streamed from memory, as in a model.
        let many: Vec<QMatrix> = (0..150).map(|_| m.clone()).collect();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let t = std::time::Instant::now();
                let mut s = 0f32;
                for _ in 0..10 {
                    for mm in &many {
                        s += mm.matmul(&x, 1).unwrap()[0];
                    }
                }
                let dt = t.elapsed().as_secs_f64();
                println!(
                    "{threads} threads, streamed: {:.2} GMAC/s ({s})",
                    (rows * cols * 1500) as f64 / dt / 1e9
                );
            });
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let t = std::time::Instant::now();
                let iters = 2000;
                let mut s = 0f32;
                for _ in 0..iters {
                    s += m.matmul(&x, 1).unwrap()[0];
                }
                let dt = t.elapsed().as_secs_f64();
                println!(
                    "{threads} threads: {:.1} µs per matvec, {:.2} GMAC/s ({s})",
                    dt / iters as f64 * 1e6,
                    (rows * cols * iters) as f64 / dt / 1e9
                );
            });
        }
    }
}
