//! One file per architecture: its configuration keys, how it reads them, how it describes its
//! network, and how its GGUF files map to Hugging Face names. Adding an architecture means
//! writing its file and listing it in [`ARCHITECTURES`].

pub mod decoder;
pub mod gemma;
pub mod gguf_names;
pub mod llama;
pub mod opt;
pub mod phi3;
pub mod qwen;

use graft_quant::QType;
use serde_json::Value;

use crate::config::Understood;
use crate::error::{Error, Result};
use crate::gguf_weights::{self, GgufFile};
use crate::network::Network;
use crate::table::ModuleTable;
use crate::weights::WeightStore;

/// `describe`: a configuration (and the name of its source, for messages) and the weights →
/// the network, its modules registered in the table, and the configuration as understood.
pub type Describe =
    fn(&Value, &str, &WeightStore, &mut ModuleTable) -> Result<(Network, Understood)>;

/// What an architecture file provides.
pub struct Architecture {
    /// The `model_type` values of `config.json` it reads.
    pub model_types: &'static [&'static str],
    pub describe: Describe,
    /// How llama.cpp's GGUF files of this architecture map to Hugging Face names.
    pub gguf: Option<GgufSupport>,
}

/// GGUF files of an architecture.
pub struct GgufSupport {
    /// `general.architecture` values.
    pub architectures: &'static [&'static str],
    /// The metadata (and tensors the converter stored for the configuration, such as RoPE
    /// factors) as the equivalent `config.json`, then read like any other.
    pub config: fn(&GgufFile) -> Result<Value>,
    /// A GGUF tensor name → its Hugging Face parameter name (None: unknown, refused).
    pub tensor_name: fn(&str) -> Option<String>,
    /// For a Hugging Face parameter name and the config: the RoPE heads over which llama.cpp
    /// permuted its rows, to undo.
    pub permuted_heads: fn(&str, &Value) -> Option<usize>,
    /// Tensors `config` read (not weights).
    pub config_tensors: &'static [&'static str],
    /// What llama.cpp's converter added to norm weights (Gemma: 1, for its `1 + w`); taken
    /// off again so the weights are the Hugging Face ones.
    pub norm_shift: f32,
}

/// Every architecture graft runs.
pub const ARCHITECTURES: &[Architecture] = &[
    llama::ARCHITECTURE,
    qwen::ARCHITECTURE,
    gemma::ARCHITECTURE,
    phi3::ARCHITECTURE,
    opt::ARCHITECTURE,
];

/// The `model_type`s graft runs, for messages.
pub fn supported() -> String {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.model_types.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A model described: the network, its module table (paths and base parameters) and the
/// configuration as graft understood it.
pub struct Described {
    pub net: Network,
    pub table: ModuleTable,
    pub understood: Understood,
}

/// Describes the model `cfg` (named `source_name` in messages) with the architecture its
/// `model_type` names. `quantize` quantizes the Linear weights (all but the output head)
/// while loading, as `load_in_8bit` / `load_in_4bit` do.
pub fn describe(
    cfg: &Value,
    source_name: &str,
    weights: &WeightStore,
    quantize: Option<QType>,
) -> Result<Described> {
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    let arch = ARCHITECTURES
        .iter()
        .find(|a| a.model_types.contains(&model_type))
        .ok_or_else(|| Error::UnsupportedArchitecture(model_type.to_string(), supported()))?;
    let mut table = ModuleTable::new(model_type);
    table.quantize = quantize;
    let (net, understood) = (arch.describe)(cfg, source_name, weights, &mut table)?;
    Ok(Described {
        net,
        table,
        understood,
    })
}

/// A GGUF file's configuration (as `config.json`) and its weights under Hugging Face names,
/// by the architecture its `general.architecture` names.
pub fn from_gguf(file: &GgufFile) -> Result<(Value, WeightStore)> {
    let name = file
        .header
        .get_str("general.architecture")
        .ok_or_else(|| Error::Gguf("metadata `general.architecture` is missing".into()))?;
    let support = ARCHITECTURES
        .iter()
        .filter_map(|a| a.gguf.as_ref())
        .find(|g| g.architectures.contains(&name))
        .ok_or_else(|| {
            let known: Vec<&str> = ARCHITECTURES
                .iter()
                .filter_map(|a| a.gguf.as_ref())
                .flat_map(|g| g.architectures.iter().copied())
                .collect();
            Error::UnsupportedArchitecture(format!("{name} (GGUF)"), known.join(", "))
        })?;
    let cfg = (support.config)(file)?;
    let name_of = |n: &str| {
        if support.config_tensors.contains(&n) {
            Some(String::new())
        } else {
            (support.tensor_name)(n)
        }
    };
    let weights = gguf_weights::weights(
        file,
        name_of,
        |n| (support.permuted_heads)(n, &cfg),
        |n| {
            if n.ends_with("norm.weight") {
                support.norm_shift
            } else {
                0.0
            }
        },
    )?;
    Ok((cfg, weights))
}
