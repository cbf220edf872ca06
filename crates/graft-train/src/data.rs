//! Training data from JSON Lines, in the two formats TRL's `SFTTrainer` reads:
//!
//! - conversational: `{"messages": [{"role": "user", "content": "…"}, {"role": "assistant", …}]}`,
//!   rendered with the tokenizer's chat template, the loss on the assistant turns only (TRL's
//!   `assistant_only_loss=True`), end-of-turn marker included;
//! - prompt-completion: `{"prompt": "…", "completion": "…"}`, the loss on the completion only
//!   (TRL's `completion_only_loss`), EOS appended as TRL appends it.
//!
//! Labels follow the Hugging Face convention: `labels[i] = ids[i]` where the loss applies and
//! [`IGNORE_INDEX`] elsewhere; the model shifts them internally.
//!
//! The input is untrusted: files and lines have size limits, and nothing here panics on any input.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::path::Path;

use graft_text::{Message, Tokenizer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The label of a token that carries no loss (PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

/// Largest data file read (2 GiB); a larger one is refused before it is read.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Largest line accepted (64 MiB); a longer line is a bad line.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// One tokenized training example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Aligned with `ids`: the token id where the loss applies, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
    /// The 1-based line of the data file it came from.
    pub line: usize,
}

impl Example {
    /// How many tokens carry a loss.
    pub fn loss_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// How a data file is turned into examples.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Examples longer than this keep their first `max_length` tokens (TRL's `max_length`).
    /// Must be at least 1.
    pub max_length: usize,
    /// Record bad lines in [`Dataset::skipped`] and go on, instead of failing on the first.
    pub skip_bad_lines: bool,
    /// Append the tokenizer's EOS (with loss) to each completion of a prompt-completion line,
    /// as TRL does, so the model learns to stop.
    pub add_eos_to_completion: bool,
}

impl Default for DataOptions {
    /// TRL's `SFTConfig` defaults: `max_length=1024`, EOS appended.
    fn default() -> Self {
        DataOptions {
            max_length: 1024,
            skip_bad_lines: false,
            add_eos_to_completion: true,
        }
    }
}

/// A tokenized data file.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub examples: Vec<Example>,
    /// Lines that gave no example, with the reason, in line order: bad lines (only with
    /// `skip_bad_lines`) and examples whose every token to learn lay past `max_length`.
    pub skipped: Vec<(usize, String)>,
    /// How many of `examples` were longer than `max_length` and were cut to it.
    pub truncated: usize,
    /// How many entries of `skipped` are examples dropped because no token to learn survived
    /// truncation to `max_length` (the others are bad lines).
    pub dropped_too_long: usize,
    /// The `max_length` the examples were cut to.
    pub max_length: usize,
    /// `"messages"`, `"prompt-completion"` or `"mixed"`: the formats of the lines read.
    pub format: &'static str,
}

impl Dataset {
    /// Tokens that carry a loss, over all examples.
    pub fn loss_tokens(&self) -> usize {
        self.examples.iter().map(Example::loss_tokens).sum()
    }

    /// Tokens over all examples.
    pub fn tokens(&self) -> usize {
        self.examples.iter().map(|e| e.ids.len()).sum()
    }

    /// Lines that were bad (skipped with `skip_bad_lines`), with their reasons.
    pub fn bad_lines(&self) -> Vec<&(usize, String)> {
        self.skipped
            .iter()
            .filter(|(_, r)| !r.starts_with(TOO_LONG_PREFIX))
            .collect()
    }

    /// What the user should know about the data, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.truncated > 0 {
            w.push(format!(
                "{} of {} examples were longer than {} tokens and were truncated",
                self.truncated,
                self.examples.len(),
                self.max_length
            ));
        }
        let bad = self.bad_lines();
        if !bad.is_empty() {
            w.push(format!(
                "skipped {} bad line{}: {}",
                bad.len(),
                plural(bad.len()),
                list_lines(bad.iter().copied(), 5)
            ));
        }
        let dropped: Vec<usize> = self
            .skipped
            .iter()
            .filter(|(_, r)| r.starts_with(TOO_LONG_PREFIX))
            .map(|(l, _)| *l)
            .collect();
        if !dropped.is_empty() {
            let shown: Vec<String> = dropped.iter().take(10).map(|l| l.to_string()).collect();
            let more = dropped.len().saturating_sub(shown.len());
            w.push(format!(
                "dropped {} example{} with no token to learn within the first {} tokens (line{} {}{})",
                dropped.len(),
                plural(dropped.len()),
                self.max_length,
                plural(dropped.len()),
                shown.join(", "),
                if more > 0 {
                    format!(", and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        w
    }
}

/// The start of the reason of an example dropped by truncation.
const TOO_LONG_PREFIX: &str = "too long: ";

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `5 (reason), 9 (reason), and 3 more`.
fn list_lines<'a>(lines: impl Iterator<Item = &'a (usize, String)>, max: usize) -> String {
    let all: Vec<&(usize, String)> = lines.collect();
    let mut parts: Vec<String> = all
        .iter()
        .take(max)
        .map(|(l, r)| format!("{l} ({r})"))
        .collect();
    if all.len() > max {
        parts.push(format!("and {} more", all.len() - max));
    }
    parts.join(", ")
}

/// Reads and tokenizes a JSONL data file (see [`parse_jsonl`]). A file over [`MAX_FILE_BYTES`]
/// is refused before it is read, with an [`Error::Io`] of kind
/// [`std::io::ErrorKind::FileTooLarge`].
pub fn load_jsonl(path: &Path, tok: &Tokenizer, opts: &DataOptions) -> Result<Dataset> {
    let label = path.display().to_string();
    let bytes = read_bounded(path, MAX_FILE_BYTES).map_err(|source| Error::Io {
        path: label.clone(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| label.clone());
    parse_with_limits(&bytes, &label, &name, tok, opts, MAX_LINE_BYTES)
}

/// Tokenizes JSONL bytes; `label` names them in errors (the file's path). See the module
/// documentation for the formats.
pub fn parse_jsonl(
    bytes: &[u8],
    label: &str,
    tok: &Tokenizer,
    opts: &DataOptions,
) -> Result<Dataset> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::Io {
            path: label.to_string(),
            source: too_large(bytes.len() as u64, MAX_FILE_BYTES),
        });
    }
    parse_with_limits(bytes, label, label, tok, opts, MAX_LINE_BYTES)
}

fn too_large(size: u64, limit: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::FileTooLarge,
        format!(
            "{size} bytes, more than the limit of {limit} bytes ({} GiB) for a data file",
            limit >> 30
        ),
    )
}

/// Reads a file of at most `limit` bytes, refusing a larger one before reading it.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Err(too_large(size, limit));
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // One byte more than the limit tells a file that grew while being read.
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_large(buf.len() as u64, limit));
    }
    Ok(buf)
}

/// Which format a line is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Messages,
    PromptCompletion,
}

/// Why a line gave no example.
enum LineError {
    /// The line is bad: reported, or skipped with `skip_bad_lines`.
    Bad(String),
    /// Not the line's fault (no chat template, tokenizer failure): always an error.
    Fatal(Error),
}

impl From<graft_text::Error> for LineError {
    fn from(e: graft_text::Error) -> Self {
        LineError::Fatal(Error::Text(e))
    }
}

fn bad<T>(msg: impl Into<String>) -> std::result::Result<T, LineError> {
    Err(LineError::Bad(msg.into()))
}

fn parse_with_limits(
    bytes: &[u8],
    label: &str,
    name: &str,
    tok: &Tokenizer,
    opts: &DataOptions,
    max_line: usize,
) -> Result<Dataset> {
    if opts.max_length == 0 {
        return Err(Error::Config("max_length must be at least 1 token".into()));
    }
    let mut ds = Dataset {
        examples: Vec::new(),
        skipped: Vec::new(),
        truncated: 0,
        dropped_too_long: 0,
        max_length: opts.max_length,
        format: "messages",
    };
    let (mut n_messages, mut n_pc, mut non_blank) = (0usize, 0usize, 0usize);
    // A UTF-8 byte order mark, as some editors write, is not part of the first line.
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.trim_ascii().is_empty() {
            continue;
        }
        non_blank += 1;
        match parse_line(raw, tok, opts, max_line) {
            Ok((format, ids, labels)) => {
                match format {
                    Format::Messages => n_messages += 1,
                    Format::PromptCompletion => n_pc += 1,
                }
                push_example(&mut ds, opts.max_length, line_no, ids, labels);
            }
            Err(LineError::Fatal(e)) => return Err(e),
            Err(LineError::Bad(msg)) => {
                if opts.skip_bad_lines {
                    ds.skipped.push((line_no, msg));
                } else {
                    return Err(Error::BadLine {
                        path: label.to_string(),
                        line: line_no,
                        msg,
                    });
                }
            }
        }
    }
    ds.format = match (n_messages > 0, n_pc > 0) {
        (true, true) => "mixed",
        (false, true) => "prompt-completion",
        _ => "messages",
    };
    if ds.examples.is_empty() {
        return Err(Error::EmptyData(empty_message(&ds, name, non_blank)));
    }
    Ok(ds)
}

/// Cuts an example to `max_length` and keeps it, or drops it when no token to learn survives.
fn push_example(
    ds: &mut Dataset,
    max_length: usize,
    line: usize,
    mut ids: Vec<u32>,
    mut labels: Vec<i64>,
) {
    let len = ids.len();
    let was_cut = len > max_length;
    if was_cut {
        ids.truncate(max_length);
        labels.truncate(max_length);
    }
    let ex = Example { ids, labels, line };
    if ex.loss_tokens() == 0 {
        ds.dropped_too_long += 1;
        ds.skipped.push((
            line,
            format!(
                "{TOO_LONG_PREFIX}the example is {len} tokens and every token to learn lies past \
                 max_length {max_length}"
            ),
        ));
        return;
    }
    if was_cut {
        ds.truncated += 1;
    }
    ds.examples.push(ex);
}

/// Why there is no example, saying what the file held.
fn empty_message(ds: &Dataset, name: &str, non_blank: usize) -> String {
    if non_blank == 0 {
        return format!("{name} holds no examples (0 non-blank lines)");
    }
    let bad = ds.bad_lines();
    let lines = format!("{non_blank} non-blank line{}", plural(non_blank));
    if ds.dropped_too_long == 0 {
        format!(
            "every line of {name} was skipped as bad ({lines}): {}",
            list_lines(bad.iter().copied(), 3)
        )
    } else if bad.is_empty() {
        format!(
            "{name} holds no usable example ({lines}): in every one, all the tokens to learn lie \
             past max_length {}; raise max_length",
            ds.max_length
        )
    } else {
        format!(
            "{name} holds no usable example ({lines}): {} had all their tokens to learn past \
             max_length {}, and {} {} bad: {}",
            ds.dropped_too_long,
            ds.max_length,
            bad.len(),
            if bad.len() == 1 { "was" } else { "were" },
            list_lines(bad.iter().copied(), 3)
        )
    }
}

/// The name of a JSON value's type, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `invalid JSON: expected `,` or `}` at column 31` (the line is always 1 within a line).
fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = full.strip_suffix(&suffix).unwrap_or(&full);
    if e.column() > 0 {
        format!("invalid JSON: {msg} at column {}", e.column())
    } else {
        format!("invalid JSON: {msg}")
    }
}

type Tokens = (Format, Vec<u32>, Vec<i64>);

fn parse_line(
    raw: &[u8],
    tok: &Tokenizer,
    opts: &DataOptions,
    max_line: usize,
) -> std::result::Result<Tokens, LineError> {
    if raw.len() > max_line {
        return bad(format!(
            "the line is {} bytes, more than the limit of {max_line} bytes",
            raw.len()
        ));
    }
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => {
            return bad(format!(
                "not valid UTF-8 (at byte {} of the line)",
                e.valid_up_to() + 1
            ))
        }
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return bad(json_error(&e)),
    };
    let Value::Object(obj) = value else {
        return bad(format!(
            "expected a JSON object with \"messages\", or \"prompt\" and \"completion\"; found {}",
            kind(&value)
        ));
    };
    let has_messages = obj.contains_key("messages");
    let has_pc = obj.contains_key("prompt") || obj.contains_key("completion");
    match (has_messages, has_pc) {
        (true, true) => bad(
            "has both \"messages\" and \"prompt\"/\"completion\"; a line holds one format or the \
             other",
        ),
        (true, false) => {
            let (ids, labels) = messages_line(&obj, tok)?;
            Ok((Format::Messages, ids, labels))
        }
        (false, true) => {
            let (ids, labels) = prompt_completion_line(&obj, tok, opts)?;
            Ok((Format::PromptCompletion, ids, labels))
        }
        (false, false) => {
            let mut keys: Vec<String> = obj.keys().take(6).map(|k| format!("{k:?}")).collect();
            if obj.len() > keys.len() {
                keys.push("…".into());
            }
            bad(format!(
                "has neither \"messages\" nor \"prompt\" and \"completion\" (its keys: {})",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ))
        }
    }
}

/// The string field `key`, or why it is not one.
fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> std::result::Result<&'a str, LineError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        None => bad(format!("has no \"{key}\" string")),
        Some(Value::Array(_)) => bad(format!(
            "\"{key}\" is an array, not a string (conversational prompt-completion is not \
             supported; write the conversation as \"messages\")"
        )),
        Some(v) => bad(format!("\"{key}\" is {}, not a string", kind(v))),
    }
}

fn prompt_completion_line(
    obj: &Map<String, Value>,
    tok: &Tokenizer,
    opts: &DataOptions,
) -> std::result::Result<(Vec<u32>, Vec<i64>), LineError> {
    let prompt = string_field(obj, "prompt")?;
    let completion = string_field(obj, "completion")?;
    if completion.is_empty() {
        return bad("\"completion\" is empty; there is nothing to learn");
    }
    let mut ids = tok.encode(prompt, true)?;
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    let mut push_loss = |id: u32| {
        ids.push(id);
        labels.push(i64::from(id));
    };
    let completion_ids = tok.encode(completion, false)?;
    if completion_ids.is_empty() {
        return bad("\"completion\" encodes to no token; there is nothing to learn");
    }
    completion_ids.into_iter().for_each(&mut push_loss);
    if opts.add_eos_to_completion {
        if let Some(eos) = tok.eos_id {
            push_loss(eos);
        }
    }
    Ok((ids, labels))
}

/// Reads `"messages"` into chat messages.
fn read_messages(obj: &Map<String, Value>) -> std::result::Result<Vec<Message>, LineError> {
    let list = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        Some(v) => return bad(format!("\"messages\" is {}, not an array", kind(v))),
        None => return bad("has no \"messages\" array"),
    };
    if list.is_empty() {
        return bad("\"messages\" is empty");
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return bad(format!(
                "\"messages\"[{i}] is {}, not an object with \"role\" and \"content\"",
                kind(m)
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            _ => return bad(format!("\"messages\"[{i}] has no \"role\" string")),
        };
        if !matches!(role, "system" | "user" | "assistant") {
            return bad(format!(
                "\"messages\"[{i}] has role {role:?}; the roles supported are system, user and \
                 assistant"
            ));
        }
        let content = match m.get("content") {
            Some(Value::String(c)) => c.as_str(),
            _ => return bad(format!("\"messages\"[{i}] has no \"content\" string")),
        };
        out.push(Message::new(role, content));
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return bad("\"messages\" has no assistant message; there is nothing to learn");
    }
    Ok(out)
}

/// Renders with the chat template; a template error (`raise_exception`, say) is the line's
/// fault, a missing template is not.
fn render(
    tok: &Tokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> std::result::Result<String, LineError> {
    match tok.apply_chat_template(messages, add_generation_prompt) {
        Ok(s) => Ok(s),
        Err(e @ graft_text::Error::Template(_)) => bad(e.to_string()),
        Err(e) => Err(LineError::Fatal(Error::Text(e))),
    }
}

/// The text `next` adds after `prev`, or the prefix-stability error.
fn added<'a>(
    prev: &str,
    next: &'a str,
    what: &str,
    prev_what: &str,
) -> std::result::Result<&'a str, LineError> {
    match next.strip_prefix(prev) {
        Some(rest) => Ok(rest),
        None => bad(format!(
            "the chat template is not prefix-stable: the rendering of {what} does not start with \
             the rendering of {prev_what}, so the assistant's tokens cannot be told apart"
        )),
    }
}

fn messages_line(
    obj: &Map<String, Value>,
    tok: &Tokenizer,
) -> std::result::Result<(Vec<u32>, Vec<i64>), LineError> {
    let messages = read_messages(obj)?;
    // (text, carries the loss), in order.
    let mut pieces: Vec<(String, bool)> = Vec::new();
    let mut prev = String::new();
    let mut prev_what = "nothing".to_string();
    for (k, m) in messages.iter().enumerate() {
        let head = messages.get(..k).unwrap_or_default();
        let upto = messages.get(..=k).unwrap_or_default();
        let full_what = format!("messages[..={k}]");
        if m.role == "assistant" {
            let prompt = render(tok, head, true)?;
            let prompt_what = format!("messages[..{k}] with the generation prompt");
            let context = added(&prev, &prompt, &prompt_what, &prev_what)?.to_string();
            let full = render(tok, upto, false)?;
            let answer = added(&prompt, &full, &full_what, &prompt_what)?.to_string();
            pieces.push((context, false));
            pieces.push((answer, true));
            prev = full;
        } else {
            let full = render(tok, upto, false)?;
            let context = added(&prev, &full, &full_what, &prev_what)?.to_string();
            pieces.push((context, false));
            prev = full;
        }
        prev_what = full_what;
    }
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    for (text, loss) in &pieces {
        if text.is_empty() {
            continue;
        }
        for id in tok.encode(text, false)? {
            ids.push(id);
            labels.push(if *loss { i64::from(id) } else { IGNORE_INDEX });
        }
    }
    if !labels.iter().any(|&l| l != IGNORE_INDEX) {
        return bad("the assistant messages render to no token; there is nothing to learn");
    }
    Ok((ids, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    const SPECIALS: [&str; 5] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];
    const CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n.,!?'";

    /// The id of one token of the test vocabulary, computed independently of the tokenizer.
    fn char_id(c: char) -> u32 {
        let pos = CHARS.chars().position(|x| x == c).expect("char in vocab");
        (SPECIALS.len() + pos) as u32
    }
    fn special_id(s: &str) -> u32 {
        SPECIALS.iter().position(|&x| x == s).expect("special") as u32
    }
    /// Ids of text made of vocabulary characters and `<|im_start|>` / `<|im_end|>`.
    fn ids_of(mut s: &str) -> Vec<u32> {
        let mut out = Vec::new();
        'outer: while !s.is_empty() {
            for sp in SPECIALS {
                if let Some(rest) = s.strip_prefix(sp) {
                    out.push(special_id(sp));
                    s = rest;
                    continue 'outer;
                }
            }
            let c = s.chars().next().expect("char");
            out.push(char_id(c));
            s = &s[c.len_utf8()..];
        }
        out
    }

    /// A character-level tokenizer (BPE without merges) with ChatML specials.
    fn tokenizer_with(template: Option<&str>) -> Tokenizer {
        let mut vocab = Map::new();
        for (i, s) in SPECIALS.iter().enumerate() {
            vocab.insert((*s).to_string(), json!(i));
        }
        for c in CHARS.chars() {
            vocab.insert(c.to_string(), json!(char_id(c)));
        }
        let added: Vec<Value> = SPECIALS
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let doc = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []},
        });
        let mut cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true});
        if let Some(t) = template {
            cfg["chat_template"] = json!(t);
        }
        Tokenizer::from_bytes(doc.to_string().as_bytes(), Some(cfg.to_string().as_bytes()))
            .expect("tokenizer")
    }

    fn tok() -> Tokenizer {
        tokenizer_with(Some(CHATML))
    }

    fn opts(max_length: usize, skip: bool) -> DataOptions {
        DataOptions {
            max_length,
            skip_bad_lines: skip,
            add_eos_to_completion: true,
        }
    }

    /// Expected (ids, labels) from (text, loss) segments.
    fn expect(segments: &[(&str, bool)]) -> (Vec<u32>, Vec<i64>) {
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        for (text, loss) in segments {
            for id in ids_of(text) {
                ids.push(id);
                labels.push(if *loss { id as i64 } else { IGNORE_INDEX });
            }
        }
        (ids, labels)
    }

    fn parse(text: &str, o: &DataOptions) -> Result<Dataset> {
        parse_jsonl(text.as_bytes(), "data.jsonl", &tok(), o)
    }

    fn bad_line(r: Result<Dataset>) -> (usize, String) {
        match r {
            Err(Error::BadLine { path, line, msg }) => {
                assert_eq!(path, "data.jsonl");
                (line, msg)
            }
            other => panic!("expected a bad line, got {other:?}"),
        }
    }

    #[test]
    fn the_tokenizer_is_character_level() {
        let t = tok();
        assert_eq!(
            t.encode("<|im_start|>ab\n<|im_end|>", false).unwrap(),
            vec![3, char_id('a'), char_id('b'), char_id('\n'), 4]
        );
        assert_eq!(t.encode("a", true).unwrap(), vec![1, char_id('a')]);
        assert_eq!(t.eos_id, Some(2));
    }

    #[test]
    fn two_turn_chat_learns_only_the_assistant_turns() {
        let line = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "Because."},
        ]})
        .to_string();
        let ds = parse(&line, &opts(1000, false)).unwrap();
        assert_eq!(ds.format, "messages");
        assert_eq!(ds.examples.len(), 1);
        let ex = &ds.examples[0];
        assert_eq!(ex.line, 1);
        let (ids, labels) = expect(&[
            ("<|im_start|>system\nBe brief.<|im_end|>\n", false),
            ("<|im_start|>user\nHi<|im_end|>\n", false),
            ("<|im_start|>assistant\n", false),
            ("Hello!<|im_end|>\n", true),
            ("<|im_start|>user\nWhy?<|im_end|>\n", false),
            ("<|im_start|>assistant\n", false),
            ("Because.<|im_end|>\n", true),
        ]);
        assert_eq!(ex.ids, ids);
        assert_eq!(ex.labels, labels);
        // "Hello!" + <|im_end|> + "\n", "Because." + <|im_end|> + "\n".
        assert_eq!(ex.loss_tokens(), 8 + 10);
        assert_eq!(ds.loss_tokens(), 18);
        assert_eq!(ds.tokens(), ids.len());
        assert!(ds.warnings().is_empty());
        assert!(ds.skipped.is_empty());
    }

    #[test]
    fn prompt_completion_learns_the_completion_and_eos() {
        let text = "{\"prompt\": \"Say hi\", \"completion\": \" hi\"}\n";
        let ds = parse(text, &opts(100, false)).unwrap();
        assert_eq!(ds.format, "prompt-completion");
        let ex = &ds.examples[0];
        let mut ids = vec![1];
        ids.extend(ids_of("Say hi hi"));
        ids.push(2);
        assert_eq!(ex.ids, ids);
        let mut labels = vec![IGNORE_INDEX; 7];
        labels.extend(ids_of(" hi").iter().map(|&i| i as i64));
        labels.push(2);
        assert_eq!(ex.labels, labels);

        let no_eos = DataOptions {
            add_eos_to_completion: false,
            ..opts(100, false)
        };
        let ds = parse(text, &no_eos).unwrap();
        assert_eq!(ds.examples[0].ids, ids[..ids.len() - 1]);
        assert_eq!(ds.examples[0].labels, labels[..labels.len() - 1]);
        assert_eq!(ds.loss_tokens(), 3);
    }

    #[test]
    fn mixed_formats_crlf_bom_and_blank_lines() {
        let text = "\u{FEFF}{\"prompt\": \"a\", \"completion\": \"b\"}\r\n\r\n   \n\
                    {\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\r\n";
        let ds = parse(text, &opts(100, false)).unwrap();
        assert_eq!(ds.format, "mixed");
        assert_eq!(
            ds.examples.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![1, 4]
        );
        assert_eq!(ds.examples[0].ids, vec![1, char_id('a'), char_id('b'), 2]);
        assert_eq!(ds.loss_tokens(), 2 + 3);
    }

    #[test]
    fn truncation_keeps_the_first_tokens_and_drops_examples_with_nothing_left() {
        let text = [
            // 1 + 2 prompt, 3 completion + EOS: 7 tokens.
            r#"{"prompt": "ab", "completion": "cde"}"#,
            // 1 + 5 prompt: nothing to learn within 5 tokens.
            r#"{"prompt": "abcde", "completion": "f"}"#,
            // 1 + 1 prompt, 1 + EOS: 4 tokens, not cut.
            r#"{"prompt": "a", "completion": "b"}"#,
        ]
        .join("\n");
        let ds = parse(&text, &opts(5, false)).unwrap();
        assert_eq!(ds.truncated, 1);
        assert_eq!(ds.dropped_too_long, 1);
        assert_eq!(ds.examples.len(), 2);
        let ex = &ds.examples[0];
        assert_eq!(
            ex.ids,
            vec![1, char_id('a'), char_id('b'), char_id('c'), char_id('d')]
        );
        assert_eq!(
            ex.labels,
            vec![-100, -100, -100, char_id('c') as i64, char_id('d') as i64]
        );
        assert_eq!(ds.examples[1].line, 3);
        assert_eq!(
            ds.skipped,
            vec![(
                2,
                "too long: the example is 8 tokens and every token to learn lies past max_length 5"
                    .to_string()
            )]
        );
        assert_eq!(
            ds.warnings(),
            vec![
                "1 of 2 examples were longer than 5 tokens and were truncated".to_string(),
                "dropped 1 example with no token to learn within the first 5 tokens (line 2)"
                    .to_string(),
            ]
        );
        assert!(ds.bad_lines().is_empty());
        // Only the dropped one: no usable example at all.
        let r = parse(r#"{"prompt": "abcde", "completion": "f"}"#, &opts(5, false));
        match r {
            Err(Error::EmptyData(m)) => assert_eq!(
                m,
                "data.jsonl holds no usable example (1 non-blank line): in every one, all the \
                 tokens to learn lie past max_length 5; raise max_length"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&text, &opts(0, false)),
            Err(Error::Config(_))
        ));
    }

    const GOOD: &str = r#"{"prompt": "a", "completion": "b"}"#;

    #[test]
    fn bad_lines_are_errors_with_their_line_numbers() {
        let text = format!("{GOOD}\n\n{GOOD}\n{{\"prompt\": \"a\" \"completion\": \"b\"}}\n{GOOD}");
        let (line, msg) = bad_line(parse(&text, &opts(100, false)));
        assert_eq!(line, 4);
        assert_eq!(msg, "invalid JSON: expected `,` or `}` at column 16");
        let e = parse(&text, &opts(100, false)).unwrap_err().to_string();
        assert_eq!(
            e,
            "data.jsonl:4: invalid JSON: expected `,` or `}` at column 16 (fix the line, or skip bad lines)"
        );
    }

    #[test]
    fn each_kind_of_bad_line_has_a_precise_message() {
        let cases: &[(&str, &str)] = &[
            ("[1, 2]", "expected a JSON object with \"messages\", or \"prompt\" and \"completion\"; found an array"),
            ("{\"text\": \"hi\"}", "has neither \"messages\" nor \"prompt\" and \"completion\" (its keys: \"text\")"),
            ("{}", "has neither \"messages\" nor \"prompt\" and \"completion\" (its keys: none)"),
            (r#"{"prompt": "a"}"#, "has no \"completion\" string"),
            (r#"{"completion": "a"}"#, "has no \"prompt\" string"),
            (r#"{"prompt": 3, "completion": "a"}"#, "\"prompt\" is a number, not a string"),
            (r#"{"prompt": "a", "completion": ""}"#, "\"completion\" is empty; there is nothing to learn"),
            (r#"{"prompt": [], "completion": []}"#, "\"prompt\" is an array, not a string (conversational prompt-completion is not supported; write the conversation as \"messages\")"),
            (r#"{"messages": [], "prompt": "a"}"#, "has both \"messages\" and \"prompt\"/\"completion\"; a line holds one format or the other"),
            (r#"{"messages": {}}"#, "\"messages\" is an object, not an array"),
            (r#"{"messages": []}"#, "\"messages\" is empty"),
            (r#"{"messages": ["hi"]}"#, "\"messages\"[0] is a string, not an object with \"role\" and \"content\""),
            (r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}"#, "\"messages\"[1] has no \"content\" string"),
            (r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]}"#, "\"messages\"[1] has no \"content\" string"),
            (r#"{"messages": [{"content": "a"}]}"#, "\"messages\"[0] has no \"role\" string"),
            (r#"{"messages": [{"role": "tool", "content": "a"}]}"#, "\"messages\"[0] has role \"tool\"; the roles supported are system, user and assistant"),
            (r#"{"messages": [{"role": "user", "content": "a"}]}"#, "\"messages\" has no assistant message; there is nothing to learn"),
            ("{\"prompt\": \"a\", \"completion\": \"b\"} x", "invalid JSON: trailing characters at column 36"),
            ("{\"prompt\": \"a\", \"compl", "invalid JSON: EOF while parsing a string at column 22"),
        ];
        for (i, (line, msg)) in cases.iter().enumerate() {
            let text = format!("{GOOD}\n{line}\n");
            assert_eq!(
                bad_line(parse(&text, &opts(100, false))),
                (2, msg.to_string()),
                "case {i}: {line}"
            );
        }
        // Invalid UTF-8.
        let mut bytes = b"{\"prompt\": \"a\xff\", \"completion\": \"b\"}".to_vec();
        bytes.extend_from_slice(b"\n");
        let r = parse_jsonl(&bytes, "data.jsonl", &tok(), &opts(100, false));
        assert_eq!(
            bad_line(r),
            (1, "not valid UTF-8 (at byte 14 of the line)".to_string())
        );
        // A line over the limit (a small limit stands for 64 MiB).
        let r = parse_with_limits(
            GOOD.as_bytes(),
            "data.jsonl",
            "data.jsonl",
            &tok(),
            &opts(100, false),
            10,
        );
        assert_eq!(
            bad_line(r),
            (
                1,
                format!(
                    "the line is {} bytes, more than the limit of 10 bytes",
                    GOOD.len()
                )
            )
        );
    }

    #[test]
    fn skip_mode_records_bad_lines_and_goes_on() {
        let text = format!(
            "{GOOD}\nnope\n{GOOD}\n{{\"messages\": [{{\"role\": \"bot\", \"content\": \"a\"}}]}}\n{GOOD}\n"
        );
        let ds = parse(&text, &opts(100, true)).unwrap();
        assert_eq!(
            ds.examples.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert_eq!(
            ds.skipped,
            vec![
                (2, "invalid JSON: expected ident at column 2".to_string()),
                (
                    4,
                    "\"messages\"[0] has role \"bot\"; the roles supported are system, user and \
                     assistant"
                        .to_string()
                ),
            ]
        );
        assert_eq!(ds.truncated, 0);
        assert_eq!(ds.dropped_too_long, 0);
        assert_eq!(
            ds.warnings(),
            vec![
                "skipped 2 bad lines: 2 (invalid JSON: expected ident at column 2), 4 \
                 (\"messages\"[0] has role \"bot\"; the roles supported are system, user and \
                 assistant)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn no_example_at_all_is_an_empty_data_error() {
        for text in ["", "\n", "  \n\r\n\t\n"] {
            match parse(text, &opts(100, true)) {
                Err(Error::EmptyData(m)) => {
                    assert_eq!(m, "data.jsonl holds no examples (0 non-blank lines)")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        match parse("x\n\n[]\n", &opts(100, true)) {
            Err(Error::EmptyData(m)) => assert_eq!(
                m,
                "every line of data.jsonl was skipped as bad (2 non-blank lines): 1 (invalid \
                 JSON: expected value at column 1), 3 (expected a JSON object with \"messages\", \
                 or \"prompt\" and \"completion\"; found an array)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_template_that_is_not_prefix_stable_is_refused() {
        // Closes the conversation only when no generation prompt follows.
        let tpl = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% else %}.{% endif %}";
        let t = tokenizer_with(Some(tpl));
        let line = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
        let r = parse_jsonl(line.as_bytes(), "data.jsonl", &t, &opts(100, false));
        assert_eq!(
            bad_line(r),
            (
                1,
                "the chat template is not prefix-stable: the rendering of messages[..1] with the \
                 generation prompt does not start with the rendering of messages[..=0], so the \
                 assistant's tokens cannot be told apart"
                    .to_string()
            )
        );
        // A template error is the line's (skippable) fault.
        let t = tokenizer_with(Some(
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}",
        ));
        let text = format!(
            "{{\"messages\": [{{\"role\": \"system\", \"content\": \"a\"}}, {{\"role\": \"assistant\", \"content\": \"b\"}}]}}\n{line}"
        );
        let ds = parse_jsonl(text.as_bytes(), "data.jsonl", &t, &opts(100, true)).unwrap();
        assert_eq!(ds.examples.len(), 1);
        assert_eq!(ds.skipped.len(), 1);
        assert_eq!(ds.skipped[0].0, 1);
        assert!(
            ds.skipped[0].1.contains("no system messages"),
            "{}",
            ds.skipped[0].1
        );
        assert_eq!(ds.examples[0].ids, ids_of("ab"));
        assert_eq!(ds.examples[0].labels, vec![-100, char_id('b') as i64]);
    }

    #[test]
    fn messages_without_a_chat_template_fail_even_when_skipping() {
        let t = tokenizer_with(None);
        let line = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
        let r = parse_jsonl(line.as_bytes(), "data.jsonl", &t, &opts(100, true));
        assert!(
            matches!(r, Err(Error::Text(graft_text::Error::NoChatTemplate))),
            "{r:?}"
        );
    }

    #[test]
    fn load_jsonl_reads_files_and_refuses_huge_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, format!("{GOOD}\n{GOOD}\n")).unwrap();
        let ds = load_jsonl(&path, &tok(), &opts(100, false)).unwrap();
        assert_eq!(ds.examples.len(), 2);

        std::fs::write(&path, "\n\n").unwrap();
        match load_jsonl(&path, &tok(), &opts(100, false)) {
            Err(Error::EmptyData(m)) => {
                assert_eq!(m, "data.jsonl holds no examples (0 non-blank lines)")
            }
            other => panic!("{other:?}"),
        }

        std::fs::write(&path, "{}\n").unwrap();
        match load_jsonl(&path, &tok(), &opts(100, false)) {
            Err(Error::BadLine { path: p, line, .. }) => {
                assert_eq!((p.as_str(), line), (path.display().to_string().as_str(), 1))
            }
            other => panic!("{other:?}"),
        }

        // A sparse file just over the limit is refused without being read.
        let big = dir.path().join("big.jsonl");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        match load_jsonl(&big, &tok(), &opts(100, false)) {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge)
            }
            other => panic!("{other:?}"),
        }
        match load_jsonl(&dir.path().join("missing.jsonl"), &tok(), &opts(100, false)) {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_lines_do_not_panic() {
        let deep = "[".repeat(100_000);
        let cases: Vec<Vec<u8>> = vec![
            deep.into_bytes(),
            b"\"\\ud800\"".to_vec(),
            vec![0u8; 100],
            b"{\"messages\": [{\"role\": \"assistant\", \"content\": \"\\u0000\"}]}".to_vec(),
            b"{\"prompt\": \"\xf0\x9f\xa4\x96 unknown chars\", \"completion\": \"\xc3\xa9\"}"
                .to_vec(),
        ];
        for c in cases {
            let _ = parse_jsonl(&c, "data.jsonl", &tok(), &opts(8, true));
        }
    }
}
