//! Base model weights from `model.safetensors` or a sharded `model.safetensors.index.json`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::Tensor;

use crate::table::Weight;
use graft_adapters::tensors::{parse_safetensors, read_file, MAX_FILE_SIZE};
use serde_json::Value;

use crate::error::{Error, Result};

/// The single-file checkpoint.
const SINGLE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
const INDEX: &str = "model.safetensors.index.json";
/// Largest index accepted.
const MAX_INDEX_SIZE: u64 = 64 << 20;

/// The shard file names that a `model.safetensors.index.json` names (sorted, each once).
fn shard_names(index: &[u8], label: &str) -> Result<BTreeSet<String>> {
    let v: Value = serde_json::from_slice(index)
        .map_err(|e| Error::BadWeightFiles(format!("{label}: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::BadWeightFiles(format!("{label}: no `weight_map` object")))?;
    let mut shards = BTreeSet::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| Error::BadWeightFiles("weight_map values must be file names".into()))?;
        // The index is input too: shard names must stay inside the folder.
        if f.contains('/') || f.contains('\\') || f.starts_with('.') || f.is_empty() {
            return Err(Error::BadWeightFiles(format!(
                "shard name `{f}` is not a plain file name"
            )));
        }
        shards.insert(f.to_string());
    }
    Ok(shards)
}

/// All tensors of a model, f32 on the CPU, by checkpoint name.
pub struct WeightStore {
    tensors: HashMap<String, Weight>,
}

impl WeightStore {
    pub fn from_map(tensors: HashMap<String, Weight>) -> Self {
        WeightStore { tensors }
    }

    /// Reads a model folder's safetensors: `model.safetensors`, else the shards that
    /// `model.safetensors.index.json` names (one shard in memory at a time).
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(SINGLE);
        let index = dir.join(INDEX);
        let read = |name: &str| -> Result<(String, Vec<u8>)> {
            let p = dir.join(name);
            Ok((p.display().to_string(), read_file(&p, MAX_FILE_SIZE)?))
        };
        if single.is_file() {
            Self::load([SINGLE.to_string()], read)
        } else if index.is_file() {
            let bytes = read_file(&index, MAX_INDEX_SIZE)?;
            let shards = shard_names(&bytes, &index.display().to_string())?;
            Self::load(shards, read)
        } else {
            let hint = if dir.join("pytorch_model.bin").is_file() {
                ": only pytorch_model.bin (a pickle) is there; graft never executes pickles — convert it to safetensors".to_string()
            } else {
                String::new()
            };
            Err(Error::NoWeights {
                dir: dir.display().to_string(),
                hint,
            })
        }
    }

    /// A model's safetensors from memory, as `(file name, bytes)` pairs — the files of a model
    /// folder, chosen as [`WeightStore::open`] chooses them:
    ///
    /// - `model.safetensors` when it is among the files (anything else is then ignored);
    /// - else, when `model.safetensors.index.json` is among them, the shards its `weight_map`
    ///   names — each must be among the files (others are ignored);
    /// - else every `*.safetensors` file, as the shards of one model.
    ///
    /// Each shard's bytes are dropped as soon as its tensors are built. `label` (the model's
    /// name) names the model in errors.
    pub fn from_safetensors_bytes(files: Vec<(String, Vec<u8>)>, label: &str) -> Result<Self> {
        let mut by_name: HashMap<String, Vec<u8>> = HashMap::with_capacity(files.len());
        for (name, bytes) in files {
            if by_name.contains_key(&name) {
                return Err(Error::BadWeightFiles(format!(
                    "weight file `{name}` was given twice"
                )));
            }
            by_name.insert(name, bytes);
        }
        let names: BTreeSet<String> = if by_name.contains_key(SINGLE) {
            BTreeSet::from([SINGLE.to_string()])
        } else if let Some(index) = by_name.get(INDEX) {
            check_size(INDEX, index.len(), MAX_INDEX_SIZE)?;
            let shards = shard_names(index, INDEX)?;
            if let Some(missing) = shards.iter().find(|s| !by_name.contains_key(*s)) {
                return Err(Error::NoWeights {
                    dir: label.into(),
                    hint: format!(": shard `{missing}`, named by {INDEX}, was not given"),
                });
            }
            shards
        } else {
            by_name
                .keys()
                .filter(|n| n.ends_with(".safetensors"))
                .cloned()
                .collect()
        };
        if names.is_empty() {
            return Err(Error::NoWeights {
                dir: label.into(),
                hint: String::new(),
            });
        }
        Self::load(names, |name| {
            let bytes = by_name.remove(name).ok_or_else(|| Error::NoWeights {
                dir: label.into(),
                hint: format!(": `{name}` was not given"),
            })?;
            check_size(name, bytes.len(), MAX_FILE_SIZE)?;
            Ok((name.to_string(), bytes))
        })
    }

    /// Parses the named safetensors files in order, fetching each (label, bytes) only when it
    /// is its turn, so that one file's bytes are in memory at a time.
    fn load(
        names: impl IntoIterator<Item = String>,
        mut fetch: impl FnMut(&str) -> Result<(String, Vec<u8>)>,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        for name in names {
            let (label, bytes) = fetch(&name)?;
            for (k, t) in parse_safetensors(&label, &bytes)? {
                tensors.insert(k, Weight::Dense(t.tensor));
            }
        }
        Ok(WeightStore { tensors })
    }

    /// A weight by name, also trying the name without a leading `model.` (some OPT checkpoints).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        let t = self
            .tensors
            .get(name)
            .or_else(|| {
                name.strip_prefix("model.")
                    .and_then(|n| self.tensors.get(n))
            })
            .ok_or_else(|| Error::MissingWeight { name: name.into() })?;
        if t.dims() != shape {
            return Err(Error::WeightShape {
                name: name.into(),
                expected: shape.to_vec(),
                got: t.dims(),
            });
        }
        Ok(t.clone())
    }

    /// A small parameter (norm weight, bias) as an f32 tensor.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(name, shape)?.tensor()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
            || name
                .strip_prefix("model.")
                .is_some_and(|n| self.tensors.contains_key(n))
    }
}

/// The same bound a file read from disk gets (`read_file`'s limit), for bytes handed over.
fn check_size(name: &str, len: usize, limit: u64) -> Result<()> {
    if len as u64 > limit {
        return Err(graft_adapters::Error::FileTooLarge {
            path: name.into(),
            size: len as u64,
            limit,
        }
        .into());
    }
    Ok(())
}
