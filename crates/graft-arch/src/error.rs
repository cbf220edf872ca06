//! The one error type of `graft-arch`.

/// Errors from model configurations, architecture descriptions and model weights.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Core(#[from] graft_adapters::Error),
    /// A key is missing, has the wrong type or an impossible value.
    #[error("{0}")]
    BadConfig(Box<ConfigProblem>),
    /// A key that changes the numbers has a value graft does not implement.
    #[error("{0}")]
    UnsupportedConfig(Box<ConfigProblem>),
    #[error("model type `{0}` is not supported yet (supported: {1})")]
    UnsupportedArchitecture(String, String),
    #[error("{dir}: no weights found (model.safetensors or model.safetensors.index.json){hint}")]
    NoWeights { dir: String, hint: String },
    /// A sharded checkpoint's index, or the set of weight files, is malformed.
    #[error("{0}")]
    BadWeightFiles(String),
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

/// What is wrong with one configuration key (boxed in [`Error`], which stays small).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    /// Where the configuration came from (`…/config.json`, a GGUF file's metadata).
    pub source_name: String,
    /// The key, with its path for nested keys (`rope_parameters.rope_type`).
    pub key: String,
    /// The value graft refuses (for an unsupported value).
    pub value: Option<String>,
    /// What is wrong, or why the value is refused.
    pub problem: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(
                f,
                "{}: `{}` = {v} is not supported: {}",
                self.source_name, self.key, self.problem
            ),
            None => write!(f, "{}: `{}` {}", self.source_name, self.key, self.problem),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
