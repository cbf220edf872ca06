//! The engine: one thread that owns the running batch. Requests join and leave at step
//! boundaries (continuous batching): each step runs, in one forward pass, a chunk of each
//! newly admitted prompt and one decode token of every running sequence, each with its own KV
//! cache and adapter. A sequence ends at EOS, a stop string, its token limit, or when its
//! client goes away, and its slot is free for the next step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use graft_adapters::Adapter;
use graft_models::sampling::Sampler;
use graft_models::{Device, GpuBatchSeq, KvCache, Model, Sampling, Sequence};
use graft_text::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;
use crate::text::{Step, TextStream};

/// How the engine batches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Prompt tokens one step runs at most (a longer prompt is prefilled over several steps,
    /// in chunks of this size, so it does not stall the running decodes).
    pub prefill_chunk: usize,
    /// On a GPU: adapters resident in its adapter slots at once (the model's batched passes
    /// are enabled with as many).
    pub gpu_adapter_slots: usize,
}

/// What a request hears from the engine.
#[derive(Debug)]
pub enum Event {
    /// New text (never empty).
    Text(String),
    /// The end: why, and the token counts.
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The pass failed (not the request's fault); the answer ends with this error.
    Failed(String),
}

/// One request's generation.
pub struct Job {
    /// The adapter's name, or the base's (metrics' label).
    pub label: String,
    pub adapter: Option<Arc<Adapter>>,
    pub prompt: Vec<u32>,
    /// Checked by the caller: prompt + max_tokens fits the context.
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// EOS does not end the answer.
    pub ignore_eos: bool,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

enum Msg {
    Job(Box<Job>),
}

/// The handle the HTTP side holds.
pub struct Engine {
    tx: std::sync::Mutex<Option<Sender<Msg>>>,
    /// Jobs sent and not yet admitted to the batch.
    pub waiting: Arc<AtomicUsize>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Seq {
    job: Job,
    cache: KvCache,
    prefilled: usize,
    produced: Vec<u32>,
    sampler: Sampler,
    text: TextStream,
    last_token: Option<Instant>,
    /// On a GPU: the sequence's KV-cache slot, the positions it holds, its adapter's slot.
    kv_slot: usize,
    pos: usize,
    gpu_adapter: Option<usize>,
}

/// A GPU adapter slot: the adapter it holds and the running sequences using it.
struct GpuSlot {
    adapter: Option<Arc<Adapter>>,
    users: usize,
    last_used: u64,
}

/// On a GPU: which adapters sit in its slots, and the free KV-cache slots.
struct GpuState {
    slots: Vec<GpuSlot>,
    kv_free: Vec<usize>,
    tick: u64,
}

impl GpuState {
    /// A slot holding `a`, uploading it into the least recently used idle slot if no slot
    /// holds it. `Ok(None)`: every slot is in use by running sequences (the job waits).
    fn acquire(&mut self, model: &Model, a: &Arc<Adapter>) -> Result<Option<usize>, String> {
        self.tick += 1;
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.adapter.as_ref().is_some_and(|x| Arc::ptr_eq(x, a)))
        {
            self.slots[i].users += 1;
            self.slots[i].last_used = self.tick;
            return Ok(Some(i));
        }
        let Some(i) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.users == 0)
            .min_by_key(|(_, s)| (s.adapter.is_some(), s.last_used))
            .map(|(i, _)| i)
        else {
            return Ok(None);
        };
        let up = model.with_gpu(|g, table, _| g.upload_adapter(table, i, a));
        match up {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // the slot's old contents may be partly overwritten: it holds nothing now
                self.slots[i].adapter = None;
                return Err(e.to_string());
            }
            None => return Err("the model is not on a GPU".into()),
        }
        self.slots[i] = GpuSlot {
            adapter: Some(a.clone()),
            users: 1,
            last_used: self.tick,
        };
        Ok(Some(i))
    }
}

impl Seq {
    /// Sequences whose adapter replaces base parameters run in passes of their own.
    fn group(&self) -> Option<*const Adapter> {
        match &self.job.adapter {
            Some(a) if graft_models::replaces_parameters(a) => Some(Arc::as_ptr(a)),
            _ => None,
        }
    }
}

impl Engine {
    pub fn start(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        eos: Vec<u32>,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Engine> {
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let gpu = (model.device() == Device::Gpu).then(|| GpuState {
            slots: (0..cfg.gpu_adapter_slots)
                .map(|_| GpuSlot {
                    adapter: None,
                    users: 0,
                    last_used: 0,
                })
                .collect(),
            kv_free: (0..cfg.max_batch).rev().collect(),
            tick: 0,
        });
        let w = waiting.clone();
        let thread = std::thread::Builder::new()
            .name("graft-engine".into())
            .spawn(move || {
                Loop {
                    model,
                    tokenizer,
                    eos,
                    cfg,
                    metrics,
                    waiting: w,
                    queue: VecDeque::new(),
                    running: Vec::new(),
                    turn: 0,
                    gpu,
                }
                .run(rx)
            })?;
        Ok(Engine {
            tx: std::sync::Mutex::new(Some(tx)),
            waiting,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Hands a job to the engine (the caller counted it in `waiting`). `false`: the engine
    /// has stopped.
    pub fn submit(&self, job: Job) -> bool {
        let g = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(tx) => tx.send(Msg::Job(Box::new(job))).is_ok(),
            None => false,
        }
    }

    /// No new jobs; the engine finishes the ones it has, then its thread ends. Blocks until
    /// it has.
    pub fn stop_and_join(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

struct Loop {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    waiting: Arc<AtomicUsize>,
    queue: VecDeque<Job>,
    running: Vec<Seq>,
    turn: usize,
    gpu: Option<GpuState>,
}

impl Loop {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut open = true;
        loop {
            if self.running.is_empty() && self.queue.is_empty() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(Msg::Job(j)) => self.queue.push_back(*j),
                    Err(_) => return,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(Msg::Job(j)) => self.queue.push_back(*j),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.drop_gone();
            while self.running.len() < self.cfg.max_batch {
                let Some(job) = self.queue.front() else {
                    break;
                };
                let mut kv_slot = 0;
                let mut gpu_adapter = None;
                if let Some(gs) = &mut self.gpu {
                    if let Some(a) = &job.adapter {
                        match gs.acquire(&self.model, a) {
                            Ok(Some(i)) => gpu_adapter = Some(i),
                            // every adapter slot is busy: the queue waits for one
                            Ok(None) => break,
                            Err(e) => {
                                if let Some(job) = self.queue.pop_front() {
                                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                                    self.metrics
                                        .requests
                                        .with_label_values(&[&job.label, "error"])
                                        .inc();
                                    let _ = job.events.send(Event::Failed(format!(
                                        "adapter `{}` cannot run on the GPU: {e}",
                                        job.label
                                    )));
                                }
                                continue;
                            }
                        }
                    }
                    // running < max_batch: a KV slot is free
                    kv_slot = gs.kv_free.pop().unwrap_or(0);
                }
                let Some(job) = self.queue.pop_front() else {
                    break;
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                // on a GPU the KV cache is the GPU's slot
                let cap = if self.gpu.is_some() {
                    0
                } else {
                    job.prompt.len() + job.max_tokens
                };
                self.running.push(Seq {
                    sampler: Sampler::new(job.sampling.clone()),
                    job,
                    cache: KvCache::with_capacity(cap),
                    prefilled: 0,
                    produced: Vec::new(),
                    text: TextStream::default(),
                    last_token: None,
                    kv_slot,
                    pos: 0,
                    gpu_adapter,
                });
            }
            self.metrics
                .queue_depth
                .set(self.waiting.load(Ordering::SeqCst) as i64);
            self.metrics.running.set(self.running.len() as i64);
            if !self.running.is_empty() {
                self.step();
                self.metrics.running.set(self.running.len() as i64);
            }
        }
    }

    /// Requests whose client went away: their slots free now.
    fn drop_gone(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|j| !j.events.is_closed());
        let gone = before - self.queue.len();
        if gone > 0 {
            self.waiting.fetch_sub(gone, Ordering::SeqCst);
        }
        let m = self.metrics.clone();
        self.remove_where(|_, s| {
            let closed = s.job.events.is_closed();
            if closed {
                m.requests
                    .with_label_values(&[&s.job.label, "cancelled"])
                    .inc();
            }
            closed
        });
    }

    /// Removes the running sequences `gone(index, seq)` picks, freeing their GPU slots.
    fn remove_where(&mut self, mut gone: impl FnMut(usize, &Seq) -> bool) {
        let running = std::mem::take(&mut self.running);
        for (i, s) in running.into_iter().enumerate() {
            if !gone(i, &s) {
                self.running.push(s);
                continue;
            }
            if let Some(gs) = &mut self.gpu {
                gs.kv_free.push(s.kv_slot);
                if let Some(a) = s.gpu_adapter {
                    gs.slots[a].users = gs.slots[a].users.saturating_sub(1);
                }
            }
        }
    }

    /// One forward pass over one group of the running sequences.
    fn step(&mut self) {
        // the groups present, in order of first appearance; one per step, in turn
        let mut groups: Vec<Option<*const Adapter>> = Vec::new();
        for s in &self.running {
            let g = s.group();
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let group = groups[self.turn % groups.len()];
        self.turn = self.turn.wrapping_add(1);
        let chunk = self.cfg.prefill_chunk.max(1);
        let mut budget = chunk;
        // (index in running, ids, prompt tokens taken)
        let mut plan: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            if s.group() != group {
                continue;
            }
            let left = s.job.prompt.len() - s.prefilled;
            if left > 0 {
                // chunks always start at multiples of `chunk`, whatever else runs, so a
                // prompt's numbers never depend on its neighbours
                let take = left.min(chunk);
                if take > budget && budget < chunk {
                    continue;
                }
                budget = budget.saturating_sub(take);
                plan.push((
                    i,
                    s.job.prompt[s.prefilled..s.prefilled + take].to_vec(),
                    take,
                ));
            } else if let Some(&last) = s.produced.last() {
                plan.push((i, vec![last], 0));
            }
        }
        if plan.is_empty() {
            return;
        }
        let tokens: usize = plan.iter().map(|p| p.1.len()).sum();
        self.metrics.batch_sequences.observe(plan.len() as f64);
        self.metrics.batch_tokens.observe(tokens as f64);
        let logits: Result<candle_core::Tensor, String> = if self.gpu.is_some() {
            let seqs: Vec<GpuBatchSeq> = plan
                .iter()
                .map(|(i, ids, _)| {
                    let s = &self.running[*i];
                    GpuBatchSeq {
                        ids,
                        slot: s.kv_slot,
                        pos: s.pos,
                        adapter: s.gpu_adapter,
                    }
                })
                .collect();
            match self
                .model
                .with_gpu(|g, table, reg| g.forward_batch(table, reg, &seqs))
            {
                Some(r) => r.map_err(|e| e.to_string()),
                None => Err("the model is not on a GPU".into()),
            }
        } else {
            let mut slot: Vec<Option<usize>> = vec![None; self.running.len()];
            for (k, p) in plan.iter().enumerate() {
                slot[p.0] = Some(k);
            }
            let mut seqs: Vec<(usize, Sequence)> = Vec::with_capacity(plan.len());
            for (i, s) in self.running.iter_mut().enumerate() {
                if let Some(k) = slot[i] {
                    let Seq { job, cache, .. } = s;
                    seqs.push((
                        k,
                        Sequence {
                            ids: &plan[k].1,
                            cache,
                            adapter: job.adapter.as_deref(),
                        },
                    ));
                }
            }
            seqs.sort_by_key(|(k, _)| *k);
            let mut seqs: Vec<Sequence> = seqs.into_iter().map(|(_, s)| s).collect();
            self.model
                .forward_batch(&mut seqs)
                .map_err(|e| e.to_string())
        };
        let rows: Result<Vec<Vec<f32>>, String> = logits.and_then(|l| {
            (0..plan.len())
                .map(|k| {
                    l.get(k)
                        .and_then(|r| r.to_vec1::<f32>())
                        .map_err(|e| e.to_string())
                })
                .collect()
        });
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                // not the requests' fault (their input was checked): each hears it, and the
                // batch goes on without them
                let failed: Vec<usize> = plan.iter().map(|p| p.0).collect();
                for &i in &failed {
                    let s = &self.running[i];
                    self.metrics
                        .requests
                        .with_label_values(&[&s.job.label, "error"])
                        .inc();
                    let _ = s
                        .job
                        .events
                        .send(Event::Failed(format!("the forward pass failed: {e}")));
                }
                self.remove_where(|i, _| failed.contains(&i));
                return;
            }
        };
        let mut done: Vec<usize> = Vec::new();
        for ((i, ids, took), row) in plan.iter().zip(rows) {
            let s = &mut self.running[*i];
            s.pos += ids.len();
            if *took > 0 {
                s.prefilled += took;
                self.metrics
                    .prompt_tokens
                    .with_label_values(&[&s.job.label])
                    .inc_by(*took as u64);
                if s.prefilled < s.job.prompt.len() {
                    continue;
                }
            }
            let now = Instant::now();
            let token = s.sampler.pick(&row);
            s.produced.push(token);
            let label = s.job.label.as_str();
            self.metrics
                .generation_tokens
                .with_label_values(&[label])
                .inc();
            match s.last_token {
                None => self
                    .metrics
                    .ttft
                    .with_label_values(&[label])
                    .observe((now - s.job.arrived).as_secs_f64()),
                Some(t) => self
                    .metrics
                    .itl
                    .with_label_values(&[label])
                    .observe((now - t).as_secs_f64()),
            }
            s.last_token = Some(now);
            let mut finish: Option<&'static str> = None;
            if !s.job.ignore_eos && self.eos.contains(&token) {
                finish = Some("stop");
                let text = self.tokenizer.decode(&s.produced, true).unwrap_or_default();
                let rest = s.text.flush(&text);
                if !rest.is_empty() {
                    let _ = s.job.events.send(Event::Text(rest));
                }
            } else {
                let text = self.tokenizer.decode(&s.produced, true).unwrap_or_default();
                match s.text.push(&text, &s.job.stop) {
                    Step::Send(piece) => {
                        if !piece.is_empty() {
                            let _ = s.job.events.send(Event::Text(piece));
                        }
                    }
                    Step::Stop(piece) => {
                        if !piece.is_empty() {
                            let _ = s.job.events.send(Event::Text(piece));
                        }
                        finish = Some("stop");
                    }
                }
                if finish.is_none() && s.produced.len() >= s.job.max_tokens {
                    let rest = s.text.flush(&text);
                    if !rest.is_empty() {
                        let _ = s.job.events.send(Event::Text(rest));
                    }
                    finish = Some("length");
                }
            }
            if let Some(f) = finish {
                // counted before the client hears the end, so a client that reads /metrics
                // after its answer sees its request
                self.metrics
                    .requests
                    .with_label_values(&[&s.job.label, f])
                    .inc();
                let _ = s.job.events.send(Event::Done {
                    finish_reason: f,
                    prompt_tokens: s.job.prompt.len(),
                    completion_tokens: s.produced.len(),
                });
                done.push(*i);
            }
        }
        if !done.is_empty() {
            self.remove_where(|i, _| done.contains(&i));
        }
    }
}
