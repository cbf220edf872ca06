//! `Tokenizer::from_bytes` (no filesystem, for the browser) against `Tokenizer::from_dir`.

use std::path::{Path, PathBuf};

use graft_text::{Error, Message, Tokenizer};

fn real() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/real")
}

const TEXTS: &[&str] = &[
    "Hello, world! 12345",
    "  leading spaces and\nnew lines\t tabs",
    "<|im_start|>user\nHi<|im_end|>",
    "émoji 🤖 and ünïcode",
];

fn assert_same(a: &Tokenizer, b: &Tokenizer) {
    assert_eq!(a.vocab_size(), b.vocab_size());
    assert_eq!(a.bos_token, b.bos_token);
    assert_eq!(a.eos_token, b.eos_token);
    assert_eq!(a.bos_id, b.bos_id);
    assert_eq!(a.eos_id, b.eos_id);
    assert_eq!(a.add_bos, b.add_bos);
    assert_eq!(a.chat_template, b.chat_template);
    for t in TEXTS {
        for special in [false, true] {
            let ia = a.encode(t, special).expect("encode");
            assert_eq!(ia, b.encode(t, special).expect("encode"), "{t}");
            assert_eq!(
                a.decode(&ia, false).expect("decode"),
                b.decode(&ia, false).expect("decode")
            );
        }
    }
}

#[test]
fn from_bytes_equals_from_dir_without_a_config() {
    let by_dir = Tokenizer::from_dir(&real()).expect("from_dir");
    let json = std::fs::read(real().join("tokenizer.json")).expect("tokenizer.json");
    let by_bytes = Tokenizer::from_bytes(&json, None).expect("from_bytes");
    assert_same(&by_dir, &by_bytes);
}

#[test]
fn from_bytes_equals_from_dir_with_a_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    let json = std::fs::read(real().join("tokenizer.json")).expect("tokenizer.json");
    let cfg = serde_json::json!({
        "add_bos_token": true,
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "lstrip": false},
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    })
    .to_string();
    std::fs::write(tmp.path().join("tokenizer.json"), &json).expect("write");
    std::fs::write(tmp.path().join("tokenizer_config.json"), &cfg).expect("write");
    let by_dir = Tokenizer::from_dir(tmp.path()).expect("from_dir");
    let by_bytes = Tokenizer::from_bytes(&json, Some(cfg.as_bytes())).expect("from_bytes");
    assert_same(&by_dir, &by_bytes);
    assert!(by_bytes.add_bos && by_bytes.bos_id.is_some() && by_bytes.eos_id.is_some());
    let msgs = [Message::new("user", "Hi")];
    assert_eq!(
        by_dir.apply_chat_template(&msgs, false).expect("template"),
        by_bytes
            .apply_chat_template(&msgs, false)
            .expect("template")
    );

    // An invalid tokenizer_config.json is ignored by both, as a missing one is.
    std::fs::write(tmp.path().join("tokenizer_config.json"), "{nope").expect("write");
    let by_dir = Tokenizer::from_dir(tmp.path()).expect("from_dir");
    let by_bytes = Tokenizer::from_bytes(&json, Some(b"{nope")).expect("from_bytes");
    assert_same(&by_dir, &by_bytes);
    assert!(by_bytes.chat_template.is_none());
}

#[test]
fn bad_tokenizer_bytes_are_errors() {
    for bad in [
        &b""[..],
        b"{",
        b"[1, 2]",
        b"{\"model\": 3}",
        &[0xff, 0xfe, 0x00],
    ] {
        let r = Tokenizer::from_bytes(bad, None);
        assert!(matches!(r, Err(Error::Tokenizer(_))), "{bad:?}");
    }
    let json = std::fs::read(real().join("tokenizer.json")).expect("tokenizer.json");
    let r = Tokenizer::from_bytes(&json[..json.len() / 2], None);
    assert!(matches!(r, Err(Error::Tokenizer(_))));
    let missing = Tokenizer::from_dir(Path::new("/nonexistent/graft"));
    assert!(matches!(missing, Err(Error::Tokenizer(_))));
}
