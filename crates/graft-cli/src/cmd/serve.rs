//! `graft serve`: the OpenAI-compatible server (graft-serve) on a model opened as every
//! command opens one, with adapters named on the command line, loaded through the API, or
//! (with --allow-hub-adapters) fetched from the Hub on first use.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use graft_models::model::DEFAULT_MODEL_ID;
use graft_models::{LoadAdapterOptions, Model};
use graft_serve::{Loader, ServeConfig, Server};

use super::model::{
    open, parse_adapter_arg, print_warnings, to_device, tokenizer_for, HubArgs, ModelArgs,
};
use crate::CliResult;

#[derive(Args)]
pub struct ServeCmd {
    /// Base model: folder, .gguf file or Hub repo id (default: the embedded SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<String>,
    /// Which GGUF file of a --model repository holding several.
    #[arg(long)]
    pub gguf_file: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Quantize a safetensors model's Linear weights while loading (int8, nf4, q8_0, q4_0).
    #[arg(long, value_parser = ["int8", "nf4", "q8_0", "q4_0"])]
    pub quantize: Option<String>,
    /// An adapter to serve, NAME=DIR or NAME=org/repo; repeatable. Requests pick it with
    /// `"model": "NAME"`.
    #[arg(long = "adapter")]
    pub adapters: Vec<String>,
    /// Load adapters that only partly fit the base, with warnings, instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
    /// CPU decode only, opt-in: activations rounded to 8 bits, multiplied in integers (faster;
    /// logits no longer exactly PEFT's). Also GRAFT_INT8_ACTIVATIONS=1.
    #[arg(long)]
    pub int8_activations: bool,
    /// A `model` that names no loaded adapter but looks like `org/name` is fetched from the
    /// Hub and loaded on first use.
    #[arg(long)]
    pub allow_hub_adapters: bool,
    /// The base model's name in the API (default: its Hub id, else the --model argument).
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Where the batch runs: auto takes a hardware GPU when there is one, else the CPU.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "gpu"])]
    pub device: String,
    /// On a GPU: adapters resident in its adapter slots at once (others wait for a slot).
    #[arg(long, default_value_t = 8)]
    pub max_loras: usize,
    /// On a GPU: the largest LoRA rank an adapter slot takes (adapters above it are refused).
    #[arg(long, default_value_t = 16)]
    pub max_lora_rank: usize,
    /// Sequences in the running batch at most.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Positions per sequence, prompt and answer (default: the model's, at most 4096).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Prompt tokens a step runs at most; longer prompts are prefilled in chunks of this size.
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Requests waiting for a batch slot at most; more are answered 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// MiB the resident adapters may hold; the least recently used are dropped first (and
    /// loaded again when asked for).
    #[arg(long, default_value_t = 2048)]
    pub adapter_memory: u64,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: $GRAFT_API_KEY, else none).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Seconds running requests may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Benchmarks only: serve a model of Qwen2.5-Coder-0.5B Q4_K_M's shape with random weights
    /// and a word-level tokenizer (no --model), for hosts the real file cannot reach.
    #[arg(long, hide = true)]
    pub synthetic: bool,
    /// Benchmarks only, with --synthetic: that many random r=16 LoRA adapters, s00, s01, …
    #[arg(long, hide = true, default_value_t = 0)]
    pub synthetic_adapters: usize,
}

/// Builds adapters for the server: a folder or a Hub repo id, as --adapter reads them.
struct CliLoader {
    hub: graft_hub::Hub,
    allow_partial: bool,
    allow_hub: bool,
}

impl Loader for CliLoader {
    fn load(
        &self,
        model: &Model,
        name: &str,
        source: &str,
    ) -> Result<graft_adapters::Adapter, String> {
        let opts = LoadAdapterOptions {
            adapter_name: Some(name.to_string()),
            allow_partial: self.allow_partial,
            ..Default::default()
        };
        let a = model
            .build_adapter_hub(&self.hub, source, None, opts)
            .map_err(|e| e.to_string())?;
        print_warnings(name, &a.report);
        Ok(a)
    }

    fn allow_hub(&self) -> bool {
        self.allow_hub
    }
}

pub fn serve(c: &ServeCmd) -> CliResult<()> {
    let mut args = ModelArgs {
        model: c.model.clone(),
        gguf_file: c.gguf_file.clone(),
        hub: c.hub.clone(),
        quantize: c.quantize.clone(),
        adapters: Vec::new(),
        active: None,
        disable_adapters: false,
        allow_partial: c.allow_partial,
        device: "cpu".into(),
        max_context: None,
        int8_activations: c.int8_activations,
    };
    let mut extra = Vec::new();
    let synthetic_dir = if c.synthetic {
        let d = std::env::temp_dir().join(format!("graft-synthetic-{}", std::process::id()));
        std::fs::create_dir_all(&d)?;
        let p = d.join("qwen2.5-0.5b-shape.gguf");
        std::fs::write(&p, super::synthetic::qwen05b())?;
        args.model = Some(p.display().to_string());
        for (n, p) in super::synthetic::qwen05b_adapters(&d, c.synthetic_adapters)? {
            extra.push(format!("{n}={}", p.display()));
        }
        eprintln!(
            "graft serve: a synthetic Qwen2.5-Coder-0.5B-shaped model (random weights) and {} random adapters",
            c.synthetic_adapters
        );
        Some(d)
    } else {
        None
    };
    let (mut model, base_dir) = open(&args)?;
    let tokenizer = match &synthetic_dir {
        Some(_) => super::synthetic::tokenizer(model.vocab_size)?,
        None => tokenizer_for(&model, &base_dir)?,
    };
    let mut eos = model.eos_token_ids();
    if let Some(e) = tokenizer.eos_id {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    let loader = Arc::new(CliLoader {
        hub: c.hub.hub(),
        allow_partial: c.allow_partial,
        allow_hub: c.allow_hub_adapters,
    });
    // an adapter folder given as --model loads as `default`, as in every command
    let mut adapters = Vec::new();
    for name in model.registry().adapter_names() {
        if let Some(a) = model.registry().get(&name) {
            adapters.push((name.clone(), c.model.clone().unwrap_or_default(), a.clone()));
        }
    }
    if !adapters.is_empty() {
        let names: Vec<String> = adapters.iter().map(|a| a.0.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        model.delete_adapter(&names)?;
    }
    for spec in c.adapters.iter().chain(&extra) {
        let (name, source) = parse_adapter_arg(spec);
        let a = loader
            .load(&model, &name, &source)
            .map_err(|e| format!("adapter `{name}` ({source}): {e}"))?;
        adapters.push((name, source, a));
    }
    let base_name = c
        .served_model_name
        .clone()
        .or_else(|| model.hub_id.clone())
        .or_else(|| c.model.clone())
        .unwrap_or_else(|| DEFAULT_MODEL_ID.to_string());
    let max_context = c
        .max_context
        .unwrap_or_else(|| model.max_positions().min(4096));
    args.device = c.device.clone();
    args.max_context = Some(max_context);
    // after the adapters left the registry: the GPU holds the base only, adapters enter its
    // slots as requests use them
    to_device(&args, &mut model)?;
    let on = match model.device() {
        graft_models::Device::Gpu => "on the GPU",
        _ => "on the CPU",
    };
    let kv = model.kv_cache_bytes(max_context) * c.max_batch as u64;
    let names: Vec<String> = adapters.iter().map(|a| a.0.clone()).collect();
    let cfg = ServeConfig {
        base_name: base_name.clone(),
        max_batch: c.max_batch,
        max_context,
        prefill_chunk: c.prefill_chunk,
        max_queue: c.max_queue,
        adapter_memory: c.adapter_memory << 20,
        api_key: c.api_key.clone().or_else(|| {
            std::env::var("GRAFT_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
        }),
        shutdown_timeout: Duration::from_secs(c.shutdown_timeout),
        gpu_adapter_slots: c.max_loras,
        max_lora_rank: c.max_lora_rank,
    };
    let server = Server::new(model, tokenizer, eos, cfg, loader, adapters)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((c.host.as_str(), c.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", c.host, c.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "graft serve: http://{addr} — model `{base_name}`, adapters: {}; batch {}, context {max_context} (KV cache up to {} MiB), {on}",
            if names.is_empty() { "none".to_string() } else { names.join(", ") },
            c.max_batch,
            kv >> 20,
        );
        server.run(listener, shutdown_signal()).await?;
        eprintln!("graft serve: stopped");
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    if let Some(d) = synthetic_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    served
}

/// Ctrl-C, or SIGTERM (what Docker and Kubernetes send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("graft serve: shutting down (running requests finish first)");
}
