//! A model and adapters of a real model's exact shape and formats with random weights, for
//! benchmarking `graft serve` on a machine the real files cannot be copied to (the lent GPU
//! host takes 64 MiB of files; Qwen2.5-Coder-0.5B Q4_K_M is 398 MB). Speed depends on shapes
//! and formats, not on values; answers are meaningless.

use std::path::{Path, PathBuf};

use graft_arch::gguf::writer::{write, RawTensor};
use graft_arch::gguf::Value;
use serde_json::json;

use super::bench_gpu::random_bytes;

/// GGML blocks of `rows × cols` values with random quants and a fixed small scale.
fn blocks(ty: u32, rows: u64, cols: u64, bytes: &mut dyn FnMut(usize) -> Vec<u8>) -> Vec<u8> {
    let n = (rows * cols) as usize;
    let mut out = Vec::new();
    match ty {
        // Q5_0: d, qh[4], qs[16]
        6 => {
            for _ in 0..n / 32 {
                out.extend_from_slice(&0x1c00u16.to_le_bytes());
                out.extend(bytes(20));
            }
        }
        // Q8_0: d, qs[32]
        8 => {
            for _ in 0..n / 32 {
                out.extend_from_slice(&0x1800u16.to_le_bytes());
                out.extend(bytes(32));
            }
        }
        // Q4_K: d, dmin, scales[12], qs[128]
        12 => {
            for _ in 0..n / 256 {
                out.extend_from_slice(&0x1400u16.to_le_bytes());
                out.extend_from_slice(&0x1000u16.to_le_bytes());
                out.extend(bytes(140));
            }
        }
        // Q6_K: ql[128], qh[64], scales[16], d
        _ => {
            for _ in 0..n / 256 {
                out.extend(bytes(208));
                out.extend_from_slice(&0x0c00u16.to_le_bytes());
            }
        }
    }
    out
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M's shape and tensor types (as llama.cpp quantized it:
/// Q5_0 where a row of 896 is not whole K-quant blocks, attn_v Q5_0/Q8_0 and ffn_down
/// Q4_K/Q6_K alternating by layer, a Q8_0 head), random weights, no tokenizer.
pub fn qwen05b() -> Vec<u8> {
    let (vocab, h, inter, layers, heads, kv, hd) =
        (151_936u64, 896u64, 4864u64, 24u32, 14u64, 2u64, 64u64);
    let mut bytes = random_bytes(0x9e37_79b9);
    let f32s = |v: Vec<f32>| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let mut tensors = vec![
        RawTensor {
            name: "token_embd.weight".into(),
            dims: vec![h, vocab],
            ggml_type: 6,
            data: blocks(6, vocab, h, &mut bytes),
        },
        RawTensor {
            name: "output.weight".into(),
            dims: vec![h, vocab],
            ggml_type: 8,
            data: blocks(8, vocab, h, &mut bytes),
        },
        RawTensor {
            name: "output_norm.weight".into(),
            dims: vec![h],
            ggml_type: 0,
            data: f32s(vec![1.0; h as usize]),
        },
    ];
    for l in 0..layers {
        let v_ty = if l % 2 == 0 { 6 } else { 8 };
        let down_ty = if l % 2 == 0 { 12 } else { 14 };
        for (name, ty, rows, cols) in [
            ("attn_q", 6, heads * hd, h),
            ("attn_k", 6, kv * hd, h),
            ("attn_v", v_ty, kv * hd, h),
            ("attn_output", 6, h, heads * hd),
            ("ffn_gate", 6, inter, h),
            ("ffn_up", 6, inter, h),
            ("ffn_down", down_ty, h, inter),
        ] {
            tensors.push(RawTensor {
                name: format!("blk.{l}.{name}.weight"),
                dims: vec![cols, rows],
                ggml_type: ty,
                data: blocks(ty, rows, cols, &mut bytes),
            });
        }
        for (name, n) in [
            ("attn_q", heads * hd),
            ("attn_k", kv * hd),
            ("attn_v", kv * hd),
        ] {
            tensors.push(RawTensor {
                name: format!("blk.{l}.{name}.bias"),
                dims: vec![n],
                ggml_type: 0,
                data: f32s(vec![0.01; n as usize]),
            });
        }
        for name in ["attn_norm", "ffn_norm"] {
            tensors.push(RawTensor {
                name: format!("blk.{l}.{name}.weight"),
                dims: vec![h],
                ggml_type: 0,
                data: f32s(vec![1.0; h as usize]),
            });
        }
    }
    let meta = [
        ("general.architecture", Value::String("qwen2".into())),
        ("qwen2.vocab_size", Value::U32(vocab as u32)),
        ("qwen2.embedding_length", Value::U32(h as u32)),
        ("qwen2.feed_forward_length", Value::U32(inter as u32)),
        ("qwen2.block_count", Value::U32(layers)),
        ("qwen2.attention.head_count", Value::U32(heads as u32)),
        ("qwen2.attention.head_count_kv", Value::U32(kv as u32)),
        ("qwen2.context_length", Value::U32(32768)),
        ("qwen2.rope.freq_base", Value::F32(1_000_000.0)),
        ("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
    ];
    write(&meta, &tensors)
}

/// A word-level tokenizer over `vocab` ids ("t0" …): any text encodes (unknown words to id 0),
/// about one token per word.
pub fn tokenizer(vocab: usize) -> Result<graft_text::Tokenizer, String> {
    let words: serde_json::Map<String, serde_json::Value> =
        (0..vocab).map(|i| (format!("t{i}"), json!(i))).collect();
    let t = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": words, "unk_token": "t0"}
    });
    graft_text::Tokenizer::from_bytes(t.to_string().as_bytes(), None).map_err(|e| e.to_string())
}

/// `count` PEFT LoRA folders (r = 16, alpha 32, every linear layer of a Qwen2.5-0.5B-shaped
/// model, random A and B) under `dir`, named s00, s01, …
pub fn qwen05b_adapters(dir: &Path, count: usize) -> Result<Vec<(String, PathBuf)>, String> {
    let (h, inter, layers, q, kvd, r) = (896usize, 4864usize, 24usize, 896usize, 128usize, 16);
    let mut out = Vec::new();
    for i in 0..count {
        let name = format!("s{i:02}");
        let d = dir.join(&name);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let cfg = json!({
            "peft_type": "LORA", "r": r, "lora_alpha": 32, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": "synthetic/qwen2.5-0.5b"
        });
        std::fs::write(d.join("adapter_config.json"), cfg.to_string())
            .map_err(|e| e.to_string())?;
        let mut bytes = random_bytes(0x1234_5678 + i as u32 * 7919);
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for l in 0..layers {
            for (part, m, rows, cols) in [
                ("self_attn", "q_proj", q, h),
                ("self_attn", "k_proj", kvd, h),
                ("self_attn", "v_proj", kvd, h),
                ("self_attn", "o_proj", h, q),
                ("mlp", "gate_proj", inter, h),
                ("mlp", "up_proj", inter, h),
                ("mlp", "down_proj", h, inter),
            ] {
                let key = format!("base_model.model.model.layers.{l}.{part}.{m}");
                // small values: f32 from random bytes scaled to ±0.01
                let mut vals = |n: usize| -> Vec<u8> {
                    bytes(n)
                        .iter()
                        .flat_map(|b| ((*b as f32 - 127.5) * 8e-5).to_le_bytes())
                        .collect()
                };
                tensors.push((
                    format!("{key}.lora_A.weight"),
                    vals(r * cols),
                    vec![r, cols],
                ));
                tensors.push((
                    format!("{key}.lora_B.weight"),
                    vals(rows * r),
                    vec![rows, r],
                ));
            }
        }
        let views = tensors
            .iter()
            .map(|(k, data, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        safetensors::serialize_to_file(views, None, &d.join("adapter_model.safetensors"))
            .map_err(|e| e.to_string())?;
        out.push((name, d));
    }
    Ok(out)
}
