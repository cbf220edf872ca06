//! `graft`: run PEFT adapters from the command line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use graft_core::files::{is_adapter_dir, read_adapter_dir};
use graft_core::tensors::{serialize_safetensors, LoadedTensor};
use graft_models::model::resolve_base_path;
use graft_models::{LoadAdapterOptions, Model};

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
    /// Greedy generation. Prints only the generated text (or ids, with --tokens) on stdout.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Maximum number of new tokens.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Prompt as comma-separated token ids instead of text.
        #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
        tokens: Option<Vec<u32>>,
        /// Prompt text (needs tokenizer.json in the model folder).
        #[arg(required_unless_present = "tokens")]
        prompt: Option<String>,
    },
    /// The load report of an adapter: method, targeted modules, ranks and scales, tensors used.
    Inspect {
        /// Adapter folder (adapter_config.json + adapter_model.safetensors).
        adapter: PathBuf,
        /// Base model folder (default: the adapter's base_model_name_or_path, if it is local).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Accept a partial load and report what does not fit.
        #[arg(long)]
        allow_partial: bool,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder (config.json + safetensors), or an adapter folder whose
    /// base_model_name_or_path names the base (the adapter then loads as `default`).
    #[arg(long)]
    model: PathBuf,
    /// An adapter to load, as DIR or NAME=DIR; repeatable, loaded in order. Without NAME= it is `default`.
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
}

type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

fn parse_adapter_arg(s: &str) -> (String, PathBuf) {
    // NAME=DIR, unless the part before '=' looks like a path.
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !name.contains(['/', '\\', '.']) => {
            (name.to_string(), PathBuf::from(dir))
        }
        _ => ("default".to_string(), PathBuf::from(s)),
    }
}

fn print_warnings(label: &str, report: &graft_core::LoadReport) {
    for w in &report.warnings {
        eprintln!("warning ({label}): {w}");
    }
}

/// Opens the model and its adapters as the flags say. Returns the model and the folder holding
/// its config (for EOS ids and the tokenizer).
fn open(args: &ModelArgs) -> CliResult<(Model, PathBuf)> {
    let (mut model, base_dir) = if is_adapter_dir(&args.model) {
        let files = read_adapter_dir(&args.model, None)?;
        let base = resolve_base_path(&args.model, files.config.base_model_name_or_path.as_deref())?;
        eprintln!(
            "graft: {} is an adapter; its base is {}",
            args.model.display(),
            base.display()
        );
        let mut m = Model::open_base(&base)?;
        let opts = LoadAdapterOptions {
            allow_partial: args.allow_partial,
            ..Default::default()
        };
        let rep = m.load_adapter_from_state(files.config, files.tensors, opts)?;
        print_warnings("default", &rep);
        (m, base)
    } else {
        (Model::open_base(&args.model)?, args.model.clone())
    };
    for a in &args.adapters {
        let (name, dir) = parse_adapter_arg(a);
        let opts = LoadAdapterOptions {
            adapter_name: Some(name.clone()),
            allow_partial: args.allow_partial,
            ..Default::default()
        };
        let rep = model
            .load_adapter(&dir, opts)
            .map_err(|e| format!("adapter `{name}` ({}): {e}", dir.display()))?;
        print_warnings(&name, &rep);
    }
    if let Some(active) = &args.active {
        let names: Vec<&str> = active.iter().map(String::as_str).collect();
        model.set_adapter(&names)?;
    }
    if args.disable_adapters {
        model.disable_adapters()?;
    }
    Ok((model, base_dir))
}

fn logits(args: &ModelArgs, tokens: &[u32], out: &Path) -> CliResult<()> {
    let (model, _) = open(args)?;
    let t0 = Instant::now();
    let logits = model.logits(tokens)?;
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

fn generate(
    args: &ModelArgs,
    max_new: usize,
    tokens: Option<&[u32]>,
    prompt: Option<&str>,
) -> CliResult<()> {
    let (model, base_dir) = open(args)?;
    let eos = Model::eos_ids(&base_dir);
    let tok_path = base_dir.join("tokenizer.json");
    let tokenizer = if tokens.is_none() {
        if !tok_path.is_file() {
            return Err(format!(
                "{} has no tokenizer.json; pass the prompt as ids with --tokens",
                base_dir.display()
            )
            .into());
        }
        Some(
            tokenizers::Tokenizer::from_file(&tok_path)
                .map_err(|e| format!("{}: {e}", tok_path.display()))?,
        )
    } else {
        None
    };
    let ids: Vec<u32> = match (tokens, prompt, &tokenizer) {
        (Some(t), _, _) => t.to_vec(),
        (None, Some(p), Some(tk)) => tk
            .encode(p, true)
            .map_err(|e| format!("tokenizer: {e}"))?
            .get_ids()
            .to_vec(),
        _ => return Err("nothing to generate from".into()),
    };
    let t0 = Instant::now();
    let mut stdout = std::io::stdout();
    let mut produced: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let mut first = true;
    let out = model.generate(&ids, max_new, &eos, |tok| {
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
                let _ = write!(stdout, "{}{tok}", if first { "" } else { "," });
                first = false;
            }
        }
        let _ = stdout.flush();
    })?;
    println!();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "graft: {} tokens in {:.2} s ({:.1} tokens/s, prompt {} tokens)",
        out.len(),
        secs,
        out.len() as f64 / secs.max(1e-9),
        ids.len()
    );
    Ok(())
}

fn inspect(adapter: &Path, model: Option<&Path>, allow_partial: bool) -> CliResult<()> {
    let files = read_adapter_dir(adapter, None)?;
    let cfg = &files.config;
    println!("adapter: {}", adapter.display());
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
        Some(m) => Some(m.to_path_buf()),
        None => resolve_base_path(adapter, cfg.base_model_name_or_path.as_deref()).ok(),
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
    let opts = LoadAdapterOptions {
        allow_partial,
        ..Default::default()
    };
    let report = m.load_adapter_from_state(files.config.clone(), files.tensors.clone(), opts)?;
    print!("{report}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logits { model, tokens, out } => logits(model, tokens, out),
        Command::Generate {
            model,
            max_new_tokens,
            tokens,
            prompt,
        } => generate(model, *max_new_tokens, tokens.as_deref(), prompt.as_deref()),
        Command::Inspect {
            adapter,
            model,
            allow_partial,
        } => inspect(adapter, model.as_deref(), *allow_partial),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
