//! Hugging Face `config.json` for the architectures graft runs: read fail-closed by
//! `graft-arch` (both transformers spellings; every key that changes the numbers read or
//! refused).

pub use graft_arch::arch::llama::LlamaConfig;
pub use graft_arch::arch::opt::{OptActivation as Activation, OptConfig};
pub use graft_arch::rope::{Rope, RopeScaling};
