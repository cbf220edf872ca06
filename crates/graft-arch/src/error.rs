//! The one error type of `graft-arch`.

/// Errors from model configurations, architecture descriptions and model weights.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] graft_core::Error),
    /// A key is missing, has the wrong type or an impossible value.
    #[error("{source_name}: `{key}` {problem}")]
    BadConfig {
        source_name: String,
        key: String,
        problem: String,
    },
    /// A key that changes the numbers has a value graft does not implement.
    #[error("{source_name}: `{key}` = {value} is not supported: {why}")]
    UnsupportedConfig {
        source_name: String,
        key: String,
        value: String,
        why: String,
    },
    #[error("model type `{0}` is not supported yet (supported: {1})")]
    UnsupportedArchitecture(String, String),
    #[error("{dir}: no config.json; a model folder holds config.json and model.safetensors (or a sharded model.safetensors.index.json)")]
    NoModelConfig { dir: String },
    #[error("{dir}: no weights found (model.safetensors or model.safetensors.index.json){hint}")]
    NoWeights { dir: String, hint: String },
    #[error("weight `{name}` is missing from the model files")]
    MissingWeight { name: String },
    #[error("weight `{name}`: expected shape {expected:?}, got {got:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("GGUF: {0}")]
    Gguf(String),
    #[error("tensor math failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
