//! graft-arch: what a model is, independent of where it runs.
//!
//! - [`config`]: `config.json` read fail-closed (every key that changes the numbers is read
//!   or refused), recording the configuration as graft understood it;
//! - [`rope`]: RoPE parameters in both transformers spellings, and their frequencies;
//! - [`network`]: the description every backend runs (embeddings, blocks as data, head);
//! - [`arch`]: one file per architecture (keys, description, GGUF names) and their registry;
//! - [`table`]: the module table (Hugging Face paths, base weights, dense or quantized);
//! - [`weights`], [`gguf`], [`gguf_weights`]: the weight files (safetensors, GGUF).

// Library code returns typed errors; only tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod arch;
pub mod config;
pub mod error;
pub mod gguf;
pub mod gguf_weights;
pub mod network;
pub mod rope;
pub mod table;
pub mod weights;

pub use arch::Described;
pub use config::Understood;
pub use error::{Error, Result};
pub use network::Network;
pub use table::{ModuleTable, Weight};
pub use weights::WeightStore;
