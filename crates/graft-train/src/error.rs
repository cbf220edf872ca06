//! The training crate's one error enum.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Error)]
pub enum Error {
    /// A line of the data file could not be used (1-based line number).
    #[error("{path}:{line}: {msg} (fix the line, or skip bad lines)")]
    BadLine {
        path: String,
        line: usize,
        msg: String,
    },
    /// The data set holds no usable example.
    #[error("{0}")]
    EmptyData(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the loss became {value} at step {step}; training stopped. {checkpoint}")]
    NonFiniteLoss {
        step: usize,
        value: f32,
        checkpoint: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error(transparent)]
    Text(#[from] graft_text::Error),
    /// Boxed: a model error is large, and training's results are returned on every step.
    #[error(transparent)]
    Model(Box<graft_models::Error>),
    #[error(transparent)]
    Core(#[from] graft_adapters::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<graft_models::Error> for Error {
    fn from(e: graft_models::Error) -> Self {
        Error::Model(Box::new(e))
    }
}
