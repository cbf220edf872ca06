//! Qwen2 / Qwen2.5 (`model_type: qwen2`: biases on q, k and v) and Qwen3 (`qwen3`: per-head
//! RMSNorms on q and k, biases by `attention_bias`), as transformers' `Qwen2ForCausalLM` /
//! `Qwen3ForCausalLM` compute them.

use serde_json::{json, Value};

use super::decoder::{
    self, read_act, read_dropout, read_eps, read_heads, read_layer_types, Decoder,
};
use super::gguf_names::{self, Meta};
use super::{Architecture, GgufSupport};
use crate::config::{no_effect, read, ConfigReader, Key, Source, Understood};
use crate::error::{Error, Result};
use crate::gguf_weights::GgufFile;
use crate::network::{Activation, Network};
use crate::rope::RopeOptions;
use crate::table::ModuleTable;
use crate::weights::WeightStore;

/// `Qwen2Config`'s and `Qwen3Config`'s keys (transformers 4.57 and 5.25).
pub const QWEN_KEYS: &[Key] = &[
    read("vocab_size"),
    read("hidden_size"),
    read("intermediate_size"),
    read("num_hidden_layers"),
    read("num_attention_heads"),
    read("num_key_value_heads"),
    read("head_dim"),
    read("hidden_act"),
    read("max_position_embeddings"),
    read("rms_norm_eps"),
    read("tie_word_embeddings"),
    read("rope_theta"),
    read("rope_scaling"),
    read("rope_parameters"),
    read("partial_rotary_factor"),
    read("original_max_position_embeddings"),
    read("attention_bias"),
    read("use_sliding_window"),
    read("sliding_window"),
    read("max_window_layers"),
    read("layer_types"),
    read("attention_dropout"),
    no_effect("initializer_range"),
];

/// The network of a `qwen2` or `qwen3` model.
pub fn describe(
    cfg: &Value,
    source_name: &str,
    w: &WeightStore,
    t: &mut ModuleTable,
) -> Result<(Network, Understood)> {
    let qwen3 = cfg.get("model_type").and_then(Value::as_str) == Some("qwen3");
    let class = if qwen3 { "Qwen3Config" } else { "Qwen2Config" };
    let mut r = ConfigReader::new(cfg, source_name, class, QWEN_KEYS)?;
    let model_type = r.str_or("model_type", "qwen2")?;
    r.dtype()?;
    let vocab_size = r.usize("vocab_size")?;
    let hidden_size = r.usize("hidden_size")?;
    let intermediate_size = r.usize("intermediate_size")?;
    let layers = r.usize("num_hidden_layers")?;
    // Qwen3Config defaults head_dim to 128; Qwen2 derives it
    let (heads, kv_heads, head_dim) = read_heads(&mut r, hidden_size, None, qwen3.then_some(128))?;
    let act = read_act(
        &mut r,
        "hidden_act",
        "silu",
        &[("silu", Activation::Silu), ("swish", Activation::Silu)],
    )?;
    let max_positions = r.usize_or("max_position_embeddings", 32768)?;
    let eps = read_eps(&mut r, 1e-6)?;
    let tie = r.bool_or("tie_word_embeddings", false)?;
    // Qwen2 always has q/k/v biases and none on o_proj; Qwen3 follows `attention_bias`.
    let (qkv_bias, o_bias) = if qwen3 {
        let b = r.bool_or("attention_bias", false)?;
        (b, b)
    } else {
        // Qwen2Config has no such key: transformers keeps it and reads nothing from it
        if r.raw("attention_bias")?.is_some() {
            r.note_unused("attention_bias");
        }
        (true, false)
    };
    // The window applies only with use_sliding_window; then layers from max_window_layers on
    // slide (unless layer_types says which).
    let use_sw = r.bool_or("use_sliding_window", false)?;
    let window = if use_sw {
        Some(r.usize_or("sliding_window", 4096)?)
    } else {
        let _ = r.raw("sliding_window")?;
        None
    };
    let max_window_layers = r.usize_or("max_window_layers", 28)?;
    let sliding = read_layer_types(
        &mut r,
        layers,
        |i| window.is_some() && i >= max_window_layers,
        "use_sliding_window, sliding_window, max_window_layers",
    )?;
    if window.is_none() && sliding.iter().any(|s| *s) {
        let v = cfg.get("layer_types").cloned().unwrap_or_default();
        return Err(r.unsupported(
            "layer_types",
            &v,
            "names sliding_attention layers while use_sliding_window is off (transformers then has no window size for them)",
        ));
    }
    if let Some(w) = window {
        r.record("sliding_window", w, Source::File("sliding_window".into()));
    }
    let attention_dropout = read_dropout(&mut r, "attention_dropout")?;
    let rope = decoder::read_single_rope(
        &mut r,
        cfg,
        class,
        &RopeOptions {
            default_theta: 10000.0,
            max_positions,
            default_original_max: None,
        },
        head_dim,
    )?;
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
        qkv_bias,
        o_bias,
        mlp_bias: false,
        fused: false,
        qk_norm: qwen3,
        gemma: false,
        act,
        scale: 1.0 / (head_dim as f32).sqrt(),
        attn_softcap: None,
        logit_softcap: None,
        layers: sliding
            .iter()
            .map(|s| (if *s { window } else { None }, 0))
            .collect(),
        ropes: vec![rope],
        dropout: vec![("attention_dropout", attention_dropout)],
    };
    let understood = r.finish();
    Ok((decoder::build(&d, w, t)?, understood))
}

/// The `config.json` equivalent of a `qwen2` / `qwen3` GGUF.
pub fn gguf_config(file: &GgufFile) -> Result<Value> {
    let m = Meta::new(&file.header)?;
    let qwen3 = m.arch == "qwen3";
    let mut cfg = m.common(m.arch)?;
    cfg.insert(
        "rope_theta".into(),
        json!(m.opt_f("rope.freq_base").unwrap_or(10000.0)),
    );
    if let Some(s) = m.rope_scaling()? {
        cfg.insert("rope_scaling".into(), s);
    }
    if qwen3 {
        cfg.insert(
            "attention_bias".into(),
            json!(m.has_tensor_ending("attn_q.bias")),
        );
    } else if !m.has_tensor_ending("attn_q.bias") {
        return Err(Error::Gguf(
            "a `qwen2` GGUF without q/k/v biases (blk.N.attn_q.bias): Qwen2 always has them".into(),
        ));
    }
    if let Some(sw) = m.opt_u("attention.sliding_window").filter(|w| *w > 0) {
        return Err(Error::Gguf(format!(
            "`{}` = {sw}: llama.cpp's {} has no sliding window, so graft does not read one",
            m.key("attention.sliding_window"),
            m.arch
        )));
    }
    Ok(Value::Object(cfg))
}

fn gguf_tensor_name(gguf: &str) -> Option<String> {
    gguf_names::hf_name(gguf, gguf_names::QWEN_BLOCK)
}

/// Qwen2/2.5 and Qwen3 in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &["qwen2", "qwen3"],
    describe,
    gguf: Some(GgufSupport {
        architectures: &["qwen2", "qwen3"],
        config: gguf_config,
        tensor_name: gguf_tensor_name,
        permuted_heads: |_, _| None,
        config_tensors: &[],
        norm_shift: 0.0,
    }),
};
