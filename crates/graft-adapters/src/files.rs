//! Adapter folders as PEFT writes them: `adapter_config.json` + `adapter_model.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::AdapterConfig;
use crate::error::{Error, Result};
use crate::tensors::{parse_safetensors, read_file, LoadedTensor, MAX_FILE_SIZE};

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
    parse_adapter_config(&read_adapter_config_bytes(dir)?)
}

/// The bytes of `adapter_config.json`, refusing a folder with only a pickle.
fn read_adapter_config_bytes(dir: &Path) -> Result<Vec<u8>> {
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
    read_file(&path, MAX_CONFIG_SIZE)
}

/// Parses the bytes of an `adapter_config.json` (at most [`MAX_CONFIG_SIZE`]): what
/// [`read_adapter_config`] does once the file is read.
pub fn parse_adapter_config(bytes: &[u8]) -> Result<AdapterConfig> {
    check_len("adapter_config.json", bytes, MAX_CONFIG_SIZE)?;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::ConfigNotJson("adapter_config.json is not UTF-8".into()))?;
    AdapterConfig::from_json_str(text)
}

/// An adapter from the bytes of its two files, `adapter_config.json` and
/// `adapter_model.safetensors`, validated exactly as [`read_adapter_dir`] validates the files
/// (the config first, then the weights). `weights_label` names the weights in error messages.
pub fn parse_adapter(
    config_json: &[u8],
    weights: &[u8],
    weights_label: &str,
) -> Result<(AdapterConfig, BTreeMap<String, LoadedTensor>)> {
    let config = parse_adapter_config(config_json)?;
    let tensors = parse_adapter_weights(weights, weights_label)?;
    Ok((config, tensors))
}

/// Parses the bytes of an `adapter_model.safetensors` (at most [`MAX_FILE_SIZE`]).
pub fn parse_adapter_weights(
    weights: &[u8],
    weights_label: &str,
) -> Result<BTreeMap<String, LoadedTensor>> {
    check_len(weights_label, weights, MAX_FILE_SIZE)?;
    parse_safetensors(weights_label, weights)
}

/// The size bound of a file, for bytes that did not come from a file.
fn check_len(label: &str, bytes: &[u8], limit: u64) -> Result<()> {
    let size = bytes.len() as u64;
    if size > limit {
        return Err(Error::FileTooLarge {
            path: label.into(),
            size,
            limit,
        });
    }
    Ok(())
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
    let weights = read_file(&st, MAX_FILE_SIZE)?;
    let tensors = parse_adapter_weights(&weights, &st.display().to_string())?;
    Ok(AdapterFiles {
        dir,
        config,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora_qv() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/cases/lora_qv/adapters/default")
    }

    #[test]
    fn bytes_parse_as_the_folder_reads() {
        let dir = lora_qv();
        let files = read_adapter_dir(&dir, None).unwrap();
        let cfg = std::fs::read(dir.join("adapter_config.json")).unwrap();
        let st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let (config, tensors) = parse_adapter(&cfg, &st, "adapter_model.safetensors").unwrap();
        assert_eq!(config.to_json_string(), files.config.to_json_string());
        assert_eq!(
            tensors.keys().collect::<Vec<_>>(),
            files.tensors.keys().collect::<Vec<_>>()
        );
        for (k, t) in &tensors {
            let u = &files.tensors[k];
            assert_eq!(t.dtype, u.dtype);
            assert_eq!(
                t.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                u.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let dir = lora_qv();
        let cfg = std::fs::read(dir.join("adapter_config.json")).unwrap();
        let st = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        assert!(matches!(
            parse_adapter(b"{", &st, "w"),
            Err(Error::ConfigNotJson(_))
        ));
        assert!(matches!(
            parse_adapter(b"[]", &st, "w"),
            Err(Error::ConfigNotJson(_))
        ));
        for cut in [0, 7, 8, 100, st.len() - 1] {
            assert!(
                matches!(
                    parse_adapter(&cfg, &st[..cut], "w"),
                    Err(Error::Safetensors { .. })
                ),
                "cut at {cut}"
            );
        }
        let big = vec![b' '; MAX_CONFIG_SIZE as usize + 1];
        assert!(matches!(
            parse_adapter_config(&big),
            Err(Error::FileTooLarge { .. })
        ));
    }
}
