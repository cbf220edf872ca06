//! graft-models: Llama-family and OPT architectures on candle-core CPU tensors, with PEFT
//! adapters injected through `graft-core`'s registry.

// Library code returns typed errors; only tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod attention;
pub mod base;
pub mod error;
pub mod gguf;
pub mod gguf_model;
pub mod hf_config;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod llama;
pub mod model;
pub mod opt;
pub mod sampling;
pub mod weights;

pub use attention::KvCache;
pub use error::{Error, Result};
pub use model::{LoadAdapterOptions, Model, OpenOptions, Threading};
pub use sampling::Sampling;
