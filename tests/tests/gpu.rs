//! What only the GPU has: the decode kernels token by token through its KV cache, tensors split
//! across bindings, no pipeline compiled when adapters switch, the async entry points the browser
//! uses, generation stopping where the CPU's does, the real model's greedy tokens, and errors
//! instead of panics. (The fixtures' logits against PEFT run on every device in
//! conformance.rs.)

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use candle_core::Tensor;
use graft_models::{Device, LoadAdapterOptions, Model, Sampling};
use graft_tests::{apply_run, assert_close, case_tokens, fixtures, load_case, test_gpu, to_device};
use serde_json::Value;

const TOL: f32 = 1e-3;

/// Logits of `tokens` fed one at a time through the GPU's KV cache (the decode kernels), the
/// last position's.
fn decode_last(model: &Model, tokens: &[u32]) -> Tensor {
    model
        .with_gpu(|g, table, reg| {
            g.reset();
            let mut last = None;
            for &t in tokens {
                last = Some(g.forward(table, reg, &[t], true).unwrap());
            }
            last.unwrap()
        })
        .expect("on the GPU")
}

fn pipelines(model: &Model) -> usize {
    model
        .with_gpu(|g, _, _| g.pipelines_compiled())
        .expect("on the GPU")
}

/// Token by token through the KV cache, every run of every case matches the CPU; switching
/// adapters between runs compiles no pipeline.
#[test]
fn decode_through_the_cache_matches_the_cpu_and_switching_compiles_nothing() {
    if test_gpu().is_none() {
        return;
    }
    decode_on(None, None);
}

/// With 8 KiB storage bindings the fixtures' embeddings, heads and stacked q/k/v or gate/up
/// matrices no longer fit one binding: they are split by rows (or unstacked) and the numbers
/// stay the same.
#[test]
fn tensors_larger_than_a_binding_are_split() {
    if test_gpu().is_none() {
        return;
    }
    let small = graft_gpu::Gpu::new_blocking(&graft_gpu::GpuOptions {
        max_binding: Some(8192),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(small.binding_limit(), 8192);
    // the split is real: more dispatches per token than on the full-size device
    let dispatches = |gpu: graft_gpu::Gpu| {
        let mut m = Model::open_base(&fixtures().join("models/llama")).unwrap();
        let opts = graft_models::DeviceOptions {
            max_context: Some(64),
            open_gpu: Some(gpu),
            ..Default::default()
        };
        m.set_device(Device::Gpu, &opts).unwrap();
        m.with_gpu(|g, t, r| g.dispatches_per_token(t, r).unwrap())
            .unwrap()
    };
    let parts = dispatches(small.clone());
    let whole = dispatches(test_gpu().unwrap());
    assert!(parts > whole, "{parts} dispatches split vs {whole} whole");
    decode_on(Some(small), Some(64));
}

fn decode_on(gpu: Option<graft_gpu::Gpu>, max_context: Option<usize>) {
    let mut cases: Vec<_> = std::fs::read_dir(fixtures().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15);
    let mut checked = 0;
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (case, cpu) = load_case(&dir);
        let (_, mut model) = load_case(&dir);
        let opts = graft_models::DeviceOptions {
            max_context,
            open_gpu: gpu.clone().or_else(test_gpu),
            ..Default::default()
        };
        model
            .set_device(Device::Gpu, &opts)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut cpu = cpu;
        let toks = case_tokens(&case);
        let mut compiled_after_first = None;
        for run in case["runs"].as_array().unwrap() {
            let run_name = run["name"].as_str().unwrap();
            apply_run(&mut model, run);
            apply_run(&mut cpu, run);
            let want = cpu.logits(&toks).unwrap();
            let got = model.logits(&toks).unwrap();
            assert_close(&format!("{name}/{run_name} (gpu)"), &got, &want, TOL);
            let last = decode_last(&model, &toks);
            let cpu_last = want.narrow(0, toks.len() - 1, 1).unwrap();
            assert_close(
                &format!("{name}/{run_name} (gpu decode)"),
                &last,
                &cpu_last,
                TOL,
            );
            match compiled_after_first {
                None => compiled_after_first = Some(pipelines(&model)),
                Some(c) => assert_eq!(
                    pipelines(&model),
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
    if test_gpu().is_none() {
        return;
    }
    let g: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("real/generation.json")).unwrap())
            .unwrap();
    let mut cpu = Model::open_base(&path).unwrap();
    let mut m = Model::open_base(&path).unwrap();
    to_device(&mut m, Device::Gpu, Some(256));
    let adapter = fixtures().join("../../adapters/smollm2-pirate");
    for with in [false, true] {
        if with {
            for x in [&mut m, &mut cpu] {
                x.load_adapter(&adapter, LoadAdapterOptions::default())
                    .unwrap();
            }
        }
        // two prompts, 12 tokens: lavapipe (CI) runs this model at about one token per second
        for (i, p) in g["prompts"].as_array().unwrap().iter().take(2).enumerate() {
            let prompt = ids(&p["prompt_ids"]);
            if i == 0 {
                let want = cpu.forward_last(&prompt, &mut Default::default()).unwrap();
                let got = m
                    .with_gpu(|g, t, r| {
                        g.reset();
                        g.forward(t, r, &prompt, true).unwrap()
                    })
                    .unwrap();
                assert_close(&format!("prefill adapter={with}"), &got, &want, TOL);
            }
            let want = cpu.generate(&prompt, 12, &[], |_| {}).unwrap();
            let got = m.generate(&prompt, 12, &[], |_| {}).unwrap();
            assert_eq!(got, want, "prompt {i}, adapter={with}");
        }
    }
}

/// Generation on the GPU (pipelined decode) stops where the CPU's does: at EOS, at
/// max_new_tokens (1 included), and sampling with a temperature stays within the vocabulary and
/// repeats for a seed; top-k on read-back logits equals the CPU's sampler.
#[test]
fn generation_stops_like_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let dir = fixtures().join("cases/lora_qv");
    let (case, cpu) = load_case(&dir);
    let (_, mut model) = load_case(&dir);
    to_device(&mut model, Device::Gpu, None);
    let prompt = case_tokens(&case);
    let full = cpu.generate(&prompt, 8, &[], |_| {}).unwrap();
    assert_eq!(model.generate(&prompt, 8, &[], |_| {}).unwrap(), full);
    let eos = [full[3]];
    let stop = full.iter().position(|t| *t == full[3]).unwrap();
    let mut streamed = Vec::new();
    let got = model
        .generate(&prompt, 8, &eos, |t| streamed.push(t))
        .unwrap();
    assert_eq!(got, full[..=stop].to_vec());
    assert_eq!(streamed, got);
    assert_eq!(
        model.generate(&prompt, 1, &[], |_| {}).unwrap(),
        full[..1].to_vec()
    );
    assert!(model.generate(&prompt, 0, &[], |_| {}).unwrap().is_empty());
    let warm = Sampling {
        temperature: 0.8,
        seed: 3,
        ..Default::default()
    };
    let a = model.generate_with(&prompt, 8, &[], &warm, |_| {}).unwrap();
    let b = model.generate_with(&prompt, 8, &[], &warm, |_| {}).unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    assert!(a.iter().all(|&t| (t as usize) < model.vocab_size));
    let topk = Sampling {
        temperature: 0.8,
        top_k: 5,
        seed: 3,
        ..Default::default()
    };
    assert_eq!(
        model.generate_with(&prompt, 6, &[], &topk, |_| {}).unwrap(),
        cpu.generate_with(&prompt, 6, &[], &topk, |_| {}).unwrap(),
        "top-k sampling on read-back logits equals the CPU's sampler"
    );
}

/// Bad input is the same typed error on every device, never a panic: out-of-vocabulary ids,
/// an empty prompt; a context longer than the GPU cache is an error too.
#[test]
fn bad_input_is_an_error() {
    if test_gpu().is_none() {
        return;
    }
    let mut m = Model::open_base(&fixtures().join("models/llama")).unwrap();
    to_device(&mut m, Device::Gpu, Some(8));
    let e = m.logits(&[1, 100_000]).unwrap_err();
    assert!(
        matches!(e, graft_models::Error::TokenOutOfRange { id: 100_000, .. }),
        "{e}"
    );
    let e = m.logits(&[]).unwrap_err().to_string();
    assert!(e.contains("no tokens"), "{e}");
    let e = m.logits(&[1; 9]).unwrap_err().to_string();
    assert!(e.contains("KV cache"), "{e}");
    // the model still works afterwards
    assert_eq!(m.logits(&[1, 2, 3]).unwrap().dims(), &[3, 128]);
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
    let mut m = Model::open_base(&fixtures().join("models/llama")).unwrap();
    let opts = graft_models::DeviceOptions {
        open_gpu: Some(gpu.clone()),
        ..Default::default()
    };
    m.set_device(Device::Gpu, &opts).unwrap();
    assert_eq!(m.logits(&[1, 2]).unwrap().dims(), &[2, 128]);
    gpu.device.destroy();
    let r = m.logits(&[1, 2]);
    assert!(r.is_err(), "forward on a destroyed device returned {r:?}");
    eprintln!("lost device: {}", r.unwrap_err());
}

// ---- the async entry points (what the browser calls) ----

fn bits(t: &Tensor) -> (Vec<usize>, Vec<u32>) {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (t.dims().to_vec(), v.iter().map(|x| x.to_bits()).collect())
}

/// Polls `f` once with a waker that does nothing: natively the futures never wait on a wakeup
/// (the device is polled before a read-back is awaited).
fn first_poll<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a native GPU future was pending on its first poll"),
    }
}

const PROMPT: [u32; 7] = [1, 17, 42, 5, 99, 3, 64];

#[test]
fn logits_async_is_bit_identical_to_logits() {
    if test_gpu().is_none() {
        return;
    }
    for name in ["llama", "llama-tied", "opt"] {
        let mut model = Model::open_base(&fixtures().join("models").join(name)).unwrap();
        to_device(&mut model, Device::Gpu, Some(64));
        let sync = model.logits(&PROMPT).unwrap();
        let by_pollster = pollster::block_on(model.logits_async(&PROMPT)).unwrap();
        let by_one_poll = first_poll(model.logits_async(&PROMPT)).unwrap();
        assert_eq!(sync.dims()[0], PROMPT.len(), "{name}");
        assert_eq!(
            bits(&sync),
            bits(&by_pollster),
            "{name}: logits_async differs"
        );
        assert_eq!(
            bits(&sync),
            bits(&by_one_poll),
            "{name}: logits_async differs"
        );
    }
}

#[test]
fn generate_async_yields_the_same_tokens_as_generate() {
    if test_gpu().is_none() {
        return;
    }
    let samplings = [
        // greedy: argmax on the GPU, pipelined
        Sampling::default(),
        // temperature only: Gumbel-max on the GPU, pipelined
        Sampling {
            temperature: 0.8,
            seed: 7,
            ..Default::default()
        },
        // top-k/top-p: the logits come back and the CPU samples
        Sampling {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            seed: 11,
        },
    ];
    for name in ["llama", "opt"] {
        let mut model = Model::open_base(&fixtures().join("models").join(name)).unwrap();
        to_device(&mut model, Device::Gpu, Some(64));
        for s in &samplings {
            for max_new in [1, 12] {
                let mut seen_sync = Vec::new();
                let sync = model
                    .generate_with(&PROMPT, max_new, &[], s, |t| seen_sync.push(t))
                    .unwrap();
                let mut seen_async = Vec::new();
                let asy =
                    pollster::block_on(
                        model.generate_with_async(&PROMPT, max_new, &[], s, |t| seen_async.push(t)),
                    )
                    .unwrap();
                let mut seen_once = Vec::new();
                let once = first_poll(
                    model.generate_with_async(&PROMPT, max_new, &[], s, |t| seen_once.push(t)),
                )
                .unwrap();
                let what = format!("{name} {s:?} max_new {max_new}");
                assert_eq!(sync.len(), max_new, "{what}");
                assert_eq!(sync, asy, "{what}: generate_with_async differs");
                assert_eq!(sync, once, "{what}: generate_with_async differs");
                assert_eq!(seen_sync, sync, "{what}: on_token");
                assert_eq!(seen_async, asy, "{what}: on_token (async)");
                assert_eq!(seen_once, once, "{what}: on_token (async)");
            }
        }
    }
}

/// Toggling adapters between two forward passes of the same length (the same cached plan)
/// changes the GPU's numbers exactly as it changes the CPU's.
#[test]
fn enable_disable_between_calls_of_one_length() {
    if test_gpu().is_none() {
        return;
    }
    let root = fixtures();
    let adapter = root.join("cases/lora_qv/adapters/default");
    let open = || {
        let mut m = Model::open_base(&root.join("models/llama")).unwrap();
        m.load_adapter(&adapter, LoadAdapterOptions::default())
            .unwrap();
        m
    };
    let (mut cpu, mut gpu) = (open(), open());
    to_device(&mut gpu, Device::Gpu, None);
    let tokens = [1u32, 5, 17, 42, 99];
    let check = |cpu: &Model, gpu: &Model, label: &str| {
        let d =
            graft_tests::max_abs_diff(&gpu.logits(&tokens).unwrap(), &cpu.logits(&tokens).unwrap());
        assert!(d < 1e-3, "{label}: GPU and CPU differ by {d}");
    };
    check(&cpu, &gpu, "on");
    cpu.disable_adapters().unwrap();
    gpu.disable_adapters().unwrap();
    check(&cpu, &gpu, "disabled");
    cpu.enable_adapters().unwrap();
    gpu.enable_adapters().unwrap();
    check(&cpu, &gpu, "enabled again");
}

/// `auto` takes the CPU when the only adapter is a software one (as on CI's lavapipe), and
/// says so in one short line.
#[test]
fn auto_says_why_it_runs_on_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let mut m = Model::open_base(&fixtures().join("models/llama")).unwrap();
    let r = m
        .set_device(Device::Auto, &graft_models::DeviceOptions::default())
        .unwrap();
    if gpu.info.is_software {
        assert_eq!(r.device, Device::Cpu);
        let line = r.to_string();
        assert!(line.contains("software") && !line.contains('\n'), "{line}");
        assert_eq!(m.device(), Device::Cpu);
    } else {
        assert_eq!(r.device, Device::Gpu);
    }
}
