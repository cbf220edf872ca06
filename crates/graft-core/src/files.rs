//! Adapter folders as PEFT writes them: `adapter_config.json` + `adapter_model.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::AdapterConfig;
use crate::error::{Error, Result};
use crate::tensors::{load_safetensors, read_file, LoadedTensor};

/// A config is a few KB; anything past this is not an adapter config.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// An adapter read from disk, not yet injected.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub tensors: BTreeMap<String, LoadedTensor>,
}

/// Is this folder an adapter (it holds `adapter_config.json`)?
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
}

/// Reads `adapter_config.json` only.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join("adapter_config.json");
    if !path.is_file() {
        let bin = dir.join("adapter_model.bin");
        if bin.is_file() {
            return Err(Error::PickleNotSupported {
                path: bin.display().to_string(),
            });
        }
        return Err(Error::NoAdapterConfig {
            dir: dir.display().to_string(),
        });
    }
    let bytes = read_file(&path, MAX_CONFIG_SIZE)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::ConfigNotJson("adapter_config.json is not UTF-8".into()))?;
    AdapterConfig::from_json_str(&text)
}

/// Reads an adapter folder (optionally a `subfolder` of it). A folder with only the legacy
/// pickle `adapter_model.bin` is refused: a pickle can run code, and graft never executes one.
pub fn read_adapter_dir(dir: &Path, subfolder: Option<&str>) -> Result<AdapterFiles> {
    let dir = match subfolder {
        Some(s) => dir.join(s),
        None => dir.to_path_buf(),
    };
    let config = read_adapter_config(&dir)?;
    let st = dir.join("adapter_model.safetensors");
    if !st.is_file() {
        let bin = dir.join("adapter_model.bin");
        if bin.is_file() {
            return Err(Error::PickleNotSupported {
                path: bin.display().to_string(),
            });
        }
        return Err(Error::NoAdapterWeights {
            dir: dir.display().to_string(),
        });
    }
    let tensors = load_safetensors(&st)?;
    Ok(AdapterFiles {
        dir,
        config,
        tensors,
    })
}
