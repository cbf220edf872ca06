//! graft-cpu: the CPU backend. It runs a [`graft_arch::Network`] — any architecture's
//! description — on candle-core CPU tensors (quantized weights through graft-quant's kernels),
//! with the adapters of a [`graft_adapters::AdapterRegistry`] applied unmerged, as PEFT applies
//! them. One sequence at a time; the KV cache is plain Rust on f32 slices.

// Library code returns typed errors; only tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod attention;
pub mod error;
pub mod forward;

pub use attention::KvCache;
pub use error::{Error, Result};
pub use forward::{forward, Ctx};
