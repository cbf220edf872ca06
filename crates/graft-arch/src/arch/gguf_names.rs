//! What llama.cpp's GGUF files of the Llama-like architectures share: tensor names
//! (`blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight`, with a per-architecture
//! table for the block) and the metadata keys every architecture writes
//! (`{arch}.embedding_length`, …), read into the `config.json` each architecture file reads.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// llama.cpp's block tensor → Hugging Face module, for the Llama family.
pub const LLAMA_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Qwen2 (as Llama) and Qwen3 (with per-head q/k norms).
pub const QWEN_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Gemma 2/3: a norm before and after each branch; llama.cpp's `ffn_norm` is the norm before
/// the MLP (`pre_feedforward_layernorm`), not Llama's `post_attention_layernorm`.
pub const GEMMA_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_output", "self_attn.o_proj"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// Phi-3: fused `attn_qkv`, and `ffn_up` holding the fused gate and up (`gate_up_proj`).
pub const PHI3_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_up", "mlp.gate_up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// A GGUF tensor name → its Hugging Face parameter name, with `block` mapping the block's
/// tensors.
pub fn hf_name(gguf: &str, block: &[(&str, &str)]) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = part.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let hf = block.iter().find(|(g, _)| *g == module)?.1;
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

fn meta_err(key: &str) -> Error {
    Error::Gguf(format!("metadata `{key}` is missing or has the wrong type"))
}

/// Reads `{arch}.*` metadata.
pub struct Meta<'a> {
    pub g: &'a Gguf,
    pub arch: &'a str,
}

impl<'a> Meta<'a> {
    pub fn new(g: &'a Gguf) -> Result<Self> {
        let arch = g
            .get_str("general.architecture")
            .ok_or_else(|| meta_err("general.architecture"))?;
        Ok(Meta { g, arch })
    }

    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// A required unsigned integer.
    pub fn u(&self, k: &str) -> Result<u64> {
        self.g
            .get_u64(&self.key(k))
            .ok_or_else(|| meta_err(&self.key(k)))
    }

    pub fn opt_u(&self, k: &str) -> Option<u64> {
        self.g.get_u64(&self.key(k))
    }

    pub fn opt_f(&self, k: &str) -> Option<f64> {
        self.g.get_f64(&self.key(k))
    }

    /// A required number.
    pub fn f(&self, k: &str) -> Result<f64> {
        self.opt_f(k).ok_or_else(|| meta_err(&self.key(k)))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.g.tensors.iter().any(|t| t.name == name)
    }

    pub fn has_tensor_ending(&self, suffix: &str) -> bool {
        self.g.tensors.iter().any(|t| t.name.ends_with(suffix))
    }

    /// The keys every Llama-like GGUF has, as `config.json` keys: sizes, heads, norm epsilon,
    /// RoPE base (llama.cpp's default 10000 when absent), context, tied head, token ids.
    pub fn common(&self, model_type: &str) -> Result<Map<String, Value>> {
        let hidden = self.u("embedding_length")?;
        let heads = self.u("attention.head_count")?;
        if heads == 0 {
            return Err(meta_err(&self.key("attention.head_count")));
        }
        let kv_heads = self.opt_u("attention.head_count_kv").unwrap_or(heads);
        let head_dim = self
            .opt_u("attention.key_length")
            .or(self.opt_u("rope.dimension_count"))
            .unwrap_or(hidden / heads);
        if let Some(v) = self.opt_u("attention.value_length") {
            if v != head_dim {
                return Err(Error::Gguf(format!(
                    "`{}` = {v} differs from the key length {head_dim}; graft's attention takes one head size",
                    self.key("attention.value_length")
                )));
            }
        }
        let vocab = match self.opt_u("vocab_size") {
            Some(v) => v,
            None => self
                .g
                .get("tokenizer.ggml.tokens")
                .and_then(|t| t.as_array())
                .map(|a| a.len() as u64)
                .ok_or_else(|| meta_err("tokenizer.ggml.tokens"))?,
        };
        let mut cfg = json!({
            "model_type": model_type,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self.u("feed_forward_length")?,
            "num_hidden_layers": self.u("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": self.f("attention.layer_norm_rms_epsilon")?,
            "max_position_embeddings": self.u("context_length")?,
            "tie_word_embeddings": !self.has_tensor("output.weight"),
        });
        if let Some(eos) = self.g.get_u64("tokenizer.ggml.eos_token_id") {
            cfg["eos_token_id"] = json!(eos);
        }
        if let Some(bos) = self.g.get_u64("tokenizer.ggml.bos_token_id") {
            cfg["bos_token_id"] = json!(bos);
        }
        match cfg {
            Value::Object(m) => Ok(m),
            _ => Err(Error::Gguf("internal: config is not an object".into())),
        }
    }

    /// `{arch}.rope.scaling.*` as a `rope_scaling` object for the global layers: none and
    /// linear are understood; any other type is refused by name.
    pub fn rope_scaling(&self) -> Result<Option<Value>> {
        let Some(f) = self.opt_f("rope.scaling.factor") else {
            return Ok(None);
        };
        let ty = self
            .g
            .get_str(&self.key("rope.scaling.type"))
            .unwrap_or("linear");
        match ty {
            "none" => Ok(None),
            "linear" if f == 1.0 => Ok(None),
            "linear" => Ok(Some(json!({"rope_type": "linear", "factor": f}))),
            other => Err(Error::Gguf(format!(
                "`{}` = {other} is not supported (linear and none are)",
                self.key("rope.scaling.type")
            ))),
        }
    }
}
