//! The adapters a server knows by name, and which of them are resident: loaded on first use
//! (or at start), kept under a memory budget, the least recently used dropped first. A
//! sequence holds its adapter (`Arc`), so dropping one never disturbs a running request; a
//! dropped adapter is loaded again from its source when next asked for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use graft_adapters::adapter::ModuleAdapter;
use graft_adapters::Adapter;
use graft_models::Model;

/// Builds an adapter from its source (a folder or a Hub repo id), named `name`. Runs on a
/// blocking thread, never on the engine's.
pub trait Loader: Send + Sync {
    fn load(&self, model: &Model, name: &str, source: &str) -> Result<Adapter, String>;
    /// Whether a `model` that names no known adapter may be fetched as a Hub repo id.
    fn allow_hub(&self) -> bool;
}

struct Entry {
    source: String,
    resident: Option<Arc<Adapter>>,
    bytes: u64,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    known: BTreeMap<String, Entry>,
    tick: u64,
}

/// Whether the engine's device can run an adapter (the GPU's slots refuse some).
pub type Check = Box<dyn Fn(&Adapter) -> Result<(), String> + Send + Sync>;

/// Known adapters and the resident ones.
pub struct Adapters {
    inner: Mutex<Inner>,
    budget: u64,
    loader: Arc<dyn Loader>,
    check: Option<Check>,
}

/// One adapter as `/v1/models` lists it.
pub struct Listed {
    pub name: String,
    pub source: String,
    pub resident: bool,
}

/// Bytes an adapter's tensors hold (f32).
pub fn adapter_bytes(a: &Adapter) -> u64 {
    let mut n = 0usize;
    for l in a.layers.values() {
        n += match l {
            ModuleAdapter::Lora(l) => {
                l.a.elem_count()
                    + l.b.elem_count()
                    + l.b_bias.as_ref().map_or(0, |b| b.elem_count())
                    + l.dora.as_ref().map_or(0, |d| {
                        d.magnitude.elem_count() + d.mag_norm_scale.elem_count()
                    })
            }
            ModuleAdapter::LoraEmbedding(e) => e.a.elem_count() + e.b.elem_count(),
            ModuleAdapter::Ia3(i) => i.l.elem_count(),
            ModuleAdapter::AdaLora(d) => d.a.elem_count() + d.b.elem_count() + d.e.elem_count(),
        };
    }
    for p in a.saved_modules.values().chain(a.base_params.values()) {
        n += p.weight.as_ref().map_or(0, |t| t.elem_count());
        n += p.bias.as_ref().map_or(0, |t| t.elem_count());
    }
    4 * n as u64
}

/// Whether a name can be an adapter's (what `/v1/load_lora_adapter` accepts).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@'))
}

impl Adapters {
    pub fn new(budget: u64, loader: Arc<dyn Loader>) -> Self {
        Adapters {
            inner: Mutex::new(Inner::default()),
            budget,
            loader,
            check: None,
        }
    }

    /// Every adapter must pass `check` to become known (see [`Adapters::insert`]).
    pub fn set_check(&mut self, check: Check) {
        self.check = Some(check);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn allow_hub(&self) -> bool {
        self.loader.allow_hub()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().known.contains_key(name)
    }

    pub fn list(&self) -> Vec<Listed> {
        self.lock()
            .known
            .iter()
            .map(|(name, e)| Listed {
                name: name.clone(),
                source: e.source.clone(),
                resident: e.resident.is_some(),
            })
            .collect()
    }

    /// (resident adapters, bytes they hold)
    pub fn resident(&self) -> (usize, u64) {
        let g = self.lock();
        let r = g.known.values().filter(|e| e.resident.is_some());
        (r.clone().count(), r.map(|e| e.bytes).sum())
    }

    /// The resident adapter `name`, if it is.
    pub fn get_resident(&self, name: &str) -> Option<Arc<Adapter>> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let e = g.known.get_mut(name)?;
        e.last_used = tick;
        e.resident.clone()
    }

    /// The source of a known adapter.
    pub fn source(&self, name: &str) -> Option<String> {
        self.lock().known.get(name).map(|e| e.source.clone())
    }

    /// Builds `name` from `source` (blocking: call from a blocking thread).
    pub fn build(&self, model: &Model, name: &str, source: &str) -> Result<Adapter, String> {
        self.loader.load(model, name, source)
    }

    /// Makes a built adapter known and resident, dropping the least recently used others
    /// while the budget is exceeded. With `replace` false an existing name is an error.
    pub fn insert(
        &self,
        name: &str,
        source: &str,
        a: Adapter,
        replace: bool,
    ) -> Result<Arc<Adapter>, String> {
        if let Some(check) = &self.check {
            check(&a)?;
        }
        let bytes = adapter_bytes(&a);
        let a = Arc::new(a);
        let mut g = self.lock();
        if !replace && g.known.contains_key(name) {
            return Err(format!("an adapter named `{name}` is already loaded"));
        }
        g.tick += 1;
        let tick = g.tick;
        g.known.insert(
            name.to_string(),
            Entry {
                source: source.to_string(),
                resident: Some(a.clone()),
                bytes,
                last_used: tick,
            },
        );
        loop {
            let used: u64 = g
                .known
                .values()
                .filter(|e| e.resident.is_some())
                .map(|e| e.bytes)
                .sum();
            if used <= self.budget {
                break;
            }
            let victim = g
                .known
                .iter()
                .filter(|(n, e)| e.resident.is_some() && n.as_str() != name)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(n, _)| n.clone());
            match victim {
                Some(v) => {
                    if let Some(e) = g.known.get_mut(&v) {
                        e.resident = None;
                    }
                }
                None => break, // only this one: it stays, over the budget
            }
        }
        Ok(a)
    }

    /// Forgets `name`; running requests keep their copy.
    pub fn remove(&self, name: &str) -> bool {
        self.lock().known.remove(name).is_some()
    }
}
