//! The Llama family — Llama 2/3, SmolLM2, TinyLlama (`model_type: llama`) and Mistral
//! (`model_type: mistral`) — as transformers' `LlamaForCausalLM` / `MistralForCausalLM`
//! compute it.

use serde_json::Value;

use crate::config::{
    no_effect, null, null_or_one, only, read, ConfigReader, Key, Source, Understood,
};
use crate::error::Result;
use crate::rope::{self, Rope, RopeOptions, RopeParams};

/// `LlamaConfig`'s keys (transformers 4.57 and 5.25).
pub const LLAMA_KEYS: &[Key] = &[
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
    read("mlp_bias"),
    read("attention_dropout"),
    read("layer_types"),
    only(
        "sliding_window",
        null,
        "null",
        "transformers' Llama attends to every position in a forward pass but sizes its generation cache by `sliding_window`, so the two disagree; a model trained with a sliding window is a `mistral`",
    ),
    only(
        "use_sliding_window",
        crate::config::null_or_false,
        "false",
        "transformers' Llama has no sliding-window attention",
    ),
    only(
        "pretraining_tp",
        null_or_one,
        "1",
        "tensor-parallel slicing of the projections is not implemented (transformers ignores it since 4.40)",
    ),
    no_effect("initializer_range"),
];

/// `MistralConfig`'s keys (transformers 4.57 and 5.25): Llama's without biases, with a
/// sliding window on every layer (default 4096).
pub const MISTRAL_KEYS: &[Key] = &[
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
    read("sliding_window"),
    read("attention_dropout"),
    read("layer_types"),
    no_effect("initializer_range"),
];

/// A Llama-family configuration as graft understood it.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: Rope,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// Every layer attends to at most this many positions (Mistral).
    pub sliding_window: Option<usize>,
    /// Dropout on the attention probabilities in training (transformers' training mode).
    pub attention_dropout: f64,
}

/// Reads a `llama` or `mistral` configuration, fail-closed.
pub fn read_config(cfg: &Value, source_name: &str) -> Result<(LlamaConfig, Understood)> {
    let mistral = cfg.get("model_type").and_then(Value::as_str) == Some("mistral");
    let (class, keys) = if mistral {
        ("MistralConfig", MISTRAL_KEYS)
    } else {
        ("LlamaConfig", LLAMA_KEYS)
    };
    let mut r = ConfigReader::new(cfg, source_name, class, keys)?;
    r.str_or("model_type", "llama")?;
    r.dtype()?;
    let vocab_size = r.usize("vocab_size")?;
    let hidden_size = r.usize("hidden_size")?;
    let intermediate_size = r.usize("intermediate_size")?;
    let num_hidden_layers = r.usize("num_hidden_layers")?;
    let num_attention_heads = r.usize("num_attention_heads")?;
    // LlamaConfig defaults the KV heads to the query heads; MistralConfig to 8.
    let num_key_value_heads = if mistral {
        r.usize_or("num_key_value_heads", 8)?
    } else {
        match r.opt_usize("num_key_value_heads")? {
            Some(n) => n,
            None => {
                r.record(
                    "num_key_value_heads",
                    num_attention_heads,
                    Source::Derived("= num_attention_heads".into()),
                );
                num_attention_heads
            }
        }
    };
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(r.bad(
            "num_key_value_heads",
            format!(
                "= {num_key_value_heads} must divide num_attention_heads = {num_attention_heads}"
            ),
        ));
    }
    let head_dim = match r.opt_usize("head_dim")? {
        Some(d) => d,
        None => {
            let d = hidden_size / num_attention_heads;
            r.record(
                "head_dim",
                d,
                Source::Derived("= hidden_size / num_attention_heads".into()),
            );
            d
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(r.bad(
            "head_dim",
            format!("= {head_dim} must be even and positive for RoPE"),
        ));
    }
    let act = r.str_or("hidden_act", "silu")?;
    if act != "silu" && act != "swish" {
        return Err(r.unsupported(
            "hidden_act",
            &Value::String(act),
            "graft implements the SiLU-gated MLP (\"silu\") of the Llama family",
        ));
    }
    let max_position_embeddings = r.usize_or(
        "max_position_embeddings",
        if mistral { 4096 * 32 } else { 2048 },
    )?;
    let rms_norm_eps = r.f64_or("rms_norm_eps", 1e-6)?;
    if rms_norm_eps < 0.0 {
        return Err(r.bad(
            "rms_norm_eps",
            format!("= {rms_norm_eps} must not be negative"),
        ));
    }
    let tie_word_embeddings = r.bool_or("tie_word_embeddings", false)?;
    let (attention_bias, mlp_bias) = if mistral {
        (false, false)
    } else {
        (
            r.bool_or("attention_bias", false)?,
            r.bool_or("mlp_bias", false)?,
        )
    };
    let sliding_window = if mistral {
        // MistralConfig's default is 4096; an explicit null turns the window off.
        match cfg.get("sliding_window") {
            None => {
                r.raw("sliding_window")?;
                r.record("sliding_window", 4096, Source::Default);
                Some(4096)
            }
            Some(_) => {
                let w = r.opt_usize("sliding_window")?;
                if w.is_none() {
                    r.record(
                        "sliding_window",
                        "none",
                        Source::File("sliding_window".into()),
                    );
                }
                w
            }
        }
    } else {
        None
    };
    let attention_dropout = r.f64_or("attention_dropout", 0.0)?;
    if !(0.0..1.0).contains(&attention_dropout) {
        return Err(r.bad(
            "attention_dropout",
            format!("= {attention_dropout} must be in [0, 1)"),
        ));
    }
    check_layer_types(&mut r, num_hidden_layers, sliding_window.is_some())?;
    let rope = match rope::read(
        &mut r,
        &RopeOptions {
            default_theta: 10000.0,
        },
    )? {
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
    let c = LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope,
        max_position_embeddings,
        tie_word_embeddings,
        attention_bias,
        mlp_bias,
        sliding_window,
        attention_dropout,
    };
    Ok((c, r.finish()))
}

/// `layer_types` must say what transformers' Llama/Mistral do anyway: every layer full
/// attention (Llama, Mistral without a window) or every layer sliding (Mistral with one).
fn check_layer_types(r: &mut ConfigReader, layers: usize, sliding: bool) -> Result<()> {
    let Some(v) = r.raw("layer_types")? else {
        return Ok(());
    };
    let want = if sliding {
        "sliding_attention"
    } else {
        "full_attention"
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
    if let Some(other) = list.iter().find(|t| t.as_str() != Some(want)) {
        return Err(r.unsupported(
            "layer_types",
            v,
            &format!(
                "this architecture's layers are all `{want}` here (transformers ignores `layer_types` for it), so an entry {} would not mean what it says",
                crate::config::show(other)
            ),
        ));
    }
    r.record(
        "layer_types",
        format!("all {want}"),
        Source::File("layer_types".into()),
    );
    Ok(())
}
