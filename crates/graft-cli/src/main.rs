//! `graft`: run PEFT adapters from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use graft_models::Sampling;

#[derive(Parser)]
#[command(
    name = "graft",
    version,
    about = "Load, run and inspect 🤗 PEFT adapters (LoRA, IA3, AdaLoRA) — the same numbers as PEFT, without Python"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One forward pass; writes the logits ([tokens, vocab], f32, named `logits`) to a safetensors file.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated token ids, e.g. 5,17,42.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Generation (greedy unless --temperature > 0). Prints only the generated text (or ids,
    /// with --tokens) on stdout, streamed as it comes; tokens/s on stderr.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Maximum number of new tokens.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Prompt as comma-separated token ids instead of text.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["prompt", "chat"])]
        tokens: Option<Vec<u32>>,
        /// A user message, wrapped in the model's chat template (as
        /// `apply_chat_template(..., add_generation_prompt=True)`).
        #[arg(long, conflicts_with = "prompt")]
        chat: Option<String>,
        /// A system message for --chat.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// Prompt text, tokenized as is.
        #[arg(required_unless_present_any = ["tokens", "chat"])]
        prompt: Option<String>,
        /// Sampling temperature (0 = greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Keep only the k most likely tokens (0 = off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Keep the smallest set of tokens whose probability reaches p (1 = off).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Random seed for sampling.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Prefill and decode tokens/s (with adapters on and off), peak memory. The workload is
    /// fixed (prompt ids (i·7919 mod 10000) + 100, greedy, no EOS) so that
    /// scripts/bench_baselines.py runs the same one on llama.cpp and transformers+PEFT.
    /// With --device gpu: prefill, decode with no adapter / LoRA r=8 q,v / LoRA r=16 on all
    /// linear layers / IA3, dispatches and submits per token, and quantized mat-vec bandwidth
    /// next to a copy kernel's.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length for prefill.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to decode after the prompt.
        #[arg(long, default_value_t = 64)]
        decode_tokens: usize,
        /// Repetitions; the best run is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// GPU only: upload the Linear weights as f16 instead of their own format (the f16 row
        /// of the benchmark, from the same model).
        #[arg(long)]
        f16_weights: bool,
        /// Benchmark a model of SmolLM2-135M's exact shape and formats (Q4_1, Q8_0 tied
        /// embedding) with random weights, made in memory: for a machine the model file
        /// cannot reach. Ignores --model.
        #[arg(long)]
        synthetic: bool,
        /// Also decode this many sequences at once (CPU; e.g. `1,4,8`): each has its own
        /// prompt and cache, and each step is one batched pass (what `graft serve` runs).
        /// Reports the total decode tokens/s of each batch size and its ratio to one sequence.
        #[arg(long, value_delimiter = ',')]
        batch: Vec<usize>,
    },
    /// The configuration of a model as graft understood it (every value, where it came from,
    /// the keys nothing reads), and the load report of an adapter: method, targeted modules,
    /// ranks and scales, tensors used.
    #[command(arg_required_else_help = true)]
    Inspect {
        /// Adapter folder (adapter_config.json + adapter_model.safetensors) or Hub repo id.
        adapter: Option<String>,
        /// Base model (default: the adapter's base_model_name_or_path, if it is local or cached).
        #[arg(long)]
        model: Option<String>,
        /// Accept a partial load and report what does not fit.
        #[arg(long)]
        allow_partial: bool,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Trains an adapter (LoRA or IA3, plus modules_to_save) on a JSONL data set and saves it
    /// in PEFT's format: the guide's add_adapter + Trainer.train() + save_pretrained. The base
    /// stays frozen and may be quantized (a GGUF, or --quantize).
    Train(Box<train::TrainCmd>),
    /// Training tokens/s and peak memory on a fixed workload (scripts/bench_train.sh runs the
    /// same one in transformers + PEFT).
    BenchTrain(Box<train::BenchTrainCmd>),
    /// An OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models, vLLM's
    /// /v1/load_lora_adapter) for the model and many adapters at once: each request names its
    /// adapter in `model`, and requests share one running batch whatever their adapters.
    Serve(Box<serve::ServeCmd>),
    /// Closed-loop clients against an OpenAI-compatible server (graft serve, or llama-server
    /// with --api llama): output tokens/s, time to first token and inter-token latency.
    BenchServe(Box<bench_serve::BenchServeCmd>),
    /// The CPU's f32 GEMM (what prefill runs) against candle's on prefill shapes, next to this
    /// CPU's measured FMA peak (GRAFT_MAX_ISA=avx2 measures the AVX2 kernel).
    BenchGemm {
        /// Timed runs per shape (best kept).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Downloads files of a Hub repository into the cache shared with huggingface_hub (as
    /// `huggingface-cli download`); prints the local path of each file, or of the snapshot
    /// folder when no FILES are named. Every file is verified against the Hub's hash.
    Download {
        /// Repository id, `org/name` (optionally `org/name@revision`).
        repo: String,
        /// Files to download (default: the whole repository).
        files: Vec<String>,
        /// `model` or `dataset`.
        #[arg(long, default_value = "model", value_parser = ["model", "dataset"])]
        repo_type: String,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        hub: HubArgs,
    },
}

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

mod cmd;
mod hints;

use cmd::model::{HubArgs, ModelArgs};
use cmd::{bench, bench_gemm, bench_serve, download, generate, inspect, logits, serve, train};

fn main() -> ExitCode {
    // Mesa's device-select Vulkan layer tries to reach a Wayland display to rank GPUs and prints
    // an "error" where there is none (servers, CI); wgpu ranks adapters itself. Set before any
    // thread starts.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logits { model, tokens, out } => logits::logits(model, tokens, out),
        Command::Generate {
            model,
            max_new_tokens,
            tokens,
            chat,
            system,
            prompt,
            temperature,
            top_k,
            top_p,
            seed,
        } => generate::generate(
            model,
            generate::GenArgs {
                max_new: *max_new_tokens,
                tokens: tokens.as_deref(),
                chat: chat.as_deref(),
                system: system.as_deref(),
                prompt: prompt.as_deref(),
                sampling: Sampling {
                    temperature: *temperature,
                    top_k: *top_k,
                    top_p: *top_p,
                    seed: *seed,
                },
            },
        ),
        Command::Bench {
            model,
            prompt_tokens,
            decode_tokens,
            runs,
            json,
            f16_weights,
            synthetic,
            batch,
        } => bench::bench(
            model,
            *prompt_tokens,
            *decode_tokens,
            *runs,
            json.as_deref(),
            *f16_weights,
            *synthetic,
            batch,
        ),
        Command::Inspect {
            adapter,
            model,
            allow_partial,
            hub,
        } => inspect::inspect(adapter.as_deref(), model.as_deref(), *allow_partial, hub),
        Command::Download {
            repo,
            files,
            repo_type,
            quiet,
            hub,
        } => download::download(repo, files, repo_type, *quiet, hub),
        Command::Serve(s) => serve::serve(s),
        Command::BenchGemm { runs, json } => bench_gemm::bench_gemm(*runs, json.as_deref()),
        Command::BenchServe(b) => bench_serve::bench_serve(b),
        Command::Train(t) => train::train(t),
        Command::BenchTrain(t) => train::bench_train(t),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(h) = hints::hint(&*e) {
                eprintln!("hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
