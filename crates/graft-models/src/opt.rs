//! OPT (facebook/opt-*), as transformers' `OPTForCausalLM` computes it: learned positions with
//! offset 2, pre- or post-layer-norm, and project_in/project_out when `word_embed_proj_dim`
//! differs from `hidden_size` (opt-350m).

use candle_core::{DType, Device, Tensor};

use crate::base::{Ctx, ModuleTable, Norm};
use crate::error::Result;
use crate::hf_config::{Activation, OptConfig};
use crate::weights::WeightStore;

/// One decoder layer: module ids into the [`ModuleTable`] (read by the GPU path).
pub struct Layer {
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub out: usize,
    pub attn_norm: Norm,
    pub fc1: usize,
    pub fc2: usize,
    pub final_norm: Norm,
}

/// An OPT decoder.
pub struct Opt {
    pub cfg: OptConfig,
    pub embed: usize,
    pub positions: usize,
    pub project_in: Option<usize>,
    pub project_out: Option<usize>,
    pub final_norm: Option<Norm>,
    pub layers: Vec<Layer>,
    pub head: usize,
    pub tied: bool,
}

/// OPT's learned positional embedding skips its first two rows.
pub const POSITION_OFFSET: usize = 2;

impl Opt {
    pub fn build(cfg: OptConfig, w: &WeightStore, t: &mut ModuleTable) -> Result<Self> {
        let (h, e) = (cfg.hidden_size, cfg.word_embed_proj_dim);
        let p = "model.decoder";
        let eps = 1e-5;
        let embed = t.embedding(w, &format!("{p}.embed_tokens"), cfg.vocab_size, e)?;
        let positions = t.embedding(
            w,
            &format!("{p}.embed_positions"),
            cfg.max_position_embeddings + POSITION_OFFSET,
            h,
        )?;
        let (project_in, project_out) = if e != h {
            (
                Some(t.linear(w, &format!("{p}.project_in"), e, h, false)?),
                Some(t.linear(w, &format!("{p}.project_out"), h, e, false)?),
            )
        } else {
            (None, None)
        };
        let final_norm = if cfg.do_layer_norm_before && !cfg.remove_final_layer_norm {
            Some(t.norm(w, &format!("{p}.final_layer_norm"), h, true, eps, false)?)
        } else {
            None
        };
        let b = cfg.enable_bias;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = format!("{p}.layers.{i}");
            layers.push(Layer {
                k: t.linear(w, &format!("{lp}.self_attn.k_proj"), h, h, b)?,
                v: t.linear(w, &format!("{lp}.self_attn.v_proj"), h, h, b)?,
                q: t.linear(w, &format!("{lp}.self_attn.q_proj"), h, h, b)?,
                out: t.linear(w, &format!("{lp}.self_attn.out_proj"), h, h, b)?,
                attn_norm: t.norm(
                    w,
                    &format!("{lp}.self_attn_layer_norm"),
                    h,
                    true,
                    eps,
                    false,
                )?,
                fc1: t.linear(w, &format!("{lp}.fc1"), h, cfg.ffn_dim, b)?,
                fc2: t.linear(w, &format!("{lp}.fc2"), cfg.ffn_dim, h, b)?,
                final_norm: t.norm(w, &format!("{lp}.final_layer_norm"), h, true, eps, false)?,
            });
        }
        let tied = cfg.tie_word_embeddings;
        let head = t.head(w, "lm_head", e, cfg.vocab_size, tied.then_some(embed))?;
        Ok(Opt {
            cfg,
            embed,
            positions,
            project_in,
            project_out,
            final_norm,
            layers,
            head,
            tied,
        })
    }

    pub fn forward(
        &self,
        ctx: &Ctx,
        ids: &Tensor,
        cache: &mut crate::KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let n = ids.dims1()?;
        let p0 = cache.len;
        let nh = c.num_attention_heads;
        let hd = c.hidden_size / nh;
        let mut x = ctx.embedding(self.embed, ids)?;
        if let Some(pi) = self.project_in {
            x = ctx.linear(pi, &x)?;
        }
        let pos: Vec<u32> = (p0..p0 + n).map(|p| (p + POSITION_OFFSET) as u32).collect();
        let pos = Tensor::from_vec(pos, n, &Device::Cpu)?.to_dtype(DType::U32)?;
        x = (x + ctx.embedding(self.positions, &pos)?)?;
        let pre = c.do_layer_norm_before;
        for (li, l) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let h = if pre {
                ctx.norm(l.attn_norm, &x)?
            } else {
                x.clone()
            };
            let q = ctx.linear(l.q, &h)?.flatten_all()?.to_vec1::<f32>()?;
            let k = ctx.linear(l.k, &h)?.flatten_all()?.to_vec1::<f32>()?;
            let v = ctx.linear(l.v, &h)?.flatten_all()?.to_vec1::<f32>()?;
            let layer = cache.layer(li, nh, hd);
            layer.append(p0, n, &k, &v);
            let a = layer.attend(&q, n, nh, p0 + n, 1.0 / (hd as f32).sqrt(), None);
            let a = Tensor::from_vec(a, (n, nh * hd), &Device::Cpu)?;
            x = (residual + ctx.linear(l.out, &a)?)?;
            if !pre {
                x = ctx.norm(l.attn_norm, &x)?;
            }
            let residual = x.clone();
            let h = if pre {
                ctx.norm(l.final_norm, &x)?
            } else {
                x.clone()
            };
            let h = ctx.linear(l.fc1, &h)?;
            let h = match c.activation {
                Activation::Relu => h.relu()?,
                Activation::Gelu => h.gelu_erf()?,
            };
            x = (residual + ctx.linear(l.fc2, &h)?)?;
            if !pre {
                x = ctx.norm(l.final_norm, &x)?;
            }
        }
        cache.len += n;
        // Generation needs only the last position's logits: skip the head for the others.
        if last_only {
            x = x.narrow(0, n - 1, 1)?;
        }
        if let Some(f) = self.final_norm {
            x = ctx.norm(f, &x)?;
        }
        if let Some(po) = self.project_out {
            x = ctx.linear(po, &x)?;
        }
        if self.tied {
            ctx.tied_head(self.head, self.embed, &x)
        } else {
            ctx.linear(self.head, &x)
        }
    }
}
