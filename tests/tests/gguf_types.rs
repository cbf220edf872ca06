//! GGUF bases of every supported tensor type: the tiny fixture Llama written as GGUF the way
//! llama.cpp's converter writes it (tensor names, reversed dims, q/k rows permuted to the
//! interleaved RoPE layout), loaded back by graft, against PEFT's base logits — and with a PEFT
//! adapter on top, since GGUF names must map back to Hugging Face module paths.

use std::collections::BTreeMap;

use graft_adapters::tensors::load_safetensors;
use graft_arch::gguf::writer::{write, RawTensor};
use graft_arch::gguf::Value;
use graft_models::{LoadAdapterOptions, Model};
use graft_quant::{QMatrix, QType};
use graft_tests::{assert_close, fixtures, max_abs_diff};

const TOKENS: [u32; 12] = [1, 5, 17, 42, 99, 3, 64, 7, 120, 0, 33, 2];

fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
    let (layer, part) = rest.split_once('.').expect("layer index");
    let module = part.strip_suffix(".weight").expect("weight");
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unexpected {other}"),
    };
    format!("blk.{layer}.{g}.weight")
}

/// llama.cpp's `permute`: HF row h·D + t·D/2 + j goes to GGUF row h·D + 2j + t.
fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..hd / 2 {
                let (hf, gg) = (h * hd + t * (hd / 2) + j, h * hd + 2 * j + t);
                out[gg * cols..(gg + 1) * cols].copy_from_slice(&w[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

fn ggml_id(q: QType) -> u32 {
    match q {
        QType::F32 => 0,
        QType::F16 => 1,
        QType::Q4_0 => 2,
        QType::Q4_1 => 3,
        QType::Q8_0 => 8,
        QType::BF16 => 30,
        other => panic!("{other:?} is not a GGML type"),
    }
}

/// The fixture as GGUF in format `q`; with `dequantized`, the same (rounded) values stored as F32.
fn llama_as_gguf(q: QType, dequantized: bool) -> Vec<u8> {
    let dir = fixtures().join("models/llama");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("cfg"))
            .expect("json");
    let st = load_safetensors(&dir.join("model.safetensors")).expect("weights");
    let (heads, kv) = (
        cfg["num_attention_heads"].as_u64().expect("h") as usize,
        cfg["num_key_value_heads"].as_u64().expect("kv") as usize,
    );
    let mut tensors = Vec::new();
    let sorted: BTreeMap<_, _> = st.iter().collect();
    for (name, t) in sorted {
        let dims = t.tensor.dims().to_vec();
        let mut v = t
            .tensor
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("f32");
        if dims.len() == 1 {
            tensors.push(RawTensor {
                name: gguf_name(name),
                dims: vec![dims[0] as u64],
                ggml_type: 0,
                data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            });
            continue;
        }
        let (rows, cols) = (dims[0], dims[1]);
        if name.ends_with("q_proj.weight") {
            v = permute(&v, rows, cols, heads);
        } else if name.ends_with("k_proj.weight") {
            v = permute(&v, rows, cols, kv);
        }
        let m = QMatrix::quantize(q, rows, cols, &v).expect("quantize");
        let (ty, data) = if dequantized {
            (
                0,
                m.dequantize()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            )
        } else {
            (ggml_id(q), m.data.to_vec())
        };
        tensors.push(RawTensor {
            name: gguf_name(name),
            dims: vec![cols as u64, rows as u64],
            ggml_type: ty,
            data,
        });
    }
    let u = |k: &str| Value::U32(cfg[k].as_u64().expect(k) as u32);
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.vocab_size", u("vocab_size")),
        ("llama.embedding_length", u("hidden_size")),
        ("llama.feed_forward_length", u("intermediate_size")),
        ("llama.block_count", u("num_hidden_layers")),
        ("llama.attention.head_count", u("num_attention_heads")),
        ("llama.attention.head_count_kv", u("num_key_value_heads")),
        ("llama.context_length", u("max_position_embeddings")),
        (
            "llama.rope.freq_base",
            Value::F32(cfg["rope_theta"].as_f64().expect("theta") as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg["rms_norm_eps"].as_f64().expect("eps") as f32),
        ),
    ];
    write(&meta, &tensors)
}

fn logits(path: &std::path::Path, adapter: bool) -> candle_core::Tensor {
    let mut m = Model::open_base(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if adapter {
        // A PEFT adapter trained on the Hugging Face layout attaches to the GGUF base.
        m.load_adapter(
            &fixtures().join("cases/lora_qv/adapters/default"),
            LoadAdapterOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    m.logits(&TOKENS).expect("logits")
}

#[test]
fn every_gguf_tensor_type_loads_and_computes_the_base() {
    let base =
        load_safetensors(&fixtures().join("models/llama/base_logits.safetensors")).expect("ref");
    let peft = load_safetensors(&fixtures().join("cases/lora_qv/logits.safetensors")).expect("ref");
    let dir = tempfile::tempdir().expect("tmp");
    // F32 must be PEFT's numbers; every format must equal the same rounded weights stored as F32
    // (exact up to summation order: names, dims, row permutation and block layouts all right).
    for q in [
        QType::F32,
        QType::F16,
        QType::BF16,
        QType::Q8_0,
        QType::Q4_0,
        QType::Q4_1,
    ] {
        let path = dir.path().join(format!("llama-{q:?}.gguf"));
        std::fs::write(&path, llama_as_gguf(q, false)).expect("write");
        let same = dir.path().join(format!("llama-{q:?}-as-f32.gguf"));
        std::fs::write(&same, llama_as_gguf(q, true)).expect("write");
        for adapter in [false, true] {
            let got = logits(&path, adapter);
            assert_close(
                &format!("{q:?} vs its f32 twin, adapter {adapter}"),
                &got,
                &logits(&same, adapter),
                1e-4,
            );
            let reference = if adapter {
                &peft["on"].tensor
            } else {
                &base["logits"].tensor
            };
            if q == QType::F32 {
                assert_close("gguf f32 vs PEFT", &got, reference, 1e-4);
            }
            // all tensors, embeddings and head included, in this format: a loose sanity bound
            let err = max_abs_diff(&got, reference);
            assert!(err < 4.0, "{q:?}: logits off by {err} (adapter {adapter})");
        }
    }
}
