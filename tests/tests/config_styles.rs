//! config.json in both transformers styles, read fail-closed.
//!
//! tests/fixtures/config_styles (made by make_config_styles.py with transformers 5.25.0 and
//! 4.57.1) holds tiny models saved in both styles with the logits each version computes. The
//! same weights with either config give identical logits, equal to transformers' to 1e-4; a
//! key that would change the numbers in a way graft does not implement is refused with an error
//! naming it and its value.

use std::path::{Path, PathBuf};

use graft_adapters::tensors::load_safetensors;
use graft_arch::config::{Key, Rule};
use graft_models::{LoadAdapterOptions, Model, OpenOptions};
use graft_tests::{assert_close, devices, fixtures, to_device};
use serde_json::{json, Value};

const TOL: f32 = 1e-4;
const CASES: [&str; 5] = [
    "llama_theta5000",
    "llama_linear",
    "llama3",
    "mistral_window",
    "opt",
];

fn dir(case: &str) -> PathBuf {
    fixtures().join("config_styles").join(case)
}

fn config(case: &str, style: &str) -> Value {
    let p = dir(case).join(format!("config.{style}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn open_with(case: &str, cfg: &Value) -> graft_models::Result<Model> {
    let weights = std::fs::read(dir(case).join("model.safetensors")).unwrap();
    Model::from_safetensors_bytes(
        &serde_json::to_vec(cfg).unwrap(),
        vec![("model.safetensors".into(), weights)],
        case,
        &OpenOptions::default(),
    )
}

fn tokens(case: &str) -> Vec<u32> {
    let c: Value =
        serde_json::from_slice(&std::fs::read(dir(case).join("case.json")).unwrap()).unwrap();
    c["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn reference(case: &str, file: &str) -> candle_core::Tensor {
    load_safetensors(&dir(case).join(file)).unwrap()["logits"]
        .tensor
        .clone()
}

/// On every device (1e-4 on the CPU, 1e-3 on a GPU).
#[test]
fn both_styles_give_identical_logits_equal_to_transformers() {
    for (device, tol) in devices() {
        for case in CASES {
            let toks = tokens(case);
            let mut v4 = open_with(case, &config(case, "v4")).unwrap();
            let mut v5 = open_with(case, &config(case, "v5")).unwrap();
            to_device(&mut v4, device, None);
            to_device(&mut v5, device, None);
            let (a, b) = (v4.logits(&toks).unwrap(), v5.logits(&toks).unwrap());
            assert_eq!(
                graft_tests::max_abs_diff(&a, &b),
                0.0,
                "{case}: the two styles differ ({device:?})"
            );
            assert_close(
                &format!("{case} (transformers 4.57.1, {device:?})"),
                &a,
                &reference(case, "logits.v4.safetensors"),
                tol,
            );
            assert_close(
                &format!("{case} (transformers 5.25.0, {device:?})"),
                &b,
                &reference(case, "logits.v5.safetensors"),
                tol,
            );
            assert_eq!(
                v4.understood().get("rope"),
                v5.understood().get("rope"),
                "{case}"
            );
        }
    }
}

/// The example: θ = 5000 written only inside `rope_parameters` was read as 10000.
#[test]
fn rope_parameters_theta_is_read_not_defaulted() {
    let m = open_with("llama_theta5000", &config("llama_theta5000", "v5")).unwrap();
    let u = m.understood();
    assert_eq!(u.get("rope"), Some("default, theta 5000"), "{u}");
    let shown = u.to_string();
    assert!(shown.contains("from `rope_parameters`"), "{shown}");
    assert!(shown.contains("transformers 5.25.0"), "{shown}");
    // dropping rope_parameters would be θ = 10000: a different model
    let mut c = config("llama_theta5000", "v5");
    c.as_object_mut().unwrap().remove("rope_parameters");
    let wrong = open_with("llama_theta5000", &c).unwrap();
    let toks = tokens("llama_theta5000");
    let d = graft_tests::max_abs_diff(
        &wrong.logits(&toks).unwrap(),
        &reference("llama_theta5000", "logits.v5.safetensors"),
    );
    assert!(d > 1e-2, "theta must matter in this fixture ({d})");
}

/// A PEFT LoRA on the transformers-5 model gives PEFT's logits.
#[test]
fn an_adapter_on_a_transformers_5_model_gives_peft_logits() {
    let case = "llama_theta5000";
    let mut m = open_with(case, &config(case, "v5")).unwrap();
    m.load_adapter(&dir(case).join("adapter"), LoadAdapterOptions::default())
        .unwrap();
    let got = m.logits(&tokens(case)).unwrap();
    assert_close(
        "LoRA on the v5 model",
        &got,
        &reference(case, "adapter_logits.v5.safetensors"),
        TOL,
    );
}

/// Greedy generation through the KV cache (Mistral's window of 5 slides over it) equals
/// transformers 5's `generate`, in both styles, on every device.
#[test]
fn greedy_generation_matches_transformers_5() {
    for case in ["llama3", "mistral_window"] {
        let c: Value =
            serde_json::from_slice(&std::fs::read(dir(case).join("case.json")).unwrap()).unwrap();
        let g = &c["generation"];
        let ids = |v: &Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        };
        for (device, _) in devices() {
            for style in ["v4", "v5"] {
                let mut m = open_with(case, &config(case, style)).unwrap();
                to_device(&mut m, device, None);
                let n = g["max_new_tokens"].as_u64().unwrap() as usize;
                let got = m.generate(&ids(&g["prompt"]), n, &[], |_| {}).unwrap();
                assert_eq!(got, ids(&g["tokens"]), "{case} ({style}, {device:?})");
            }
        }
    }
}

/// MistralConfig's default window is 4096: a config without `sliding_window` gets it (as
/// transformers does), and `inspect` says it was a default.
#[test]
fn mistral_without_a_window_key_gets_transformers_default() {
    let mut c = config("mistral_window", "v5");
    c.as_object_mut().unwrap().remove("sliding_window");
    let m = open_with("mistral_window", &c).unwrap();
    assert_eq!(m.understood().get("sliding_window"), Some("4096"));
    assert!(m.understood().to_string().contains("(default)"));
    let mut c = config("mistral_window", "v5");
    c["sliding_window"] = Value::Null;
    let m = open_with("mistral_window", &c).unwrap();
    assert_eq!(m.understood().get("sliding_window"), Some("none"));
}

/// Keys that are not `LlamaConfig` attributes are reported as unused, and do not stop a load.
#[test]
fn unknown_keys_are_reported_as_unused() {
    let mut c = config("llama_theta5000", "v5");
    c["my_custom_flag"] = json!(true);
    let m = open_with("llama_theta5000", &c).unwrap();
    let u = m.understood();
    assert!(u.unused.contains(&"my_custom_flag".to_string()), "{u}");
    assert!(
        u.no_effect.contains(&"initializer_range".to_string()),
        "{u}"
    );
}

/// Every key a model's architecture lists as read is read when present (the list and the code
/// agree).
#[test]
fn every_listed_key_is_read() {
    for case in CASES {
        for style in ["v4", "v5"] {
            let c = config(case, style);
            let mt = c["model_type"].as_str().unwrap();
            let keys: &[Key] = match mt {
                "llama" => graft_arch::arch::llama::LLAMA_KEYS,
                "mistral" => graft_arch::arch::llama::MISTRAL_KEYS,
                _ => graft_arch::arch::opt::OPT_KEYS,
            };
            let m = open_with(case, &c).unwrap();
            let u = m.understood();
            for k in c.as_object().unwrap().keys() {
                let rule = keys
                    .iter()
                    .chain(graft_arch::config::COMMON_KEYS)
                    .find(|x| x.name == k)
                    .map(|x| x.rule);
                if let Some(Rule::Read) = rule {
                    let null = c[k].is_null();
                    assert!(
                        null || u.settings.iter().any(|s| match &s.source {
                            graft_arch::config::Source::File(p) => p
                                .split(", ")
                                .any(|p| p == k || p.starts_with(&format!("{k}."))),
                            _ => false,
                        }) || k == "transformers_version",
                        "{case}/{style}: `{k}` is listed as read but no setting came from it\n{u}"
                    );
                }
            }
        }
    }
}

// ---- refused keys: one test each ----

/// The llama fixture's v5 config with `key` set to `value` (or the mistral / opt one).
fn refused(case: &str, edit: impl FnOnce(&mut Value), key: &str, value: &str) {
    let mut c = config(case, "v5");
    edit(&mut c);
    let e = match open_with(case, &c) {
        Ok(_) => panic!("{case}: `{key}` = {value} was accepted"),
        Err(e) => e.to_string(),
    };
    let want = format!("`{key}` = {value}");
    assert!(e.contains(&want), "{case}: expected «{want}» in: {e}");
}

fn set(key: &'static str, v: Value) -> impl FnOnce(&mut Value) {
    move |c: &mut Value| c[key] = v
}

macro_rules! refused_keys {
    ($($name:ident: $case:expr, $key:expr, $json:expr, $shown:expr;)*) => {
        $( #[test] fn $name() { refused($case, set($key, $json), $key, $shown); } )*
        /// (arch model_type, key) of every key refused above.
        const REFUSED: &[(&str, &str)] = &[$(($case, $key)),*];
    };
}

refused_keys! {
    refuses_encoder_decoder: "llama_theta5000", "is_encoder_decoder", json!(true), "true";
    refuses_cross_attention: "llama_theta5000", "add_cross_attention", json!(true), "true";
    refuses_pruned_heads: "llama_theta5000", "pruned_heads", json!({"0": [1]}), "{\"0\":[1]}";
    refuses_quantization_config: "llama_theta5000", "quantization_config", json!({"quant_method": "bitsandbytes"}), "{\"quant_method\":\"bitsandbytes\"}";
    refuses_llama_sliding_window: "llama_theta5000", "sliding_window", json!(4096), "4096";
    refuses_llama_use_sliding_window: "llama_theta5000", "use_sliding_window", json!(true), "true";
    refuses_pretraining_tp: "llama_theta5000", "pretraining_tp", json!(2), "2";
    refuses_other_activations: "llama_theta5000", "hidden_act", json!("gelu"), "\"gelu\"";
    refuses_partial_rotary_factor: "llama_theta5000", "partial_rotary_factor", json!(0.5), "0.5";
    refuses_sliding_layer_types_on_llama: "llama_theta5000", "layer_types", json!(["full_attention", "sliding_attention"]), "[\"full_attention\",\"sliding_attention\"]";
    refuses_full_layer_types_on_windowed_mistral: "mistral_window", "layer_types", json!(["full_attention", "full_attention"]), "[\"full_attention\",\"full_attention\"]";
    refuses_opt_activation: "opt", "activation_function", json!("silu"), "\"silu\"";
    refuses_opt_layer_norm_without_affine: "opt", "layer_norm_elementwise_affine", json!(false), "false";
}

#[test]
fn refuses_unimplemented_rope_types() {
    for ty in ["dynamic", "yarn", "proportional"] {
        refused(
            "llama_theta5000",
            |c| c["rope_parameters"]["rope_type"] = json!(ty),
            "rope_parameters.rope_type",
            &format!("\"{ty}\""),
        );
    }
}

#[test]
fn longrope_without_its_factors_is_refused_by_name() {
    let mut c = config("llama_theta5000", "v5");
    c["rope_parameters"]["rope_type"] = json!("longrope");
    let e = open_with("llama_theta5000", &c)
        .err()
        .expect("accepted")
        .to_string();
    assert!(e.contains("rope_parameters.short_factor"), "{e}");
}

#[test]
fn longrope_factors_that_do_not_cover_the_head_are_refused() {
    // the fixture's head_dim is 8: four frequencies, three factors given
    let mut c = config("llama_theta5000", "v5");
    c["rope_parameters"] = json!({"rope_type": "longrope", "rope_theta": 5000.0,
        "short_factor": [1.0, 1.0, 1.0], "long_factor": [1.0, 2.0, 3.0],
        "original_max_position_embeddings": 16});
    let e = open_with("llama_theta5000", &c)
        .err()
        .expect("accepted")
        .to_string();
    assert!(
        e.contains("rope_parameters") && e.contains("3 entries"),
        "{e}"
    );
}

#[test]
fn refuses_a_rope_per_layer_type_on_llama() {
    refused(
        "llama_theta5000",
        |c| {
            c["rope_parameters"] = json!({"full_attention": {"rope_type": "default", "rope_theta": 5000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
        },
        "rope_parameters",
        "{",
    );
}

#[test]
fn refuses_rope_spellings_that_disagree() {
    refused(
        "llama_theta5000",
        |c| c["rope_theta"] = json!(10000.0),
        "rope_parameters.rope_theta",
        "5000",
    );
    refused(
        "llama_linear",
        |c| c["rope_parameters"]["type"] = json!("dynamic"),
        "rope_parameters.rope_type",
        "\"linear\"",
    );
    refused(
        "llama_linear",
        |c| c["rope_scaling"] = json!({"type": "linear", "factor": 4.0}),
        "rope_scaling",
        "{",
    );
}

/// Every key an architecture accepts only at some values is in the table above.
#[test]
fn every_refusable_key_has_a_test() {
    let lists: [(&str, &[Key]); 4] = [
        ("llama_theta5000", graft_arch::config::COMMON_KEYS),
        ("llama_theta5000", graft_arch::arch::llama::LLAMA_KEYS),
        ("mistral_window", graft_arch::arch::llama::MISTRAL_KEYS),
        ("opt", graft_arch::arch::opt::OPT_KEYS),
    ];
    for (case, keys) in lists {
        for k in keys {
            if let Rule::Only { .. } = k.rule {
                assert!(
                    REFUSED
                        .iter()
                        .any(|(c, key)| *key == k.name && (*c == case || case == "llama_theta5000")),
                    "`{}` ({case}) is refused for some values but has no test",
                    k.name
                );
            }
        }
    }
}

#[test]
fn fixture_folders_are_all_tested() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures().join("config_styles"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type()
                .unwrap()
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    let mut want: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(on_disk, want);
    assert!(Path::new(&dir("llama_theta5000").join("adapter/adapter_config.json")).is_file());
}
