//! Inputs the fuzzers (`fuzz/`, `scripts/fuzz.sh`) found, minimised: each must be a typed
//! error, never a panic.

use graft_text::{render_chat_template, Error, Message, Tokenizer};
use serde_json::{json, Map, Value};

fn meta(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// fuzz target `gguf_tokenizer`: a merge whose merged token is longer than every token of the
/// vocabulary (here "ab" from "a" + "b", with no token of two bytes) made the tokenizers crate
/// panic (`range end index 2 out of range for slice of length 1` in `BPE::build`). Found on
/// the real Qwen2.5 metadata with its arrays cut short.
#[test]
fn merge_longer_than_every_token_is_an_error() {
    for model in ["gpt2", "llama"] {
        let m = meta(json!({
            "tokenizer.ggml.model": model,
            "tokenizer.ggml.tokens": ["a", "b"],
            "tokenizer.ggml.merges": ["a b"],
        }));
        match Tokenizer::from_gguf_metadata(&m) {
            Err(Error::Tokenizer(e)) => assert!(e.contains("`ab` is not in the vocabulary"), "{e}"),
            Err(e) => panic!("{model}: {e}"),
            Ok(_) => panic!("{model}: a merge into a token that is not in the vocabulary loaded"),
        }
    }
    // a part that is not a token
    let m = meta(json!({
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "ab"],
        "tokenizer.ggml.merges": ["a b"],
    }));
    let e = Tokenizer::from_gguf_metadata(&m)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("`b` is not in the vocabulary"), "{e}");
    // and a merge within the vocabulary still loads
    let m = meta(json!({
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.merges": ["a b"],
    }));
    let t = Tokenizer::from_gguf_metadata(&m).expect("loads");
    assert_eq!(t.encode("ab", false).expect("encodes"), vec![2]);
}

/// fuzz target `gguf_tokenizer`: a syntax error past column 65535 of a template line overflowed
/// minijinja's `u16` column (`attempt to add with overflow` in its lexer, where overflow checks
/// are on). Found on a one-line JSON document taken as a template.
#[test]
fn template_line_past_u16_columns_is_an_error() {
    let msgs = [Message::new("user", "Hi")];
    for n in [65_535, 70_000] {
        // a character the lexer refuses, past column 65535
        let tpl = format!("{}{{{{ ` }}}}", "a".repeat(n));
        match render_chat_template(&tpl, &msgs, true, "", "") {
            Err(Error::Template(e)) => assert!(e.contains("line 1"), "{e}"),
            other => panic!("{n}: {other:?}"),
        }
    }
    // a long line below the limit still renders, and so does a long template of short lines
    let tpl = format!("{}{{{{ messages[0]['content'] }}}}", "a".repeat(65_000));
    let out = render_chat_template(&tpl, &msgs, true, "", "").expect("renders");
    assert!(out.ends_with("aHi"));
    let tpl = format!("{}{{{{ bos_token }}}}", "a\n".repeat(40_000));
    assert!(render_chat_template(&tpl, &msgs, true, "<s>", "").is_ok());
}
