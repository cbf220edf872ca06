//! The trainable parameters of one adapter: taken from the model's adapter registry (where
//! `add_adapter` or `load_adapter(is_trainable=true)` put them), held as candle `Var`s while
//! training, and handed back to the registry in PEFT's state-dict layout for saving.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var};
use graft_adapters::adapter::ModuleAdapter;
use graft_adapters::config::{AdapterConfig, PeftType};
use graft_adapters::tensors::LoadedTensor;
use graft_models::{LoadAdapterOptions, Model};

use crate::error::{Error, Result};

/// What the trainable adapter puts on one module.
pub enum TLayer {
    /// `y = base(x) + scale · B(A(dropout(x)))`.
    Lora {
        a: Var,
        b: Var,
        scale: f64,
        dropout: f32,
    },
    /// `y = base(x) ⊙ l`, or `base(x ⊙ l)` for feed-forward modules.
    Ia3 { l: Var, feedforward: bool },
}

/// A `modules_to_save` copy: a full, trained replacement of the module's parameters.
pub struct SavedModule {
    pub weight: Var,
    pub bias: Option<Var>,
}

/// One trainable tensor and its key in the saved state dict (without `base_model.model.`).
pub struct Param {
    pub key: String,
    pub var: Var,
    /// The shape PEFT saves it with (e.g. `ia3_l` is (out, 1) or (1, in)).
    pub saved_shape: Vec<usize>,
}

/// The adapter being trained.
pub struct Trainable {
    pub name: String,
    pub config: AdapterConfig,
    pub layers: HashMap<usize, TLayer>,
    pub saved: HashMap<usize, SavedModule>,
    /// Every trainable tensor, in state-dict key order (the optimizer's order).
    pub params: Vec<Param>,
}

fn var_of(t: &Tensor) -> Result<Var> {
    // A fresh copy: the registry's tensor must not change under the optimizer.
    Ok(Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?)
}

impl Trainable {
    /// Takes adapter `name` from the model's registry. Fails closed on anything graft cannot
    /// train yet, naming it (DoRA, AdaLoRA, LoRA on embeddings, `lora_bias`, tensors of the
    /// state dict that no trainable parameter would cover).
    pub fn from_model(model: &Model, name: &str) -> Result<Self> {
        let reg = model.registry();
        let adapter = reg.get(name).ok_or_else(|| {
            Error::Config(format!(
                "no adapter named `{name}` (the model has: {:?})",
                reg.adapter_names()
            ))
        })?;
        let config = adapter.config.clone();
        if !matches!(config.peft_type, PeftType::Lora | PeftType::Ia3) {
            return Err(Error::Unsupported(format!(
                "training {} adapters is not supported yet (LoRA and IA3 are)",
                config.peft_type.as_str()
            )));
        }
        if config.use_dora {
            return Err(Error::Unsupported(
                "training DoRA adapters (use_dora=true) is not supported yet".into(),
            ));
        }
        let dropout = config
            .fields
            .get("lora_dropout")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0) as f32;
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::Config(format!(
                "lora_dropout must be in [0, 1), got {dropout}"
            )));
        }
        let inv = &reg.inventory().modules;
        let mut layers = HashMap::new();
        let mut by_key: BTreeMap<String, (Var, Vec<usize>)> = BTreeMap::new();
        let shape_of = |key: &str, fallback: &[usize]| -> Vec<usize> {
            adapter
                .state
                .get(key)
                .map(|t| t.tensor.dims().to_vec())
                .unwrap_or_else(|| fallback.to_vec())
        };
        for (&i, layer) in &adapter.layers {
            let path = &inv[i].path;
            match layer {
                ModuleAdapter::Lora(l) => {
                    if l.dora.is_some() || l.b_bias.is_some() {
                        return Err(Error::Unsupported(format!(
                            "{path}: training DoRA or lora_bias is not supported yet"
                        )));
                    }
                    let a = var_of(&l.a)?;
                    let b = var_of(&l.b)?;
                    let ka = format!("{path}.lora_A.weight");
                    let kb = format!("{path}.lora_B.weight");
                    by_key.insert(ka.clone(), (a.clone(), shape_of(&ka, l.a.dims())));
                    by_key.insert(kb.clone(), (b.clone(), shape_of(&kb, l.b.dims())));
                    layers.insert(
                        i,
                        TLayer::Lora {
                            a,
                            b,
                            scale: l.scale,
                            dropout,
                        },
                    );
                }
                ModuleAdapter::Ia3(l) => {
                    let v = var_of(&l.l.flatten_all()?)?;
                    let k = format!("{path}.ia3_l");
                    let n = v.elem_count();
                    let fallback = if l.feedforward { vec![1, n] } else { vec![n, 1] };
                    by_key.insert(k.clone(), (v.clone(), shape_of(&k, &fallback)));
                    layers.insert(
                        i,
                        TLayer::Ia3 {
                            l: v,
                            feedforward: l.feedforward,
                        },
                    );
                }
                other => {
                    return Err(Error::Unsupported(format!(
                        "{path}: training {} layers is not supported yet (LoRA on Linear modules and IA3 are)",
                        other.kind_name()
                    )))
                }
            }
        }
        let mut saved = HashMap::new();
        for (&i, p) in &adapter.saved_modules {
            let path = &inv[i].path;
            let weight = match &p.weight {
                Some(w) => {
                    let v = var_of(w)?;
                    let k = format!("{path}.weight");
                    by_key.insert(k.clone(), (v.clone(), shape_of(&k, w.dims())));
                    v
                }
                None => {
                    return Err(Error::Unsupported(format!(
                        "{path}: a modules_to_save copy without a weight cannot be trained"
                    )))
                }
            };
            let bias = match &p.bias {
                Some(b) => {
                    let v = var_of(b)?;
                    let k = format!("{path}.bias");
                    by_key.insert(k.clone(), (v.clone(), shape_of(&k, b.dims())));
                    Some(v)
                }
                None => None,
            };
            saved.insert(i, SavedModule { weight, bias });
        }
        // Fail closed: every tensor PEFT would save must be one we train (or we would save a
        // stale copy next to trained ones), and base parameters the adapter overwrites are not
        // modelled by the training forward pass.
        let uncovered: Vec<&String> = adapter
            .state
            .keys()
            .filter(|k| !by_key.contains_key(*k))
            .collect();
        if !uncovered.is_empty() || !adapter.base_params.is_empty() {
            return Err(Error::Unsupported(format!(
                "adapter `{name}` holds tensors graft cannot train yet: {uncovered:?}{}",
                if adapter.base_params.is_empty() {
                    String::new()
                } else {
                    " (and it overwrites base parameters, e.g. a trained bias)".into()
                }
            )));
        }
        if by_key.is_empty() {
            return Err(Error::Config(format!(
                "adapter `{name}` has no trainable parameters"
            )));
        }
        let params = by_key
            .into_iter()
            .map(|(key, (var, saved_shape))| Param {
                key,
                var,
                saved_shape,
            })
            .collect();
        Ok(Trainable {
            name: name.to_string(),
            config,
            layers,
            saved,
            params,
        })
    }

    /// Number of trainable values.
    pub fn num_values(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// The state dict as PEFT saves it (keys without `base_model.model.`), in f32.
    pub fn state(&self) -> Result<BTreeMap<String, LoadedTensor>> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            let t = p
                .var
                .as_tensor()
                .detach()
                .reshape(p.saved_shape.as_slice())?;
            out.insert(
                p.key.clone(),
                LoadedTensor {
                    tensor: t.copy()?,
                    dtype: DType::F32,
                },
            );
        }
        Ok(out)
    }

    /// Writes the trained values back into the model's registry (replacing the adapter of the
    /// same name), so that `save_pretrained`, generation and the GPU path all see them.
    pub fn commit_to(&self, model: &mut Model) -> Result<()> {
        let was_active = model
            .active_adapters()
            .map(|a| a.contains(&self.name))
            .unwrap_or(false);
        let state = self.state()?;
        model.delete_adapter(&[self.name.as_str()])?;
        model.load_adapter_from_state(
            self.config.clone(),
            state,
            // Recorded as `inference_mode: true`, which is what PEFT's `save_pretrained` (and
            // the Trainer's checkpoints of a PeftModel) write for a trained adapter. (The
            // transformers mixin writes the in-memory flag, false after `add_adapter`; graft's
            // own `save_pretrained` keeps that convention for adapters it did not train.)
            LoadAdapterOptions {
                adapter_name: Some(self.name.clone()),
                is_trainable: false,
                ..Default::default()
            },
        )?;
        if was_active {
            model.set_adapter(&[self.name.as_str()])?;
        }
        Ok(())
    }

    /// Loads values (e.g. from a checkpoint) into the parameters, by key.
    pub fn set_values(&self, state: &BTreeMap<String, LoadedTensor>) -> Result<()> {
        for p in &self.params {
            let t = state.get(&p.key).ok_or_else(|| {
                Error::Config(format!("the checkpoint has no tensor `{}`", p.key))
            })?;
            if t.tensor.elem_count() != p.var.elem_count() {
                return Err(Error::Config(format!(
                    "`{}`: the checkpoint's tensor has shape {:?}, the adapter's {:?}",
                    p.key,
                    t.tensor.dims(),
                    p.saved_shape
                )));
            }
            p.var
                .set(&t.tensor.to_dtype(DType::F32)?.reshape(p.var.dims())?)?;
        }
        Ok(())
    }
}
