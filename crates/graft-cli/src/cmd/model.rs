//! What every model-running command shares: the model, adapter, device and Hub flags, opening
//! the model with its adapters, choosing its device, and its tokenizer.

use std::path::{Path, PathBuf};

use clap::Args;
use graft_adapters::files::read_adapter_dir;
use graft_hub::{Hub, HubOptions, Token};
use graft_models::model::{default_model_path, known_model, DEFAULT_MODEL_ID};
use graft_models::{Device, DeviceOptions, LoadAdapterOptions, Model, OpenOptions};
use graft_quant::QType;
use graft_text::Tokenizer;

use crate::CliResult;

#[derive(Args)]
pub struct ModelArgs {
    /// Model folder (config.json + safetensors), a .gguf file, an adapter folder whose
    /// base_model_name_or_path names the base (the adapter then loads as `default`), or any of
    /// these as a Hub repo id (`org/name`, optionally `org/name@revision`).
    /// Default: the embedded SmolLM2-135M-Instruct GGUF (models/, or $GRAFT_DEFAULT_MODEL).
    #[arg(long)]
    pub model: Option<String>,
    /// Which GGUF file of a --model repository holding several.
    #[arg(long)]
    pub gguf_file: Option<String>,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Quantize a safetensors model's Linear weights while loading: int8 (load_in_8bit),
    /// nf4 (load_in_4bit), q8_0 or q4_0. Adapters stay f32 and run unmerged on top.
    #[arg(long, value_parser = ["int8", "nf4", "q8_0", "q4_0"])]
    pub quantize: Option<String>,
    /// An adapter to load, as DIR or NAME=DIR, where DIR may be a Hub repo id (`org/name`,
    /// `org/name@revision`); repeatable, loaded in order. Without NAME= it is `default`.
    #[arg(long = "adapter")]
    pub adapters: Vec<String>,
    /// Adapters to activate together, e.g. a,b (default: the first loaded).
    #[arg(long, value_delimiter = ',')]
    pub active: Option<Vec<String>>,
    /// Run the base model only (adapters stay loaded but do nothing).
    #[arg(long)]
    pub disable_adapters: bool,
    /// Load adapters that only partly fit the base, with warnings, instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
    /// Where to run: gpu (any wgpu adapter, software ones included), cpu, or auto (a hardware
    /// GPU when there is one and the model runs there, else the CPU; says which on stderr).
    #[arg(long, default_value = "auto", value_parser = ["auto", "gpu", "cpu"])]
    pub device: String,
    /// Positions the GPU's KV cache holds (default: the model's maximum, at most 4096).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// CPU decode only, opt-in: round activations to 8 bits per block of 32 and multiply in
    /// integers (llama.cpp's way; faster on AVX2). Logits no longer match PEFT's exactly (see
    /// docs/benchmarks.md for how far they move); also GRAFT_INT8_ACTIVATIONS=1.
    #[arg(long)]
    pub int8_activations: bool,
}

/// How to reach the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE and HF_HUB_OFFLINE
/// are read as huggingface_hub reads them; these flags override them).
#[derive(Args, Clone)]
pub struct HubArgs {
    /// Revision of a --model repo id: branch, tag or commit (default main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Hub token for private or gated repositories (default: HF_TOKEN, then the token file).
    #[arg(long)]
    pub token: Option<String>,
    /// Use the cache only; never touch the network (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// The Hub's address (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
}

impl HubArgs {
    pub fn hub(&self) -> Hub {
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

pub fn parse_adapter_arg(s: &str) -> (String, String) {
    // NAME=DIR, unless the part before '=' looks like a path.
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !name.contains(['/', '\\', '.']) => {
            (name.to_string(), dir.to_string())
        }
        _ => ("default".to_string(), s.to_string()),
    }
}

pub fn print_warnings(label: &str, report: &graft_adapters::LoadReport) {
    for w in &report.warnings {
        eprintln!("warning ({label}): {w}");
    }
}

/// The --model argument, or the embedded default model.
pub fn model_spec(args: &ModelArgs) -> CliResult<String> {
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

/// A model argument naming a known model's Hub id that could not be resolved (its local GGUF
/// absent, the Hub unreachable…): the hint adds the script that fetches the local GGUF.
fn fetch_hint(args: &ModelArgs, spec: &str, e: graft_models::Error) -> Box<dyn std::error::Error> {
    let asks_repo = args.hub.revision.is_some() || args.gguf_file.is_some();
    match known_model(graft_hub::repo::split_revision(spec).0) {
        Some(k) if !asks_repo && !spec.contains('@') => Box::new(crate::hints::Hinted::adding(
            &e,
            format!(
                "`{}` fetches a GGUF of {} into {}/, which then stands in for the Hub",
                k.fetch,
                k.hub_id,
                graft_models::model::MODELS_DIR
            ),
        )),
        _ => Box::new(e),
    }
}

/// Opens the model and its adapters as the flags say, on the device `--device` names. Returns the model and the folder holding
/// its config (for EOS ids and the tokenizer).
pub fn open(args: &ModelArgs) -> CliResult<(Model, PathBuf)> {
    if args.int8_activations {
        graft_quant::int8::set_int8_activations(true);
    }
    let spec = model_spec(args)?;
    let hub = args.hub.hub();
    let resolved = graft_models::hub::resolve(
        &hub,
        &spec,
        args.hub.revision.as_deref(),
        args.gguf_file.as_deref(),
    )
    .map_err(|e| fetch_hint(args, &spec, e))?;
    if resolved.adapter.is_none() && known_model(&spec).is_some_and(|k| k.path() == resolved.base) {
        eprintln!(
            "graft: {spec} runs from its fetched GGUF {}",
            resolved.base.display()
        );
    }
    let opts = OpenOptions {
        quantize: args.quantize.as_deref().and_then(QType::parse),
    };
    let base = resolved.base.clone();
    let mut model = Model::open_base_with(&base, &opts)?;
    // Adapters made on a Hub model (`graft train`) name the repo, as PEFT's do, not this
    // machine's cache or models/ path.
    model.hub_id = resolved.base_id.clone();
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
            .map_err(|e| crate::hints::context(format_args!("adapter `{name}` ({spec})"), &e))?;
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

/// Moves the model to the device `--device` names, saying on stderr where it runs.
pub fn to_device(args: &ModelArgs, model: &mut Model) -> CliResult<()> {
    let device = Device::parse(&args.device).unwrap_or(Device::Auto);
    let opts = DeviceOptions {
        max_context: args.max_context,
        ..Default::default()
    };
    let report = model.set_device(device, &opts)?;
    // an explicit --device cpu needs no word
    if device != Device::Cpu {
        eprintln!("graft: {report}");
    }
    Ok(())
}

pub fn tokenizer_for(model: &Model, base: &Path) -> CliResult<Tokenizer> {
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
