//! The KV cache and causal attention, in plain Rust on f32 slices: per layer and KV head the
//! keys and values sit contiguously (growing by doubling), so a decode step appends one row and
//! reads the history in place, with no tensor copies. Grouped-query heads read their shared KV
//! head. Prefill splits the heads across threads.

use rayon::prelude::*;

/// One layer's cached keys and values: `[kv_head][position][head_dim]`, `cap` positions
/// reserved per head.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
    cap: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Keys and values of every layer so far, for generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Number of positions already in the cache.
    pub len: usize,
    /// Positions to reserve up front (a generation knows prompt + new tokens), so the cache
    /// never grows by doubling past what it needs.
    reserve: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that reserves room for `positions` positions per layer on first use.
    pub fn with_capacity(positions: usize) -> Self {
        KvCache {
            reserve: positions,
            ..Self::default()
        }
    }

    /// Layer `i`'s cache, created on first use.
    pub fn layer(&mut self, i: usize, kv_heads: usize, head_dim: usize) -> &mut LayerCache {
        if self.layers.len() <= i {
            self.layers.resize(i + 1, LayerCache::default());
        }
        let l = &mut self.layers[i];
        if l.kv_heads == 0 {
            l.kv_heads = kv_heads;
            l.head_dim = head_dim;
            l.grow_exact(self.reserve);
        }
        l
    }
}

impl LayerCache {
    fn grow(&mut self, need: usize) {
        if need <= self.cap {
            return;
        }
        self.grow_exact(need.next_power_of_two().max(16));
    }

    fn grow_exact(&mut self, cap: usize) {
        if cap <= self.cap {
            return;
        }
        let d = self.head_dim;
        let mut k = vec![0f32; self.kv_heads * cap * d];
        let mut v = vec![0f32; self.kv_heads * cap * d];
        for h in 0..self.kv_heads {
            let (old, new) = (h * self.cap * d, h * cap * d);
            let n = self.cap * d;
            k[new..new + n].copy_from_slice(&self.k[old..old + n]);
            v[new..new + n].copy_from_slice(&self.v[old..old + n]);
        }
        self.k = k;
        self.v = v;
        self.cap = cap;
    }

    /// Appends `n` positions after `len`: `k` and `v` are (n, kv_heads·head_dim) row-major.
    pub fn append(&mut self, len: usize, n: usize, k: &[f32], v: &[f32]) {
        self.grow(len + n);
        let (d, kvh) = (self.head_dim, self.kv_heads);
        for t in 0..n {
            for h in 0..kvh {
                let src = t * kvh * d + h * d;
                let dst = (h * self.cap + len + t) * d;
                self.k[dst..dst + d].copy_from_slice(&k[src..src + d]);
                self.v[dst..dst + d].copy_from_slice(&v[src..src + d]);
            }
        }
    }

    /// Causal attention for `n` queries at positions `total − n .. total` (q: (n, heads·d)),
    /// over the `total` cached positions; returns (n, heads·d). `window` limits how far back a
    /// query looks (sliding-window attention).
    pub fn attend(
        &self,
        q: &[f32],
        n: usize,
        heads: usize,
        total: usize,
        scale: f32,
        window: Option<usize>,
    ) -> Vec<f32> {
        self.attend_capped(q, n, heads, total, scale, window, None)
    }

    /// [`Self::attend`] with scores soft-capped to `cap · tanh(s / cap)` (Gemma 2).
    #[allow(clippy::too_many_arguments)]
    pub fn attend_capped(
        &self,
        q: &[f32],
        n: usize,
        heads: usize,
        total: usize,
        scale: f32,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Vec<f32> {
        let d = self.head_dim;
        let rep = heads / self.kv_heads.max(1);
        let offset = total - n;
        let head = |h: usize| -> Vec<f32> {
            let kvh = h / rep.max(1);
            let a = HeadArgs {
                q,
                kb: &self.k[kvh * self.cap * d..],
                vb: &self.v[kvh * self.cap * d..],
                n,
                heads,
                h,
                d,
                offset,
                total,
                scale,
                window,
                softcap,
            };
            head_dispatch(&a)
        };
        let per_head: Vec<Vec<f32>> = if n * total > 4096 {
            (0..heads).into_par_iter().map(head).collect()
        } else {
            (0..heads).map(head).collect()
        };
        let mut out = vec![0f32; n * heads * d];
        for (h, ph) in per_head.iter().enumerate() {
            for i in 0..n {
                out[i * heads * d + h * d..i * heads * d + (h + 1) * d]
                    .copy_from_slice(&ph[i * d..(i + 1) * d]);
            }
        }
        out
    }
}

/// One query head's inputs (see [`LayerCache::attend_capped`]).
struct HeadArgs<'a> {
    q: &'a [f32],
    kb: &'a [f32],
    vb: &'a [f32],
    n: usize,
    heads: usize,
    h: usize,
    d: usize,
    offset: usize,
    total: usize,
    scale: f32,
    window: Option<usize>,
    softcap: Option<f32>,
}

/// The head's attention, compiled for AVX2 where the CPU has it (and graft-quant's
/// `GRAFT_MAX_ISA` allows it): the same operations in the same order, in wider registers
/// (Rust never fuses a multiply and an add on its own), so the numbers are the same.
#[allow(unsafe_code)]
fn head_dispatch(a: &HeadArgs) -> Vec<f32> {
    if a.n >= GEMM_MIN_QUERIES {
        if let Some(out) = head_gemm(a) {
            return out;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if graft_quant::cpu::isa() >= graft_quant::cpu::Isa::Avx2 {
        // SAFETY: AVX2 was detected at run time
        return unsafe { head_avx2(a) };
    }
    head_attention(a)
}

/// From this many queries (prefill) a head runs as two GEMMs: scores = Q·Kᵀ over every cached
/// position, then (softmax, zero past the query's position) P·V.
const GEMM_MIN_QUERIES: usize = 16;

/// A head as two GEMMs (graft-quant's, where the CPU has a SIMD path; `None` otherwise). Each
/// score is one in-order FMA chain over head_dim and each output one over the positions (the
/// masked ones add exact zeros), so a query's numbers do not depend on how many queries or
/// positions share the call.
fn head_gemm(a: &HeadArgs) -> Option<Vec<f32>> {
    use graft_quant::gemm::PackedX;
    let HeadArgs {
        q,
        kb,
        vb,
        n,
        heads,
        h,
        d,
        offset,
        total,
        scale,
        window,
        softcap,
    } = *a;
    let mut qh = vec![0f32; n * d];
    for i in 0..n {
        qh[i * d..(i + 1) * d]
            .copy_from_slice(&q[i * heads * d + h * d..i * heads * d + (h + 1) * d]);
    }
    let px = PackedX::new(&qh, n, d)?;
    let mut s = vec![0f32; n * total];
    px.times_wt(&kb[..total * d], total, &mut s, total);
    for i in 0..n {
        let qpos = offset + i;
        let start = window.map_or(0, |w| (qpos + 1).saturating_sub(w));
        let row = &mut s[i * total..(i + 1) * total];
        let mut max = f32::NEG_INFINITY;
        for v in &mut row[start..=qpos] {
            let mut x = *v * scale;
            if let Some(c) = softcap {
                x = (x / c).tanh() * c;
            }
            *v = x;
            max = max.max(x);
        }
        let mut sum = 0f32;
        for v in &mut row[start..=qpos] {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in &mut row[start..=qpos] {
            *v /= sum;
        }
        row[..start].fill(0.0);
        row[qpos + 1..].fill(0.0);
    }
    let mut vt = vec![0f32; d * total];
    for j in 0..total {
        for c in 0..d {
            vt[c * total + j] = vb[j * d + c];
        }
    }
    let pp = PackedX::new(&s, n, total)?;
    let mut out = vec![0f32; n * d];
    pp.times_wt(&vt, d, &mut out, d);
    Some(out)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn head_avx2(a: &HeadArgs) -> Vec<f32> {
    head_attention(a)
}

#[inline(always)]
fn head_attention(a: &HeadArgs) -> Vec<f32> {
    let HeadArgs {
        q,
        kb,
        vb,
        n,
        heads,
        h,
        d,
        offset,
        total,
        scale,
        window,
        softcap,
    } = *a;
    let mut out = vec![0f32; n * d];
    let mut scores = vec![0f32; total];
    for i in 0..n {
        let qpos = offset + i;
        let start = window.map_or(0, |w| (qpos + 1).saturating_sub(w));
        let qi = &q[i * heads * d + h * d..i * heads * d + (h + 1) * d];
        let mut max = f32::NEG_INFINITY;
        for j in start..=qpos {
            let kj = &kb[j * d..(j + 1) * d];
            let mut s = dot(qi, kj) * scale;
            if let Some(c) = softcap {
                s = (s / c).tanh() * c;
            }
            scores[j] = s;
            max = max.max(s);
        }
        let mut sum = 0f32;
        for s in &mut scores[start..=qpos] {
            *s = (*s - max).exp();
            sum += *s;
        }
        let o = &mut out[i * d..(i + 1) * d];
        for j in start..=qpos {
            let p = scores[j] / sum;
            let vj = &vb[j * d..(j + 1) * d];
            for (a, b) in o.iter_mut().zip(vj) {
                *a += p * b;
            }
        }
    }
    out
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Rotary embeddings in Hugging Face's rotate-half layout, in place on (n, heads·d) rows for
/// positions p0..p0+n: (x₁, x₂) → (x₁·cos − x₂·sin, x₂·cos + x₁·sin), angle = pos·inv_freq.
pub fn rope_in_place(x: &mut [f32], n: usize, heads: usize, d: usize, p0: usize, inv_freq: &[f32]) {
    rope_in_place_scaled(x, n, heads, d, p0, inv_freq, 1.0)
}

/// [`rope_in_place`] with cos and sin multiplied by `scaling` (LongRoPE's attention factor).
pub fn rope_in_place_scaled(
    x: &mut [f32],
    n: usize,
    heads: usize,
    d: usize,
    p0: usize,
    inv_freq: &[f32],
    scaling: f32,
) {
    let half = d / 2;
    for t in 0..n {
        let pos = (p0 + t) as f32;
        for (j, f) in inv_freq.iter().enumerate().take(half) {
            let (mut sin, mut cos) = (pos * f).sin_cos();
            if scaling != 1.0 {
                sin *= scaling;
                cos *= scaling;
            }
            for h in 0..heads {
                let base = t * heads * d + h * d;
                let (x1, x2) = (x[base + j], x[base + j + half]);
                x[base + j] = x1 * cos - x2 * sin;
                x[base + j + half] = x2 * cos + x1 * sin;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 build of a head gives the portable build's numbers bit for bit (head_dim 64
    /// and an odd one; a window; soft-capping).
    #[test]
    fn wide_registers_change_no_bit() {
        let val = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5;
        for &(d, n, total, window, softcap) in &[
            (64usize, 9usize, 40usize, None, None),
            (13, 5, 5, Some(3), None),
            (64, 3, 70, None, Some(50.0f32)),
        ] {
            let heads = 2;
            let q: Vec<f32> = (0..n * heads * d).map(val).collect();
            let kb: Vec<f32> = (0..total * d).map(|i| val(i + 5)).collect();
            let vb: Vec<f32> = (0..total * d).map(|i| val(i + 11)).collect();
            let a = HeadArgs {
                q: &q,
                kb: &kb,
                vb: &vb,
                n,
                heads,
                h: 1,
                d,
                offset: total - n,
                total,
                scale: 0.125,
                window,
                softcap,
            };
            let want = head_attention(&a);
            let got = if a.n >= GEMM_MIN_QUERIES {
                head_gemm(&a).unwrap_or_else(|| head_attention(&a))
            } else {
                head_dispatch(&a)
            };
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "d={d} n={n} total={total}"
            );
        }
    }

    /// Prefill's head as two GEMMs: close to the per-query loop (another order of summation),
    /// and each query's bits independent of how many queries share the call.
    #[test]
    fn gemm_heads_match_the_loop_and_do_not_depend_on_neighbours() {
        let val = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5;
        for &(d, n, total, window) in &[
            (64usize, 20usize, 20usize, None),
            (64, 17, 40, Some(9)),
            (13, 33, 33, None),
        ] {
            let heads = 3;
            let q: Vec<f32> = (0..n * heads * d).map(val).collect();
            let kb: Vec<f32> = (0..total * d).map(|i| val(i + 5)).collect();
            let vb: Vec<f32> = (0..total * d).map(|i| val(i + 11)).collect();
            fn args<'a>(
                q: &'a [f32],
                kb: &'a [f32],
                vb: &'a [f32],
                n: usize,
                (heads, d, total, window): (usize, usize, usize, Option<usize>),
            ) -> HeadArgs<'a> {
                HeadArgs {
                    q,
                    kb,
                    vb,
                    n,
                    heads,
                    h: 2,
                    d,
                    offset: total - n,
                    total,
                    scale: 0.125,
                    window,
                    softcap: None,
                }
            }
            let shape = (heads, d, total, window);
            let Some(got) = head_gemm(&args(&q, &kb, &vb, n, shape)) else {
                return; // no SIMD GEMM here
            };
            let want = head_attention(&args(&q, &kb, &vb, n, shape));
            for (x, y) in got.iter().zip(&want) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "d={d} n={n}: {x} vs {y}"
                );
            }
            // the last 16 queries alone: the same bits for them
            let tail = 16;
            let qt = &q[(n - tail) * heads * d..];
            let alone = head_gemm(&args(qt, &kb, &vb, tail, shape)).unwrap();
            assert!(
                alone
                    .iter()
                    .zip(&got[(n - tail) * d..])
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "d={d} n={n}: a query's numbers depend on the others"
            );
        }
    }

    /// Attention through the cache, one token at a time, equals attention over the whole
    /// sequence at once (the KV-cache invariant), with grouped-query heads.
    #[test]
    fn incremental_equals_full() {
        let (heads, kvh, d, n) = (4, 2, 8, 7);
        let val = |i: usize| ((i * 37 % 101) as f32 / 101.0) - 0.5;
        let q: Vec<f32> = (0..n * heads * d).map(val).collect();
        let k: Vec<f32> = (0..n * kvh * d).map(|i| val(i + 3)).collect();
        let v: Vec<f32> = (0..n * kvh * d).map(|i| val(i + 7)).collect();
        let mut full = KvCache::new();
        full.layer(0, kvh, d).append(0, n, &k, &v);
        let want = full.layer(0, kvh, d).attend(&q, n, heads, n, 0.35, None);
        let mut inc = KvCache::new();
        for t in 0..n {
            let l = inc.layer(0, kvh, d);
            l.append(
                t,
                1,
                &k[t * kvh * d..(t + 1) * kvh * d],
                &v[t * kvh * d..(t + 1) * kvh * d],
            );
            let got = l.attend(
                &q[t * heads * d..(t + 1) * heads * d],
                1,
                heads,
                t + 1,
                0.35,
                None,
            );
            for (a, b) in got.iter().zip(&want[t * heads * d..(t + 1) * heads * d]) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        // the first query sees only itself: its output is its own value row
        assert!((want[0] - v[0]).abs() < 1e-6);
    }
}
