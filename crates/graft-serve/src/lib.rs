//! graft-serve: `graft serve`, an OpenAI-compatible HTTP server for one base model and many
//! PEFT adapters. Each request names its adapter in `model` (as vLLM and LoRAX do); requests
//! join one running batch at step boundaries whatever their adapters (continuous batching),
//! and every request gets the tokens it gets alone (`graft generate`'s), bit for bit.
//!
//! Layers: the HTTP face ([`http`]: axum on tokio) ← the engine ([`engine`]: one thread that
//! owns the batch and runs [`graft_models::Model::forward_batch`]) ← the adapters it knows
//! ([`adapters`]: loaded on other threads, resident under an LRU memory budget).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod adapters;
pub mod api;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod text;

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use graft_adapters::Adapter;
use graft_models::{Device, GpuBatchOptions, Model};
use graft_text::Tokenizer;

pub use adapters::Loader;
pub use error::{ApiError, Result};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The base model's name in the API (`model` naming no adapter).
    pub base_name: String,
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Positions each sequence may hold (prompt and answer).
    pub max_context: usize,
    /// Prompt tokens one step runs at most.
    pub prefill_chunk: usize,
    /// Requests waiting for a slot at most; past it, 429.
    pub max_queue: usize,
    /// Bytes the resident adapters may hold (least recently used dropped first).
    pub adapter_memory: u64,
    /// Requests to `/v1/*` must send `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// After a shutdown signal, how long running requests may take to finish.
    pub shutdown_timeout: Duration,
    /// On a GPU: adapters resident in its adapter slots at once (vLLM's `--max-loras`).
    pub gpu_adapter_slots: usize,
    /// On a GPU: the largest LoRA rank an adapter slot takes (vLLM's `--max-lora-rank`).
    pub max_lora_rank: usize,
}

/// What every request handler shares.
pub struct Shared {
    pub cfg: ServeConfig,
    pub model: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
    pub vocab_size: usize,
    pub engine: engine::Engine,
    pub adapters: adapters::Adapters,
    pub metrics: Arc<metrics::Metrics>,
    pub shutting_down: AtomicBool,
    pub ids: AtomicU64,
    pub created: u64,
}

/// A server: the model, its engine thread and its adapters.
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Starts the engine on `model`. `adapters` are loaded already, as (name, source, adapter).
    pub fn new(
        model: Model,
        tokenizer: Tokenizer,
        eos: Vec<u32>,
        mut cfg: ServeConfig,
        loader: Arc<dyn Loader>,
        adapters: Vec<(String, String, Adapter)>,
    ) -> std::result::Result<Server, String> {
        if cfg.max_batch == 0 || cfg.max_context < 2 || cfg.prefill_chunk == 0 {
            return Err("max-batch, max-context and the prefill chunk must be positive".into());
        }
        if cfg.max_context > model.max_positions() {
            return Err(format!(
                "max-context {} is past the model's {} positions",
                cfg.max_context,
                model.max_positions()
            ));
        }
        let model = Arc::new(model);
        let mut set = adapters::Adapters::new(cfg.adapter_memory, loader);
        if model.device() == Device::Gpu {
            let layout = model
                .with_gpu(|g, _, _| -> std::result::Result<_, String> {
                    if g.capacity() < cfg.max_context {
                        return Err(format!(
                            "the GPU's KV cache holds {} positions, less than max-context {}",
                            g.capacity(),
                            cfg.max_context
                        ));
                    }
                    g.enable_batch(GpuBatchOptions {
                        sequences: cfg.max_batch,
                        adapters: cfg.gpu_adapter_slots,
                        max_rank: cfg.max_lora_rank,
                    })
                    .map_err(|e| format!("batched passes on the GPU: {e}"))?;
                    // a step is a prefill chunk and a decode row per sequence: the chunk shrinks
                    // to fit one GPU pass (the numbers do not depend on the chunking)
                    if cfg.max_batch >= g.batch_rows() {
                        return Err(format!(
                            "max-batch {} leaves no room for a prompt chunk in one GPU pass ({} rows)",
                            cfg.max_batch,
                            g.batch_rows()
                        ));
                    }
                    cfg.prefill_chunk = cfg.prefill_chunk.min(g.batch_rows() - cfg.max_batch);
                    g.batch_layout()
                        .ok_or_else(|| "batched passes are not enabled".to_string())
                })
                .unwrap_or_else(|| Err("the model is not on a GPU".into()))?;
            let m = model.clone();
            // an adapter the GPU's slots cannot hold is refused as it loads, not when a
            // request runs
            set.set_check(Box::new(move |a| {
                layout.check(m.table(), a).map_err(|e| e.to_string())
            }));
        }
        for (name, source, a) in adapters {
            if name == cfg.base_name {
                return Err(format!("an adapter cannot take the base's name `{name}`"));
            }
            set.insert(&name, &source, a, false)?;
        }
        let metrics = Arc::new(metrics::Metrics::new());
        let vocab_size = model.vocab_size;
        let tokenizer = Arc::new(tokenizer);
        let engine = engine::Engine::start(
            model.clone(),
            tokenizer.clone(),
            eos,
            engine::EngineConfig {
                max_batch: cfg.max_batch,
                prefill_chunk: cfg.prefill_chunk,
                gpu_adapter_slots: cfg.gpu_adapter_slots,
            },
            metrics.clone(),
        )
        .map_err(|e| format!("starting the engine thread: {e}"))?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Server {
            shared: Arc::new(Shared {
                cfg,
                model,
                tokenizer,
                vocab_size,
                engine,
                adapters: set,
                metrics,
                shutting_down: AtomicBool::new(false),
                ids: AtomicU64::new(1),
                created,
            }),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves on `listener` until `shutdown` completes; then new requests are refused (503,
    /// and the listener closes), running ones may finish within the configured timeout, and
    /// the engine stops.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let app = http::router(shared.clone());
        let begun = Arc::new(tokio::sync::Notify::new());
        let (s2, b2) = (shared.clone(), begun.clone());
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            s2.shutting_down.store(true, Ordering::SeqCst);
            b2.notify_one();
        });
        let timeout = shared.cfg.shutdown_timeout;
        let result = tokio::select! {
            r = serve.into_future() => r,
            _ = async { begun.notified().await; tokio::time::sleep(timeout).await } => {
                eprintln!("graft serve: requests still running after {timeout:?}; stopping anyway");
                Ok(())
            }
        };
        shared.shutting_down.store(true, Ordering::SeqCst);
        let s3 = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s3.engine.stop_and_join()).await;
        result
    }
}
