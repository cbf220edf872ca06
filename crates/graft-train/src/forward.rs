//! The differentiable forward pass of any described network with a trainable adapter, as
//! transformers + PEFT compute it in training mode, and its loss. It reads the same
//! [`Network`] description the CPU and GPU backends run.
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
use graft_arch::network::{
    Activation, Attention, Mlp, Network, Norm, NormKind, Qkv, Residual, RopeTable,
};
use graft_arch::table::{for_each_tile, ModuleTable, Weight};
use graft_models::Model;
use graft_quant::QMatrix;
use rand::rngs::StdRng;
use rand::RngExt;
use rayon::prelude::*;

use crate::data::IGNORE_INDEX;
use crate::error::{Error, Result};
use crate::ops::{slice_of, CausalAttention, RmsNorm};
use crate::params::{TLayer, Trainable};

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
    for_each_tile(q, |r, w| {
        let part = g.narrow(1, r, w.dim(0)?)?.contiguous()?.matmul(&w)?;
        acc = Some(match acc.take() {
            Some(a) => (a + part)?,
            None => part,
        });
        Ok(())
    })?;
    acc.ok_or_else(|| candle_core::Error::Msg("empty weight".into()))
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "graft-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = l.shape().dims2()?;
        let x = Tensor::from_slice(slice_of(s, l)?, (n, k), &Device::Cpu)?;
        let y = graft_adapters::adapter::WeightMatrix::matmul_t(&self.w, &x)
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
    net: &'a Network,
    pub adapter: &'a Trainable,
    vocab: usize,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
    })
}

/// RoPE tables as transformers builds them: cos/sin of cat(freqs, freqs) times the
/// attention scaling, (t, head_dim).
fn rope_tables(t: usize, r: &RopeTable) -> Result<(Tensor, Tensor)> {
    let head_dim = r.head_dim;
    // a training forward covers positions 0..t (transformers picks LongRoPE's set by that)
    let inv_freq = r.inv_freq_for(t);
    let s = r.attention_scaling;
    let mut cos = Vec::with_capacity(t * head_dim);
    let mut sin = Vec::with_capacity(t * head_dim);
    for p in 0..t {
        for j in 0..head_dim {
            let f = inv_freq[j % (head_dim / 2)] * p as f32;
            if s == 1.0 {
                cos.push(f.cos());
                sin.push(f.sin());
            } else {
                cos.push(f.cos() * s);
                sin.push(f.sin() * s);
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, head_dim), &Device::Cpu)?,
        Tensor::from_vec(sin, (t, head_dim), &Device::Cpu)?,
    ))
}

/// What one batch's forward pass shares between its layers: RoPE tables and attention masks.
struct Shared {
    b: usize,
    t: usize,
    ropes: Vec<(Tensor, Tensor)>,
    attention: Vec<CausalAttention>,
}

impl Shared {
    /// The attention op for `a`'s shape, built once per batch and shape.
    fn attention(&mut self, a: &Attention) -> Result<CausalAttention> {
        let same = |c: &CausalAttention| {
            c.nh == a.heads
                && c.nkv == a.kv_heads
                && c.hd == a.head_dim
                && c.window == a.window
                && c.scale == f64::from(a.scale)
                && c.softcap == a.softcap.map(f64::from)
        };
        if let Some(c) = self.attention.iter().find(|c| same(c)) {
            return Ok(c.clone());
        }
        let mut c = CausalAttention::new(
            self.b,
            a.heads,
            a.kv_heads,
            self.t,
            a.head_dim,
            f64::from(a.scale),
            a.window,
        )?;
        c.softcap = a.softcap.map(f64::from);
        self.attention.push(c.clone());
        Ok(c)
    }
}

impl<'a> TrainModel<'a> {
    pub fn new(model: &'a Model, adapter: &'a Trainable) -> Result<Self> {
        let net = model.network();
        // Training mode would drop activations where transformers' config says so; graft's
        // trainer does not implement that dropout, so it refuses rather than train otherwise.
        for (key, p) in &net.dropout {
            if *p != 0.0 {
                return Err(Error::Unsupported(format!(
                    "the model's config has `{key}` = {p}: transformers applies that dropout in training mode and graft's trainer does not implement it (set it to 0 in config.json to train without it)"
                )));
            }
        }
        Ok(TrainModel {
            table: model.table(),
            net,
            adapter,
            vocab: model.vocab_size,
        })
    }

    fn dense(&self, id: usize) -> Result<Tensor> {
        Ok(graft_adapters::adapter::WeightMatrix::dense(
            &self.table.params[id].weight,
        )?)
    }

    fn norm(&self, n: Norm, x: &Tensor) -> Result<Tensor> {
        let saved = self.adapter.saved.get(&n.id);
        // Gemma multiplies by 1 + w
        let offset =
            |w: Tensor| -> Result<Tensor> { Ok(if n.unit_offset { (w + 1.0)? } else { w }) };
        match n.kind {
            NormKind::Rms => match saved {
                // A trained norm weight needs its own gradient: candle's ops give it.
                Some(s) => rms_norm(x, &offset(s.weight.as_tensor().clone())?, n.eps),
                None => Ok(x.apply_op1(RmsNorm {
                    weight: offset(self.dense(n.id)?)?.to_vec1::<f32>()?,
                    eps: n.eps as f32,
                })?),
            },
            NormKind::Layer => match saved {
                Some(s) => layer_norm(
                    x,
                    s.weight.as_tensor(),
                    s.bias.as_ref().map(|b| b.as_tensor()),
                    n.eps,
                ),
                None => layer_norm(
                    x,
                    &self.dense(n.id)?,
                    self.table.params[n.id].bias.as_ref(),
                    n.eps,
                ),
            },
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

    /// Rows `ids` of embedding module `id` (its trained copy when it is a modules_to_save).
    fn embedding(&self, id: usize, ids: &Tensor) -> Result<Tensor> {
        Ok(match self.adapter.saved.get(&id) {
            Some(s) => s.weight.as_tensor().index_select(ids, 0)?,
            None => {
                graft_adapters::adapter::WeightMatrix::rows(&self.table.params[id].weight, ids)?
            }
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

    /// Causal self-attention on h (b·t, hidden).
    fn attention(
        &self,
        a: &Attention,
        h: &Tensor,
        sh: &mut Shared,
        mut rng: Option<&mut StdRng>,
    ) -> Result<Tensor> {
        let (b, t) = (sh.b, sh.t);
        let (nh, nkv, hd) = (a.heads, a.kv_heads, a.head_dim);
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let rope = |y: Tensor| -> Result<Tensor> {
            match a.rope.and_then(|r| sh.ropes.get(r)) {
                Some((cos, sin)) => {
                    Ok((y.broadcast_mul(cos)? + rotate_half(&y)?.broadcast_mul(sin)?)?)
                }
                None => Ok(y),
            }
        };
        let (q, k, v) = match a.qkv {
            Qkv::Separate { q, k, v } => (
                self.linear(q, h, rng.as_deref_mut())?,
                self.linear(k, h, rng.as_deref_mut())?,
                self.linear(v, h, rng.as_deref_mut())?,
            ),
            Qkv::Fused(m) => {
                let y = self.linear(m, h, rng.as_deref_mut())?;
                (
                    y.narrow(1, 0, nh * hd)?,
                    y.narrow(1, nh * hd, nkv * hd)?,
                    y.narrow(1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        let (q, k) = (heads(q, nh)?, heads(k, nkv)?);
        // per-head norms before the rotation (Qwen3, Gemma 3)
        let (q, k) = match a.qk_norm {
            Some((qn, kn)) => (self.norm(qn, &q)?, self.norm(kn, &k)?),
            None => (q, k),
        };
        let (q, k, v) = (rope(q)?, rope(k)?, heads(v, nkv)?);
        let op = sh.attention(a)?;
        let o = q.contiguous()?.apply_op3(&k.contiguous()?, &v, op)?;
        let o = o.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * hd))?;
        self.linear(a.o, &o, rng)
    }

    /// Hidden states after the final norm, (b·t, hidden). `rng` enables dropout (training
    /// mode); `None` is evaluation mode.
    pub fn hidden(&self, batch: &Batch, mut rng: Option<&mut StdRng>) -> Result<Tensor> {
        let net = self.net;
        let (b, t) = (batch.b, batch.t);
        if t > net.max_positions {
            return Err(Error::Config(format!(
                "a sequence of {t} tokens is longer than the model's context ({})",
                net.max_positions
            )));
        }
        if let Some(&id) = batch.ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(Error::Config(format!(
                "token id {id} is outside the vocabulary ({})",
                self.vocab
            )));
        }
        let ids = Tensor::from_vec(batch.ids.clone(), b * t, &Device::Cpu)?;
        let mut x = self.embedding(net.embed, &ids)?;
        if let Some(s) = net.embed_scale {
            x = (x * f64::from(s))?;
        }
        if let Some(pi) = net.project_in {
            x = self.linear(pi, &x, rng.as_deref_mut())?;
        }
        if let Some(pos) = net.positions {
            let rows: Vec<u32> = (0..b)
                .flat_map(|_| (0..t).map(|p| (p + pos.offset) as u32))
                .collect();
            let rows = Tensor::from_vec(rows, b * t, &Device::Cpu)?;
            x = (x + self.embedding(pos.module, &rows)?)?;
        }
        let mut sh = Shared {
            b,
            t,
            ropes: net
                .ropes
                .iter()
                .map(|r| rope_tables(t, r))
                .collect::<Result<_>>()?,
            attention: Vec::new(),
        };
        for blk in &net.blocks {
            let pre = blk.residual == Residual::PreNorm;
            let h = if pre {
                self.norm(blk.attn_norm, &x)?
            } else {
                x.clone()
            };
            let mut a = self.attention(&blk.attn, &h, &mut sh, rng.as_deref_mut())?;
            if let Some(on) = blk.attn_out_norm {
                a = self.norm(on, &a)?;
            }
            x = (x + a)?;
            if !pre {
                x = self.norm(blk.attn_norm, &x)?;
            }
            let h = if pre {
                self.norm(blk.mlp_norm, &x)?
            } else {
                x.clone()
            };
            let m = match blk.mlp {
                Mlp::Gated {
                    gate,
                    up,
                    down,
                    act,
                } => {
                    let g = activate(act, &self.linear(gate, &h, rng.as_deref_mut())?)?;
                    let u = self.linear(up, &h, rng.as_deref_mut())?;
                    self.linear(down, &(g * u)?, rng.as_deref_mut())?
                }
                Mlp::GatedFused {
                    gate_up,
                    down,
                    ffn,
                    act,
                } => {
                    let gu = self.linear(gate_up, &h, rng.as_deref_mut())?;
                    let g = activate(act, &gu.narrow(1, 0, ffn)?)?;
                    self.linear(down, &(g * gu.narrow(1, ffn, ffn)?)?, rng.as_deref_mut())?
                }
                Mlp::Plain { fc1, fc2, act } => {
                    let f = activate(act, &self.linear(fc1, &h, rng.as_deref_mut())?)?;
                    self.linear(fc2, &f, rng.as_deref_mut())?
                }
            };
            let m = match blk.mlp_out_norm {
                Some(on) => self.norm(on, &m)?,
                None => m,
            };
            x = (x + m)?;
            if !pre {
                x = self.norm(blk.mlp_norm, &x)?;
            }
        }
        match net.final_norm {
            Some(f) => self.norm(f, &x),
            None => Ok(x),
        }
    }

    /// Logits of hidden states (the output head, adapted as in PEFT; `project_out` first;
    /// soft-capped where the model says so).
    fn head(&self, h: &Tensor) -> Result<Tensor> {
        let y = self.head_raw(h)?;
        Ok(match self.net.logit_softcap {
            Some(c) => ((y / f64::from(c))?.tanh()? * f64::from(c))?,
            None => y,
        })
    }

    fn head_raw(&self, h: &Tensor) -> Result<Tensor> {
        let net = self.net;
        let h = match net.project_out {
            Some(po) => self.linear(po, h, None)?,
            None => h.clone(),
        };
        let head = net.head.module;
        if self.adapter.saved.contains_key(&head) || self.adapter.layers.contains_key(&head) {
            return self.linear(head, &h, None);
        }
        if let Some(e) = net.head.tied_to {
            if let Some(s) = self.adapter.saved.get(&e) {
                return Ok(h.matmul(&s.weight.as_tensor().t()?)?);
            }
        }
        self.base(head, &h)
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
