//! `graft train`: the PEFT guide's "Train a PEFT adapter" on the command line.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use graft_adapters::config::config_from_kwargs;
use graft_train::data::{load_jsonl, DataOptions, Example};
use graft_train::optim::{AdamWConfig, Schedule};
use graft_train::{Event, Output, TrainArgs, Trainer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::model::{open, tokenizer_for, ModelArgs};
use crate::CliResult;

#[derive(Args)]
pub struct TrainCmd {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training data, one JSON object per line: {"messages": [...]} (the loss on assistant
    /// turns) or {"prompt": ..., "completion": ...} (the loss on the completion).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: the adapter (PEFT format), train_log.jsonl, loss_curve.svg, checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// lora or ia3.
    #[arg(long, default_value = "lora", value_parser = ["lora", "ia3"])]
    pub method: String,
    /// Modules to adapt (suffixes), e.g. q_proj,v_proj, or all-linear (default: PEFT's for the
    /// architecture).
    #[arg(long, value_delimiter = ',')]
    pub target_modules: Option<Vec<String>>,
    /// IA3: modules whose input is scaled (default: PEFT's for the architecture).
    #[arg(long, value_delimiter = ',')]
    pub feedforward_modules: Option<Vec<String>>,
    /// Modules trained in full and saved with the adapter, e.g. lm_head.
    #[arg(long, value_delimiter = ',')]
    pub modules_to_save: Option<Vec<String>>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// Scale by alpha/sqrt(r) instead of alpha/r.
    #[arg(long)]
    pub use_rslora: bool,
    /// true (A Kaiming-uniform, B zero) or gaussian (A normal(0, 1/r), B zero).
    #[arg(long, default_value = "true", value_parser = ["true", "gaussian"])]
    pub init_lora_weights: String,
    /// Optimizer steps (overrides --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    #[arg(long)]
    pub epochs: Option<f64>,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// linear, cosine or constant (after the warm-up).
    #[arg(long, default_value = "linear", value_parser = ["linear", "cosine", "constant"])]
    pub schedule: String,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay (torch's default).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Gradient-norm clipping (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Longer examples are truncated (default: the model's context, at most 1024).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Fraction of the examples held out for eval loss (default 0.1 with 20 or more examples,
    /// else none).
    #[arg(long)]
    pub eval_split: Option<f64>,
    /// Evaluate every N steps (and at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_steps: usize,
    /// Save a checkpoint every N steps.
    #[arg(long, default_value_t = 0)]
    pub save_steps: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Skip malformed data lines (reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn adapter_config(c: &TrainCmd) -> CliResult<graft_adapters::config::AdapterConfig> {
    let list = |v: &Option<Vec<String>>| -> Value {
        match v {
            None => Value::Null,
            Some(v) if v.len() == 1 && v[0] == "all-linear" => json!("all-linear"),
            Some(v) => json!(v),
        }
    };
    let mut kw = serde_json::Map::new();
    if c.method == "ia3" {
        kw.insert("peft_type".into(), json!("IA3"));
        kw.insert("feedforward_modules".into(), list(&c.feedforward_modules));
    } else {
        kw.insert("peft_type".into(), json!("LORA"));
        kw.insert("r".into(), json!(c.r));
        // PEFT writes an integral alpha as an integer (`lora_alpha: int = 8`).
        let alpha = if c.lora_alpha.fract() == 0.0 && c.lora_alpha.abs() < 1e15 {
            json!(c.lora_alpha as i64)
        } else {
            json!(c.lora_alpha)
        };
        kw.insert("lora_alpha".into(), alpha);
        kw.insert("lora_dropout".into(), json!(c.lora_dropout));
        kw.insert("use_rslora".into(), json!(c.use_rslora));
        let init = if c.init_lora_weights == "gaussian" {
            json!("gaussian")
        } else {
            json!(true)
        };
        kw.insert("init_lora_weights".into(), init);
    }
    kw.insert("target_modules".into(), list(&c.target_modules));
    kw.insert("modules_to_save".into(), list(&c.modules_to_save));
    kw.insert("task_type".into(), json!("CAUSAL_LM"));
    Ok(config_from_kwargs(Value::Object(kw))?)
}

fn split(mut data: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n_eval = ((data.len() as f64) * fraction).round() as usize;
    if n_eval == 0 || n_eval >= data.len() {
        return (data, Vec::new());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    data.shuffle(&mut rng);
    let eval = data.split_off(data.len() - n_eval);
    (data, eval)
}

pub fn train(c: &TrainCmd) -> CliResult<()> {
    if c.model.device == "gpu" {
        return Err("training runs on the CPU; drop --device gpu".into());
    }
    let t0 = Instant::now();
    let (mut model, base) = open(&c.model)?;
    let tok = tokenizer_for(&model, &base)?;
    let checkpoint = if c.resume {
        match Trainer::latest_checkpoint(&c.out) {
            Some(p) => Some(p),
            None => {
                return Err(format!(
                    "--resume: no checkpoint-N folder with a trainer_state.json in {}",
                    c.out.display()
                )
                .into())
            }
        }
    } else {
        None
    };
    // The adapter to train: a checkpoint's, an adapter given with --adapter or as --model, or
    // a fresh one from the flags.
    let name = if let Some(ck) = &checkpoint {
        let name = "default";
        if model.registry().get(name).is_some() {
            model.delete_adapter(&[name])?;
        }
        model.load_adapter(
            ck,
            graft_models::LoadAdapterOptions {
                is_trainable: true,
                ..Default::default()
            },
        )?;
        model.set_adapter(&[name])?;
        name.to_string()
    } else if let Some(first) = model.registry().adapter_names().first().cloned() {
        eprintln!("graft: continuing to train adapter `{first}`");
        model.set_adapter(&[first.as_str()])?;
        first
    } else {
        let cfg = adapter_config(c)?;
        let rep = model.add_adapter(cfg, Some("default"), c.seed)?;
        eprintln!(
            "graft: new {} adapter: {} module(s) adapted",
            c.method,
            rep.targets.len()
        );
        "default".into()
    };

    let max_length = c
        .max_length
        .unwrap_or_else(|| model.max_positions().min(1024));
    if max_length > model.max_positions() {
        return Err(format!(
            "--max-length {max_length} is longer than the model's context ({})",
            model.max_positions()
        )
        .into());
    }
    let ds = load_jsonl(
        &c.data,
        &tok,
        &DataOptions {
            max_length,
            skip_bad_lines: c.skip_bad_lines,
            add_eos_to_completion: true,
        },
    )?;
    for w in ds.warnings() {
        eprintln!("warning: {w}");
    }
    let fraction = c
        .eval_split
        .unwrap_or(if ds.examples.len() >= 20 { 0.1 } else { 0.0 });
    if !(0.0..1.0).contains(&fraction) {
        return Err(format!("--eval-split must be in [0, 1), got {fraction}").into());
    }
    let n_all = ds.examples.len();
    let (train_set, eval_set) = split(ds.examples, fraction, c.seed);
    eprintln!(
        "graft: {} examples ({} format): {} for training, {} for eval",
        n_all,
        ds.format,
        train_set.len(),
        eval_set.len()
    );

    let args = TrainArgs {
        max_steps: c.steps,
        epochs: c.epochs.unwrap_or(1.0),
        batch_size: c.batch_size,
        grad_accum: c.grad_accum,
        optim: AdamWConfig {
            lr: c.lr,
            weight_decay: c.weight_decay,
            ..Default::default()
        },
        schedule: c.schedule.parse::<Schedule>()?,
        warmup_steps: c.warmup_steps,
        max_grad_norm: c.max_grad_norm,
        eval_steps: c.eval_steps,
        save_steps: c.save_steps,
        seed: c.seed,
        pad_id: tok.eos_id.unwrap_or(0),
    };
    let mut trainer = Trainer::new(&mut model, &name, args)?;
    if let Some(ck) = &checkpoint {
        let saved = trainer.resume_from(ck)?;
        if saved != trainer.args {
            eprintln!(
                "warning: the checkpoint was trained with other settings ({saved:?}); continuing with this command's ({:?}) — a resumed run equals an uninterrupted one only with the same settings",
                trainer.args
            );
        }
        eprintln!(
            "graft: resumed from {} at step {}",
            ck.display(),
            trainer.step
        );
    }
    let bar = ProgressBar::new(0);
    if c.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last_eval: Option<f64> = None;
    let mut on_event = |e: &Event| match e {
        Event::Start {
            total_steps,
            first_step,
            trainable,
        } => {
            bar.set_length(*total_steps as u64);
            bar.set_position(*first_step as u64);
            bar.println(format!(
                "graft: training {trainable} parameters for {total_steps} steps"
            ));
        }
        Event::Step(s) => {
            bar.set_position(s.step as u64);
            let ev = last_eval
                .map(|l| format!("  eval {l:.4}"))
                .unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4}{ev}  lr {:.2e}  {:.0} tok/s",
                s.loss, s.lr, s.tokens_per_s
            ));
            if bar.is_hidden() && !c.quiet {
                eprintln!(
                    "step {}/{}  loss {:.4}  lr {:.2e}  grad norm {:.3}  {:.0} tok/s  eta {:.0}s",
                    s.step, s.total_steps, s.loss, s.lr, s.grad_norm, s.tokens_per_s, s.eta_s
                );
            }
        }
        Event::Eval { step, loss } => {
            last_eval = Some(*loss);
            bar.println(format!("step {step}: eval loss {loss:.4}"));
        }
        Event::Checkpoint { path, .. } => {
            bar.println(format!("checkpoint: {}", path.display()));
        }
    };
    let method = if c.method == "ia3" {
        "IA3".to_string()
    } else {
        format!("LoRA r={}", c.r)
    };
    let out = Output {
        dir: c.out.clone(),
        title: format!(
            "graft train · {} · {} · {method}",
            base.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            c.data
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    };
    let summary = trainer.train(&train_set, &eval_set, Some(&out), &mut on_event);
    bar.finish_and_clear();
    let summary = summary?;
    let first = summary
        .train_losses
        .first()
        .map(|x| x.1)
        .unwrap_or(f32::NAN);
    let last = summary.train_losses.last().map(|x| x.1).unwrap_or(f32::NAN);
    eprintln!(
        "graft: {} steps, loss {first:.4} → {last:.4}{}; {} tokens in {:.1} s ({:.0} tokens/s)",
        summary.steps,
        summary
            .eval_losses
            .last()
            .map(|e| format!(", eval loss {:.4}", e.1))
            .unwrap_or_default(),
        summary.tokens,
        summary.seconds,
        summary.tokens as f64 / summary.seconds.max(1e-9)
    );
    eprintln!(
        "graft: adapter saved to {} (adapter_config.json, adapter_model.safetensors); log train_log.jsonl, curve loss_curve.svg ({:.1} s in all)",
        c.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Args)]
pub struct BenchTrainCmd {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Tokens per sequence (all of them carry the loss).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Measured optimizer steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub r: usize,
    #[arg(long, value_delimiter = ',', default_value = "q_proj,v_proj")]
    pub target_modules: Vec<String>,
    /// Expand the quantized base to f32 first (what transformers trains on).
    #[arg(long)]
    pub f32: bool,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Training throughput on a fixed workload that scripts/bench_train.py repeats in PyTorch:
/// ids (i·7919 mod 10000) + 100 per position, every token labelled, LoRA dropout 0, AdamW.
pub fn bench_train(c: &BenchTrainCmd) -> CliResult<()> {
    let (mut model, _) = open(&c.model)?;
    if c.f32 {
        let bytes = model.dequantize_weights()?;
        eprintln!(
            "graft: base expanded to f32 ({:.0} MiB)",
            bytes as f64 / 1048576.0
        );
    }
    let mut kw = serde_json::Map::new();
    kw.insert("peft_type".into(), json!("LORA"));
    kw.insert("r".into(), json!(c.r));
    kw.insert("lora_alpha".into(), json!(2 * c.r));
    kw.insert("lora_dropout".into(), json!(0.0));
    kw.insert("target_modules".into(), json!(c.target_modules));
    model.add_adapter(config_from_kwargs(Value::Object(kw))?, Some("default"), 0)?;
    let vocab = model.vocab_size as u32;
    let examples: Vec<Example> = (0..c.batch_size)
        .map(|b| {
            let ids: Vec<u32> = (0..c.seq_len)
                .map(|i| ((((b * c.seq_len + i) * 7919) % 10000) + 100) as u32 % vocab.max(1))
                .collect();
            let labels = ids.iter().map(|&t| t as i64).collect();
            Example {
                ids,
                labels,
                line: b + 1,
            }
        })
        .collect();
    let args = TrainArgs {
        max_steps: Some(c.steps + 1),
        batch_size: c.batch_size,
        schedule: Schedule::Constant,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&mut model, "default", args)?;
    let all: Vec<usize> = (0..c.batch_size).collect();
    let lr = trainer.args.optim.lr;
    trainer.train_step(&examples, std::slice::from_ref(&all), lr)?;
    let t0 = Instant::now();
    let mut losses = Vec::new();
    for _ in 0..c.steps {
        let (loss, _, _) = trainer.train_step(&examples, std::slice::from_ref(&all), lr)?;
        losses.push(loss);
    }
    let secs = t0.elapsed().as_secs_f64();
    let tokens = c.steps * c.batch_size * c.seq_len;
    let tps = tokens as f64 / secs.max(1e-9);
    let peak = super::bench::peak_rss().unwrap_or(0);
    println!(
        "graft train bench: {} base, batch {}×{}, LoRA r={} on {}: {:.1} tokens/s ({:.2} s/step), peak RSS {:.0} MiB, losses {:?}",
        if c.f32 { "f32" } else { "quantized" },
        c.batch_size,
        c.seq_len,
        c.r,
        c.target_modules.join(","),
        tps,
        secs / c.steps as f64,
        peak as f64 / 1048576.0,
        losses
    );
    if let Some(p) = &c.json {
        let v = json!({"engine": "graft", "base": if c.f32 {"f32"} else {"quantized"},
            "batch_size": c.batch_size, "seq_len": c.seq_len, "steps": c.steps, "r": c.r,
            "tokens_per_s": tps, "seconds_per_step": secs / c.steps as f64,
            "peak_rss_mib": peak as f64 / 1048576.0, "losses": losses});
        std::fs::write(p, v.to_string()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}
