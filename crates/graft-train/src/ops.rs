//! Fused training ops with their own backward: candle's autograd would keep every
//! intermediate of these (five tensors per norm, seven per attention) for the backward pass
//! and walk them one by one; these keep only their inputs and recompute the rest.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// The f32 values of a contiguous CPU tensor's storage (custom ops get storage + layout).
pub(crate) fn slice_of<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(candle_core::Error::Msg(
            "graft-train: expected a contiguous tensor".into(),
        )),
    }
}

/// RMSNorm with a frozen weight, as transformers' `LlamaRMSNorm`:
/// `y = w ⊙ x / √(mean(x²) + eps)` over the last dimension of x (n, d).
pub struct RmsNorm {
    pub weight: Vec<f32>,
    pub eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "graft-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.weight.len();
        let x = slice_of(s, l)?;
        if d == 0 || x.len() % d != 0 {
            return Err(candle_core::Error::Msg("rms norm: shape mismatch".into()));
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(yr, xr)| {
                let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let r = 1.0 / (ms + self.eps).sqrt();
                for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(&self.weight) {
                    *o = w * (v * r);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = self.weight.len();
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let gs = g.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(d)
            .zip(xs.par_chunks(d).zip(gs.par_chunks(d)))
            .for_each(|(o, (xr, gr))| {
                let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let r = 1.0 / (ms + self.eps).sqrt();
                // dx = r·(w⊙g) − r³·x·mean(x⊙w⊙g)
                let dot: f32 = xr
                    .iter()
                    .zip(gr)
                    .zip(&self.weight)
                    .map(|((&a, &b), &w)| a * b * w)
                    .sum::<f32>()
                    / d as f32;
                let r3 = r * r * r;
                for j in 0..d {
                    o[j] = r * self.weight[j] * gr[j] - r3 * xr[j] * dot;
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.dims(), &Device::Cpu)?))
    }
}

/// Causal (optionally sliding-window) scaled dot-product attention with grouped key/value
/// heads, as transformers' eager attention computes it: q (b, nh, t, hd), k and v
/// (b, nkv, t, hd) → (b, nh, t, hd). The probabilities are recomputed in the backward pass
/// instead of kept. Query heads sharing a key/value head are stacked along the rows, so keys
/// and values are never repeated.
#[derive(Clone)]
pub struct CausalAttention {
    pub b: usize,
    pub nh: usize,
    pub nkv: usize,
    pub t: usize,
    pub hd: usize,
    pub scale: f64,
    pub window: Option<usize>,
    /// Scores become `cap · tanh(s / cap)` before the mask (Gemma 2).
    pub softcap: Option<f64>,
    /// (groups·t, t) additive mask: 0 or −∞.
    pub mask: Tensor,
}

impl CausalAttention {
    pub fn new(
        b: usize,
        nh: usize,
        nkv: usize,
        t: usize,
        hd: usize,
        scale: f64,
        sliding_window: Option<usize>,
    ) -> candle_core::Result<Self> {
        let groups = nh / nkv;
        let mut m = vec![0f32; groups * t * t];
        for g in 0..groups {
            for i in 0..t {
                for j in 0..t {
                    if j > i || sliding_window.is_some_and(|w| i >= j + w) {
                        m[(g * t + i) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(CausalAttention {
            b,
            nh,
            nkv,
            t,
            hd,
            scale,
            window: sliding_window,
            softcap: None,
            mask: Tensor::from_vec(m, (groups * t, t), &Device::Cpu)?,
        })
    }

    fn groups(&self) -> usize {
        self.nh / self.nkv
    }

    /// q as (b, nkv, groups·t, hd).
    fn q_rows(&self, q: &Tensor) -> candle_core::Result<Tensor> {
        q.reshape((self.b, self.nkv, self.groups() * self.t, self.hd))
    }

    /// The probabilities, and with soft-capping tanh(s / cap) (for the backward pass).
    fn probs(&self, q: &Tensor, k: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let s = (self.q_rows(q)?.matmul(&k.t()?.contiguous()?)? * self.scale)?;
        let (s, th) = match self.softcap {
            Some(c) => {
                let th = (s / c)?.tanh()?;
                ((&th * c)?, Some(th))
            }
            None => (s, None),
        };
        let s = s.broadcast_add(&self.mask)?;
        let m = s.max_keepdim(D::Minus1)?;
        let e = s.broadcast_sub(&m)?.exp()?;
        Ok((e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?, th))
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "graft-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dev = Device::Cpu;
        let q = Tensor::from_slice(slice_of(s1, l1)?, l1.shape(), &dev)?;
        let k = Tensor::from_slice(slice_of(s2, l2)?, l2.shape(), &dev)?;
        let v = Tensor::from_slice(slice_of(s3, l3)?, l3.shape(), &dev)?;
        let (p, _) = self.probs(&q, &k)?;
        let o = p.matmul(&v)?;
        let out = o.flatten_all()?.to_vec1::<f32>()?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((self.b, self.nh, self.t, self.hd)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let (p, th) = self.probs(&q, &k)?;
        let go = self.q_rows(&g.detach().contiguous()?)?;
        // dV = Pᵀ dO (sums the query heads of a group); dP = dO Vᵀ
        let dv = p.t()?.contiguous()?.matmul(&go)?;
        let dp = go.matmul(&v.t()?.contiguous()?)?;
        // dS = P ⊙ (dP − rowsum(dP ⊙ P))
        let row = (&dp * &p)?.sum_keepdim(D::Minus1)?;
        let ds = (p * dp.broadcast_sub(&row)?)?;
        // through the cap: d(c·tanh(s/c))/ds = 1 − tanh²
        let ds = match th {
            Some(th) => (ds * (1.0 - th.sqr()?)?)?,
            None => ds,
        };
        let dq = (ds.matmul(&k)? * self.scale)?.reshape((self.b, self.nh, self.t, self.hd))?;
        let dk = (ds.t()?.contiguous()?.matmul(&self.q_rows(&q)?)? * self.scale)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
