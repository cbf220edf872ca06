//! A `tokenizer.json` document from GGUF metadata (`tokenizer.ggml.*`), built as transformers
//! 5.25's GGUF converter (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`) builds
//! the tokenizer, so that the ids are transformers' own:
//!
//! - `tokenizer.ggml.model` = `gpt2`: byte-level BPE with the file's merges, and the split regex
//!   that `tokenizer.ggml.pre` names (`qwen2`, `llama-bpe`, `tekken`, `gpt-4o`, … and their
//!   aliases); graft keeps SmolLM's own pre-tokenizer for `smollm` (see [`pre_tokenizer_for`]).
//! - `llama` (sentencepiece) in a Gemma file (`general.architecture` gemma/gemma2/gemma3): BPE
//!   with byte fallback over the vocabulary, whitespace tokens respelled with `▁`, merges rebuilt
//!   from the order of the vocabulary.
//! - `llama` in any other file: Llama's sentencepiece BPE (`▁` prefix on the first word), merges
//!   from the file or rebuilt from the scores.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::{terr, Error, Result};

/// What [`document`] found besides the document.
pub(crate) struct Built {
    pub doc: Value,
    /// Whether encoding with special tokens prepends BOS (`tokenizer.ggml.add_bos_token`;
    /// sentencepiece files without the flag get BOS, as llama.cpp and transformers give it).
    pub add_bos: bool,
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The sentencepiece word-boundary mark.
const SPM_SPACE: &str = "\u{2581}";

fn get_str<'a>(meta: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    meta.get(key).and_then(Value::as_str)
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            extra += 1;
            255 + extra
        };
        // 256..=323 are all valid scalar values.
        map[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    map
}

/// Whether `c` is one of the 256 characters of [`bytes_to_unicode`].
fn in_byte_alphabet(c: char) -> bool {
    matches!(c as u32, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF | 0x100..=0x143)
}

/// Python's `str.isspace()`: Unicode White_Space, and the four separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // transformers' GGUF_PRE_TOKENIZER_SPLITS.
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// GPT-2's byte-level pre-tokenizer (its own regex when `use_regex`).
fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer for a byte-level file's `tokenizer.ggml.pre`.
pub(crate) fn pre_tokenizer_for(pre: &str) -> Result<Value> {
    if let Some(re) = split_regex(pre) {
        return Ok(json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}));
    }
    Ok(match pre {
        // No split of its own: GPT-2's regex inside ByteLevel.
        "gpt2" | "default" | "" => byte_level(true),
        // SmolLM: every digit on its own, then GPT-2's byte-level split, as llama.cpp and the
        // Hub's tokenizer.json do (transformers 5.25 has no entry and falls back to plain
        // GPT-2, which differs only before whitespace-then-digit, e.g. "a  1").
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer pre-type `{other}` is not supported yet (gpt2, smollm, qwen2, llama-bpe, tekken, gpt-4o, qwen35 and their aliases are)"
            )))
        }
    })
}

/// The strings of a metadata array.
fn strings<'a>(meta: &'a Map<String, Value>, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let a = v
        .as_array()
        .ok_or_else(|| terr(format!("GGUF {key} is not an array")))?;
    a.iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_str()
                .ok_or_else(|| terr(format!("GGUF {key}[{i}] is not a string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `{token: index}`, a later duplicate overriding an earlier one (as a Python dict built in
/// order does).
fn index_of<'a>(tokens: &[&'a str]) -> HashMap<&'a str, usize> {
    let mut m = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        m.insert(*t, i);
    }
    m
}

/// transformers' `generate_merges`: every split of every token into two tokens of the
/// vocabulary, best first. `score` ranks the tokens (higher first); without scores the tokens
/// rank by index (lower first). Ties keep the order of `tokens`, first occurrence (Python's
/// stable sort over a dict).
fn generate_merges(tokens: &[&str], score: Option<&[f64]>) -> Vec<(String, String)> {
    let vocab = index_of(tokens);
    // (rank key, len(left), len(right), left, right, order of appearance)
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    for t in tokens {
        if !seen.insert(*t) {
            continue;
        }
        // The dict keeps the first position but the last value.
        let key = match score {
            Some(s) => s.get(vocab[t]).copied().unwrap_or(0.0),
            None => vocab[t] as f64,
        };
        let mut local: Vec<(&str, &str)> = Vec::new();
        for (at, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(at);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                local.push((l, r));
            }
        }
        local.sort_by_key(|(l, r)| (vocab[l], vocab[r]));
        for (l, r) in local {
            merges.push((key, l.chars().count(), r.chars().count(), l, r));
        }
    }
    let by = |a: &(f64, usize, usize, &str, &str)| (a.0, a.1, a.2);
    if score.is_some() {
        // reverse=True, stable: equal keys keep their order.
        merges.sort_by(|a, b| {
            let (x, y) = (by(a), by(b));
            y.0.total_cmp(&x.0).then(y.1.cmp(&x.1)).then(y.2.cmp(&x.2))
        });
    } else {
        merges.sort_by(|a, b| {
            let (x, y) = (by(a), by(b));
            x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2))
        });
    }
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

fn merges_json(merges: impl IntoIterator<Item = (String, String)>) -> Value {
    Value::Array(merges.into_iter().map(|(l, r)| json!([l, r])).collect())
}

/// The file's merges (`"left right"`), as pairs, each checked against the vocabulary: its two
/// parts and what they merge into must all be tokens. The tokenizers crate refuses a merge
/// that is not, but one whose merged token is longer than every token of the vocabulary makes
/// it panic (tokenizers 0.23, `BPE::build`) instead; so it is refused here, with the merge named.
fn file_merges(merges: &[&str], vocab: &HashMap<String, usize>) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (l, r) = m
                .split_once(' ')
                .ok_or_else(|| terr(format!("GGUF merge {i} `{m}` is not `left right`")))?;
            let merged = format!("{l}{r}");
            if let Some(t) = [l, r, merged.as_str()]
                .into_iter()
                .find(|t| !vocab.contains_key(*t))
            {
                return Err(terr(format!(
                    "GGUF merge {i} `{m}`: `{t}` is not in the vocabulary"
                )));
            }
            Ok((l.to_string(), r.to_string()))
        })
        .collect()
}

/// transformers' `add_gguf_special_tokens`: control tokens become special added tokens (in a
/// byte-level vocabulary only those spelled in the byte alphabet: any other is a llama.cpp
/// mislabel), user-defined ones plain added tokens when the vocabulary has them; both are then
/// matched whole in the text.
fn added_tokens(
    tokens: &[&str],
    types: Option<&Vec<Value>>,
    vocab: &HashMap<String, usize>,
    byte_level: bool,
) -> Vec<Value> {
    let Some(types) = types else {
        return Vec::new();
    };
    let spelled = |t: &str| !byte_level || t.chars().all(in_byte_alphabet);
    let entry = |id: usize, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special})
    };
    let mut out = Vec::new();
    let mut next = vocab.values().max().map_or(0, |m| m + 1);
    let mut added = std::collections::HashSet::new();
    let mut push = |t: &str, special: bool, out: &mut Vec<Value>| {
        if !added.insert(t.to_string()) {
            return;
        }
        let id = match vocab.get(t) {
            Some(&id) => id,
            None => {
                next += 1;
                next - 1
            }
        };
        out.push(entry(id, t, special));
    };
    for (t, ty) in tokens.iter().zip(types.iter()) {
        if ty.as_i64() == Some(CONTROL) && spelled(t) {
            push(t, true, &mut out);
        }
    }
    for (t, ty) in tokens.iter().zip(types.iter()) {
        if ty.as_i64() == Some(USER_DEFINED) && vocab.contains_key(*t) {
            push(t, false, &mut out);
        }
    }
    out
}

fn vocab_json(vocab: &HashMap<String, usize>, tokens: &[String]) -> Value {
    // In token order, for a deterministic document.
    let mut m = Map::with_capacity(vocab.len());
    for t in tokens {
        if let Some(&i) = vocab.get(t) {
            m.insert(t.clone(), json!(i));
        }
    }
    Value::Object(m)
}

fn owned_index(tokens: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        m.insert(t.clone(), i);
    }
    m
}

/// The `tokenizer.json` document for GGUF metadata (the `tokenizer.*` keys, and
/// `general.architecture` where the builder depends on it).
pub(crate) fn document(meta: &Map<String, Value>) -> Result<Built> {
    let model = get_str(meta, "tokenizer.ggml.model").unwrap_or("");
    let tokens = strings(meta, "tokenizer.ggml.tokens")?
        .ok_or_else(|| terr("GGUF has no tokenizer.ggml.tokens"))?;
    let merges = strings(meta, "tokenizer.ggml.merges")?;
    let types = meta
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array);
    let add_bos_flag = meta
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool);
    match model {
        "gpt2" => {
            let merges = merges.ok_or_else(|| terr("GGUF has no tokenizer.ggml.merges"))?;
            let pre = get_str(meta, "tokenizer.ggml.pre").unwrap_or("default");
            let alphabet = bytes_to_unicode();
            // A token written outside the byte alphabet is respelled byte by byte.
            let spelled: Vec<String> = tokens
                .iter()
                .map(|t| {
                    if t.chars().all(in_byte_alphabet) {
                        t.to_string()
                    } else {
                        t.bytes().map(|b| alphabet[b as usize]).collect()
                    }
                })
                .collect();
            let vocab = owned_index(&spelled);
            let doc = json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added_tokens(&tokens, types, &vocab, true),
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer_for(pre)?,
                "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": vocab_json(&vocab, &spelled), "merges": merges_json(file_merges(&merges, &vocab)?)},
            });
            Ok(Built {
                doc,
                add_bos: add_bos_flag.unwrap_or(false),
            })
        }
        "llama" => {
            let arch = get_str(meta, "general.architecture").unwrap_or("");
            let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
            let doc = if gemma {
                gemma_document(&tokens, types)?
            } else {
                llama_document(meta, &tokens, merges.as_deref(), types)?
            };
            Ok(Built {
                doc,
                add_bos: add_bos_flag.unwrap_or(true),
            })
        }
        other => Err(Error::Unsupported(format!(
            "GGUF tokenizer model `{other}` is not supported yet (gpt2 byte-level BPE and llama sentencepiece are)"
        ))),
    }
}

/// Gemma's sentencepiece vocabulary as transformers' `gemma_tokenizer` builds it.
fn gemma_document(tokens: &[&str], types: Option<&Vec<Value>>) -> Result<Value> {
    // A token of spaces only ("  ") is looked up as "▁▁": respell it so merges match.
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.chars().all(py_isspace) {
                SPM_SPACE.repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let refs: Vec<&str> = respelled.iter().map(String::as_str).collect();
    // Gemma files carry no merges, and their scores do not follow the merge order; the
    // order of the vocabulary does (best first = lowest index).
    let neg_index: Vec<f64> = (0..refs.len()).map(|i| -(i as f64)).collect();
    let merges = generate_merges(&refs, Some(&neg_index));
    let vocab = owned_index(&respelled);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types, &vocab, false),
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPM_SPACE},
        // After the normalizer there are no spaces left: kept because transformers has it.
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_json(&vocab, &respelled), "merges": merges_json(merges)},
    }))
}

/// Llama's sentencepiece vocabulary as transformers' `sentencepiece_tokenizer` builds it.
fn llama_document(
    meta: &Map<String, Value>,
    tokens: &[&str],
    merges: Option<&[&str]>,
    types: Option<&Vec<Value>>,
) -> Result<Value> {
    let owned: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let vocab = owned_index(&owned);
    let merges = match merges {
        Some(m) => file_merges(m, &vocab)?,
        None => {
            let scores = meta
                .get("tokenizer.ggml.scores")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    terr("GGUF sentencepiece tokenizer has neither merges nor scores")
                })?;
            let scores: Vec<f64> = scores
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_f64().ok_or_else(|| {
                        terr(format!("GGUF tokenizer.ggml.scores[{i}] is not a number"))
                    })
                })
                .collect::<Result<_>>()?;
            if scores.len() != tokens.len() {
                return Err(terr(format!(
                    "GGUF has {} tokens but {} scores",
                    tokens.len(),
                    scores.len()
                )));
            }
            generate_merges(tokens, Some(&scores))
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types, &vocab, false),
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": SPM_SPACE, "prepend_scheme": "first", "split": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_json(&vocab, &owned), "merges": merges_json(merges)},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_unicode_is_gpt2s() {
        let m = bytes_to_unicode();
        assert_eq!(m[b'!' as usize], '!');
        assert_eq!(m[b' ' as usize], '\u{120}'); // Ġ
        assert_eq!(m[b'\n' as usize], '\u{10a}'); // Ċ
        assert_eq!(m[0], '\u{100}');
        assert_eq!(m[0xAD], '\u{143}');
        let distinct: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert!(m.iter().all(|&c| in_byte_alphabet(c)));
        assert!(!in_byte_alphabet(' ') && !in_byte_alphabet('\u{144}'));
    }

    #[test]
    fn merges_from_order_split_longest_left_first() {
        let toks = ["a", "b", "ab", "aab", "aa"];
        let neg: Vec<f64> = (0..toks.len()).map(|i| -(i as f64)).collect();
        let m = generate_merges(&toks, Some(&neg));
        let want = [("a", "b"), ("aa", "b"), ("a", "ab"), ("a", "a")];
        assert_eq!(
            m,
            want.iter()
                .map(|(l, r)| (l.to_string(), r.to_string()))
                .collect::<Vec<_>>()
        );
    }

    /// Every pre-type transformers maps to a split regex maps to the same regex here, and each
    /// regex compiles (the table is copied into the committed references by
    /// `scripts/make_tokenizer_references.py`).
    #[test]
    fn split_regexes_are_transformers() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizers/gguf_tokenizers.json");
        let refs: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        let table = refs["pre_split_regexes"].as_object().unwrap();
        assert!(table.len() >= 20, "{}", table.len());
        for (pre, re) in table {
            assert_eq!(split_regex(pre), re.as_str(), "{pre}");
            let mut meta = Map::new();
            meta.insert("tokenizer.ggml.model".into(), json!("gpt2"));
            meta.insert("tokenizer.ggml.pre".into(), json!(pre));
            meta.insert("tokenizer.ggml.tokens".into(), json!(["a", "b", "ab"]));
            meta.insert("tokenizer.ggml.merges".into(), json!(["a b"]));
            let doc = document(&meta).unwrap().doc.to_string();
            let tk = tokenizers::Tokenizer::from_bytes(doc.as_bytes()).unwrap();
            assert_eq!(tk.encode("ab", false).unwrap().get_ids(), &[2], "{pre}");
        }
    }

    #[test]
    fn python_whitespace() {
        assert!(py_isspace(' ') && py_isspace('\u{1f}') && py_isspace('\u{3000}'));
        assert!(!py_isspace('\u{200b}') && !py_isspace('a'));
    }
}
