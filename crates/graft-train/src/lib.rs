//! Training PEFT adapters on a frozen base: the guide's `add_adapter` + `Trainer.train()` +
//! `save_pretrained`, natively.
//!
//! - [`data`]: JSONL data (chat messages or prompt/completion) with loss masks;
//! - [`params`]: the adapter's trainable tensors, taken from and given back to the model;
//! - [`forward`]: the differentiable forward pass and loss (candle autograd, own backward for
//!   the frozen base and the loss);
//! - [`optim`]: torch's AdamW, transformers' schedules, gradient clipping;
//! - [`trainer`]: the loop, checkpoints, resume, logs;
//! - [`save`]: atomic writes; [`plot`]: the loss curve.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod data;
pub mod error;
pub mod forward;
pub mod ops;
pub mod optim;
pub mod params;
pub mod plot;
pub mod save;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::{Event, Output, StepLog, Summary, TrainArgs, Trainer};
