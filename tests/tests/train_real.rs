//! A short training run on the real model: SmolLM2-135M-Instruct (Q4_1 GGUF, a QLoRA-style
//! frozen quantized base) learns the demo data set's pirate voice (adapters/smollm2-pirate/
//! train.jsonl, the data the demo LoRA was made from with PEFT) and its greedy answers change
//! as intended — also for a question outside the data. Kept to a few steps: CI runs it in a
//! debug build.

use graft_adapters::config::config_from_kwargs;
use graft_models::Model;
use graft_tests::fixtures;
use graft_text::{Message, Tokenizer};
use graft_train::data::{load_jsonl, DataOptions};
use graft_train::optim::{AdamWConfig, Schedule};
use graft_train::{TrainArgs, Trainer};
use serde_json::json;

const STEPS: usize = 8;

fn answer(m: &Model, tk: &Tokenizer, q: &str) -> String {
    let prompt = tk
        .apply_chat_template(&[Message::new("user", q)], true)
        .expect("template");
    let ids = tk.encode(&prompt, false).expect("encode");
    let out = m
        .generate(&ids, 12, &m.eos_token_ids(), |_| {})
        .expect("generate");
    tk.decode(&out, true).expect("decode")
}

#[test]
fn a_short_run_on_smollm2_changes_its_answers() {
    let Some(path) = graft_tests::real_model() else {
        return;
    };
    let mut model = Model::open_base(&path).expect("open");
    let tk = Tokenizer::from_gguf_metadata(&model.gguf_tokenizer_metadata().expect("metadata"))
        .expect("tokenizer");
    let q = "What is the capital of France?";
    let before = answer(&model, &tk, q);
    assert!(!before.contains("Arr"), "{before}");

    let data = fixtures().join("../../adapters/smollm2-pirate/train.jsonl");
    let ds = load_jsonl(
        &data,
        &tk,
        &DataOptions {
            max_length: 256,
            skip_bad_lines: false,
            add_eos_to_completion: true,
        },
    )
    .expect("data");
    assert_eq!(ds.examples.len(), 20);
    let cfg = config_from_kwargs(json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
        "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}))
    .expect("config");
    model.add_adapter(cfg, None, 0).expect("add_adapter");
    let args = TrainArgs {
        max_steps: Some(STEPS),
        batch_size: 4,
        optim: AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
        schedule: Schedule::Constant,
        ..Default::default()
    };
    let mut tr = Trainer::new(&mut model, "default", args).expect("trainer");
    let s = tr
        .train(&ds.examples, &[], None, &mut |_| {})
        .expect("train");
    let (first, last) = (s.train_losses[0].1, s.train_losses[STEPS - 1].1);
    assert!(last < 0.6 * first, "loss {first} -> {last}");
    drop(tr);
    let after = answer(&model, &tk, q);
    eprintln!("before: {before:?}\nafter:  {after:?}");
    assert!(after.starts_with("Arr"), "{after}");
    model.disable_adapters().expect("disable");
    assert_eq!(
        answer(&model, &tk, q),
        before,
        "disabling the adapter restores the base"
    );
}
