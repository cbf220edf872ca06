//! The one error type of `graft-models`.

/// Errors from model folders, the adapter calls on a model and running it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Adapter files, matching and the registry (also when a lower layer raised them).
    #[error(transparent)]
    Core(graft_adapters::Error),
    /// The model's configuration, description or weights.
    #[error(transparent)]
    Arch(graft_arch::Error),
    #[error("{dir}: no config.json; a model folder holds config.json and model.safetensors (or a sharded model.safetensors.index.json)")]
    NoModelConfig { dir: String },
    #[error("config.json: {0}")]
    BadModelConfig(String),
    #[error("token id {id} is out of range for a vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequence of {len} tokens exceeds the model's {max} positions")]
    TooLong { len: usize, max: usize },
    #[error("{0}")]
    BaseModel(String),
    #[error(transparent)]
    Hub(#[from] graft_hub::Error),
    /// The GPU backend.
    #[cfg(feature = "gpu")]
    #[error(transparent)]
    Gpu(#[from] graft_gpu::Error),
    /// A GPU was asked for in a build without one.
    #[error("no GPU: {0}")]
    NoGpu(String),
    #[error("tensor math failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl From<graft_adapters::Error> for Error {
    fn from(e: graft_adapters::Error) -> Self {
        Error::Core(e)
    }
}

/// An adapter error raised while describing the model stays an adapter error.
impl From<graft_arch::Error> for Error {
    fn from(e: graft_arch::Error) -> Self {
        match e {
            graft_arch::Error::Core(c) => Error::Core(c),
            other => Error::Arch(other),
        }
    }
}

impl From<graft_cpu::Error> for Error {
    fn from(e: graft_cpu::Error) -> Self {
        match e {
            graft_cpu::Error::Core(c) => Error::Core(c),
            graft_cpu::Error::Candle(c) => Error::Candle(c),
            graft_cpu::Error::Input(m) => Error::BaseModel(m),
            other => Error::BaseModel(other.to_string()),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
