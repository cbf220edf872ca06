//! Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3, Mistral and Llama 3 (llama3 RoPE) against
//! transformers 5.25 + PEFT 0.21.2 (tests/fixtures/arch, made by make_arch_fixtures.py), on
//! every device with one test body: the base in both config styles (transformers 5's
//! config.json and transformers 4.57's config.v4.json, whose logits 4.57 computed), LoRA, DoRA
//! and IA3 adapters, disabled adapters, and greedy generation through the KV cache.

use graft_adapters::tensors::load_safetensors;
use graft_models::Model;
use graft_tests::{apply_run, assert_close, case_tokens, devices, fixtures, load_case, to_device};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn tokens() -> Vec<u32> {
    let case: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("arch/cases/qwen2_lora/case.json")).unwrap(),
    )
    .unwrap();
    case_tokens(&case)
}

/// The base model from both config styles, and its greedy generation.
fn base(name: &str) {
    let dir = fixtures().join("arch/models").join(name);
    let v5 = load_safetensors(&dir.join("base_logits.safetensors")).unwrap();
    let v4 = load_safetensors(&dir.join("logits.v4.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(dir.join("config.v4.json"), tmp.path().join("config.json")).unwrap();
    let gen: Value =
        serde_json::from_slice(&std::fs::read(dir.join("generation.json")).unwrap()).unwrap();
    for (device, tol) in devices() {
        for (style, path, want) in [("v5", dir.as_path(), &v5), ("v4", tmp.path(), &v4)] {
            let mut m = Model::open_base(path).unwrap();
            to_device(&mut m, device, None);
            let got = m.logits(&tokens()).unwrap();
            assert_close(
                &format!("{name} base, {style} config ({device:?})"),
                &got,
                &want["logits"].tensor,
                tol,
            );
        }
        let mut m = Model::open_base(&dir).unwrap();
        to_device(&mut m, device, None);
        let n = gen["max_new_tokens"].as_u64().unwrap() as usize;
        let got = m.generate(&ids(&gen["prompt"]), n, &[], |_| {}).unwrap();
        assert_eq!(got, ids(&gen["tokens"]), "{name} greedy ({device:?})");
    }
}

/// Every run of a case, and its greedy generation with the first adapter.
fn case(name: &str) {
    let dir = fixtures().join("arch/cases").join(name);
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
        let g = &case["generation"];
        for (adapter, want) in g["runs"].as_object().unwrap() {
            model.enable_adapters().unwrap();
            model.set_adapter(&[adapter.as_str()]).unwrap();
            let n = g["max_new_tokens"].as_u64().unwrap() as usize;
            let got = model.generate(&ids(&g["prompt"]), n, &[], |_| {}).unwrap();
            assert_eq!(got, ids(want), "{name}/{adapter} greedy ({device:?})");
        }
    }
}

macro_rules! arch_tests {
    ($($model:ident: $lora:ident, $ia3:ident;)*) => {
        $(
            #[test]
            fn $model() {
                base(stringify!($model));
            }
            #[test]
            fn $lora() {
                case(stringify!($lora));
            }
            #[test]
            fn $ia3() {
                case(stringify!($ia3));
            }
        )*
    };
}

arch_tests! {
    qwen2: qwen2_lora, qwen2_ia3;
    qwen3: qwen3_lora, qwen3_ia3;
    gemma2: gemma2_lora, gemma2_ia3;
    gemma3: gemma3_lora, gemma3_ia3;
    phi3: phi3_lora, phi3_ia3;
    mistral: mistral_lora, mistral_ia3;
    llama3: llama3_lora, llama3_ia3;
}

#[test]
fn every_architecture_fixture_is_tested() {
    let src = include_str!("architectures.rs");
    for e in std::fs::read_dir(fixtures().join("arch/cases")).unwrap() {
        let c = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            src.contains(&format!(" {c},")) || src.contains(&format!(" {c};")),
            "fixture case {c} has no test"
        );
    }
}
