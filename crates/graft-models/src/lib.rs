//! graft-models: Llama-family and OPT architectures on candle-core CPU tensors, with PEFT
//! adapters injected through `graft-core`'s registry.

pub mod base;
pub mod error;
pub mod hf_config;
pub mod llama;
pub mod model;
pub mod opt;
pub mod weights;

pub use error::{Error, Result};
pub use model::{KvCache, LoadAdapterOptions, Model};
