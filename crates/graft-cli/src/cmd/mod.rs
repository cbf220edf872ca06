//! One module per command; [`model`] holds what the model-running commands share.

pub mod bench;
pub mod bench_gemm;
pub mod bench_gpu;
pub mod bench_serve;
pub mod download;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod model;
pub mod serve;
pub mod synthetic;
pub mod train;
