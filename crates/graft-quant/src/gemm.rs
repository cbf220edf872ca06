//! f32 matrix-matrix products y = x·Wᵀ, both operands row-major with k contiguous (tokens ×
//! features and out-features × features, as a Linear layer holds them): prefill's and
//! training's work once a quantized tile is dequantized.
//!
//! Register-blocked microkernels over packed panels (BLIS' structure): AVX-512 (12 tokens × 32
//! outputs in 24 zmm accumulators) or AVX2+FMA (6 × 16 in 12 ymm), picked at run time and
//! capped by `GRAFT_MAX_ISA` (see [`crate::cpu`]). x is packed once into tiles of MR tokens,
//! k-major; each thread packs NR rows of W for a block of KC features and runs every token tile
//! over it while it sits in L1/L2.
//!
//! Each output is one FMA chain over k in order (0, 1, …, k−1), stored and reloaded between KC
//! blocks: its value does not depend on how many tokens share the call, on the tile it falls in,
//! on the thread split, or on which of the two kernels ran. So a batch of sequences gets what
//! each gets alone, on every x86 machine alike.

use crate::cpu::{isa, Isa};

/// Features per block: W's panel (NR × KC) and a token tile (MR × KC) fit L1 and L2.
const KC: usize = 256;

/// Whether [`gemm_nt`] has a fast path on this machine (else callers keep their own GEMM).
pub fn available() -> bool {
    matches!(isa(), Isa::Avx512 | Isa::Avx2)
}

/// `y[i·ldy + j] = Σ_p x[i·k + p] · w[j·k + p]` for i < n, j < m (y's other columns are left
/// alone). Returns false, doing nothing, where [`available`] is false.
///
/// Panics if a slice is shorter than its shape says (callers pass their own buffers).
pub fn gemm_nt(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) -> bool {
    match PackedX::new(x, n, k) {
        Some(px) => {
            px.times_wt(w, m, y, ldy);
            true
        }
        None => false,
    }
}

/// x packed for [`PackedX::times_wt`]: tiles of MR tokens, k-major (zero rows past n). Pack
/// once and multiply by many weight tiles.
pub struct PackedX {
    data: Vec<f32>,
    n: usize,
    k: usize,
    mr: usize,
    nr: usize,
}

impl PackedX {
    /// None where [`available`] is false. Panics if `x` is shorter than n·k.
    pub fn new(x: &[f32], n: usize, k: usize) -> Option<PackedX> {
        assert!(x.len() >= n * k);
        let (mr, nr) = match isa() {
            Isa::Avx512 => (12, 32),
            Isa::Avx2 => (6, 16),
            Isa::Portable => return None,
        };
        let tiles = n.div_ceil(mr);
        let mut data = vec![0f32; tiles * k * mr];
        for t in 0..tiles {
            let dst = &mut data[t * k * mr..(t + 1) * k * mr];
            for r in 0..mr.min(n - t * mr) {
                let row = &x[(t * mr + r) * k..(t * mr + r + 1) * k];
                for (p, v) in row.iter().enumerate() {
                    dst[p * mr + r] = *v;
                }
            }
        }
        Some(PackedX { data, n, k, mr, nr })
    }

    /// `y[i·ldy + j] = Σ_p x[i·k + p] · w[j·k + p]` for i < n, j < m (y's other columns are
    /// left alone). Panics if a slice is shorter than its shape says.
    pub fn times_wt(&self, w: &[f32], m: usize, y: &mut [f32], ldy: usize) {
        let (n, k, mr, nr) = (self.n, self.k, self.mr, self.nr);
        assert!(w.len() >= m * k && ldy >= m);
        assert!(n == 0 || y.len() >= (n - 1) * ldy + m);
        if n == 0 || m == 0 {
            return;
        }
        if k == 0 {
            for i in 0..n {
                y[i * ldy..i * ldy + m].fill(0.0);
            }
            return;
        }
        let tiles = n.div_ceil(mr);
        let xp = &self.data;
        let panels = m.div_ceil(nr);
        let threads = rayon::current_num_threads().max(1).min(panels);
        let per = panels.div_ceil(threads);
        let yp = SendPtr(y.as_mut_ptr());
        let ylen = y.len();
        rayon::scope(|s| {
            for t in 0..threads {
                let (p0, p1) = (t * per, ((t + 1) * per).min(panels));
                if p0 >= p1 {
                    continue;
                }
                s.spawn(move |_| {
                    // SAFETY: each thread writes only the columns of its own panels
                    let y = unsafe_slice(yp, ylen);
                    let kcb = KC;
                    let mut wp = vec![0f32; kcb * nr];
                    for kc0 in (0..k).step_by(kcb) {
                        let kc = kcb.min(k - kc0);
                        for panel in p0..p1 {
                            let j0 = panel * nr;
                            let cols = nr.min(m - j0);
                            // W rows j0.. as [p][c] for the block's features (zero columns past m)
                            pack_w(w, k, j0, cols, kc0, kc, nr, &mut wp[..kc * nr]);
                            for tile in 0..tiles {
                                let i0 = tile * mr;
                                let rows = mr.min(n - i0);
                                let xt =
                                    &xp[tile * k * mr + kc0 * mr..tile * k * mr + (kc0 + kc) * mr];
                                micro(
                                    xt,
                                    &wp[..kc * nr],
                                    kc,
                                    &mut y[i0 * ldy + j0..],
                                    ldy,
                                    rows,
                                    cols,
                                    kc0 == 0,
                                );
                            }
                        }
                    }
                });
            }
        });
    }
}

/// The FMA throughput of one core with the instructions [`gemm_nt`] uses (12 independent
/// chains of vector FMAs, `iters` steps each), in GFLOP/s: the peak the GEMM is measured
/// against. 0 where there is no SIMD path.
#[allow(unsafe_code)]
pub fn fma_peak_gflops(iters: usize) -> f64 {
    let t = std::time::Instant::now();
    #[cfg(target_arch = "x86_64")]
    let lanes: usize = match isa() {
        // SAFETY: the features were detected at run time
        Isa::Avx512 => unsafe { peak_avx512(iters) },
        Isa::Avx2 => unsafe { peak_avx2(iters) },
        Isa::Portable => 0,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let lanes: usize = 0;
    if lanes == 0 {
        return 0.0;
    }
    (iters * 12 * lanes * 2) as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn peak_avx512(iters: usize) -> usize {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let s: f32 = acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum();
    std::hint::black_box(s);
    16
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_avx2(iters: usize) -> usize {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut o = [0f32; 8];
    let mut s = 0.0;
    for v in &acc {
        _mm256_storeu_ps(o.as_mut_ptr(), *v);
        s += o.iter().sum::<f32>();
    }
    std::hint::black_box(s);
    8
}

/// W's rows j0 .. j0 + cols, features kc0 .. kc0 + kc, as [p][c] with nr columns (zero past
/// `cols`). A transpose: gathers of a column of 16 (8) rows at a time, where the kernels are.
#[allow(clippy::too_many_arguments, unsafe_code)]
fn pack_w(
    w: &[f32],
    k: usize,
    j0: usize,
    cols: usize,
    kc0: usize,
    kc: usize,
    nr: usize,
    wp: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if cols == nr && (j0 + nr) * k <= w.len() && k * nr < i32::MAX as usize {
        match isa() {
            // SAFETY: features detected at run time; every gathered index is below
            // (j0 + nr)·k ≤ w.len() (checked above), every store within kc·nr
            Isa::Avx512 => return unsafe { pack_w_avx512(w, k, j0, kc0, kc, wp) },
            Isa::Avx2 => return unsafe { pack_w_avx2(w, k, j0, kc0, kc, wp) },
            Isa::Portable => {}
        }
    }
    wp.fill(0.0);
    for c in 0..cols {
        let row = &w[(j0 + c) * k + kc0..(j0 + c) * k + kc0 + kc];
        for (p, v) in row.iter().enumerate() {
            wp[p * nr + c] = *v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn pack_w_avx512(w: &[f32], k: usize, j0: usize, kc0: usize, kc: usize, wp: &mut [f32]) {
    use std::arch::x86_64::*;
    let ki = k as i32;
    let idx = _mm512_setr_epi32(
        0,
        ki,
        2 * ki,
        3 * ki,
        4 * ki,
        5 * ki,
        6 * ki,
        7 * ki,
        8 * ki,
        9 * ki,
        10 * ki,
        11 * ki,
        12 * ki,
        13 * ki,
        14 * ki,
        15 * ki,
    );
    debug_assert!(wp.len() >= kc * 32);
    let base0 = w.as_ptr().add(j0 * k + kc0);
    let base1 = w.as_ptr().add((j0 + 16) * k + kc0);
    for p in 0..kc {
        let a = _mm512_i32gather_ps::<4>(idx, base0.add(p));
        let b = _mm512_i32gather_ps::<4>(idx, base1.add(p));
        _mm512_storeu_ps(wp.as_mut_ptr().add(p * 32), a);
        _mm512_storeu_ps(wp.as_mut_ptr().add(p * 32 + 16), b);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn pack_w_avx2(w: &[f32], k: usize, j0: usize, kc0: usize, kc: usize, wp: &mut [f32]) {
    use std::arch::x86_64::*;
    let ki = k as i32;
    let idx = _mm256_setr_epi32(0, ki, 2 * ki, 3 * ki, 4 * ki, 5 * ki, 6 * ki, 7 * ki);
    debug_assert!(wp.len() >= kc * 16);
    let base0 = w.as_ptr().add(j0 * k + kc0);
    let base1 = w.as_ptr().add((j0 + 8) * k + kc0);
    for p in 0..kc {
        let a = _mm256_i32gather_ps::<4>(base0.add(p), idx);
        let b = _mm256_i32gather_ps::<4>(base1.add(p), idx);
        _mm256_storeu_ps(wp.as_mut_ptr().add(p * 16), a);
        _mm256_storeu_ps(wp.as_mut_ptr().add(p * 16 + 8), b);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the threads write disjoint columns (see gemm_nt)
#[allow(unsafe_code)]
unsafe impl Send for SendPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for SendPtr {}

#[allow(unsafe_code, clippy::mut_from_ref)]
fn unsafe_slice<'a>(p: SendPtr, len: usize) -> &'a mut [f32] {
    // SAFETY: the pointer and length come from one live &mut [f32] that outlives the scope;
    // threads touch disjoint elements
    unsafe { std::slice::from_raw_parts_mut(p.0, len) }
}

/// One tile: y[r·ldy + c] (+)= Σ_p xt[p·MR + r]·wp[p·NR + c] for r < rows, c < cols; `first`:
/// the chain starts at 0 rather than at y.
#[allow(clippy::too_many_arguments, unsafe_code)]
fn micro(
    xt: &[f32],
    wp: &[f32],
    kc: usize,
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    cols: usize,
    first: bool,
) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // SAFETY: the features were detected at run time; the slices' lengths are checked in
        // the kernels' callers (xt: kc·MR, wp: kc·NR)
        Isa::Avx512 => unsafe { micro_avx512(xt, wp, kc, y, ldy, rows, cols, first) },
        Isa::Avx2 => unsafe { micro_avx2(xt, wp, kc, y, ldy, rows, cols, first) },
        Isa::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xt, wp, kc, y, ldy, rows, cols, first);
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments, unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512(
    xt: &[f32],
    wp: &[f32],
    kc: usize,
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    cols: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    const NR: usize = 32;
    debug_assert!(xt.len() >= kc * MR && wp.len() >= kc * NR);
    let full = rows == MR && cols == NR;
    // the tile's current values, from y (or a copy of its valid part at the edges)
    let mut edge = [0f32; MR * NR];
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if !first {
        if full {
            for (r, a) in acc.iter_mut().enumerate() {
                let p = y.as_ptr().add(r * ldy);
                a[0] = _mm512_loadu_ps(p);
                a[1] = _mm512_loadu_ps(p.add(16));
            }
        } else {
            for r in 0..rows {
                edge[r * NR..r * NR + cols].copy_from_slice(&y[r * ldy..r * ldy + cols]);
            }
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm512_loadu_ps(edge.as_ptr().add(r * NR));
                a[1] = _mm512_loadu_ps(edge.as_ptr().add(r * NR + 16));
            }
        }
    }
    let (xp, wpp) = (xt.as_ptr(), wp.as_ptr());
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(wpp.add(p * NR));
        let b1 = _mm512_loadu_ps(wpp.add(p * NR + 16));
        let xr = xp.add(p * MR);
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*xr.add(r));
            a[0] = _mm512_fmadd_ps(xv, b0, a[0]);
            a[1] = _mm512_fmadd_ps(xv, b1, a[1]);
        }
    }
    if full {
        for (r, a) in acc.iter().enumerate() {
            let p = y.as_mut_ptr().add(r * ldy);
            _mm512_storeu_ps(p, a[0]);
            _mm512_storeu_ps(p.add(16), a[1]);
        }
    } else {
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(edge.as_mut_ptr().add(r * NR), a[0]);
            _mm512_storeu_ps(edge.as_mut_ptr().add(r * NR + 16), a[1]);
        }
        for r in 0..rows {
            y[r * ldy..r * ldy + cols].copy_from_slice(&edge[r * NR..r * NR + cols]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments, unsafe_code)]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(
    xt: &[f32],
    wp: &[f32],
    kc: usize,
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    cols: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    debug_assert!(xt.len() >= kc * MR && wp.len() >= kc * NR);
    let full = rows == MR && cols == NR;
    let mut edge = [0f32; MR * NR];
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if !first {
        if full {
            for (r, a) in acc.iter_mut().enumerate() {
                let p = y.as_ptr().add(r * ldy);
                a[0] = _mm256_loadu_ps(p);
                a[1] = _mm256_loadu_ps(p.add(8));
            }
        } else {
            for r in 0..rows {
                edge[r * NR..r * NR + cols].copy_from_slice(&y[r * ldy..r * ldy + cols]);
            }
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_loadu_ps(edge.as_ptr().add(r * NR));
                a[1] = _mm256_loadu_ps(edge.as_ptr().add(r * NR + 8));
            }
        }
    }
    let (xp, wpp) = (xt.as_ptr(), wp.as_ptr());
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(wpp.add(p * NR));
        let b1 = _mm256_loadu_ps(wpp.add(p * NR + 8));
        let xr = xp.add(p * MR);
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm256_set1_ps(*xr.add(r));
            a[0] = _mm256_fmadd_ps(xv, b0, a[0]);
            a[1] = _mm256_fmadd_ps(xv, b1, a[1]);
        }
    }
    if full {
        for (r, a) in acc.iter().enumerate() {
            let p = y.as_mut_ptr().add(r * ldy);
            _mm256_storeu_ps(p, a[0]);
            _mm256_storeu_ps(p.add(8), a[1]);
        }
    } else {
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(edge.as_mut_ptr().add(r * NR), a[0]);
            _mm256_storeu_ps(edge.as_mut_ptr().add(r * NR + 8), a[1]);
        }
        for r in 0..rows {
            y[r * ldy..r * ldy + cols].copy_from_slice(&edge[r * NR..r * NR + cols]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// The reference: one FMA chain per output over k in order.
    fn reference(x: &[f32], n: usize, k: usize, w: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * m];
        for i in 0..n {
            for j in 0..m {
                let mut acc = 0f32;
                for p in 0..k {
                    acc = x[i * k + p].mul_add(w[j * k + p], acc);
                }
                y[i * m + j] = acc;
            }
        }
        y
    }

    /// Every shape (edges in n, m and k, k across KC blocks, a strided output) gives bit for
    /// bit the in-order FMA chain, on each kernel this machine has; a row's value does not
    /// depend on how many rows share the call.
    #[test]
    fn gemm_equals_the_in_order_fma_chain() {
        if !available() {
            eprintln!("no SIMD GEMM on this machine");
            return;
        }
        let mut seed = 7u64;
        for &(n, k, m) in &[
            (1, 1, 1),
            (5, 3, 7),
            (12, 256, 32),
            (13, 257, 33),
            (16, 896, 100),
            (40, 600, 65),
            (7, 513, 31),
            (64, 128, 17),
        ] {
            let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let want = reference(&x, n, k, &w, m);
            let ldy = m + 3;
            let mut y = vec![9f32; n * ldy];
            assert!(gemm_nt(&x, n, k, &w, m, &mut y, ldy));
            for i in 0..n {
                for j in 0..ldy {
                    let got = y[i * ldy + j];
                    if j < m {
                        assert_eq!(
                            got.to_bits(),
                            want[i * m + j].to_bits(),
                            "({n},{k},{m}) at ({i},{j})"
                        );
                    } else {
                        assert_eq!(got, 9.0, "({n},{k},{m}): column {j} past m written");
                    }
                }
            }
            // one row alone: the same bits
            let mut one = vec![0f32; m];
            assert!(gemm_nt(&x[(n - 1) * k..], 1, k, &w, m, &mut one, m));
            assert!(one
                .iter()
                .zip(&want[(n - 1) * m..])
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    /// GFLOP/s of the GEMM on a prefill shape, and the FMA peak of one core measured with the
    /// same instructions (`cargo test --release -p graft-quant gemm_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn gemm_speed() {
        if !available() {
            return;
        }
        let (n, k, m) = (512, 896, 4864);
        let mut seed = 1u64;
        let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let w: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let mut y = vec![0f32; n * m];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            gemm_nt(&x, n, k, &w, m, &mut y, m);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (n * k * m) as f64;
        println!(
            "gemm {n}x{k}x{m} on {:?}, {} threads: {:.1} GFLOP/s",
            isa(),
            rayon::current_num_threads(),
            flops / best / 1e9
        );
    }
}
