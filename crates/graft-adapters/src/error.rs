//! The one error type of `graft-adapters`.

use std::path::PathBuf;

/// Everything that can go wrong while reading, matching or running an adapter.
///
/// Messages say what was wrong and, where there is one, the likely cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === files ===
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: String, reason: String },
    #[error("{path} is a pickle (adapter_model.bin); graft never executes pickles. Convert it to safetensors first, e.g. in Python: `from safetensors.torch import save_file; import torch; save_file(torch.load('{path}', weights_only=True), 'adapter_model.safetensors')`")]
    PickleNotSupported { path: String },
    #[error("{dir}: no adapter_config.json found; make sure you are passing the correct path to the adapter")]
    NoAdapterConfig { dir: String },
    #[error("{dir}: adapter_config.json found but no adapter_model.safetensors next to it")]
    NoAdapterWeights { dir: String },
    #[error("file {path} is {size} bytes, more than the limit of {limit} bytes")]
    FileTooLarge { path: String, size: u64, limit: u64 },

    // === adapter config ===
    #[error("adapter_config.json is not valid JSON: {0}")]
    ConfigNotJson(String),
    #[error("adapter_config.json: {0}")]
    InvalidConfig(String),
    #[error("peft_type `{0}` is not supported: graft injects LORA, IA3 and ADALORA adapters (prompt-learning methods such as PROMPT_TUNING, PREFIX_TUNING and P_TUNING are not injected into modules; other methods are not implemented yet)")]
    UnsupportedPeftType(String),
    #[error("adapter_config.json: `{field}` = {value} is not supported yet: {why}")]
    UnsupportedFeature {
        field: String,
        value: String,
        why: String,
    },
    #[error("invalid regular expression `{pattern}` in `{field}`: {reason}")]
    BadRegex {
        field: String,
        pattern: String,
        reason: String,
    },

    // === injection ===
    #[error("Target modules {targets} not found in the base model. Please check the target modules and try again. (The model has modules such as: {examples})")]
    NoTargetModules { targets: String, examples: String },
    #[error("adapter `{adapter}` does not fit this base model:\n{report}")]
    AdapterMismatch { adapter: String, report: String },
    #[error("tensor `{name}`: expected shape {expected:?}, got {got:?}{hint}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
        hint: String,
    },
    #[error(
        "tensor `{name}` has dtype {dtype}, expected a floating-point dtype (F32, F16, BF16, F64)"
    )]
    BadDtype { name: String, dtype: String },
    #[error("tensor `{name}` contains NaN or infinite values")]
    NonFinite { name: String },

    // === registry ===
    #[error("No adapter loaded. Please load an adapter first.")]
    NoAdapterLoaded,
    #[error("Adapter with name {0} already exists. Please use a different name.")]
    AdapterExists(String),
    #[error(
        "Adapter with name {name} not found. Please pass the correct adapter name among {known:?}"
    )]
    AdapterNotFound { name: String, known: Vec<String> },
    #[error("Attempted to set multiple ({0:?}) adapters at once for modules_to_save.")]
    MultipleModulesToSave(Vec<String>),
    #[error("invalid adapter name `{name}`: {why}")]
    BadAdapterName { name: String, why: String },

    #[error("base weight: {0}")]
    Weight(String),
    #[error("tensor math failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
