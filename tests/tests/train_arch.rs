//! The trainer on every architecture against PyTorch + PEFT: a LoRA on every linear module
//! (Phi-3's fused ones included), one batch with right padding, transformers' causal-LM loss
//! and the gradient of every LoRA tensor (tests/fixtures/arch_train, made by
//! make_arch_train_fixtures.py), to 1e-4 relative.

use candle_core::{Device, Tensor};
use graft_models::{LoadAdapterOptions, Model};
use graft_tests::{batch_examples, fixtures};
use graft_train::{TrainArgs, Trainer};

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn check(name: &str) {
    let case = fixtures().join("arch_train").join(name);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
    let mut model =
        Model::from_pretrained(&fixtures().join(spec["model_dir"].as_str().unwrap())).unwrap();
    model
        .load_adapter(
            &case.join("initial"),
            LoadAdapterOptions {
                is_trainable: true,
                ..Default::default()
            },
        )
        .unwrap();
    let want: std::collections::HashMap<String, Tensor> =
        candle_core::safetensors::load(case.join("expected.safetensors"), &Device::Cpu).unwrap();
    let data = batch_examples(&case);
    let tr = Trainer::new(&mut model, "default", TrainArgs::default()).unwrap();
    let keys: Vec<&str> = tr.adapter.params.iter().map(|p| p.key.as_str()).collect();
    let mut want_keys: Vec<&str> = spec["trainable_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    // graft orders them by name, PEFT by module order
    want_keys.sort_unstable();
    assert_eq!(keys, want_keys, "{name}: trainable tensors");
    let (loss, grads, _) = tr.gradients(&data, &[vec![0usize, 1]]).unwrap();
    let want_loss = vec(&want["loss"])[0];
    assert!(
        ((loss as f32 - want_loss) / want_loss).abs() < 1e-4,
        "{name}: loss {loss} vs PyTorch {want_loss}"
    );
    for (p, g) in tr.adapter.params.iter().zip(&grads) {
        let w = vec(&want[&format!("grad.{}", p.key)]);
        let scale = w.iter().fold(0f32, |a, b| a.max(b.abs())).max(1e-12);
        let e = g
            .iter()
            .zip(&w)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
            / scale;
        assert!(
            e <= 1e-4,
            "{name}: gradient of {} off by {e:e} (relative)",
            p.key
        );
    }
}

macro_rules! arch_train {
    ($($name:ident),*) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

arch_train!(qwen2, qwen3, gemma2, gemma3, phi3, mistral, llama3);
