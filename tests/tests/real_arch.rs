//! The real Qwen2.5-Coder-0.5B-Instruct and Gemma 3 270M Q4_K_M GGUFs (fetched into the
//! git-ignored models/ by scripts/fetch_models.sh) with a LoRA each, against what
//! transformers 5.25 + PEFT 0.21.2 compute on the model transformers dequantizes from the same
//! file (tests/fixtures/real_arch, made by scripts/make_real_arch_references.py): the last
//! prompt position's logits within 1e-3·max(1, |ref|) with and without the adapter, and greedy
//! generation token for token. The CPU runs everything; a GPU runs the prefill logits of the
//! short (Gemma) prompt — a software GPU (CI's lavapipe) takes minutes over the long one.
//! Without the files the tests say so and pass, unless GRAFT_REQUIRE_REAL_MODEL is set.

use std::path::PathBuf;

use graft_adapters::tensors::load_safetensors;
use graft_models::{Device, LoadAdapterOptions, Model};
use graft_tests::{assert_close, devices, fixtures, to_device};
use serde_json::Value;

fn model_file(name: &str) -> Option<PathBuf> {
    let p = fixtures()
        .join("../../models")
        .join(name)
        .components()
        .collect::<PathBuf>();
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("GRAFT_REQUIRE_REAL_MODEL").is_none(),
        "GRAFT_REQUIRE_REAL_MODEL is set but {} is missing (run scripts/fetch_models.sh)",
        p.display()
    );
    eprintln!(
        "skipping: {} is not there (scripts/fetch_models.sh fetches it)",
        p.display()
    );
    None
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn check(dir_name: &str) {
    let dir = fixtures().join("real_arch").join(dir_name);
    let gen: Value =
        serde_json::from_slice(&std::fs::read(dir.join("generation.json")).unwrap()).unwrap();
    let Some(path) = model_file(gen["model"].as_str().unwrap()) else {
        return;
    };
    let refs = load_safetensors(&dir.join("logits.safetensors")).unwrap();
    let prompt = ids(&gen["prompt_ids"]);
    let n = gen["max_new_tokens"].as_u64().unwrap() as usize;
    let mut m = Model::open_base(&path).unwrap();
    m.load_adapter(&dir.join("adapter"), LoadAdapterOptions::default())
        .unwrap();
    for (device, _) in devices() {
        if device != Device::Cpu && prompt.len() > 8 {
            continue;
        }
        to_device(&mut m, device, Some(256));
        for (key, on) in [("with_adapter", true), ("without_adapter", false)] {
            if on {
                m.enable_adapters().unwrap();
            } else {
                m.disable_adapters().unwrap();
            }
            let all = m.logits(&prompt).unwrap();
            let last = all
                .narrow(0, prompt.len() - 1, 1)
                .unwrap()
                .squeeze(0)
                .unwrap();
            assert_close(
                &format!("{dir_name} {key} ({device:?})"),
                &last,
                &refs[key].tensor,
                1e-3,
            );
            // greedy decoding on the CPU (on a software GPU it takes minutes per token)
            if device == Device::Cpu {
                let got = m.generate(&prompt, n, &[], |_| {}).unwrap();
                assert_eq!(
                    got,
                    ids(&gen[key]["ids"]),
                    "{dir_name} {key}: greedy tokens ({device:?})"
                );
            }
        }
    }
}

#[test]
fn qwen2_5_coder_0_5b_q4_k_m_with_lora() {
    check("qwen2.5-coder-0.5b");
}

#[test]
fn gemma_3_270m_q4_k_m_with_lora() {
    check("gemma-3-270m");
}
