//! `config.json` read by `graft_arch::arch::describe` (every architecture, both transformers
//! styles) with arbitrary JSON, against the weights of a tiny fixture model; a configuration
//! it accepts must build a `Model` that runs a forward pass (describe must have refused
//! everything the forward pass cannot do).
//!
//! Input: the JSON, whose `model_type` picks the fixture weights (llama's when it names none
//! of them); or a selector byte (0x00..0x1f, not whitespace) then the JSON: fixture
//! `selector % N`'s weights, and selector bit 4 quantizes while loading (int8, nf4, q8_0 or
//! q4_0 by bits 0..1 of the JSON length).
#![no_main]

use graft_fuzz::{selector, weights, BASES};
use graft_models::{KvCache, Model, Threading};
use graft_quant::QType;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn base_for(model_type: &str) -> usize {
    let name = match model_type {
        "gemma3_text" => "gemma3",
        "qwen2" | "qwen3" | "gemma2" | "gemma3" | "mistral" | "phi3" | "opt" => model_type,
        _ => "llama",
    };
    BASES.iter().position(|b| b.name == name).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let (sel, json) = match selector(data) {
        Some((s, rest)) => (Some(s), rest),
        None => (None, data),
    };
    let Ok(cfg) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let base = match sel {
        Some(s) => s as usize % BASES.len(),
        None => base_for(cfg.get("model_type").and_then(Value::as_str).unwrap_or("")),
    };
    let quantize = match sel {
        Some(s) if s & 0x10 != 0 => {
            Some([QType::Int8, QType::Nf4, QType::Q8_0, QType::Q4_0][json.len() % 4])
        }
        _ => None,
    };
    let w = weights(base);
    let Ok(d) = graft_arch::arch::describe(&cfg, "fuzz/config.json", &w, quantize) else {
        return;
    };
    let _ = format!("{:?}", d.understood);
    drop(d);
    let Ok(mut m) = Model::from_parts(&cfg, &w, "fuzz".into(), quantize) else {
        panic!("describe accepted the config but Model::from_parts refused it");
    };
    m.set_threading(Threading::CallingThread);
    let v = m.vocab_size.max(1) as u32;
    let mut cache = KvCache::new();
    let _ = m.forward(&[0, (v - 1).min(9), (v - 1).min(2)], &mut cache);
});
