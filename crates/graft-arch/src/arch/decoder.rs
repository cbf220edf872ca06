//! The decoder block the Llama-like architectures share (Llama, Mistral, Qwen2/3, Gemma 2/3,
//! Phi-3): RMSNorms, grouped-query attention with RoPE, a gated MLP, under Hugging Face's module
//! names. Each architecture file reads its configuration into a [`Decoder`] — which options its
//! blocks take — and [`build`] registers the modules and returns the network.

use serde_json::Value;

use crate::config::{ConfigReader, Source};
use crate::error::Result;
use crate::network::{
    Activation, Attention, Block, Head, Mlp, Network, Norm, NormKind, Qkv, Residual, RopeTable,
};
use crate::rope::{self, Rope, RopeOptions, RopeParams};
use crate::table::ModuleTable;
use crate::weights::WeightStore;

/// The options of a Llama-like decoder, as an architecture's configuration sets them.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_positions: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q, k and v (Llama's `attention_bias`, Qwen2's always-on biases).
    pub qkv_bias: bool,
    /// A bias on o_proj (Llama's `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// One `qkv_proj` and one `gate_up_proj` (Phi-3).
    pub fused: bool,
    /// Per-head RMSNorms `q_norm` / `k_norm` (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma: norms multiply by `1 + w`, a norm after each branch (`post_attention_layernorm`,
    /// `pre_feedforward_layernorm` / `post_feedforward_layernorm`), embeddings times √hidden.
    pub gemma: bool,
    pub act: Activation,
    /// Multiplies q·kᵀ.
    pub scale: f32,
    pub attn_softcap: Option<f32>,
    pub logit_softcap: Option<f32>,
    /// Per layer: its sliding window and the index of its RoPE in `ropes`.
    pub layers: Vec<(Option<usize>, usize)>,
    pub ropes: Vec<Rope>,
    pub dropout: Vec<(&'static str, f64)>,
}

/// The network of `d`, its modules registered in `t` under their Hugging Face paths.
pub fn build(d: &Decoder, w: &WeightStore, t: &mut ModuleTable) -> Result<Network> {
    let (h, hd) = (d.hidden_size, d.head_dim);
    let (nh, nkv) = (d.heads, d.kv_heads);
    let rms = |t: &mut ModuleTable, path: &str, dim: usize| -> Result<Norm> {
        let mut n = t.norm(w, path, dim, false, d.rms_norm_eps, NormKind::Rms)?;
        n.unit_offset = d.gemma;
        Ok(n)
    };
    let embed = t.embedding(w, "model.embed_tokens", d.vocab_size, h)?;
    let mut blocks = Vec::with_capacity(d.layers.len());
    for (i, &(window, rope)) in d.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let (qb, mb) = (d.qkv_bias, d.mlp_bias);
        let attn_norm = rms(t, &format!("{p}.input_layernorm"), h)?;
        let qkv = if d.fused {
            Qkv::Fused(t.linear(w, &format!("{a}.qkv_proj"), h, (nh + 2 * nkv) * hd, qb)?)
        } else {
            Qkv::Separate {
                q: t.linear(w, &format!("{a}.q_proj"), h, nh * hd, qb)?,
                k: t.linear(w, &format!("{a}.k_proj"), h, nkv * hd, qb)?,
                v: t.linear(w, &format!("{a}.v_proj"), h, nkv * hd, qb)?,
            }
        };
        let o = t.linear(w, &format!("{a}.o_proj"), nh * hd, h, d.o_bias)?;
        let qk_norm = if d.qk_norm {
            Some((
                rms(t, &format!("{a}.q_norm"), hd)?,
                rms(t, &format!("{a}.k_norm"), hd)?,
            ))
        } else {
            None
        };
        let (attn_out_norm, mlp_norm, mlp_out_norm) = if d.gemma {
            (
                Some(rms(t, &format!("{p}.post_attention_layernorm"), h)?),
                rms(t, &format!("{p}.pre_feedforward_layernorm"), h)?,
                Some(rms(t, &format!("{p}.post_feedforward_layernorm"), h)?),
            )
        } else {
            (
                None,
                rms(t, &format!("{p}.post_attention_layernorm"), h)?,
                None,
            )
        };
        let ffn = d.intermediate_size;
        let mlp = if d.fused {
            Mlp::GatedFused {
                gate_up: t.linear(w, &format!("{p}.mlp.gate_up_proj"), h, 2 * ffn, mb)?,
                down: t.linear(w, &format!("{p}.mlp.down_proj"), ffn, h, mb)?,
                ffn,
                act: d.act,
            }
        } else {
            Mlp::Gated {
                gate: t.linear(w, &format!("{p}.mlp.gate_proj"), h, ffn, mb)?,
                up: t.linear(w, &format!("{p}.mlp.up_proj"), h, ffn, mb)?,
                down: t.linear(w, &format!("{p}.mlp.down_proj"), ffn, h, mb)?,
                act: d.act,
            }
        };
        blocks.push(Block {
            attn_norm,
            attn: Attention {
                qkv,
                o,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                rope: Some(rope),
                scale: d.scale,
                window,
                qk_norm,
                softcap: d.attn_softcap,
            },
            attn_out_norm,
            mlp_norm,
            mlp,
            mlp_out_norm,
            residual: Residual::PreNorm,
        });
    }
    let final_norm = rms(t, "model.norm", h)?;
    // A tied checkpoint has no lm_head.weight; an untied one must have it.
    let tied_to = d.tie_word_embeddings.then_some(embed);
    let head = t.head(w, "lm_head", h, d.vocab_size, tied_to)?;
    Ok(Network {
        model_type: d.model_type.clone(),
        vocab_size: d.vocab_size,
        hidden_size: h,
        max_positions: d.max_positions,
        embed,
        embed_dim: h,
        project_in: None,
        positions: None,
        blocks,
        final_norm: Some(final_norm),
        project_out: None,
        head: Head {
            module: head,
            tied_to,
        },
        // transformers rounds √hidden to the activations' dtype (f32) before multiplying
        embed_scale: d.gemma.then(|| (h as f64).sqrt() as f32),
        logit_softcap: d.logit_softcap,
        ropes: d
            .ropes
            .iter()
            .map(|r| RopeTable::new(r.clone(), hd))
            .collect(),
        dropout: d.dropout.clone(),
    })
}

/// `num_attention_heads`, `num_key_value_heads` (absent: `kv_default`, or the query heads)
/// and `head_dim` (absent: `head_dim_default`, or hidden_size / heads), checked.
pub fn read_heads(
    r: &mut ConfigReader,
    hidden_size: usize,
    kv_default: Option<usize>,
    head_dim_default: Option<usize>,
) -> Result<(usize, usize, usize)> {
    let nh = r.usize("num_attention_heads")?;
    let nkv = match (r.opt_usize("num_key_value_heads")?, kv_default) {
        (Some(n), _) => n,
        (None, Some(d)) => {
            r.record("num_key_value_heads", d, Source::Default);
            d
        }
        (None, None) => {
            r.record(
                "num_key_value_heads",
                nh,
                Source::Derived("= num_attention_heads".into()),
            );
            nh
        }
    };
    if nh % nkv != 0 {
        return Err(r.bad(
            "num_key_value_heads",
            format!("= {nkv} must divide num_attention_heads = {nh}"),
        ));
    }
    let hd = match (r.opt_usize("head_dim")?, head_dim_default) {
        (Some(d), _) => d,
        (None, Some(d)) => {
            r.record("head_dim", d, Source::Default);
            d
        }
        (None, None) => {
            let d = hidden_size / nh;
            r.record(
                "head_dim",
                d,
                Source::Derived("= hidden_size / num_attention_heads".into()),
            );
            d
        }
    };
    if hd == 0 || hd % 2 != 0 {
        return Err(r.bad(
            "head_dim",
            format!("= {hd} must be even and positive for RoPE"),
        ));
    }
    Ok((nh, nkv, hd))
}

/// The activation named by `key` (default `default`), one of `allowed`.
pub fn read_act(
    r: &mut ConfigReader,
    key: &str,
    default: &str,
    allowed: &[(&str, Activation)],
) -> Result<Activation> {
    let name = r.str_or(key, default)?;
    match allowed.iter().find(|(n, _)| *n == name) {
        Some((_, a)) => Ok(*a),
        None => {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            Err(r.unsupported(
                key,
                &Value::String(name),
                &format!(
                    "this architecture's MLP is implemented with {}",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// `rms_norm_eps` (default `default`), not negative.
pub fn read_eps(r: &mut ConfigReader, default: f64) -> Result<f64> {
    let eps = r.f64_or("rms_norm_eps", default)?;
    if eps < 0.0 {
        return Err(r.bad("rms_norm_eps", format!("= {eps} must not be negative")));
    }
    Ok(eps)
}

/// A dropout probability in [0, 1) (default 0).
pub fn read_dropout(r: &mut ConfigReader, key: &str) -> Result<f64> {
    let p = r.f64_or(key, 0.0)?;
    if !(0.0..1.0).contains(&p) {
        return Err(r.bad(key, format!("= {p} must be in [0, 1)")));
    }
    Ok(p)
}

/// Which layers slide: `layer_types` from the file (each `full_attention` or
/// `sliding_attention`), else `default(layer)` as the class derives it.
pub fn read_layer_types(
    r: &mut ConfigReader,
    layers: usize,
    default: impl Fn(usize) -> bool,
    default_note: &str,
) -> Result<Vec<bool>> {
    let Some(v) = r.raw("layer_types")? else {
        let sliding: Vec<bool> = (0..layers).map(default).collect();
        r.record(
            "layer_types",
            describe_layer_types(&sliding),
            Source::Derived(default_note.into()),
        );
        return Ok(sliding);
    };
    let list = v
        .as_array()
        .ok_or_else(|| r.bad("layer_types", "must be a list of strings"))?;
    if list.len() != layers {
        return Err(r.bad(
            "layer_types",
            format!("has {} entries for {layers} layers", list.len()),
        ));
    }
    let mut sliding = Vec::with_capacity(layers);
    for t in list {
        sliding.push(match t.as_str() {
            Some("full_attention") => false,
            Some("sliding_attention") => true,
            _ => {
                return Err(r.unsupported(
                    "layer_types",
                    t,
                    "layers are `full_attention` or `sliding_attention` here",
                ))
            }
        });
    }
    r.record(
        "layer_types",
        describe_layer_types(&sliding),
        Source::File("layer_types".into()),
    );
    Ok(sliding)
}

fn describe_layer_types(sliding: &[bool]) -> String {
    let s: Vec<String> = sliding
        .iter()
        .enumerate()
        .filter(|(_, s)| **s)
        .map(|(i, _)| i.to_string())
        .collect();
    if s.is_empty() {
        "all full_attention".into()
    } else if s.len() == sliding.len() {
        "all sliding_attention".into()
    } else {
        format!("sliding_attention in layers {}", s.join(", "))
    }
}

/// The one RoPE of an architecture whose layers all share it: refused when the file gives one
/// per layer type, and LongRoPE's factor lists must cover every frequency of the head (a
/// shorter list would leave dimensions unrotated).
pub fn read_single_rope(
    r: &mut ConfigReader,
    cfg: &Value,
    class: &str,
    opts: &RopeOptions,
    head_dim: usize,
) -> Result<Rope> {
    let rope = match rope::read(r, opts)? {
        RopeParams::Global(rope) => rope,
        RopeParams::PerLayerType(_) => {
            let v = cfg.get("rope_parameters").cloned().unwrap_or_default();
            return Err(r.unsupported(
                "rope_parameters",
                &v,
                &format!("a RoPE per layer type is for models whose layers differ; transformers' {class} takes one RoPE for every layer"),
            ));
        }
    };
    if let Some(n) = rope.factor_len() {
        if n != head_dim / 2 {
            let key = if cfg.get("rope_scaling").is_some_and(|v| !v.is_null()) {
                "rope_scaling"
            } else {
                "rope_parameters"
            };
            return Err(r.bad(
                key,
                format!(
                    "has short/long factors of {n} entries; head_dim {head_dim} needs {}",
                    head_dim / 2
                ),
            ));
        }
    }
    Ok(rope)
}
