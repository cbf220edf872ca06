//! What graft's save_pretrained writes for "all-linear", compared with what PEFT wrote.

use graft_adapters::config::config_from_kwargs;
use graft_models::Model;
use graft_tests::fixtures;
use serde_json::{json, Value};

fn saved_targets(model: &str, n_expected: usize) -> (Vec<String>, Vec<String>) {
    let case = if model == "llama" {
        "all_linear_rslora_patterns"
    } else {
        "tied_lora"
    };
    let peft: Value = serde_json::from_slice(
        &std::fs::read(
            fixtures()
                .join("cases")
                .join(case)
                .join("adapters/default/adapter_config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut want: Vec<String> = peft["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    want.sort();
    let mut m = Model::open_base(&fixtures().join("models").join(model)).unwrap();
    let cfg =
        config_from_kwargs(json!({"peft_type": "LORA", "r": 4, "target_modules": "all-linear"}))
            .unwrap();
    let rep = m.add_adapter(cfg, None, 0).unwrap();
    assert_eq!(rep.targets.len(), n_expected);
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path(), None).unwrap();
    let ours: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    let mut got: Vec<String> = ours["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    got.sort();
    (got, want)
}

#[test]
fn all_linear_is_saved_as_full_paths_below_twenty_modules() {
    // 2 layers × 7 linears = 14 < 20: PEFT lists the full module paths.
    let (got, want) = saved_targets("llama", 14);
    assert_eq!(got, want);
    assert!(got.iter().all(|t| t.starts_with("model.layers.")));
}

#[test]
fn all_linear_is_condensed_to_suffixes_from_twenty_modules() {
    // 3 layers × 7 linears = 21 ≥ 20: PEFT condenses to suffixes.
    let (got, want) = saved_targets("llama-tied", 21);
    assert_eq!(got, want);
    assert_eq!(got.len(), 7);
}
