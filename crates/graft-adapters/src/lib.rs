//! graft-adapters: PEFT adapter files, module matching, adapter math and the adapter registry.
//!
//! No GPU here: this crate is the CPU reference that every other layer is checked against.

// Library code returns typed errors; only tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod adapter;
pub mod config;
pub mod error;
pub mod files;
pub mod init;
pub mod inject;
pub mod matching;
pub mod registry;
pub mod tensors;

pub use config::{AdapterConfig, PeftType};
pub use error::{Error, Result};
pub use inject::{Adapter, InjectOptions, LoadReport};
pub use matching::{ModuleInfo, ModuleInventory, ModuleKind};
pub use registry::AdapterRegistry;
pub use tensors::LoadedTensor;
