//! Adapter layers and their math, as PEFT 0.21 computes them (`tuners/{lora,ia3,adalora}/layer.py`).
//!
//! All tensors are f32 on the CPU; inputs are 2-D `(tokens, features)`.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// DoRA's per-output-row factor `m / ‖W + s·B·A‖₂`, computed once at load (PEFT detaches it).
#[derive(Debug, Clone)]
pub struct Dora {
    /// (out,) `lora_magnitude_vector`.
    pub magnitude: Tensor,
    /// (1, out) m / n.
    pub mag_norm_scale: Tensor,
}

/// LoRA on a Linear: `y += s · B(A x) (+ s · b_B)`, or its DoRA variant.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// (r, in)
    pub a: Tensor,
    /// (out, r)
    pub b: Tensor,
    /// (out,) with `lora_bias`.
    pub b_bias: Option<Tensor>,
    pub r: usize,
    pub alpha: f64,
    pub scale: f64,
    pub dora: Option<Dora>,
}

/// LoRA on an Embedding: `y += s · Aᵀ[ids] · Bᵀ`.
#[derive(Debug, Clone)]
pub struct LoraEmbedding {
    /// (r, num_embeddings)
    pub a: Tensor,
    /// (dim, r)
    pub b: Tensor,
    pub r: usize,
    pub alpha: f64,
    pub scale: f64,
}

/// IA3: scales the output (`(Wx + b) ⊙ l`) or, for feed-forward modules, the input (`W(x ⊙ l) + b`).
#[derive(Debug, Clone)]
pub struct Ia3 {
    /// (features,) flattened `ia3_l`.
    pub l: Tensor,
    pub feedforward: bool,
}

/// AdaLoRA (SVD form): `y += (x (A ⊙ E)ᵀ Bᵀ) · scaling / (ranknum + 1e-5)`.
#[derive(Debug, Clone)]
pub struct AdaLora {
    /// (r, in)
    pub a: Tensor,
    /// (r, 1)
    pub e: Tensor,
    /// (out, r)
    pub b: Tensor,
    pub r: usize,
    pub scaling: f64,
    pub ranknum: f64,
}

/// What one adapter puts on one module.
#[derive(Debug, Clone)]
pub enum ModuleAdapter {
    Lora(LoraLinear),
    LoraEmbedding(LoraEmbedding),
    Ia3(Ia3),
    AdaLora(AdaLora),
}

impl ModuleAdapter {
    /// A short name for reports.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ModuleAdapter::Lora(l) if l.dora.is_some() => "dora",
            ModuleAdapter::Lora(_) => "lora",
            ModuleAdapter::LoraEmbedding(_) => "lora-embedding",
            ModuleAdapter::Ia3(i) if i.feedforward => "ia3 (scales input)",
            ModuleAdapter::Ia3(_) => "ia3 (scales output)",
            ModuleAdapter::AdaLora(_) => "adalora",
        }
    }
}

impl Dora {
    /// `‖W + s·(B A)‖₂` per output row, on the base weight (out, in).
    pub fn new(
        weight: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        magnitude: Tensor,
    ) -> Result<Self> {
        let lora_w = (b.matmul(a)? * scale)?;
        let norm = (weight + lora_w)?.sqr()?.sum(D::Minus1)?.sqrt()?;
        let mag_norm_scale = magnitude.div(&norm)?.unsqueeze(0)?;
        Ok(Dora {
            magnitude,
            mag_norm_scale,
        })
    }
}

/// A base weight matrix (out, in) as adapters see it: dense here, quantized in other crates.
pub trait WeightMatrix: Sync {
    /// x (n, in) · Wᵀ → (n, out).
    fn matmul_t(&self, x: &Tensor) -> Result<Tensor>;
    /// Rows `ids` of the matrix → (n, in): an embedding lookup.
    fn rows(&self, ids: &Tensor) -> Result<Tensor>;
    /// The whole matrix in f32 (DoRA's weight norm at load).
    fn dense(&self) -> Result<Tensor>;
}

impl WeightMatrix for Tensor {
    fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.t()?)?)
    }

    fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.index_select(&ids.to_dtype(DType::U32)?, 0)?)
    }

    fn dense(&self) -> Result<Tensor> {
        Ok(self.clone())
    }
}

/// `x Wᵀ (+ b)` for x (n, in), W (out, in).
pub fn linear(x: &Tensor, weight: &dyn WeightMatrix, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = weight.matmul_t(x)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Runs a Linear module with the given active adapter layers, in order, as PEFT's layer
/// `forward` does: IA3 scales first (input or output), then each LoRA/AdaLoRA term is added
/// to the running result (DoRA uses the running result without the bias).
pub fn linear_forward(
    x: &Tensor,
    weight: &dyn WeightMatrix,
    bias: Option<&Tensor>,
    active: &[&ModuleAdapter],
) -> Result<Tensor> {
    if active.is_empty() {
        return linear(x, weight, bias);
    }
    let result = match adapter_input(x, active)? {
        Some(xs) => linear(&xs, weight, bias)?,
        None => linear(x, weight, bias)?,
    };
    linear_finish(x, result, bias, active)
}

/// The product of the input scales of the active IA3 layers on feed-forward modules (`None`:
/// there are none). Multiplied in load order, as PEFT does.
fn scales(active: &[&ModuleAdapter], feedforward: bool) -> Result<Option<Tensor>> {
    let mut scale: Option<Tensor> = None;
    for a in active {
        if let ModuleAdapter::Ia3(i) = a {
            if i.feedforward == feedforward {
                scale = Some(match scale.take() {
                    Some(s) => (s * &i.l)?,
                    None => i.l.clone(),
                });
            }
        }
    }
    Ok(scale)
}

/// What the base matmul of [`linear_forward`] multiplies: `x` scaled by the active IA3 layers
/// of a feed-forward module, or `None` when it is `x` itself. A batched caller that runs one
/// base matmul for the rows of several adapters scales each adapter's rows with this first.
pub fn adapter_input(x: &Tensor, active: &[&ModuleAdapter]) -> Result<Option<Tensor>> {
    Ok(match scales(active, true)? {
        Some(s) => Some(x.broadcast_mul(&s)?),
        None => None,
    })
}

/// The rest of [`linear_forward`] after the base matmul: `result` is `linear(adapter_input(x),
/// W, b)`; the output IA3 scales, then the LoRA/AdaLoRA/DoRA terms of `x`. The same operations
/// on the same values as [`linear_forward`], so a batched caller gets its numbers bit for bit.
pub fn linear_finish(
    x: &Tensor,
    mut result: Tensor,
    bias: Option<&Tensor>,
    active: &[&ModuleAdapter],
) -> Result<Tensor> {
    if active.is_empty() {
        return Ok(result);
    }
    if let Some(s) = scales(active, false)? {
        result = result.broadcast_mul(&s)?;
    }
    // Decode steps (a few tokens) with plain LoRA layers: compute all deltas in one pass over
    // f32 slices instead of ~5 tensor ops per adapter (the op overhead dominates at r = 8).
    let (n, in_features) = x.dims2()?;
    let plain = |a: &&ModuleAdapter| matches!(a, ModuleAdapter::Lora(l) if l.dora.is_none() && l.b_bias.is_none());
    if n <= 8
        && active.iter().any(plain)
        && active
            .iter()
            .all(|a| plain(a) || matches!(a, ModuleAdapter::Ia3(_)))
    {
        let out_features = result.dims2()?.1;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut delta = vec![0f32; n * out_features];
        for a in active {
            if let ModuleAdapter::Lora(l) = a {
                let done = with_slices(&l.a, &l.b, |av, bv| {
                    let r = l.r;
                    let mut t = vec![0f32; r];
                    for tok in 0..n {
                        let xt = &xs[tok * in_features..(tok + 1) * in_features];
                        for (j, tj) in t.iter_mut().enumerate() {
                            *tj = dot(&av[j * in_features..(j + 1) * in_features], xt)
                                * l.scale as f32;
                        }
                        let d = &mut delta[tok * out_features..(tok + 1) * out_features];
                        for (o, dv) in d.iter_mut().enumerate() {
                            *dv += dot(&bv[o * r..(o + 1) * r], &t);
                        }
                    }
                });
                if done.is_none() {
                    // not contiguous CPU f32 (never for adapters built here): the tensor path
                    let lora = (x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)? * l.scale)?;
                    result = (result + lora)?;
                }
            }
        }
        return Ok((result + Tensor::from_vec(delta, (n, out_features), x.device())?)?);
    }
    for a in active {
        match a {
            ModuleAdapter::Lora(l) => {
                let lora = x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
                let lora = match &l.b_bias {
                    Some(bb) => lora.broadcast_add(bb)?,
                    None => lora,
                };
                result = match &l.dora {
                    None => (result + (lora * l.scale)?)?,
                    Some(d) => {
                        let base = match bias {
                            Some(b) => result.broadcast_sub(b)?,
                            None => result.clone(),
                        };
                        let m = &d.mag_norm_scale;
                        let term = (base.broadcast_mul(&(m - 1.0)?)?
                            + (lora * l.scale)?.broadcast_mul(m)?)?;
                        (result + term)?
                    }
                };
            }
            ModuleAdapter::AdaLora(ad) => {
                let ae = ad.a.broadcast_mul(&ad.e)?;
                let term = x.matmul(&ae.t()?)?.matmul(&ad.b.t()?)?;
                result = (result + (term * (ad.scaling / (ad.ranknum + 1e-5)))?)?;
            }
            ModuleAdapter::Ia3(_) | ModuleAdapter::LoraEmbedding(_) => {}
        }
    }
    Ok(result)
}

/// The dot product of the decode-step LoRA path (8 lanes, then the tail): backends that split
/// that path across threads use it too, so their numbers are this path's, bit for bit.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Runs `f` on the f32 data of two contiguous CPU tensors without copying them.
/// `f` over the f32 data of two contiguous CPU tensors; `None` for any other tensor.
pub fn with_slices<R>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[f32], &[f32]) -> R) -> Option<R> {
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (candle_core::Storage::Cpu(ca), candle_core::Storage::Cpu(cb)) = (&*sa, &*sb) else {
        return None;
    };
    let (a0, a1) = la.contiguous_offsets()?;
    let (b0, b1) = lb.contiguous_offsets()?;
    let av = ca.as_slice::<f32>().ok()?;
    let bv = cb.as_slice::<f32>().ok()?;
    Some(f(&av[a0..a1], &bv[b0..b1]))
}

/// Runs an Embedding with the given active LoRA embedding layers: `E[ids] + Σ s·Aᵀ[ids]·Bᵀ`.
pub fn embedding_forward(
    ids: &Tensor,
    table: &dyn WeightMatrix,
    active: &[&ModuleAdapter],
) -> Result<Tensor> {
    let ids = ids.to_dtype(DType::U32)?;
    let mut result = table.rows(&ids)?;
    for a in active {
        if let ModuleAdapter::LoraEmbedding(e) = a {
            let after_a = e.a.t()?.contiguous()?.index_select(&ids, 0)?; // (n, r)
            result = (result + (after_a.matmul(&e.b.t()?)? * e.scale)?)?;
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn lora_adds_scaled_delta_and_two_adapters_sum() {
        let x = t(&[1.0, 2.0], (1, 2));
        let w = t(&[1.0, 0.0, 0.0, 1.0], (2, 2));
        let l = ModuleAdapter::Lora(LoraLinear {
            a: t(&[1.0, 1.0], (1, 2)),
            b: t(&[1.0, -1.0], (2, 1)),
            b_bias: None,
            r: 1,
            alpha: 2.0,
            scale: 2.0,
            dora: None,
        });
        let y = linear_forward(&x, &w, None, &[&l])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(y, vec![vec![1.0 + 6.0, 2.0 - 6.0]]);
        let y2 = linear_forward(&x, &w, None, &[&l, &l])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(y2, vec![vec![1.0 + 12.0, 2.0 - 12.0]]);
    }

    #[test]
    fn dora_with_unit_magnitude_over_norm_is_plain_lora() {
        let w = t(&[3.0, 4.0, 0.0, 2.0], (2, 2));
        let a = t(&[0.0, 0.0], (1, 2));
        let b = t(&[0.0, 0.0], (2, 1));
        // with a zero LoRA, n = row norms of W = [5, 2]; m = n gives the identity
        let m = Tensor::new(&[5.0f32, 2.0], &Device::Cpu).unwrap();
        let d = Dora::new(&w, &a, &b, 1.0, m).unwrap();
        let l = ModuleAdapter::Lora(LoraLinear {
            a,
            b,
            b_bias: None,
            r: 1,
            alpha: 1.0,
            scale: 1.0,
            dora: Some(d),
        });
        let x = t(&[1.0, 1.0], (1, 2));
        let y = linear_forward(&x, &w, None, &[&l])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(y, vec![vec![7.0, 2.0]]);
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use candle_core::Device;

    /// The few-token LoRA path (plain f32 loops) equals the tensor path used for longer inputs.
    #[test]
    fn few_token_lora_path_equals_tensor_path() {
        let (inp, out, r) = (24, 20, 3);
        let v = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i + seed) * 37 % 101) as f32 / 101.0) - 0.5)
                .collect()
        };
        let w = Tensor::from_vec(v(out * inp, 1), (out, inp), &Device::Cpu).unwrap();
        let mk = |seed| {
            ModuleAdapter::Lora(LoraLinear {
                a: Tensor::from_vec(v(r * inp, seed), (r, inp), &Device::Cpu).unwrap(),
                b: Tensor::from_vec(v(out * r, seed + 5), (out, r), &Device::Cpu).unwrap(),
                b_bias: None,
                r,
                alpha: 6.0,
                scale: 2.0,
                dora: None,
            })
        };
        let (l1, l2) = (mk(3), mk(9));
        let x = Tensor::from_vec(v(12 * inp, 4), (12, inp), &Device::Cpu).unwrap();
        let slow = linear_forward(&x, &w, None, &[&l1, &l2]).unwrap(); // 12 rows: tensor path
        let fast = linear_forward(&x.narrow(0, 0, 3).unwrap(), &w, None, &[&l1, &l2]).unwrap();
        let (a, b) = (
            fast.to_vec2::<f32>().unwrap(),
            slow.narrow(0, 0, 3).unwrap().to_vec2::<f32>().unwrap(),
        );
        for (ra, rb) in a.iter().zip(&b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
    }
}
