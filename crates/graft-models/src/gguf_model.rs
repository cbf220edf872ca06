//! Llama-family models from GGUF files: the configuration from the metadata, and GGUF tensor
//! names mapped to Hugging Face module paths so that PEFT adapters trained on the Hugging Face
//! model attach unchanged. Quantized tensors stay quantized.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use graft_core::tensors::{read_file, MAX_FILE_SIZE};
use graft_quant::{QData, QMatrix, QType};
use serde_json::json;

use crate::base::Weight;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::weights::WeightStore;

/// A GGUF file in memory with its parsed header.
pub struct GgufFile {
    /// Shared with the quantized weights, which point into it instead of copying.
    pub bytes: Arc<Vec<u8>>,
    pub header: Gguf,
}

impl GgufFile {
    /// Reads a `.gguf` file (at most [`MAX_FILE_SIZE`] bytes) and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read_file(path, MAX_FILE_SIZE)?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// Parses the header of GGUF bytes held in memory, keeping the bytes (moved, not copied)
    /// for the weights to point into. `label` names the file in error messages.
    pub fn from_bytes(bytes: Vec<u8>, label: &str) -> Result<Self> {
        let size = bytes.len() as u64;
        if size > MAX_FILE_SIZE {
            return Err(graft_core::Error::FileTooLarge {
                path: label.into(),
                size,
                limit: MAX_FILE_SIZE,
            }
            .into());
        }
        let header = Gguf::parse(&bytes).map_err(|e| Error::Gguf(format!("{label}: {e}")))?;
        Ok(GgufFile {
            bytes: Arc::new(bytes),
            header,
        })
    }
}

fn meta_err(key: &str) -> Error {
    Error::Gguf(format!("metadata `{key}` is missing or has the wrong type"))
}

/// The Hugging Face `config.json` equivalent of a Llama-family GGUF.
pub fn llama_config(g: &Gguf) -> Result<serde_json::Value> {
    let arch = g
        .get_str("general.architecture")
        .ok_or_else(|| meta_err("general.architecture"))?;
    if arch != "llama" && arch != "mistral" {
        return Err(Error::UnsupportedArchitecture(format!("{arch} (GGUF)")));
    }
    let u = |k: &str| -> Result<u64> {
        let key = format!("{arch}.{k}");
        g.get_u64(&key).ok_or_else(|| meta_err(&key))
    };
    let hidden = u("embedding_length")?;
    let heads = u("attention.head_count")?;
    let kv_heads = g
        .get_u64(&format!("{arch}.attention.head_count_kv"))
        .unwrap_or(heads);
    if heads == 0 {
        return Err(meta_err("attention.head_count"));
    }
    let head_dim = g
        .get_u64(&format!("{arch}.rope.dimension_count"))
        .unwrap_or(hidden / heads);
    let vocab = match g.get_u64(&format!("{arch}.vocab_size")) {
        Some(v) => v,
        None => g
            .get("tokenizer.ggml.tokens")
            .and_then(|t| t.as_array())
            .map(|a| a.len() as u64)
            .ok_or_else(|| meta_err("tokenizer.ggml.tokens"))?,
    };
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    let mut cfg = json!({
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": g.get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        "rope_theta": g.get_f64(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0),
        "max_position_embeddings": g.get_u64(&format!("{arch}.context_length")).unwrap_or(2048),
        "tie_word_embeddings": tied,
    });
    if let Some(eos) = g.get_u64("tokenizer.ggml.eos_token_id") {
        cfg["eos_token_id"] = json!(eos);
    }
    if let Some(bos) = g.get_u64("tokenizer.ggml.bos_token_id") {
        cfg["bos_token_id"] = json!(bos);
    }
    if let Some(f) = g.get_f64(&format!("{arch}.rope.scaling.factor")) {
        let ty = g
            .get_str(&format!("{arch}.rope.scaling.type"))
            .unwrap_or("linear");
        if ty != "linear" && ty != "none" {
            return Err(Error::Gguf(format!(
                "rope scaling type `{ty}` is not supported"
            )));
        }
        if ty == "linear" && f != 1.0 {
            cfg["rope_scaling"] = json!({"type": "linear", "factor": f});
        }
    }
    Ok(cfg)
}

/// GGUF tensor name → Hugging Face parameter name (Llama family).
pub fn hf_name(gguf: &str) -> Option<String> {
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
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// llama.cpp's converter permutes the rows of q_proj and k_proj from Hugging Face's rotate-half
/// RoPE layout to the interleaved one; this puts them back: HF row `h·D + t·D/2 + j` is GGUF row
/// `h·D + 2j + t`.
fn unpermute_rows(data: &[u8], rows: usize, row_bytes: usize, heads: usize) -> Result<Vec<u8>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::Gguf(format!(
            "cannot un-permute {rows} rows into {heads} RoPE heads"
        )));
    }
    let hd = rows / heads;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..hd / 2 {
                let hf = h * hd + t * (hd / 2) + j;
                let gg = h * hd + 2 * j + t;
                out[hf * row_bytes..(hf + 1) * row_bytes]
                    .copy_from_slice(&data[gg * row_bytes..(gg + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

fn weight_of(file: &GgufFile, t: &TensorInfo, heads_for_permute: Option<usize>) -> Result<Weight> {
    let bytes = file.header.tensor_bytes(&file.bytes, t);
    let gerr = |e: graft_quant::Error| Error::Gguf(format!("tensor `{}`: {e}", t.name));
    match t.dims.as_slice() {
        [n] => {
            let n = *n as usize;
            let q = QMatrix::from_raw(t.qtype, 1, n, bytes.to_vec(), vec![]).map_err(gerr)?;
            Ok(Weight::Dense(Tensor::from_vec(
                q.dequantize(),
                n,
                &Device::Cpu,
            )?))
        }
        [cols, rows] => {
            let (rows, cols) = (*rows as usize, *cols as usize);
            let row_bytes = QMatrix::row_bytes(t.qtype, cols).map_err(gerr)?;
            let data: QData = match heads_for_permute {
                Some(h) => unpermute_rows(bytes, rows, row_bytes, h)?.into(),
                None => QData::Shared {
                    buf: file.bytes.clone(),
                    start: (file.header.data_offset + t.offset) as usize,
                    len: t.nbytes as usize,
                },
            };
            let q = QMatrix::from_raw(t.qtype, rows, cols, data, vec![]).map_err(gerr)?;
            if t.qtype == QType::F32 {
                Ok(Weight::Dense(Tensor::from_vec(
                    q.dequantize(),
                    (rows, cols),
                    &Device::Cpu,
                )?))
            } else {
                Ok(Weight::Quant(Arc::new(q)))
            }
        }
        other => Err(Error::Gguf(format!(
            "tensor `{}` has {} dimensions; expected 1 or 2",
            t.name,
            other.len()
        ))),
    }
}

/// The weights of a Llama-family GGUF under Hugging Face names (q/k rows un-permuted).
pub fn llama_weights(file: &GgufFile, cfg: &serde_json::Value) -> Result<WeightStore> {
    let heads = cfg["num_attention_heads"].as_u64().unwrap_or(0) as usize;
    let kv_heads = cfg["num_key_value_heads"].as_u64().unwrap_or(0) as usize;
    let mut map = HashMap::new();
    let mut unknown = Vec::new();
    for t in &file.header.tensors {
        let Some(name) = hf_name(&t.name) else {
            unknown.push(t.name.clone());
            continue;
        };
        let permute = if name.ends_with("self_attn.q_proj.weight") {
            Some(heads)
        } else if name.ends_with("self_attn.k_proj.weight") {
            Some(kv_heads)
        } else {
            None
        };
        map.insert(name, weight_of(file, t, permute)?);
    }
    // Fail closed: a tensor we do not map (e.g. llama 3's rope_freqs) would change the numbers.
    if !unknown.is_empty() {
        return Err(Error::Gguf(format!(
            "tensors graft does not know how to use: {unknown:?}"
        )));
    }
    Ok(WeightStore::from_map(map))
}
