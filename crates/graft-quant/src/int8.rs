//! The opt-in fast decode path: activations rounded to 8 bits per block of 32 (llama.cpp's
//! Q8_0 activations: one f32 scale `amax / 127` per block, values rounded to nearest, ties to
//! even), dotted with the weights' integer codes in integer arithmetic (AVX2 `maddubs`), the
//! scales applied once per block. It is **not** the exact path: rounding the activations moves
//! every output (by ~0.4 % of a block's largest activation per value, before summation), so it
//! is off unless asked for (`GRAFT_INT8_ACTIVATIONS=1`, or [`set_int8_activations`]), and the
//! conformance tests, which hold graft to PEFT's numbers, never run it. What it changes in
//! logits and greedy tokens is measured in docs/benchmarks.md.
//!
//! Only the decode kernels (one to a few tokens per pass over the weights, `kernels::rows`'
//! fused path) take it, on x86-64 with AVX2, for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and
//! Q6_K; every other case (prefill's tiled GEMM, the other formats, other CPUs) stays exact.
//! Each token's result is bit for bit the same whether it runs alone or with other tokens.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::QType;

/// 0: not read yet; 1: off; 2: on.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Whether decode rounds activations to 8 bits (see the module docs). The first call reads
/// `GRAFT_INT8_ACTIVATIONS` (`1`/`true`/`on` turn it on) unless [`set_int8_activations`] ran
/// before.
pub fn int8_activations() -> bool {
    match MODE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let on = std::env::var("GRAFT_INT8_ACTIVATIONS").is_ok_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "on" | "yes"
                )
            });
            // a concurrent set_int8_activations wins
            let _ = MODE.compare_exchange(
                0,
                if on { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            MODE.load(Ordering::Relaxed) == 2
        }
    }
}

/// Turns the 8-bit-activation decode path on or off for the whole process (it overrides
/// `GRAFT_INT8_ACTIVATIONS`).
pub fn set_int8_activations(on: bool) {
    MODE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether the 8-bit path has a kernel for this format on this machine.
pub(crate) fn supports(q: QType) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(
            q,
            QType::Q4_0
                | QType::Q4_1
                | QType::Q5_0
                | QType::Q5_1
                | QType::Q8_0
                | QType::Q4_K
                | QType::Q5_K
                | QType::Q6_K
        ) && crate::cpu::isa() >= crate::cpu::Isa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = q;
        false
    }
}

/// One token's activations rounded to 8 bits: `q[i]·d[i / 32]` approximates `x[i]`; `sd[b]`
/// is block b's `d·Σq` (what a weight format's min or offset multiplies).
#[derive(Debug, Clone, Default)]
pub struct QActs {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sd: Vec<f32>,
}

impl QActs {
    /// Rounds `x` (a multiple of 32 values).
    pub fn new(x: &[f32]) -> QActs {
        let blocks = x.len() / 32;
        let mut a = QActs {
            q: vec![0; blocks * 32],
            d: vec![0.0; blocks],
            sd: vec![0.0; blocks],
        };
        for (b, xs) in x.chunks_exact(32).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            a.d[b] = d;
            let mut sum = 0i32;
            for (i, &v) in xs.iter().enumerate() {
                // |v·id| ≤ 127 (up to rounding), clamped for NaN/inf inputs' sake
                let q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
                a.q[32 * b + i] = q;
                sum += i32::from(q);
            }
            a.sd[b] = d * sum as f32;
        }
        a
    }

    /// The values the codes stand for (`q·d`), for references.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .iter()
            .enumerate()
            .map(|(i, &q)| f32::from(q) * self.d[i / 32])
            .collect()
    }
}

/// Row · activations for N tokens, each exactly its one-token result.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`supports`] said yes); `row` is whole blocks of
/// `qtype` and every `acts` covers as many values.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
pub(crate) unsafe fn rows_dot<const N: usize>(
    qtype: QType,
    row: &[u8],
    acts: [&QActs; N],
) -> Option<[f32; N]> {
    // SAFETY: as this function's contract.
    unsafe {
        Some(match qtype {
            QType::Q4_0 => avx2::q45::<false, N>(row, 2, acts),
            QType::Q4_1 => avx2::q45::<false, N>(row, 4, acts),
            QType::Q5_0 => avx2::q45::<true, N>(row, 2, acts),
            QType::Q5_1 => avx2::q45::<true, N>(row, 4, acts),
            QType::Q8_0 => avx2::q8(row, acts),
            QType::Q4_K => avx2::qk::<false, N>(row, acts),
            QType::Q5_K => avx2::qk::<true, N>(row, acts),
            QType::Q6_K => avx2::q6k(row, acts),
            _ => return None,
        })
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::QActs;
    use crate::kernels::avx2::{hsum, load16, scales, PREFETCH_BYTES};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32(b: &[u8]) -> __m256i {
        let b = &b[..32];
        // SAFETY: `b` has 32 bytes.
        unsafe { _mm256_loadu_si256(b.as_ptr() as *const __m256i) }
    }

    /// Block `b`'s 32 activation codes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn acts32(a: &QActs, b: usize) -> __m256i {
        let q = &a.q[32 * b..32 * b + 32];
        // SAFETY: `q` has 32 bytes.
        unsafe { _mm256_loadu_si256(q.as_ptr() as *const __m256i) }
    }

    /// Σ u·s over 32 unsigned weight codes (≤ 63) and 32 signed activation codes, as eight
    /// i32 lanes (lanes 0..4: values 0..16; lanes 4..8: values 16..32) converted to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn udot(u: __m256i, s: __m256i) -> __m256 {
        let p = _mm256_maddubs_epi16(u, s);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    /// The f16 at `blk[i..i + 2]`.
    #[inline(always)]
    fn f16(blk: &[u8], i: usize) -> f32 {
        crate::kernels::f16_at(blk, i)
    }

    /// The two f16s at the start of a block (scale, min).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16x2(blk: &[u8]) -> (f32, f32) {
        let v = scales(blk);
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// Σ w·s over 32 signed weight codes (|w| ≤ 128) and 32 signed activation codes: |w| times
    /// s with w's sign (a pair sums to at most 2·128·127 < 2¹⁵), as in [`udot`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sdot(w: __m256i, s: __m256i) -> __m256 {
        udot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w))
    }

    /// Low and high nibbles of 16 bytes as 32 bytes (values 0..16 then 16..32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn nibbles(q: __m128i) -> __m256i {
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// Q4_0/Q5_0 (`skip` 2: d·(q − 8) or d·(q − 16), the codes made signed) and Q4_1/Q5_1
    /// (`skip` 4: d·q + m, the min times the activations' d·Σq); `FIVE`: the fifth bits follow
    /// the scales.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q45<const FIVE: bool, const N: usize>(
        row: &[u8],
        skip: usize,
        acts: [&QActs; N],
    ) -> [f32; N] {
        let (stride, half) = if FIVE {
            (skip + 20, 16)
        } else {
            (skip + 16, 8)
        };
        let half = _mm256_set1_epi8(half);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offset = [0f32; N];
        for (b, blk) in row.chunks_exact(stride).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let (d, m) = if skip == 4 {
                f16x2(blk)
            } else {
                (f16(blk, 0), 0.0)
            };
            let w = if FIVE {
                let qh =
                    u32::from_le_bytes([blk[skip], blk[skip + 1], blk[skip + 2], blk[skip + 3]]);
                _mm256_or_si256(nibbles(load16(&blk[skip + 4..])), bit32_bytes(qh))
            } else {
                nibbles(load16(&blk[skip..]))
            };
            for k in 0..N {
                let a = acts[k];
                let s = if skip == 4 {
                    // not `mul_add`: here it compiled to a call into libm (a third of the time)
                    offset[k] += m * a.sd[b];
                    udot(w, acts32(a, b))
                } else {
                    sdot(_mm256_sub_epi8(w, half), acts32(a, b))
                };
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), s, acc[k]);
            }
        }
        std::array::from_fn(|k| hsum(acc[k]) + offset[k])
    }

    /// Bits 0..32 of `v` as 32 bytes: 16 where the bit is set, 0 where not.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bit32_bytes(v: u32) -> __m256i {
        // byte i takes byte i/8 of v, then keeps bit i%8
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(v as i32),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    }

    /// Q8_0: signed codes on both sides (|w| times x with w's sign; |w| ≤ 128, so a pair sums
    /// to at most 2·128·127 < 2¹⁵).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8<const N: usize>(row: &[u8], acts: [&QActs; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, blk) in row.chunks_exact(34).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let d = f16(blk, 0);
            let w = load32(&blk[2..]);
            for k in 0..N {
                let a = acts[k];
                let s = sdot(w, acts32(a, b));
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), s, acc[k]);
            }
        }
        std::array::from_fn(|k| hsum(acc[k]))
    }

    /// Q4_K (`FIFTH` false) and Q5_K (`FIFTH` true): per sub-block j of 32,
    /// d·sc_j·dx·Σq·qx − dmin·m_j·dx·Σqx.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn qk<const FIFTH: bool, const N: usize>(row: &[u8], acts: [&QActs; N]) -> [f32; N] {
        let mask = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(1);
        let (stride, qs0) = if FIFTH { (176, 48) } else { (144, 16) };
        let mut acc = [_mm256_setzero_ps(); N];
        let mut mins = [0f32; N];
        for (bi, blk) in row.chunks_exact(stride).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let (d, dmin) = f16x2(blk);
            let sc = &blk[4..16];
            let qh = if FIFTH {
                load32(&blk[16..])
            } else {
                _mm256_setzero_si256()
            };
            for c in 0..4 {
                let q = load32(&blk[qs0 + 32 * c..]);
                for t in 0..2 {
                    let j = 2 * c + t;
                    let mut w = if t == 0 {
                        _mm256_and_si256(q, mask)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(q, 4), mask)
                    };
                    if FIFTH {
                        let sh = _mm_cvtsi32_si128(j as i32);
                        let fifth = _mm256_and_si256(_mm256_srl_epi16(qh, sh), one);
                        w = _mm256_or_si256(w, _mm256_slli_epi16(fifth, 4));
                    }
                    let (s, m) = crate::blocks::scale_min_k4(j, sc);
                    let (ds, dm) = (d * f32::from(s), dmin * f32::from(m));
                    let b = 8 * bi + j;
                    for k in 0..N {
                        let a = acts[k];
                        let p = udot(w, acts32(a, b));
                        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(ds * a.d[b]), p, acc[k]);
                        mins[k] += dm * a.sd[b];
                    }
                }
            }
        }
        std::array::from_fn(|k| hsum(acc[k]) - mins[k])
    }

    /// Q6_K: per group of 16, d·sc·Σ(q − 32)·qx; the signed codes times the activations by
    /// the sign trick, each 16-group's integer sum times its i8 scale in `madd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6k<const N: usize>(row: &[u8], acts: [&QActs; N]) -> [f32; N] {
        let m4 = _mm256_set1_epi8(0x0f);
        let m2 = _mm256_set1_epi8(3);
        let off = _mm256_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); N];
        for (bi, blk) in row.chunks_exact(210).enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let d = f16(blk, 208);
            let sc = &blk[192..208];
            for h in 0..2 {
                let ql = &blk[64 * h..64 * h + 64];
                let a = load32(ql);
                let b = load32(&ql[32..]);
                let hb = load32(&blk[128 + 32 * h..]);
                // (low four bits, high two bits) of elements 0, 32, 64, 96 + l of the half
                let parts = [
                    (_mm256_and_si256(a, m4), hb),
                    (_mm256_and_si256(b, m4), _mm256_srli_epi16(hb, 2)),
                    (
                        _mm256_and_si256(_mm256_srli_epi16(a, 4), m4),
                        _mm256_srli_epi16(hb, 4),
                    ),
                    (
                        _mm256_and_si256(_mm256_srli_epi16(b, 4), m4),
                        _mm256_srli_epi16(hb, 6),
                    ),
                ];
                for (p, (lo, hi)) in parts.into_iter().enumerate() {
                    let q = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hi, m2), 4));
                    let w = _mm256_sub_epi8(q, off);
                    let aw = _mm256_sign_epi8(w, w);
                    // the two 16-groups' scales, one per 128-bit lane
                    let g = 8 * h + 2 * p;
                    let scales = _mm256_set_m128i(
                        _mm_set1_epi16(i16::from(sc[g + 1] as i8)),
                        _mm_set1_epi16(i16::from(sc[g] as i8)),
                    );
                    let blk32 = 8 * bi + 4 * h + p;
                    for k in 0..N {
                        let ak = acts[k];
                        let pr = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(acts32(ak, blk32), w));
                        let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(pr, scales));
                        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * ak.d[blk32]), s, acc[k]);
                    }
                }
            }
        }
        std::array::from_fn(|k| hsum(acc[k]))
    }
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
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    #[test]
    fn activations_round_to_their_block_scale() {
        let mut x = lcg(96, 3);
        x[40] = 5.0; // block 1's largest value
        x[64..96].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        let a = QActs::new(&x);
        assert_eq!(a.q[40], 127);
        assert!((a.d[1] - 5.0 / 127.0).abs() < 1e-7);
        assert_eq!(a.d[2], 0.0);
        assert!(a.q[64..].iter().all(|&q| q == 0));
        let back = a.dequantize();
        for (i, (v, r)) in x.iter().zip(&back).enumerate() {
            assert!(
                (v - r).abs() <= a.d[i / 32] * 0.5 + 1e-7,
                "value {i}: {v} vs {r}"
            );
        }
        for b in 0..3 {
            let s: i32 = a.q[32 * b..32 * b + 32].iter().map(|&q| i32::from(q)).sum();
            assert_eq!(a.sd[b], a.d[b] * s as f32);
        }
    }

    /// The 8-bit kernels against Σ dequantized weight × dequantized activation in f64 (what
    /// they compute, up to f32 rounding), for every format they take, over several shapes and
    /// 1–4 tokens; each token's result bit for bit its one-token result.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn kernels_match_dequantized_products() {
        if !supports(QType::Q4_0) {
            eprintln!("no AVX2: skipped");
            return;
        }
        let formats = [
            QType::Q4_0,
            QType::Q4_1,
            QType::Q5_0,
            QType::Q5_1,
            QType::Q8_0,
            QType::Q4_K,
            QType::Q5_K,
            QType::Q6_K,
        ];
        for (fi, &qt) in formats.iter().enumerate() {
            for &cols in &[256usize, 512, 1536] {
                let rows = 5;
                let mut rng = crate::kquant_tests::Rng(11 + fi as u64 + cols as u64);
                let m =
                    crate::kquant_tests::random_matrix(qt, rows, cols / qt.block_len(), &mut rng);
                let deq = m.dequantize();
                let xs: Vec<Vec<f32>> = (0..4).map(|t| lcg(cols, 100 + t)).collect();
                let acts: Vec<QActs> = xs.iter().map(|x| QActs::new(x)).collect();
                let rb = m.data.len() / rows;
                for r in 0..rows {
                    let row = &m.data.as_slice()[r * rb..(r + 1) * rb];
                    // SAFETY: AVX2 checked by `supports`; whole blocks.
                    let four = unsafe { rows_dot::<4>(qt, row, std::array::from_fn(|k| &acts[k])) }
                        .expect("supported");
                    for (t, a) in acts.iter().enumerate() {
                        let xd = a.dequantize();
                        let want: f64 = deq[r * cols..(r + 1) * cols]
                            .iter()
                            .zip(&xd)
                            .map(|(&w, &x)| f64::from(w) * f64::from(x))
                            .sum();
                        let scale: f64 = deq[r * cols..(r + 1) * cols]
                            .iter()
                            .zip(&xd)
                            .map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs())
                            .sum();
                        // SAFETY: as above.
                        let one = unsafe { rows_dot::<1>(qt, row, [a]) }.expect("supported")[0];
                        assert_eq!(one.to_bits(), four[t].to_bits(), "{qt:?} token {t} alone");
                        assert!(
                            (f64::from(one) - want).abs() <= 8.0 * cols as f64 * 6e-8 * scale,
                            "{qt:?} cols {cols} row {r} token {t}: {one} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// How far the 8-bit path moves a dot from the exact one: a loose bound that fails if the
    /// kernels were wrong (e.g. a block's scale or offset missing), not a tolerance the exact
    /// path would need.
    #[test]
    fn rounding_error_is_a_small_fraction_of_the_dot() {
        let cols = 1024;
        let w = lcg(cols, 5);
        let x = lcg(cols, 6);
        let exact: f64 = w
            .iter()
            .zip(&x)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let xd = QActs::new(&x).dequantize();
        let approx: f64 = w
            .iter()
            .zip(&xd)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let norm: f64 = w
            .iter()
            .zip(&x)
            .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
            .sum();
        assert!((exact - approx).abs() < 0.01 * norm, "{exact} vs {approx}");
    }
}
