//! `adapter_config.json` exactly as PEFT 0.21 writes and reads it.
//!
//! The file is kept as a JSON object holding every field PEFT writes (missing ones filled with
//! PEFT's defaults) plus any unknown keys, which are kept and reported as warnings, never fatal.
//! A typed, validated view of the fields that change the numbers sits next to it.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::matching::{Pattern, TargetSpec};

/// The PEFT methods graft injects into modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    Lora,
    Ia3,
    AdaLora,
}

impl PeftType {
    /// The `peft_type` string PEFT writes.
    pub fn as_str(self) -> &'static str {
        match self {
            PeftType::Lora => "LORA",
            PeftType::Ia3 => "IA3",
            PeftType::AdaLora => "ADALORA",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "LORA" => Ok(PeftType::Lora),
            "IA3" => Ok(PeftType::Ia3),
            "ADALORA" => Ok(PeftType::AdaLora),
            other => Err(Error::UnsupportedPeftType(other.to_string())),
        }
    }
}

/// `bias` of LoRA/AdaLoRA configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    None,
    All,
    LoraOnly,
}

/// `init_lora_weights`: only what matters for a fresh adapter; base-mutating schemes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitLoraWeights {
    /// `true`: A Kaiming-uniform, B zero (a no-op at start).
    Default,
    /// `false`: both random (for tests).
    Random,
    /// `"gaussian"`: A ~ N(0, 1/r), B zero.
    Gaussian,
    /// Any other scheme that does not change the base (e.g. `"eva"`, `"orthogonal"`): fine for
    /// loading, refused for `add_adapter`.
    Other,
}

/// The typed view of the fields that decide where adapters go and what they compute.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    pub peft_type: PeftType,
    /// `None` when the file says null: resolved per architecture at injection, as PEFT does.
    pub target_modules: Option<TargetSpec>,
    pub exclude_modules: Option<TargetSpec>,
    pub modules_to_save: Option<Vec<String>>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub layers_pattern: Option<Vec<String>>,
    pub base_model_name_or_path: Option<String>,
    pub fan_in_fan_out: bool,
    /// LoRA / AdaLoRA.
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub lora_bias: bool,
    pub bias: Bias,
    pub init_lora_weights: InitLoraWeights,
    /// `rank_pattern` / `alpha_pattern` of LoRA, in file order (first match wins).
    pub rank_pattern: Vec<(Pattern, usize)>,
    pub alpha_pattern: Vec<(Pattern, f64)>,
    /// IA3.
    pub feedforward_modules: Option<TargetSpec>,
    pub init_ia3_weights: bool,
    /// AdaLoRA: `init_r` and the saved rank masks (`<module>.lora_E` -> kept ranks).
    pub init_r: usize,
    pub adalora_rank_pattern: Vec<(String, Vec<bool>)>,
    /// Every field as it will be written back, PEFT's defaults included; unknown keys kept.
    pub fields: Map<String, Value>,
    /// Keys PEFT 0.21 does not know for this method (kept, written back, warned about).
    pub unknown_keys: Vec<String>,
    /// Warnings found while parsing (unknown keys, ignored fields).
    pub warnings: Vec<String>,
}

const LORA_DEFAULTS: &str = r#"{
  "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null, "auto_mapping": null,
  "base_model_name_or_path": null, "bias": "none", "corda_config": null, "ensure_weight_tying": false,
  "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": false,
  "init_lora_weights": true, "kasa_config": null, "layer_replication": null, "layers_pattern": null,
  "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_bias": false,
  "lora_dropout": 0.0, "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core",
  "modules_to_save": null, "monteclora_config": null, "peft_type": "LORA", "peft_version": "0.21.2",
  "qalora_group_size": 16, "r": 8, "rank_pattern": {}, "revision": null, "target_modules": null,
  "target_parameters": null, "task_type": null, "trainable_token_indices": null, "use_bdlora": null,
  "use_dora": false, "use_qalora": false, "use_rslora": false, "velora_config": null
}"#;

const ADALORA_EXTRA_DEFAULTS: &str = r#"{
  "beta1": 0.85, "beta2": 0.85, "deltaT": 1, "init_r": 12, "orth_reg_weight": 0.5,
  "peft_type": "ADALORA", "rank_pattern": null, "target_r": 8, "tfinal": 0, "tinit": 0,
  "total_step": null
}"#;

const IA3_DEFAULTS: &str = r#"{
  "auto_mapping": null, "base_model_name_or_path": null, "exclude_modules": null,
  "fan_in_fan_out": false, "feedforward_modules": null, "inference_mode": false,
  "init_ia3_weights": true, "modules_to_save": null, "peft_type": "IA3", "peft_version": "0.21.2",
  "revision": null, "target_modules": null, "task_type": null
}"#;

/// Fields PEFT's prompt-learning and other configs carry that say which method a file is for;
/// accepted silently (the base PeftConfig has them).
const COMMON_KEYS: &[&str] = &[
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "auto_mapping",
    "peft_version",
];

fn defaults_for(t: PeftType) -> Map<String, Value> {
    let parse = |s: &str| -> Map<String, Value> {
        match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(), // the constants above are valid JSON objects (tested)
        }
    };
    match t {
        PeftType::Lora => parse(LORA_DEFAULTS),
        PeftType::Ia3 => parse(IA3_DEFAULTS),
        PeftType::AdaLora => {
            let mut m = parse(LORA_DEFAULTS);
            for (k, v) in parse(ADALORA_EXTRA_DEFAULTS) {
                m.insert(k, v);
            }
            m
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidConfig(msg.into())
}

fn as_bool(fields: &Map<String, Value>, key: &str) -> Result<bool> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(bad(format!("`{key}` must be true or false, got {v}"))),
    }
}

fn as_rank(v: &Value, what: &str) -> Result<usize> {
    match v.as_u64() {
        Some(n) if n > 0 && n <= 1 << 20 => Ok(n as usize),
        _ => match v.as_f64() {
            Some(f) if f.is_finite() && f.fract() == 0.0 && f > 0.0 && f <= (1u64 << 20) as f64 => {
                Ok(f as usize)
            }
            _ => Err(bad(format!(
                "{what} must be a positive integer (r = 0 is invalid), got {v}"
            ))),
        },
    }
}

fn as_alpha(v: &Value, what: &str) -> Result<f64> {
    match v.as_f64() {
        Some(a) if a.is_finite() && a >= 0.0 => Ok(a),
        _ => Err(bad(format!(
            "{what} must be a finite, non-negative number, got {v}"
        ))),
    }
}

fn string_list(v: &Value, key: &str) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`{key}` must hold strings, got {i}")))
            })
            .collect(),
        other => Err(bad(format!(
            "`{key}` must be a list of strings, got {other}"
        ))),
    }
}

fn target_spec(fields: &Map<String, Value>, key: &str) -> Result<Option<TargetSpec>> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => TargetSpec::regex_or_all_linear(key, s).map(Some),
        Some(v @ Value::Array(_)) => Ok(Some(TargetSpec::List(string_list(v, key)?))),
        Some(v) => Err(bad(format!(
            "`{key}` must be a string (regex) or a list of names, got {v}"
        ))),
    }
}

fn is_set(fields: &Map<String, Value>, key: &str) -> bool {
    match fields.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

impl AdapterConfig {
    /// Parses `adapter_config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("").trim();
            let hint = if line.contains("NaN") || line.contains("Infinity") {
                " — NaN and Infinity are not JSON (Python's json writes them for non-finite floats) and are not valid values here"
            } else {
                ""
            };
            Error::ConfigNotJson(format!("{e}: `{line}`{hint}"))
        })?;
        let Value::Object(map) = value else {
            return Err(Error::ConfigNotJson(
                "the top level is not an object".into(),
            ));
        };
        Self::from_map(map)
    }

    /// Builds a config from a JSON object (as `LoraConfig(**kwargs)` would).
    pub fn from_map(map: Map<String, Value>) -> Result<Self> {
        let peft_type = match map.get("peft_type") {
            Some(Value::String(s)) => PeftType::parse(s)?,
            Some(v) => return Err(bad(format!("`peft_type` must be a string, got {v}"))),
            None => return Err(bad("`peft_type` is missing (PEFT requires it)")),
        };
        let mut fields = defaults_for(peft_type);
        let mut unknown_keys = Vec::new();
        let mut warnings = Vec::new();
        for (k, v) in map {
            if !fields.contains_key(&k) && !COMMON_KEYS.contains(&k.as_str()) {
                unknown_keys.push(k.clone());
            }
            fields.insert(k, v);
        }
        if !unknown_keys.is_empty() {
            warnings.push(format!(
                "Unexpected keyword arguments {unknown_keys:?} for {}; they are kept but ignored (the file may come from a newer PEFT)",
                peft_type.as_str()
            ));
        }
        // PEFT drops `runtime_config` with a warning.
        if fields.remove("runtime_config").is_some() {
            warnings.push("`runtime_config` is not saved by PEFT and was dropped".into());
            unknown_keys.retain(|k| k != "runtime_config");
        }

        let target_modules = target_spec(&fields, "target_modules")?;
        let exclude_modules = target_spec(&fields, "exclude_modules")?;
        if matches!(exclude_modules, Some(TargetSpec::AllLinear)) {
            return Err(bad("`exclude_modules` cannot be \"all-linear\""));
        }
        let modules_to_save = match fields.get("modules_to_save") {
            None | Some(Value::Null) => None,
            Some(v) => Some(string_list(v, "modules_to_save")?),
        };
        let layers_to_transform = match fields.get("layers_to_transform") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|i| {
                        i.as_u64().map(|n| n as usize).ok_or_else(|| {
                            bad(format!(
                                "`layers_to_transform` holds {i}, not a layer index"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(v) => match v.as_u64() {
                Some(n) => Some(vec![n as usize]),
                None => {
                    return Err(bad(format!(
                        "`layers_to_transform` must be an int or a list of ints, got {v}"
                    )))
                }
            },
        };
        let layers_pattern = match fields.get("layers_pattern") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(vec![s.clone()]),
            Some(v) => Some(string_list(v, "layers_pattern")?),
        };
        if matches!(target_modules, Some(TargetSpec::Regex(_))) {
            if layers_to_transform.is_some() {
                return Err(bad(
                    "`layers_to_transform` cannot be used when `target_modules` is a str.",
                ));
            }
            if layers_pattern.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(bad(
                    "`layers_pattern` cannot be used when `target_modules` is a str.",
                ));
            }
        }
        if layers_pattern.as_ref().is_some_and(|p| !p.is_empty()) && layers_to_transform.is_none() {
            return Err(bad(
                "When `layers_pattern` is specified, `layers_to_transform` must also be specified. ",
            ));
        }
        let base_model_name_or_path = match fields.get("base_model_name_or_path") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let fan_in_fan_out = as_bool(&fields, "fan_in_fan_out")?;

        let mut cfg = AdapterConfig {
            peft_type,
            target_modules,
            exclude_modules,
            modules_to_save,
            layers_to_transform,
            layers_pattern,
            base_model_name_or_path,
            fan_in_fan_out,
            r: 8,
            lora_alpha: 8.0,
            use_rslora: false,
            use_dora: false,
            lora_bias: false,
            bias: Bias::None,
            init_lora_weights: InitLoraWeights::Default,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            feedforward_modules: None,
            init_ia3_weights: true,
            init_r: 12,
            adalora_rank_pattern: Vec::new(),
            fields,
            unknown_keys,
            warnings,
        };
        match peft_type {
            PeftType::Ia3 => cfg.parse_ia3()?,
            PeftType::Lora | PeftType::AdaLora => cfg.parse_lora()?,
        }
        Ok(cfg)
    }

    fn parse_ia3(&mut self) -> Result<()> {
        self.feedforward_modules = target_spec(&self.fields, "feedforward_modules")?;
        if matches!(self.feedforward_modules, Some(TargetSpec::AllLinear)) {
            return Err(bad("`feedforward_modules` cannot be \"all-linear\""));
        }
        self.init_ia3_weights = match self.fields.get("init_ia3_weights") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(bad(format!("`init_ia3_weights` must be a bool, got {v}"))),
        };
        // PEFT: feedforward_modules must be a subset of target_modules (both lists).
        if let (Some(TargetSpec::List(t)), Some(TargetSpec::List(f))) =
            (&self.target_modules, &self.feedforward_modules)
        {
            if let Some(extra) = f.iter().find(|m| !t.contains(m)) {
                return Err(bad(format!(
                    "`feedforward_modules` should be a subset of `target_modules` (`{extra}` is not a target)"
                )));
            }
        }
        Ok(())
    }

    fn parse_lora(&mut self) -> Result<()> {
        let f = &self.fields;
        let is_ada = self.peft_type == PeftType::AdaLora;
        self.r = as_rank(f.get("r").unwrap_or(&Value::Null), "`r`")?;
        self.lora_alpha = as_alpha(f.get("lora_alpha").unwrap_or(&Value::Null), "`lora_alpha`")?;
        self.use_rslora = as_bool(f, "use_rslora")?;
        self.use_dora = as_bool(f, "use_dora")?;
        self.lora_bias = as_bool(f, "lora_bias")?;
        self.bias = match f.get("bias") {
            None | Some(Value::Null) => Bias::None,
            Some(Value::String(s)) if s == "none" => Bias::None,
            Some(Value::String(s)) if s == "all" => Bias::All,
            Some(Value::String(s)) if s == "lora_only" => Bias::LoraOnly,
            Some(v) => {
                return Err(bad(format!(
                    "`bias` must be \"none\", \"all\" or \"lora_only\", got {v}"
                )))
            }
        };
        self.init_lora_weights = match f.get("init_lora_weights") {
            None | Some(Value::Null) | Some(Value::Bool(true)) => InitLoraWeights::Default,
            Some(Value::Bool(false)) => InitLoraWeights::Random,
            Some(Value::String(s)) if s == "gaussian" => InitLoraWeights::Gaussian,
            Some(Value::String(s))
                if ["pissa", "olora", "corda", "loftq", "lora_ga"]
                    .iter()
                    .any(|p| s.starts_with(p)) =>
            {
                return Err(Error::UnsupportedFeature {
                    field: "init_lora_weights".into(),
                    value: format!("\"{s}\""),
                    why: "this initialisation changes the base weights, so the adapter is only valid on the mutated base; save it with PEFT's `path_initial_model_for_weight_conversion` to get a plain LoRA".into(),
                })
            }
            Some(Value::String(_)) => InitLoraWeights::Other,
            Some(v) => return Err(bad(format!("`init_lora_weights` has an unknown value {v}"))),
        };
        if self.use_dora && self.lora_bias {
            return Err(bad(
                "DoRA does not support lora_bias yet, set use_dora to False",
            ));
        }
        // Fields that change the numbers in ways graft does not implement yet: fail closed.
        let refuse = |key: &str, why: &str| -> Result<()> {
            if is_set(f, key) {
                return Err(Error::UnsupportedFeature {
                    field: key.into(),
                    value: f.get(key).map(|v| v.to_string()).unwrap_or_default(),
                    why: why.into(),
                });
            }
            Ok(())
        };
        refuse(
            "alora_invocation_tokens",
            "aLoRA (activated LoRA) is not implemented",
        )?;
        refuse("use_qalora", "QA-LoRA is not implemented")?;
        refuse(
            "target_parameters",
            "LoRA on raw parameters (MoE experts) is not implemented",
        )?;
        refuse(
            "trainable_token_indices",
            "trainable tokens are not implemented",
        )?;
        refuse("layer_replication", "layer replication is not implemented")?;
        refuse(
            "megatron_config",
            "Megatron parallel layers are not supported",
        )?;
        refuse("use_bdlora", "BD-LoRA is not implemented")?;
        refuse("arrow_config", "Arrow routing is not implemented")?;
        refuse("monteclora_config", "MonteCLoRA is not implemented")?;
        refuse("kasa_config", "KaSA is not implemented")?;
        refuse("velora_config", "VeLoRA is not implemented")?;

        if is_ada {
            if self.use_dora {
                return Err(bad("ADALORA does not support DoRA."));
            }
            self.init_r = as_rank(f.get("init_r").unwrap_or(&Value::Null), "`init_r`")?;
            match f.get("rank_pattern") {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    for (k, v) in m {
                        let mask = match v {
                            Value::Array(items) => items
                                .iter()
                                .map(|b| {
                                    b.as_bool().ok_or_else(|| {
                                        bad(format!("AdaLoRA `rank_pattern[{k}]` must be a list of booleans"))
                                    })
                                })
                                .collect::<Result<Vec<bool>>>()?,
                            _ => {
                                return Err(bad(format!(
                                    "AdaLoRA `rank_pattern[{k}]` must be a list of booleans, got {v}"
                                )))
                            }
                        };
                        if mask.len() != self.init_r {
                            return Err(bad(format!(
                                "AdaLoRA `rank_pattern[{k}]` has {} entries but init_r is {}",
                                mask.len(),
                                self.init_r
                            )));
                        }
                        self.adalora_rank_pattern.push((k.clone(), mask));
                    }
                }
                Some(v) => {
                    return Err(bad(format!(
                        "AdaLoRA `rank_pattern` must be an object, got {v}"
                    )))
                }
            }
        } else {
            if let Some(Value::Object(m)) = f.get("rank_pattern") {
                for (k, v) in m {
                    let p = Pattern::pattern_key("rank_pattern", k)?;
                    self.rank_pattern
                        .push((p, as_rank(v, &format!("rank_pattern[{k}]"))?));
                }
            } else if is_set(f, "rank_pattern") {
                return Err(bad("`rank_pattern` must be an object"));
            }
            if let Some(Value::Object(m)) = f.get("alpha_pattern") {
                for (k, v) in m {
                    let p = Pattern::pattern_key("alpha_pattern", k)?;
                    self.alpha_pattern
                        .push((p, as_alpha(v, &format!("alpha_pattern[{k}]"))?));
                }
            } else if is_set(f, "alpha_pattern") {
                return Err(bad("`alpha_pattern` must be an object"));
            }
        }
        Ok(())
    }

    /// Serialises the config as PEFT does: every key, sorted recursively, indented by 2.
    pub fn to_json_string(&self) -> String {
        let sorted = sort_value(&Value::Object(self.fields.clone()));
        // serde_json cannot fail on a Value built from a Map.
        serde_json::to_string_pretty(&sorted).unwrap_or_default()
    }

    /// Sets a field in the written form (and keeps the typed view in sync for the ones that
    /// matter to the save path).
    pub fn set_field(&mut self, key: &str, value: Value) {
        if key == "base_model_name_or_path" {
            self.base_model_name_or_path = value.as_str().map(str::to_string);
        }
        self.fields.insert(key.to_string(), value);
    }

    /// Fills a null `target_modules` (and IA3's `feedforward_modules`) from PEFT's
    /// per-architecture tables, as PEFT's `_prepare_adapter_config` does; the filled-in lists
    /// are what a saved config then holds.
    pub fn resolve_defaults(&mut self, model_type: &str) -> Result<()> {
        let list =
            |v: Vec<&str>| Value::Array(v.into_iter().map(|s| Value::String(s.into())).collect());
        if self.target_modules.is_none() {
            let d = crate::matching::default_targets(model_type, self.peft_type).ok_or_else(|| {
                bad(format!(
                    "`target_modules` is null and PEFT has no default for model type `{model_type}`; please specify `target_modules` in the config"
                ))
            })?;
            self.target_modules = Some(TargetSpec::List(d.iter().map(|s| s.to_string()).collect()));
            self.fields.insert("target_modules".into(), list(d));
        }
        if self.peft_type == PeftType::Ia3 && self.feedforward_modules.is_none() {
            let d = crate::matching::default_feedforward(model_type).ok_or_else(|| {
                bad(format!(
                    "Please specify `feedforward_modules` in `peft_config` (PEFT has no default for model type `{model_type}`)"
                ))
            })?;
            self.feedforward_modules =
                Some(TargetSpec::List(d.iter().map(|s| s.to_string()).collect()));
            self.fields.insert("feedforward_modules".into(), list(d));
        }
        Ok(())
    }

    /// PEFT's `_check_target_module_feedforward`: regex full match, or a plain `str.endswith`
    /// for lists (no dot required).
    pub fn is_feedforward(&self, module: &str) -> bool {
        match &self.feedforward_modules {
            Some(TargetSpec::List(items)) => items.iter().any(|f| module.ends_with(f.as_str())),
            Some(spec) => spec.matches(module),
            None => false,
        }
    }

    /// LoRA scale for a module: alpha/r, or alpha/sqrt(r) with rsLoRA, with r and alpha from the
    /// patterns (first matching key wins).
    pub fn rank_and_alpha(&self, module: &str) -> (usize, f64) {
        let r = self
            .rank_pattern
            .iter()
            .find(|(p, _)| p.matches(module))
            .map(|(_, r)| *r)
            .unwrap_or(self.r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(p, _)| p.matches(module))
            .map(|(_, a)| *a)
            .unwrap_or(self.lora_alpha);
        (r, alpha)
    }

    /// The LoRA scaling for a module, as PEFT computes it.
    pub fn lora_scale(&self, module: &str) -> (usize, f64, f64) {
        let (r, alpha) = self.rank_and_alpha(module);
        let s = if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        (r, alpha, s)
    }
}

fn sort_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), sort_value(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_value).collect()),
        other => other.clone(),
    }
}

/// Builds a fresh LoRA/IA3/AdaLoRA config the way `LoraConfig(**kwargs)` does.
pub fn config_from_kwargs(kwargs: Value) -> Result<AdapterConfig> {
    match kwargs {
        Value::Object(m) => AdapterConfig::from_map(m),
        other => Err(bad(format!("a config must be a JSON object, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_json() {
        for t in [PeftType::Lora, PeftType::Ia3, PeftType::AdaLora] {
            assert!(defaults_for(t).len() > 10, "{t:?}");
        }
        assert_eq!(defaults_for(PeftType::Lora).len(), 41);
        assert_eq!(defaults_for(PeftType::Ia3).len(), 13);
    }

    #[test]
    fn minimal_config_gets_peft_defaults() {
        let c = AdapterConfig::from_json_str(r#"{"peft_type": "LORA"}"#).unwrap();
        assert_eq!(c.r, 8);
        assert_eq!(c.lora_alpha, 8.0);
        assert!(c.target_modules.is_none());
        assert_eq!(c.fields["lora_dropout"], serde_json::json!(0.0));
    }

    #[test]
    fn unknown_keys_are_kept_and_warned() {
        let c = AdapterConfig::from_json_str(
            r#"{"peft_type": "LORA", "r": 2, "some_future_field": 3}"#,
        )
        .unwrap();
        assert_eq!(c.unknown_keys, vec!["some_future_field".to_string()]);
        assert!(c.warnings[0].contains("some_future_field"));
        assert!(c.to_json_string().contains("some_future_field"));
    }

    #[test]
    fn other_methods_are_refused_with_the_supported_list() {
        for t in ["PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "LOHA", "LOKR"] {
            let e = AdapterConfig::from_json_str(&format!(r#"{{"peft_type": "{t}"}}"#))
                .unwrap_err()
                .to_string();
            assert!(e.contains(t) && e.contains("LORA, IA3 and ADALORA"), "{e}");
        }
    }

    #[test]
    fn rank_and_alpha_patterns_first_match_wins() {
        let c = AdapterConfig::from_json_str(
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true,
                "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"layers.1.self_attn.q_proj": 3}}"#,
        )
        .unwrap();
        let (_, _, s) = c.lora_scale("model.layers.0.self_attn.v_proj");
        assert!((s - 8.0 / 2f64.sqrt()).abs() < 1e-12);
        let (_, _, s) = c.lora_scale("model.layers.1.self_attn.q_proj");
        assert!((s - 1.5).abs() < 1e-12);
        let (_, _, s) = c.lora_scale("model.layers.0.self_attn.q_proj");
        assert!((s - 4.0).abs() < 1e-12);
    }

    #[test]
    fn output_is_sorted_like_python() {
        let c = AdapterConfig::from_json_str(
            r#"{"peft_type": "LORA", "alpha_pattern": {"z": 1, "a": 2}}"#,
        )
        .unwrap();
        let s = c.to_json_string();
        assert!(s.find("\"a\"").unwrap() < s.find("\"z\"").unwrap());
        assert!(s.find("alora_invocation_tokens").unwrap() < s.find("velora_config").unwrap());
    }
}
