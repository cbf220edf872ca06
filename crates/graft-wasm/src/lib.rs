//! graft in the browser: a thin wasm-bindgen facade over graft's core, models, GPU and Hub
//! crates. The JavaScript layer in `web/npm/` gives it the PEFT guide's names
//! (`AutoModelForCausalLM.from_pretrained`, `load_adapter`, `set_adapter`, …).
//!
//! Everything here turns typed Rust errors into JavaScript `Error`s carrying `kind` (a stable
//! name) and the message; nothing reachable from JavaScript unwraps or panics.

pub mod kinds;
pub mod settings;

#[cfg(target_arch = "wasm32")]
mod web;
