//! graft-cpu: the CPU backend. It runs a [`graft_arch::Network`] — any architecture's
//! description — on candle-core CPU tensors (quantized weights through graft-quant's kernels),
//! with the adapters of a [`graft_adapters::AdapterRegistry`] applied unmerged, as PEFT applies
//! them; or several sequences in one pass, each with its own adapter ([`forward_batch`]). The
//! KV cache is plain Rust on f32 slices.

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
pub use forward::{forward, forward_batch, replaces_parameters, Ctx, Sequence};
