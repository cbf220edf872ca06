//! The adapter registry: the adapters loaded on one base model, which of them are active, and
//! the seed's calls on them (`set_adapter`, `enable_adapters`, `delete_adapter`, …).
//!
//! Every call is all-or-nothing: adapters are built completely before they are inserted, and a
//! call that fails leaves the registry exactly as it was (transformers' `set_adapter` does not).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use crate::adapter::{embedding_forward, linear_forward, ModuleAdapter, WeightMatrix};
use crate::error::{Error, Result};
use crate::inject::{Adapter, PEFT_PREFIX};
use crate::matching::{
    minimal_target_modules, ModuleInventory, TargetSpec, MIN_TARGET_MODULES_FOR_OPTIMIZATION,
};
use crate::tensors::{serialize_safetensors, LoadedTensor};

/// Versions are drawn from one process-wide counter, so two registries never share one and a
/// device copy cannot mistake one model's adapters for another's.
fn next_version() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Adapters on one model.
#[derive(Debug, Clone)]
pub struct AdapterRegistry {
    inventory: ModuleInventory,
    adapters: Vec<Adapter>,
    /// Indices into `adapters`, in the order given to `set_adapter`.
    active: Vec<usize>,
    enabled: bool,
    /// Bumped by every call that changes what a forward pass computes, so that a device copy
    /// of the adapters (the GPU path) knows when to refresh itself.
    version: u64,
}

impl AdapterRegistry {
    pub fn new(inventory: ModuleInventory) -> Self {
        AdapterRegistry {
            inventory,
            adapters: Vec::new(),
            active: Vec::new(),
            enabled: true,
            version: next_version(),
        }
    }

    /// Changes whenever the adapters, their activation or the enabled flag change.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn inventory(&self) -> &ModuleInventory {
        &self.inventory
    }

    /// Names of all loaded adapters, in load order.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.name.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Adapter> {
        self.adapters.iter().find(|a| a.name == name)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|a| a.name == name)
    }

    fn require_any(&self) -> Result<()> {
        if self.adapters.is_empty() {
            Err(Error::NoAdapterLoaded)
        } else {
            Ok(())
        }
    }

    /// Inserts a fully built adapter. The first adapter becomes active; later ones are active
    /// only when `activate` is set (transformers activates adapters it adds).
    pub fn insert(&mut self, adapter: Adapter, activate: bool) -> Result<()> {
        if self.index(&adapter.name).is_some() {
            return Err(Error::AdapterExists(adapter.name));
        }
        self.adapters.push(adapter);
        self.version = next_version();
        let idx = self.adapters.len() - 1;
        if self.active.is_empty() || activate {
            self.active = vec![idx];
        }
        Ok(())
    }

    /// `set_adapter(name)` / `set_adapter([names])`: validated completely before anything changes.
    pub fn set_adapter(&mut self, names: &[&str]) -> Result<()> {
        self.require_any()?;
        if names.is_empty() {
            return Err(Error::InvalidConfig(
                "set_adapter needs at least one adapter name".into(),
            ));
        }
        let mut idx = Vec::with_capacity(names.len());
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.index(n).is_none())
            .collect();
        if let Some(first) = missing.first() {
            return Err(Error::AdapterNotFound {
                name: if missing.len() == 1 {
                    first.to_string()
                } else {
                    missing.join(", ")
                },
                known: self.adapter_names(),
            });
        }
        for n in names {
            if let Some(i) = self.index(n) {
                if !idx.contains(&i) {
                    idx.push(i);
                }
            }
        }
        let with_saved: Vec<String> = idx
            .iter()
            .filter(|&&i| !self.adapters[i].saved_modules.is_empty())
            .map(|&i| self.adapters[i].name.clone())
            .collect();
        if idx.len() > 1 && !with_saved.is_empty() {
            return Err(Error::MultipleModulesToSave(
                names.iter().map(|s| s.to_string()).collect(),
            ));
        }
        self.active = idx;
        self.version = next_version();
        Ok(())
    }

    pub fn enable_adapters(&mut self) -> Result<()> {
        self.require_any()?;
        self.enabled = true;
        self.version = next_version();
        Ok(())
    }

    pub fn disable_adapters(&mut self) -> Result<()> {
        self.require_any()?;
        self.enabled = false;
        self.version = next_version();
        Ok(())
    }

    pub fn adapters_enabled(&self) -> bool {
        self.enabled
    }

    /// `active_adapters()`: the names set active (also while adapters are disabled, as in
    /// transformers).
    pub fn active_adapters(&self) -> Result<Vec<String>> {
        self.require_any()?;
        Ok(self
            .active
            .iter()
            .map(|&i| self.adapters[i].name.clone())
            .collect())
    }

    /// `delete_adapter(names)`: all names must exist, or nothing is deleted.
    pub fn delete_adapter(&mut self, names: &[&str]) -> Result<()> {
        self.require_any()?;
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.index(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::AdapterNotFound {
                name: missing.join(", "),
                known: self.adapter_names(),
            });
        }
        let active_names: Vec<String> = self
            .active
            .iter()
            .map(|&i| self.adapters[i].name.clone())
            .filter(|n| !names.contains(&n.as_str()))
            .collect();
        self.adapters.retain(|a| !names.contains(&a.name.as_str()));
        self.version = next_version();
        self.active = active_names.iter().filter_map(|n| self.index(n)).collect();
        // Like PEFT, fall back to the first remaining adapter when the active one was deleted.
        if self.active.is_empty() && !self.adapters.is_empty() {
            self.active = vec![0];
        }
        if self.adapters.is_empty() {
            self.enabled = true;
        }
        Ok(())
    }

    /// The layers of the active adapters on module `i` (empty while disabled).
    pub fn active_layers(&self, i: usize) -> Vec<&ModuleAdapter> {
        if !self.enabled {
            return Vec::new();
        }
        self.active
            .iter()
            .filter_map(|&a| self.adapters[a].layers.get(&i))
            .collect()
    }

    /// A parameter of module `i` as the adapted model sees it: the active adapter's
    /// `modules_to_save` copy, else a base parameter an adapter overwrote, else `None` (the base).
    pub fn param(&self, i: usize, bias: bool) -> Option<&Tensor> {
        if self.enabled {
            for &a in &self.active {
                if let Some(p) = self.adapters[a].saved_modules.get(&i) {
                    return if bias {
                        p.bias.as_ref()
                    } else {
                        p.weight.as_ref()
                    };
                }
            }
        }
        self.base_param(i, bias)
    }

    /// A base parameter overwritten by a loaded adapter (the last loaded wins, as in PEFT).
    pub fn base_param(&self, i: usize, bias: bool) -> Option<&Tensor> {
        self.adapters.iter().rev().find_map(|a| {
            let p = a.base_params.get(&i)?;
            if bias {
                p.bias.as_ref()
            } else {
                p.weight.as_ref()
            }
        })
    }

    /// Runs Linear module `i` (x: (n, in)) with parameter replacements and active adapters.
    pub fn linear(
        &self,
        i: usize,
        x: &Tensor,
        weight: &dyn WeightMatrix,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let w: &dyn WeightMatrix = match self.param(i, false) {
            Some(t) => t,
            None => weight,
        };
        let b = match self.param(i, true) {
            Some(b) => Some(b),
            None => bias,
        };
        linear_forward(x, w, b, &self.active_layers(i))
    }

    /// Runs Embedding module `i` on token ids.
    pub fn embedding(&self, i: usize, ids: &Tensor, table: &dyn WeightMatrix) -> Result<Tensor> {
        let t: &dyn WeightMatrix = match self.param(i, false) {
            Some(t) => t,
            None => table,
        };
        embedding_forward(ids, t, &self.active_layers(i))
    }

    /// `get_adapter_state_dict(name)`: PEFT keys without `base_model.model.` (as transformers
    /// returns them). `None` means the first active adapter.
    pub fn state_dict(&self, name: Option<&str>) -> Result<BTreeMap<String, LoadedTensor>> {
        self.require_any()?;
        let a = self.resolve(name)?;
        Ok(a.state.clone())
    }

    fn resolve(&self, name: Option<&str>) -> Result<&Adapter> {
        let name = match name {
            Some(n) => n.to_string(),
            None => self
                .active_adapters()?
                .first()
                .cloned()
                .ok_or(Error::NoAdapterLoaded)?,
        };
        self.get(&name).ok_or_else(|| Error::AdapterNotFound {
            name,
            known: self.adapter_names(),
        })
    }

    /// The files `save_pretrained` writes, in memory: `(relative path, bytes)` pairs,
    /// `adapter_config.json` then `adapter_model.safetensors` for each adapter — `default` at
    /// the top, other names in a subfolder named after the adapter (`name/adapter_config.json`;
    /// paths always use `/`). Adapter names are validated at insertion, so a relative path
    /// never leaves the folder it is written under.
    pub fn adapter_files(
        &self,
        names: Option<&[&str]>,
        base_model_name_or_path: Option<&str>,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.require_any()?;
        let selected: Vec<&Adapter> = match names {
            None => self.adapters.iter().collect(),
            Some(ns) => ns
                .iter()
                .map(|n| self.resolve(Some(n)))
                .collect::<Result<Vec<_>>>()?,
        };
        let mut files = Vec::new();
        for a in selected {
            let prefix = if a.name == "default" {
                String::new()
            } else {
                format!("{}/", a.name)
            };
            let mut cfg = a.config.clone();
            if let Some(b) = base_model_name_or_path {
                cfg.set_field("base_model_name_or_path", Value::String(b.to_string()));
            }
            // "all-linear" is saved expanded to the module paths it matched, as PEFT does.
            if matches!(cfg.target_modules, Some(TargetSpec::AllLinear)) {
                let mut paths: Vec<String> = a
                    .layers
                    .keys()
                    .map(|&i| self.inventory.modules[i].path.clone())
                    .collect();
                paths.sort();
                // Long lists are condensed to suffixes, as PEFT does at injection.
                if paths.len() >= MIN_TARGET_MODULES_FOR_OPTIMIZATION
                    && cfg.peft_type != crate::config::PeftType::Ia3
                {
                    paths = minimal_target_modules(&paths, &self.inventory);
                }
                cfg.set_field(
                    "target_modules",
                    Value::Array(paths.into_iter().map(Value::String).collect()),
                );
            }
            let mut tensors = BTreeMap::new();
            for (k, t) in &a.state {
                tensors.insert(format!("{PEFT_PREFIX}{k}"), t.clone());
            }
            let bytes = serialize_safetensors(&tensors)?;
            files.push((
                format!("{prefix}adapter_config.json"),
                cfg.to_json_string().into_bytes(),
            ));
            files.push((format!("{prefix}adapter_model.safetensors"), bytes));
        }
        Ok(files)
    }

    /// `save_pretrained(dir)`: every adapter (or the named ones) as PEFT writes them —
    /// `default` at the top, other names in a subfolder named after the adapter. Writes the
    /// files of [`AdapterRegistry::adapter_files`]; returns the folder of each adapter.
    pub fn save_pretrained(
        &self,
        dir: &Path,
        names: Option<&[&str]>,
        base_model_name_or_path: Option<&str>,
    ) -> Result<Vec<std::path::PathBuf>> {
        // Build every file in memory first, so a failure writes nothing.
        let files = self.adapter_files(names, base_model_name_or_path)?;
        let mut written: Vec<std::path::PathBuf> = Vec::new();
        for (rel, bytes) in files {
            let io = |p: &Path| {
                let p = p.to_path_buf();
                move |source| Error::Io { path: p, source }
            };
            let (sub, file) = match rel.rsplit_once('/') {
                Some((sub, file)) => (dir.join(sub), file),
                None => (dir.to_path_buf(), rel.as_str()),
            };
            if written.last() != Some(&sub) {
                std::fs::create_dir_all(&sub).map_err(io(&sub))?;
                written.push(sub.clone());
            }
            let p = sub.join(file);
            std::fs::write(&p, bytes).map_err(io(&p))?;
        }
        Ok(written)
    }
}
