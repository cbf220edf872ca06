//! Hostile and broken input: every case must come back as a typed error (never a panic) whose
//! message names what is wrong. Fixture folders are copied into temporary folders before they
//! are changed; tests/fixtures is never modified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use graft_adapters::tensors::{load_safetensors, serialize_safetensors, LoadedTensor};
use graft_adapters::Error as CoreError;
use graft_arch::Error as ArchError;
use graft_models::{Error as ModelError, LoadAdapterOptions, Model};
use graft_tests::{copy_dir, fixtures};
use safetensors::Dtype;
use serde_json::{json, Value};
use tempfile::TempDir;

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

const ST: &str = "adapter_model.safetensors";
const CFG: &str = "adapter_config.json";
const PREFIX: &str = "base_model.model.";
const Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q_B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

/// A private copy of `cases/<case>/adapters/<adapter>` (config + weights at its top level).
fn adapter_copy(case: &str, adapter: &str) -> TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &fixtures()
            .join("cases")
            .join(case)
            .join("adapters")
            .join(adapter),
        tmp.path(),
    );
    tmp
}

/// A private copy of `models/<name>`.
fn model_copy(name: &str) -> TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixtures().join("models").join(name), tmp.path());
    tmp
}

fn llama() -> Model {
    Model::open_base(&fixtures().join("models/llama")).expect("open llama")
}

fn read_tensors(path: &Path) -> BTreeMap<String, LoadedTensor> {
    load_safetensors(path).expect("read fixture tensors")
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, LoadedTensor>) {
    std::fs::write(path, serialize_safetensors(tensors).expect("serialize"))
        .expect("write tensors");
}

fn f32_tensor(values: Vec<f32>, shape: &[usize]) -> LoadedTensor {
    LoadedTensor {
        tensor: Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor"),
        dtype: DType::F32,
    }
}

/// Writes a safetensors file from raw entries (any dtype), with PEFT's metadata.
fn write_raw_tensors(path: &Path, entries: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
            (n.to_string(), v)
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta)).expect("serialize raw");
    std::fs::write(path, bytes).expect("write raw");
}

/// Hand-built safetensors bytes: an 8-byte little-endian header length, the header, the data.
fn raw_file(header_len: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = header_len.to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(data);
    b
}

fn raw_file_exact(header: &str, data: &[u8]) -> Vec<u8> {
    raw_file(header.len() as u64, header.as_bytes(), data)
}

fn read_config(dir: &Path) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join(CFG)).expect("read config"))
        .expect("config json");
    match v {
        Value::Object(m) => m,
        other => panic!("fixture config is not an object: {other}"),
    }
}

fn write_config(dir: &Path, map: &serde_json::Map<String, Value>) {
    let text = serde_json::to_string_pretty(&Value::Object(map.clone())).expect("to json");
    std::fs::write(dir.join(CFG), text).expect("write config");
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut m = read_config(dir);
    f(&mut m);
    write_config(dir, &m);
}

/// Replaces the line `"key": …,` of a pretty-printed config by `"key": raw,` (for text that
/// serde_json cannot write, such as Python's `NaN`).
fn set_raw_config_value(dir: &Path, key: &str, raw: &str) {
    let text = std::fs::read_to_string(dir.join(CFG)).expect("read config");
    let needle = format!("\"{key}\": ");
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if let Some(pos) = l.find(&needle) {
                found = true;
                let comma = if l.trim_end().ends_with(',') { "," } else { "" };
                format!("{}{needle}{raw}{comma}", &l[..pos])
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no `{key}` in the config");
    std::fs::write(dir.join(CFG), out.join("\n")).expect("write config");
}

fn load(
    model: &mut Model,
    dir: &Path,
    opts: LoadAdapterOptions,
) -> graft_models::Result<graft_adapters::LoadReport> {
    model.load_adapter(dir, opts)
}

/// Loads `dir` onto a fresh llama and returns the graft-adapters error with its message.
fn load_llama_err(dir: &Path) -> (CoreError, String) {
    let mut m = llama();
    let e = load(&mut m, dir, LoadAdapterOptions::default()).expect_err("loading must fail");
    core(e)
}

fn core(e: ModelError) -> (CoreError, String) {
    let msg = e.to_string();
    match e {
        ModelError::Core(c) => (c, msg),
        other => panic!("expected a graft-adapters error, got {other:?}: {msg}"),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message does not mention `{p}`:\n{msg}");
    }
}

/// The text of an AdapterMismatch (panics with the real error otherwise).
fn mismatch_report(e: CoreError, msg: &str) -> String {
    match e {
        CoreError::AdapterMismatch { report, .. } => report,
        other => panic!("expected AdapterMismatch, got {other:?}: {msg}"),
    }
}

/// Asserts a safetensors format error that names the file; returns the message.
fn assert_safetensors_err(dir: &Path, reason_has: &[&str]) -> String {
    let (e, msg) = load_llama_err(dir);
    match e {
        CoreError::Safetensors { path, reason } => {
            assert!(path.ends_with(ST), "error path {path} should name {ST}");
            assert_contains(&reason, reason_has);
        }
        other => panic!("expected a Safetensors error, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &[ST, "not a valid safetensors file"]);
    msg
}

fn tensor_entries(
    tensors: &BTreeMap<String, LoadedTensor>,
) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    tensors
        .iter()
        .map(|(k, t)| {
            let v = t
                .tensor
                .flatten_all()
                .and_then(|x| x.to_vec1::<f32>())
                .expect("values");
            (
                k.clone(),
                Dtype::F32,
                t.tensor.dims().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect()
}

fn write_entries(path: &Path, entries: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let refs: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|(k, d, s, b)| (k.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_raw_tensors(path, &refs);
}

// ------------------------------------------------------------------------------------------
// 1. truncated files
// ------------------------------------------------------------------------------------------

#[test]
fn truncated_in_the_data() {
    let a = adapter_copy("lora_qv", "default");
    let bytes = std::fs::read(a.path().join(ST)).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let cut = 8 + n + (bytes.len() - 8 - n) / 2;
    std::fs::write(a.path().join(ST), &bytes[..cut]).expect("write");
    // the first tensor whose data is cut off is named
    let msg = assert_safetensors_err(a.path(), &["out of range"]);
    assert_contains(&msg, &["tensor `base_model.model.model.layers."]);
}

#[test]
fn truncated_inside_the_header() {
    let a = adapter_copy("lora_qv", "default");
    let bytes = std::fs::read(a.path().join(ST)).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    std::fs::write(a.path().join(ST), &bytes[..8 + n / 2]).expect("write");
    assert_safetensors_err(a.path(), &["header length", "truncated"]);
}

#[test]
fn truncated_inside_the_length_field() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::write(a.path().join(ST), [7u8, 0, 0]).expect("write");
    assert_safetensors_err(a.path(), &["3 bytes", "too short"]);
    std::fs::write(a.path().join(ST), []).expect("write");
    assert_safetensors_err(a.path(), &["0 bytes", "too short"]);
}

// ------------------------------------------------------------------------------------------
// 2. absurd header lengths
// ------------------------------------------------------------------------------------------

#[test]
fn header_length_absurdly_large() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::write(a.path().join(ST), raw_file(1 << 40, b"{}", &[])).expect("write");
    assert_safetensors_err(a.path(), &["header length 1099511627776", "limit"]);
    std::fs::write(a.path().join(ST), raw_file(u64::MAX, b"{}", &[])).expect("write");
    assert_safetensors_err(a.path(), &["header length", "limit"]);
}

#[test]
fn header_length_larger_than_the_file() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::write(a.path().join(ST), raw_file(1000, b"{}", &[])).expect("write");
    assert_safetensors_err(
        a.path(),
        &["header length 1000", "past the end of the file"],
    );
}

// ------------------------------------------------------------------------------------------
// 3. header not JSON / not an object
// ------------------------------------------------------------------------------------------

#[test]
fn header_not_json() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::write(a.path().join(ST), raw_file_exact("this is not json", &[])).expect("write");
    assert_safetensors_err(a.path(), &["header is not valid JSON"]);
    // not even UTF-8
    std::fs::write(
        a.path().join(ST),
        raw_file(4, &[0xff, 0xfe, 0xfd, 0xfc], &[]),
    )
    .expect("write");
    assert_safetensors_err(a.path(), &["header is not valid JSON"]);
    // a tensor entry that is not an object
    std::fs::write(
        a.path().join(ST),
        raw_file_exact(&format!(r#"{{"{Q_A}": 3}}"#), &[]),
    )
    .expect("write");
    let msg = assert_safetensors_err(a.path(), &[]);
    assert_contains(&msg, &[Q_A]);
}

#[test]
fn header_json_but_not_an_object() {
    let a = adapter_copy("lora_qv", "default");
    for header in ["[1, 2, 3]", "\"a string\"", "42", "null"] {
        std::fs::write(a.path().join(ST), raw_file_exact(header, &[])).expect("write");
        assert_safetensors_err(a.path(), &["header is not a JSON object"]);
    }
}

// ------------------------------------------------------------------------------------------
// 4. offsets
// ------------------------------------------------------------------------------------------

#[test]
fn overlapping_data_offsets() {
    let a = adapter_copy("lora_qv", "default");
    let header = format!(
        r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":[0,64]}},"{Q_B}":{{"dtype":"F32","shape":[16],"data_offsets":[32,96]}}}}"#
    );
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 96])).expect("write");
    assert_safetensors_err(a.path(), &[Q_A, Q_B, "overlap"]);
    // the same span twice
    let header = format!(
        r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":[0,64]}},"{Q_B}":{{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}}}"#
    );
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 64])).expect("write");
    assert_safetensors_err(a.path(), &[Q_A, Q_B, "overlap"]);
}

#[test]
fn out_of_range_data_offsets() {
    let a = adapter_copy("lora_qv", "default");
    // the data ends past the file
    let header = format!(r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}}}"#);
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 32])).expect("write");
    assert_safetensors_err(a.path(), &[Q_A, "[0, 64]", "out of range"]);
    // an offset far beyond anything
    let header = format!(
        r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":[0,64]}},"{Q_B}":{{"dtype":"F32","shape":[16],"data_offsets":[64,1099511627776]}}}}"#
    );
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 128])).expect("write");
    assert_safetensors_err(a.path(), &[Q_B, "out of range"]);
    // end before start
    let header = format!(r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":[64,0]}}}}"#);
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 64])).expect("write");
    assert_safetensors_err(a.path(), &[Q_A, "[64, 0]"]);
    // negative and non-integer offsets
    for offs in ["[-1, 63]", "[0.5, 64]", "[0]", "\"0-64\""] {
        let header = format!(r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":{offs}}}}}"#);
        std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 64])).expect("write");
        assert_safetensors_err(a.path(), &[Q_A, "data_offsets"]);
    }
    // a gap between tensors
    let header = format!(
        r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":[0,64]}},"{Q_B}":{{"dtype":"F32","shape":[16],"data_offsets":[72,136]}}}}"#
    );
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 136])).expect("write");
    assert_safetensors_err(a.path(), &[Q_B]);
    // bytes after the last tensor
    let header = format!(r#"{{"{Q_A}":{{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}}}"#);
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 80])).expect("write");
    assert_safetensors_err(a.path(), &[]);
}

// ------------------------------------------------------------------------------------------
// 5. dtype / byte length
// ------------------------------------------------------------------------------------------

#[test]
fn dtype_and_byte_length_disagree() {
    let a = adapter_copy("lora_qv", "default");
    // 4x4 F32 needs 64 bytes, the offsets give 32
    let header = format!(r#"{{"{Q_A}":{{"dtype":"F32","shape":[4,4],"data_offsets":[0,32]}}}}"#);
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 32])).expect("write");
    assert_safetensors_err(a.path(), &[Q_A, "[4, 4]", "F32", "64 bytes", "32"]);
    // an unknown dtype, a missing shape
    let header = format!(r#"{{"{Q_A}":{{"dtype":"F128","shape":[4],"data_offsets":[0,64]}}}}"#);
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 64])).expect("write");
    assert_safetensors_err(a.path(), &[Q_A, "F128"]);
    let header = format!(r#"{{"{Q_A}":{{"dtype":"F32","data_offsets":[0,64]}}}}"#);
    std::fs::write(a.path().join(ST), raw_file_exact(&header, &[0u8; 64])).expect("write");
    assert_safetensors_err(a.path(), &[Q_A, "shape"]);
}

#[test]
fn integer_dtype_for_lora_a() {
    let a = adapter_copy("lora_qv", "default");
    let mut entries = tensor_entries(&read_tensors(&a.path().join(ST)));
    for (k, d, _, b) in entries.iter_mut() {
        if k == Q_A {
            *d = Dtype::I32;
            *b = b
                .chunks_exact(4)
                .flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i32).to_le_bytes())
                .collect();
        }
    }
    write_entries(&a.path().join(ST), &entries);
    let (e, msg) = load_llama_err(a.path());
    match e {
        CoreError::BadDtype { name, dtype } => {
            assert_eq!(name, Q_A);
            assert_eq!(dtype, "I32");
        }
        other => panic!("expected BadDtype, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &[Q_A, "I32", "floating-point"]);
}

/// A file holding one zero-element `lora_A` of the given shape (written by hand: the
/// safetensors crate's own writer would overflow on such shapes).
fn zero_element_file(shape: &str) -> Vec<u8> {
    raw_file_exact(
        &format!(r#"{{"{Q_A}":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}}}"#),
        &[],
    )
}

/// A zero-element tensor whose other dimensions multiply past usize passes a per-dimension
/// bound and the element count (0, computed left to right), but candle's contiguous strides
/// (computed right to left, `Shape::stride_contiguous`) overflow.
#[test]
fn zero_element_tensor_with_huge_dims_is_an_error() {
    for shape in [
        "[0, 1099511627776, 1099511627776]",
        "[1099511627776, 1099511627776, 0]",
        "[0,0,0,0,0,0,0,0,0]",
    ] {
        let a = adapter_copy("lora_qv", "default");
        std::fs::write(a.path().join(ST), zero_element_file(shape)).expect("write");
        let (_, msg) = load_llama_err(a.path());
        assert_contains(&msg, &[Q_A]);
    }
}

#[test]
fn zero_element_tensor_with_dims_at_the_bound_is_an_error() {
    for shape in [
        "[0, 4294967296, 4294967296]",
        "[0, 1048576, 1048576, 1048576, 1048576]",
    ] {
        let a = adapter_copy("lora_qv", "default");
        std::fs::write(a.path().join(ST), zero_element_file(shape)).expect("write");
        let result = std::panic::catch_unwind(|| {
            let mut m = llama();
            m.load_adapter(a.path(), LoadAdapterOptions::default())
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        match result {
            Err(_) => panic!("{shape:?}: loading panicked instead of returning an error"),
            Ok(Ok(())) => panic!("{shape:?}: a zero-element lora_A was accepted"),
            Ok(Err(msg)) => assert_contains(&msg, &[Q_A]),
        }
    }
}

// ------------------------------------------------------------------------------------------
// 6. shapes against the model
// ------------------------------------------------------------------------------------------

#[test]
fn lora_a_with_wrong_in_features() {
    let a = adapter_copy("lora_qv", "default");
    let mut t = read_tensors(&a.path().join(ST));
    t.insert(Q_A.into(), f32_tensor(vec![0.1; 4 * 31], &[4, 31]));
    write_tensors(&a.path().join(ST), &t);
    let (e, msg) = load_llama_err(a.path());
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &[
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "expected [4, 32], got [4, 31]",
            "shape mismatches",
        ],
    );
    // only the broken tensor is reported
    assert!(!report.contains("v_proj"), "{report}");
    assert_contains(&msg, &["adapter `default` does not fit this base model"]);
}

// ------------------------------------------------------------------------------------------
// 7. numbers in the config
// ------------------------------------------------------------------------------------------

/// Python's json writes `NaN` for float('nan'); serde_json (like the JSON standard) refuses it,
/// so the file is "not valid JSON".
#[test]
fn lora_alpha_nan() {
    let a = adapter_copy("lora_qv", "default");
    set_raw_config_value(a.path(), "lora_alpha", "NaN");
    let (e, msg) = load_llama_err(a.path());
    let CoreError::ConfigNotJson(reason) = &e else {
        panic!("expected ConfigNotJson, got {e:?}: {msg}");
    };
    // serde_json says where: the `lora_alpha` line of the sorted config
    let line = std::fs::read_to_string(a.path().join(CFG))
        .expect("read")
        .lines()
        .position(|l| l.contains("\"lora_alpha\""))
        .expect("line")
        + 1;
    assert_contains(reason, &[&format!("line {line}")]);
    assert_contains(&msg, &[CFG, "not valid JSON"]);
    // Infinity too
    set_raw_config_value(a.path(), "lora_alpha", "Infinity");
    let (e, msg) = load_llama_err(a.path());
    assert!(matches!(e, CoreError::ConfigNotJson(_)), "{msg}");
}

/// The message for Python's NaN/Infinity says what is wrong and shows the line.
#[test]
fn lora_alpha_nan_message_names_nan_and_the_key() {
    let a = adapter_copy("lora_qv", "default");
    set_raw_config_value(a.path(), "lora_alpha", "NaN");
    let (_, msg) = load_llama_err(a.path());
    assert_contains(&msg, &["NaN", "lora_alpha"]);
}

#[test]
fn lora_alpha_negative() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.insert("lora_alpha".into(), json!(-8));
    });
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::InvalidConfig(_)),
        "expected InvalidConfig, got {e:?}"
    );
    assert_contains(&msg, &["`lora_alpha`", "-8"]);
}

#[test]
fn r_zero() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.insert("r".into(), json!(0));
    });
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::InvalidConfig(_)),
        "expected InvalidConfig, got {e:?}"
    );
    assert_contains(&msg, &["`r`", "r = 0 is invalid"]);
}

#[test]
fn r_fractional() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.insert("r".into(), json!(2.5));
    });
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::InvalidConfig(_)),
        "expected InvalidConfig, got {e:?}"
    );
    assert_contains(&msg, &["`r`", "2.5", "positive integer"]);
}

#[test]
fn r_missing_defaults_to_8_and_the_rank_4_tensors_do_not_fit() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.remove("r");
    });
    let (e, msg) = load_llama_err(a.path());
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &[
            "model.layers.0.self_attn.q_proj.lora_A.weight: expected [8, 32], got [4, 32]",
            "config says r=8",
            "`r`/`rank_pattern` in adapter_config.json does not match the tensors",
        ],
    );
}

// ------------------------------------------------------------------------------------------
// 8. targets that match nothing
// ------------------------------------------------------------------------------------------

#[test]
fn target_modules_match_nothing() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.insert("target_modules".into(), json!(["qkv_proj", "dense"]));
    });
    let (e, msg) = load_llama_err(a.path());
    match &e {
        CoreError::NoTargetModules { targets, examples } => {
            assert_contains(targets, &["qkv_proj", "dense"]);
            assert_contains(examples, &["model.embed_tokens"]);
        }
        other => panic!("expected NoTargetModules, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &["not found in the base model", "qkv_proj"]);
}

// ------------------------------------------------------------------------------------------
// 9. broken configs and other PEFT methods
// ------------------------------------------------------------------------------------------

#[test]
fn adapter_config_not_json() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::write(a.path().join(CFG), "{ \"peft_type\": \"LORA\", ").expect("write");
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::ConfigNotJson(_)),
        "expected ConfigNotJson, got {e:?}"
    );
    assert_contains(&msg, &[CFG, "not valid JSON", "line 1"]);
    // JSON, but not an object
    std::fs::write(a.path().join(CFG), "[\"LORA\"]").expect("write");
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::ConfigNotJson(_)),
        "expected ConfigNotJson, got {e:?}"
    );
    assert_contains(&msg, &["not an object"]);
    // not UTF-8
    std::fs::write(a.path().join(CFG), [0xffu8, 0xfe, b'{', b'}']).expect("write");
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::ConfigNotJson(_)),
        "expected ConfigNotJson, got {e:?}"
    );
    assert_contains(&msg, &["UTF-8"]);
}

#[test]
fn adapter_config_without_peft_type() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.remove("peft_type");
    });
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::InvalidConfig(_)),
        "expected InvalidConfig, got {e:?}"
    );
    assert_contains(&msg, &["`peft_type`", "missing"]);
}

#[test]
fn unsupported_peft_types_name_the_supported_methods() {
    for t in ["PROMPT_TUNING", "LOHA"] {
        let a = adapter_copy("lora_qv", "default");
        edit_config(a.path(), |m| {
            m.insert("peft_type".into(), json!(t));
        });
        let (e, msg) = load_llama_err(a.path());
        match &e {
            CoreError::UnsupportedPeftType(got) => assert_eq!(got, t),
            other => panic!("expected UnsupportedPeftType, got {other:?}: {msg}"),
        }
        assert_contains(&msg, &[t, "LORA, IA3 and ADALORA"]);
    }
}

// ------------------------------------------------------------------------------------------
// 10. missing files
// ------------------------------------------------------------------------------------------

#[test]
fn pickle_only_adapter_is_refused_naming_the_file() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::rename(a.path().join(ST), a.path().join("adapter_model.bin")).expect("rename");
    let (e, msg) = load_llama_err(a.path());
    match &e {
        CoreError::PickleNotSupported { path } => {
            assert!(path.ends_with("adapter_model.bin"), "{path}")
        }
        other => panic!("expected PickleNotSupported, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &["adapter_model.bin", "pickle", "safetensors"]);
}

/// A folder holding nothing but `adapter_model.bin` (no config) is not an adapter folder at all:
/// the missing config is reported first, as PEFT does.
#[test]
fn folder_with_only_a_pickle_says_pickle_even_without_a_config() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::rename(a.path().join(ST), a.path().join("adapter_model.bin")).expect("rename");
    std::fs::remove_file(a.path().join(CFG)).expect("rm");
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::PickleNotSupported { .. }),
        "expected PickleNotSupported, got {e:?}"
    );
    assert_contains(&msg, &["adapter_model.bin", "safetensors"]);
}

#[test]
fn folder_without_adapter_config() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::remove_file(a.path().join(CFG)).expect("rm");
    let (e, msg) = load_llama_err(a.path());
    match &e {
        CoreError::NoAdapterConfig { dir } => assert_eq!(Path::new(dir), a.path()),
        other => panic!("expected NoAdapterConfig, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &["no adapter_config.json found"]);
    // a folder that does not exist at all
    let (e, _) = load_llama_err(&a.path().join("nope"));
    assert!(matches!(e, CoreError::NoAdapterConfig { .. }), "{e:?}");
}

#[test]
fn folder_without_adapter_weights() {
    let a = adapter_copy("lora_qv", "default");
    std::fs::remove_file(a.path().join(ST)).expect("rm");
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::NoAdapterWeights { .. }),
        "expected NoAdapterWeights, got {e:?}"
    );
    assert_contains(&msg, &[ST]);
}

#[test]
fn adapter_config_over_the_size_limit() {
    let a = adapter_copy("lora_qv", "default");
    let big = format!(
        "{{\"peft_type\": \"LORA\", \"pad\": \"{}\"}}",
        "x".repeat((16 << 20) + 1)
    );
    std::fs::write(a.path().join(CFG), big).expect("write");
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(e, CoreError::FileTooLarge { .. }),
        "expected FileTooLarge, got {e:?}"
    );
    assert_contains(&msg, &[CFG, "limit"]);
}

// ------------------------------------------------------------------------------------------
// 11. key prefix
// ------------------------------------------------------------------------------------------

#[test]
fn keys_with_a_wrong_prefix() {
    let a = adapter_copy("lora_qv", "default");
    let t: BTreeMap<String, LoadedTensor> = read_tensors(&a.path().join(ST))
        .into_iter()
        .map(|(k, v)| (format!("language_model.{k}"), v))
        .collect();
    write_tensors(&a.path().join(ST), &t);
    let (e, msg) = load_llama_err(a.path());
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &[
            "none of the adapter's tensors names a module of this base",
            "key-prefix mismatch",
            "language_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "missing tensors",
            "model.layers.0.self_attn.q_proj.lora_A.weight",
        ],
    );
}

// ------------------------------------------------------------------------------------------
// 12. missing and extra tensors, allow_partial
// ------------------------------------------------------------------------------------------

fn without_one_lora_b() -> TempDir {
    let a = adapter_copy("lora_qv", "default");
    let mut t = read_tensors(&a.path().join(ST));
    assert!(t.remove(Q_B).is_some());
    write_tensors(&a.path().join(ST), &t);
    a
}

#[test]
fn missing_tensor_is_listed() {
    let a = without_one_lora_b();
    let (e, msg) = load_llama_err(a.path());
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &[
            "missing tensors",
            "model.layers.0.self_attn.q_proj.lora_B.weight",
        ],
    );
    assert!(!report.contains("unexpected tensors"), "{report}");
    assert_contains(&report, &["allow_partial"]);
}

#[test]
fn unexpected_tensor_is_listed() {
    let a = adapter_copy("lora_qv", "default");
    let mut t = read_tensors(&a.path().join(ST));
    // k_proj is not a target of this adapter; `foo.bar` is no module at all
    let k_a = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    t.insert(k_a.into(), f32_tensor(vec![0.0; 4 * 32], &[4, 32]));
    t.insert(
        "base_model.model.foo.bar".into(),
        f32_tensor(vec![0.0; 2], &[2]),
    );
    write_tensors(&a.path().join(ST), &t);
    let (e, msg) = load_llama_err(a.path());
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &["unexpected tensors", k_a, "base_model.model.foo.bar"],
    );
    assert!(!report.contains("missing tensors"), "{report}");
}

#[test]
fn allow_partial_accepts_a_missing_tensor_with_a_warning() {
    let a = without_one_lora_b();
    let mut m = llama();
    let opts = LoadAdapterOptions {
        allow_partial: true,
        ..Default::default()
    };
    let report = load(&mut m, a.path(), opts).expect("a partial load is accepted");
    let warnings = report.warnings.join("\n");
    assert_contains(
        &warnings,
        &[
            "partial load accepted",
            "model.layers.0.self_attn.q_proj.lora_B.weight",
        ],
    );
    // the three complete modules are attached, the incomplete one is not
    assert_eq!(report.targets.len(), 3);
    assert!(report
        .targets
        .iter()
        .all(|t| t.module != "model.layers.0.self_attn.q_proj"));
    assert_eq!(
        m.active_adapters().expect("active"),
        vec!["default".to_string()]
    );
    // the rendered report carries the warning too
    assert_contains(&report.to_string(), &["warning: partial load accepted"]);
}

// ------------------------------------------------------------------------------------------
// 13. resized vocabulary
// ------------------------------------------------------------------------------------------

#[test]
fn resized_vocabulary_is_named() {
    let a = adapter_copy("lora_embedding", "default");
    let mut t = read_tensors(&a.path().join(ST));
    let base_key = format!("{PREFIX}model.embed_tokens.base_layer.weight");
    let emb_a = format!("{PREFIX}model.embed_tokens.lora_embedding_A");
    assert_eq!(t[&base_key].tensor.dims(), &[128, 32]);
    assert_eq!(t[&emb_a].tensor.dims(), &[4, 128]);
    t.insert(
        base_key.clone(),
        f32_tensor(vec![0.5; 130 * 32], &[130, 32]),
    );
    t.insert(emb_a.clone(), f32_tensor(vec![0.5; 4 * 130], &[4, 130]));
    write_tensors(&a.path().join(ST), &t);
    let (e, msg) = load_llama_err(a.path());
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &["vocabulary", "resize", "130", "128", "model.embed_tokens"],
    );
}

// ------------------------------------------------------------------------------------------
// 14. adapter for another base
// ------------------------------------------------------------------------------------------

#[test]
fn opt_adapter_on_llama() {
    let a = adapter_copy("opt_lora", "default");
    let (e, msg) = load_llama_err(a.path());
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &[
            "wrong base model",
            "base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight",
        ],
    );
}

#[test]
fn llama_adapter_on_opt() {
    let a = adapter_copy("lora_qv", "default");
    let mut m = Model::open_base(&fixtures().join("models/opt")).expect("opt");
    let (e, msg) = core(
        m.load_adapter(a.path(), LoadAdapterOptions::default())
            .expect_err("must fail"),
    );
    let report = mismatch_report(e, &msg);
    assert_contains(
        &report,
        &[
            "wrong base model",
            "model.decoder.layers.0.self_attn.q_proj",
        ],
    );
}

// ------------------------------------------------------------------------------------------
// 15. NaN in the tensor data
// ------------------------------------------------------------------------------------------

#[test]
fn nan_in_lora_b() {
    let a = adapter_copy("lora_qv", "default");
    let mut t = read_tensors(&a.path().join(ST));
    let b = &t[Q_B];
    let dims = b.tensor.dims().to_vec();
    let mut v = b
        .tensor
        .flatten_all()
        .and_then(|x| x.to_vec1::<f32>())
        .expect("values");
    v[5] = f32::NAN;
    t.insert(Q_B.into(), f32_tensor(v, &dims));
    write_tensors(&a.path().join(ST), &t);
    let (e, msg) = load_llama_err(a.path());
    match &e {
        CoreError::NonFinite { name } => assert_eq!(name, Q_B),
        other => panic!("expected NonFinite, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &[Q_B, "NaN"]);
}

#[test]
fn infinity_in_lora_a() {
    let a = adapter_copy("lora_qv", "default");
    let mut t = read_tensors(&a.path().join(ST));
    let dims = t[Q_A].tensor.dims().to_vec();
    let mut v = t[Q_A]
        .tensor
        .flatten_all()
        .and_then(|x| x.to_vec1::<f32>())
        .expect("values");
    v[0] = f32::NEG_INFINITY;
    t.insert(Q_A.into(), f32_tensor(v, &dims));
    write_tensors(&a.path().join(ST), &t);
    let (e, _) = load_llama_err(a.path());
    assert!(
        matches!(&e, CoreError::NonFinite { name } if name == Q_A),
        "{e:?}"
    );
}

// ------------------------------------------------------------------------------------------
// 16. invalid regex
// ------------------------------------------------------------------------------------------

#[test]
fn invalid_regex_target_modules() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.insert("target_modules".into(), json!(".*(q_proj"));
    });
    let (e, msg) = load_llama_err(a.path());
    match &e {
        CoreError::BadRegex { field, pattern, .. } => {
            assert_eq!(field, "target_modules");
            assert_eq!(pattern, ".*(q_proj");
        }
        other => panic!("expected BadRegex, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &["target_modules", ".*(q_proj"]);
}

#[test]
fn invalid_regex_in_rank_pattern_key() {
    let a = adapter_copy("lora_qv", "default");
    edit_config(a.path(), |m| {
        m.insert("rank_pattern".into(), json!({"q_proj[": 2}));
    });
    let (e, msg) = load_llama_err(a.path());
    assert!(
        matches!(&e, CoreError::BadRegex { field, .. } if field == "rank_pattern"),
        "{e:?}"
    );
    assert_contains(&msg, &["rank_pattern", "q_proj["]);
}

// ------------------------------------------------------------------------------------------
// 17. model folders
// ------------------------------------------------------------------------------------------

fn open_err(dir: &Path) -> (ModelError, String) {
    match Model::open_base(dir) {
        Ok(_) => panic!("opening {} must fail", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            (e, msg)
        }
    }
}

fn edit_model_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
    let Value::Object(m) = &mut v else {
        panic!("config.json is not an object")
    };
    f(m);
    std::fs::write(&p, serde_json::to_string_pretty(&v).expect("to json")).expect("write");
}

#[test]
fn model_config_not_json() {
    let m = model_copy("llama");
    std::fs::write(m.path().join("config.json"), "{\"model_type\": \"llama\",").expect("write");
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(e, ModelError::BadModelConfig(_)),
        "expected BadModelConfig, got {e:?}"
    );
    assert_contains(&msg, &["config.json"]);
}

#[test]
fn model_folder_without_config() {
    let m = model_copy("llama");
    std::fs::remove_file(m.path().join("config.json")).expect("rm");
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(e, ModelError::NoModelConfig { .. }),
        "expected NoModelConfig, got {e:?}"
    );
    assert_contains(&msg, &["no config.json"]);
}

#[test]
fn model_folder_without_weights() {
    let m = model_copy("llama");
    std::fs::remove_file(m.path().join("model.safetensors")).expect("rm");
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(e, ModelError::Arch(ArchError::NoWeights { .. })),
        "expected NoWeights, got {e:?}"
    );
    assert_contains(&msg, &["model.safetensors"]);
    std::fs::write(m.path().join("pytorch_model.bin"), b"pickle").expect("write");
    let (_, msg) = open_err(m.path());
    assert_contains(&msg, &["pytorch_model.bin", "pickle"]);
}

#[test]
fn unsupported_model_type() {
    let m = model_copy("llama");
    edit_model_config(m.path(), |c| {
        c.insert("model_type".into(), json!("gpt2"));
    });
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(&e, ModelError::Arch(graft_arch::Error::UnsupportedArchitecture(t, _)) if t == "gpt2"),
        "{e:?}"
    );
    assert_contains(
        &msg,
        &[
            "gpt2",
            "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, opt",
        ],
    );
}

#[test]
fn bad_numbers_in_model_config() {
    let m = model_copy("llama");
    edit_model_config(m.path(), |c| {
        c.insert("hidden_size".into(), json!(0));
    });
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(e, ModelError::Arch(graft_arch::Error::BadConfig(_))),
        "{e:?}"
    );
    assert_contains(&msg, &["hidden_size"]);
    let m = model_copy("llama");
    edit_model_config(m.path(), |c| {
        c.remove("vocab_size");
    });
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(e, ModelError::Arch(graft_arch::Error::BadConfig(_))),
        "{e:?}"
    );
    assert_contains(&msg, &["vocab_size"]);
}

#[test]
fn model_weight_missing() {
    let m = model_copy("llama");
    let p = m.path().join("model.safetensors");
    let mut t = read_tensors(&p);
    let name = "model.layers.1.mlp.down_proj.weight";
    assert!(t.remove(name).is_some());
    write_tensors(&p, &t);
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(&e, ModelError::Arch(ArchError::MissingWeight { name: n }) if n == name),
        "{e:?}"
    );
    assert_contains(&msg, &[name, "missing"]);
}

#[test]
fn model_weight_with_wrong_shape() {
    let m = model_copy("llama");
    let p = m.path().join("model.safetensors");
    let mut t = read_tensors(&p);
    let name = "model.layers.0.self_attn.k_proj.weight";
    t.insert(name.into(), f32_tensor(vec![0.0; 32 * 32], &[32, 32]));
    write_tensors(&p, &t);
    let (e, msg) = open_err(m.path());
    match &e {
        ModelError::Arch(ArchError::WeightShape {
            name: n,
            expected,
            got,
        }) => {
            assert_eq!(n, name);
            assert_eq!(expected, &[16, 32]);
            assert_eq!(got, &[32, 32]);
        }
        other => panic!("expected WeightShape, got {other:?}: {msg}"),
    }
    assert_contains(&msg, &[name]);
}

#[test]
fn model_weights_truncated() {
    let m = model_copy("llama");
    let p = m.path().join("model.safetensors");
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() - 100]).expect("write");
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(e, ModelError::Core(CoreError::Safetensors { .. })),
        "{e:?}"
    );
    assert_contains(&msg, &["model.safetensors"]);
}

#[test]
fn sharded_index_escaping_the_folder() {
    let m = model_copy("llama-tied");
    let p = m.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
    let map = v["weight_map"].as_object_mut().expect("weight_map");
    let first = map.keys().next().cloned().expect("a key");
    map.insert(first, json!("../../etc/passwd"));
    std::fs::write(&p, serde_json::to_string(&v).expect("json")).expect("write");
    let (e, msg) = open_err(m.path());
    assert!(
        matches!(e, ModelError::Arch(ArchError::BadWeightFiles(_))),
        "{e:?}"
    );
    assert_contains(&msg, &["../../etc/passwd"]);
}

#[test]
fn token_id_out_of_range() {
    let m = llama();
    let e = m.logits(&[1, 5, 128]).expect_err("must fail");
    assert!(
        matches!(
            e,
            ModelError::TokenOutOfRange {
                id: 128,
                vocab: 128
            }
        ),
        "{e:?}"
    );
    assert_contains(&e.to_string(), &["128", "vocabulary"]);
    let e = m.logits(&[u32::MAX]).expect_err("must fail");
    assert!(matches!(e, ModelError::TokenOutOfRange { .. }), "{e:?}");
    // no tokens, too many tokens
    assert!(matches!(m.logits(&[]), Err(ModelError::BaseModel(_))));
    let long = vec![1u32; 65];
    assert!(matches!(
        m.logits(&long),
        Err(ModelError::TooLong { len: 65, max: 64 })
    ));
}

// ------------------------------------------------------------------------------------------
// misc
// ------------------------------------------------------------------------------------------

#[test]
fn adapter_name_that_would_escape_the_folder() {
    let mut m = llama();
    for name in ["../evil", "a/b", "x.y", ""] {
        let opts = LoadAdapterOptions {
            adapter_name: Some(name.into()),
            ..Default::default()
        };
        let (e, _) = core(
            m.load_adapter(&fixtures().join("cases/lora_qv/adapters/default"), opts)
                .expect_err("must fail"),
        );
        assert!(
            matches!(&e, CoreError::BadAdapterName { name: n, .. } if n == name),
            "{name}: {e:?}"
        );
    }
    assert!(matches!(
        m.active_adapters(),
        Err(ModelError::Core(CoreError::NoAdapterLoaded))
    ));
}

#[test]
fn fixture_copies_are_private_and_identical() {
    // sanity: the helpers never touch tests/fixtures
    let a = adapter_copy("lora_qv", "default");
    let original: PathBuf = fixtures().join("cases/lora_qv/adapters/default");
    assert_ne!(a.path(), original.as_path());
    assert_eq!(
        std::fs::read(a.path().join(ST)).expect("copy"),
        std::fs::read(original.join(ST)).expect("original")
    );
}
