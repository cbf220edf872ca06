//! Shared helpers for graft's cross-crate tests: fixture paths and a tolerance check that
//! explains failures.

use std::path::PathBuf;

use candle_core::Tensor;

/// `tests/fixtures` of this repository.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Checks |got − ref| ≤ tol·max(1, |ref|) elementwise; on failure says how many, where, and
/// the worst pair.
pub fn assert_close(label: &str, got: &Tensor, reference: &Tensor, tol: f32) {
    assert_eq!(got.dims(), reference.dims(), "{label}: shapes differ");
    let g = got
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("got as f32");
    let r = reference
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("ref as f32");
    let mut bad = 0usize;
    let mut worst = (0usize, 0f32);
    for (i, (a, b)) in g.iter().zip(&r).enumerate() {
        let d = (a - b).abs();
        let lim = tol * b.abs().max(1.0);
        if d > lim || !d.is_finite() {
            bad += 1;
        }
        if d > worst.1 || !d.is_finite() {
            worst = (i, d);
        }
    }
    assert!(
        bad == 0,
        "{label}: {bad} of {} values off by more than {tol}·max(1,|ref|); worst at {}: got {} ref {} (|diff| {})",
        g.len(),
        worst.0,
        g[worst.0],
        r[worst.0],
        worst.1
    );
}

/// Max |a − b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
    let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b");
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Copies a fixture folder (recursively) so a test can change it without touching the fixture.
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).expect("create dir");
    for e in std::fs::read_dir(src).expect("read_dir") {
        let e = e.expect("dir entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

/// The GPU the tests share, or `None` (with a message) where no adapter exists. With
/// `GRAFT_REQUIRE_GPU=1` (CI, on Mesa's lavapipe) a missing GPU fails the test instead.
pub fn test_gpu() -> Option<graft_gpu::Gpu> {
    static GPU: std::sync::OnceLock<Result<graft_gpu::Gpu, String>> = std::sync::OnceLock::new();
    let g = GPU.get_or_init(|| {
        graft_gpu::Gpu::new_blocking(&graft_gpu::GpuOptions::default()).map_err(|e| e.to_string())
    });
    match g {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            assert!(
                std::env::var("GRAFT_REQUIRE_GPU").as_deref() != Ok("1"),
                "GRAFT_REQUIRE_GPU=1 but no GPU: {e}"
            );
            eprintln!("skipping a GPU test: {e}");
            None
        }
    }
}

/// The devices every conformance test body runs on, with the tolerance against PEFT's logits
/// on each (|diff| ≤ tol·max(1, |ref|)): the CPU (1e-4) and, where a GPU adapter exists, the
/// GPU (1e-3; with `GRAFT_REQUIRE_GPU=1` it must exist).
pub fn devices() -> Vec<(graft_models::Device, f32)> {
    let mut v = vec![(graft_models::Device::Cpu, 1e-4)];
    if test_gpu().is_some() {
        v.push((graft_models::Device::Gpu, 1e-3));
    }
    v
}

/// Moves `model` to `device`, on the GPU the tests share (a KV cache of `max_context`
/// positions, or the model's default).
pub fn to_device(
    model: &mut graft_models::Model,
    device: graft_models::Device,
    max_context: Option<usize>,
) {
    let opts = graft_models::DeviceOptions {
        max_context,
        open_gpu: test_gpu(),
        ..Default::default()
    };
    let r = model
        .set_device(device, &opts)
        .unwrap_or_else(|e| panic!("{device:?}: {e}"));
    assert_eq!(r.device, device, "{r}");
}

/// The real model's GGUF (fetched by scripts/fetch_default_model.sh), or `None` with a message.
/// With GRAFT_REQUIRE_REAL_MODEL set (CI), a missing file fails the test instead.
pub fn real_model() -> Option<PathBuf> {
    let p = fixtures()
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .components()
        .collect::<PathBuf>();
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("GRAFT_REQUIRE_REAL_MODEL").is_none(),
        "GRAFT_REQUIRE_REAL_MODEL is set but {} is missing (run scripts/fetch_default_model.sh)",
        p.display()
    );
    eprintln!(
        "skipped: {} is missing (run scripts/fetch_default_model.sh)",
        p.display()
    );
    None
}

/// A conformance case's token ids (its case.json `tokens`).
pub fn case_tokens(case: &serde_json::Value) -> Vec<u32> {
    case["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id") as u32)
        .collect()
}

/// A fixture case: its case.json, and its base with the case's adapters loaded in order.
pub fn load_case(dir: &std::path::Path) -> (serde_json::Value, graft_models::Model) {
    let case: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("case.json")).expect("case.json"))
            .expect("case.json is JSON");
    // `model`: a base under fixtures/models; `model_dir`: a path under fixtures
    let base = match case["model_dir"].as_str() {
        Some(d) => fixtures().join(d),
        None => fixtures()
            .join("models")
            .join(case["model"].as_str().expect("model")),
    };
    let mut model = graft_models::Model::open_base(&base).expect("base model");
    for a in case["adapters"].as_array().expect("adapters") {
        let opts = graft_models::LoadAdapterOptions {
            adapter_name: Some(a["name"].as_str().expect("name").to_string()),
            ..Default::default()
        };
        model
            .load_adapter(&dir.join(a["path"].as_str().expect("path")), opts)
            .unwrap_or_else(|e| panic!("{}: loading {}: {e}", dir.display(), a["name"]));
    }
    (case, model)
}

/// Puts the model in the state one run of a case describes: adapters disabled, or enabled
/// with the run's active set.
pub fn apply_run(model: &mut graft_models::Model, run: &serde_json::Value) {
    if run["disabled"].as_bool().expect("disabled") {
        model.disable_adapters().expect("disable");
    } else {
        model.enable_adapters().expect("enable");
        let active: Vec<&str> = run["active"]
            .as_array()
            .expect("active")
            .iter()
            .map(|v| v.as_str().expect("name"))
            .collect();
        model.set_adapter(&active).expect("set_adapter");
    }
}

fn read_i64(st: &safetensors::SafeTensors, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = st.tensor(name).expect(name);
    assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    (v, t.shape().to_vec())
}

/// A training fixture's batch.safetensors (input_ids, attention_mask, labels) as examples,
/// each row cut to its attention mask (right padding).
pub fn batch_examples(case: &std::path::Path) -> Vec<graft_train::data::Example> {
    let bytes = std::fs::read(case.join("batch.safetensors")).expect("batch.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let (ids, shape) = read_i64(&st, "input_ids");
    let (mask, _) = read_i64(&st, "attention_mask");
    let (labels, _) = read_i64(&st, "labels");
    let (b, t) = (shape[0], shape[1]);
    (0..b)
        .map(|r| {
            let n = mask[r * t..(r + 1) * t].iter().filter(|&&m| m == 1).count();
            graft_train::data::Example {
                ids: ids[r * t..r * t + n].iter().map(|&x| x as u32).collect(),
                labels: labels[r * t..r * t + n].to_vec(),
                line: r + 1,
            }
        })
        .collect()
}
