//! `graft`: run PEFT adapters from the command line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use graft_core::files::read_adapter_dir;
use graft_core::tensors::{serialize_safetensors, LoadedTensor};
use graft_gpu::{Gpu, GpuModel, GpuModelOptions, GpuOptions};
use graft_hub::{Hub, HubOptions, Repo, RepoType, Token};
use graft_models::model::{default_model_path, DEFAULT_MODEL_ID};
use graft_models::{LoadAdapterOptions, Model, OpenOptions, Sampling};
use graft_quant::QType;
use graft_text::{Message, Tokenizer};

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

#[derive(Args)]
struct ModelArgs {
    /// Model folder (config.json + safetensors), a .gguf file, an adapter folder whose
    /// base_model_name_or_path names the base (the adapter then loads as `default`), or any of
    /// these as a Hub repo id (`org/name`, optionally `org/name@revision`).
    /// Default: the embedded SmolLM2-135M-Instruct GGUF (models/, or $GRAFT_DEFAULT_MODEL).
    #[arg(long)]
    model: Option<String>,
    /// Which GGUF file of a --model repository holding several.
    #[arg(long)]
    gguf_file: Option<String>,
    #[command(flatten)]
    hub: HubArgs,
    /// Quantize a safetensors model's Linear weights while loading: int8 (load_in_8bit),
    /// nf4 (load_in_4bit), q8_0 or q4_0. Adapters stay f32 and run unmerged on top.
    #[arg(long, value_parser = ["int8", "nf4", "q8_0", "q4_0"])]
    quantize: Option<String>,
    /// An adapter to load, as DIR or NAME=DIR, where DIR may be a Hub repo id (`org/name`,
    /// `org/name@revision`); repeatable, loaded in order. Without NAME= it is `default`.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// Adapters to activate together, e.g. a,b (default: the first loaded).
    #[arg(long, value_delimiter = ',')]
    active: Option<Vec<String>>,
    /// Run the base model only (adapters stay loaded but do nothing).
    #[arg(long)]
    disable_adapters: bool,
    /// Load adapters that only partly fit the base, with warnings, instead of failing.
    #[arg(long)]
    allow_partial: bool,
    /// Where to run: gpu (any wgpu adapter, software ones included), cpu, or auto (a hardware
    /// GPU when there is one and the model runs there, else the CPU; says which on stderr).
    #[arg(long, default_value = "auto", value_parser = ["auto", "gpu", "cpu"])]
    device: String,
    /// Positions the GPU's KV cache holds (default: the model's maximum, at most 4096).
    #[arg(long)]
    max_context: Option<usize>,
}

/// How to reach the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE and HF_HUB_OFFLINE
/// are read as huggingface_hub reads them; these flags override them).
#[derive(Args)]
struct HubArgs {
    /// Revision of a --model repo id: branch, tag or commit (default main).
    #[arg(long)]
    revision: Option<String>,
    /// Hub token for private or gated repositories (default: HF_TOKEN, then the token file).
    #[arg(long)]
    token: Option<String>,
    /// Use the cache only; never touch the network (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// The Hub's address (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
}

impl HubArgs {
    fn hub(&self) -> Hub {
        let mut o = HubOptions::from_env();
        if let Some(t) = &self.token {
            o.token = Token::new(t);
        }
        if self.offline {
            o.offline = true;
        }
        if let Some(e) = &self.endpoint {
            o.endpoint = e.trim_end_matches('/').to_string();
        }
        Hub::new(o)
    }
}

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

mod bench_gpu;
mod train;

fn parse_adapter_arg(s: &str) -> (String, String) {
    // NAME=DIR, unless the part before '=' looks like a path.
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !name.contains(['/', '\\', '.']) => {
            (name.to_string(), dir.to_string())
        }
        _ => ("default".to_string(), s.to_string()),
    }
}

fn print_warnings(label: &str, report: &graft_core::LoadReport) {
    for w in &report.warnings {
        eprintln!("warning ({label}): {w}");
    }
}

/// The --model argument, or the embedded default model.
fn model_spec(args: &ModelArgs) -> CliResult<String> {
    if let Some(m) = &args.model {
        return Ok(m.clone());
    }
    let p = default_model_path();
    if !p.is_file() {
        return Err(format!(
            "no --model given and the default model ({}, the Hub's {DEFAULT_MODEL_ID} as a Q4_1 GGUF) is not there; fetch it with scripts/fetch_default_model.sh",
            p.display()
        )
        .into());
    }
    Ok(p.display().to_string())
}

/// Opens the model and its adapters as the flags say. Returns the model and the folder holding
/// its config (for EOS ids and the tokenizer).
fn open(args: &ModelArgs) -> CliResult<(Model, PathBuf)> {
    let spec = model_spec(args)?;
    let hub = args.hub.hub();
    let resolved = graft_models::hub::resolve(
        &hub,
        &spec,
        args.hub.revision.as_deref(),
        args.gguf_file.as_deref(),
    )?;
    let opts = OpenOptions {
        quantize: args.quantize.as_deref().and_then(QType::parse),
    };
    let base = resolved.base.clone();
    let mut model = Model::open_base_with(&base, &opts)?;
    if let Some(adapter) = &resolved.adapter {
        eprintln!(
            "graft: {spec} is an adapter; its base is {}",
            base.display()
        );
        let files = read_adapter_dir(adapter, None)?;
        let opts = LoadAdapterOptions {
            allow_partial: args.allow_partial,
            ..Default::default()
        };
        let rep = model.load_adapter_from_state(files.config, files.tensors, opts)?;
        print_warnings("default", &rep);
    }
    if !model.kept_dense.is_empty() {
        eprintln!(
            "warning: --quantize kept {} module(s) in f32 (their width is not a multiple of the block): {}",
            model.kept_dense.len(),
            model.kept_dense.join(", ")
        );
    }
    for a in &args.adapters {
        let (name, spec) = parse_adapter_arg(a);
        let opts = LoadAdapterOptions {
            adapter_name: Some(name.clone()),
            allow_partial: args.allow_partial,
            ..Default::default()
        };
        let rep = model
            .load_adapter_hub(&hub, &spec, None, opts)
            .map_err(|e| format!("adapter `{name}` ({spec}): {e}"))?;
        print_warnings(&name, &rep);
    }
    if let Some(active) = &args.active {
        let names: Vec<&str> = active.iter().map(String::as_str).collect();
        model.set_adapter(&names)?;
    }
    if args.disable_adapters {
        model.disable_adapters()?;
    }
    Ok((model, base))
}

/// Where forward passes run.
enum Runner {
    Cpu,
    Gpu(Box<GpuModel>),
}

/// Picks the device as `--device` says. `auto` takes a hardware GPU only: graft's CPU path is
/// faster than a software rasterizer (lavapipe, SwiftShader) pretending to be a GPU.
fn runner(args: &ModelArgs, model: &Model) -> CliResult<Runner> {
    let opts = GpuModelOptions {
        max_context: args.max_context,
        ..Default::default()
    };
    match args.device.as_str() {
        "cpu" => Ok(Runner::Cpu),
        "gpu" => {
            let gpu = Gpu::new_blocking(&GpuOptions::default())?;
            eprintln!("graft: running on {} ({})", gpu.info.name, gpu.info.backend);
            Ok(Runner::Gpu(Box::new(GpuModel::new(&gpu, model, &opts)?)))
        }
        _ => {
            let gpu = match Gpu::new_blocking(&GpuOptions::default()) {
                Ok(g) if !g.info.is_software => g,
                Ok(g) => {
                    eprintln!(
                        "graft: running on the CPU (the only GPU adapter, {}, is a software one; --device gpu uses it)",
                        g.info.name
                    );
                    return Ok(Runner::Cpu);
                }
                Err(e) => {
                    eprintln!("graft: running on the CPU ({e})");
                    return Ok(Runner::Cpu);
                }
            };
            match GpuModel::new(&gpu, model, &opts) {
                Ok(m) => {
                    eprintln!("graft: running on {} ({})", gpu.info.name, gpu.info.backend);
                    Ok(Runner::Gpu(Box::new(m)))
                }
                Err(e) => {
                    eprintln!("graft: running on the CPU: {e}");
                    Ok(Runner::Cpu)
                }
            }
        }
    }
}

fn logits(args: &ModelArgs, tokens: &[u32], out: &Path) -> CliResult<()> {
    let (model, _) = open(args)?;
    let mut run = runner(args, &model)?;
    let t0 = Instant::now();
    let logits = match &mut run {
        Runner::Cpu => model.logits(tokens)?,
        Runner::Gpu(g) => g.forward(&model, tokens, false)?,
    };
    let mut map = BTreeMap::new();
    map.insert(
        "logits".to_string(),
        LoadedTensor {
            tensor: logits.clone(),
            dtype: DType::F32,
        },
    );
    std::fs::write(out, serialize_safetensors(&map)?)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "graft: logits {:?} written to {} ({:.1} ms)",
        logits.dims(),
        out.display(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn tokenizer_for(model: &Model, base: &Path) -> CliResult<Tokenizer> {
    if let Some(meta) = model.gguf_tokenizer_metadata() {
        return Ok(Tokenizer::from_gguf_metadata(&meta)?);
    }
    if base.join("tokenizer.json").is_file() {
        return Ok(Tokenizer::from_dir(base)?);
    }
    Err(format!(
        "{} has no tokenizer (tokenizer.json or GGUF metadata); pass the prompt as ids with --tokens",
        base.display()
    )
    .into())
}

struct GenArgs<'a> {
    max_new: usize,
    tokens: Option<&'a [u32]>,
    chat: Option<&'a str>,
    system: Option<&'a str>,
    prompt: Option<&'a str>,
    sampling: Sampling,
}

fn generate(args: &ModelArgs, g: GenArgs) -> CliResult<()> {
    let (model, base_dir) = open(args)?;
    let mut run = runner(args, &model)?;
    let mut eos = model.eos_token_ids();
    let tokenizer = match g.tokens {
        Some(_) => None,
        None => Some(tokenizer_for(&model, &base_dir)?),
    };
    let ids: Vec<u32> = match (g.tokens, &tokenizer) {
        (Some(t), _) => t.to_vec(),
        (None, Some(tk)) => {
            if let Some(e) = tk.eos_id {
                if !eos.contains(&e) {
                    eos.push(e);
                }
            }
            match (g.chat, g.prompt) {
                (Some(user), _) => {
                    let mut msgs = Vec::new();
                    if let Some(sys) = g.system {
                        msgs.push(Message::new("system", sys));
                    }
                    msgs.push(Message::new("user", user));
                    // apply_chat_template(tokenize=True) encodes without adding special tokens.
                    tk.encode(&tk.apply_chat_template(&msgs, true)?, false)?
                }
                (None, Some(p)) => tk.encode(p, true)?,
                (None, None) => return Err("nothing to generate from".into()),
            }
        }
        _ => return Err("nothing to generate from".into()),
    };
    let t0 = Instant::now();
    let mut first_token_at = None;
    let mut stdout = std::io::stdout();
    let mut produced: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let on_token = |tok: u32| {
        first_token_at.get_or_insert_with(|| t0.elapsed());
        produced.push(tok);
        match &tokenizer {
            // Stream text: decode everything so far and print what is new.
            Some(tk) => {
                if let Ok(text) = tk.decode(&produced, true) {
                    if let Some(new) = text.strip_prefix(printed.as_str()) {
                        let _ = write!(stdout, "{new}");
                        printed = text;
                    }
                }
            }
            None => {
                let sep = if produced.len() == 1 { "" } else { "," };
                let _ = write!(stdout, "{sep}{tok}");
            }
        }
        let _ = stdout.flush();
    };
    let out = match &mut run {
        Runner::Cpu => model.generate_with(&ids, g.max_new, &eos, &g.sampling, on_token)?,
        Runner::Gpu(gm) => gm.generate(&model, &ids, g.max_new, &eos, &g.sampling, on_token)?,
    };
    println!();
    let total = t0.elapsed().as_secs_f64();
    let prefill = first_token_at.map(|d| d.as_secs_f64()).unwrap_or(total);
    let decode_n = out.len().saturating_sub(1);
    eprintln!(
        "graft: prompt {} tokens in {:.3} s ({:.1} tokens/s); {} new tokens, decode {:.1} tokens/s",
        ids.len(),
        prefill,
        ids.len() as f64 / prefill.max(1e-9),
        out.len(),
        decode_n as f64 / (total - prefill).max(1e-9),
    );
    Ok(())
}

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// (prefill tokens/s, decode tokens/s), best of `runs`.
fn bench_once(model: &Model, prompt: &[u32], decode: usize, runs: usize) -> CliResult<(f64, f64)> {
    let (mut best_p, mut best_d) = (0f64, 0f64);
    for _ in 0..runs {
        let mut cache = graft_models::KvCache::with_capacity(prompt.len() + decode);
        let t0 = Instant::now();
        let logits = model.forward_last(prompt, &mut cache)?;
        let prefill = t0.elapsed().as_secs_f64();
        let last = logits.get(0)?.to_vec1::<f32>()?;
        let mut next = graft_models::sampling::argmax(&last);
        let t1 = Instant::now();
        for _ in 0..decode {
            let l = model.forward_last(&[next], &mut cache)?;
            next = graft_models::sampling::argmax(&l.get(0)?.to_vec1::<f32>()?);
        }
        let dec = t1.elapsed().as_secs_f64();
        best_p = best_p.max(prompt.len() as f64 / prefill);
        best_d = best_d.max(decode as f64 / dec.max(1e-9));
    }
    Ok((best_p, best_d))
}

fn bench(
    args: &ModelArgs,
    prompt_tokens: usize,
    decode: usize,
    runs: usize,
    json: Option<&Path>,
    f16_weights: bool,
    synthetic: bool,
) -> CliResult<()> {
    let (mut model, path) = if synthetic {
        let p = std::env::temp_dir().join(format!("graft-synthetic-{}.gguf", std::process::id()));
        std::fs::write(&p, bench_gpu::synthetic_smollm2())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let m = Model::open_base(&p);
        let _ = std::fs::remove_file(&p);
        eprintln!("graft: benchmarking a synthetic SmolLM2-135M (Q4_1, random weights)");
        (m?, p)
    } else {
        open(args)?
    };
    if args.device == "gpu" {
        return bench_gpu::run(
            &mut model,
            args,
            prompt_tokens,
            decode,
            runs,
            json,
            f16_weights,
        );
    }
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|i| ((i * 7919) % 10000 + 100) as u32)
        .collect();
    let file_bytes: u64 = if path.is_file() {
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
    } else {
        std::fs::read_dir(&path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let has_adapters = !model.registry().adapter_names().is_empty();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Peak memory of one generation (later repetitions only add allocator churn).
    let first = bench_once(&model, &prompt, decode, 1)?;
    let peak = peak_rss().unwrap_or(0);
    let (p_on, d_on) = bench_once(&model, &prompt, decode, runs.saturating_sub(1))?;
    let (p_on, d_on) = (p_on.max(first.0), d_on.max(first.1));
    let (p_off, d_off) = if has_adapters {
        model.disable_adapters()?;
        let r = bench_once(&model, &prompt, decode, runs)?;
        model.enable_adapters()?;
        r
    } else {
        (p_on, d_on)
    };
    let kv = model.kv_cache_bytes(prompt_tokens + decode);
    println!("| graft ({threads} threads) | prefill tok/s | decode tok/s |");
    println!("|---|---|---|");
    if has_adapters {
        println!(
            "| adapters on ({}) | {p_on:.1} | {d_on:.1} |",
            model.active_adapters()?.join(",")
        );
        println!("| adapters off | {p_off:.1} | {d_off:.1} |");
        println!(
            "unmerged adapter overhead: prefill {:.1}%, decode {:.1}%",
            (p_off / p_on - 1.0) * 100.0,
            (d_off / d_on - 1.0) * 100.0
        );
    } else {
        println!("| base | {p_on:.1} | {d_on:.1} |");
    }
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    if file_bytes == 0 {
        println!("peak RSS {:.1} MiB", mb(peak));
    } else {
        println!(
        "peak RSS {:.1} MiB; model file(s) {:.1} MiB + KV cache {:.1} MiB = {:.1} MiB; ratio {:.2}",
        mb(peak),
        mb(file_bytes),
        mb(kv),
        mb(file_bytes + kv),
        peak as f64 / (file_bytes + kv).max(1) as f64
    );
    }
    if let Some(j) = json {
        let v = serde_json::json!({
            "engine": "graft", "threads": threads, "prompt_tokens": prompt_tokens, "decode_tokens": decode,
            "runs": runs, "adapters": has_adapters,
            "prefill_tps": p_on, "decode_tps": d_on, "prefill_tps_adapters_off": p_off, "decode_tps_adapters_off": d_off,
            "peak_rss_bytes": peak, "model_file_bytes": file_bytes, "kv_cache_bytes": kv,
        });
        std::fs::write(j, serde_json::to_string_pretty(&v)?)
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    Ok(())
}

fn inspect(
    spec: Option<&str>,
    model: Option<&str>,
    allow_partial: bool,
    hub_args: &HubArgs,
) -> CliResult<()> {
    let hub = hub_args.hub();
    let Some(spec) = spec else {
        let Some(model) = model else {
            return Err("inspect needs an adapter, or --model".into());
        };
        let base = graft_models::hub::resolve(&hub, model, hub_args.revision.as_deref(), None)?;
        let m = Model::open_base(&base.base)?;
        println!("model: {}", base.base.display());
        print!("{}", m.understood());
        return Ok(());
    };
    let adapter = graft_models::hub::adapter_dir(&hub, spec, hub_args.revision.as_deref(), None)?;
    let files = read_adapter_dir(&adapter, None)?;
    let cfg = &files.config;
    println!("adapter: {spec}");
    if adapter.display().to_string() != spec {
        println!("files: {}", adapter.display());
    }
    println!("peft_type: {}", cfg.peft_type.as_str());
    println!(
        "base_model_name_or_path: {}",
        cfg.base_model_name_or_path.as_deref().unwrap_or("null")
    );
    if !cfg.unknown_keys.is_empty() {
        println!(
            "unknown config keys (kept, ignored): {:?}",
            cfg.unknown_keys
        );
    }
    println!("tensors in file: {}", files.tensors.len());
    let base = match model {
        Some(m) => Some(graft_models::hub::resolve(&hub, m, None, None)?.base),
        // Only a local or cached base: inspecting should not start a model download.
        None => {
            let offline = hub.with_offline(true);
            graft_models::hub::resolve_base(
                &offline,
                &adapter,
                cfg.base_model_name_or_path.as_deref(),
                None,
            )
            .ok()
        }
    };
    let Some(base) = base else {
        println!(
            "(no local base model: pass --model to see which modules the adapter attaches to)"
        );
        for (k, t) in &files.tensors {
            println!("  {k} {:?} {:?}", t.tensor.dims(), t.dtype);
        }
        return Ok(());
    };
    let mut m = Model::open_base(&base)?;
    println!("base: {}", base.display());
    print!("{}", m.understood());
    let opts = LoadAdapterOptions {
        allow_partial,
        ..Default::default()
    };
    let report = m.load_adapter_from_state(files.config.clone(), files.tensors.clone(), opts)?;
    print!("{report}");
    Ok(())
}

fn download(
    spec: &str,
    files: &[String],
    repo_type: &str,
    quiet: bool,
    hub_args: &HubArgs,
) -> CliResult<()> {
    let (id, rev) = graft_models::hub::split_revision(spec);
    let rtype = RepoType::parse(repo_type).unwrap_or_default();
    let repo = Repo::new(id, rtype, rev.or(hub_args.revision.as_deref()))?;
    let mut hub = hub_args.hub();
    if quiet {
        hub = hub.with_quiet(true);
    }
    if files.is_empty() {
        println!("{}", hub.snapshot(&repo)?.display());
        return Ok(());
    }
    for f in files {
        println!("{}", hub.download(&repo, f)?.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    // Mesa's device-select Vulkan layer tries to reach a Wayland display to rank GPUs and prints
    // an "error" where there is none (servers, CI); wgpu ranks adapters itself. Set before any
    // thread starts.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logits { model, tokens, out } => logits(model, tokens, out),
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
        } => generate(
            model,
            GenArgs {
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
        } => bench(
            model,
            *prompt_tokens,
            *decode_tokens,
            *runs,
            json.as_deref(),
            *f16_weights,
            *synthetic,
        ),
        Command::Inspect {
            adapter,
            model,
            allow_partial,
            hub,
        } => inspect(adapter.as_deref(), model.as_deref(), *allow_partial, hub),
        Command::Download {
            repo,
            files,
            repo_type,
            quiet,
            hub,
        } => download(repo, files, repo_type, *quiet, hub),
        Command::Train(t) => train::train(t),
        Command::BenchTrain(t) => train::bench_train(t),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
