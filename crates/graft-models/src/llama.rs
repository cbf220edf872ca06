//! The Llama family (Llama 2/3, SmolLM2, TinyLlama, Mistral-style grouped-query attention),
//! as transformers' `LlamaForCausalLM` computes it.

use candle_core::{Device, Tensor};

use crate::attention::rope_in_place;
use crate::base::{Ctx, ModuleTable, Norm};
use crate::error::Result;
use crate::hf_config::LlamaConfig;
use crate::weights::WeightStore;

/// One decoder layer: module ids into the [`ModuleTable`] (read by the GPU path).
pub struct Layer {
    pub input_norm: Norm,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub o: usize,
    pub post_norm: Norm,
    pub gate: usize,
    pub up: usize,
    pub down: usize,
}

/// A Llama-family decoder. Module ids point into the shared [`ModuleTable`].
pub struct Llama {
    pub cfg: LlamaConfig,
    pub embed: usize,
    pub layers: Vec<Layer>,
    pub norm: Norm,
    pub head: usize,
    pub tied: bool,
    /// RoPE inverse frequencies (after rope scaling), head_dim / 2 of them.
    pub inv_freq: Vec<f32>,
}

impl Llama {
    pub fn build(cfg: LlamaConfig, w: &WeightStore, t: &mut ModuleTable) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let embed = t.embedding(w, "model.embed_tokens", cfg.vocab_size, h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ab = cfg.attention_bias;
            let input_norm = t.norm(
                w,
                &format!("{p}.input_layernorm"),
                h,
                false,
                cfg.rms_norm_eps,
                true,
            )?;
            let q = t.linear(
                w,
                &format!("{p}.self_attn.q_proj"),
                h,
                cfg.num_attention_heads * hd,
                ab,
            )?;
            let k = t.linear(
                w,
                &format!("{p}.self_attn.k_proj"),
                h,
                cfg.num_key_value_heads * hd,
                ab,
            )?;
            let v = t.linear(
                w,
                &format!("{p}.self_attn.v_proj"),
                h,
                cfg.num_key_value_heads * hd,
                ab,
            )?;
            let o = t.linear(
                w,
                &format!("{p}.self_attn.o_proj"),
                cfg.num_attention_heads * hd,
                h,
                ab,
            )?;
            let post_norm = t.norm(
                w,
                &format!("{p}.post_attention_layernorm"),
                h,
                false,
                cfg.rms_norm_eps,
                true,
            )?;
            let mb = cfg.mlp_bias;
            let gate = t.linear(
                w,
                &format!("{p}.mlp.gate_proj"),
                h,
                cfg.intermediate_size,
                mb,
            )?;
            let up = t.linear(w, &format!("{p}.mlp.up_proj"), h, cfg.intermediate_size, mb)?;
            let down = t.linear(
                w,
                &format!("{p}.mlp.down_proj"),
                cfg.intermediate_size,
                h,
                mb,
            )?;
            layers.push(Layer {
                input_norm,
                q,
                k,
                v,
                o,
                post_norm,
                gate,
                up,
                down,
            });
        }
        let norm = t.norm(w, "model.norm", h, false, cfg.rms_norm_eps, true)?;
        // A tied checkpoint has no lm_head.weight; an untied one must have it.
        let tied = cfg.tie_word_embeddings;
        let head = t.head(w, "lm_head", h, cfg.vocab_size, tied.then_some(embed))?;
        let inv_freq = cfg.rope.inv_freq(cfg.head_dim);
        Ok(Llama {
            cfg,
            embed,
            layers,
            norm,
            head,
            tied,
            inv_freq,
        })
    }

    /// One forward pass over `ids` (n,) appended to `cache`; returns logits (n, vocab).
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
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let mut x = ctx.embedding(self.embed, ids)?;
        for (li, l) in self.layers.iter().enumerate() {
            let h = ctx.norm(l.input_norm, &x)?;
            let mut q = ctx.linear(l.q, &h)?.flatten_all()?.to_vec1::<f32>()?;
            let mut k = ctx.linear(l.k, &h)?.flatten_all()?.to_vec1::<f32>()?;
            let v = ctx.linear(l.v, &h)?.flatten_all()?.to_vec1::<f32>()?;
            rope_in_place(&mut q, n, nh, hd, p0, &self.inv_freq);
            rope_in_place(&mut k, n, nkv, hd, p0, &self.inv_freq);
            let layer = cache.layer(li, nkv, hd);
            layer.append(p0, n, &k, &v);
            let scale = 1.0 / (hd as f32).sqrt();
            let a = layer.attend(&q, n, nh, p0 + n, scale, c.sliding_window);
            let a = Tensor::from_vec(a, (n, nh * hd), &Device::Cpu)?;
            x = (x + ctx.linear(l.o, &a)?)?;
            let h = ctx.norm(l.post_norm, &x)?;
            let g = ctx.linear(l.gate, &h)?.silu()?;
            let u = ctx.linear(l.up, &h)?;
            x = (x + ctx.linear(l.down, &(g * u)?)?)?;
        }
        cache.len += n;
        // Generation needs only the last position's logits: skip the head for the others.
        let x = if last_only { x.narrow(0, n - 1, 1)? } else { x };
        let x = ctx.norm(self.norm, &x)?;
        if self.tied {
            ctx.tied_head(self.head, self.embed, &x)
        } else {
            ctx.linear(self.head, &x)
        }
    }
}
