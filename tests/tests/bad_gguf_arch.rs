//! Bad GGUF files and mismatched adapters for the new architectures: each is a clear error
//! naming what is wrong, never a panic. The files are the llama.cpp-converted fixtures of
//! tests/fixtures/gguf_arch with one thing changed.

use graft_arch::gguf::writer::{write, RawTensor};
use graft_arch::gguf::{Gguf, Value};
use graft_models::{LoadAdapterOptions, Model};
use graft_quant::QType;
use graft_tests::fixtures;

/// A fixture GGUF, parsed: its metadata and its tensors with their bytes.
struct Parts {
    meta: Vec<(String, Value)>,
    tensors: Vec<RawTensor>,
}

fn ggml_id(q: QType) -> u32 {
    match q {
        QType::F32 => 0,
        QType::F16 => 1,
        QType::Q8_0 => 8,
        other => panic!("the fixtures hold no {other:?}"),
    }
}

fn parts(name: &str) -> Parts {
    let bytes = std::fs::read(fixtures().join("gguf_arch").join(name)).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    Parts {
        meta: g.metadata.clone().into_iter().collect(),
        tensors: g
            .tensors
            .iter()
            .map(|t| RawTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: ggml_id(t.qtype),
                data: g.tensor_bytes(&bytes, t).to_vec(),
            })
            .collect(),
    }
}

fn open(p: &Parts) -> String {
    let meta: Vec<(&str, Value)> = p
        .meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let bytes = write(&meta, &p.tensors);
    match Model::from_gguf_bytes(bytes, "edited.gguf") {
        Ok(_) => panic!("the edited GGUF was accepted"),
        Err(e) => {
            eprintln!("{e}");
            e.to_string()
        }
    }
}

fn set_meta(p: &mut Parts, key: &str, v: Value) {
    match p.meta.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = v,
        None => p.meta.push((key.into(), v)),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for s in parts {
        assert!(msg.contains(s), "the error does not mention `{s}`:\n{msg}");
    }
}

#[test]
fn an_unknown_gguf_architecture_is_named() {
    let mut p = parts("qwen2.f32.gguf");
    set_meta(
        &mut p,
        "general.architecture",
        Value::String("qwen9".into()),
    );
    let e = open(&p);
    assert_mentions(&e, &["qwen9", "qwen2", "gemma3", "phi3"]);
}

#[test]
fn missing_metadata_for_the_architecture_is_named() {
    for (file, key) in [
        ("qwen2.f32.gguf", "qwen2.embedding_length"),
        ("gemma3.f32.gguf", "gemma3.attention.layer_norm_rms_epsilon"),
        ("phi3.f32.gguf", "phi3.rope.scaling.original_context_length"),
    ] {
        let mut p = parts(file);
        p.meta.retain(|(k, _)| k != key);
        let e = open(&p);
        assert_mentions(&e, &[key]);
    }
}

#[test]
fn a_tensor_whose_shape_does_not_fit_its_role_is_named() {
    // q (heads·head_dim rows) and k (kv_heads·head_dim rows) swapped
    let mut p = parts("qwen3.f32.gguf");
    for t in &mut p.tensors {
        if t.name == "blk.0.attn_q.weight" {
            t.name = "blk.0.attn_k.weight".into();
        } else if t.name == "blk.0.attn_k.weight" {
            t.name = "blk.0.attn_q.weight".into();
        }
    }
    let e = open(&p);
    assert_mentions(&e, &["model.layers.0.self_attn"]);
}

#[test]
fn a_tensor_whose_kind_does_not_fit_its_role_is_named() {
    // a norm's weight stored as a one-row matrix, in a quantized type
    let mut p = parts("gemma2.f32.gguf");
    let t = p
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_norm.weight")
        .unwrap();
    let v: Vec<f32> = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let q = graft_quant::QMatrix::quantize(QType::Q8_0, 1, v.len(), &v).unwrap();
    t.ggml_type = 8;
    t.dims = vec![v.len() as u64, 1];
    t.data = q.data.to_vec();
    let e = open(&p);
    assert_mentions(&e, &["model.layers.0.input_layernorm.weight"]);
}

#[test]
fn a_quantized_row_that_is_not_whole_blocks_is_named() {
    // a 32-wide row declared Q4_K (256-value blocks)
    let mut p = parts("qwen2.f32.gguf");
    let t = p
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    t.ggml_type = 12;
    t.data = vec![0u8; 144];
    let e = open(&p);
    assert_mentions(&e, &["Q4_K", "256"]);
}

#[test]
fn an_adapter_for_another_architecture_is_refused_by_name() {
    // Phi-3's fused modules do not exist in Qwen2
    let mut m = Model::open_base(&fixtures().join("gguf_arch/qwen2.f32.gguf")).unwrap();
    let Err(e) = m.load_adapter(
        &fixtures().join("arch/cases/phi3_lora/adapters/lora"),
        LoadAdapterOptions::default(),
    ) else {
        panic!("a Phi-3 adapter on Qwen2 was accepted");
    };
    let e = e.to_string();
    assert_mentions(&e, &["qkv_proj"]);
    // and Gemma 3 has six layers, Qwen2 two: tensors for layers 2..5 fit nothing
    let Err(e) = m.load_adapter(
        &fixtures().join("arch/cases/gemma3_lora/adapters/dora"),
        LoadAdapterOptions::default(),
    ) else {
        panic!("a Gemma 3 adapter on Qwen2 was accepted");
    };
    assert_mentions(&e.to_string(), &["does not fit", "model.layers.2"]);
}
