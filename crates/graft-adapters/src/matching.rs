//! Which modules get an adapter, decided exactly as PEFT 0.21 decides
//! (`check_target_module_exists`, `get_pattern_key`, `_set_trainable`).
//!
//! Python's `re` is emulated with `fancy-regex` (look-around and back-references work);
//! `re.fullmatch(p, s)` becomes `\A(?:p)\z`.

use fancy_regex::Regex;

use crate::config::AdapterConfig;
use crate::error::{Error, Result};

/// A compiled regular expression with its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    re: Regex,
}

impl Pattern {
    fn compile(field: &str, source: &str, wrapped: String) -> Result<Self> {
        let re = Regex::new(&wrapped).map_err(|e| Error::BadRegex {
            field: field.into(),
            pattern: source.into(),
            reason: e.to_string(),
        })?;
        Ok(Pattern {
            source: source.into(),
            re,
        })
    }

    /// `re.fullmatch(source, name)`.
    pub fn fullmatch(field: &str, source: &str) -> Result<Self> {
        Self::compile(field, source, format!(r"\A(?:{source})\z"))
    }

    /// `re.match(rf"(.*\.)?({key})$", name)`: a rank/alpha pattern key.
    pub fn pattern_key(field: &str, key: &str) -> Result<Self> {
        Self::compile(field, key, format!(r"\A(?:.*\.)?(?:{key})\z"))
    }

    /// `re.match(rf"(?:^|.*?\.){layers_pattern}\.(?P<idx>\d+)\.", name)`.
    fn layer_index(field: &str, layers_pattern: &str) -> Result<Self> {
        Self::compile(
            field,
            layers_pattern,
            format!(r"\A(?:.*?\.)??(?:{layers_pattern})\.(\d+)\."),
        )
    }

    /// Whether the pattern matches. A regex that runs out of backtracking budget counts as
    /// no match (fancy-regex's limit guards against catastrophic patterns).
    pub fn matches(&self, name: &str) -> bool {
        self.re.is_match(name).unwrap_or(false)
    }

    fn capture_usize(&self, name: &str) -> Option<usize> {
        let caps = self.re.captures(name).ok()??;
        caps.get(1)?.as_str().parse().ok()
    }
}

/// `target_modules` / `exclude_modules` / `feedforward_modules`: a list (exact name or
/// `.suffix`), a regex (full match), or `"all-linear"`.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    List(Vec<String>),
    Regex(Pattern),
    AllLinear,
}

impl TargetSpec {
    pub(crate) fn regex_or_all_linear(field: &str, s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("all-linear") {
            Ok(TargetSpec::AllLinear)
        } else {
            Ok(TargetSpec::Regex(Pattern::fullmatch(field, s)?))
        }
    }

    /// Exact name or `.suffix` for lists, full match for regexes.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            TargetSpec::List(items) => items.iter().any(|t| {
                name == t
                    || (name.ends_with(t.as_str()) && name[..name.len() - t.len()].ends_with('.'))
            }),
            TargetSpec::Regex(p) => p.matches(name),
            TargetSpec::AllLinear => false,
        }
    }

    /// For messages: the spec as PEFT prints it.
    pub fn describe(&self) -> String {
        match self {
            TargetSpec::List(items) => format!("{items:?}"),
            TargetSpec::Regex(p) => format!("{:?}", p.source),
            TargetSpec::AllLinear => "\"all-linear\"".into(),
        }
    }
}

/// What the model says about one of its modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleKind {
    /// `nn.Linear(in, out)`: weight (out, in).
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    /// `nn.Embedding(num, dim)`: weight (num, dim).
    Embedding { num_embeddings: usize, dim: usize },
    /// A norm layer: weight (dim,), optional bias.
    Norm { dim: usize, bias: bool },
}

/// One named module of the base model (its `named_modules()` path, without `base_model.model.`).
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    pub path: String,
    pub kind: ModuleKind,
    /// The output embedding (`lm_head`): never targeted by `"all-linear"`.
    pub is_output_head: bool,
}

impl ModuleInfo {
    /// Shapes of the module's own parameters, by name.
    pub fn param_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        match self.kind {
            ModuleKind::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let mut v = vec![("weight", vec![out_features, in_features])];
                if bias {
                    v.push(("bias", vec![out_features]));
                }
                v
            }
            ModuleKind::Embedding {
                num_embeddings,
                dim,
            } => vec![("weight", vec![num_embeddings, dim])],
            ModuleKind::Norm { dim, bias } => {
                let mut v = vec![("weight", vec![dim])];
                if bias {
                    v.push(("bias", vec![dim]));
                }
                v
            }
        }
    }
}

/// The modules of a base model, in `named_modules()` order, and its family (`model_type`).
#[derive(Debug, Clone)]
pub struct ModuleInventory {
    pub model_type: String,
    pub modules: Vec<ModuleInfo>,
}

impl ModuleInventory {
    pub fn find(&self, path: &str) -> Option<usize> {
        self.modules.iter().position(|m| m.path == path)
    }

    /// A few module paths, for error messages.
    pub fn examples(&self) -> String {
        let mut names: Vec<&str> = self.modules.iter().map(|m| m.path.as_str()).collect();
        names.truncate(12);
        names.join(", ")
    }
}

/// PEFT's per-architecture `target_modules` defaults (`utils/constants.py`).
pub fn default_targets(
    model_type: &str,
    peft_type: crate::config::PeftType,
) -> Option<Vec<&'static str>> {
    use crate::config::PeftType;
    let v: &[&str] = match (peft_type, model_type) {
        (PeftType::Ia3, "llama" | "mistral") => &["k_proj", "v_proj", "down_proj"],
        (PeftType::Ia3, "opt") => &["q_proj", "k_proj", "fc2"],
        (PeftType::Lora | PeftType::AdaLora, "llama" | "mistral" | "opt") => &["q_proj", "v_proj"],
        _ => return None,
    };
    Some(v.to_vec())
}

/// PEFT's per-architecture IA3 `feedforward_modules` defaults.
pub fn default_feedforward(model_type: &str) -> Option<Vec<&'static str>> {
    match model_type {
        "llama" | "mistral" => Some(vec!["down_proj"]),
        "opt" => Some(vec!["fc2"]),
        _ => None,
    }
}

/// The decisions of PEFT's `check_target_module_exists` for one config, precompiled.
pub struct Matcher {
    targets: TargetSpec,
    exclude: Option<TargetSpec>,
    modules_to_save: Vec<Pattern>,
    layers: Option<(Vec<usize>, Vec<Pattern>)>,
}

impl Matcher {
    /// Resolves a null `target_modules` with the architecture's default, as PEFT does.
    pub fn new(cfg: &AdapterConfig, model_type: &str) -> Result<Self> {
        let targets = match &cfg.target_modules {
            Some(t) => t.clone(),
            None => match default_targets(model_type, cfg.peft_type) {
                Some(v) => TargetSpec::List(v.into_iter().map(String::from).collect()),
                None => {
                    return Err(Error::InvalidConfig(format!(
                        "`target_modules` is null and PEFT has no default for model type `{model_type}`; please specify `target_modules` in the config"
                    )))
                }
            },
        };
        let mut modules_to_save = Vec::new();
        for m in cfg.modules_to_save.iter().flatten() {
            // `re.match(rf"(^|.*\.){m}($|\..*)", key)`
            modules_to_save.push(Pattern::compile(
                "modules_to_save",
                m,
                format!(r"\A(?:^|.*\.)(?:{m})(?:$|\..*)"),
            )?);
        }
        let layers = match (&cfg.layers_to_transform, &targets) {
            (Some(idx), TargetSpec::List(_)) if !idx.is_empty() => {
                let pats = match &cfg.layers_pattern {
                    Some(p) if !p.is_empty() => p
                        .iter()
                        .map(|lp| Pattern::layer_index("layers_pattern", lp))
                        .collect::<Result<Vec<_>>>()?,
                    // The lazy form picks the first numbered segment (the layer, not an expert).
                    _ => vec![Pattern::compile(
                        "layers_pattern",
                        "",
                        r"\A.*?\.[^.]*\.(\d+)\.".to_string(),
                    )?],
                };
                Some((idx.clone(), pats))
            }
            _ => None,
        };
        Ok(Matcher {
            targets,
            exclude: cfg.exclude_modules.clone(),
            modules_to_save,
            layers,
        })
    }

    pub fn targets(&self) -> &TargetSpec {
        &self.targets
    }

    /// Is this module excluded (by `exclude_modules` or because it is a modules_to_save module)?
    pub fn is_excluded(&self, name: &str) -> bool {
        if self.exclude.as_ref().is_some_and(|e| e.matches(name)) {
            return true;
        }
        self.modules_to_save.iter().any(|p| p.matches(name))
    }

    /// `check_target_module_exists` for one module (the `"all-linear"` case is resolved by the
    /// caller, which knows module kinds).
    pub fn is_target(&self, module: &ModuleInfo) -> bool {
        let name = module.path.as_str();
        if self.is_excluded(name) {
            return false;
        }
        match &self.targets {
            TargetSpec::AllLinear => {
                matches!(module.kind, ModuleKind::Linear { .. }) && !module.is_output_head
            }
            TargetSpec::Regex(p) => p.matches(name),
            TargetSpec::List(items) => {
                // A name listed exactly skips the layer filter (PEFT's `key in target_modules`).
                if items.iter().any(|t| t == name) {
                    return true;
                }
                if !self.targets.matches(name) {
                    return false;
                }
                match &self.layers {
                    None => true,
                    Some((idx, pats)) => pats
                        .iter()
                        .find_map(|p| p.capture_usize(name))
                        .is_some_and(|i| idx.contains(&i)),
                }
            }
        }
    }
}

/// `_set_trainable`: a module is wrapped for `modules_to_save` when its name ends with an entry
/// (plain `str.endswith`, as PEFT does).
pub fn is_module_to_save(cfg: &AdapterConfig, name: &str) -> bool {
    cfg.modules_to_save
        .iter()
        .flatten()
        .any(|m| name.ends_with(m.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(path: &str) -> ModuleInfo {
        ModuleInfo {
            path: path.into(),
            kind: ModuleKind::Linear {
                in_features: 4,
                out_features: 4,
                bias: false,
            },
            is_output_head: path == "lm_head",
        }
    }

    fn cfg(json: &str) -> AdapterConfig {
        AdapterConfig::from_json_str(json).unwrap()
    }

    #[test]
    fn list_means_exact_or_dot_suffix() {
        let c = cfg(r#"{"peft_type":"LORA","target_modules":["q_proj"]}"#);
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(m.is_target(&lin("model.layers.0.self_attn.q_proj")));
        assert!(m.is_target(&lin("q_proj")));
        assert!(!m.is_target(&lin("model.layers.0.self_attn.xq_proj")));
    }

    #[test]
    fn string_means_fullmatch() {
        let c = cfg(r#"{"peft_type":"LORA","target_modules":".*q_proj"}"#);
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(m.is_target(&lin("model.layers.0.self_attn.q_proj")));
        let c = cfg(r#"{"peft_type":"LORA","target_modules":"q_proj"}"#);
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(!m.is_target(&lin("model.layers.0.self_attn.q_proj")));
        // look-ahead, as used for VLMs
        let c = cfg(r#"{"peft_type":"LORA","target_modules":"^(?!.*vision).*q_proj"}"#);
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(m.is_target(&lin("model.layers.0.self_attn.q_proj")));
        assert!(!m.is_target(&lin("vision.layers.0.q_proj")));
    }

    #[test]
    fn layers_to_transform_with_and_without_pattern() {
        let c = cfg(
            r#"{"peft_type":"LORA","target_modules":["q_proj"],"layers_to_transform":[1],"layers_pattern":"layers"}"#,
        );
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(!m.is_target(&lin("model.layers.0.self_attn.q_proj")));
        assert!(m.is_target(&lin("model.layers.1.self_attn.q_proj")));
        let c = cfg(r#"{"peft_type":"LORA","target_modules":["w"],"layers_to_transform":0}"#);
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(m.is_target(&lin("model.layers.0.experts.3.w")));
        assert!(!m.is_target(&lin("model.layers.1.experts.0.w")));
    }

    #[test]
    fn exclude_and_all_linear() {
        let c = cfg(
            r#"{"peft_type":"LORA","target_modules":"all-linear","exclude_modules":["k_proj"]}"#,
        );
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(m.is_target(&lin("model.layers.0.self_attn.q_proj")));
        assert!(!m.is_target(&lin("model.layers.0.self_attn.k_proj")));
        assert!(!m.is_target(&lin("lm_head")));
    }

    #[test]
    fn null_targets_use_peft_defaults() {
        let c = cfg(r#"{"peft_type":"LORA"}"#);
        let m = Matcher::new(&c, "llama").unwrap();
        assert!(m.is_target(&lin("model.layers.0.self_attn.v_proj")));
        assert!(!m.is_target(&lin("model.layers.0.self_attn.k_proj")));
        assert!(Matcher::new(&c, "unknown-arch").is_err());
    }
}

/// PEFT applies this to `target_modules` lists of 20 or more entries (not for IA3).
pub const MIN_TARGET_MODULES_FOR_OPTIMIZATION: usize = 20;

/// PEFT's `_find_minimal_target_modules`: the fewest suffixes that select exactly `targets`
/// among all module names (containers included, as `named_modules()` lists them).
pub fn minimal_target_modules(targets: &[String], inventory: &ModuleInventory) -> Vec<String> {
    use std::collections::BTreeSet;
    fn suffixes(s: &str) -> Vec<String> {
        let parts: Vec<&str> = s.split('.').collect();
        // shortest first
        (0..parts.len())
            .rev()
            .map(|i| parts[i..].join("."))
            .collect()
    }
    let target_set: BTreeSet<&str> = targets.iter().map(String::as_str).collect();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for m in &inventory.modules {
        let parts: Vec<&str> = m.path.split('.').collect();
        for i in 1..=parts.len() {
            names.insert(parts[..i].join("."));
        }
    }
    let dotted: Vec<String> = targets.iter().map(|t| format!(".{t}")).collect();
    let others: BTreeSet<String> = names
        .iter()
        .filter(|n| {
            !target_set.contains(n.as_str()) && !dotted.iter().any(|d| n.ends_with(d.as_str()))
        })
        .flat_map(|n| suffixes(n))
        .collect();
    let mut items: Vec<(Vec<String>, &str)> =
        target_set.iter().map(|t| (suffixes(t), *t)).collect();
    items.sort();
    let mut required: BTreeSet<String> = BTreeSet::new();
    for (sufs, item) in items {
        for s in sufs {
            if required.contains(&s) || others.contains(&s) {
                continue;
            }
            if !required.iter().any(|r| item.ends_with(&format!(".{r}"))) {
                required.insert(s);
                break;
            }
        }
    }
    if required.is_empty() {
        target_set.into_iter().map(String::from).collect()
    } else {
        required.into_iter().collect()
    }
}

#[cfg(test)]
mod minimal_tests {
    use super::*;

    #[test]
    fn condenses_like_peft() {
        let mut modules = Vec::new();
        let mut targets = Vec::new();
        for i in 0..12 {
            for p in ["q_proj", "v_proj", "k_proj"] {
                let path = format!("model.layers.{i}.self_attn.{p}");
                if p != "k_proj" {
                    targets.push(path.clone());
                }
                modules.push(ModuleInfo {
                    path,
                    kind: ModuleKind::Linear {
                        in_features: 1,
                        out_features: 1,
                        bias: false,
                    },
                    is_output_head: false,
                });
            }
        }
        let inv = ModuleInventory {
            model_type: "llama".into(),
            modules,
        };
        assert_eq!(
            minimal_target_modules(&targets, &inv),
            vec!["q_proj".to_string(), "v_proj".to_string()]
        );
    }
}
