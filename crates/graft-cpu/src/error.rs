//! The one error type of `graft-cpu`.

/// Errors of a forward pass on the CPU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] graft_adapters::Error),
    /// The input cannot run (no tokens, an id outside the vocabulary).
    #[error("{0}")]
    Input(String),
    #[error("tensor math failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
