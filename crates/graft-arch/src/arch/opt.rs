//! OPT (facebook/opt-*), as transformers' `OPTForCausalLM` computes it: learned positions with
//! offset 2, pre- or post-layer-norm, and project_in/project_out when `word_embed_proj_dim`
//! differs from `hidden_size` (opt-350m).

use serde_json::Value;

use super::Architecture;
use crate::config::{no_effect, null_or_true, only, read, ConfigReader, Key, Source, Understood};
use crate::error::Result;
use crate::network::{
    Activation, Attention, Block, Head, Mlp, Network, NormKind, Positions, Qkv, Residual,
};
use crate::table::ModuleTable;
use crate::weights::WeightStore;

/// `OPTConfig`'s keys (transformers 4.57 and 5.25).
pub const OPT_KEYS: &[Key] = &[
    read("vocab_size"),
    read("hidden_size"),
    read("num_hidden_layers"),
    read("ffn_dim"),
    read("max_position_embeddings"),
    read("do_layer_norm_before"),
    read("_remove_final_layer_norm"),
    read("word_embed_proj_dim"),
    read("num_attention_heads"),
    read("activation_function"),
    read("enable_bias"),
    read("tie_word_embeddings"),
    read("dropout"),
    read("attention_dropout"),
    read("layerdrop"),
    only(
        "layer_norm_elementwise_affine",
        null_or_true,
        "true",
        "layer norms without weight and bias are not implemented",
    ),
    no_effect("init_std"),
];

/// Feed-forward activations of OPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptActivation {
    Relu,
    /// transformers' `"gelu"`: the exact (erf) GELU.
    Gelu,
}

/// An OPT configuration as graft understood it.
#[derive(Debug, Clone)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub word_embed_proj_dim: usize,
    pub ffn_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub do_layer_norm_before: bool,
    pub remove_final_layer_norm: bool,
    pub enable_bias: bool,
    pub activation: OptActivation,
    pub tie_word_embeddings: bool,
    /// Training-mode dropouts: after attention and the MLP, on the attention probabilities,
    /// and whole layers skipped.
    pub dropout: f64,
    pub attention_dropout: f64,
    pub layerdrop: f64,
}

/// Reads an `opt` configuration, fail-closed.
pub fn read_config(cfg: &Value, source_name: &str) -> Result<(OptConfig, Understood)> {
    let mut r = ConfigReader::new(cfg, source_name, "OPTConfig", OPT_KEYS)?;
    r.str_or("model_type", "opt")?;
    r.dtype()?;
    let hidden_size = r.usize("hidden_size")?;
    let num_attention_heads = r.usize("num_attention_heads")?;
    if hidden_size % num_attention_heads != 0 {
        return Err(r.bad(
            "num_attention_heads",
            format!("= {num_attention_heads} must divide hidden_size = {hidden_size}"),
        ));
    }
    let activation = match r.str_or("activation_function", "relu")?.as_str() {
        "relu" => OptActivation::Relu,
        "gelu" => OptActivation::Gelu,
        other => {
            return Err(r.unsupported(
                "activation_function",
                &Value::String(other.into()),
                "graft implements \"relu\" and \"gelu\" (erf) for OPT",
            ))
        }
    };
    let word_embed_proj_dim = match r.opt_usize("word_embed_proj_dim")? {
        Some(d) => d,
        None => {
            r.record(
                "word_embed_proj_dim",
                hidden_size,
                Source::Derived("= hidden_size".into()),
            );
            hidden_size
        }
    };
    let prob = |r: &mut ConfigReader, k: &str, default: f64| -> Result<f64> {
        let p = r.f64_or(k, default)?;
        if !(0.0..1.0).contains(&p) {
            return Err(r.bad(k, format!("= {p} must be in [0, 1)")));
        }
        Ok(p)
    };
    let c = OptConfig {
        vocab_size: r.usize("vocab_size")?,
        hidden_size,
        word_embed_proj_dim,
        ffn_dim: r.usize("ffn_dim")?,
        num_hidden_layers: r.usize("num_hidden_layers")?,
        num_attention_heads,
        max_position_embeddings: r.usize_or("max_position_embeddings", 2048)?,
        do_layer_norm_before: r.bool_or("do_layer_norm_before", true)?,
        remove_final_layer_norm: r.bool_or("_remove_final_layer_norm", false)?,
        enable_bias: r.bool_or("enable_bias", true)?,
        activation,
        tie_word_embeddings: r.bool_or("tie_word_embeddings", true)?,
        dropout: prob(&mut r, "dropout", 0.1)?,
        attention_dropout: prob(&mut r, "attention_dropout", 0.0)?,
        layerdrop: prob(&mut r, "layerdrop", 0.0)?,
    };
    Ok((c, r.finish()))
}

/// OPT's learned positional embedding skips its first two rows.
pub const POSITION_OFFSET: usize = 2;

/// The network of an `opt` model, its modules registered in `t` under their Hugging Face
/// paths (in transformers' `named_modules()` order).
pub fn describe(
    cfg: &Value,
    source_name: &str,
    w: &WeightStore,
    t: &mut ModuleTable,
) -> Result<(Network, Understood)> {
    let (c, understood) = read_config(cfg, source_name)?;
    let (h, e) = (c.hidden_size, c.word_embed_proj_dim);
    let p = "model.decoder";
    // nn.LayerNorm's default; OPTConfig has no key for it.
    let eps = 1e-5;
    let ln = |t: &mut ModuleTable, path: &str| t.norm(w, path, h, true, eps, NormKind::Layer);
    let embed = t.embedding(w, &format!("{p}.embed_tokens"), c.vocab_size, e)?;
    let positions = t.embedding(
        w,
        &format!("{p}.embed_positions"),
        c.max_position_embeddings + POSITION_OFFSET,
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
    let final_norm = if c.do_layer_norm_before && !c.remove_final_layer_norm {
        Some(ln(t, &format!("{p}.final_layer_norm"))?)
    } else {
        None
    };
    let act = match c.activation {
        OptActivation::Relu => Activation::Relu,
        OptActivation::Gelu => Activation::GeluErf,
    };
    let residual = if c.do_layer_norm_before {
        Residual::PreNorm
    } else {
        Residual::PostNorm
    };
    let nh = c.num_attention_heads;
    let hd = h / nh;
    let b = c.enable_bias;
    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let lp = format!("{p}.layers.{i}");
        let k = t.linear(w, &format!("{lp}.self_attn.k_proj"), h, h, b)?;
        let v = t.linear(w, &format!("{lp}.self_attn.v_proj"), h, h, b)?;
        let q = t.linear(w, &format!("{lp}.self_attn.q_proj"), h, h, b)?;
        let o = t.linear(w, &format!("{lp}.self_attn.out_proj"), h, h, b)?;
        let attn_norm = ln(t, &format!("{lp}.self_attn_layer_norm"))?;
        let fc1 = t.linear(w, &format!("{lp}.fc1"), h, c.ffn_dim, b)?;
        let fc2 = t.linear(w, &format!("{lp}.fc2"), c.ffn_dim, h, b)?;
        let mlp_norm = ln(t, &format!("{lp}.final_layer_norm"))?;
        blocks.push(Block {
            attn_norm,
            attn: Attention {
                qkv: Qkv::Separate { q, k, v },
                o,
                heads: nh,
                kv_heads: nh,
                head_dim: hd,
                rope: None,
                scale: 1.0 / (hd as f32).sqrt(),
                window: None,
                qk_norm: None,
                softcap: None,
            },
            attn_out_norm: None,
            mlp_norm,
            mlp: Mlp::Plain { fc1, fc2, act },
            mlp_out_norm: None,
            residual,
        });
    }
    let tied_to = c.tie_word_embeddings.then_some(embed);
    let head = t.head(w, "lm_head", e, c.vocab_size, tied_to)?;
    let net = Network {
        model_type: "opt".into(),
        vocab_size: c.vocab_size,
        hidden_size: h,
        max_positions: c.max_position_embeddings,
        embed,
        embed_dim: e,
        project_in,
        positions: Some(Positions {
            module: positions,
            offset: POSITION_OFFSET,
        }),
        blocks,
        final_norm,
        project_out,
        head: Head {
            module: head,
            tied_to,
        },
        embed_scale: None,
        logit_softcap: None,
        ropes: Vec::new(),
        dropout: vec![
            ("dropout", c.dropout),
            ("attention_dropout", c.attention_dropout),
            ("layerdrop", c.layerdrop),
        ],
    };
    Ok((net, understood))
}

/// OPT in the registry (no GGUF: llama.cpp does not convert it).
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &["opt"],
    describe,
    gguf: None,
};
