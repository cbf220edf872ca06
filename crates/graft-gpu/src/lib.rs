//! graft-gpu: the GPU backend. WGSL kernels (`shaders/`) run through wgpu on Vulkan, Metal,
//! DX12 and WebGPU; any architecture's description (`graft_arch::Network`) is lowered to them,
//! with PEFT adapters folded into the kernels.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod device;
pub mod error;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod readback;
pub mod weights;

pub use device::{Gpu, GpuInfo, GpuOptions};
pub use error::{Error, Result};
pub use model::{
    BatchLayout, BatchOptions, BatchSeq, DevicePick, GpuModel, GpuModelOptions, GpuStats,
};
pub use readback::map_read;
