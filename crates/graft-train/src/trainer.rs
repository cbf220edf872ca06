//! The training loop: transformers' `Trainer.train()` for an adapter — batches, gradient
//! accumulation, clipping, AdamW with a schedule, evaluation, checkpoints and resume, a JSONL
//! log, the loss curve, and the adapter saved in PEFT's format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use graft_adapters::tensors::{parse_safetensors, serialize_safetensors, LoadedTensor};
use graft_models::Model;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::Example;
use crate::error::{Error, Result};
use crate::forward::{Batch, TrainModel};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use crate::params::Trainable;
use crate::save::{write_dir_atomic_with, write_file_synced, write_files_atomic};

/// How long to train and how (transformers' `TrainingArguments`, the ones that matter here).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainArgs {
    /// Optimizer steps; when `None`, `epochs` decides.
    pub max_steps: Option<usize>,
    pub epochs: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub optim: AdamWConfig,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_steps: usize,
    /// Save a checkpoint every this many steps (0: none).
    pub save_steps: usize,
    pub seed: u64,
    /// Token id used to pad batches (its positions carry no loss).
    pub pad_id: u32,
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            max_steps: None,
            epochs: 1.0,
            batch_size: 4,
            grad_accum: 1,
            optim: AdamWConfig {
                lr: 2e-3,
                ..Default::default()
            },
            schedule: Schedule::Linear,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            eval_steps: 0,
            save_steps: 0,
            seed: 0,
            pad_id: 0,
        }
    }
}

/// What the loop reports as it goes (the CLI draws a progress bar from these).
#[derive(Debug, Clone)]
pub enum Event {
    Start {
        total_steps: usize,
        first_step: usize,
        trainable: usize,
    },
    Step(StepLog),
    Eval {
        step: usize,
        loss: f64,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
}

/// One optimizer step, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Real (non-padding) tokens in this step's batches.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
}

/// What a finished run returns.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps: usize,
    pub train_losses: Vec<(usize, f32)>,
    pub eval_losses: Vec<(usize, f32)>,
    pub tokens: usize,
    pub seconds: f64,
}

/// Where the run writes (checkpoints, log); `None` trains in memory only (tests, the API).
pub struct Output {
    pub dir: PathBuf,
    /// The loss curve's title (e.g. the model, the data and the method).
    pub title: String,
}

/// The loop. Owns the trainable copy of adapter `name` of `model`; at the end the trained
/// values go back into the model's registry, so `save_pretrained` and generation see them.
pub struct Trainer<'m> {
    pub model: &'m mut Model,
    pub adapter: Trainable,
    pub args: TrainArgs,
    pub opt: AdamW,
    /// Optimizer steps done (also after a resume).
    pub step: usize,
    pub train_losses: Vec<(usize, f32)>,
    pub eval_losses: Vec<(usize, f32)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    args: TrainArgs,
    train_losses: Vec<(usize, f32)>,
    eval_losses: Vec<(usize, f32)>,
    adapter_name: String,
}

impl<'m> Trainer<'m> {
    /// Trains adapter `name` (added with `add_adapter` or loaded with `is_trainable`).
    pub fn new(model: &'m mut Model, name: &str, args: TrainArgs) -> Result<Self> {
        if args.batch_size == 0 || args.grad_accum == 0 {
            return Err(Error::Config(
                "batch size and gradient accumulation must be at least 1".into(),
            ));
        }
        if !(args.optim.lr.is_finite() && args.optim.lr > 0.0) {
            return Err(Error::Config(format!(
                "the learning rate must be positive, got {}",
                args.optim.lr
            )));
        }
        let adapter = Trainable::from_model(model, name)?;
        // Fail early on an architecture the training forward pass does not cover.
        TrainModel::new(&*model, &adapter)?;
        let sizes: Vec<usize> = adapter.params.iter().map(|p| p.var.elem_count()).collect();
        let opt = AdamW::new(args.optim, &sizes);
        Ok(Trainer {
            model,
            adapter,
            args,
            opt,
            step: 0,
            train_losses: Vec::new(),
            eval_losses: Vec::new(),
        })
    }

    fn micro_batches_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.args.batch_size)
    }

    /// Optimizer steps per epoch and in total for `n` training examples.
    pub fn plan(&self, n: usize) -> (usize, usize) {
        let per_epoch = self
            .micro_batches_per_epoch(n)
            .div_ceil(self.args.grad_accum)
            .max(1);
        let total = match self.args.max_steps {
            Some(s) => s,
            None => ((per_epoch as f64) * self.args.epochs).ceil() as usize,
        };
        (per_epoch, total)
    }

    /// The example indices of optimizer step `step`'s micro-batches: each epoch is a seeded
    /// permutation cut into batches, so a resumed run sees what the first run would have.
    fn step_batches(&self, n: usize, step: usize) -> Vec<Vec<usize>> {
        let (per_epoch, _) = self.plan(n);
        let epoch = step / per_epoch;
        let within = step % per_epoch;
        let mut perm: Vec<usize> = (0..n).collect();
        let mut rng = StdRng::seed_from_u64(self.args.seed.wrapping_add(epoch as u64));
        perm.shuffle(&mut rng);
        let micro: Vec<Vec<usize>> = perm
            .chunks(self.args.batch_size)
            .map(|c| c.to_vec())
            .collect();
        let a = within * self.args.grad_accum;
        let b = (a + self.args.grad_accum).min(micro.len());
        micro.get(a..b).map(|s| s.to_vec()).unwrap_or_default()
    }

    fn batch(&self, data: &[Example], idx: &[usize]) -> Result<Batch> {
        let rows: Vec<(&[u32], &[i64])> = idx
            .iter()
            .filter_map(|&i| data.get(i))
            .map(|e| (e.ids.as_slice(), e.labels.as_slice()))
            .collect();
        Batch::from_rows(&rows, self.args.pad_id)
    }

    /// The loss of the accumulated batch made of micro-batches `batches` (examples of
    /// `data`) and its gradient per parameter (in `adapter.params` order), before clipping;
    /// also the real tokens. A non-finite loss returns at once, gradients untouched.
    pub fn gradients(
        &self,
        data: &[Example],
        batches: &[Vec<usize>],
    ) -> Result<(f64, Vec<Vec<f32>>, usize)> {
        let mut micro = Vec::with_capacity(batches.len());
        for idx in batches {
            micro.push(self.batch(data, idx)?);
        }
        let denominator: usize = micro.iter().map(|b| b.label_count()).sum();
        if denominator == 0 {
            return Err(Error::Config("a training step without any label".into()));
        }
        let tokens: usize = batches
            .iter()
            .flatten()
            .filter_map(|&i| data.get(i))
            .map(|e| e.ids.len())
            .sum();
        let mut grads: Vec<Vec<f32>> = self
            .adapter
            .params
            .iter()
            .map(|p| vec![0f32; p.var.elem_count()])
            .collect();
        let mut loss_sum = 0f64;
        // Dropout masks depend on the seed and the step only, so a resumed run draws the same.
        let mut rng = StdRng::seed_from_u64(self.args.seed ^ (0x9e37_79b9 + self.step as u64));
        let tm = TrainModel::new(&*self.model, &self.adapter)?;
        for b in &micro {
            if b.label_count() == 0 {
                continue;
            }
            let loss = tm.loss(b, denominator, Some(&mut rng))?;
            let value = loss.to_scalar::<f32>()? as f64;
            loss_sum += value;
            if !value.is_finite() {
                return Ok((value, grads, tokens));
            }
            let g = loss.backward()?;
            for (acc, p) in grads.iter_mut().zip(&self.adapter.params) {
                if let Some(gt) = g.get(p.var.as_tensor()) {
                    let v = gt.flatten_all()?.to_vec1::<f32>()?;
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += x;
                    }
                }
            }
        }
        Ok((loss_sum, grads, tokens))
    }

    /// One optimizer step over the micro-batches `batches`: the loss of the whole accumulated
    /// batch, its gradient norm before clipping, and the real tokens. Nothing is updated when
    /// the loss or the gradient is not finite.
    pub fn train_step(
        &mut self,
        data: &[Example],
        batches: &[Vec<usize>],
        lr: f64,
    ) -> Result<(f64, f64, usize)> {
        let (loss, mut grads, tokens) = self.gradients(data, batches)?;
        if !loss.is_finite() {
            return Ok((loss, f64::NAN, tokens));
        }
        let norm = clip_grad_norm(&mut grads, self.args.max_grad_norm);
        if !norm.is_finite() {
            return Ok((f64::NAN, norm, tokens));
        }
        let vars: Vec<&candle_core::Var> = self.adapter.params.iter().map(|p| &p.var).collect();
        self.opt.update(&vars, &grads, lr)?;
        self.step += 1;
        Ok((loss, norm, tokens))
    }

    /// Mean loss over `data` (evaluation mode: no dropout), as `Trainer.evaluate()` reports
    /// `eval_loss`.
    pub fn evaluate(&self, data: &[Example]) -> Result<f64> {
        let tm = TrainModel::new(&*self.model, &self.adapter)?;
        let mut sum = 0f64;
        let mut count = 0usize;
        for chunk in (0..data.len())
            .collect::<Vec<_>>()
            .chunks(self.args.batch_size)
        {
            let b = self.batch(data, chunk)?;
            let n = b.label_count();
            if n == 0 {
                continue;
            }
            let l = tm.loss(&b, 1, None)?.detach().to_scalar::<f32>()? as f64;
            sum += l;
            count += n;
        }
        if count == 0 {
            return Err(Error::EmptyData("the eval set holds no label token".into()));
        }
        Ok(sum / count as f64)
    }

    /// Files of a checkpoint: the adapter as PEFT saves it, the optimizer state, the state.
    fn checkpoint_files(&mut self, total: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = self.adapter_files()?;
        let mut opt = BTreeMap::new();
        for (i, p) in self.adapter.params.iter().enumerate() {
            let n = self.opt.m[i].len();
            for (tag, v) in [("exp_avg", &self.opt.m[i]), ("exp_avg_sq", &self.opt.v[i])] {
                opt.insert(
                    format!("{}.{tag}", p.key),
                    LoadedTensor {
                        tensor: Tensor::from_slice(v, n, &Device::Cpu)?,
                        dtype: DType::F32,
                    },
                );
            }
        }
        files.push(("optimizer.safetensors".into(), serialize_safetensors(&opt)?));
        let state = TrainerState {
            step: self.step,
            total_steps: total,
            args: self.args.clone(),
            train_losses: self.train_losses.clone(),
            eval_losses: self.eval_losses.clone(),
            adapter_name: self.adapter.name.clone(),
        };
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::Config(format!("serializing the trainer state: {e}")))?;
        files.push(("trainer_state.json".into(), json));
        Ok(files)
    }

    /// Saves `out/checkpoint-<step>/`, complete or not at all.
    pub fn save_checkpoint(&mut self, out: &Path, total: usize) -> Result<PathBuf> {
        let files = self.checkpoint_files(total)?;
        let dest = out.join(format!("checkpoint-{}", self.step));
        write_dir_atomic_with(&dest, &files, &write_file_synced)?;
        Ok(dest)
    }

    /// The newest complete checkpoint under `out`, if any.
    pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
        let rd = std::fs::read_dir(out).ok()?;
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
                e.path()
                    .join("trainer_state.json")
                    .is_file()
                    .then(|| (step, e.path()))
            })
            .max_by_key(|(s, _)| *s)
            .map(|(_, p)| p)
    }

    /// Continues from a checkpoint: adapter values, optimizer moments, step and loss history.
    /// Returns the arguments the checkpoint was trained with (the caller's stay in force).
    pub fn resume_from(&mut self, dir: &Path) -> Result<TrainArgs> {
        let ck = |msg: String| Error::Checkpoint {
            path: dir.display().to_string(),
            msg,
        };
        let state_path = dir.join("trainer_state.json");
        let bytes = graft_adapters::tensors::read_file(&state_path, 64 << 20)?;
        let state: TrainerState =
            serde_json::from_slice(&bytes).map_err(|e| ck(format!("trainer_state.json: {e}")))?;
        let weights =
            graft_adapters::tensors::load_safetensors(&dir.join("adapter_model.safetensors"))?;
        let weights: BTreeMap<String, LoadedTensor> = weights
            .into_iter()
            .map(|(k, v)| (graft_adapters::inject::strip_prefix(&k).to_string(), v))
            .collect();
        self.adapter.set_values(&weights)?;
        let opt_bytes =
            graft_adapters::tensors::read_file(&dir.join("optimizer.safetensors"), 16 << 30)?;
        let opt = parse_safetensors("optimizer.safetensors", &opt_bytes)?;
        for (i, p) in self.adapter.params.iter().enumerate() {
            for (tag, slot) in [("exp_avg", 0), ("exp_avg_sq", 1)] {
                let t = opt
                    .get(&format!("{}.{tag}", p.key))
                    .ok_or_else(|| ck(format!("no optimizer state for `{}`", p.key)))?;
                let v = t.tensor.flatten_all()?.to_vec1::<f32>()?;
                if v.len() != p.var.elem_count() {
                    return Err(ck(format!(
                        "optimizer state of `{}` has the wrong size",
                        p.key
                    )));
                }
                if slot == 0 {
                    self.opt.m[i] = v;
                } else {
                    self.opt.v[i] = v;
                }
            }
        }
        self.opt.step = state.step as u64;
        self.step = state.step;
        self.train_losses = state.train_losses;
        self.eval_losses = state.eval_losses;
        Ok(state.args)
    }

    /// Runs the loop until the planned number of steps. With `out`, writes checkpoints every
    /// `save_steps`, `train_log.jsonl` (one line per step and per evaluation) and, at the end,
    /// the adapter (PEFT format) and `loss_curve.svg`. A non-finite loss stops the run with
    /// [`Error::NonFiniteLoss`], naming the last good checkpoint (which is kept).
    pub fn train(
        &mut self,
        train: &[Example],
        eval: &[Example],
        out: Option<&Output>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<Summary> {
        if train.is_empty() {
            return Err(Error::EmptyData("no training examples".into()));
        }
        let (per_epoch, total) = self.plan(train.len());
        if total == 0 {
            return Err(Error::Config("zero training steps planned".into()));
        }
        on_event(&Event::Start {
            total_steps: total,
            first_step: self.step,
            trainable: self.adapter.num_values(),
        });
        let mut log = match out {
            Some(o) => {
                std::fs::create_dir_all(&o.dir).map_err(io_err(&o.dir))?;
                let p = o.dir.join("train_log.jsonl");
                Some((
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&p)
                        .map_err(io_err(&p))?,
                    p,
                ))
            }
            None => None,
        };
        let mut write_log = |v: serde_json::Value| -> Result<()> {
            if let Some((f, p)) = log.as_mut() {
                use std::io::Write;
                writeln!(f, "{v}").map_err(io_err(p))?;
            }
            Ok(())
        };
        let t0 = Instant::now();
        let first = self.step;
        let mut tokens_total = 0usize;
        let mut last_checkpoint: Option<PathBuf> =
            out.and_then(|o| Self::latest_checkpoint(&o.dir));
        while self.step < total {
            let step = self.step;
            let batches = self.step_batches(train.len(), step);
            let lr = self.args.optim.lr
                * self
                    .args
                    .schedule
                    .factor(step, self.args.warmup_steps, total);
            let ts = Instant::now();
            let (loss, norm, tokens) = self.train_step(train, &batches, lr)?;
            if !loss.is_finite() || !norm.is_finite() {
                let what = if loss.is_finite() { norm } else { loss };
                let checkpoint = match &last_checkpoint {
                    Some(p) => format!(
                        "The last good checkpoint is {} (kept; resume from it with a lower learning rate, e.g. {:e}).",
                        p.display(),
                        self.args.optim.lr / 10.0
                    ),
                    None => format!(
                        "No checkpoint was saved before it (save checkpoints more often); try a lower learning rate than {:e}.",
                        self.args.optim.lr
                    ),
                };
                let value = what as f32;
                write_log(json!({"step": step + 1, "error": format!("non-finite loss {value}")}))?;
                return Err(Error::NonFiniteLoss {
                    step: step + 1,
                    value,
                    checkpoint,
                });
            }
            tokens_total += tokens;
            let elapsed = t0.elapsed().as_secs_f64();
            let done = (self.step - first) as f64;
            let eta = elapsed / done.max(1.0) * (total - self.step) as f64;
            let entry = StepLog {
                step: self.step,
                total_steps: total,
                epoch: self.step as f64 / per_epoch as f64,
                loss,
                lr,
                grad_norm: norm,
                tokens,
                tokens_per_s: tokens as f64 / ts.elapsed().as_secs_f64().max(1e-9),
                elapsed_s: elapsed,
                eta_s: eta,
            };
            self.train_losses.push((self.step, loss as f32));
            write_log(serde_json::to_value(&entry).unwrap_or_default())?;
            on_event(&Event::Step(entry));
            let at_end = self.step == total;
            let eval_now = !eval.is_empty()
                && (at_end
                    || (self.args.eval_steps > 0
                        && self.step.is_multiple_of(self.args.eval_steps)));
            if eval_now {
                let l = self.evaluate(eval)?;
                self.eval_losses.push((self.step, l as f32));
                write_log(json!({"step": self.step, "eval_loss": l}))?;
                on_event(&Event::Eval {
                    step: self.step,
                    loss: l,
                });
            }
            if let Some(o) = out {
                if self.args.save_steps > 0
                    && self.step.is_multiple_of(self.args.save_steps)
                    && !at_end
                {
                    let p = self.save_checkpoint(&o.dir, total)?;
                    on_event(&Event::Checkpoint {
                        step: self.step,
                        path: p.clone(),
                    });
                    last_checkpoint = Some(p);
                }
            }
        }
        self.adapter.commit_to(self.model)?;
        if let Some(o) = out {
            self.save_adapter(&o.dir)?;
            crate::plot::write_loss_curve(
                &o.dir.join("loss_curve.svg"),
                &self.train_losses,
                &self.eval_losses,
                &o.title,
            )?;
        }
        Ok(Summary {
            steps: self.step,
            train_losses: self.train_losses.clone(),
            eval_losses: self.eval_losses.clone(),
            tokens: tokens_total,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Writes the trained adapter under `dir` as PEFT's `save_pretrained` does (the files are
    /// complete or absent).
    pub fn save_adapter(&mut self, dir: &Path) -> Result<()> {
        let files = self.adapter_files()?;
        write_files_atomic(dir, &files)
    }

    /// The trained adapter's files as `save_pretrained` writes them, at the top of the folder
    /// whatever the adapter's name (PEFT puts a non-default name in a subfolder).
    fn adapter_files(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        self.adapter.commit_to(self.model)?;
        let mut files = self
            .model
            .adapter_files_bytes(Some(&[self.adapter.name.as_str()]))?;
        let prefix = format!("{}/", self.adapter.name);
        for f in files.iter_mut() {
            if let Some(rest) = f.0.strip_prefix(&prefix) {
                f.0 = rest.to_string();
            }
        }
        Ok(files)
    }
}
