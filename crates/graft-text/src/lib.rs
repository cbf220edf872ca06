//! graft-text: tokenizers and chat templates, built the way transformers builds them.
//!
//! - From `tokenizer.json` (+ `tokenizer_config.json` for the chat template and special tokens).
//! - From GGUF metadata (`tokenizer.ggml.*`): the vocabulary, merges (or scores) and special
//!   tokens become a `tokenizer.json` document for the `tokenizers` crate, as transformers'
//!   GGUF converter builds it: byte-level BPE with the split `tokenizer.ggml.pre` names, or
//!   sentencepiece BPE with byte fallback (Gemma's or Llama's); see the `gguf` module.
//! - Chat templates are Jinja, rendered by minijinja with transformers' settings
//!   (`trim_blocks`, `lstrip_blocks`, `raise_exception`, Python string methods).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::path::Path;

mod gguf;

use serde_json::{json, Map, Value};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("this model has no chat template; pass a plain prompt or token ids")]
    NoChatTemplate,
    #[error("{0}")]
    Unsupported(String),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A tokenizer with what generation needs around it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether encoding with special tokens prepends BOS.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// Largest `tokenizer.json` accepted (real ones are a few MB).
const MAX_TOKENIZER_JSON: u64 = 256 << 20;
/// Largest `tokenizer_config.json` read (real ones are a few KB, a few hundred with templates).
const MAX_TOKENIZER_CONFIG: u64 = 16 << 20;

/// Reads a file of at most `limit` bytes.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Err(std::io::Error::other(format!(
            "{size} bytes, more than the limit of {limit}"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    file.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

pub(crate) fn terr(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn get_u32(meta: &Map<String, Value>, key: &str) -> Option<u32> {
    meta.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

impl Tokenizer {
    /// From GGUF metadata: the `tokenizer.*` keys, and `general.architecture` (which picks
    /// Gemma's sentencepiece variant), as a JSON object. Built as transformers' GGUF converter
    /// builds it (see the `gguf` module).
    pub fn from_gguf_metadata(meta: &Map<String, Value>) -> Result<Self> {
        let built = gguf::document(meta)?;
        let inner =
            tokenizers::Tokenizer::from_bytes(built.doc.to_string().as_bytes()).map_err(terr)?;
        let bos_id = get_u32(meta, "tokenizer.ggml.bos_token_id");
        let eos_id = get_u32(meta, "tokenizer.ggml.eos_token_id");
        let tokens = meta.get("tokenizer.ggml.tokens").and_then(Value::as_array);
        let name = |id: Option<u32>| {
            id.and_then(|i| tokens?.get(i as usize))
                .and_then(Value::as_str)
                .map(String::from)
        };
        Ok(Tokenizer {
            bos_token: name(bos_id),
            eos_token: name(eos_id),
            inner,
            bos_id,
            eos_id,
            add_bos: built.add_bos,
            chat_template: meta
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(String::from),
        })
    }

    /// From a Hugging Face model folder: `tokenizer.json`, and `tokenizer_config.json` for the
    /// chat template and special tokens when present (a missing or unreadable
    /// `tokenizer_config.json` counts as absent). Reads the files and calls
    /// [`Tokenizer::from_bytes`].
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let json = read_bounded(&path, MAX_TOKENIZER_JSON)
            .map_err(|e| terr(format!("{}: {e}", path.display())))?;
        let cfg = read_bounded(&dir.join("tokenizer_config.json"), MAX_TOKENIZER_CONFIG).ok();
        Self::from_bytes(&json, cfg.as_deref())
    }

    /// From the bytes of `tokenizer.json` and, when there is one, `tokenizer_config.json`
    /// (chat template and special tokens). A `tokenizer_config.json` that is not valid JSON is
    /// ignored, as [`Tokenizer::from_dir`] ignores it; an invalid `tokenizer.json` is an error.
    pub fn from_bytes(tokenizer_json: &[u8], tokenizer_config_json: Option<&[u8]>) -> Result<Self> {
        if tokenizer_json.len() as u64 > MAX_TOKENIZER_JSON {
            return Err(terr(format!(
                "tokenizer.json is {} bytes, more than the limit of {MAX_TOKENIZER_JSON}",
                tokenizer_json.len()
            )));
        }
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(terr)?;
        let cfg: Value = tokenizer_config_json
            .filter(|b| b.len() as u64 <= MAX_TOKENIZER_CONFIG)
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        let token_str = |k: &str| -> Option<String> {
            match cfg.get(k)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
                _ => None,
            }
        };
        let bos_token = token_str("bos_token");
        let eos_token = token_str("eos_token");
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let eos_id = eos_token.as_deref().and_then(|t| inner.token_to_id(t));
        Ok(Tokenizer {
            inner,
            bos_id,
            eos_id,
            bos_token,
            eos_token,
            add_bos: cfg
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chat_template: cfg
                .get("chat_template")
                .and_then(Value::as_str)
                .map(String::from),
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, BOS is prepended when the tokenizer
    /// says so (as `tokenizer(text)` does); special tokens written in the text are always
    /// recognised.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(terr)?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens && self.add_bos {
            if let Some(b) = self.bos_id {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(terr)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `apply_chat_template(messages, add_generation_prompt=…, tokenize=False)`.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or(Error::NoChatTemplate)?;
        render_chat_template(
            tpl,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }
}

/// The longest line of a chat template, in characters. minijinja counts columns in a `u16`:
/// past this its error positions are wrong, and a syntax error there overflows (a panic where
/// overflow checks are on, e.g. in debug builds). Real templates' lines are a few KB at most.
const MAX_TEMPLATE_LINE: usize = u16::MAX as usize - 1;

/// Renders a Jinja chat template with transformers' environment.
pub fn render_chat_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    if let Some((i, _)) = template
        .split('\n')
        .enumerate()
        .find(|(_, l)| l.len() > MAX_TEMPLATE_LINE && l.chars().count() > MAX_TEMPLATE_LINE)
    {
        return Err(Error::Template(format!(
            "line {} of the template is longer than {MAX_TEMPLATE_LINE} characters",
            i + 1
        )));
    }
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| Error::Template(e.to_string()))?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let ctx = minijinja::context! {
        messages => minijinja::Value::from_serialize(&msgs),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    let t = env
        .get_template("chat")
        .map_err(|e| Error::Template(e.to_string()))?;
    t.render(ctx).map_err(|e| Error::Template(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_like_transformers() {
        let s = render_chat_template(CHATML, &[Message::new("user", "Hi")], true, "", "").unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let e = render_chat_template(
            "{{ raise_exception('no system role') }}",
            &[],
            false,
            "",
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("no system role"));
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused() {
        let mut m = Map::new();
        m.insert("tokenizer.ggml.model".into(), json!("gpt2"));
        m.insert("tokenizer.ggml.tokens".into(), json!(["a"]));
        m.insert("tokenizer.ggml.merges".into(), json!([]));
        m.insert("tokenizer.ggml.pre".into(), json!("klingon"));
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&m),
            Err(Error::Unsupported(_))
        ));
        m.insert("tokenizer.ggml.model".into(), json!("t5"));
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&m),
            Err(Error::Unsupported(_))
        ));
        // Sentencepiece needs merges or scores to rebuild them from.
        m.insert("tokenizer.ggml.model".into(), json!("llama"));
        m.remove("tokenizer.ggml.merges");
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&m),
            Err(Error::Tokenizer(_))
        ));
    }
}
