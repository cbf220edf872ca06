//! GGUF files of every architecture, written by llama.cpp's own converter
//! (tests/fixtures/gguf_arch, made by make_gguf_arch_fixtures.py from the tiny models of
//! tests/fixtures/arch), on every device: the F32 file gives the Hugging Face model's logits,
//! PEFT adapters made for the Hugging Face model attach to it by name and give PEFT's logits,
//! and the Q8_0 file gives what transformers computes from the same GGUF (it dequantizes), on
//! the CPU to 1e-4 and the GPU to 1e-3.

use graft_adapters::tensors::load_safetensors;
use graft_models::{LoadAdapterOptions, Model};
use graft_tests::{apply_run, assert_close, case_tokens, devices, fixtures, to_device};
use serde_json::Value;

fn tokens() -> Vec<u32> {
    let case: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("arch/cases/qwen2_lora/case.json")).unwrap(),
    )
    .unwrap();
    case_tokens(&case)
}

fn check(name: &str) {
    let gg = fixtures().join("gguf_arch");
    // references as the GGUF has the model (see make_gguf_arch_fixtures.py: llama.cpp's
    // converter drops Gemma's query_pre_attn_scalar and Mistral's window)
    let refs = load_safetensors(&gg.join(format!("{name}.f32.ref.safetensors"))).unwrap();
    let case_dir = fixtures().join(format!("arch/cases/{name}_lora"));
    let case: Value =
        serde_json::from_slice(&std::fs::read(case_dir.join("case.json")).unwrap()).unwrap();
    for (device, tol) in devices() {
        let mut m = Model::open_base(&gg.join(format!("{name}.f32.gguf"))).unwrap();
        to_device(&mut m, device, None);
        let got = m.logits(&tokens()).unwrap();
        assert_close(
            &format!("{name}.f32.gguf ({device:?})"),
            &got,
            &refs["base"].tensor,
            tol,
        );
        // the Hugging Face model's PEFT adapters on the GGUF base
        for a in case["adapters"].as_array().unwrap() {
            let opts = LoadAdapterOptions {
                adapter_name: Some(a["name"].as_str().unwrap().to_string()),
                ..Default::default()
            };
            m.load_adapter(&case_dir.join(a["path"].as_str().unwrap()), opts)
                .unwrap();
        }
        for run in case["runs"].as_array().unwrap() {
            let run_name = run["name"].as_str().unwrap();
            apply_run(&mut m, run);
            let got = m.logits(&tokens()).unwrap();
            assert_close(
                &format!("{name}.f32.gguf + {run_name} ({device:?})"),
                &got,
                &refs[run_name].tensor,
                tol,
            );
        }
        let q8 = gg.join(format!("{name}.q8_0.ref.safetensors"));
        if q8.is_file() {
            let want = load_safetensors(&q8).unwrap();
            let mut m = Model::open_base(&gg.join(format!("{name}.q8_0.gguf"))).unwrap();
            to_device(&mut m, device, None);
            let got = m.logits(&tokens()).unwrap();
            assert_close(
                &format!("{name}.q8_0.gguf ({device:?})"),
                &got,
                &want["base"].tensor,
                tol,
            );
        }
    }
}

/// The fixture's Hugging Face references agree with these where the GGUF keeps every key.
#[test]
fn references_equal_the_hugging_face_fixtures_where_nothing_is_dropped() {
    for name in ["qwen2", "qwen3", "phi3", "llama3"] {
        let gg =
            load_safetensors(&fixtures().join(format!("gguf_arch/{name}.f32.ref.safetensors")))
                .unwrap();
        let hf = load_safetensors(
            &fixtures().join(format!("arch/models/{name}/base_logits.safetensors")),
        )
        .unwrap();
        assert_close(name, &gg["base"].tensor, &hf["logits"].tensor, 0.0);
    }
}

macro_rules! gguf_tests {
    ($($name:ident),*) => { $( #[test] fn $name() { check(stringify!($name)); } )* };
}

gguf_tests!(qwen2, qwen3, gemma2, gemma3, phi3, mistral, llama3);
