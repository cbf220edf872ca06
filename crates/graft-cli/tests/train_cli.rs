//! `graft train` end to end on the tiny Llama fixture (with a character-level tokenizer and a
//! ChatML template written next to it): the loss falls, the adapter is saved in PEFT's format
//! and loads back, QLoRA trains through a quantized base, a resumed run equals an uninterrupted
//! one, and bad input gets the errors the issue asks for.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn graft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run graft")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

const SPECIALS: [&str; 5] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];
const CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n.,!?':";
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The tiny Llama (vocab 128) with a character-level tokenizer of 74 tokens.
fn tiny_model(dir: &Path) -> PathBuf {
    let m = dir.join("tiny-llama");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("models/llama").join(f), m.join(f)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for (i, c) in CHARS.chars().enumerate() {
        vocab.insert(c.to_string(), json!(SPECIALS.len() + i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []},
    });
    std::fs::write(m.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHATML});
    std::fs::write(m.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    m
}

fn write_data(dir: &Path, lines: &[String]) -> PathBuf {
    let p = dir.join("data.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// A toy task: answer every question with the same phrase.
fn toy_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                json!({"messages": [
                    {"role": "user", "content": format!("what is {i}?")},
                    {"role": "assistant", "content": "arr matey"}]})
                .to_string()
            } else {
                json!({"prompt": format!("q{i}: "), "completion": "arr matey"}).to_string()
            }
        })
        .collect()
}

fn log_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(Value::as_f64))
        .collect()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn the_loss_falls_and_the_adapter_loads_back() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let data = write_data(d.path(), &toy_lines(24));
    let out = d.path().join("out");
    let o = graft(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--target-modules",
        "q_proj,v_proj,down_proj",
        "--modules-to-save",
        "lm_head",
        "--steps",
        "30",
        "--lr",
        "1e-2",
        "--batch-size",
        "4",
        "--eval-split",
        "0.2",
        "--eval-steps",
        "10",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let losses = log_losses(&out);
    assert_eq!(losses.len(), 30);
    assert!(
        losses[29] < 0.5 * losses[0],
        "the loss should fall on a toy task: {losses:?}"
    );
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.matches("eval_loss").count(), 3, "{log}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_curve.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let svg = std::fs::read_to_string(out.join("loss_curve.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..60]
    );
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16);
    assert_eq!(cfg["modules_to_save"], json!(["lm_head"]));
    assert_eq!(cfg["inference_mode"], true);
    // graft runs the trained adapter, and it changes the logits.
    let with = d.path().join("with.safetensors");
    let o = graft(&[
        "logits",
        "--model",
        p(&model),
        "--adapter",
        p(&out),
        "--tokens",
        "3,10,11,12",
        "--out",
        p(&with),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn qlora_trains_through_a_quantized_base() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let data = write_data(d.path(), &toy_lines(16));
    let out = d.path().join("out");
    let o = graft(&[
        "train",
        "--model",
        p(&model),
        "--quantize",
        "q4_0",
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--steps",
        "20",
        "--lr",
        "1e-2",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let losses = log_losses(&out);
    assert!(losses[19] < 0.7 * losses[0], "{losses:?}");
}

#[test]
fn ia3_trains() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let data = write_data(d.path(), &toy_lines(16));
    let out = d.path().join("out");
    let o = graft(&[
        "train",
        "--model",
        p(&model),
        "--method",
        "ia3",
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--steps",
        "20",
        "--lr",
        "5e-2",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let losses = log_losses(&out);
    assert!(losses[19] < losses[0], "{losses:?}");
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "IA3");
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let data = write_data(d.path(), &toy_lines(12));
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            p(&model),
            "--data",
            p(&data),
            "--out",
            p(out),
            "--steps",
            "6",
            "--save-steps",
            "3",
            "--batch-size",
            "4",
            "--lora-dropout",
            "0.1",
            "--init-lora-weights",
            "gaussian",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = d.path().join("a");
    let o = graft(&args(&a).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(a.join("checkpoint-3/optimizer.safetensors").is_file());
    // "Interrupted" after the checkpoint: only checkpoint-3 survives.
    let b = d.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let ck = b.join("checkpoint-3");
    std::fs::create_dir_all(&ck).unwrap();
    for e in std::fs::read_dir(a.join("checkpoint-3")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let mut resume = args(&b);
    resume.push("--resume".into());
    let o = graft(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resumed from"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(b.join("adapter_model.safetensors")).unwrap(),
        "a resumed run must end where the uninterrupted one did"
    );
}

#[test]
fn bad_data_lines_name_their_line_and_can_be_skipped() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let mut lines = toy_lines(6);
    lines.insert(2, "{\"messages\": [".into());
    lines.insert(4, "{\"prompt\": \"a\"}".into());
    let data = write_data(d.path(), &lines);
    let out = d.path().join("out");
    let base = [
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--steps",
        "1",
        "--quiet",
    ];
    let o = graft(&base);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("data.jsonl:3"), "{e}");
    assert!(e.contains("--skip-bad-lines"), "{e}");
    let mut skip = base.to_vec();
    skip.push("--skip-bad-lines");
    let o = graft(&skip);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("skipped 2 bad lines"), "{e}");
    assert!(e.contains("3 (") && e.contains("5 ("), "{e}");
}

#[test]
fn empty_data_and_long_examples() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let data = write_data(d.path(), &["".into(), "   ".into()]);
    let out = d.path().join("out");
    let o = graft(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--quiet",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("holds no examples"), "{}", stderr(&o));

    let long = json!({"prompt": "a".repeat(30), "completion": "b".repeat(40)}).to_string();
    let data = write_data(d.path(), &[long.clone(), long, toy_lines(1)[0].clone()]);
    let o = graft(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--steps",
        "1",
        "--max-length",
        "48",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2 of 3 examples were longer than 48 tokens and were truncated"),
        "{}",
        stderr(&o)
    );
    // Longer than the model's context (64 positions) is refused up front.
    let o = graft(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--steps",
        "1",
        "--max-length",
        "100",
        "--quiet",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("context"), "{}", stderr(&o));
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let data = write_data(d.path(), &toy_lines(8));
    let out = d.path().join("out");
    let o = graft(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--steps",
        "10",
        "--save-steps",
        "1",
        "--lr",
        "1e35",
        "--max-grad-norm",
        "0",
        "--quiet",
    ]);
    assert!(!o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("training stopped"), "{e}");
    assert!(e.contains("checkpoint-"), "{e}");
    let ck = Trainerish::latest(&out).expect("a checkpoint is kept");
    assert!(ck.join("adapter_model.safetensors").is_file());
    assert!(ck.join("trainer_state.json").is_file());
    assert!(
        !out.join("adapter_model.safetensors").exists(),
        "no final adapter from a diverged run"
    );
}

struct Trainerish;
impl Trainerish {
    fn latest(out: &Path) -> Option<PathBuf> {
        std::fs::read_dir(out)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-"))
            })
            .max()
    }
}
