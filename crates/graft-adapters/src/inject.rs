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
            "\n  (a partial load, allow_partial, loads what matches anyway)"
        );
        s
    }
}

/// Tensors of one module, by role: (key without `base_model.model.`, tensor).
type ByModule = HashMap<usize, HashMap<Role, (String, LoadedTensor)>>;

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
    let mut report = LoadReport {
        method: describe_method(&config),
        warnings: config.warnings.clone(),
        ..LoadReport::default()
    };
    let (targets, saved) = select_modules(&config, inventory, &mut report)?;
    let mut problems = Problems::default();
    let n_tensors = tensors.len();
    let by_module = sort_tensors(tensors, &config, inventory, &targets, &saved, &mut problems)?;
    let mut adapter = Adapter {
        name: name.to_string(),
        config,
        layers: HashMap::new(),
        saved_modules: HashMap::new(),
        base_params: HashMap::new(),
        state: BTreeMap::new(),
        report,
    };
    let mut used = attach_layers(
        &mut adapter,
        &targets,
        &by_module,
        inventory,
        base_weight,
        &mut problems,
    )?;
    used += attach_params(&mut adapter, &by_module, &saved, inventory, &mut problems);
    check_complete(&adapter, &targets, &saved, inventory, &mut problems);
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

/// Which modules are targeted (PEFT's matching) and which are saved whole
/// (`modules_to_save`); rank/alpha pattern keys that match no target are warned about.
fn select_modules(
    config: &AdapterConfig,
    inventory: &ModuleInventory,
    report: &mut LoadReport,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let matcher = Matcher::new(config, &inventory.model_type)?;
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
        .filter(|(_, m)| is_module_to_save(config, &m.path))
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
    Ok((targets, saved))
}

/// Sorts the tensors by module and role; a tensor no targeted or saved module takes is
/// unexpected.
fn sort_tensors(
    tensors: BTreeMap<String, LoadedTensor>,
    config: &AdapterConfig,
    inventory: &ModuleInventory,
    targets: &[usize],
    saved: &[usize],
    problems: &mut Problems,
) -> Result<ByModule> {
    let mut by_module: ByModule = HashMap::new();
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
    Ok(by_module)
}

/// Builds each target's layer, checking shapes; returns how many tensors were used.
fn attach_layers(
    adapter: &mut Adapter,
    targets: &[usize],
    by_module: &ByModule,
    inventory: &ModuleInventory,
    base_weight: &dyn Fn(usize) -> Result<Tensor>,
    problems: &mut Problems,
) -> Result<usize> {
    let mut used = 0usize;
    let empty = HashMap::new();
    for &i in targets {
        let m = &inventory.modules[i];
        let got = by_module.get(&i).unwrap_or(&empty);
        match build_layer(&adapter.config, i, inventory, got, base_weight, problems)? {
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
    Ok(used)
}

/// Attaches `modules_to_save` copies, saved biases and base-layer weights (each checked
/// against the module's parameter shapes); returns how many tensors were used.
fn attach_params(
    adapter: &mut Adapter,
    by_module: &ByModule,
    saved: &[usize],
    inventory: &ModuleInventory,
    problems: &mut Problems,
) -> usize {
    let mut used = 0usize;
    for (&i, roles) in by_module {
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
    used
}

/// What must come with the adapter: every parameter of a `modules_to_save` module, and with
/// `bias="lora_only"` the bias of every targeted Linear that has one.
fn check_complete(
    adapter: &Adapter,
    targets: &[usize],
    saved: &[usize],
    inventory: &ModuleInventory,
    problems: &mut Problems,
) {
    for &i in saved {
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
    if adapter.config.bias == Bias::LoraOnly {
        for &i in targets {
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

/// What building one target's layer needs: the config, the module, its tensors by role, and
/// where problems are collected.
struct Target<'a> {
    cfg: &'a AdapterConfig,
    i: usize,
    path: &'a str,
    got: &'a Got,
    problems: &'a mut Problems,
    /// Missing + shape problems before this module: any new one means it cannot be built.
    before: usize,
}

impl Target<'_> {
    fn take(&mut self, role: Role, suffix: &str) -> Option<&(String, LoadedTensor)> {
        take(self.got, role, self.path, suffix, self.problems)
    }

    fn check(&mut self, t: Option<&(String, LoadedTensor)>, expected: &[usize], hint: &str) {
        if let Some((k, t)) = t {
            shape_check(k, t, expected, hint, self.problems);
        }
    }

    /// No missing tensor and no shape mismatch for this module.
    fn ok(&self) -> bool {
        self.problems.missing.len() + self.problems.shapes.len() == self.before
    }

    fn report(&self, kind: &str, tensors: &[&String]) -> TargetReport {
        TargetReport {
            module: self.path.to_string(),
            kind: kind.into(),
            r: None,
            alpha: None,
            scale: None,
            tensors: tensors.iter().map(|k| (*k).clone()).collect(),
        }
    }
}

/// The layer of target module `i` (None when its tensors are missing or misshapen: the
/// problems say why).
fn build_layer(
    cfg: &AdapterConfig,
    i: usize,
    inventory: &ModuleInventory,
    got: &Got,
    base_weight: &dyn Fn(usize) -> Result<Tensor>,
    problems: &mut Problems,
) -> Result<Option<(ModuleAdapter, TargetReport)>> {
    let m = &inventory.modules[i];
    let before = problems.missing.len() + problems.shapes.len();
    let mut t = Target {
        cfg,
        i,
        path: m.path.as_str(),
        got,
        problems,
        before,
    };
    match (cfg.peft_type, &m.kind) {
        (
            PeftType::Lora,
            ModuleKind::Linear {
                in_features,
                out_features,
                ..
            },
        ) => lora_linear(&mut t, *in_features, *out_features, base_weight),
        (
            PeftType::Lora,
            ModuleKind::Embedding {
                num_embeddings,
                dim,
            },
        ) => lora_embedding(&mut t, *num_embeddings, *dim),
        (
            PeftType::Ia3,
            ModuleKind::Linear {
                in_features,
                out_features,
                ..
            },
        ) => ia3(&mut t, *in_features, *out_features),
        (
            PeftType::AdaLora,
            ModuleKind::Linear {
                in_features,
                out_features,
                ..
            },
        ) => adalora(&mut t, *in_features, *out_features),
        _ => Ok(None),
    }
}

/// LoRA (with DoRA and `lora_bias`) on a Linear module.
fn lora_linear(
    t: &mut Target,
    in_features: usize,
    out_features: usize,
    base_weight: &dyn Fn(usize) -> Result<Tensor>,
) -> Result<Option<(ModuleAdapter, TargetReport)>> {
    let (cfg, path, got) = (t.cfg, t.path, t.got);
    let (r, alpha, s) = cfg.lora_scale(path);
    let rhint =
        format!(" (config says r={r} for this module; graft never infers r from tensor shapes)");
    let a = t.take(Role::LoraA, ".lora_A.weight").cloned();
    let b = t.take(Role::LoraB, ".lora_B.weight").cloned();
    let bb = if cfg.lora_bias {
        t.take(Role::LoraBBias, ".lora_B.bias").cloned()
    } else {
        None
    };
    let mag = if cfg.use_dora {
        t.take(Role::Magnitude, ".lora_magnitude_vector").cloned()
    } else {
        None
    };
    t.check(a.as_ref(), &[r, in_features], &rhint);
    t.check(b.as_ref(), &[out_features, r], &rhint);
    t.check(bb.as_ref(), &[out_features], "");
    t.check(mag.as_ref(), &[out_features], "");
    if !t.ok() {
        return Ok(None);
    }
    let (Some((ka, a)), Some((kb, b))) = (a, b) else {
        return Ok(None);
    };
    let mut rep = t.report("lora", &[&ka, &kb]);
    if !cfg.lora_bias && got.contains_key(&Role::LoraBBias) {
        t.problems.unexpected.push(format!(
            "{path}.lora_B.bias (lora_bias is false in the config)"
        ));
    }
    if !cfg.use_dora && got.contains_key(&Role::Magnitude) {
        t.problems.unexpected.push(format!(
            "{path}.lora_magnitude_vector (use_dora is false in the config)"
        ));
    }
    let dora = match mag {
        Some((km, mt)) => {
            rep.tensors.push(km);
            rep.kind = "dora".into();
            Some(Dora::new(
                &base_weight(t.i)?,
                &a.tensor,
                &b.tensor,
                s,
                mt.tensor,
            )?)
        }
        None => None,
    };
    if let Some((kbb, _)) = &bb {
        rep.tensors.push(kbb.clone());
    }
    rep.r = Some(r);
    rep.alpha = Some(alpha);
    rep.scale = Some(s);
    let layer = ModuleAdapter::Lora(LoraLinear {
        a: a.tensor,
        b: b.tensor,
        b_bias: bb.map(|(_, t)| t.tensor),
        r,
        alpha,
        scale: s,
        dora,
    });
    Ok(Some((layer, rep)))
}

/// LoRA on an Embedding module.
fn lora_embedding(
    t: &mut Target,
    num_embeddings: usize,
    dim: usize,
) -> Result<Option<(ModuleAdapter, TargetReport)>> {
    let (cfg, path) = (t.cfg, t.path);
    if cfg.use_dora {
        return Err(Error::UnsupportedFeature {
            field: "use_dora".into(),
            value: "true".into(),
            why: format!("DoRA on an embedding ({path}) is not implemented yet"),
        });
    }
    let (r, alpha, s) = cfg.lora_scale(path);
    let rhint = format!(" (config says r={r} for this module)");
    let a = t.take(Role::EmbA, ".lora_embedding_A").cloned();
    let b = t.take(Role::EmbB, ".lora_embedding_B").cloned();
    if let Some((k, at)) = &a {
        let d = at.tensor.dims();
        if d.len() == 2 && d[0] == r && d[1] != num_embeddings {
            t.problems.vocab_hint = Some(format!(
                "`{k}` covers {} tokens but the base's vocabulary has {num_embeddings}: the vocabulary was resized when the adapter was trained",
                d[1]
            ));
        }
    }
    t.check(a.as_ref(), &[r, num_embeddings], &rhint);
    t.check(b.as_ref(), &[dim, r], &rhint);
    if !t.ok() {
        return Ok(None);
    }
    let (Some((ka, a)), Some((kb, b))) = (a, b) else {
        return Ok(None);
    };
    let mut rep = t.report("lora-embedding", &[&ka, &kb]);
    rep.r = Some(r);
    rep.alpha = Some(alpha);
    rep.scale = Some(s);
    let layer = ModuleAdapter::LoraEmbedding(LoraEmbedding {
        a: a.tensor,
        b: b.tensor,
        r,
        alpha,
        scale: s,
    });
    Ok(Some((layer, rep)))
}

/// IA³ on a Linear module: its input (a feed-forward module) or its output scaled.
fn ia3(
    t: &mut Target,
    in_features: usize,
    out_features: usize,
) -> Result<Option<(ModuleAdapter, TargetReport)>> {
    let ff = t.cfg.is_feedforward(t.path);
    let l = t.take(Role::Ia3, ".ia3_l").cloned();
    let (expected, hint) = if ff {
        (
            [1, in_features],
            " (a feed-forward module: IA3 scales its input)",
        )
    } else {
        ([out_features, 1], " (IA3 scales this module's output)")
    };
    t.check(l.as_ref(), &expected, hint);
    if !t.ok() {
        return Ok(None);
    }
    let Some((kl, l)) = l else { return Ok(None) };
    let kind = if ff {
        "ia3 (scales input)"
    } else {
        "ia3 (scales output)"
    };
    let rep = t.report(kind, &[&kl]);
    let layer = ModuleAdapter::Ia3(Ia3 {
        l: l.tensor.flatten_all()?,
        feedforward: ff,
    });
    Ok(Some((layer, rep)))
}

/// AdaLoRA on a Linear module: rank `init_r` reduced by a pruned `rank_pattern`, scaled by
/// `scaling / (ranknum + 1e-5)` with ranknum = init_r, as PEFT 0.21 computes it.
fn adalora(
    t: &mut Target,
    in_features: usize,
    out_features: usize,
) -> Result<Option<(ModuleAdapter, TargetReport)>> {
    let (cfg, path) = (t.cfg, t.path);
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
    let hint =
        format!(" (AdaLoRA rank for this module is {r}: init_r={init_r} reduced by rank_pattern)");
    let a = t.take(Role::AdaA, ".lora_A").cloned();
    let b = t.take(Role::AdaB, ".lora_B").cloned();
    let e = t.take(Role::AdaE, ".lora_E").cloned();
    t.check(a.as_ref(), &[r, in_features], &hint);
    t.check(b.as_ref(), &[out_features, r], &hint);
    t.check(e.as_ref(), &[r, 1], &hint);
    if !t.ok() {
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
    let mut rep = t.report("adalora", &[&ka, &kb, &ke]);
    rep.r = Some(r);
    rep.alpha = Some(cfg.lora_alpha);
    rep.scale = Some(scaling / (ranknum + 1e-5));
    let layer = ModuleAdapter::AdaLora(AdaLora {
        a: a.tensor,
        e: e.tensor,
        b: b.tensor,
        r,
        scaling,
        ranknum,
    });
    Ok(Some((layer, rep)))
}
