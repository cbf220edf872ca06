//! graft-arch: what a model is, independent of where it runs.
//!
//! - [`config`]: `config.json` read fail-closed (every key that changes the numbers is read
//!   or refused), recording the configuration as graft understood it;
//! - [`rope`]: RoPE parameters in both transformers spellings, and their frequencies;
//! - [`arch`]: one file per architecture.

// Library code returns typed errors; only tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod arch;
pub mod config;
pub mod error;
pub mod rope;

pub use config::Understood;
pub use error::{Error, Result};
