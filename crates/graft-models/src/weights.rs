//! Base model weights from `model.safetensors` or a sharded `model.safetensors.index.json`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::Tensor;

use crate::base::Weight;
use graft_core::tensors::{load_safetensors, read_file};
use serde_json::Value;

use crate::error::{Error, Result};

/// All tensors of a model, f32 on the CPU, by checkpoint name.
pub struct WeightStore {
    tensors: HashMap<String, Weight>,
}

impl WeightStore {
    pub fn from_map(tensors: HashMap<String, Weight>) -> Self {
        WeightStore { tensors }
    }

    /// Reads a model folder's safetensors (single file or shards).
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut tensors = HashMap::new();
        if single.is_file() {
            for (k, t) in load_safetensors(&single)? {
                tensors.insert(k, Weight::Dense(t.tensor));
            }
        } else if index.is_file() {
            let bytes = read_file(&index, 64 << 20)?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::BadModelConfig(format!("{}: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    Error::BadModelConfig(format!("{}: no `weight_map` object", index.display()))
                })?;
            let mut shards = BTreeSet::new();
            for f in map.values() {
                let f = f.as_str().ok_or_else(|| {
                    Error::BadModelConfig("weight_map values must be file names".into())
                })?;
                // The index is input too: shard names must stay inside the folder.
                if f.contains('/') || f.contains('\\') || f.starts_with('.') || f.is_empty() {
                    return Err(Error::BadModelConfig(format!(
                        "shard name `{f}` is not a plain file name"
                    )));
                }
                shards.insert(f.to_string());
            }
            for s in shards {
                for (k, t) in load_safetensors(&dir.join(&s))? {
                    tensors.insert(k, Weight::Dense(t.tensor));
                }
            }
        } else {
            let hint = if dir.join("pytorch_model.bin").is_file() {
                ": only pytorch_model.bin (a pickle) is there; graft never executes pickles — convert it to safetensors".to_string()
            } else {
                String::new()
            };
            return Err(Error::NoWeights {
                dir: dir.display().to_string(),
                hint,
            });
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
