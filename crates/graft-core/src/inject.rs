//! Injection: from a config and a state dict to the adapter layers of one base model.
//!
//! Fails closed: tensors that match no module, targeted modules whose tensors are missing and
//! shape mismatches are one error naming every offending key and the likely cause, unless the
//! caller opts into a partial load.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use candle_core::Tensor;

use crate::adapter::{AdaLora, Dora, Ia3, LoraEmbedding, LoraLinear, ModuleAdapter};
use crate::config::{AdapterConfig, Bias, PeftType};
use crate::error::{Error, Result};
use crate::matching::{is_module_to_save, Matcher, ModuleInventory, ModuleKind};
use crate::tensors::{check_finite, LoadedTensor};

/// The prefix PEFT puts on every saved key (the PeftModel → LoraModel wrappers).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Replacement parameters for one module (`modules_to_save` copies, saved biases, embeddings).
#[derive(Debug, Clone, Default)]
pub struct ModuleParams {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

/// One line of the load report: what went on a module.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub module: String,
    pub kind: String,
    pub r: Option<usize>,
    pub alpha: Option<f64>,
    pub scale: Option<f64>,
    pub tensors: Vec<String>,
}

/// What a load did: every target, every tensor used, and every warning.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub method: String,
    pub targets: Vec<TargetReport>,
    pub modules_to_save: Vec<String>,
    pub base_overrides: Vec<String>,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "method: {}", self.method)?;
        writeln!(f, "targeted modules: {}", self.targets.len())?;
        for t in &self.targets {
            write!(f, "  {} [{}]", t.module, t.kind)?;
            if let Some(r) = t.r {
                write!(f, " r={r}")?;
            }
            if let Some(a) = t.alpha {
                write!(f, " alpha={a}")?;
            }
            if let Some(s) = t.scale {
                write!(f, " scale={s:.6}")?;
            }
            writeln!(f, " <- {}", t.tensors.join(", "))?;
        }
        if !self.modules_to_save.is_empty() {
            writeln!(
                f,
                "modules_to_save (full copies): {}",
                self.modules_to_save.join(", ")
            )?;
        }
        if !self.base_overrides.is_empty() {
            writeln!(
                f,
                "base parameters replaced while loaded (as PEFT overwrites them): {}",
                self.base_overrides.join(", ")
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// An adapter injected into one base model.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub name: String,
    pub config: AdapterConfig,
    /// Module index → layer.
    pub layers: HashMap<usize, ModuleAdapter>,
    /// Module index → `modules_to_save` copy (used while this adapter is active).
    pub saved_modules: HashMap<usize, ModuleParams>,
    /// Module index → parameters this adapter overwrote in the base (saved biases, embedding
    /// `base_layer.weight`): PEFT writes them into the base at load, so they apply whether the
    /// adapter is active or not, until it is deleted.
    pub base_params: HashMap<usize, ModuleParams>,
    /// The adapter's state dict, keys without `base_model.model.`, as PEFT saves it.
    pub state: BTreeMap<String, LoadedTensor>,
    pub report: LoadReport,
}

/// Options for [`build_adapter`].
#[derive(Debug, Clone, Default)]
pub struct InjectOptions {
    /// Accept a partial load (some tensors unused or missing) with warnings.
    pub allow_partial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    LoraA,
    LoraB,
    LoraBBias,
    EmbA,
    EmbB,
    Magnitude,
    Ia3,
    AdaA,
    AdaB,
    AdaE,
    AdaRanknum,
    BaseWeight,
    BaseBias,
    Weight,
    Bias,
}

const SUFFIXES: &[(&str, Role)] = &[
    (".lora_A.weight", Role::LoraA),
    (".lora_B.weight", Role::LoraB),
    (".lora_B.bias", Role::LoraBBias),
    (".lora_embedding_A", Role::EmbA),
    (".lora_embedding_B", Role::EmbB),
    (".lora_magnitude_vector", Role::Magnitude),
    (".lora_magnitude_vector.weight", Role::Magnitude),
    (".ia3_l", Role::Ia3),
    (".lora_A", Role::AdaA),
    (".lora_B", Role::AdaB),
    (".lora_E", Role::AdaE),
    (".ranknum", Role::AdaRanknum),
    (".base_layer.weight", Role::BaseWeight),
    (".base_layer.bias", Role::BaseBias),
    (".weight", Role::Weight),
    (".bias", Role::Bias),
];

/// Strips PEFT's `base_model.model.` prefix.
pub fn strip_prefix(key: &str) -> &str {
    key.strip_prefix(PEFT_PREFIX).unwrap_or(key)
}

#[derive(Default)]
struct Problems {
    unexpected: Vec<String>,
    missing: Vec<String>,
    shapes: Vec<String>,
    vocab_hint: Option<String>,
}

impl Problems {
    fn is_empty(&self) -> bool {
        self.unexpected.is_empty() && self.missing.is_empty() && self.shapes.is_empty()
    }

    fn render(&self, inventory: &ModuleInventory, n_tensors: usize, used: usize) -> String {
        let mut s = String::new();
        let list = |v: &Vec<String>| {
            let mut shown: Vec<String> = v.iter().take(20).cloned().collect();
            if v.len() > 20 {
                shown.push(format!("… and {} more", v.len() - 20));
            }
            shown.join("\n    ")
        };
        if !self.unexpected.is_empty() {
            let _ = writeln!(
                s,
                "  unexpected tensors (they match no targeted module of the base):\n    {}",
                list(&self.unexpected)
            );
        }
        if !self.missing.is_empty() {
            let _ = writeln!(
                s,
                "  missing tensors (targeted modules would get no or random weights):\n    {}",
                list(&self.missing)
            );
        }
        if !self.shapes.is_empty() {
            let _ = writeln!(s, "  shape mismatches:\n    {}", list(&self.shapes));
        }
        let _ = write!(s, "  likely cause: ");
        if used == 0 && n_tensors > 0 && !self.unexpected.is_empty() {
            let _ = write!(
                s,
                "none of the adapter's tensors names a module of this base — a wrong base model or a key-prefix mismatch (the base has modules such as: {})",
                inventory.examples()
            );
        } else if let Some(h) = &self.vocab_hint {
            let _ = write!(s, "{h}");
        } else if !self.shapes.is_empty() {
            let _ = write!(
                s,
                "the adapter was trained on a base with other dimensions, or `r`/`rank_pattern` in adapter_config.json does not match the tensors (graft never infers r from shapes)"
            );
        } else if !self.missing.is_empty() && self.unexpected.is_empty() {
            let _ = write!(
                s,
                "the config targets modules the file has no weights for — the config and the weights do not belong together, or the file is truncated"
            );
        } else {
            let _ = write!(
                s,
                "the adapter was made for a different architecture or module layout"
            );
        }
        let _ = write!(
            s,
            "\n  (pass allow_partial / --allow-partial to load what matches anyway)"
        );
        s
    }
}

/// Injects `config` + `tensors` (keys with or without `base_model.model.`) into the modules of
/// `inventory`. `base_weight(i)` gives module i's base weight (needed for DoRA's norm).
pub fn build_adapter(
    name: &str,
    config: AdapterConfig,
    tensors: BTreeMap<String, LoadedTensor>,
    inventory: &ModuleInventory,
    base_weight: &dyn Fn(usize) -> Result<Tensor>,
    opts: &InjectOptions,
) -> Result<Adapter> {
    validate_name(name)?;
    let mut config = config;
    config.resolve_defaults(&inventory.model_type)?;
    let matcher = Matcher::new(&config, &inventory.model_type)?;
    let mut report = LoadReport {
        method: describe_method(&config),
        warnings: config.warnings.clone(),
        ..LoadReport::default()
    };

    // 1. Which modules are targeted, which are saved whole.
    let mut targets: Vec<usize> = Vec::new();
    let mut unsupported: Vec<String> = Vec::new();
    for (i, m) in inventory.modules.iter().enumerate() {
        if !matcher.is_target(m) {
            continue;
        }
        let ok = matches!(
            (&m.kind, config.peft_type),
            (ModuleKind::Linear { .. }, _) | (ModuleKind::Embedding { .. }, PeftType::Lora)
        );
        if ok {
            targets.push(i);
        } else {
            unsupported.push(m.path.clone());
        }
    }
    if !unsupported.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "Target module(s) {unsupported:?} are not supported by {}: only Linear{} layers can be adapted",
            config.peft_type.as_str(),
            if config.peft_type == PeftType::Lora { " and Embedding" } else { "" }
        )));
    }
    if targets.is_empty() {
        return Err(Error::NoTargetModules {
            targets: matcher.targets().describe(),
            examples: inventory.examples(),
        });
    }
    let saved: Vec<usize> = inventory
        .modules
        .iter()
        .enumerate()
        .filter(|(_, m)| is_module_to_save(&config, &m.path))
        .map(|(i, _)| i)
        .collect();
    if let Some(mts) = &config.modules_to_save {
        if !mts.is_empty() && saved.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "modules_to_save {mts:?} matches no module of the base model (it has modules such as: {})",
                inventory.examples()
            )));
        }
    }
    // Unmatched rank/alpha pattern keys are ignored with a warning, as in PEFT 0.21.
    for (field, keys) in [
        (
            "rank_pattern",
            config
                .rank_pattern
                .iter()
                .map(|(p, _)| p)
                .collect::<Vec<_>>(),
        ),
        (
            "alpha_pattern",
            config.alpha_pattern.iter().map(|(p, _)| p).collect(),
        ),
    ] {
        let unmatched: Vec<&str> = keys
            .iter()
            .filter(|p| {
                !targets
                    .iter()
                    .any(|&i| p.matches(&inventory.modules[i].path))
            })
            .map(|p| p.source.as_str())
            .collect();
        if !unmatched.is_empty() {
            report.warnings.push(format!(
                "The following {field} keys did not match any targeted module and were ignored: {unmatched:?}"
            ));
        }
    }

    // 2. Sort the tensors by module and role.
    let mut problems = Problems::default();
    let mut by_module: HashMap<usize, HashMap<Role, (String, LoadedTensor)>> = HashMap::new();
    let n_tensors = tensors.len();
    for (raw_key, t) in tensors {
        let key = strip_prefix(&raw_key).to_string();
        let found = SUFFIXES.iter().find_map(|(suf, role)| {
            let path = key.strip_suffix(suf)?;
            inventory.find(path).map(|i| (i, *role))
        });
        let Some((i, role)) = found else {
            problems.unexpected.push(raw_key);
            continue;
        };
        let is_target = targets.contains(&i);
        let is_saved = saved.contains(&i);
        let accepted = match role {
            Role::Weight | Role::Bias if is_saved => true,
            Role::Bias => config.bias == Bias::All,
            Role::Weight => false,
            Role::BaseBias => is_target && config.bias != Bias::None,
            Role::BaseWeight => is_target,
            Role::LoraA | Role::LoraB | Role::LoraBBias | Role::Magnitude => {
                is_target && config.peft_type == PeftType::Lora
            }
            Role::EmbA | Role::EmbB => is_target && config.peft_type == PeftType::Lora,
            Role::Ia3 => is_target && config.peft_type == PeftType::Ia3,
            Role::AdaA | Role::AdaB | Role::AdaE | Role::AdaRanknum => {
                is_target && config.peft_type == PeftType::AdaLora
            }
        };
        if !accepted {
            problems.unexpected.push(raw_key);
            continue;
        }
        if role == Role::AdaRanknum {
            // Old AdaLoRA files save `ranknum`; PEFT 0.21 ignores it (ranknum = init_r).
            continue;
        }
        check_finite(&raw_key, &t.tensor)?;
        by_module.entry(i).or_default().insert(role, (key, t));
    }

    // 3. Build each target's layer, checking shapes.
    let mut adapter = Adapter {
        name: name.to_string(),
        config,
        layers: HashMap::new(),
        saved_modules: HashMap::new(),
        base_params: HashMap::new(),
        state: BTreeMap::new(),
        report,
    };
    let mut used = 0usize;
    let empty = HashMap::new();
    for &i in &targets {
        let m = &inventory.modules[i];
        let got = by_module.get(&i).unwrap_or(&empty);
        match build_layer(
            &adapter.config,
            i,
            inventory,
            got,
            base_weight,
            &mut problems,
        )? {
            Some((layer, rep)) => {
                for k in &rep.tensors {
                    if let Some((_, (key, t))) = got.iter().find(|(_, (key, _))| key == k) {
                        adapter.state.insert(key.clone(), t.clone());
                        used += 1;
                    }
                }
                adapter.layers.insert(i, layer);
                adapter.report.targets.push(rep);
            }
            None => adapter
                .report
                .warnings
                .push(format!("{}: no adapter (partial load)", m.path)),
        }
    }
    // modules_to_save copies, saved biases and base-layer weights.
    for (&i, roles) in &by_module {
        let m = &inventory.modules[i];
        let shapes = m.param_shapes();
        for (role, (key, t)) in roles {
            let (param, into_saved) = match role {
                Role::Weight => ("weight", true),
                Role::Bias if saved.contains(&i) => ("bias", true),
                Role::Bias | Role::BaseBias => ("bias", false),
                Role::BaseWeight => ("weight", false),
                _ => continue,
            };
            let Some((_, expected)) = shapes.iter().find(|(n, _)| *n == param) else {
                problems
                    .unexpected
                    .push(format!("{key} (module {} has no {param})", m.path));
                continue;
            };
            if t.tensor.dims() != expected.as_slice() {
                if matches!(m.kind, ModuleKind::Embedding { .. }) || m.is_output_head {
                    problems.vocab_hint = Some(format!(
                        "the adapter carries `{key}` with shape {:?} but the base has {:?}: the vocabulary was resized when the adapter was trained (resize the base's embeddings to match, or use the base the adapter was trained on)",
                        t.tensor.dims(),
                        expected
                    ));
                }
                problems.shapes.push(format!(
                    "{key}: expected {expected:?}, got {:?}",
                    t.tensor.dims()
                ));
                continue;
            }
            let slot = if into_saved {
                adapter.saved_modules.entry(i).or_default()
            } else {
                adapter.base_params.entry(i).or_default()
            };
            if param == "weight" {
                slot.weight = Some(t.tensor.clone());
            } else {
                slot.bias = Some(t.tensor.clone());
            }
            let label = format!("{}.{param}", m.path);
            if into_saved {
                if !adapter.report.modules_to_save.contains(&m.path) {
                    adapter.report.modules_to_save.push(m.path.clone());
                }
            } else {
                adapter.report.base_overrides.push(label);
            }
            adapter.state.insert(key.clone(), t.clone());
            used += 1;
        }
    }
    // Every modules_to_save module must come with its parameters.
    for &i in &saved {
        let m = &inventory.modules[i];
        for (param, _) in m.param_shapes() {
            let have = adapter.saved_modules.get(&i).is_some_and(|p| {
                if param == "weight" {
                    p.weight.is_some()
                } else {
                    p.bias.is_some()
                }
            });
            if !have {
                problems
                    .missing
                    .push(format!("{}.{param} (modules_to_save)", m.path));
            }
        }
    }
    // bias="lora_only": every targeted Linear with a bias should carry it.
    if adapter.config.bias == Bias::LoraOnly {
        for &i in &targets {
            let m = &inventory.modules[i];
            if matches!(m.kind, ModuleKind::Linear { bias: true, .. })
                && adapter.base_params.get(&i).is_none_or(|p| p.bias.is_none())
            {
                problems
                    .missing
                    .push(format!("{}.base_layer.bias (bias=\"lora_only\")", m.path));
            }
        }
    }

    if !problems.is_empty() {
        if opts.allow_partial {
            let text = problems.render(inventory, n_tensors, used);
            adapter
                .report
                .warnings
                .push(format!("partial load accepted:\n{text}"));
        } else {
            return Err(Error::AdapterMismatch {
                adapter: name.to_string(),
                report: problems.render(inventory, n_tensors, used),
            });
        }
    }
    if adapter.layers.is_empty() && adapter.saved_modules.is_empty() {
        return Err(Error::AdapterMismatch {
            adapter: name.to_string(),
            report: "  nothing of the adapter could be attached: it would silently do nothing"
                .into(),
        });
    }
    zero_effect_warning(&mut adapter)?;
    Ok(adapter)
}

fn zero_effect_warning(adapter: &mut Adapter) -> Result<()> {
    let mut any_nonzero = false;
    for l in adapter.layers.values() {
        let nonzero = match l {
            ModuleAdapter::Lora(l) => {
                l.b.abs()?.max_all()?.to_scalar::<f32>()? > 0.0
                    || l.dora.is_some()
                    || l.b_bias.is_some()
            }
            ModuleAdapter::LoraEmbedding(e) => {
                e.a.abs()?.max_all()?.to_scalar::<f32>()? > 0.0
                    && e.b.abs()?.max_all()?.to_scalar::<f32>()? > 0.0
            }
            ModuleAdapter::Ia3(i) => {
                (i.l.clone() - 1.0)?.abs()?.max_all()?.to_scalar::<f32>()? > 0.0
            }
            ModuleAdapter::AdaLora(a) => a.e.abs()?.max_all()?.to_scalar::<f32>()? > 0.0,
        };
        any_nonzero |= nonzero;
    }
    if !any_nonzero && adapter.saved_modules.is_empty() && adapter.base_params.is_empty() {
        adapter.report.warnings.push(
            "every adapter delta is zero (e.g. all lora_B are 0): the adapter does not change the output — an untrained adapter?".into(),
        );
    }
    Ok(())
}

fn describe_method(c: &AdapterConfig) -> String {
    match c.peft_type {
        PeftType::Lora => {
            let mut s = "LORA".to_string();
            if c.use_dora {
                s.push_str(" (DoRA)");
            }
            if c.use_rslora {
                s.push_str(" (rsLoRA: scale = alpha/sqrt(r))");
            }
            s
        }
        PeftType::Ia3 => "IA3".into(),
        PeftType::AdaLora => "ADALORA".into(),
    }
}

/// Names must not break key parsing or folder layout.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::BadAdapterName {
            name: name.into(),
            why: why.into(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.contains(['/', '\\', '.']) || name == ".." {
        return bad("it may not contain '/', '\\' or '.' (it names a folder and a key segment)");
    }
    Ok(())
}

fn shape_check(
    key: &str,
    t: &LoadedTensor,
    expected: &[usize],
    hint: &str,
    problems: &mut Problems,
) -> bool {
    if t.tensor.dims() == expected {
        true
    } else {
        problems.shapes.push(format!(
            "{key}: expected {expected:?}, got {:?}{hint}",
            t.tensor.dims()
        ));
        false
    }
}

type Got = HashMap<Role, (String, LoadedTensor)>;

fn take<'a>(
    got: &'a Got,
    role: Role,
    path: &str,
    suffix: &str,
    problems: &mut Problems,
) -> Option<&'a (String, LoadedTensor)> {
    let r = got.get(&role);
    if r.is_none() {
        problems.missing.push(format!("{path}{suffix}"));
    }
    r
}

fn build_layer(
    cfg: &AdapterConfig,
    i: usize,
    inventory: &ModuleInventory,
    got: &Got,
    base_weight: &dyn Fn(usize) -> Result<Tensor>,
    problems: &mut Problems,
) -> Result<Option<(ModuleAdapter, TargetReport)>> {
    let m = &inventory.modules[i];
    let path = m.path.as_str();
    let n_problems = problems.missing.len() + problems.shapes.len();
    let mut rep = TargetReport {
        module: path.to_string(),
        kind: String::new(),
        r: None,
        alpha: None,
        scale: None,
        tensors: Vec::new(),
    };
    let ok = |problems: &Problems| problems.missing.len() + problems.shapes.len() == n_problems;
    match (cfg.peft_type, &m.kind) {
        (
            PeftType::Lora,
            ModuleKind::Linear {
                in_features,
                out_features,
                ..
            },
        ) => {
            let (r, alpha, s) = cfg.lora_scale(path);
            let rhint = format!(
                " (config says r={r} for this module; graft never infers r from tensor shapes)"
            );
            let a = take(got, Role::LoraA, path, ".lora_A.weight", problems);
            let b = take(got, Role::LoraB, path, ".lora_B.weight", problems);
            let bb = if cfg.lora_bias {
                take(got, Role::LoraBBias, path, ".lora_B.bias", problems)
            } else {
                None
            };
            let mag = if cfg.use_dora {
                take(
                    got,
                    Role::Magnitude,
                    path,
                    ".lora_magnitude_vector",
                    problems,
                )
            } else {
                None
            };
            if let Some((k, t)) = a {
                shape_check(k, t, &[r, *in_features], &rhint, problems);
            }
            if let Some((k, t)) = b {
                shape_check(k, t, &[*out_features, r], &rhint, problems);
            }
            if let Some((k, t)) = bb {
                shape_check(k, t, &[*out_features], "", problems);
            }
            if let Some((k, t)) = mag {
                shape_check(k, t, &[*out_features], "", problems);
            }
            if !ok(problems) {
                return Ok(None);
            }
            let (Some((ka, a)), Some((kb, b))) = (a, b) else {
                return Ok(None);
            };
            rep.tensors = vec![ka.clone(), kb.clone()];
            if !cfg.lora_bias && got.contains_key(&Role::LoraBBias) {
                problems.unexpected.push(format!(
                    "{path}.lora_B.bias (lora_bias is false in the config)"
                ));
            }
            if !cfg.use_dora && got.contains_key(&Role::Magnitude) {
                problems.unexpected.push(format!(
                    "{path}.lora_magnitude_vector (use_dora is false in the config)"
                ));
            }
            let dora = match mag {
                Some((km, mt)) => {
                    rep.tensors.push(km.clone());
                    Some(Dora::new(
                        &base_weight(i)?,
                        &a.tensor,
                        &b.tensor,
                        s,
                        mt.tensor.clone(),
                    )?)
                }
                None => None,
            };
            if let Some((kbb, _)) = bb {
                rep.tensors.push(kbb.clone());
            }
            rep.kind = if dora.is_some() {
                "dora".into()
            } else {
                "lora".into()
            };
            rep.r = Some(r);
            rep.alpha = Some(alpha);
            rep.scale = Some(s);
            let layer = ModuleAdapter::Lora(LoraLinear {
                a: a.tensor.clone(),
                b: b.tensor.clone(),
                b_bias: bb.map(|(_, t)| t.tensor.clone()),
                r,
                alpha,
                scale: s,
                dora,
            });
            Ok(Some((layer, rep)))
        }
        (
            PeftType::Lora,
            ModuleKind::Embedding {
                num_embeddings,
                dim,
            },
        ) => {
            if cfg.use_dora {
                return Err(Error::UnsupportedFeature {
                    field: "use_dora".into(),
                    value: "true".into(),
                    why: format!("DoRA on an embedding ({path}) is not implemented yet"),
                });
            }
            let (r, alpha, s) = cfg.lora_scale(path);
            let rhint = format!(" (config says r={r} for this module)");
            let a = take(got, Role::EmbA, path, ".lora_embedding_A", problems);
            let b = take(got, Role::EmbB, path, ".lora_embedding_B", problems);
            if let Some((k, t)) = a {
                if t.tensor.dims().len() == 2
                    && t.tensor.dims()[0] == r
                    && t.tensor.dims()[1] != *num_embeddings
                {
                    problems.vocab_hint = Some(format!(
                        "`{k}` covers {} tokens but the base's vocabulary has {num_embeddings}: the vocabulary was resized when the adapter was trained",
                        t.tensor.dims()[1]
                    ));
                }
                shape_check(k, t, &[r, *num_embeddings], &rhint, problems);
            }
            if let Some((k, t)) = b {
                shape_check(k, t, &[*dim, r], &rhint, problems);
            }
            if !ok(problems) {
                return Ok(None);
            }
            let (Some((ka, a)), Some((kb, b))) = (a, b) else {
                return Ok(None);
            };
            rep.tensors = vec![ka.clone(), kb.clone()];
            rep.kind = "lora-embedding".into();
            rep.r = Some(r);
            rep.alpha = Some(alpha);
            rep.scale = Some(s);
            Ok(Some((
                ModuleAdapter::LoraEmbedding(LoraEmbedding {
                    a: a.tensor.clone(),
                    b: b.tensor.clone(),
                    r,
                    alpha,
                    scale: s,
                }),
                rep,
            )))
        }
        (
            PeftType::Ia3,
            ModuleKind::Linear {
                in_features,
                out_features,
                ..
            },
        ) => {
            let ff = cfg.is_feedforward(path);
            let l = take(got, Role::Ia3, path, ".ia3_l", problems);
            let expected = if ff {
                vec![1, *in_features]
            } else {
                vec![*out_features, 1]
            };
            if let Some((k, t)) = l {
                let hint = if ff {
                    " (a feed-forward module: IA3 scales its input)"
                } else {
                    " (IA3 scales this module's output)"
                };
                shape_check(k, t, &expected, hint, problems);
            }
            if !ok(problems) {
                return Ok(None);
            }
            let Some((kl, l)) = l else { return Ok(None) };
            rep.tensors = vec![kl.clone()];
            rep.kind = if ff {
                "ia3 (scales input)".into()
            } else {
                "ia3 (scales output)".into()
            };
            Ok(Some((
                ModuleAdapter::Ia3(Ia3 {
                    l: l.tensor.flatten_all()?,
                    feedforward: ff,
                }),
                rep,
            )))
        }
        (
            PeftType::AdaLora,
            ModuleKind::Linear {
                in_features,
                out_features,
                ..
            },
        ) => {
            let init_r = cfg.init_r;
            let mask_key = format!("{path}.lora_E");
            let r = cfg
                .adalora_rank_pattern
                .iter()
                .find(|(k, _)| {
                    let k = strip_prefix(k);
                    k == mask_key
                        || k.strip_prefix(mask_key.as_str())
                            .is_some_and(|rest| rest.starts_with('.'))
                })
                .map(|(_, mask)| mask.iter().filter(|b| **b).count())
                .unwrap_or(init_r);
            let hint = format!(
                " (AdaLoRA rank for this module is {r}: init_r={init_r} reduced by rank_pattern)"
            );
            let a = take(got, Role::AdaA, path, ".lora_A", problems);
            let b = take(got, Role::AdaB, path, ".lora_B", problems);
            let e = take(got, Role::AdaE, path, ".lora_E", problems);
            if let Some((k, t)) = a {
                shape_check(k, t, &[r, *in_features], &hint, problems);
            }
            if let Some((k, t)) = b {
                shape_check(k, t, &[*out_features, r], &hint, problems);
            }
            if let Some((k, t)) = e {
                shape_check(k, t, &[r, 1], &hint, problems);
            }
            if !ok(problems) {
                return Ok(None);
            }
            let (Some((ka, a)), Some((kb, b)), Some((ke, e))) = (a, b, e) else {
                return Ok(None);
            };
            let scaling = if cfg.lora_alpha > 0.0 {
                cfg.lora_alpha
            } else {
                r as f64
            };
            let ranknum = init_r as f64;
            rep.tensors = vec![ka.clone(), kb.clone(), ke.clone()];
            rep.kind = "adalora".into();
            rep.r = Some(r);
            rep.alpha = Some(cfg.lora_alpha);
            rep.scale = Some(scaling / (ranknum + 1e-5));
            Ok(Some((
                ModuleAdapter::AdaLora(AdaLora {
                    a: a.tensor.clone(),
                    e: e.tensor.clone(),
                    b: b.tensor.clone(),
                    r,
                    scaling,
                    ranknum,
                }),
                rep,
            )))
        }
        _ => Ok(None),
    }
}
