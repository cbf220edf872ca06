//! A forward pass of any [`Network`] on the CPU: 2-D `(tokens, features)` tensors, the base
//! modules run through the adapter registry (PEFT's math, unmerged), attention and RoPE in
//! plain Rust over the KV cache.

use candle_core::{DType, Device, Tensor, D};
use graft_adapters::adapter::WeightMatrix;
use graft_adapters::AdapterRegistry;
use graft_arch::network::{Activation, Attention, Mlp, Network, Norm, NormKind, Qkv, Residual};
use graft_arch::table::{ModuleTable, Weight};

use crate::attention::{rope_in_place_scaled, KvCache};
use crate::error::{Error, Result};

/// Running the base modules through the registry.
pub struct Ctx<'a> {
    pub table: &'a ModuleTable,
    pub reg: &'a AdapterRegistry,
}

impl Ctx<'_> {
    pub fn linear(&self, id: usize, x: &Tensor) -> Result<Tensor> {
        let p = &self.table.params[id];
        if let Some(y) = self.lora_decode_parallel(id, x)? {
            return Ok(y);
        }
        Ok(self.reg.linear(id, x, &p.weight, p.bias.as_ref())?)
    }

    /// A decode step (one token) through plain LoRA layers, their two small mat-vecs split
    /// across the decode pool's threads as the base mat-vec is. Serial, the adapter's f32
    /// weights were read by one core while the base used all of them: a LoRA r=16 on every
    /// linear layer of Qwen2.5-0.5B cost 17% of decode time. The same sums as
    /// `graft_adapters::adapter::linear_forward`'s decode path (its `dot`, row by row), so the
    /// numbers do not change. `None`: not this case (prefill, IA3, DoRA, lora_bias, one thread).
    fn lora_decode_parallel(&self, id: usize, x: &Tensor) -> Result<Option<Tensor>> {
        use graft_adapters::adapter::{dot, linear, with_slices, ModuleAdapter};
        use graft_quant::pool::SpinPool;
        use std::sync::{Arc, Mutex};

        let pool = SpinPool::global();
        let (n, in_features) = x.dims2()?;
        if n != 1 || pool.parts() < 2 {
            return Ok(None);
        }
        let active = self.reg.active_layers(id);
        let mut loras = Vec::with_capacity(active.len());
        for a in &active {
            match a {
                ModuleAdapter::Lora(l) if l.dora.is_none() && l.b_bias.is_none() => loras.push(l),
                _ => return Ok(None),
            }
        }
        if loras.is_empty() {
            return Ok(None);
        }
        let p = &self.table.params[id];
        let w: &dyn WeightMatrix = match self.reg.param(id, false) {
            Some(t) => t,
            None => &p.weight,
        };
        let bias = self.reg.param(id, true).or(p.bias.as_ref());
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

    pub fn embedding(&self, id: usize, ids: &Tensor) -> Result<Tensor> {
        Ok(self.reg.embedding(id, ids, &self.table.params[id].weight)?)
    }

    /// A tied head uses the embedding's weight as the adapted model sees it: its own
    /// modules_to_save copy first, else the embedding's (possibly overwritten) base weight.
    pub fn tied_head(&self, head: usize, emb: usize, x: &Tensor) -> Result<Tensor> {
        let w: &dyn WeightMatrix = match self.reg.param(head, false) {
            Some(w) => w,
            None => match self.reg.base_param(emb, false) {
                Some(w) => w,
                None => &self.table.params[emb].weight,
            },
        };
        Ok(graft_adapters::adapter::linear_forward(
            x,
            w,
            None,
            &self.reg.active_layers(head),
        )?)
    }

    pub fn norm(&self, n: Norm, x: &Tensor) -> Result<Tensor> {
        let p = &self.table.params[n.id];
        let base_w = match &p.weight {
            Weight::Dense(t) => t.clone(),
            q => q.dense()?,
        };
        let w = self.reg.param(n.id, false).unwrap_or(&base_w);
        let b = self.reg.param(n.id, true).or(p.bias.as_ref());
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
    pub fn head(&self, net: &Network, x: &Tensor) -> Result<Tensor> {
        match net.head.tied_to {
            Some(e) => self.tied_head(net.head.module, e, x),
            None => self.linear(net.head.module, x),
        }
    }
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

/// One forward pass over `ids` appended to `cache`; logits (n, vocab), or (1, vocab) of the
/// last position with `last_only` (generation: the head never runs over the whole prompt).
pub fn forward(
    net: &Network,
    ctx: &Ctx,
    ids: &[u32],
    cache: &mut KvCache,
    last_only: bool,
) -> Result<Tensor> {
    let n = ids.len();
    if n == 0 {
        return Err(Error::Input("no tokens to run".into()));
    }
    let p0 = cache.len;
    let dev = Device::Cpu;
    let mut x = ctx.embedding(net.embed, &Tensor::from_vec(ids.to_vec(), n, &dev)?)?;
    if let Some(s) = net.embed_scale {
        x = (x * f64::from(s))?;
    }
    if let Some(pi) = net.project_in {
        x = ctx.linear(pi, &x)?;
    }
    if let Some(pos) = net.positions {
        let rows: Vec<u32> = (p0..p0 + n).map(|p| (p + pos.offset) as u32).collect();
        let rows = Tensor::from_vec(rows, n, &dev)?.to_dtype(DType::U32)?;
        x = (x + ctx.embedding(pos.module, &rows)?)?;
    }
    for (li, b) in net.blocks.iter().enumerate() {
        let pre = b.residual == Residual::PreNorm;
        let h = if pre {
            ctx.norm(b.attn_norm, &x)?
        } else {
            x.clone()
        };
        let mut a = attention(net, ctx, &b.attn, li, &h, cache, p0)?;
        if let Some(on) = b.attn_out_norm {
            a = ctx.norm(on, &a)?;
        }
        x = (x + a)?;
        if !pre {
            x = ctx.norm(b.attn_norm, &x)?;
        }
        let h = if pre {
            ctx.norm(b.mlp_norm, &x)?
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
                let g = activate(act, &ctx.linear(gate, &h)?)?;
                let u = ctx.linear(up, &h)?;
                ctx.linear(down, &(g * u)?)?
            }
            Mlp::GatedFused {
                gate_up,
                down,
                ffn,
                act,
            } => {
                let gu = ctx.linear(gate_up, &h)?;
                let g = activate(act, &gu.narrow(1, 0, ffn)?)?;
                ctx.linear(down, &(g * gu.narrow(1, ffn, ffn)?)?)?
            }
            Mlp::Plain { fc1, fc2, act } => {
                ctx.linear(fc2, &activate(act, &ctx.linear(fc1, &h)?)?)?
            }
        };
        let m = match b.mlp_out_norm {
            Some(on) => ctx.norm(on, &m)?,
            None => m,
        };
        x = (x + m)?;
        if !pre {
            x = ctx.norm(b.mlp_norm, &x)?;
        }
    }
    cache.len += n;
    if last_only {
        x = x.narrow(0, n - 1, 1)?;
    }
    if let Some(f) = net.final_norm {
        x = ctx.norm(f, &x)?;
    }
    if let Some(po) = net.project_out {
        x = ctx.linear(po, &x)?;
    }
    let logits = ctx.head(net, &x)?;
    match net.logit_softcap {
        Some(c) => softcap(&logits, c),
        None => Ok(logits),
    }
}

/// Causal self-attention of block `li` on `h` (n, hidden): q/k/v, RoPE, the cache, o.
fn attention(
    net: &Network,
    ctx: &Ctx,
    a: &Attention,
    li: usize,
    h: &Tensor,
    cache: &mut KvCache,
    p0: usize,
) -> Result<Tensor> {
    let n = h.dim(0)?;
    let (nh, nkv, hd) = (a.heads, a.kv_heads, a.head_dim);
    let (q, k, v) = match a.qkv {
        Qkv::Separate { q, k, v } => (ctx.linear(q, h)?, ctx.linear(k, h)?, ctx.linear(v, h)?),
        Qkv::Fused(m) => {
            let y = ctx.linear(m, h)?;
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
            ctx.norm(qn, &q.reshape((n * nh, hd))?)?,
            ctx.norm(kn, &k.reshape((n * nkv, hd))?)?,
        ),
        None => (q, k),
    };
    let mut q = q.flatten_all()?.to_vec1::<f32>()?;
    let mut k = k.flatten_all()?.to_vec1::<f32>()?;
    let v = v.flatten_all()?.to_vec1::<f32>()?;
    if let Some(r) = a.rope {
        let table = &net.ropes[r];
        let f = table.inv_freq_for(p0 + n);
        let s = table.attention_scaling;
        rope_in_place_scaled(&mut q, n, nh, hd, p0, f, s);
        rope_in_place_scaled(&mut k, n, nkv, hd, p0, f, s);
    }
    let layer = cache.layer(li, nkv, hd);
    layer.append(p0, n, &k, &v);
    let out = layer.attend_capped(&q, n, nh, p0 + n, a.scale, a.window, a.softcap);
    let out = Tensor::from_vec(out, (n, nh * hd), &Device::Cpu)?;
    ctx.linear(a.o, &out)
}
