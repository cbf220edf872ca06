//! Every GGUF quantization type as llama.cpp's quantizer writes it: a tiny Llama (rows of 256)
//! quantized by `llama-quantize --pure` to Q2_K … Q6_K, Q5_0, Q5_1, Q4_0, Q4_1 and Q8_0
//! (tests/fixtures/gguf_kquants, made by make_gguf_kquant_fixtures.py), against transformers
//! on the tensors gguf-py dequantizes from the same file, with and without a PEFT LoRA, on
//! every device (1e-4 on the CPU, 1e-3 on the GPU).

use graft_adapters::tensors::load_safetensors;
use graft_models::{LoadAdapterOptions, Model};
use graft_tests::{assert_close, devices, fixtures, to_device};

const TOKENS: [u32; 12] = [1, 5, 17, 42, 99, 3, 64, 7, 120, 0, 33, 2];

fn check(ty: &str) {
    let dir = fixtures().join("gguf_kquants");
    let refs = load_safetensors(&dir.join(format!("tiny-llama-256.{ty}.ref.safetensors"))).unwrap();
    for (device, tol) in devices() {
        let mut m = Model::open_base(&dir.join(format!("tiny-llama-256.{ty}.gguf"))).unwrap();
        to_device(&mut m, device, None);
        let got = m.logits(&TOKENS).unwrap();
        assert_close(
            &format!("{ty} ({device:?})"),
            &got,
            &refs["base"].tensor,
            tol,
        );
        m.load_adapter(&dir.join("lora"), LoadAdapterOptions::default())
            .unwrap();
        let got = m.logits(&TOKENS).unwrap();
        assert_close(
            &format!("{ty} + LoRA ({device:?})"),
            &got,
            &refs["lora"].tensor,
            tol,
        );
    }
}

macro_rules! types {
    ($($name:ident: $ty:expr),* $(,)?) => { $( #[test] fn $name() { check($ty); } )* };
}

types!(
    q2_k: "Q2_K",
    q3_k: "Q3_K",
    q4_k: "Q4_K",
    q5_k: "Q5_K",
    q6_k: "Q6_K",
    q5_0: "Q5_0",
    q5_1: "Q5_1",
    q4_0: "Q4_0",
    q4_1: "Q4_1",
    q8_0: "Q8_0",
);
