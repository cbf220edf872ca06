//! graft's logits against the logits real PEFT 0.21.2 computed (tests/fixtures, made by
//! tests/fixtures/gen_fixtures.py), on every device (the same test body): |diff| ≤
//! tol·max(1, |ref|), 1e-4 on the CPU and 1e-3 on a GPU; greedy generation token for token.

use std::path::Path;

use graft_adapters::tensors::load_safetensors;
use graft_models::Model;
use graft_tests::{apply_run, assert_close, case_tokens, devices, fixtures, load_case, to_device};
use serde_json::Value;

fn run_case(name: &str) {
    let dir = fixtures().join("cases").join(name);
    let refs = load_safetensors(&dir.join("logits.safetensors")).unwrap();
    for (device, tol) in devices() {
        let (case, mut model) = load_case(&dir);
        to_device(&mut model, device, None);
        let toks = case_tokens(&case);
        for run in case["runs"].as_array().unwrap() {
            let run_name = run["name"].as_str().unwrap();
            apply_run(&mut model, run);
            let got = model.logits(&toks).unwrap();
            assert_close(
                &format!("{name}/{run_name} ({device:?})"),
                &got,
                &refs[run_name].tensor,
                tol,
            );
        }
    }
}

fn base_logits(model: &str) {
    let dir = fixtures().join("models").join(model);
    let case: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("cases/lora_qv/case.json")).unwrap())
            .unwrap();
    let r = load_safetensors(Path::new(&dir.join("base_logits.safetensors"))).unwrap();
    for (device, tol) in devices() {
        let mut m = Model::open_base(&dir).unwrap();
        to_device(&mut m, device, None);
        let got = m.logits(&case_tokens(&case)).unwrap();
        assert_close(
            &format!("base {model} ({device:?})"),
            &got,
            &r["logits"].tensor,
            tol,
        );
    }
}

#[test]
fn base_llama() {
    base_logits("llama");
}
#[test]
fn base_llama_tied_sharded() {
    base_logits("llama-tied");
}
#[test]
fn base_opt_post_layer_norm_project_in_out() {
    base_logits("opt");
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => { $( #[test] fn $name() { run_case(stringify!($name)); } )* };
}

cases!(
    lora_qv,
    all_linear_rslora_patterns,
    regex_targets,
    layers_to_transform,
    dora,
    ia3,
    adalora,
    adalora_pruned,
    modules_to_save_lm_head,
    lora_embedding,
    bias_lora_only,
    multi_adapter,
    opt_lora,
    tied_lora,
    lora_bias_all,
);

#[test]
fn every_fixture_case_is_tested() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let src = include_str!("conformance.rs");
    for c in on_disk {
        assert!(
            src.contains(&format!("    {c},")),
            "fixture case {c} has no test"
        );
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Greedy generation through the KV cache equals PEFT's `generate(do_sample=False)`, on every
/// device.
#[test]
fn greedy_generation_matches_peft() {
    for (device, _) in devices() {
        greedy_generation_on(device);
    }
}

fn greedy_generation_on(device: graft_models::Device) {
    let mut checked = 0;
    for model in ["llama", "llama-tied", "opt"] {
        let dir = fixtures().join("models").join(model);
        let g: Value =
            serde_json::from_slice(&std::fs::read(dir.join("generation.json")).unwrap()).unwrap();
        let mut m = Model::open_base(&dir).unwrap();
        to_device(&mut m, device, None);
        let n = g["max_new_tokens"].as_u64().unwrap() as usize;
        let got = m.generate(&ids(&g["prompt"]), n, &[], |_| {}).unwrap();
        assert_eq!(got, ids(&g["tokens"]), "base {model} ({device:?})");
        checked += 1;
    }
    for entry in std::fs::read_dir(fixtures().join("cases")).unwrap() {
        let dir = entry.unwrap().path();
        let (case, mut model) = load_case(&dir);
        to_device(&mut model, device, None);
        let Some(g) = case.get("generation") else {
            continue;
        };
        let n = g["max_new_tokens"].as_u64().unwrap() as usize;
        for (run_name, want) in g["runs"].as_object().unwrap() {
            let run = case["runs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == run_name.as_str())
                .unwrap();
            let active: Vec<&str> = run["active"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            model.set_adapter(&active).unwrap();
            let got = model.generate(&ids(&g["prompt"]), n, &[], |_| {}).unwrap();
            assert_eq!(got, ids(want), "{}/{run_name} ({device:?})", dir.display());
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} generation references found");
}
