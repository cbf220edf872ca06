//! The differentiable forward pass of a Llama-family model with a trainable adapter, as
//! transformers' `LlamaForCausalLM` + PEFT compute it in training mode, and its loss.
//!
//! Autograd is candle's (`Var`, `backward`), with graft's own backward where candle's would
//! waste work or memory:
//! - [`FrozenLinear`]: the frozen base matmul. candle's matmul backward also computes the
//!   weight's gradient (as big as the forward), which a frozen base never needs; ours returns
//!   only `∂x = ∂y · W`, and for quantized bases dequantizes a tile of rows at a time, so no f32
//!   copy of the base ever exists (QLoRA).
//! - [`CrossEntropy`]: the loss over the vocabulary, fused (log-softmax, gather, mean and its
//!   gradient `softmax − onehot` in one pass per row), computed only for positions that have a
//!   label.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};
use graft_models::base::{ModuleTable, Norm, Weight};
use graft_models::llama::Llama;
use graft_models::model::Arch;
use graft_models::Model;
use graft_quant::QMatrix;
use rand::rngs::StdRng;
use rand::RngExt;
use rayon::prelude::*;

use crate::data::IGNORE_INDEX;
use crate::error::{Error, Result};
use crate::ops::{slice_of, CausalAttention, RmsNorm};
use crate::params::{TLayer, Trainable};

/// Rows of a quantized weight dequantized at once in the backward pass.
const TILE_ROWS: usize = 256;

/// `y = x Wᵀ` against a frozen base weight (dense or quantized), with a backward pass for `x`
/// only.
#[derive(Clone)]
pub struct FrozenLinear {
    pub w: Weight,
}

impl FrozenLinear {
    fn out_features(&self) -> usize {
        self.w.dims()[0]
    }
}

fn quant_grad(q: &QMatrix, g: &Tensor) -> candle_core::Result<Tensor> {
    // ∂x = Σ_tiles ∂y[:, tile] · W[tile, :]
    let mut acc: Option<Tensor> = None;
    let mut r = 0;
    while r < q.rows {
        let rows = TILE_ROWS.min(q.rows - r);
        let mut w = vec![0f32; rows * q.cols];
        for k in 0..rows {
            q.dequantize_row(r + k, &mut w[k * q.cols..(k + 1) * q.cols]);
        }
        let w = Tensor::from_vec(w, (rows, q.cols), &Device::Cpu)?;
        let part = g.narrow(1, r, rows)?.contiguous()?.matmul(&w)?;
        acc = Some(match acc {
            Some(a) => (a + part)?,
            None => part,
        });
        r += rows;
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty weight".into()))
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "graft-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = l.shape().dims2()?;
        let x = Tensor::from_slice(slice_of(s, l)?, (n, k), &Device::Cpu)?;
        let y = graft_core::adapter::WeightMatrix::matmul_t(&self.w, &x)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let out = self.out_features();
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(v), Shape::from((n, out))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(match &self.w {
            Weight::Dense(w) => g.matmul(w)?,
            Weight::Quant(q) => quant_grad(q, &g)?,
        }))
    }
}

/// Mean cross-entropy over the rows of `logits` (m, vocab) against `targets` (one per row),
/// divided by `denominator` (the label count of the whole accumulated batch, as transformers'
/// Trainer divides by `num_items_in_batch`).
pub struct CrossEntropy {
    pub targets: Arc<Vec<u32>>,
    pub denominator: f32,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "graft-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, v) = l.shape().dims2()?;
        let x = slice_of(s, l)?;
        if self.targets.len() != m {
            return Err(candle_core::Error::Msg(
                "targets do not match the rows".into(),
            ));
        }
        let total: f64 = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let s: f64 = row.iter().map(|&z| ((z - mx) as f64).exp()).sum();
                (mx as f64 + s.ln()) - row[t as usize] as f64
            })
            .sum();
        let loss = (total / self.denominator as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (m, v) = x.dims2()?;
        let g = g.to_vec0::<f32>()? / self.denominator;
        let mut grad = x.flatten_all()?.to_vec1::<f32>()?;
        grad.par_chunks_mut(v)
            .zip(self.targets.par_iter())
            .for_each(|(row, &t)| {
                let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut s = 0f32;
                for z in row.iter_mut() {
                    *z = (*z - mx).exp();
                    s += *z;
                }
                let k = g / s;
                for z in row.iter_mut() {
                    *z *= k;
                }
                row[t as usize] -= g;
            });
        Ok(Some(Tensor::from_vec(grad, (m, v), &Device::Cpu)?))
    }
}

/// One batch: `b` rows of `t` tokens (right-padded), labels aligned with the ids (-100: no
/// loss), as transformers takes them; the model shifts them itself.
pub struct Batch {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub b: usize,
    pub t: usize,
}

impl Batch {
    /// Rows padded on the right with `pad` (labels -100 there).
    pub fn from_rows(rows: &[(&[u32], &[i64])], pad: u32) -> Result<Self> {
        let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        if rows.is_empty() || t == 0 {
            return Err(Error::Config("an empty batch".into()));
        }
        let b = rows.len();
        let mut ids = vec![pad; b * t];
        let mut labels = vec![IGNORE_INDEX; b * t];
        for (i, (r, lb)) in rows.iter().enumerate() {
            if r.len() != lb.len() {
                return Err(Error::Config("ids and labels differ in length".into()));
            }
            ids[i * t..i * t + r.len()].copy_from_slice(r);
            labels[i * t..i * t + lb.len()].copy_from_slice(lb);
        }
        Ok(Batch { ids, labels, b, t })
    }

    /// `(row index into the flattened (b·t) positions, target id)` for every position whose
    /// next token has a label.
    pub fn targets(&self) -> (Vec<u32>, Vec<u32>) {
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for bi in 0..self.b {
            for i in 0..self.t.saturating_sub(1) {
                let l = self.labels[bi * self.t + i + 1];
                if l != IGNORE_INDEX && l >= 0 {
                    rows.push((bi * self.t + i) as u32);
                    targets.push(l as u32);
                }
            }
        }
        (rows, targets)
    }

    /// Tokens that carry a loss.
    pub fn label_count(&self) -> usize {
        self.targets().0.len()
    }
}

/// The training view of a model: its frozen base and the trainable adapter.
pub struct TrainModel<'a> {
    table: &'a ModuleTable,
    llama: &'a Llama,
    pub adapter: &'a Trainable,
    vocab: usize,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

impl<'a> TrainModel<'a> {
    pub fn new(model: &'a Model, adapter: &'a Trainable) -> Result<Self> {
        let llama = match model.arch() {
            Arch::Llama(l) => l,
            Arch::Opt(_) => {
                return Err(Error::Unsupported(
                    "training is implemented for Llama-family models (Llama, SmolLM2, Mistral…); this base is OPT".into(),
                ))
            }
        };
        Ok(TrainModel {
            table: model.table(),
            llama,
            adapter,
            vocab: model.vocab_size,
        })
    }

    fn dense(&self, id: usize) -> Result<Tensor> {
        Ok(self.table.params[id].weight.tensor()?)
    }

    fn norm(&self, n: Norm, x: &Tensor) -> Result<Tensor> {
        match self.adapter.saved.get(&n.id) {
            // A trained norm weight needs its own gradient: candle's ops give it.
            Some(s) => rms_norm(x, s.weight.as_tensor(), n.eps),
            None => Ok(x.apply_op1(RmsNorm {
                weight: self.dense(n.id)?.to_vec1::<f32>()?,
                eps: n.eps as f32,
            })?),
        }
    }

    fn base(&self, id: usize, x: &Tensor) -> Result<Tensor> {
        let p = &self.table.params[id];
        let y = x.apply_op1(FrozenLinear {
            w: p.weight.clone(),
        })?;
        Ok(match &p.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Linear module `id` on x (n, in), with the adapter as PEFT applies it in training.
    fn linear(&self, id: usize, x: &Tensor, rng: Option<&mut StdRng>) -> Result<Tensor> {
        if let Some(s) = self.adapter.saved.get(&id) {
            let y = x.matmul(&s.weight.as_tensor().t()?)?;
            return Ok(match &s.bias {
                Some(b) => y.broadcast_add(b.as_tensor())?,
                None => y,
            });
        }
        match self.adapter.layers.get(&id) {
            None => self.base(id, x),
            Some(TLayer::Ia3 { l, feedforward }) => {
                if *feedforward {
                    self.base(id, &x.broadcast_mul(l.as_tensor())?)
                } else {
                    Ok(self.base(id, x)?.broadcast_mul(l.as_tensor())?)
                }
            }
            Some(TLayer::Lora {
                a,
                b,
                scale,
                dropout,
            }) => {
                let y = self.base(id, x)?;
                let xd = match rng {
                    Some(rng) if *dropout > 0.0 => {
                        let keep = 1.0 - *dropout;
                        let mask: Vec<f32> = (0..x.elem_count())
                            .map(|_| {
                                if rng.random::<f32>() < *dropout {
                                    0.0
                                } else {
                                    1.0 / keep
                                }
                            })
                            .collect();
                        (x * Tensor::from_vec(mask, x.dims(), &Device::Cpu)?)?
                    }
                    _ => x.clone(),
                };
                let d = xd
                    .matmul(&a.as_tensor().t()?)?
                    .matmul(&b.as_tensor().t()?)?;
                Ok((y + (d * *scale)?)?)
            }
        }
    }

    /// Hidden states after the final norm, (b·t, hidden). `rng` enables dropout (training
    /// mode); `None` is evaluation mode.
    pub fn hidden(&self, batch: &Batch, mut rng: Option<&mut StdRng>) -> Result<Tensor> {
        let c = &self.llama.cfg;
        let (b, t) = (batch.b, batch.t);
        if t > c.max_position_embeddings {
            return Err(Error::Config(format!(
                "a sequence of {t} tokens is longer than the model's context ({})",
                c.max_position_embeddings
            )));
        }
        if let Some(&id) = batch.ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(Error::Config(format!(
                "token id {id} is outside the vocabulary ({})",
                self.vocab
            )));
        }
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let ids = Tensor::from_vec(batch.ids.clone(), b * t, &Device::Cpu)?;
        let mut x = match self.adapter.saved.get(&self.llama.embed) {
            Some(s) => s.weight.as_tensor().index_select(&ids, 0)?,
            None => graft_core::adapter::WeightMatrix::rows(
                &self.table.params[self.llama.embed].weight,
                &ids,
            )?,
        };
        // RoPE tables as transformers builds them: cos/sin of cat(freqs, freqs).
        let mut cos = Vec::with_capacity(t * hd);
        let mut sin = Vec::with_capacity(t * hd);
        for p in 0..t {
            for j in 0..hd {
                let f = self.llama.inv_freq[j % (hd / 2)] * p as f32;
                cos.push(f.cos());
                sin.push(f.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (t, hd), &Device::Cpu)?;
        let sin = Tensor::from_vec(sin, (t, hd), &Device::Cpu)?;
        let attention = CausalAttention::new(b, nh, nkv, t, hd, c.sliding_window)?;
        for l in &self.llama.layers {
            let h = self.norm(l.input_norm, &x)?;
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let rope = |y: &Tensor| -> Result<Tensor> {
                Ok((y.broadcast_mul(&cos)? + rotate_half(y)?.broadcast_mul(&sin)?)?)
            };
            let q = rope(&heads(self.linear(l.q, &h, rng.as_deref_mut())?, nh)?)?;
            let k = rope(&heads(self.linear(l.k, &h, rng.as_deref_mut())?, nkv)?)?;
            let v = heads(self.linear(l.v, &h, rng.as_deref_mut())?, nkv)?;
            let o = q.contiguous()?.apply_op3(
                &k.contiguous()?,
                &v,
                CausalAttention {
                    mask: attention.mask.clone(),
                    ..attention
                },
            )?;
            let a = o.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * hd))?;
            x = (x + self.linear(l.o, &a, rng.as_deref_mut())?)?;
            let h = self.norm(l.post_norm, &x)?;
            let g = self.linear(l.gate, &h, rng.as_deref_mut())?.silu()?;
            let u = self.linear(l.up, &h, rng.as_deref_mut())?;
            x = (x + self.linear(l.down, &(g * u)?, rng.as_deref_mut())?)?;
        }
        self.norm(self.llama.norm, &x)
    }

    /// Logits of the rows `rows` of the hidden states (the output head, adapted as in PEFT).
    fn head(&self, h: &Tensor) -> Result<Tensor> {
        let head = self.llama.head;
        if self.adapter.saved.contains_key(&head) || self.adapter.layers.contains_key(&head) {
            return self.linear(head, h, None);
        }
        if self.llama.tied {
            if let Some(s) = self.adapter.saved.get(&self.llama.embed) {
                return Ok(h.matmul(&s.weight.as_tensor().t()?)?);
            }
        }
        self.base(head, h)
    }

    /// Full logits (b·t, vocab), evaluation mode: for tests and checks.
    pub fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let h = self.hidden(batch, None)?;
        self.head(&h)
    }

    /// The summed-then-divided cross-entropy of the batch (transformers' shifted causal-LM
    /// loss), `denominator` being the label count it is averaged over (the batch's own, or the
    /// whole accumulated batch's).
    pub fn loss(
        &self,
        batch: &Batch,
        denominator: usize,
        rng: Option<&mut StdRng>,
    ) -> Result<Tensor> {
        let (rows, targets) = batch.targets();
        if rows.is_empty() {
            return Err(Error::Config("a batch without any label".into()));
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::Config(format!(
                "label {t} is outside the vocabulary ({})",
                self.vocab
            )));
        }
        let h = self.hidden(batch, rng)?;
        // Only positions with a label go through the head: the (tokens × vocab) logits are
        // the largest tensor of the step.
        let n = rows.len();
        let idx = Tensor::from_vec(rows, n, &Device::Cpu)?;
        let h = h.index_select(&idx, 0)?;
        let logits = self.head(&h)?.to_dtype(DType::F32)?.contiguous()?;
        Ok(logits.apply_op1(CrossEntropy {
            targets: Arc::new(targets),
            denominator: denominator.max(1) as f32,
        })?)
    }
}
