//! Tokenizers built from the metadata of real GGUF files encode, decode and render chats byte
//! for byte as transformers does (`tests/fixtures/tokenizers/gguf_tokenizers.json`, written by
//! `scripts/make_tokenizer_references.py`).
//!
//! The GGUF files are not committed: `scripts/fetch_models.sh` puts them in `models/`. A test
//! whose file is absent says so and passes. Only the metadata at the head of each file is read
//! (a few MB), with the small reader below: graft-text does not depend on graft-arch.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use graft_text::{Error, Message, Tokenizer};
use serde_json::{json, Map, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn references() -> Value {
    let p = repo_root().join("tests/fixtures/tokenizers/gguf_tokenizers.json");
    serde_json::from_slice(&std::fs::read(&p).expect("references")).expect("json")
}

/// The model's GGUF, or `None` (with a note) when it has not been fetched.
fn model_file(name: &str, refs: &Value) -> Option<PathBuf> {
    let file = refs["models"][name]["file"].as_str().expect("file");
    let p = repo_root().join("models").join(file);
    if p.is_file() {
        return Some(p);
    }
    eprintln!(
        "skipped: {} is absent (scripts/fetch_models.sh fetches it)",
        p.display()
    );
    None
}

/// A GGUF's metadata, read from the head of the file (no tensor data), as JSON values the way
/// graft-models hands them to `Tokenizer::from_gguf_metadata`.
fn gguf_metadata(path: &Path) -> Map<String, Value> {
    struct R(BufReader<File>);
    impl R {
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut b = [0u8; N];
            self.0.read_exact(&mut b).expect("read");
            b
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.bytes())
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.bytes())
        }
        fn string(&mut self) -> String {
            let n = self.u64();
            assert!(n < 1 << 26, "string of {n} bytes");
            let mut b = vec![0u8; n as usize];
            self.0.read_exact(&mut b).expect("read");
            String::from_utf8(b).expect("utf-8")
        }
        fn value(&mut self, ty: u32) -> Value {
            match ty {
                0 => json!(self.bytes::<1>()[0]),
                1 => json!(i8::from_le_bytes(self.bytes())),
                2 => json!(u16::from_le_bytes(self.bytes())),
                3 => json!(i16::from_le_bytes(self.bytes())),
                4 => json!(self.u32()),
                5 => json!(i32::from_le_bytes(self.bytes())),
                6 => json!(f32::from_le_bytes(self.bytes())),
                7 => json!(self.bytes::<1>()[0] != 0),
                8 => json!(self.string()),
                9 => {
                    let t = self.u32();
                    let n = self.u64();
                    assert!(n < 1 << 24, "array of {n}");
                    Value::Array((0..n).map(|_| self.value(t)).collect())
                }
                10 => json!(self.u64()),
                11 => json!(i64::from_le_bytes(self.bytes())),
                12 => json!(f64::from_le_bytes(self.bytes())),
                t => panic!("GGUF value type {t}"),
            }
        }
    }
    let mut r = R(BufReader::with_capacity(
        1 << 20,
        File::open(path).expect("open"),
    ));
    assert_eq!(&r.bytes::<4>(), b"GGUF");
    let version = r.u32();
    assert!((2..=3).contains(&version), "GGUF version {version}");
    let _tensors = r.u64();
    let n_kv = r.u64();
    let mut all = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string();
        let ty = r.u32();
        all.insert(key, r.value(ty));
    }
    all.into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") || k == "general.architecture")
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            Message::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect()
}

/// Every difference, so that one run shows them all.
#[derive(Default)]
struct Diffs(Vec<String>);

impl Diffs {
    fn check<T: PartialEq + std::fmt::Debug>(&mut self, what: String, got: T, want: T) {
        if got != want {
            self.0
                .push(format!("{what}:\n   got {got:?}\n  want {want:?}"));
        }
    }
    fn assert_none(self, label: &str) {
        assert!(
            self.0.is_empty(),
            "{label}: {} differences\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Encodes, decodes and chats of one model against transformers.
fn check_model(name: &str) {
    let refs = references();
    let Some(path) = model_file(name, &refs) else {
        return;
    };
    let r = &refs["models"][name];
    let meta = gguf_metadata(&path);
    let tk = Tokenizer::from_gguf_metadata(&meta).expect("tokenizer");
    let mut d = Diffs::default();
    d.check(
        "vocab size".into(),
        tk.vocab_size() as u64,
        r["vocab_size"].as_u64().expect("vocab_size"),
    );
    d.check(
        "bos".into(),
        tk.bos_token.as_deref(),
        r["bos_token"].as_str(),
    );
    d.check(
        "eos".into(),
        tk.eos_token.as_deref(),
        r["eos_token"].as_str(),
    );
    d.check(
        "eos id".into(),
        tk.eos_id.map(u64::from),
        r["eos_token_id"].as_u64(),
    );
    d.check(
        "chat template".into(),
        tk.chat_template.as_deref(),
        r["chat_template"].as_str(),
    );
    let cases = r["encode"].as_array().expect("encode");
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let want = ids(&c["ids"]);
        d.check(
            format!("encode {text:?}"),
            tk.encode(text, false).ok(),
            Some(want.clone()),
        );
        d.check(
            format!("encode {text:?} with special tokens"),
            tk.encode(text, true).ok(),
            Some(ids(&c["ids_default"])),
        );
        d.check(
            format!("decode {text:?}"),
            tk.decode(&want, false).ok().as_deref(),
            c["decode"].as_str(),
        );
        d.check(
            format!("decode {text:?} skipping special tokens"),
            tk.decode(&want, true).ok().as_deref(),
            c["decode_skip_special"].as_str(),
        );
    }
    let chats = r["chat"].as_array().expect("chat");
    for c in chats {
        let msgs = messages(&c["messages"]);
        let gen = c["add_generation_prompt"].as_bool().expect("gen");
        let text = tk.apply_chat_template(&msgs, gen).expect("render");
        d.check(
            format!("chat {msgs:?} (add_generation_prompt={gen})"),
            text.as_str(),
            c["text"].as_str().expect("text"),
        );
        d.check(
            format!("chat ids {msgs:?}"),
            tk.encode(&text, false).ok(),
            Some(ids(&c["ids"])),
        );
    }
    if r["chat_template"].is_null() {
        // A base model without a chat template: asking for a chat is a clear error.
        let e = tk
            .apply_chat_template(&[Message::new("user", "Hi")], true)
            .expect_err("no template");
        assert!(matches!(e, Error::NoChatTemplate), "{e}");
    }
    eprintln!(
        "{name}: {} strings, {} conversations checked",
        cases.len(),
        chats.len()
    );
    d.assert_none(name);
}

#[test]
fn qwen2_5_coder_0_5b_matches_transformers() {
    check_model("qwen2.5-coder-0.5b");
}

#[test]
fn qwen2_5_coder_1_5b_matches_transformers() {
    check_model("qwen2.5-coder-1.5b");
}

#[test]
fn gemma_3_270m_matches_transformers() {
    check_model("gemma-3-270m");
}

/// The other byte-level pre-tokenizer types, on Qwen2.5's real vocabulary and merges.
#[test]
fn byte_level_pre_types_match_transformers() {
    let refs = references();
    let v = &refs["pre_variants"];
    let name = v["model"].as_str().expect("model");
    let Some(path) = model_file(name, &refs) else {
        return;
    };
    let strings = refs["strings"].as_array().expect("strings");
    let mut meta = gguf_metadata(&path);
    let mut d = Diffs::default();
    let variants = v["ids"].as_object().expect("ids");
    for (pre, want) in variants {
        meta.insert("tokenizer.ggml.pre".into(), json!(pre));
        let tk = Tokenizer::from_gguf_metadata(&meta).expect("tokenizer");
        for (s, w) in strings.iter().zip(want.as_array().expect("per string")) {
            let s = s.as_str().expect("string");
            d.check(
                format!("pre {pre}: encode {s:?}"),
                tk.encode(s, false).ok(),
                Some(ids(w)),
            );
        }
    }
    eprintln!(
        "{} pre-types x {} strings checked",
        variants.len(),
        strings.len()
    );
    d.assert_none("pre-types");
}

/// Llama-style sentencepiece (merges rebuilt from the scores), on Gemma 3's real vocabulary.
#[test]
fn sentencepiece_llama_matches_transformers() {
    let refs = references();
    let v = &refs["spm_llama_variant"];
    let name = v["model"].as_str().expect("model");
    let Some(path) = model_file(name, &refs) else {
        return;
    };
    let strings = refs["strings"].as_array().expect("strings");
    let mut meta = gguf_metadata(&path);
    meta.insert("general.architecture".into(), json!("llama"));
    let tk = Tokenizer::from_gguf_metadata(&meta).expect("tokenizer");
    let mut d = Diffs::default();
    for (s, w) in strings.iter().zip(v["ids"].as_array().expect("per string")) {
        let s = s.as_str().expect("string");
        d.check(
            format!("encode {s:?}"),
            tk.encode(s, false).ok(),
            Some(ids(w)),
        );
    }
    d.assert_none("sentencepiece (llama)");
}
