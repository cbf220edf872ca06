//! The one error type of `graft-models`.

/// Errors from model folders, architectures and the adapter calls on a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] graft_core::Error),
    #[error(transparent)]
    Arch(#[from] graft_arch::Error),
    #[error("{dir}: no config.json; a model folder holds config.json and model.safetensors (or a sharded model.safetensors.index.json)")]
    NoModelConfig { dir: String },
    #[error("{dir}: no weights found (model.safetensors or model.safetensors.index.json){hint}")]
    NoWeights { dir: String, hint: String },
    #[error("config.json: {0}")]
    BadModelConfig(String),
    #[error("model type `{0}` is not supported yet (supported: llama, mistral, opt)")]
    UnsupportedArchitecture(String),
    #[error("weight `{name}` is missing from the model files")]
    MissingWeight { name: String },
    #[error("weight `{name}`: expected shape {expected:?}, got {got:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("token id {id} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequence of {len} tokens exceeds the model's {max} positions")]
    TooLong { len: usize, max: usize },
    #[error("{0}")]
    BaseModel(String),
    #[error("GGUF: {0}")]
    Gguf(String),
    #[error(transparent)]
    Hub(#[from] graft_hub::Error),
    #[error("tensor math failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
