//! graft-models: the model users hold. A base (Hugging Face safetensors or GGUF, from disk,
//! bytes or the Hub) described by `graft-arch`, PEFT adapters loaded, switched and saved through
//! `graft-adapters`'s registry with transformers' `PeftAdapterMixin` calls, and the device it runs
//! on: `graft-cpu`, or `graft-gpu` behind the `gpu` feature.

// Library code returns typed errors; only tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod device;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod model;
pub mod sampling;

pub use device::{Device, DeviceOptions, DeviceReport};
pub use error::{Error, Result};
pub use graft_cpu::{replaces_parameters, KvCache, Sequence};
/// Batched passes on the GPU (what a server runs): see [`graft_gpu::GpuModel::enable_batch`].
#[cfg(feature = "gpu")]
pub use graft_gpu::{
    BatchLayout as GpuBatchLayout, BatchOptions as GpuBatchOptions, BatchSeq as GpuBatchSeq,
};
pub use model::{LoadAdapterOptions, Model, OpenOptions, Threading};
pub use sampling::Sampling;
