//! `config.json` read fail-closed.
//!
//! Every architecture lists the keys of its transformers configuration class that change the
//! numbers ([`Key`]): each is read by graft ([`Rule::Read`]), or accepted only at the values
//! graft implements ([`Rule::Only`], refused otherwise with an error naming the key and its
//! value), or known not to change a forward pass ([`Rule::NoEffect`]). A key in no list is
//! not an attribute transformers' class defines, so transformers' modelling code does not read
//! it either; it is reported as unused ([`Understood::unused`]), never silently given a meaning.
//!
//! The reader records, for every value an architecture uses, where it came from (a key of the
//! file, or the class default), so `graft inspect --model` prints the configuration as graft
//! understood it.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::error::{ConfigProblem, Error, Result};

/// How graft treats one configuration key.
#[derive(Clone, Copy)]
pub enum Rule {
    /// Read by the architecture: implemented.
    Read,
    /// Changes the numbers; graft implements only the values `accepts` allows (described by
    /// `expected`), and refuses any other with `why`.
    Only {
        accepts: fn(&Value) -> bool,
        expected: &'static str,
        why: &'static str,
    },
    /// Does not change the numbers of a forward pass (metadata, caching, initialisation,
    /// generation defaults).
    NoEffect,
}

/// A configuration key and its [`Rule`].
#[derive(Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub rule: Rule,
}

/// `Key { name, rule: Rule::Read }`.
pub const fn read(name: &'static str) -> Key {
    Key {
        name,
        rule: Rule::Read,
    }
}

/// `Key { name, rule: Rule::NoEffect }`.
pub const fn no_effect(name: &'static str) -> Key {
    Key {
        name,
        rule: Rule::NoEffect,
    }
}

/// `Key { name, rule: Rule::Only { .. } }`.
pub const fn only(
    name: &'static str,
    accepts: fn(&Value) -> bool,
    expected: &'static str,
    why: &'static str,
) -> Key {
    Key {
        name,
        rule: Rule::Only {
            accepts,
            expected,
            why,
        },
    }
}

/// Accepts null or `false`.
pub fn null_or_false(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(false))
}

/// Accepts null, `{}` or `[]`.
pub fn null_or_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Accepts null.
pub fn null(v: &Value) -> bool {
    v.is_null()
}

/// Accepts `true` (or null, the class default).
pub fn null_or_true(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(true))
}

/// Accepts null or 1.
pub fn null_or_one(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(1.0)
}

/// Keys of transformers' `PreTrainedConfig` base class (and the v4 `PretrainedConfig`) that
/// every architecture shares.
pub const COMMON_KEYS: &[Key] = &[
    read("model_type"),
    read("dtype"),
    read("torch_dtype"),
    read("transformers_version"),
    no_effect("architectures"),
    no_effect("_name_or_path"),
    no_effect("_commit_hash"),
    no_effect("use_cache"),
    no_effect("bos_token_id"),
    no_effect("eos_token_id"),
    no_effect("pad_token_id"),
    no_effect("sep_token_id"),
    no_effect("decoder_start_token_id"),
    no_effect("output_hidden_states"),
    no_effect("output_attentions"),
    no_effect("return_dict"),
    no_effect("use_return_dict"),
    no_effect("torchscript"),
    no_effect("chunk_size_feed_forward"),
    no_effect("problem_type"),
    no_effect("id2label"),
    no_effect("label2id"),
    no_effect("finetuning_task"),
    no_effect("tokenizer_class"),
    no_effect("prefix"),
    no_effect("task_specific_params"),
    no_effect("_attn_implementation"),
    no_effect("attn_implementation"),
    no_effect("use_bfloat16"),
    no_effect("tf_legacy_loss"),
    no_effect("is_decoder"),
    no_effect("tie_encoder_decoder"),
    only(
        "is_encoder_decoder",
        null_or_false,
        "false",
        "graft runs decoder-only causal language models",
    ),
    only(
        "add_cross_attention",
        null_or_false,
        "false",
        "graft runs decoder-only causal language models without cross-attention",
    ),
    only(
        "pruned_heads",
        null_or_empty,
        "{}",
        "pruned attention heads change the shapes of the attention projections",
    ),
    only(
        "quantization_config",
        null,
        "absent",
        "pre-quantized safetensors (bitsandbytes, GPTQ, AWQ, FP8…) are not read; load the unquantized model and quantize it while loading, or use a GGUF file",
    ),
];

/// Where a value graft uses came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A key of the file (a path such as `rope_parameters.rope_theta` for nested keys).
    File(String),
    /// Not in the file: the transformers class default.
    Default,
    /// Computed from other values (e.g. `head_dim` = hidden_size / num_attention_heads).
    Derived(String),
}

/// One value graft uses, as it understood it.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: String,
    pub value: String,
    pub source: Source,
}

/// The configuration as graft understood it: what each architecture read (with its source)
/// and the keys nothing reads.
#[derive(Debug, Clone, Default)]
pub struct Understood {
    /// The transformers configuration class whose keys were applied (e.g. `LlamaConfig`).
    pub class: String,
    /// Where the configuration came from (`config.json`, a GGUF file's metadata…).
    pub source_name: String,
    pub settings: Vec<Setting>,
    /// Keys present in the file that no transformers code of this class reads.
    pub unused: Vec<String>,
    /// Keys present that do not change a forward pass.
    pub no_effect: Vec<String>,
}

impl Understood {
    /// The value recorded for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.as_str())
    }
}

impl fmt::Display for Understood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "configuration ({}, read as transformers' {}):",
            self.source_name, self.class
        )?;
        let w = self
            .settings
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for s in &self.settings {
            let from = match &s.source {
                Source::File(k) if *k == s.name => String::new(),
                Source::File(k) => format!("  (from `{k}`)"),
                Source::Default => "  (default)".to_string(),
                Source::Derived(how) => format!("  ({how})"),
            };
            writeln!(f, "  {:w$}  {}{from}", s.name, s.value)?;
        }
        if !self.no_effect.is_empty() {
            writeln!(
                f,
                "keys that do not change the numbers: {}",
                self.no_effect.join(", ")
            )?;
        }
        if !self.unused.is_empty() {
            writeln!(
                f,
                "keys not used (transformers' {} does not read them either): {}",
                self.class,
                self.unused.join(", ")
            )?;
        }
        Ok(())
    }
}

/// A short, bounded rendering of a JSON value for messages.
pub fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let head: String = s.chars().take(77).collect();
        format!("{head}…")
    } else {
        s
    }
}

/// Reads one architecture's configuration object under its key rules.
pub struct ConfigReader<'a> {
    obj: &'a Map<String, Value>,
    source_name: String,
    class: &'static str,
    keys: Vec<Key>,
    read: BTreeSet<String>,
    settings: Vec<Setting>,
    /// Nested keys (inside an object graft reads) that nothing uses.
    nested_unused: Vec<String>,
}

impl<'a> ConfigReader<'a> {
    /// Checks `cfg` against [`COMMON_KEYS`] and `arch_keys`: a key with an [`Rule::Only`]
    /// rule and any other value is refused here, before anything is built.
    pub fn new(
        cfg: &'a Value,
        source_name: &str,
        class: &'static str,
        arch_keys: &[Key],
    ) -> Result<Self> {
        let obj = cfg.as_object().ok_or_else(|| {
            Error::BadConfig(Box::new(ConfigProblem {
                source_name: source_name.into(),
                key: "(top level)".into(),
                value: None,
                problem: "must be a JSON object".into(),
            }))
        })?;
        let keys: Vec<Key> = COMMON_KEYS.iter().chain(arch_keys).copied().collect();
        let r = ConfigReader {
            obj,
            source_name: source_name.into(),
            class,
            keys,
            read: BTreeSet::new(),
            settings: Vec::new(),
            nested_unused: Vec::new(),
        };
        for (k, v) in obj {
            if let Some(Rule::Only {
                accepts,
                expected,
                why,
            }) = r.rule(k)
            {
                if !accepts(v) {
                    return Err(r.unsupported(
                        k,
                        v,
                        &format!("graft implements {expected} ({why})"),
                    ));
                }
            }
        }
        Ok(r)
    }

    /// The source name used in messages (`config.json`, …).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    fn rule(&self, key: &str) -> Option<Rule> {
        self.keys.iter().find(|k| k.name == key).map(|k| k.rule)
    }

    /// An error for a key with a value graft does not implement.
    pub fn unsupported(&self, key: &str, value: &Value, why: &str) -> Error {
        Error::UnsupportedConfig(Box::new(ConfigProblem {
            source_name: self.source_name.clone(),
            key: key.into(),
            value: Some(show(value)),
            problem: why.into(),
        }))
    }

    /// An error for a key that is missing, mistyped or impossible.
    pub fn bad(&self, key: &str, problem: impl Into<String>) -> Error {
        Error::BadConfig(Box::new(ConfigProblem {
            source_name: self.source_name.clone(),
            key: key.into(),
            value: None,
            problem: problem.into(),
        }))
    }

    /// The raw value of `key` (None when absent or null), marking it read. Reading a key the
    /// architecture's list does not name as [`Rule::Read`] is a bug in that list, reported as
    /// an error rather than allowed to drift.
    pub fn raw(&mut self, key: &str) -> Result<Option<&'a Value>> {
        match self.rule(key) {
            Some(Rule::Read) => {}
            _ => {
                return Err(self.bad(
                    key,
                    format!(
                        "is read by graft but not listed as read for {} (a bug in graft)",
                        self.class
                    ),
                ))
            }
        }
        self.read.insert(key.to_string());
        Ok(self.obj.get(key).filter(|v| !v.is_null()))
    }

    /// Whether `key` is present and not null (without reading it).
    pub fn has(&self, key: &str) -> bool {
        self.obj.get(key).is_some_and(|v| !v.is_null())
    }

    /// Notes a nested key (`rope_parameters.attention_factor`) that nothing reads.
    pub fn note_unused(&mut self, path: &str) {
        self.nested_unused.push(path.into());
    }

    /// Records a value graft uses.
    pub fn record(&mut self, name: &str, value: impl fmt::Display, source: Source) {
        self.settings.retain(|s| s.name != name);
        self.settings.push(Setting {
            name: name.into(),
            value: value.to_string(),
            source,
        });
    }

    fn from(&self, key: &str, present: bool) -> Source {
        if present {
            Source::File(key.into())
        } else {
            Source::Default
        }
    }

    /// A positive integer (at most 2^24), required.
    pub fn usize(&mut self, key: &str) -> Result<usize> {
        match self.opt_usize(key)? {
            Some(v) => Ok(v),
            None => Err(self.bad(key, "is missing")),
        }
    }

    /// A positive integer, or `default` when absent or null.
    pub fn usize_or(&mut self, key: &str, default: usize) -> Result<usize> {
        let v = self.opt_usize(key)?;
        if v.is_none() {
            self.record(key, default, Source::Default);
        }
        Ok(v.unwrap_or(default))
    }

    /// A positive integer, or None when absent or null (recorded only when present).
    pub fn opt_usize(&mut self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.raw(key)? else {
            return Ok(None);
        };
        let n = positive_int(v).ok_or_else(|| {
            self.bad(
                key,
                format!("= {} must be a positive integer (at most 2^24)", show(v)),
            )
        })?;
        self.record(key, n, Source::File(key.into()));
        Ok(Some(n))
    }

    /// A finite number, or `default`.
    pub fn f64_or(&mut self, key: &str, default: f64) -> Result<f64> {
        let v = self.raw(key)?;
        let x = match v {
            None => default,
            Some(v) => {
                finite(v).ok_or_else(|| self.bad(key, format!("= {} must be a number", show(v))))?
            }
        };
        let src = self.from(key, v.is_some());
        self.record(key, x, src);
        Ok(x)
    }

    /// A boolean, or `default`. A value of another type is an error, never a default.
    pub fn bool_or(&mut self, key: &str, default: bool) -> Result<bool> {
        let v = self.raw(key)?;
        let b = match v {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(self.bad(key, format!("= {} must be true or false", show(v)))),
        };
        let src = self.from(key, v.is_some());
        self.record(key, b, src);
        Ok(b)
    }

    /// A string, or `default`.
    pub fn str_or(&mut self, key: &str, default: &str) -> Result<String> {
        let v = self.raw(key)?;
        let s = match v {
            None => default.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(self.bad(key, format!("= {} must be a string", show(v)))),
        };
        let src = self.from(key, v.is_some());
        self.record(key, &s, src);
        Ok(s)
    }

    /// The stored dtype (`dtype`, or transformers 4's `torch_dtype`), recorded for
    /// `inspect`: graft computes in f32 whatever the weights are stored as.
    pub fn dtype(&mut self) -> Result<Option<String>> {
        let d = self.raw("dtype")?.or(self.raw("torch_dtype")?);
        let key = if self.has("dtype") {
            "dtype"
        } else {
            "torch_dtype"
        };
        let d = match d {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => return Err(self.bad(key, format!("= {} must be a string", show(v)))),
        };
        if let Some(s) = &d {
            self.record(
                "dtype",
                format!("{s} (graft computes in float32)"),
                Source::File(key.into()),
            );
        }
        if let Some(Value::String(v)) = self.raw("transformers_version")? {
            self.record(
                "written by",
                format!("transformers {v}"),
                Source::File("transformers_version".into()),
            );
        }
        Ok(d)
    }

    /// Finishes reading: the settings, and the keys present that nothing used.
    pub fn finish(self) -> Understood {
        let mut unused = Vec::new();
        let mut no_effect = Vec::new();
        for k in self.obj.keys() {
            match self.rule(k) {
                None => unused.push(k.clone()),
                Some(Rule::NoEffect) => no_effect.push(k.clone()),
                // Accepted at a neutral value; nothing to read.
                Some(Rule::Only { .. }) => no_effect.push(k.clone()),
                Some(Rule::Read) => {}
            }
        }
        unused.extend(self.nested_unused);
        Understood {
            class: self.class.to_string(),
            source_name: self.source_name,
            settings: self.settings,
            unused,
            no_effect,
        }
    }

    /// Keys listed as [`Rule::Read`] that are present in the file but were never read: a
    /// list that promises more than the code does (checked by the tests).
    pub fn unread(&self) -> Vec<String> {
        self.obj
            .keys()
            .filter(|k| matches!(self.rule(k), Some(Rule::Read)) && !self.read.contains(*k))
            .cloned()
            .collect()
    }
}

/// A positive integer at most 2^24 (JSON integers, or floats with an integral value).
pub fn positive_int(v: &Value) -> Option<usize> {
    let n = match v.as_u64() {
        Some(n) => n,
        None => {
            let f = v.as_f64()?;
            if f.fract() != 0.0 || f < 0.0 {
                return None;
            }
            f as u64
        }
    };
    (n > 0 && n <= 1 << 24).then_some(n as usize)
}

/// A finite number.
pub fn finite(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEYS: &[Key] = &[
        read("hidden_size"),
        read("flag"),
        no_effect("initializer_range"),
        only("bias_everywhere", null_or_false, "false", "not implemented"),
    ];

    #[test]
    fn values_are_recorded_with_their_source() {
        let cfg = json!({"hidden_size": 32, "initializer_range": 0.02, "foo": 1});
        let mut r = ConfigReader::new(&cfg, "config.json", "TestConfig", KEYS).unwrap();
        assert_eq!(r.usize("hidden_size").unwrap(), 32);
        assert!(!r.bool_or("flag", false).unwrap());
        let u = r.finish();
        assert_eq!(u.get("hidden_size"), Some("32"));
        assert_eq!(u.settings[1].source, Source::Default);
        assert_eq!(u.unused, vec!["foo".to_string()]);
        assert_eq!(u.no_effect, vec!["initializer_range".to_string()]);
        let text = u.to_string();
        assert!(
            text.contains("flag") && text.contains("(default)"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_value_names_key_and_value() {
        let cfg = json!({"bias_everywhere": true});
        let e = ConfigReader::new(&cfg, "config.json", "TestConfig", KEYS)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`bias_everywhere` = true"), "{e}");
        let cfg = json!({"bias_everywhere": false});
        assert!(ConfigReader::new(&cfg, "config.json", "TestConfig", KEYS).is_ok());
    }

    #[test]
    fn wrong_types_are_errors_not_defaults() {
        let cfg = json!({"flag": "yes", "hidden_size": -3});
        let mut r = ConfigReader::new(&cfg, "config.json", "TestConfig", KEYS).unwrap();
        assert!(r.bool_or("flag", false).is_err());
        assert!(r.usize("hidden_size").is_err());
    }

    #[test]
    fn reading_an_unlisted_key_is_a_bug_report() {
        let cfg = json!({"other": 1});
        let mut r = ConfigReader::new(&cfg, "config.json", "TestConfig", KEYS).unwrap();
        let e = r.usize("other").unwrap_err().to_string();
        assert!(e.contains("a bug in graft"), "{e}");
    }
}
