//! Phi-3 / Phi-3.5 (`model_type: phi3`), as transformers' `Phi3ForCausalLM` computes it: one
//! `qkv_proj` and one `gate_up_proj` (PEFT adapts each fused module as one Linear), no biases,
//! a sliding window on every layer when `sliding_window` is set, and LongRoPE (`su`) scaling.

use serde_json::{json, Value};

use super::decoder::{self, read_act, read_dropout, read_eps, read_heads, Decoder};
use super::gguf_names::{self, Meta};
use super::{Architecture, GgufSupport};
use crate::config::{no_effect, read, ConfigReader, Key, Source, Understood};
use crate::error::{Error, Result};
use crate::gguf_weights::GgufFile;
use crate::network::{Activation, Network};
use crate::rope::RopeOptions;
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
    let rope = decoder::read_single_rope(
        &mut r,
        cfg,
        "Phi3Config",
        &RopeOptions {
            default_theta: 10000.0,
            max_positions,
            default_original_max: Some(4096),
        },
        head_dim,
    )?;
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

/// The `config.json` equivalent of a `phi3` GGUF: LongRoPE from the `rope_factors_long` /
/// `rope_factors_short` tensors, `rope.scaling.attn_factor` and
/// `rope.scaling.original_context_length`; the sliding window where it is not 0.
pub fn gguf_config(file: &GgufFile) -> Result<Value> {
    let m = Meta::new(&file.header)?;
    let mut cfg = m.common("phi3")?;
    cfg.insert(
        "rope_theta".into(),
        json!(m.opt_f("rope.freq_base").unwrap_or(10000.0)),
    );
    let hd = cfg.get("head_dim").and_then(Value::as_u64).unwrap_or(0);
    if let Some(rd) = m.opt_u("rope.dimension_count") {
        if rd != hd {
            return Err(Error::Gguf(format!(
                "`{}` = {rd}: RoPE over part of the head (of {hd}) is not implemented",
                m.key("rope.dimension_count")
            )));
        }
    }
    let window = m.opt_u("attention.sliding_window").filter(|w| *w > 0);
    cfg.insert("sliding_window".into(), json!(window));
    let factors = |name: &str| -> Result<Option<Vec<f32>>> {
        let Some(t) = file.header.tensors.iter().find(|t| t.name == name) else {
            return Ok(None);
        };
        let n = t.dims.first().copied().unwrap_or(0) as usize;
        let q = graft_quant::QMatrix::from_raw(
            t.qtype,
            1,
            n,
            file.header.tensor_bytes(&file.bytes, t).to_vec(),
            vec![],
        )
        .map_err(|e| Error::Gguf(format!("tensor `{name}`: {e}")))?;
        Ok(Some(q.dequantize()))
    };
    let long = factors("rope_factors_long.weight")?;
    let short = factors("rope_factors_short.weight")?;
    match (long, short) {
        (Some(l), Some(s)) => {
            let orig = m.u("rope.scaling.original_context_length")?;
            let mut rope = json!({"rope_type": "longrope", "long_factor": l, "short_factor": s,
                                  "original_max_position_embeddings": orig});
            if let Some(a) = m.opt_f("rope.scaling.attn_factor") {
                rope["attention_factor"] = json!(a);
            }
            cfg.insert("rope_scaling".into(), rope);
        }
        (None, None) => {}
        _ => {
            return Err(Error::Gguf(
                "only one of rope_factors_long / rope_factors_short is present".into(),
            ))
        }
    }
    Ok(Value::Object(cfg))
}

fn gguf_tensor_name(gguf: &str) -> Option<String> {
    gguf_names::hf_name(gguf, gguf_names::PHI3_BLOCK)
}

/// Phi-3 in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &["phi3"],
    describe,
    gguf: Some(GgufSupport {
        architectures: &["phi3"],
        config: gguf_config,
        tensor_name: gguf_tensor_name,
        permuted_heads: |_, _| None,
        config_tensors: &["rope_factors_long.weight", "rope_factors_short.weight"],
        norm_shift: 0.0,
    }),
};
