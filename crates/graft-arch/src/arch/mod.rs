//! One file per architecture: its configuration keys, how it reads them, and (next to them)
//! how it describes the network.

pub mod llama;
pub mod opt;

use serde_json::Value;

use crate::config::Understood;
use crate::error::{Error, Result};

/// The `model_type`s graft runs.
pub const SUPPORTED: &str = "llama, mistral, opt";

/// A configuration, read by its architecture.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    Llama(llama::LlamaConfig),
    Opt(opt::OptConfig),
}

/// Reads `cfg` (a `config.json` object, or its GGUF equivalent named `source_name`) with the
/// architecture its `model_type` names.
pub fn read_config(cfg: &Value, source_name: &str) -> Result<(ArchConfig, Understood)> {
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    match model_type {
        "llama" | "mistral" => {
            let (c, u) = llama::read_config(cfg, source_name)?;
            Ok((ArchConfig::Llama(c), u))
        }
        "opt" => {
            let (c, u) = opt::read_config(cfg, source_name)?;
            Ok((ArchConfig::Opt(c), u))
        }
        other => Err(Error::UnsupportedArchitecture(
            other.to_string(),
            SUPPORTED.to_string(),
        )),
    }
}
