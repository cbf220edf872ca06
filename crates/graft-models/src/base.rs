//! The module table of a base model: every named module (its `named_modules()` path), its
//! kind and its base parameters. Layers refer to modules by index; the adapter registry works
//! on the same indices.

use candle_core::{Tensor, D};
use graft_core::{AdapterRegistry, ModuleInfo, ModuleInventory, ModuleKind};

use crate::error::Result;
use crate::weights::WeightStore;

/// Base parameters of one module.
#[derive(Debug, Clone)]
pub struct BaseParams {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// A norm module: RMSNorm (Llama) or LayerNorm (OPT).
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    pub id: usize,
    pub eps: f64,
    pub rms: bool,
}

/// The module table while and after building an architecture.
pub struct ModuleTable {
    pub inventory: ModuleInventory,
    pub params: Vec<BaseParams>,
}

impl ModuleTable {
    pub fn new(model_type: &str) -> Self {
        ModuleTable {
            inventory: ModuleInventory {
                model_type: model_type.into(),
                modules: Vec::new(),
            },
            params: Vec::new(),
        }
    }

    fn push(&mut self, path: &str, kind: ModuleKind, head: bool, p: BaseParams) -> usize {
        self.inventory.modules.push(ModuleInfo {
            path: path.into(),
            kind,
            is_output_head: head,
        });
        self.params.push(p);
        self.params.len() - 1
    }

    pub fn linear(
        &mut self,
        w: &WeightStore,
        path: &str,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<usize> {
        let weight = w.get(&format!("{path}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(w.get(&format!("{path}.bias"), &[out])?)
        } else {
            None
        };
        let kind = ModuleKind::Linear {
            in_features: inp,
            out_features: out,
            bias: bias.is_some(),
        };
        Ok(self.push(path, kind, false, BaseParams { weight, bias }))
    }

    /// The output head; `tied_to` shares the embedding's weight (as `tie_word_embeddings`).
    pub fn head(
        &mut self,
        w: &WeightStore,
        path: &str,
        inp: usize,
        out: usize,
        tied_to: Option<usize>,
    ) -> Result<usize> {
        let weight = match tied_to {
            Some(e) => self.params[e].weight.clone(),
            None => w.get(&format!("{path}.weight"), &[out, inp])?,
        };
        let kind = ModuleKind::Linear {
            in_features: inp,
            out_features: out,
            bias: false,
        };
        Ok(self.push(path, kind, true, BaseParams { weight, bias: None }))
    }

    pub fn embedding(
        &mut self,
        w: &WeightStore,
        path: &str,
        num: usize,
        dim: usize,
    ) -> Result<usize> {
        let weight = w.get(&format!("{path}.weight"), &[num, dim])?;
        Ok(self.push(
            path,
            ModuleKind::Embedding {
                num_embeddings: num,
                dim,
            },
            false,
            BaseParams { weight, bias: None },
        ))
    }

    pub fn norm(
        &mut self,
        w: &WeightStore,
        path: &str,
        dim: usize,
        bias: bool,
        eps: f64,
        rms: bool,
    ) -> Result<Norm> {
        let weight = w.get(&format!("{path}.weight"), &[dim])?;
        let bias = if bias {
            Some(w.get(&format!("{path}.bias"), &[dim])?)
        } else {
            None
        };
        let id = self.push(
            path,
            ModuleKind::Norm {
                dim,
                bias: bias.is_some(),
            },
            false,
            BaseParams { weight, bias },
        );
        Ok(Norm { id, eps, rms })
    }
}

/// Running the base modules through the registry.
pub struct Ctx<'a> {
    pub table: &'a ModuleTable,
    pub reg: &'a AdapterRegistry,
}

impl Ctx<'_> {
    pub fn linear(&self, id: usize, x: &Tensor) -> Result<Tensor> {
        let p = &self.table.params[id];
        Ok(self.reg.linear(id, x, &p.weight, p.bias.as_ref())?)
    }

    pub fn embedding(&self, id: usize, ids: &Tensor) -> Result<Tensor> {
        Ok(self.reg.embedding(id, ids, &self.table.params[id].weight)?)
    }

    /// A tied head uses the embedding's weight as the adapted model sees it: its own
    /// modules_to_save copy first, else the embedding's (possibly overwritten) base weight.
    pub fn tied_head(&self, head: usize, emb: usize, x: &Tensor) -> Result<Tensor> {
        let w = match self.reg.param(head, false) {
            Some(w) => w.clone(),
            None => self
                .reg
                .base_param(emb, false)
                .cloned()
                .unwrap_or_else(|| self.table.params[emb].weight.clone()),
        };
        Ok(graft_core::adapter::linear_forward(
            x,
            &w,
            None,
            &self.reg.active_layers(head),
        )?)
    }

    pub fn norm(&self, n: Norm, x: &Tensor) -> Result<Tensor> {
        let p = &self.table.params[n.id];
        let w = self.reg.param(n.id, false).unwrap_or(&p.weight);
        let b = self.reg.param(n.id, true).or(p.bias.as_ref());
        let y = if n.rms {
            let var = x.sqr()?.mean_keepdim(D::Minus1)?;
            x.broadcast_div(&(var + n.eps)?.sqrt()?)?
        } else {
            let mean = x.mean_keepdim(D::Minus1)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + n.eps)?.sqrt()?)?
        };
        let y = y.broadcast_mul(w)?;
        Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Softmax over the last dimension, computed stably.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Causal attention for one sequence with a cache: q (H, n, D), k/v (KV, T, D) where the n
/// queries sit at positions T-n..T. Grouped-query heads share their KV head. Returns (n, H·D).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    window: Option<usize>,
) -> Result<Tensor> {
    let (h, n, d) = q.dims3()?;
    let (kvh, t, _) = k.dims3()?;
    let rep = h / kvh;
    let (k, v) = if rep > 1 {
        let k = k
            .unsqueeze(1)?
            .expand((kvh, rep, t, d))?
            .reshape((h, t, d))?;
        let v = v
            .unsqueeze(1)?
            .expand((kvh, rep, t, d))?
            .reshape((h, t, d))?;
        (k, v)
    } else {
        (k.clone(), v.clone())
    };
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?; // (H, n, T)
    let offset = t - n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..t).map(move |j| {
                let qpos = offset + i;
                let visible = j <= qpos && window.is_none_or(|w| qpos - j < w);
                if visible {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (1, n, t), q.device())?;
    let probs = softmax_last(&scores.broadcast_add(&mask)?)?;
    let out = probs.matmul(&v.contiguous()?)?; // (H, n, D)
    Ok(out.transpose(0, 1)?.reshape((n, h * d))?)
}
