//! Training against PyTorch + PEFT: one batch, three AdamW steps with clipping, for LoRA,
//! rsLoRA with rank/alpha patterns, IA3 and modules_to_save (untied and tied heads). The
//! reference (tests/fixtures/train, made by scripts/make_train_fixtures.py with pinned torch,
//! transformers and PEFT) holds the loss, the gradients of step 1, the parameters after steps
//! 1 and 3, the saved adapter and its logits.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use graft_models::{LoadAdapterOptions, Model};
use graft_tests::{batch_examples, fixtures};
use graft_train::data::Example;
use graft_train::forward::{Batch, TrainModel};
use graft_train::optim::{AdamWConfig, Schedule};
use graft_train::{TrainArgs, Trainer};

fn train_dir() -> PathBuf {
    fixtures().join("train")
}

fn expected(case: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(case.join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |a, &b| a.max(b.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
        / scale
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn open_case(case: &Path) -> (serde_json::Value, Model) {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
    let base = fixtures()
        .join("models")
        .join(spec["model"].as_str().unwrap());
    let mut model = Model::from_pretrained(&base).unwrap();
    model
        .load_adapter(
            &case.join("initial"),
            LoadAdapterOptions {
                is_trainable: true,
                ..Default::default()
            },
        )
        .unwrap();
    (spec, model)
}

fn args(spec: &serde_json::Value) -> TrainArgs {
    TrainArgs {
        max_steps: Some(3),
        batch_size: 2,
        optim: AdamWConfig {
            lr: spec["lr"].as_f64().unwrap(),
            beta1: spec["betas"][0].as_f64().unwrap(),
            beta2: spec["betas"][1].as_f64().unwrap(),
            eps: spec["eps"].as_f64().unwrap(),
            weight_decay: spec["weight_decay"].as_f64().unwrap(),
        },
        schedule: Schedule::Constant,
        max_grad_norm: spec["max_grad_norm"].as_f64().unwrap(),
        ..Default::default()
    }
}

const TOL: f32 = 1e-4;

fn check_case(name: &str) {
    let case = train_dir().join(name);
    let (spec, mut model) = open_case(&case);
    let data = batch_examples(&case);
    let want = expected(&case);
    let want_keys: Vec<String> = spec["trainable_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let a = args(&spec);
    let lr = a.optim.lr;
    let mut tr = Trainer::new(&mut model, "default", a).unwrap();
    let keys: Vec<String> = tr.adapter.params.iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys, want_keys, "{name}: trainable parameters");

    let batches = vec![vec![0usize, 1]];
    let (loss, grads, _) = tr.gradients(&data, &batches).unwrap();
    let losses = vec(&want["loss"]);
    assert!(
        ((loss as f32 - losses[0]) / losses[0]).abs() < TOL,
        "{name}: loss {loss} vs PEFT {}",
        losses[0]
    );
    for (p, g) in tr.adapter.params.iter().zip(&grads) {
        let w = vec(&want[&format!("grad.{}", p.key)]);
        let e = rel_err(g, &w);
        assert!(
            e <= TOL,
            "{name}: gradient of {} off by {e:e} (relative)",
            p.key
        );
    }
    let norms = vec(&want["grad_norm"]);
    for step in 0..3 {
        let (l, n, _) = tr.train_step(&data, &batches, lr).unwrap();
        assert!(
            ((l as f32 - losses[step]) / losses[step]).abs() < TOL,
            "{name}: step {} loss {l} vs PEFT {}",
            step + 1,
            losses[step]
        );
        assert!(
            ((n as f32 - norms[step]) / norms[step]).abs() < TOL,
            "{name}: step {} grad norm {n} vs PEFT {}",
            step + 1,
            norms[step]
        );
        if step == 0 || step == 2 {
            for p in &tr.adapter.params {
                let w = vec(&want[&format!("after{}.{}", step + 1, p.key)]);
                let e = rel_err(&vec(p.var.as_tensor()), &w);
                assert!(
                    e <= TOL,
                    "{name}: {} after step {} off by {e:e}",
                    p.key,
                    step + 1
                );
            }
        }
    }

    // Saved as PEFT saves it: same files, same keys and shapes, same config fields.
    let out = tempfile::tempdir().unwrap();
    tr.save_adapter(out.path()).unwrap();
    drop(tr);
    let ours =
        graft_adapters::tensors::load_safetensors(&out.path().join("adapter_model.safetensors"))
            .unwrap();
    let theirs =
        graft_adapters::tensors::load_safetensors(&case.join("final/adapter_model.safetensors"))
            .unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{name}: saved keys"
    );
    for (k, t) in &theirs {
        assert_eq!(
            ours[k].tensor.dims(),
            t.tensor.dims(),
            "{name}: shape of {k}"
        );
        let e = rel_err(&vec(&ours[k].tensor), &vec(&t.tensor));
        assert!(e <= TOL, "{name}: saved {k} off by {e:e}");
    }
    let cfg = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("adapter_config.json")).unwrap()).unwrap()
    };
    let (ours_cfg, theirs_cfg) = (cfg(out.path()), cfg(&case.join("final")));
    for field in [
        "peft_type",
        "r",
        "lora_alpha",
        "use_rslora",
        "target_modules",
        "modules_to_save",
        "feedforward_modules",
        "rank_pattern",
        "alpha_pattern",
        "inference_mode",
    ] {
        assert_eq!(
            ours_cfg.get(field),
            theirs_cfg.get(field),
            "{name}: adapter_config.json field {field}"
        );
    }

    // graft loads its own adapter back and computes PEFT's logits of the trained model.
    let base = fixtures()
        .join("models")
        .join(spec["model"].as_str().unwrap());
    let mut reloaded = Model::from_pretrained(&base).unwrap();
    reloaded
        .load_adapter(out.path(), LoadAdapterOptions::default())
        .unwrap();
    let final_logits =
        candle_core::safetensors::load(case.join("final_logits.safetensors"), &Device::Cpu)
            .unwrap();
    let fl = &final_logits["logits"];
    for (r, ex) in data.iter().enumerate() {
        let got = reloaded.logits(&ex.ids).unwrap();
        let want = fl.get(r).unwrap().narrow(0, 0, ex.ids.len()).unwrap();
        let e = rel_err(&vec(&got), &vec(&want));
        assert!(
            e <= TOL,
            "{name}: logits of row {r} after training off by {e:e}"
        );
    }
}

#[test]
fn one_step_lora_equals_peft() {
    check_case("lora");
}

#[test]
fn one_step_rslora_with_patterns_equals_peft() {
    check_case("lora_rslora");
}

#[test]
fn one_step_ia3_equals_peft() {
    check_case("ia3");
}

#[test]
fn one_step_modules_to_save_equals_peft() {
    check_case("modules_to_save");
}

#[test]
fn one_step_modules_to_save_on_a_tied_head_equals_peft() {
    check_case("modules_to_save_tied");
}

/// Central finite differences of the loss of `batch` (step `h`) at `coords(n)` of every
/// trainable tensor of n elements, against the gradients autograd gave; returns how many
/// coordinates were checked.
fn check_finite_differences(
    label: &str,
    tr: &Trainer,
    batch: &Batch,
    grads: &[Vec<f32>],
    h: f32,
    coords: impl Fn(usize) -> Vec<usize>,
) -> usize {
    let denom = batch.label_count();
    let loss_now = || -> f64 {
        let tm = TrainModel::new(&*tr.model, &tr.adapter).unwrap();
        tm.loss(batch, denom, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let mut checked = 0;
    for (pi, p) in tr.adapter.params.iter().enumerate() {
        for j in coords(p.var.elem_count()) {
            let orig = vec(p.var.as_tensor());
            let set = |v: Vec<f32>| {
                p.var
                    .set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap())
                    .unwrap()
            };
            let mut plus = orig.clone();
            plus[j] += h;
            set(plus);
            let lp = loss_now();
            let mut minus = orig.clone();
            minus[j] -= h;
            set(minus);
            let lm = loss_now();
            set(orig);
            let fd = (lp - lm) / (2.0 * h as f64);
            let g = grads[pi][j] as f64;
            assert!(
                (fd - g).abs() <= 2e-3 + 2e-2 * g.abs(),
                "{label}: {}[{j}] autograd {g} vs finite difference {fd}",
                p.key
            );
            checked += 1;
        }
    }
    checked
}

/// Central finite differences of the loss against autograd, for every kind of trainable
/// tensor (a few coordinates each).
#[test]
fn gradients_match_finite_differences() {
    for name in ["lora", "ia3", "modules_to_save_tied"] {
        let case = train_dir().join(name);
        let (spec, mut model) = open_case(&case);
        let data = batch_examples(&case);
        let tr = Trainer::new(&mut model, "default", args(&spec)).unwrap();
        let (_, grads, _) = tr.gradients(&data, &[vec![0, 1]]).unwrap();
        let rows: Vec<(&[u32], &[i64])> = data
            .iter()
            .map(|e| (e.ids.as_slice(), e.labels.as_slice()))
            .collect();
        let batch = Batch::from_rows(&rows, 0).unwrap();
        let checked =
            check_finite_differences(name, &tr, &batch, &grads, 1e-2, |n| vec![0, n / 2, n - 1]);
        assert!(checked >= 9, "{name}");
    }
}

/// Gradient accumulation: two micro-batches of one row give the loss and gradients of one
/// batch of two rows (the loss is averaged over all labelled tokens of the accumulated batch,
/// as transformers' Trainer does with `num_items_in_batch`).
#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let case = train_dir().join("lora");
    let (spec, mut model) = open_case(&case);
    let data = batch_examples(&case);
    let tr = Trainer::new(&mut model, "default", args(&spec)).unwrap();
    let (l1, g1, t1) = tr.gradients(&data, &[vec![0, 1]]).unwrap();
    let (l2, g2, t2) = tr.gradients(&data, &[vec![0], vec![1]]).unwrap();
    assert_eq!(t1, t2);
    assert!((l1 - l2).abs() < 1e-5 * l1.abs(), "{l1} vs {l2}");
    for (p, (a, b)) in tr.adapter.params.iter().zip(g1.iter().zip(&g2)) {
        let e = rel_err(a, b);
        assert!(e < 1e-5, "{}: {e:e}", p.key);
    }
    // And the PEFT reference holds for the accumulated form too.
    let want = vec(&expected(&case)["loss"]);
    assert!(((l2 as f32 - want[0]) / want[0]).abs() < TOL);
}

/// The OPT fixture (post-LayerNorm, project_in/out, learned positions, ReLU MLP, tied head)
/// with its config's `dropout` set to `p`, and a LoRA with random A and B on q, v and fc1.
fn opt_with_lora(p: f64) -> (tempfile::TempDir, Model) {
    let d = tempfile::tempdir().unwrap();
    graft_tests::copy_dir(&fixtures().join("models/opt"), d.path());
    let cfg_path = d.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["dropout"] = serde_json::json!(p);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut model = Model::open_base(d.path()).unwrap();
    let lora = graft_adapters::config::config_from_kwargs(serde_json::json!({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj", "v_proj", "fc1"], "init_lora_weights": false
    }))
    .unwrap();
    model.add_adapter(lora, Some("default"), 7).unwrap();
    (d, model)
}

/// Training reads the same description as inference: on OPT its evaluation-mode logits equal
/// the inference forward pass's, and its gradients equal finite differences of its loss. A
/// training-mode dropout the trainer does not implement (OPT's `dropout`) is refused by name.
#[test]
fn opt_trains_from_the_same_description() {
    let (_d, mut model) = opt_with_lora(0.1);
    let e = Trainer::new(&mut model, "default", TrainArgs::default())
        .err()
        .expect("dropout 0.1 is refused")
        .to_string();
    assert!(e.contains("`dropout` = 0.1"), "{e}");

    let (_d, mut model) = opt_with_lora(0.0);
    let ids: Vec<u32> = vec![2, 5, 17, 42, 99, 3, 64, 7];
    let want = model.logits(&ids).unwrap();
    let data = vec![Example {
        labels: ids.iter().map(|&t| t as i64).collect(),
        ids: ids.clone(),
        line: 1,
    }];
    let tr = Trainer::new(&mut model, "default", TrainArgs::default()).unwrap();
    let batch = Batch::from_rows(&[(ids.as_slice(), data[0].labels.as_slice())], 0).unwrap();
    let tm = TrainModel::new(&*tr.model, &tr.adapter).unwrap();
    let got = tm.logits(&batch).unwrap();
    let err = rel_err(&vec(&got), &vec(&want));
    assert!(err < 1e-5, "training forward vs inference: {err}");
    let (_, grads, _) = tr.gradients(&data, &[vec![0]]).unwrap();
    // a small step: a wider one crosses the kinks of OPT's ReLU
    let checked = check_finite_differences("opt", &tr, &batch, &grads, 1e-3, |n| vec![0, n - 1]);
    assert!(checked >= 12, "{checked}");
}
