//! Phi-3 / Phi-3.5 (`model_type: phi3`), as transformers' `Phi3ForCausalLM` computes it: one
//! `qkv_proj` and one `gate_up_proj` (PEFT adapts each fused module as one Linear), no biases,
//! a sliding window on every layer when `sliding_window` is set, and LongRoPE (`su`) scaling.

use serde_json::Value;

use super::decoder::{self, read_act, read_dropout, read_eps, read_heads, Decoder};
use super::Architecture;
use crate::config::{no_effect, read, ConfigReader, Key, Source, Understood};
use crate::error::Result;
use crate::network::{Activation, Network};
use crate::rope::{self, RopeOptions, RopeParams};
use crate::table::ModuleTable;
use crate::weights::WeightStore;

/// `Phi3Config`'s keys (transformers 4.57 and 5.25).
pub const PHI3_KEYS: &[Key] = &[
    read("vocab_size"),
    read("hidden_size"),
    read("intermediate_size"),
    read("num_hidden_layers"),
    read("num_attention_heads"),
    read("num_key_value_heads"),
    read("head_dim"),
    read("hidden_act"),
    read("max_position_embeddings"),
    read("original_max_position_embeddings"),
    read("rms_norm_eps"),
    read("tie_word_embeddings"),
    read("rope_theta"),
    read("rope_scaling"),
    read("rope_parameters"),
    read("partial_rotary_factor"),
    read("sliding_window"),
    read("attention_dropout"),
    read("resid_pdrop"),
    read("embd_pdrop"),
    no_effect("initializer_range"),
];

/// The network of a `phi3` model.
pub fn describe(
    cfg: &Value,
    source_name: &str,
    w: &WeightStore,
    t: &mut ModuleTable,
) -> Result<(Network, Understood)> {
    let mut r = ConfigReader::new(cfg, source_name, "Phi3Config", PHI3_KEYS)?;
    let model_type = r.str_or("model_type", "phi3")?;
    r.dtype()?;
    let vocab_size = r.usize("vocab_size")?;
    let hidden_size = r.usize("hidden_size")?;
    let intermediate_size = r.usize("intermediate_size")?;
    let layers = r.usize("num_hidden_layers")?;
    let (heads, kv_heads, head_dim) = read_heads(&mut r, hidden_size, None, None)?;
    let act = read_act(
        &mut r,
        "hidden_act",
        "silu",
        &[("silu", Activation::Silu), ("swish", Activation::Silu)],
    )?;
    let max_positions = r.usize_or("max_position_embeddings", 4096)?;
    let eps = read_eps(&mut r, 1e-5)?;
    let tie = r.bool_or("tie_word_embeddings", false)?;
    let window = r.opt_usize("sliding_window")?;
    r.record(
        "sliding_window",
        window.map_or("none".into(), |w| format!("{w} on every layer")),
        if window.is_some() {
            Source::File("sliding_window".into())
        } else {
            Source::Default
        },
    );
    let dropout = vec![
        (
            "attention_dropout",
            read_dropout(&mut r, "attention_dropout")?,
        ),
        ("resid_pdrop", read_dropout(&mut r, "resid_pdrop")?),
        ("embd_pdrop", read_dropout(&mut r, "embd_pdrop")?),
    ];
    let rope = match rope::read(
        &mut r,
        &RopeOptions {
            default_theta: 10000.0,
            max_positions,
            default_original_max: Some(4096),
        },
    )? {
        RopeParams::Global(rope) => rope,
        RopeParams::PerLayerType(_) => {
            let v = cfg.get("rope_parameters").cloned().unwrap_or_default();
            return Err(r.unsupported(
                "rope_parameters",
                &v,
                "transformers' Phi3Config takes one RoPE for every layer",
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
    // read for the record (LongRoPE took it from the file already)
    let _ = r.raw("original_max_position_embeddings")?;
    let d = Decoder {
        model_type,
        vocab_size,
        hidden_size,
        intermediate_size,
        heads,
        kv_heads,
        head_dim,
        rms_norm_eps: eps,
        max_positions,
        tie_word_embeddings: tie,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        fused: true,
        qk_norm: false,
        gemma: false,
        act,
        scale: 1.0 / (head_dim as f32).sqrt(),
        attn_softcap: None,
        logit_softcap: None,
        layers: vec![(window, 0); layers],
        ropes: vec![rope],
        dropout,
    };
    let understood = r.finish();
    Ok((decoder::build(&d, w, t)?, understood))
}

/// Phi-3 in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &["phi3"],
    describe,
    gguf: None,
};
