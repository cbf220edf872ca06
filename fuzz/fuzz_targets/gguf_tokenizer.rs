//! Tokenizers and chat templates from GGUF metadata: graft-text's
//! `Tokenizer::from_gguf_metadata` (the `tokenizer.ggml.*` keys → a `tokenizer.json` document →
//! the tokenizers crate), then encoding, decoding and `apply_chat_template`; and
//! `render_chat_template` on arbitrary template text.
//!
//! Input: GGUF bytes (its metadata, as `Model::gguf_tokenizer_metadata` gives it), a JSON
//! object (the metadata map itself), or anything else (templates start with `{%` or `{{`,
//! which is not JSON): a chat template.
#![no_main]

use graft_arch::gguf::{Gguf, Value as G};
use graft_text::{render_chat_template, Message, Tokenizer};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// As graft-models converts GGUF metadata for graft-text.
fn to_json(v: &G) -> Value {
    match v {
        G::String(s) => Value::String(s.clone()),
        G::Bool(b) => Value::Bool(*b),
        G::F32(f) => json!(f),
        G::F64(f) => json!(f),
        G::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        G::I8(x) => json!(x),
        G::I16(x) => json!(x),
        G::I32(x) => json!(x),
        G::I64(x) => json!(x),
        other => other.as_u64().map(|x| json!(x)).unwrap_or(Value::Null),
    }
}

fn messages() -> Vec<Message> {
    vec![
        Message::new("system", "You are terse."),
        Message::new("user", "Hi <|im_end|> there"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "What is 2+2? ▁é 日本"),
    ]
}

const TEXTS: &[&str] = &[
    "",
    " ",
    "Hello, world!",
    "  leading  and trailing  ",
    "I'm 12345 ünïcödé 日本語 🙂\n\ttabs\r\n",
    "<s></s><|im_start|><unk>",
];

fn tokenizer(meta: &Map<String, Value>) {
    let Ok(t) = Tokenizer::from_gguf_metadata(meta) else {
        return;
    };
    let vocab = t.vocab_size() as u32;
    for text in TEXTS {
        for special in [false, true] {
            if let Ok(ids) = t.encode(text, special) {
                let _ = t.decode(&ids, false);
                let _ = t.decode(&ids, true);
            }
        }
    }
    let ids: Vec<u32> = (0..vocab.min(64))
        .chain([vocab, vocab + 1, u32::MAX])
        .collect();
    let _ = t.decode(&ids, false);
    let _ = t.decode(&ids, true);
    for gen in [false, true] {
        if let Ok(s) = t.apply_chat_template(&messages(), gen) {
            let _ = t.encode(&s, true);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"GGUF") {
        if let Ok(g) = Gguf::parse(data) {
            let meta: Map<String, Value> = g
                .metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer.") || *k == "general.architecture")
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            tokenizer(&meta);
        }
    } else if let Ok(Value::Object(meta)) = serde_json::from_slice(data) {
        tokenizer(&meta);
    } else {
        let tpl = String::from_utf8_lossy(data);
        for gen in [false, true] {
            let _ = render_chat_template(&tpl, &messages(), gen, "<s>", "</s>");
        }
    }
});
