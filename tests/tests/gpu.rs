//! The whole model on the GPU against the CPU path (which matches PEFT to 1e-4): every
//! conformance fixture, every run (adapters switched, disabled, several active), logits within
//! 1e-3·max(1, |cpu|); greedy generation equal; errors instead of panics.

use graft_gpu::{GpuModel, GpuModelOptions};
use graft_models::{LoadAdapterOptions, Model};
use graft_tests::{apply_run, assert_close, case_tokens, fixtures, load_case, test_gpu};
use serde_json::Value;

const TOL: f32 = 1e-3;

#[test]
fn every_conformance_case_matches_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    conformance_on(&gpu, &GpuModelOptions::default());
}

/// With 8 KiB storage bindings the fixtures' embeddings, heads and stacked q/k/v or gate/up
/// matrices no longer fit one binding: they are split by rows (or unstacked) and the numbers
/// stay the same.
#[test]
fn tensors_larger_than_a_binding_are_split() {
    if test_gpu().is_none() {
        return;
    }
    let gpu = graft_gpu::Gpu::new_blocking(&graft_gpu::GpuOptions {
        max_binding: Some(8192),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(gpu.binding_limit(), 8192);
    // the split is real: more dispatches per token than on the full-size device
    let m = Model::open_base(&fixtures().join("models/llama")).unwrap();
    let small = GpuModelOptions {
        max_context: Some(64),
        ..Default::default()
    };
    let parts = GpuModel::new(&gpu, &m, &small)
        .unwrap()
        .dispatches_per_token(&m)
        .unwrap();
    let whole = GpuModel::new(&test_gpu().unwrap(), &m, &small)
        .unwrap()
        .dispatches_per_token(&m)
        .unwrap();
    assert!(parts > whole, "{parts} dispatches split vs {whole} whole");
    conformance_on(
        &gpu,
        &GpuModelOptions {
            max_context: Some(64),
            ..Default::default()
        },
    );
}

fn conformance_on(gpu: &graft_gpu::Gpu, opts: &GpuModelOptions) {
    let gpu = gpu.clone();
    let mut cases: Vec<_> = std::fs::read_dir(fixtures().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15);
    let mut checked = 0;
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (case, mut model) = load_case(&dir);
        let mut g = GpuModel::new(&gpu, &model, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let toks = case_tokens(&case);
        let compiled_after_first = std::cell::Cell::new(None);
        for run in case["runs"].as_array().unwrap() {
            let run_name = run["name"].as_str().unwrap();
            apply_run(&mut model, run);
            let cpu = model.logits(&toks).unwrap();
            g.reset();
            let got = g
                .forward(&model, &toks, false)
                .unwrap_or_else(|e| panic!("{name}/{run_name}: {e}"));
            assert_close(&format!("{name}/{run_name} (gpu)"), &got, &cpu, TOL);
            // token by token through the KV cache: the decode kernels
            g.reset();
            let mut last = None;
            for &t in &toks {
                last = Some(g.forward(&model, &[t], true).unwrap());
            }
            let cpu_last = cpu.narrow(0, toks.len() - 1, 1).unwrap();
            assert_close(
                &format!("{name}/{run_name} (gpu decode)"),
                &last.unwrap(),
                &cpu_last,
                TOL,
            );
            match compiled_after_first.get() {
                None => compiled_after_first.set(Some(g.pipelines_compiled())),
                Some(c) => assert_eq!(
                    g.pipelines_compiled(),
                    c,
                    "{name}/{run_name}: switching adapters compiled a pipeline"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked >= 23, "only {checked} runs checked");
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// SmolLM2-135M (Q4_1 GGUF, Q8_0 tied embedding) with and without the demo LoRA: prefill logits
/// within 1e-3 of the CPU's and greedy tokens equal to the CPU's for every prompt.
#[test]
fn real_model_greedy_tokens_equal_the_cpu() {
    let Some(path) = graft_tests::real_model() else {
        return;
    };
    let Some(gpu) = test_gpu() else { return };
    let g: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("real/generation.json")).unwrap())
            .unwrap();
    let mut m = Model::open_base(&path).unwrap();
    let mut gm = GpuModel::new(
        &gpu,
        &m,
        &GpuModelOptions {
            max_context: Some(256),
            ..Default::default()
        },
    )
    .unwrap();
    let adapter = fixtures().join("../../adapters/smollm2-pirate");
    for with in [false, true] {
        if with {
            m.load_adapter(&adapter, LoadAdapterOptions::default())
                .unwrap();
        }
        // two prompts, 12 tokens: lavapipe (CI) runs this model at about one token per second
        for (i, p) in g["prompts"].as_array().unwrap().iter().take(2).enumerate() {
            let prompt = ids(&p["prompt_ids"]);
            if i == 0 {
                let cpu = m.forward_last(&prompt, &mut Default::default()).unwrap();
                gm.reset();
                let got = gm.forward(&m, &prompt, true).unwrap();
                assert_close(&format!("prefill adapter={with}"), &got, &cpu, TOL);
            }
            let cpu = m.generate(&prompt, 12, &[], |_| {}).unwrap();
            let got = gm
                .generate(&m, &prompt, 12, &[], &Default::default(), |_| {})
                .unwrap();
            assert_eq!(got, cpu, "prompt {i}, adapter={with}");
        }
    }
}

/// Generation on the GPU (pipelined decode) stops where the CPU's does: at EOS, at
/// max_new_tokens (1 included), and sampling with a temperature stays within the vocabulary and
/// repeats for a seed.
#[test]
fn generation_stops_like_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = fixtures().join("cases/lora_qv");
    let (case, model) = load_case(&dir);
    let prompt = case_tokens(&case);
    let mut g = GpuModel::new(&gpu, &model, &GpuModelOptions::default()).unwrap();
    let greedy = Default::default();
    let full = model.generate(&prompt, 8, &[], |_| {}).unwrap();
    assert_eq!(
        g.generate(&model, &prompt, 8, &[], &greedy, |_| {})
            .unwrap(),
        full
    );
    let eos = [full[3]];
    let stop = full.iter().position(|t| *t == full[3]).unwrap();
    let mut streamed = Vec::new();
    let got = g
        .generate(&model, &prompt, 8, &eos, &greedy, |t| streamed.push(t))
        .unwrap();
    assert_eq!(got, full[..=stop].to_vec());
    assert_eq!(streamed, got);
    assert_eq!(
        g.generate(&model, &prompt, 1, &[], &greedy, |_| {})
            .unwrap(),
        full[..1].to_vec()
    );
    assert!(g
        .generate(&model, &prompt, 0, &[], &greedy, |_| {})
        .unwrap()
        .is_empty());
    let warm = graft_models::Sampling {
        temperature: 0.8,
        seed: 3,
        ..Default::default()
    };
    let a = g.generate(&model, &prompt, 8, &[], &warm, |_| {}).unwrap();
    let b = g.generate(&model, &prompt, 8, &[], &warm, |_| {}).unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    assert!(a.iter().all(|&t| (t as usize) < model.vocab_size));
    // top-k goes through the CPU sampler on the read-back logits
    let topk = graft_models::Sampling {
        temperature: 0.8,
        top_k: 5,
        seed: 3,
        ..Default::default()
    };
    assert_eq!(
        g.generate(&model, &prompt, 6, &[], &topk, |_| {}).unwrap(),
        model.generate_with(&prompt, 6, &[], &topk, |_| {}).unwrap(),
        "top-k sampling on read-back logits equals the CPU's sampler"
    );
}

/// Bad input is an error, never a panic: out-of-vocabulary ids, an empty prompt, a context
/// longer than the GPU cache.
#[test]
fn bad_input_is_an_error() {
    let Some(gpu) = test_gpu() else { return };
    let m = Model::open_base(&fixtures().join("models/llama")).unwrap();
    let mut g = GpuModel::new(
        &gpu,
        &m,
        &GpuModelOptions {
            max_context: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    let e = g.forward(&m, &[1, 100_000], false).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = g.forward(&m, &[], false).unwrap_err().to_string();
    assert!(e.contains("no tokens"), "{e}");
    let e = g.forward(&m, &[1; 9], false).unwrap_err().to_string();
    assert!(e.contains("KV cache"), "{e}");
    // the model still works afterwards
    g.reset();
    assert_eq!(g.forward(&m, &[1, 2, 3], false).unwrap().dims(), &[3, 128]);
}

/// A lost device (here: destroyed under the model) is an error on the next call, not a panic
/// or a hang.
#[test]
fn a_lost_device_is_an_error() {
    if test_gpu().is_none() {
        return;
    }
    // a device of its own: destroying the shared one would break the other tests
    let gpu = graft_gpu::Gpu::new_blocking(&Default::default()).unwrap();
    let m = Model::open_base(&fixtures().join("models/llama")).unwrap();
    let mut g = GpuModel::new(&gpu, &m, &GpuModelOptions::default()).unwrap();
    assert_eq!(g.forward(&m, &[1, 2], false).unwrap().dims(), &[2, 128]);
    gpu.device.destroy();
    g.reset();
    let r = g.forward(&m, &[1, 2], false);
    assert!(r.is_err(), "forward on a destroyed device returned {r:?}");
    eprintln!("lost device: {}", r.unwrap_err());
}
