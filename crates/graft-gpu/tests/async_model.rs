//! The async entry points (`forward_async`, `generate_async`, the ones the browser uses) against
//! the blocking ones on the fixture models: driven by a trivial executor (pollster) they give
//! bit-identical logits and the same tokens. Natively each future is complete on its first poll
//! (the device is polled before the read-back is awaited), so no waker is ever needed.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use candle_core::Tensor;
use graft_gpu::{Gpu, GpuModel, GpuModelOptions, GpuOptions};
use graft_models::sampling::Sampling;
use graft_models::Model;

/// The GPU the tests share, or `None` (with a message) where no adapter exists; with
/// `GRAFT_REQUIRE_GPU=1` a missing GPU fails instead.
fn gpu() -> Option<Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let g =
        GPU.get_or_init(|| Gpu::new_blocking(&GpuOptions::default()).map_err(|e| e.to_string()));
    match g {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            if std::env::var("GRAFT_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("GRAFT_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("skipping: no GPU ({e})");
            None
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn bits(t: &Tensor) -> (Vec<usize>, Vec<u32>) {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (t.dims().to_vec(), v.iter().map(|x| x.to_bits()).collect())
}

/// Polls `f` once with a waker that does nothing: natively the futures never wait on a wakeup.
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
fn forward_async_is_bit_identical_to_forward() {
    let Some(gpu) = gpu() else { return };
    for name in ["llama", "llama-tied", "opt"] {
        let model = Model::open_base(&fixture(name)).unwrap();
        let opts = GpuModelOptions {
            max_context: Some(64),
            ..Default::default()
        };
        let mut g = GpuModel::new(&gpu, &model, &opts).unwrap();

        // the whole prompt, every position's logits
        g.reset();
        let sync = g.forward(&model, &PROMPT, false).unwrap();
        g.reset();
        let by_pollster = pollster::block_on(g.forward_async(&model, &PROMPT, false)).unwrap();
        g.reset();
        let by_one_poll = first_poll(g.forward_async(&model, &PROMPT, false)).unwrap();
        assert_eq!(sync.dims()[0], PROMPT.len(), "{name}");
        assert_eq!(
            bits(&sync),
            bits(&by_pollster),
            "{name}: forward_async differs"
        );
        assert_eq!(
            bits(&sync),
            bits(&by_one_poll),
            "{name}: forward_async differs"
        );

        // token by token through the KV cache, last position only
        g.reset();
        let sync: Vec<_> = PROMPT
            .iter()
            .map(|&t| bits(&g.forward(&model, &[t], true).unwrap()))
            .collect();
        g.reset();
        let asy: Vec<_> = PROMPT
            .iter()
            .map(|&t| bits(&pollster::block_on(g.forward_async(&model, &[t], true)).unwrap()))
            .collect();
        assert_eq!(sync, asy, "{name}: decode through the cache differs");
        assert_eq!(g.len, PROMPT.len());
    }
}

#[test]
fn generate_async_yields_the_same_tokens_as_generate() {
    let Some(gpu) = gpu() else { return };
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
        let model = Model::open_base(&fixture(name)).unwrap();
        let opts = GpuModelOptions {
            max_context: Some(64),
            ..Default::default()
        };
        let mut g = GpuModel::new(&gpu, &model, &opts).unwrap();
        for s in &samplings {
            for max_new in [1, 12] {
                let mut seen_sync = Vec::new();
                let sync = g
                    .generate(&model, &PROMPT, max_new, &[], s, |t| seen_sync.push(t))
                    .unwrap();
                let mut seen_async = Vec::new();
                let asy =
                    pollster::block_on(
                        g.generate_async(&model, &PROMPT, max_new, &[], s, |t| seen_async.push(t)),
                    )
                    .unwrap();
                let mut seen_once = Vec::new();
                let once = first_poll(
                    g.generate_async(&model, &PROMPT, max_new, &[], s, |t| seen_once.push(t)),
                )
                .unwrap();
                let what = format!("{name} {s:?} max_new {max_new}");
                assert_eq!(sync.len(), max_new, "{what}");
                assert_eq!(sync, asy, "{what}: generate_async differs");
                assert_eq!(sync, once, "{what}: generate_async differs");
                assert_eq!(seen_sync, sync, "{what}: on_token");
                assert_eq!(seen_async, asy, "{what}: on_token (async)");
                assert_eq!(seen_once, once, "{what}: on_token (async)");
            }
        }
        // an EOS stops both at the same place
        let greedy = g
            .generate(&model, &PROMPT, 12, &[], &Sampling::default(), |_| {})
            .unwrap();
        let eos = [greedy[3]];
        let sync = g
            .generate(&model, &PROMPT, 12, &eos, &Sampling::default(), |_| {})
            .unwrap();
        let asy = pollster::block_on(g.generate_async(
            &model,
            &PROMPT,
            12,
            &eos,
            &Sampling::default(),
            |_| {},
        ))
        .unwrap();
        assert_eq!(sync, asy, "{name}: with EOS");
        assert_eq!(sync.last(), Some(&eos[0]), "{name}: stops at EOS");
    }
}

/// Toggling adapters between two forward passes of the same length (the same cached plan)
/// must change the GPU's numbers exactly as it changes the CPU's.
#[test]
fn enable_disable_and_set_adapter_between_calls_of_one_length() {
    let Some(gpu) = gpu() else { return };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut model = Model::open_base(&root.join("models/llama")).unwrap();
    model
        .load_adapter(
            &root.join("cases/lora_qv/adapters/default"),
            graft_models::LoadAdapterOptions::default(),
        )
        .unwrap();
    let mut gm = GpuModel::new(&gpu, &model, &GpuModelOptions::default()).unwrap();
    let tokens = [1u32, 5, 17, 42, 99];
    let check = |gm: &mut GpuModel, model: &Model, label: &str| {
        // forward continues the cached sequence; each check is a fresh one.
        gm.reset();
        let g = gm.forward(model, &tokens, false).unwrap();
        let c = model.logits(&tokens).unwrap();
        let d = (g - c)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-3, "{label}: GPU and CPU differ by {d}");
    };
    check(&mut gm, &model, "on");
    model.disable_adapters().unwrap();
    check(&mut gm, &model, "disabled");
    model.enable_adapters().unwrap();
    check(&mut gm, &model, "enabled again");
}
