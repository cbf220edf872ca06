//! A forward pass of any [`Network`] on the CPU: 2-D `(tokens, features)` tensors, the base
//! modules run through the adapters (PEFT's math, unmerged), attention and RoPE in plain Rust
//! over the KV cache.
//!
//! One pass runs one sequence ([`forward`]: the registry's active adapters, as `graft
//! generate` and the fixtures run) or several ([`forward_batch`]: a server's step, each
//! sequence with its own cache, positions and adapter). The rows of all sequences go through
//! every row-wise operation together; attention runs per sequence. In a Linear layer the
//! decode steps of every sequence share one pass over the quantized weights, each sequence's
//! rows are scaled and adapted by its own adapter (a gather, BGMV-style), and every sequence
//! gets the numbers it gets alone, bit for bit (tested): a server's answers are `graft
//! generate`'s.

use candle_core::{Device, Tensor, D};
use graft_adapters::adapter::ModuleAdapter;
use graft_adapters::adapter::{adapter_input, linear_finish, WeightMatrix};
use graft_adapters::{Adapter, AdapterRegistry};
use graft_arch::network::{Activation, Attention, Mlp, Network, Norm, NormKind, Qkv, Residual};
use graft_arch::table::{ModuleTable, Weight};
use rayon::prelude::*;

use crate::attention::{rope_in_place_scaled, KvCache};
use crate::error::{Error, Result};

/// Running the base modules through the registry (one sequence).
pub struct Ctx<'a> {
    pub table: &'a ModuleTable,
    pub reg: &'a AdapterRegistry,
}

/// Where parameter replacements come from (`modules_to_save` copies and base parameters an
/// adapter overwrote). Shared by every row of a pass: a pass never mixes two sets of weights.
#[derive(Clone, Copy)]
enum Params<'a> {
    Registry(&'a AdapterRegistry),
    One(Option<&'a Adapter>),
}

impl<'a> Params<'a> {
    fn param(&self, i: usize, bias: bool) -> Option<&'a Tensor> {
        match *self {
            Params::Registry(r) => r.param(i, bias),
            Params::One(Some(a)) => match a.saved_modules.get(&i) {
                Some(p) => field(p, bias),
                None => self.base_param(i, bias),
            },
            Params::One(None) => None,
        }
    }

    fn base_param(&self, i: usize, bias: bool) -> Option<&'a Tensor> {
        match *self {
            Params::Registry(r) => r.base_param(i, bias),
            Params::One(Some(a)) => a.base_params.get(&i).and_then(|p| field(p, bias)),
            Params::One(None) => None,
        }
    }
}

fn field(p: &graft_adapters::inject::ModuleParams, bias: bool) -> Option<&Tensor> {
    if bias {
        p.bias.as_ref()
    } else {
        p.weight.as_ref()
    }
}

/// Where one sequence's adapter layers come from.
#[derive(Clone, Copy)]
enum Layers<'a> {
    Registry(&'a AdapterRegistry),
    One(Option<&'a Adapter>),
}

impl<'a> Layers<'a> {
    fn get(&self, i: usize) -> Vec<&'a ModuleAdapter> {
        match *self {
            Layers::Registry(r) => r.active_layers(i),
            Layers::One(Some(a)) => a.layers.get(&i).into_iter().collect(),
            Layers::One(None) => Vec::new(),
        }
    }
}

/// One sequence's rows in a pass.
#[derive(Clone, Copy)]
struct Seg<'a> {
    start: usize,
    len: usize,
    layers: Layers<'a>,
}

/// A weight as a pass sees it: the table's (perhaps quantized) or an adapter's f32 copy.
#[derive(Clone, Copy)]
enum WRef<'a> {
    Table(&'a Weight),
    Tensor(&'a Tensor),
}

impl WRef<'_> {
    fn matrix(&self) -> &dyn WeightMatrix {
        match *self {
            WRef::Table(w) => w,
            WRef::Tensor(t) => t,
        }
    }
}

/// One forward pass: the base model, the parameter replacements, the sequences' rows.
struct Pass<'a> {
    table: &'a ModuleTable,
    params: Params<'a>,
    segs: Vec<Seg<'a>>,
}

/// Whether an adapter replaces base parameters (`modules_to_save`, saved biases, resized
/// embeddings): such an adapter changes weights every row shares, so its sequences run in
/// passes of their own.
pub fn replaces_parameters(a: &Adapter) -> bool {
    !a.saved_modules.is_empty() || !a.base_params.is_empty()
}

impl<'a> Pass<'a> {
    /// The same sequences, one row each (their last positions).
    fn last_rows(&self) -> Pass<'a> {
        Pass {
            table: self.table,
            params: self.params,
            segs: self
                .segs
                .iter()
                .enumerate()
                .map(|(k, s)| Seg {
                    start: k,
                    len: 1,
                    layers: s.layers,
                })
                .collect(),
        }
    }

    fn weight(&self, id: usize) -> (WRef<'a>, Option<&'a Tensor>) {
        let p = &self.table.params[id];
        let w = match self.params.param(id, false) {
            Some(t) => WRef::Tensor(t),
            None => WRef::Table(&p.weight),
        };
        (w, self.params.param(id, true).or(p.bias.as_ref()))
    }

    fn linear(&self, id: usize, x: &Tensor) -> Result<Tensor> {
        let (w, b) = self.weight(id);
        self.linear_with(id, x, w, b)
    }

    fn linear_with(
        &self,
        id: usize,
        x: &Tensor,
        w: WRef<'a>,
        b: Option<&'a Tensor>,
    ) -> Result<Tensor> {
        if let [seg] = self.segs[..] {
            let active = seg.layers.get(id);
            if let Some(y) = lora_decode_parallel(x, w.matrix(), b, &active)? {
                return Ok(y);
            }
            return Ok(graft_adapters::adapter::linear_forward(
                x,
                w.matrix(),
                b,
                &active,
            )?);
        }
        let active: Vec<Vec<&ModuleAdapter>> = self.segs.iter().map(|s| s.layers.get(id)).collect();
        let xs: Vec<Tensor> = self
            .segs
            .iter()
            .map(|s| x.narrow(0, s.start, s.len))
            .collect::<candle_core::Result<_>>()?;
        // What each sequence's base matmul multiplies (its IA3 input scales applied).
        let inputs: Vec<Tensor> = xs
            .iter()
            .zip(&active)
            .map(|(x, a)| Ok(adapter_input(x, a)?.unwrap_or_else(|| x.clone())))
            .collect::<Result<_>>()?;
        let mut base: Vec<Option<Tensor>> = vec![None; self.segs.len()];
        // Decode steps (up to 3 rows, which take the one-token kernel alone) of every
        // sequence: one pass over the quantized weights, each row computed as alone. Prefill
        // chunks: those of 4-15 rows together through the row kernel, those of 16 rows or more
        // together through the tiled GEMM (one dequantization of the weights for all) — the
        // calls each chunk makes alone, whose rows do not depend on the other rows (tested).
        if let WRef::Table(q @ Weight::Quant(qm)) = w {
            let qerr = |e: graft_quant::Error| graft_adapters::Error::Weight(e.to_string());
            for (lo, hi, min) in [(1usize, 4usize, 1usize), (4, 16, 2), (16, usize::MAX, 2)] {
                let group: Vec<usize> = (0..self.segs.len())
                    .filter(|&k| (lo..hi).contains(&self.segs[k].len))
                    .collect();
                if group.len() < min {
                    continue;
                }
                let stacked =
                    Tensor::cat(&group.iter().map(|&k| &inputs[k]).collect::<Vec<_>>(), 0)?;
                let n = stacked.dim(0)?;
                let mut y = if hi <= 16 {
                    let flat = stacked.flatten_all()?.to_vec1::<f32>()?;
                    let y = if lo == 1 {
                        qm.matmul_per_token(&flat, n).map_err(qerr)?
                    } else {
                        qm.matmul(&flat, n).map_err(qerr)?
                    };
                    Tensor::from_vec(y, (n, qm.rows), &Device::Cpu)?
                } else {
                    q.matmul_t(&stacked)?
                };
                if let Some(b) = b {
                    y = y.broadcast_add(b)?;
                }
                let mut at = 0;
                for &k in &group {
                    let len = self.segs[k].len;
                    base[k] = Some(y.narrow(0, at, len)?);
                    at += len;
                }
            }
        }
        // What is left (a lone prefill chunk, every row of a dense weight): one matmul per
        // sequence, the single-sequence call.
        let out: Vec<Tensor> = (0..self.segs.len())
            .into_par_iter()
            .map(|k| {
                let base = match &base[k] {
                    Some(y) => y.clone(),
                    None => graft_adapters::adapter::linear(&inputs[k], w.matrix(), b)?,
                };
                Ok(linear_finish(&xs[k], base, b, &active[k])?)
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::cat(&out, 0)?)
    }

    /// The embedding of each sequence's ids (with its adapter's embedding LoRA).
    fn embedding(&self, id: usize, ids: &[&[u32]]) -> Result<Tensor> {
        let table: &dyn WeightMatrix = match self.params.param(id, false) {
            Some(t) => t,
            None => &self.table.params[id].weight,
        };
        let mut parts = Vec::with_capacity(ids.len());
        for (s, ids) in self.segs.iter().zip(ids) {
            let t = Tensor::from_vec(ids.to_vec(), ids.len(), &Device::Cpu)?;
            parts.push(graft_adapters::adapter::embedding_forward(
                &t,
                table,
                &s.layers.get(id),
            )?);
        }
        Ok(if parts.len() == 1 {
            parts.swap_remove(0)
        } else {
            Tensor::cat(&parts, 0)?
        })
    }

    /// A tied head uses the embedding's weight as the adapted model sees it: its own
    /// modules_to_save copy first, else the embedding's (possibly overwritten) base weight.
    fn tied_head(&self, head: usize, emb: usize, x: &Tensor) -> Result<Tensor> {
        let w = match self.params.param(head, false) {
            Some(w) => WRef::Tensor(w),
            None => match self.params.base_param(emb, false) {
                Some(w) => WRef::Tensor(w),
                None => WRef::Table(&self.table.params[emb].weight),
            },
        };
        if let [seg] = self.segs[..] {
            // the single-sequence head: no bias, no parallel LoRA path
            return Ok(graft_adapters::adapter::linear_forward(
                x,
                w.matrix(),
                None,
                &seg.layers.get(head),
            )?);
        }
        self.linear_with(head, x, w, None)
    }

    fn norm(&self, n: Norm, x: &Tensor) -> Result<Tensor> {
        let p = &self.table.params[n.id];
        let base_w = match &p.weight {
            Weight::Dense(t) => t.clone(),
            q => q.dense()?,
        };
        let w = self.params.param(n.id, false).unwrap_or(&base_w);
        let b = self.params.param(n.id, true).or(p.bias.as_ref());
        let y = match n.kind {
            NormKind::Rms => {
                let var = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(var + n.eps)?.sqrt()?)?
            }
            NormKind::Layer => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                xc.broadcast_div(&(var + n.eps)?.sqrt()?)?
            }
        };
        let y = if n.unit_offset {
            y.broadcast_mul(&(w + 1.0)?)?
        } else {
            y.broadcast_mul(w)?
        };
        Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The head (tied or not) on the final hidden states.
    fn head(&self, net: &Network, x: &Tensor) -> Result<Tensor> {
        match net.head.tied_to {
            Some(e) => self.tied_head(net.head.module, e, x),
            None => self.linear(net.head.module, x),
        }
    }
}

/// A decode step (one token) through plain LoRA layers, their two small mat-vecs split
/// across the decode pool's threads as the base mat-vec is. Serial, the adapter's f32
/// weights were read by one core while the base used all of them: a LoRA r=16 on every
/// linear layer of Qwen2.5-0.5B cost 17% of decode time. The same sums as
/// `graft_adapters::adapter::linear_forward`'s decode path (its `dot`, row by row), so the
/// numbers do not change. `None`: not this case (prefill, IA3, DoRA, lora_bias, one thread).
fn lora_decode_parallel(
    x: &Tensor,
    w: &dyn WeightMatrix,
    bias: Option<&Tensor>,
    active: &[&ModuleAdapter],
) -> Result<Option<Tensor>> {
    use graft_adapters::adapter::{dot, linear, with_slices};
    use graft_quant::pool::SpinPool;
    use std::sync::{Arc, Mutex};

    let pool = SpinPool::global();
    let (n, in_features) = x.dims2()?;
    if n != 1 || pool.parts() < 2 {
        return Ok(None);
    }
    let mut loras = Vec::with_capacity(active.len());
    for a in active {
        match a {
            ModuleAdapter::Lora(l) if l.dora.is_none() && l.b_bias.is_none() => loras.push(l),
            _ => return Ok(None),
        }
    }
    if loras.is_empty() {
        return Ok(None);
    }
    let base = linear(x, w, bias)?;
    let out_features = base.dims2()?.1;
    let xs: Arc<Vec<f32>> = Arc::new(x.flatten_all()?.to_vec1::<f32>()?);
    let parts = pool.parts();
    // Rows `0..rows` in `parts` contiguous ranges; part k's values land in slot k.
    let split = move |rows: usize, k: usize| {
        let per = rows.div_ceil(parts);
        (k * per).min(rows)..((k + 1) * per).min(rows)
    };
    let mut delta = vec![0f32; out_features];
    for l in loras {
        let (a, b, r, scale) = (l.a.clone(), l.b.clone(), l.r, l.scale as f32);
        if with_slices(&a, &b, |_, _| ()).is_none() {
            return Ok(None); // not contiguous CPU f32: the general path
        }
        // t = s · A x
        let slots: Arc<Vec<Mutex<Vec<f32>>>> =
            Arc::new((0..parts).map(|_| Mutex::new(Vec::new())).collect());
        {
            let (slots, xs, a2, b2) = (slots.clone(), xs.clone(), a.clone(), b.clone());
            pool.run(Arc::new(move |k| {
                let rows = split(r, k);
                let v = with_slices(&a2, &b2, |av, _| {
                    rows.map(|j| dot(&av[j * in_features..(j + 1) * in_features], &xs) * scale)
                        .collect::<Vec<f32>>()
                });
                *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = v.unwrap_or_default();
            }));
        }
        let t: Arc<Vec<f32>> = Arc::new(
            slots
                .iter()
                .flat_map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner())))
                .collect(),
        );
        if t.len() != r {
            return Ok(None);
        }
        // delta += B t
        {
            let (slots, t, a2, b2) = (slots.clone(), t.clone(), a.clone(), b.clone());
            pool.run(Arc::new(move |k| {
                let rows = split(out_features, k);
                let v = with_slices(&a2, &b2, |_, bv| {
                    rows.map(|o| dot(&bv[o * r..(o + 1) * r], &t))
                        .collect::<Vec<f32>>()
                });
                *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = v.unwrap_or_default();
            }));
        }
        let mut o = 0;
        for s in slots.iter() {
            for v in std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner())) {
                delta[o] += v;
                o += 1;
            }
        }
        if o != out_features {
            return Ok(None);
        }
    }
    let delta = Tensor::from_vec(delta, (1, out_features), x.device())?;
    Ok(Some((base + delta)?))
}

/// An activation on the CPU.
pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::Relu => x.relu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
    })
}

/// `cap · tanh(x / cap)`.
pub fn softcap(x: &Tensor, cap: f32) -> Result<Tensor> {
    Ok(((x / f64::from(cap))?.tanh()? * f64::from(cap))?)
}

/// One forward pass over `ids` appended to `cache`, through the registry's active adapters;
/// logits (n, vocab), or (1, vocab) of the last position with `last_only` (generation: the
/// head never runs over the whole prompt).
pub fn forward(
    net: &Network,
    ctx: &Ctx,
    ids: &[u32],
    cache: &mut KvCache,
    last_only: bool,
) -> Result<Tensor> {
    if ids.is_empty() {
        return Err(Error::Input("no tokens to run".into()));
    }
    let pass = Pass {
        table: ctx.table,
        params: Params::Registry(ctx.reg),
        segs: vec![Seg {
            start: 0,
            len: ids.len(),
            layers: Layers::Registry(ctx.reg),
        }],
    };
    run(net, &pass, &[ids], &mut [cache], last_only)
}

/// One sequence's part of a batched pass: its new tokens (a decode step's one token, or a
/// chunk of its prompt), its cache, and its adapter (`None`: the base model).
pub struct Sequence<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
    pub adapter: Option<&'a Adapter>,
}

/// One forward pass over several sequences at once, each appending its `ids` to its own
/// cache through its own adapter; the last position's logits of each, (sequences, vocab).
/// Each sequence's logits are bit for bit those of [`forward`] on that sequence alone with
/// its adapter active. Sequences whose adapter replaces base parameters
/// ([`replaces_parameters`]) can share a pass only with sequences of the same adapter: a
/// pass that mixes them is refused, never computed approximately.
pub fn forward_batch(net: &Network, table: &ModuleTable, seqs: &mut [Sequence]) -> Result<Tensor> {
    if seqs.is_empty() {
        return Err(Error::Input("no sequences to run".into()));
    }
    if let Some(k) = seqs.iter().position(|s| s.ids.is_empty()) {
        return Err(Error::Input(format!("sequence {k} has no tokens to run")));
    }
    let owner = seqs
        .iter()
        .find_map(|s| s.adapter.filter(|a| replaces_parameters(a)));
    if let Some(a) = owner {
        if let Some(other) = seqs
            .iter()
            .find(|s| !s.adapter.is_some_and(|b| std::ptr::eq(a, b)))
        {
            return Err(Error::Input(format!(
                "adapter `{}` replaces base parameters and cannot share a pass with {}",
                a.name,
                other
                    .adapter
                    .map_or("the base model".to_string(), |b| format!(
                        "adapter `{}`",
                        b.name
                    ))
            )));
        }
    }
    let mut start = 0;
    let segs = seqs
        .iter()
        .map(|s| {
            let seg = Seg {
                start,
                len: s.ids.len(),
                layers: Layers::One(s.adapter),
            };
            start += s.ids.len();
            seg
        })
        .collect();
    let pass = Pass {
        table,
        params: Params::One(owner),
        segs,
    };
    let ids: Vec<&[u32]> = seqs.iter().map(|s| s.ids).collect();
    let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
    run(net, &pass, &ids, &mut caches, true)
}

/// The network over the pass's sequences (`ids[k]` and `caches[k]` are sequence k's).
fn run(
    net: &Network,
    pass: &Pass,
    ids: &[&[u32]],
    caches: &mut [&mut KvCache],
    last_only: bool,
) -> Result<Tensor> {
    let p0: Vec<usize> = caches.iter().map(|c| c.len).collect();
    let mut x = pass.embedding(net.embed, ids)?;
    if let Some(s) = net.embed_scale {
        x = (x * f64::from(s))?;
    }
    if let Some(pi) = net.project_in {
        x = pass.linear(pi, &x)?;
    }
    if let Some(pos) = net.positions {
        let rows: Vec<Vec<u32>> = ids
            .iter()
            .zip(&p0)
            .map(|(ids, &p0)| {
                (p0..p0 + ids.len())
                    .map(|p| (p + pos.offset) as u32)
                    .collect()
            })
            .collect();
        let rows: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        x = (x + pass.embedding(pos.module, &rows)?)?;
    }
    for (li, b) in net.blocks.iter().enumerate() {
        let pre = b.residual == Residual::PreNorm;
        let h = if pre {
            pass.norm(b.attn_norm, &x)?
        } else {
            x.clone()
        };
        let mut a = attention(net, pass, &b.attn, li, &h, caches, &p0)?;
        if let Some(on) = b.attn_out_norm {
            a = pass.norm(on, &a)?;
        }
        x = (x + a)?;
        if !pre {
            x = pass.norm(b.attn_norm, &x)?;
        }
        let h = if pre {
            pass.norm(b.mlp_norm, &x)?
        } else {
            x.clone()
        };
        let m = match b.mlp {
            Mlp::Gated {
                gate,
                up,
                down,
                act,
            } => {
                let g = activate(act, &pass.linear(gate, &h)?)?;
                let u = pass.linear(up, &h)?;
                pass.linear(down, &(g * u)?)?
            }
            Mlp::GatedFused {
                gate_up,
                down,
                ffn,
                act,
            } => {
                let gu = pass.linear(gate_up, &h)?;
                let g = activate(act, &gu.narrow(1, 0, ffn)?)?;
                pass.linear(down, &(g * gu.narrow(1, ffn, ffn)?)?)?
            }
            Mlp::Plain { fc1, fc2, act } => {
                pass.linear(fc2, &activate(act, &pass.linear(fc1, &h)?)?)?
            }
        };
        let m = match b.mlp_out_norm {
            Some(on) => pass.norm(on, &m)?,
            None => m,
        };
        x = (x + m)?;
        if !pre {
            x = pass.norm(b.mlp_norm, &x)?;
        }
    }
    for (c, ids) in caches.iter_mut().zip(ids) {
        c.len += ids.len();
    }
    let last;
    let pass = if last_only {
        let rows = pass
            .segs
            .iter()
            .map(|s| x.narrow(0, s.start + s.len - 1, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        x = if rows.len() == 1 {
            rows.into_iter()
                .next()
                .ok_or_else(|| Error::Input("no rows".into()))?
        } else {
            Tensor::cat(&rows, 0)?
        };
        last = pass.last_rows();
        &last
    } else {
        pass
    };
    if let Some(f) = net.final_norm {
        x = pass.norm(f, &x)?;
    }
    if let Some(po) = net.project_out {
        x = pass.linear(po, &x)?;
    }
    let logits = pass.head(net, &x)?;
    match net.logit_softcap {
        Some(c) => softcap(&logits, c),
        None => Ok(logits),
    }
}

/// Causal self-attention of block `li` on `h` (all rows): q/k/v, RoPE, each sequence's cache,
/// o.
fn attention(
    net: &Network,
    pass: &Pass,
    a: &Attention,
    li: usize,
    h: &Tensor,
    caches: &mut [&mut KvCache],
    p0: &[usize],
) -> Result<Tensor> {
    let n = h.dim(0)?;
    let (nh, nkv, hd) = (a.heads, a.kv_heads, a.head_dim);
    let (q, k, v) = match a.qkv {
        Qkv::Separate { q, k, v } => (pass.linear(q, h)?, pass.linear(k, h)?, pass.linear(v, h)?),
        Qkv::Fused(m) => {
            let y = pass.linear(m, h)?;
            (
                y.narrow(1, 0, nh * hd)?,
                y.narrow(1, nh * hd, nkv * hd)?,
                y.narrow(1, (nh + nkv) * hd, nkv * hd)?,
            )
        }
    };
    // per-head norms of q and k (Qwen3, Gemma 3): rows of head_dim
    let (q, k) = match a.qk_norm {
        Some((qn, kn)) => (
            pass.norm(qn, &q.reshape((n * nh, hd))?)?,
            pass.norm(kn, &k.reshape((n * nkv, hd))?)?,
        ),
        None => (q, k),
    };
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let k = k.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(n * nh * hd);
    for (s, (cache, &p0)) in pass.segs.iter().zip(caches.iter_mut().zip(p0)) {
        let n = s.len;
        let mut q = q[s.start * nh * hd..(s.start + n) * nh * hd].to_vec();
        let mut k = k[s.start * nkv * hd..(s.start + n) * nkv * hd].to_vec();
        let v = &v[s.start * nkv * hd..(s.start + n) * nkv * hd];
        if let Some(r) = a.rope {
            let table = &net.ropes[r];
            let f = table.inv_freq_for(p0 + n);
            let sc = table.attention_scaling;
            rope_in_place_scaled(&mut q, n, nh, hd, p0, f, sc);
            rope_in_place_scaled(&mut k, n, nkv, hd, p0, f, sc);
        }
        let layer = cache.layer(li, nkv, hd);
        layer.append(p0, n, &k, v);
        out.extend(layer.attend_capped(&q, n, nh, p0 + n, a.scale, a.window, a.softcap));
    }
    let out = Tensor::from_vec(out, (n, nh * hd), &Device::Cpu)?;
    pass.linear(a.o, &out)
}
