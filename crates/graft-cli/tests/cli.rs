//! The `graft` binary against PEFT's fixtures, through the exact CLI interface other work uses.

use std::path::{Path, PathBuf};
use std::process::Command;

use graft_adapters::tensors::load_safetensors;
use graft_tests::{assert_close, fixtures};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn graft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run graft")
}

const TOKENS: &str = "1,5,17,42,99,3,64,7,120,0,33,2";

fn logits_case(case: &str, run: &str, extra: &[&str]) {
    logits_case_tol(case, run, extra, 1e-4)
}

fn logits_case_tol(case: &str, run: &str, extra: &[&str], tol: f32) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("l.safetensors");
    let mut args = vec!["logits"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--tokens", TOKENS, "--out", out.to_str().unwrap()]);
    let o = graft(&args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = load_safetensors(&out).unwrap();
    let want = load_safetensors(
        &fixtures()
            .join("cases")
            .join(case)
            .join("logits.safetensors"),
    )
    .unwrap();
    assert_eq!(got.len(), 1);
    assert_close(
        &format!("cli {case}/{run}"),
        &got["logits"].tensor,
        &want[run].tensor,
        tol,
    );
}

#[test]
fn logits_with_one_adapter() {
    logits_case(
        "lora_qv",
        "on",
        &[
            "--model",
            "tests/fixtures/models/llama",
            "--adapter",
            "tests/fixtures/cases/lora_qv/adapters/default",
        ],
    );
}

#[test]
fn logits_from_an_adapter_folder_given_as_model() {
    // base_model_name_or_path in the fixture is the repo-relative base folder.
    logits_case(
        "lora_qv",
        "on",
        &["--model", "tests/fixtures/cases/lora_qv/adapters/default"],
    );
}

#[test]
fn logits_with_two_active_adapters_one_off_and_disabled() {
    let base = ["--model", "tests/fixtures/models/llama"];
    let a = "a=tests/fixtures/cases/multi_adapter/adapters/a";
    let b = "b=tests/fixtures/cases/multi_adapter/adapters/b";
    let mut ab = base.to_vec();
    ab.extend_from_slice(&["--adapter", a, "--adapter", b, "--active", "a,b"]);
    logits_case("multi_adapter", "ab", &ab);
    let mut first = base.to_vec();
    first.extend_from_slice(&["--adapter", a, "--adapter", b]);
    logits_case("multi_adapter", "a", &first);
    let mut only_b = base.to_vec();
    only_b.extend_from_slice(&["--adapter", a, "--adapter", b, "--active", "b"]);
    logits_case("multi_adapter", "b", &only_b);
    let mut off = first.clone();
    off.push("--disable-adapters");
    logits_case("multi_adapter", "off", &off);
}

/// `--device gpu` (lavapipe in CI) against PEFT's logits, within the GPU path's 1e-3; and
/// greedy ids equal to the CPU's.
#[test]
fn device_gpu_logits_and_generate() {
    if graft_tests::test_gpu().is_none() {
        return;
    }
    let base = ["--device", "gpu", "--model", "tests/fixtures/models/llama"];
    let mut one = base.to_vec();
    one.extend_from_slice(&["--adapter", "tests/fixtures/cases/lora_qv/adapters/default"]);
    logits_case_tol("lora_qv", "on", &one, 1e-3);
    let mut ab = base.to_vec();
    ab.extend_from_slice(&[
        "--adapter",
        "a=tests/fixtures/cases/multi_adapter/adapters/a",
        "--adapter",
        "b=tests/fixtures/cases/multi_adapter/adapters/b",
        "--active",
        "a,b",
    ]);
    logits_case_tol("multi_adapter", "ab", &ab, 1e-3);
    let gen = |device: &str| {
        let o = graft(&[
            "generate",
            "--device",
            device,
            "--model",
            "tests/fixtures/models/llama",
            "--adapter",
            "tests/fixtures/cases/lora_qv/adapters/default",
            "--tokens",
            "1,5,17,42",
            "--max-new-tokens",
            "6",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8(o.stderr).unwrap(),
        )
    };
    let (gpu_ids, gpu_err) = gen("gpu");
    let (cpu_ids, cpu_err) = gen("cpu");
    assert_eq!(gpu_ids, cpu_ids);
    assert!(gpu_err.contains("graft: running on"), "{gpu_err}");
    assert!(!cpu_err.contains("graft: running on"), "{cpu_err}");
}

#[test]
fn generate_prints_only_ids_on_stdout() {
    let o = graft(&[
        "generate",
        "--model",
        "tests/fixtures/cases/lora_qv/adapters/default",
        "--max-new-tokens",
        "16",
        "--tokens",
        "1,5,17,42,99",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let case: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("cases/lora_qv/case.json")).unwrap())
            .unwrap();
    let want: Vec<String> = case["generation"]["runs"]["on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let stdout = String::from_utf8(o.stdout).unwrap();
    // The fixture's EOS (2) never appears in PEFT's 16 tokens, so graft produces all 16.
    assert_eq!(stdout.trim(), want.join(","));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tokens/s"));
}

#[test]
fn inspect_reports_targets_ranks_and_scales() {
    let o = graft(&[
        "inspect",
        "tests/fixtures/cases/all_linear_rslora_patterns/adapters/default",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(s.contains("peft_type: LORA"), "{s}");
    assert!(
        s.contains("model.layers.0.self_attn.v_proj [lora] r=2 alpha=8 scale=5.656854"),
        "{s}"
    );
    assert!(
        s.contains("model.layers.1.self_attn.q_proj [lora] r=4 alpha=3 scale=1.500000"),
        "{s}"
    );
}

#[test]
fn errors_are_messages_not_panics() {
    let o = graft(&[
        "logits",
        "--model",
        "tests/fixtures/models/llama",
        "--adapter",
        "tests/fixtures/cases/opt_lora/adapters/default",
        "--tokens",
        "1,2",
        "--out",
        "/dev/null",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = graft(&[
        "logits",
        "--model",
        "tests/fixtures/models/llama",
        "--tokens",
        "1,500",
        "--out",
        "/dev/null",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("out of range"));
}

/// A model folder from the config-styles fixture, with its transformers-5 config.
fn v5_model_dir(case: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixtures().join("config_styles").join(case);
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        d.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.v5.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(
        d.path().join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    d
}

#[test]
fn inspect_model_prints_the_configuration_as_understood() {
    let d = v5_model_dir("llama_theta5000", |_| {});
    let o = graft(&["inspect", "--model", d.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(s.contains("read as transformers' LlamaConfig"), "{s}");
    assert!(
        s.contains("default, theta 5000  (from `rope_parameters`)"),
        "{s}"
    );
    assert!(s.contains("transformers 5.25.0"), "{s}");
}

#[test]
fn a_refused_config_key_is_named_with_its_value() {
    let d = v5_model_dir("llama_theta5000", |c| {
        c["rope_parameters"]["rope_type"] = serde_json::json!("yarn")
    });
    let o = graft(&[
        "logits",
        "--model",
        d.path().to_str().unwrap(),
        "--device",
        "cpu",
        "--tokens",
        "1,2",
        "--out",
        "/dev/null",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`rope_parameters.rope_type` = \"yarn\" is not supported"),
        "{err}"
    );
}
