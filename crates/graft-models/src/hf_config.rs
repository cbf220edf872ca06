//! Hugging Face `config.json` for the architectures graft runs.

use serde_json::Value;

use crate::error::{Error, Result};

fn get_usize(c: &Value, k: &str) -> Result<usize> {
    let v = c.get(k).and_then(Value::as_u64).ok_or_else(|| {
        Error::BadModelConfig(format!("`{k}` is missing or not a positive integer"))
    })?;
    if v == 0 || v > 1 << 24 {
        return Err(Error::BadModelConfig(format!(
            "`{k}` = {v} is out of range"
        )));
    }
    Ok(v as usize)
}

fn opt_usize(c: &Value, k: &str) -> Result<Option<usize>> {
    match c.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => get_usize(c, k).map(Some),
    }
}

fn get_f64(c: &Value, k: &str, default: f64) -> Result<f64> {
    match c.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| Error::BadModelConfig(format!("`{k}` must be a number"))),
    }
}

fn get_bool(c: &Value, k: &str, default: bool) -> bool {
    c.get(k).and_then(Value::as_bool).unwrap_or(default)
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear(f64),
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Llama family (Llama 2/3, SmolLM2, TinyLlama, Mistral).
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
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    pub fn from_json(c: &Value) -> Result<Self> {
        let hidden_size = get_usize(c, "hidden_size")?;
        let num_attention_heads = get_usize(c, "num_attention_heads")?;
        let num_key_value_heads =
            opt_usize(c, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::BadModelConfig(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = opt_usize(c, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        if head_dim % 2 != 0 {
            return Err(Error::BadModelConfig(format!(
                "head_dim {head_dim} must be even for RoPE"
            )));
        }
        let act = c
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(Error::BadModelConfig(format!(
                "hidden_act `{act}` is not supported (silu only)"
            )));
        }
        let rope_scaling = match c.get("rope_scaling") {
            None | Some(Value::Null) => RopeScaling::None,
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match ty {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear(get_f64(s, "factor", 1.0)?),
                    "llama3" => RopeScaling::Llama3 {
                        factor: get_f64(s, "factor", 8.0)?,
                        low_freq_factor: get_f64(s, "low_freq_factor", 1.0)?,
                        high_freq_factor: get_f64(s, "high_freq_factor", 4.0)?,
                        original_max_position_embeddings: get_f64(
                            s,
                            "original_max_position_embeddings",
                            8192.0,
                        )?,
                    },
                    other => {
                        return Err(Error::BadModelConfig(format!(
                            "rope_scaling type `{other}` is not supported (default, linear, llama3)"
                        )))
                    }
                }
            }
        };
        Ok(LlamaConfig {
            vocab_size: get_usize(c, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(c, "intermediate_size")?,
            num_hidden_layers: get_usize(c, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(c, "rms_norm_eps", 1e-6)?,
            rope_theta: get_f64(c, "rope_theta", 10000.0)?,
            rope_scaling,
            max_position_embeddings: opt_usize(c, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: get_bool(c, "tie_word_embeddings", false),
            attention_bias: get_bool(c, "attention_bias", false),
            mlp_bias: get_bool(c, "mlp_bias", false),
            sliding_window: opt_usize(c, "sliding_window")?,
        })
    }
}

/// OPT (facebook/opt-*), including post-layer-norm and project_in/out (opt-350m).
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
    pub layer_norm_elementwise_affine: bool,
    pub activation: Activation,
    pub tie_word_embeddings: bool,
}

/// Feed-forward activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
}

impl OptConfig {
    pub fn from_json(c: &Value) -> Result<Self> {
        let hidden_size = get_usize(c, "hidden_size")?;
        let num_attention_heads = get_usize(c, "num_attention_heads")?;
        if hidden_size % num_attention_heads != 0 {
            return Err(Error::BadModelConfig(
                "hidden_size must be a multiple of num_attention_heads".into(),
            ));
        }
        let activation = match c
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("relu")
        {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            other => {
                return Err(Error::BadModelConfig(format!(
                    "activation_function `{other}` is not supported (relu, gelu)"
                )))
            }
        };
        Ok(OptConfig {
            vocab_size: get_usize(c, "vocab_size")?,
            hidden_size,
            word_embed_proj_dim: opt_usize(c, "word_embed_proj_dim")?.unwrap_or(hidden_size),
            ffn_dim: get_usize(c, "ffn_dim")?,
            num_hidden_layers: get_usize(c, "num_hidden_layers")?,
            num_attention_heads,
            max_position_embeddings: get_usize(c, "max_position_embeddings")?,
            do_layer_norm_before: get_bool(c, "do_layer_norm_before", true),
            remove_final_layer_norm: get_bool(c, "_remove_final_layer_norm", false),
            enable_bias: get_bool(c, "enable_bias", true),
            layer_norm_elementwise_affine: get_bool(c, "layer_norm_elementwise_affine", true),
            activation,
            tie_word_embeddings: get_bool(c, "tie_word_embeddings", true),
        })
    }
}
