//! `--quantize` (load_in_8bit / load_in_4bit and GGML formats) on the conformance fixtures:
//! adapters stay f32 and run unmerged on top, and each format's error against the f32 model is
//! bounded. The numbers are printed (`cargo test --test quantize -- --nocapture`) and recorded
//! in docs/benchmarks.md.

use graft_adapters::tensors::load_safetensors;
use graft_models::{LoadAdapterOptions, Model, OpenOptions};
use graft_quant::QType;
use graft_tests::{fixtures, max_abs_diff};

const TOKENS: [u32; 12] = [1, 5, 17, 42, 99, 3, 64, 7, 120, 0, 33, 2];

fn run(q: Option<QType>, case: &str, model: &str) -> candle_core::Tensor {
    let opts = OpenOptions { quantize: q };
    let mut m = Model::open_base_with(&fixtures().join("models").join(model), &opts).expect("open");
    m.load_adapter(
        &fixtures().join("cases").join(case).join("adapters/default"),
        LoadAdapterOptions::default(),
    )
    .expect("adapter");
    m.logits(&TOKENS).expect("logits")
}

#[test]
fn quantized_bases_stay_close_to_f32_with_adapters_on_top() {
    // Budgets on max |logit diff| relative to the largest logit. These tiny random models
    // (hidden size 32) magnify 4-bit rounding; a wrong layout or a dropped adapter gives errors
    // of the order of the logits themselves.
    let budgets = [
        (QType::Int8, 0.03),
        (QType::Q8_0, 0.03),
        (QType::Nf4, 0.35),
        (QType::Q4_0, 0.35),
    ];
    for (case, model) in [("lora_qv", "llama"), ("opt_lora", "opt"), ("dora", "llama")] {
        let reference = load_safetensors(
            &fixtures()
                .join("cases")
                .join(case)
                .join("logits.safetensors"),
        )
        .expect("ref");
        let peft = &reference["on"].tensor;
        let f32 = run(None, case, model);
        assert!(max_abs_diff(&f32, peft) < 1e-3);
        for (q, budget) in budgets {
            let got = run(Some(q), case, model);
            let err = max_abs_diff(&got, peft);
            let scale = max_abs_diff(peft, &(peft * 0.0).expect("zero"));
            let rel = err / scale;
            println!("{case:>8} {q:?}: max |logit − PEFT f32| = {err:.4} ({:.1}% of the largest logit, {scale:.1})", rel * 100.0);
            assert!(err > 0.0, "{q:?} changed nothing: not quantized?");
            assert!(
                rel < budget,
                "{case} {q:?}: relative error {rel} over budget {budget}"
            );
        }
    }
}

#[test]
fn quantize_refuses_gguf() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("x.gguf");
    std::fs::write(&p, b"GGUF").expect("write");
    let opts = OpenOptions {
        quantize: Some(QType::Q4_0),
    };
    assert!(Model::open_base_with(&p, &opts).is_err());
}
