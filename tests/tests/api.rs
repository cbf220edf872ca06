//! The seed API (transformers' `PeftAdapterMixin` semantics) on the fixture models and
//! adapters: state dicts, `set_adapter`, `load_adapter`, `delete_adapter`,
//! `enable/disable_adapters`, `add_adapter`, `save_pretrained` and `from_pretrained`.
//! Every call that fails must leave the model exactly as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use graft_adapters::config::config_from_kwargs;
use graft_adapters::tensors::{load_safetensors, LoadedTensor};
use graft_adapters::Error as CoreError;
use graft_models::{Error as ModelError, LoadAdapterOptions, Model};
use graft_tests::{assert_close, copy_dir, fixtures, max_abs_diff};
use serde_json::{json, Map, Value};
use tempfile::TempDir;

const TOL: f32 = 1e-4;
const ST: &str = "adapter_model.safetensors";
const CFG: &str = "adapter_config.json";
const PREFIX: &str = "base_model.model.";

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn case_json(case: &str) -> Value {
    read_json(&fixtures().join("cases").join(case).join("case.json"))
}

fn all_cases() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures().join("cases"))
        .expect("cases")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tokens() -> Vec<u32> {
    case_json("lora_qv")["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token") as u32)
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn open(name: &str) -> Model {
    Model::open_base(&model_dir(name)).expect("open base")
}

fn adapter_dir(case: &str, adapter: &str) -> PathBuf {
    fixtures()
        .join("cases")
        .join(case)
        .join("adapters")
        .join(adapter)
}

fn named(name: &str) -> LoadAdapterOptions {
    LoadAdapterOptions {
        adapter_name: Some(name.into()),
        ..Default::default()
    }
}

fn load_as(model: &mut Model, case: &str, adapter: &str, name: &str) {
    model
        .load_adapter(&adapter_dir(case, adapter), named(name))
        .unwrap_or_else(|e| panic!("loading {case}/{adapter} as {name}: {e}"));
}

/// A model with every adapter of `case`, loaded from `root/<path>` under its case name.
fn case_model(case: &str, root: &Path) -> Model {
    let c = case_json(case);
    let mut m = open(str_of(&c["model"]));
    for a in c["adapters"].as_array().expect("adapters") {
        let name = str_of(&a["name"]);
        m.load_adapter(&root.join(str_of(&a["path"])), named(name))
            .unwrap_or_else(|e| panic!("{case}: loading {name}: {e}"));
    }
    m
}

fn reference_logits(case: &str) -> BTreeMap<String, LoadedTensor> {
    load_safetensors(
        &fixtures()
            .join("cases")
            .join(case)
            .join("logits.safetensors"),
    )
    .expect("logits")
}

fn logits(m: &Model) -> Tensor {
    m.logits(&tokens()).expect("logits")
}

fn assert_bit_identical(label: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims(), "{label}: shapes");
    let d = max_abs_diff(a, b);
    assert!(
        d == 0.0,
        "{label}: expected bit-identical logits, max |diff| = {d}"
    );
}

fn names(m: &Model) -> Vec<String> {
    m.registry().adapter_names()
}

fn active(m: &Model) -> Vec<String> {
    m.active_adapters().expect("active_adapters")
}

fn core_err(e: ModelError) -> CoreError {
    match e {
        ModelError::Core(c) => c,
        other => panic!("expected a graft-adapters error, got {other:?}: {other}"),
    }
}

/// Every file under `dir`, as sorted relative paths.
fn file_tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(
                    p.strip_prefix(root)
                        .expect("prefix")
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn config_map(dir: &Path) -> Map<String, Value> {
    match read_json(&dir.join(CFG)) {
        Value::Object(m) => m,
        other => panic!("config is not an object: {other}"),
    }
}

fn as_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| str_of(s).to_string())
        .collect()
}

/// Same keys; equal values except for `skip`; `as_sets` compared as sets of strings.
fn assert_configs_match(
    label: &str,
    got: &Map<String, Value>,
    want: &Map<String, Value>,
    skip: &[&str],
    as_sets: &[&str],
) {
    let gk: BTreeSet<&String> = got.keys().collect();
    let wk: BTreeSet<&String> = want.keys().collect();
    assert_eq!(gk, wk, "{label}: config keys differ");
    for (k, w) in want {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let g = &got[k];
        if as_sets.contains(&k.as_str()) {
            assert_eq!(as_set(g), as_set(w), "{label}: `{k}` (as a set)");
        } else {
            assert_eq!(g, w, "{label}: `{k}`");
        }
    }
}

/// Same keys, shapes and dtypes; with `values`, bit-identical values too.
fn assert_tensor_files_match(label: &str, got: &Path, want: &Path, values: bool) {
    let g = load_safetensors(got).expect("saved tensors");
    let w = load_safetensors(want).expect("reference tensors");
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "{label}: keys"
    );
    for (k, wt) in &w {
        let gt = &g[k];
        assert_eq!(gt.tensor.dims(), wt.tensor.dims(), "{label}: shape of {k}");
        assert_eq!(gt.dtype, wt.dtype, "{label}: dtype of {k}");
        if values {
            assert_bit_identical(&format!("{label}: {k}"), &gt.tensor, &wt.tensor);
        }
    }
    // PEFT's metadata
    let raw = std::fs::read(got).expect("read saved");
    let st = safetensors::SafeTensors::read_metadata(&raw)
        .expect("saved file parses")
        .1;
    assert_eq!(
        st.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt"),
        "{label}: __metadata__"
    );
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|x| x.to_vec1::<f32>())
        .expect("values")
}

// ------------------------------------------------------------------------------------------
// get_adapter_state_dict
// ------------------------------------------------------------------------------------------

#[test]
fn state_dict_keys_and_shapes_match_peft_for_every_case() {
    let cases = all_cases();
    assert!(cases.len() >= 15, "{cases:?}");
    for case in cases {
        let c = case_json(&case);
        let root = fixtures().join("cases").join(&case);
        let m = case_model(&case, &root);
        for a in c["adapters"].as_array().expect("adapters") {
            let name = str_of(&a["name"]);
            let sd = m.get_adapter_state_dict(Some(name)).expect("state dict");
            let want: Vec<String> = c["peft_state_dict_keys"][name]
                .as_array()
                .expect("peft_state_dict_keys")
                .iter()
                .map(|k| str_of(k).to_string())
                .collect();
            let got: Vec<String> = sd.keys().cloned().collect();
            assert_eq!(got, want, "{case}/{name}: keys");
            let file = load_safetensors(&root.join(str_of(&a["path"])).join(ST)).expect("file");
            assert_eq!(file.len(), sd.len(), "{case}/{name}");
            for (k, t) in &file {
                let short = k.strip_prefix(PREFIX).expect("PEFT prefix");
                let s = &sd[short];
                assert_eq!(
                    s.tensor.dims(),
                    t.tensor.dims(),
                    "{case}/{name}: shape of {short}"
                );
                assert_eq!(s.dtype, t.dtype, "{case}/{name}: dtype of {short}");
                assert_bit_identical(&format!("{case}/{name}: {short}"), &s.tensor, &t.tensor);
            }
        }
    }
}

#[test]
fn state_dict_without_a_name_is_the_active_adapter() {
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    m.set_adapter(&["b"]).expect("set b");
    let none = m.get_adapter_state_dict(None).expect("state dict");
    let b = m.get_adapter_state_dict(Some("b")).expect("state dict");
    assert_eq!(
        none.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>()
    );
    let e = core_err(m.get_adapter_state_dict(Some("nope")).expect_err("unknown"));
    assert!(
        matches!(&e, CoreError::AdapterNotFound { name, .. } if name == "nope"),
        "{e:?}"
    );
}

// ------------------------------------------------------------------------------------------
// set_adapter
// ------------------------------------------------------------------------------------------

#[test]
fn set_adapter_unknown_name_changes_nothing() {
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    m.set_adapter(&["b"]).expect("set b");
    let before = logits(&m);
    assert_close(
        "b",
        &before,
        &reference_logits("multi_adapter")["b"].tensor,
        TOL,
    );

    for bad in [&["nope"][..], &["a", "nope"][..], &["nope", "b"][..]] {
        let e = core_err(m.set_adapter(bad).expect_err("must fail"));
        match &e {
            CoreError::AdapterNotFound { name, known } => {
                assert_eq!(name, "nope");
                assert_eq!(known, &vec!["a".to_string(), "b".to_string()]);
            }
            other => panic!("{bad:?}: expected AdapterNotFound, got {other:?}"),
        }
        assert_eq!(active(&m), vec!["b".to_string()], "{bad:?}");
        assert_eq!(names(&m), vec!["a".to_string(), "b".to_string()]);
        assert_bit_identical(&format!("after set_adapter({bad:?})"), &logits(&m), &before);
    }
    assert!(e_contains(m.set_adapter(&["zzz"]), "zzz"));
}

fn e_contains<T>(r: graft_models::Result<T>, s: &str) -> bool {
    matches!(r, Err(e) if e.to_string().contains(s))
}

#[test]
fn set_adapter_two_with_modules_to_save_is_refused() {
    let mut m = open("llama");
    load_as(&mut m, "modules_to_save_lm_head", "default", "saved");
    load_as(&mut m, "lora_qv", "default", "plain");
    assert_eq!(active(&m), vec!["saved".to_string()]);
    let before = logits(&m);
    assert_close(
        "saved",
        &before,
        &reference_logits("modules_to_save_lm_head")["on"].tensor,
        TOL,
    );

    for pair in [&["saved", "plain"][..], &["plain", "saved"][..]] {
        let e = core_err(m.set_adapter(pair).expect_err("must fail"));
        assert!(
            matches!(&e, CoreError::MultipleModulesToSave(v) if v.len() == 2),
            "{e:?}"
        );
        assert!(e.to_string().contains("modules_to_save"), "{e}");
        assert_eq!(active(&m), vec!["saved".to_string()]);
        assert_bit_identical("after a refused set_adapter", &logits(&m), &before);
    }
    // each alone is fine
    m.set_adapter(&["plain"]).expect("plain alone");
    assert_close(
        "plain",
        &logits(&m),
        &reference_logits("lora_qv")["on"].tensor,
        TOL,
    );
}

/// A name given twice is one adapter, applied once.
#[test]
fn set_adapter_with_a_repeated_name_applies_it_once() {
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    m.set_adapter(&["b", "b"]).expect("set b twice");
    assert_eq!(active(&m), vec!["b".to_string()]);
    assert_close(
        "b twice",
        &logits(&m),
        &reference_logits("multi_adapter")["b"].tensor,
        TOL,
    );
    // an empty list is refused and changes nothing
    assert!(m.set_adapter(&[]).is_err());
    assert_eq!(active(&m), vec!["b".to_string()]);
}

#[test]
fn set_adapter_several_sums_their_deltas() {
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    let refs = reference_logits("multi_adapter");
    assert_eq!(
        active(&m),
        vec!["a".to_string()],
        "the first loaded adapter is active"
    );
    assert_close("a", &logits(&m), &refs["a"].tensor, TOL);
    m.set_adapter(&["a", "b"]).expect("set a, b");
    assert_eq!(active(&m), vec!["a".to_string(), "b".to_string()]);
    assert_close("ab", &logits(&m), &refs["ab"].tensor, TOL);
}

// ------------------------------------------------------------------------------------------
// load_adapter
// ------------------------------------------------------------------------------------------

#[test]
fn load_adapter_with_a_duplicate_name_is_refused() {
    let mut m = open("llama");
    load_as(&mut m, "lora_qv", "default", "x");
    let before = logits(&m);
    let sd_before = m.get_adapter_state_dict(Some("x")).expect("sd");
    let e = core_err(
        m.load_adapter(&adapter_dir("ia3", "default"), named("x"))
            .expect_err("duplicate"),
    );
    assert!(
        matches!(&e, CoreError::AdapterExists(n) if n == "x"),
        "{e:?}"
    );
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(names(&m), vec!["x".to_string()]);
    assert_eq!(active(&m), vec!["x".to_string()]);
    let sd_after = m.get_adapter_state_dict(Some("x")).expect("sd");
    assert_eq!(
        sd_after.keys().collect::<Vec<_>>(),
        sd_before.keys().collect::<Vec<_>>()
    );
    assert_bit_identical("after a refused duplicate", &logits(&m), &before);
    // add_adapter refuses the duplicate too
    let cfg = config_from_kwargs(json!({"peft_type": "LORA", "target_modules": ["q_proj"]}))
        .expect("cfg");
    let e = core_err(m.add_adapter(cfg, Some("x"), 0).expect_err("duplicate"));
    assert!(
        matches!(&e, CoreError::AdapterExists(n) if n == "x"),
        "{e:?}"
    );
    assert_eq!(names(&m), vec!["x".to_string()]);
    assert_bit_identical("after a refused add_adapter", &logits(&m), &before);
}

#[test]
fn failing_load_leaves_the_model_unchanged() {
    let tmp = TempDir::new().expect("tempdir");
    // a truncated file
    let truncated = tmp.path().join("truncated");
    copy_dir(&adapter_dir("ia3", "default"), &truncated);
    let bytes = std::fs::read(truncated.join(ST)).expect("read");
    std::fs::write(truncated.join(ST), &bytes[..bytes.len() / 2]).expect("write");
    // a file that parses but does not fit (rank 8 in the config, rank 4 in the tensors)
    let misfit = tmp.path().join("misfit");
    copy_dir(&adapter_dir("multi_adapter", "b"), &misfit);
    let mut cfg = config_map(&misfit);
    cfg.insert("r".into(), json!(8));
    std::fs::write(
        misfit.join(CFG),
        serde_json::to_string(&Value::Object(cfg)).expect("json"),
    )
    .expect("write");

    // before any adapter
    let mut m = open("llama");
    let base = logits(&m);
    for dir in [&truncated, &misfit] {
        assert!(
            m.load_adapter(dir, named("bad")).is_err(),
            "{}",
            dir.display()
        );
        assert!(names(&m).is_empty());
        assert!(matches!(
            m.active_adapters(),
            Err(ModelError::Core(CoreError::NoAdapterLoaded))
        ));
        assert_bit_identical("base after a failed load", &logits(&m), &base);
    }

    // with adapters loaded
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "lora_qv", "default", "default");
    m.set_adapter(&["default"]).expect("set");
    let before = logits(&m);
    for dir in [&truncated, &misfit] {
        let e = m.load_adapter(dir, named("bad")).expect_err("must fail");
        assert!(matches!(e, ModelError::Core(_)), "{e:?}");
        assert_eq!(names(&m), vec!["a".to_string(), "default".to_string()]);
        assert_eq!(active(&m), vec!["default".to_string()]);
        assert_bit_identical("after a failed load", &logits(&m), &before);
    }
    m.disable_adapters().expect("disable");
    assert!(m.load_adapter(&truncated, named("bad")).is_err());
    assert_bit_identical("disabled after a failed load", &logits(&m), &base);
    m.enable_adapters().expect("enable");
    assert_bit_identical("enabled after a failed load", &logits(&m), &before);
}

// ------------------------------------------------------------------------------------------
// no adapter loaded
// ------------------------------------------------------------------------------------------

#[test]
fn calls_before_any_adapter_say_no_adapter_loaded() {
    let mut m = open("llama");
    let tmp = TempDir::new().expect("tempdir");
    let check = |r: graft_models::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(
            e.to_string(),
            "No adapter loaded. Please load an adapter first.",
            "{what}"
        );
        assert!(
            matches!(e, ModelError::Core(CoreError::NoAdapterLoaded)),
            "{what}: {e:?}"
        );
    };
    check(m.set_adapter(&["default"]), "set_adapter");
    check(m.enable_adapters(), "enable_adapters");
    check(m.disable_adapters(), "disable_adapters");
    check(m.active_adapters().map(|_| ()), "active_adapters");
    check(
        m.get_adapter_state_dict(None).map(|_| ()),
        "get_adapter_state_dict(None)",
    );
    check(
        m.get_adapter_state_dict(Some("default")).map(|_| ()),
        "get_adapter_state_dict(default)",
    );
    check(m.delete_adapter(&["default"]), "delete_adapter");
    check(
        m.save_pretrained(tmp.path(), None).map(|_| ()),
        "save_pretrained",
    );
    assert!(
        file_tree(tmp.path()).is_empty(),
        "save_pretrained wrote files"
    );
    // and again after the last adapter is deleted
    load_as(&mut m, "lora_qv", "default", "default");
    m.delete_adapter(&["default"]).expect("delete");
    check(
        m.active_adapters().map(|_| ()),
        "active_adapters after deleting everything",
    );
    check(
        m.set_adapter(&["default"]),
        "set_adapter after deleting everything",
    );
}

// ------------------------------------------------------------------------------------------
// delete_adapter
// ------------------------------------------------------------------------------------------

#[test]
fn delete_unknown_adapter_deletes_nothing() {
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    let before = logits(&m);
    for bad in [&["nope"][..], &["a", "nope"][..], &["b", "nope", "a"][..]] {
        let e = core_err(m.delete_adapter(bad).expect_err("must fail"));
        assert!(
            matches!(&e, CoreError::AdapterNotFound { name, .. } if name == "nope"),
            "{bad:?}: {e:?}"
        );
        assert_eq!(names(&m), vec!["a".to_string(), "b".to_string()], "{bad:?}");
        assert_eq!(active(&m), vec!["a".to_string()], "{bad:?}");
        assert_bit_identical("after a refused delete", &logits(&m), &before);
    }
}

#[test]
fn deleting_the_active_adapter_falls_back_to_the_remaining_one() {
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    assert_eq!(active(&m), vec!["a".to_string()]);
    m.delete_adapter(&["a"]).expect("delete a");
    assert_eq!(names(&m), vec!["b".to_string()]);
    assert_eq!(active(&m), vec!["b".to_string()]);
    assert_close(
        "b after deleting a",
        &logits(&m),
        &reference_logits("multi_adapter")["b"].tensor,
        TOL,
    );
    // deleting one of two active adapters keeps the other
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    m.set_adapter(&["a", "b"]).expect("set both");
    m.delete_adapter(&["b"]).expect("delete b");
    assert_eq!(active(&m), vec!["a".to_string()]);
    assert_close(
        "a after deleting b",
        &logits(&m),
        &reference_logits("multi_adapter")["a"].tensor,
        TOL,
    );
}

#[test]
fn deleting_the_only_adapter_gives_the_base_back() {
    let base = logits(&open("llama"));
    for case in [
        "lora_qv",
        "modules_to_save_lm_head",
        "lora_embedding",
        "ia3",
        "dora",
        "adalora",
    ] {
        let mut m = open("llama");
        load_as(&mut m, case, "default", "default");
        assert!(
            max_abs_diff(&logits(&m), &base) > 1e-2,
            "{case}: the adapter should change the logits"
        );
        m.delete_adapter(&["default"]).expect("delete");
        assert!(names(&m).is_empty());
        assert_bit_identical(
            &format!("{case}: after deleting the only adapter"),
            &logits(&m),
            &base,
        );
    }
    // deleting while disabled, then loading again: the new adapter is enabled
    let mut m = open("llama");
    load_as(&mut m, "lora_qv", "default", "default");
    m.disable_adapters().expect("disable");
    m.delete_adapter(&["default"]).expect("delete");
    load_as(&mut m, "lora_qv", "default", "again");
    assert_close(
        "reloaded after delete",
        &logits(&m),
        &reference_logits("lora_qv")["on"].tensor,
        TOL,
    );
}

// ------------------------------------------------------------------------------------------
// enable / disable
// ------------------------------------------------------------------------------------------

#[test]
fn disable_gives_the_base_logits_exactly_and_enable_restores() {
    let base = logits(&open("llama"));
    let mut m = open("llama");
    load_as(&mut m, "lora_qv", "default", "default");
    let on = logits(&m);
    assert_close("on", &on, &reference_logits("lora_qv")["on"].tensor, TOL);
    m.disable_adapters().expect("disable");
    assert_eq!(
        active(&m),
        vec!["default".to_string()],
        "active_adapters is kept while disabled"
    );
    assert_bit_identical("disabled", &logits(&m), &base);
    m.disable_adapters().expect("disable twice");
    assert_bit_identical("disabled twice", &logits(&m), &base);
    m.enable_adapters().expect("enable");
    assert_bit_identical("enabled again", &logits(&m), &on);
    // modules_to_save is switched off as well
    let mut m = open("llama");
    load_as(&mut m, "modules_to_save_lm_head", "default", "default");
    m.disable_adapters().expect("disable");
    assert_bit_identical("modules_to_save disabled", &logits(&m), &base);
}

// ------------------------------------------------------------------------------------------
// add_adapter
// ------------------------------------------------------------------------------------------

#[test]
fn add_adapter_with_default_init_is_a_no_op_and_becomes_active() {
    let base = logits(&open("llama"));
    let mut m = open("llama");
    load_as(&mut m, "lora_qv", "default", "default");
    let cfg = config_from_kwargs(json!({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj"],
        "init_lora_weights": true
    }))
    .expect("cfg");
    let report = m.add_adapter(cfg, Some("fresh"), 1).expect("add_adapter");
    assert_eq!(report.targets.len(), 4);
    assert_eq!(active(&m), vec!["fresh".to_string()]);
    assert_eq!(names(&m), vec!["default".to_string(), "fresh".to_string()]);
    assert_bit_identical("fresh B = 0", &logits(&m), &base);
    let sd = m.get_adapter_state_dict(Some("fresh")).expect("sd");
    for (k, t) in &sd {
        let v = values(&t.tensor);
        if k.contains("lora_B") {
            assert!(v.iter().all(|x| *x == 0.0), "{k} should be zero");
        } else {
            let bound = 1.0 / 32f32.sqrt();
            assert!(
                v.iter().all(|x| x.abs() <= bound),
                "{k}: Kaiming-uniform bound"
            );
            assert!(v.iter().any(|x| *x != 0.0), "{k} should not be zero");
        }
    }
    // the same seed gives the same adapter
    let mut m2 = open("llama");
    let cfg = config_from_kwargs(json!({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj"]
    }))
    .expect("cfg");
    m2.add_adapter(cfg, Some("fresh"), 1).expect("add_adapter");
    let sd2 = m2.get_adapter_state_dict(Some("fresh")).expect("sd");
    for (k, t) in &sd {
        assert_bit_identical(&format!("seeded {k}"), &t.tensor, &sd2[k].tensor);
    }
}

#[test]
fn add_adapter_with_random_init_changes_the_logits() {
    let base = logits(&open("llama"));
    let mut m = open("llama");
    let cfg = config_from_kwargs(json!({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
        "init_lora_weights": false
    }))
    .expect("cfg");
    m.add_adapter(cfg, None, 7).expect("add_adapter");
    assert_eq!(active(&m), vec!["default".to_string()]);
    let d = max_abs_diff(&logits(&m), &base);
    assert!(
        d > 1e-3,
        "a random adapter should change the logits (max |diff| {d})"
    );
    m.disable_adapters().expect("disable");
    assert_bit_identical("random adapter disabled", &logits(&m), &base);
}

/// transformers' mixin `add_adapter(cfg)` + `save_pretrained(dir)` as recorded in
/// save_reference/fresh_*; graft must write the same file layout, keys, shapes, dtypes and
/// config. Exclusions: `base_model_name_or_path` (the reference holds the repo-relative path
/// PEFT saw, graft the path the base was opened from) and `target_modules` (PEFT writes it from
/// a Python set, so only the set of names is meaningful). `peft_version`, `auto_mapping` and
/// `task_type` are compared: the mixin writes 0.21.2 / null / null, as graft does.
fn fresh_matches_reference(kind: &str, kwargs: Value, check_values: impl Fn(&str, &[f32])) {
    let reference = fixtures().join("save_reference").join(kind);
    let mut m = open("llama");
    let base = logits(&m);
    let cfg = config_from_kwargs(kwargs).expect("cfg");
    m.add_adapter(cfg, None, 3).expect("add_adapter");
    assert_eq!(active(&m), vec!["default".to_string()]);
    assert_bit_identical(
        &format!("{kind}: fresh adapter is a no-op"),
        &logits(&m),
        &base,
    );
    let tmp = TempDir::new().expect("tempdir");
    let written = m.save_pretrained(tmp.path(), None).expect("save");
    assert_eq!(written, vec![tmp.path().to_path_buf()]);
    assert_eq!(
        file_tree(tmp.path()),
        file_tree(&reference),
        "{kind}: files"
    );
    assert_tensor_files_match(kind, &tmp.path().join(ST), &reference.join(ST), false);
    // the deterministic part of the initialisation is PEFT's
    let got = load_safetensors(&tmp.path().join(ST)).expect("saved");
    let want = load_safetensors(&reference.join(ST)).expect("reference");
    for (k, t) in &got {
        check_values(k, &values(&t.tensor));
        check_values(k, &values(&want[k].tensor));
    }
    let got_cfg = config_map(tmp.path());
    assert_configs_match(
        kind,
        &got_cfg,
        &config_map(&reference),
        &["base_model_name_or_path"],
        &["target_modules", "feedforward_modules"],
    );
    assert_eq!(
        got_cfg["base_model_name_or_path"],
        json!(model_dir("llama").display().to_string())
    );
    // what graft wrote loads back and is still a no-op
    let mut again = open("llama");
    again
        .load_adapter(tmp.path(), LoadAdapterOptions::default())
        .expect("reload");
    assert_bit_identical(&format!("{kind}: reloaded"), &logits(&again), &base);
}

#[test]
fn fresh_lora_save_matches_peft() {
    fresh_matches_reference(
        "fresh_lora",
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj"], "init_lora_weights": true}),
        |k, v| {
            if k.ends_with("lora_B.weight") {
                assert!(v.iter().all(|x| *x == 0.0), "{k}: B = 0");
            } else {
                assert!(
                    v.iter().all(|x| x.abs() <= 1.0 / 32f32.sqrt()),
                    "{k}: U(±1/√in)"
                );
            }
        },
    );
}

#[test]
fn fresh_ia3_save_matches_peft() {
    fresh_matches_reference(
        "fresh_ia3",
        json!({"peft_type": "IA3", "target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
        |k, v| assert!(v.iter().all(|x| *x == 1.0), "{k}: ia3_l = 1"),
    );
}

#[test]
fn fresh_adalora_save_matches_peft() {
    fresh_matches_reference(
        "fresh_adalora",
        json!({"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "target_modules": ["q_proj"], "total_step": 10}),
        |k, v| {
            if k.ends_with("lora_E") {
                assert!(v.iter().all(|x| *x == 0.0), "{k}: E = 0");
            } else {
                // N(0, 0.02): nothing near 0.2 (10 sigma)
                assert!(v.iter().all(|x| x.abs() < 0.2), "{k}: N(0, 0.02)");
                assert!(v.iter().any(|x| *x != 0.0), "{k}");
            }
        },
    );
}

// ------------------------------------------------------------------------------------------
// save_pretrained
// ------------------------------------------------------------------------------------------

/// Every fixture adapter, loaded and saved again, gives PEFT's files back (tensors
/// bit-identical, config equal except `base_model_name_or_path`) and the same logits when
/// loaded into a fresh model.
#[test]
fn save_pretrained_round_trips_every_case() {
    for case in all_cases() {
        let c = case_json(&case);
        let root = fixtures().join("cases").join(&case);
        let mut m = case_model(&case, &root);
        let tmp = TempDir::new().expect("tempdir");
        m.save_pretrained(tmp.path(), None).expect("save");
        let mut saved_paths = BTreeMap::new();
        for a in c["adapters"].as_array().expect("adapters") {
            let name = str_of(&a["name"]);
            let saved = if name == "default" {
                tmp.path().to_path_buf()
            } else {
                tmp.path().join(name)
            };
            let orig = root.join(str_of(&a["path"]));
            let label = format!("{case}/{name}");
            assert_tensor_files_match(&label, &saved.join(ST), &orig.join(ST), true);
            let got = config_map(&saved);
            assert_configs_match(
                &label,
                &got,
                &config_map(&orig),
                &["base_model_name_or_path"],
                &[],
            );
            assert_eq!(
                got["base_model_name_or_path"],
                json!(m.name_or_path),
                "{label}"
            );
            saved_paths.insert(name.to_string(), saved);
        }
        // no stray files
        let expected_files: usize = saved_paths.len() * 2;
        assert_eq!(
            file_tree(tmp.path()).len(),
            expected_files,
            "{case}: {:?}",
            file_tree(tmp.path())
        );

        // reload into a fresh model: identical logits for every run
        let mut fresh = open(str_of(&c["model"]));
        for a in c["adapters"].as_array().expect("adapters") {
            let name = str_of(&a["name"]);
            fresh
                .load_adapter(&saved_paths[name], named(name))
                .expect("reload");
        }
        for run in c["runs"].as_array().expect("runs") {
            for model in [&mut m, &mut fresh] {
                if run["disabled"].as_bool().expect("disabled") {
                    model.disable_adapters().expect("disable");
                } else {
                    model.enable_adapters().expect("enable");
                    let act: Vec<&str> = run["active"]
                        .as_array()
                        .expect("active")
                        .iter()
                        .map(str_of)
                        .collect();
                    model.set_adapter(&act).expect("set_adapter");
                }
            }
            let label = format!("{case}/{}", str_of(&run["name"]));
            assert_bit_identical(&label, &logits(&fresh), &logits(&m));
        }
    }
}

#[test]
fn save_pretrained_of_a_subset_and_of_an_unknown_name() {
    let mut m = open("llama");
    load_as(&mut m, "multi_adapter", "a", "a");
    load_as(&mut m, "multi_adapter", "b", "b");
    let tmp = TempDir::new().expect("tempdir");
    m.save_pretrained(tmp.path(), Some(&["b"])).expect("save b");
    assert_eq!(
        file_tree(tmp.path()),
        vec![
            "b/adapter_config.json".to_string(),
            "b/adapter_model.safetensors".to_string()
        ]
    );
    let tmp = TempDir::new().expect("tempdir");
    let e = core_err(
        m.save_pretrained(tmp.path(), Some(&["a", "nope"]))
            .expect_err("unknown"),
    );
    assert!(
        matches!(&e, CoreError::AdapterNotFound { name, .. } if name == "nope"),
        "{e:?}"
    );
    assert!(
        file_tree(tmp.path()).is_empty(),
        "a failed save wrote {:?}",
        file_tree(tmp.path())
    );
}

/// save_reference/named: PEFT writes `default` at the top level and `second` in `second/`.
#[test]
fn save_pretrained_layout_matches_peft_for_named_adapters() {
    let reference = fixtures().join("save_reference").join("named");
    let mut m = open("llama");
    m.load_adapter(&reference, LoadAdapterOptions::default())
        .expect("default");
    m.load_adapter(
        &reference,
        LoadAdapterOptions {
            adapter_name: Some("second".into()),
            subfolder: Some("second".into()),
            ..Default::default()
        },
    )
    .expect("second");
    let tmp = TempDir::new().expect("tempdir");
    let written = m.save_pretrained(tmp.path(), None).expect("save");
    assert_eq!(
        written,
        vec![tmp.path().to_path_buf(), tmp.path().join("second")]
    );
    assert_eq!(file_tree(tmp.path()), file_tree(&reference));
    assert_eq!(
        file_tree(tmp.path()),
        vec![
            "adapter_config.json".to_string(),
            "adapter_model.safetensors".to_string(),
            "second/adapter_config.json".to_string(),
            "second/adapter_model.safetensors".to_string()
        ]
    );
    for sub in ["", "second"] {
        let (g, w) = (tmp.path().join(sub), reference.join(sub));
        assert_tensor_files_match(&format!("named/{sub}"), &g.join(ST), &w.join(ST), true);
        assert_configs_match(
            &format!("named/{sub}"),
            &config_map(&g),
            &config_map(&w),
            &["base_model_name_or_path"],
            &[],
        );
    }
    // the saved tree loads back the same way
    let mut again = open("llama");
    again
        .load_adapter(tmp.path(), LoadAdapterOptions::default())
        .expect("default");
    again
        .load_adapter(
            tmp.path(),
            LoadAdapterOptions {
                adapter_name: Some("second".into()),
                subfolder: Some("second".into()),
                ..Default::default()
            },
        )
        .expect("second");
    for n in ["default", "second"] {
        m.set_adapter(&[n]).expect("set");
        again.set_adapter(&[n]).expect("set");
        assert_bit_identical(n, &logits(&again), &logits(&m));
    }
}

#[test]
fn trainable_load_is_saved_with_inference_mode_false() {
    let mut m = open("llama");
    m.load_adapter(
        &adapter_dir("lora_qv", "default"),
        LoadAdapterOptions {
            is_trainable: true,
            ..Default::default()
        },
    )
    .expect("load");
    let tmp = TempDir::new().expect("tempdir");
    m.save_pretrained(tmp.path(), None).expect("save");
    assert_eq!(config_map(tmp.path())["inference_mode"], json!(false));
}

// ------------------------------------------------------------------------------------------
// from_pretrained
// ------------------------------------------------------------------------------------------

fn from_pretrained_err(dir: &Path) -> ModelError {
    match Model::from_pretrained(dir) {
        Ok(_) => panic!("from_pretrained({}) must fail", dir.display()),
        Err(e) => e,
    }
}

fn adapter_copy_with_base(case: &str, base: Value) -> TempDir {
    let tmp = TempDir::new().expect("tempdir");
    copy_dir(&adapter_dir(case, "default"), tmp.path());
    let mut cfg = config_map(tmp.path());
    cfg.insert("base_model_name_or_path".into(), base);
    std::fs::write(
        tmp.path().join(CFG),
        serde_json::to_string_pretty(&Value::Object(cfg)).expect("json"),
    )
    .expect("write");
    tmp
}

#[test]
fn from_pretrained_adapter_folder_loads_its_base() {
    for (case, model) in [
        ("lora_qv", "llama"),
        ("opt_lora", "opt"),
        ("tied_lora", "llama-tied"),
    ] {
        let abs = model_dir(model).canonicalize().expect("canonical");
        let a = adapter_copy_with_base(case, json!(abs.display().to_string()));
        let m = Model::from_pretrained(a.path()).expect("from_pretrained");
        assert_eq!(active(&m), vec!["default".to_string()], "{case}");
        assert_close(
            &format!("{case}: from_pretrained"),
            &logits(&m),
            &reference_logits(case)["on"].tensor,
            TOL,
        );
    }
    // a model folder opens the base
    let m = Model::from_pretrained(&model_dir("llama")).expect("base");
    assert!(m.registry().adapter_names().is_empty());
    assert_close(
        "base",
        &logits(&m),
        &load_safetensors(&model_dir("llama").join("base_logits.safetensors")).expect("base")
            ["logits"]
            .tensor,
        TOL,
    );
}

/// A relative `base_model_name_or_path` that does not resolve from the working directory is
/// tried relative to the adapter folder.
#[test]
fn from_pretrained_resolves_a_base_relative_to_the_adapter_folder() {
    let tmp = TempDir::new().expect("tempdir");
    copy_dir(&model_dir("llama"), &tmp.path().join("base-llama"));
    let adapter = tmp.path().join("adapter");
    copy_dir(&adapter_dir("lora_qv", "default"), &adapter);
    let mut cfg = config_map(&adapter);
    cfg.insert("base_model_name_or_path".into(), json!("../base-llama"));
    std::fs::write(
        adapter.join(CFG),
        serde_json::to_string_pretty(&Value::Object(cfg)).expect("json"),
    )
    .expect("write");
    let m = Model::from_pretrained(&adapter).expect("from_pretrained");
    assert_close(
        "relative base",
        &logits(&m),
        &reference_logits("lora_qv")["on"].tensor,
        TOL,
    );
}

#[test]
fn from_pretrained_with_null_base_asks_for_the_model() {
    let a = adapter_copy_with_base("lora_qv", Value::Null);
    let e = from_pretrained_err(a.path());
    match &e {
        ModelError::BaseModel(msg) => assert!(
            msg.contains("give the base model explicitly")
                && msg.contains("base_model_name_or_path")
                && !msg.contains("--"),
            "{msg}"
        ),
        other => panic!("expected BaseModel, got {other:?}"),
    }
}

#[test]
fn from_pretrained_with_an_unreachable_base_names_it() {
    // the fixtures hold the repo-relative path; tests run in tests/, where it does not resolve
    let e = from_pretrained_err(&adapter_dir("lora_qv", "default"));
    match &e {
        ModelError::BaseModel(msg) => {
            assert!(
                msg.contains("tests/fixtures/models/llama")
                    && msg.contains("give the base explicitly")
                    && !msg.contains("--model"),
                "{msg}"
            )
        }
        other => panic!("expected BaseModel, got {other:?}"),
    }
    let a = adapter_copy_with_base("lora_qv", json!("meta-llama/Llama-2-7b-hf"));
    let e = from_pretrained_err(a.path());
    assert!(e.to_string().contains("meta-llama/Llama-2-7b-hf"), "{e}");
}

#[test]
fn dtype_is_kept_through_save() {
    // f16/bf16 adapters are written back in their own dtype
    let mut m = open("llama");
    load_as(&mut m, "lora_qv", "default", "default");
    let mut sd = m.get_adapter_state_dict(Some("default")).expect("sd");
    for (i, t) in sd.values_mut().enumerate() {
        t.dtype = if i % 2 == 0 { DType::F16 } else { DType::BF16 };
    }
    let cfg = m.registry().get("default").expect("adapter").config.clone();
    let mut m2 = open("llama");
    m2.load_adapter_from_state(cfg, sd.clone(), LoadAdapterOptions::default())
        .expect("from state");
    let tmp = TempDir::new().expect("tempdir");
    m2.save_pretrained(tmp.path(), None).expect("save");
    let back = load_safetensors(&tmp.path().join(ST)).expect("saved");
    for (k, t) in &sd {
        assert_eq!(back[&format!("{PREFIX}{k}")].dtype, t.dtype, "{k}");
    }
}

/// PEFT writes a bias adapter's saved biases into the base at load and never restores them,
/// even after `delete_adapter`. graft deliberately differs here: the overwritten biases belong
/// to the adapter (they apply while it is loaded, active or not, as in PEFT), and deleting the
/// adapter gives the original base back (see ARCHITECTURE.md, decision 7).
#[test]
fn deleting_a_bias_adapter_restores_the_base_biases() {
    let mut m = open("llama-tied");
    let base = logits(&m);
    load_as(&mut m, "bias_lora_only", "default", "default");
    m.disable_adapters().expect("disable");
    assert_close(
        "bias_lora_only disabled keeps the saved biases, as PEFT",
        &logits(&m),
        &reference_logits("bias_lora_only")["off"].tensor,
        TOL,
    );
    m.delete_adapter(&["default"]).expect("delete");
    assert_eq!(
        max_abs_diff(&logits(&m), &base),
        0.0,
        "deleting restores the base"
    );
}

// ------------------------------------------------------------------------------------------
// how PEFT 0.21.2 fills in configs
// ------------------------------------------------------------------------------------------

/// PEFT's `IA3Model._prepare_adapter_config` fills a null `feedforward_modules` from its
/// per-architecture table (llama: down_proj) whether or not `target_modules` is given. The ia3
/// fixture without `feedforward_modules` must therefore load exactly as with it.
#[test]
fn ia3_null_feedforward_modules_defaults_per_architecture() {
    let tmp = TempDir::new().expect("tempdir");
    copy_dir(&adapter_dir("ia3", "default"), tmp.path());
    let mut cfg = config_map(tmp.path());
    cfg.insert("feedforward_modules".into(), Value::Null);
    std::fs::write(
        tmp.path().join(CFG),
        serde_json::to_string_pretty(&Value::Object(cfg)).expect("json"),
    )
    .expect("write");
    let mut m = open("llama");
    m.load_adapter(tmp.path(), LoadAdapterOptions::default())
        .expect("PEFT loads this adapter");
    assert_close(
        "ia3 with feedforward_modules null",
        &logits(&m),
        &reference_logits("ia3")["on"].tensor,
        TOL,
    );
    // a fresh adapter: down_proj scales its input, so ia3_l is (1, in_features)
    let mut m = open("llama");
    let cfg = config_from_kwargs(
        json!({"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"]}),
    )
    .expect("cfg");
    m.add_adapter(cfg, None, 0).expect("add_adapter");
    let sd = m.get_adapter_state_dict(None).expect("sd");
    assert_eq!(
        sd["model.layers.0.mlp.down_proj.ia3_l"].tensor.dims(),
        &[1, 64]
    );
}
