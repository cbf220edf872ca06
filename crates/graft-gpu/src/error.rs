//! Errors of the GPU path. wgpu reports device errors through a callback; `Gpu` collects them
//! and turns them into these typed errors instead of wgpu's default handler, which panics.

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No GPU adapter; the text is wgpu's account of its search (long: say "no GPU" first).
    #[error("no GPU adapter found ({0})")]
    NoAdapter(String),
    #[error("the GPU refused the device graft asked for: {0}")]
    RequestDevice(String),
    #[error("this model needs {what} = {need}, but the GPU allows at most {limit}")]
    LimitExceeded {
        what: &'static str,
        need: u64,
        limit: u64,
    },
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    #[error("GPU validation error (a bug in graft; please report it): {0}")]
    Validation(String),
    #[error("reading back from the GPU failed (the device may have been lost or reset): {0}")]
    Readback(String),
    #[error("not supported on the GPU path yet: {0}")]
    Unsupported(String),
    /// The input cannot run (no tokens, an id outside the vocabulary).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Arch(#[from] graft_arch::Error),
    #[error(transparent)]
    Core(#[from] graft_adapters::Error),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
