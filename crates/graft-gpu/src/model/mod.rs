//! A model on the GPU: a [`Network`] description lowered to a program of kernel dispatches
//! ([`lower`]), its base weights uploaded once, the active adapters folded into the kernels'
//! epilogues ([`adapters`]; refreshed when the registry changes, without touching the base or
//! compiling a pipeline), a KV cache per layer, and forward passes recorded as one compute pass
//! and one submit ([`plan`], [`run`]).

mod adapters;
mod batch;
mod lower;
mod plan;
mod run;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use graft_adapters::AdapterRegistry;
use graft_arch::network::{Network, Norm};
use graft_arch::table::{ModuleTable, Weight};

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::{Registry, Seg};
use crate::weights::{storage, storage_f32, GpuWeight, Packed};

pub use batch::{BatchLayout, BatchOptions, BatchSeq};
pub use run::DevicePick;

/// Tokens one forward pass takes at most; longer inputs run in chunks through the cache.
const MAX_CHUNK: usize = 512;
const UNIFORM_STRIDE: u64 = 256;

/// Options of [`GpuModel::new`].
#[derive(Debug, Clone, Default)]
pub struct GpuModelOptions {
    /// Positions the KV cache holds (default: the model's maximum, at most 4096).
    pub max_context: Option<usize>,
    /// Upload every Linear weight as f16 whatever its format (the benchmark's f16 row).
    pub f16_weights: bool,
}

/// Activation buffers a program refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum B {
    X,
    X2,
    H,
    E,
    Qkv,
    Att,
    Mlp,
    Last,
    Logits,
    /// The input of the part after the last-row cut: `Last` when the cut copies, else the
    /// residual stream named by the cut.
    Tail,
}

/// What the linear kernel does to its input as it reads it.
#[derive(Debug, Clone, Copy)]
enum Xform {
    None,
    /// The norm before q/k/v or gate/up (saves writing the normalised rows out).
    Norm(Norm),
    /// The activation before down_proj / fc2: one of the X_* codes, and for a gated MLP the
    /// column where the `up` half starts.
    Act {
        code: u32,
        up_off: u32,
    },
}

/// One attention layer's shape and options.
#[derive(Debug, Clone, Copy)]
struct AttentionOp {
    layer: usize,
    nh: u32,
    nkv: u32,
    hd: u32,
    /// Index into the RoPE tables, or none.
    rope: Option<usize>,
    /// 0: no window.
    window: u32,
    scale: f32,
    /// Per-head norms of q and k (weights in the aux buffer).
    qk_norm: Option<(Norm, Norm)>,
    softcap: Option<f32>,
}

#[derive(Debug, Clone)]
enum Op {
    Embed {
        e: usize,
        dst: B,
        accum: bool,
        positions: bool,
        /// Multiplies the rows (Gemma).
        scale: Option<f32>,
    },
    Norm {
        norm: Norm,
        src: B,
        dst: B,
        tail: bool,
        /// Adds the result to `dst`.
        accum: bool,
    },
    Linear {
        g: usize,
        src: B,
        dst: B,
        y_off: u32,
        accum: bool,
        tail: bool,
        xform: Xform,
    },
    Attention(AttentionOp),
    LastRow {
        src: B,
    },
    /// `cap · tanh(logits / cap)` in place on the logits.
    Softcap {
        cap: f32,
    },
}

/// Modules that share an input, run as one matrix over their stacked rows.
struct Group {
    modules: Vec<usize>,
    rows: Vec<usize>,
    cols: usize,
    base: GpuWeight,
    /// The output head tied to this embedding module.
    tied_to: Option<usize>,
    /// For one module split by rows (larger than a binding): the part's first row.
    row0: usize,
}

/// An embedding table.
struct Embed {
    module: usize,
    /// Row ranges of the table, each within one binding: (first row, part).
    parts: Vec<(usize, GpuWeight)>,
    rows: usize,
    cols: usize,
    pos_offset: u32,
}

/// What the active adapters put on one group (rebuilt when the registry changes).
#[derive(Default)]
struct GroupState {
    weight: Option<GpuWeight>,
    flags: u32,
    bias_off: u32,
    scale_off: u32,
    dora_off: u32,
    post_off: u32,
    in_off: u32,
    segs: Vec<Seg>,
    r_total: usize,
    a: Option<GpuWeight>,
    b: Option<wgpu::Buffer>,
}

#[derive(Default)]
struct EmbedState {
    table: Option<Vec<(usize, GpuWeight)>>,
    r: usize,
    a: Option<wgpu::Buffer>,
    b: Option<wgpu::Buffer>,
}

/// Widths of the activation buffers (the widest any block needs).
#[derive(Debug, Clone)]
struct Dims {
    /// The residual stream and the embeddings (the wider of hidden and embed_dim).
    hidden: usize,
    /// What every norm normalises: the residual stream's width.
    norm: usize,
    /// q, k and v of one position side by side.
    qkv: usize,
    /// The attention output (heads·head_dim).
    att: usize,
    /// The MLP's hidden activations (gate and up side by side for a gated MLP).
    mlp: usize,
    vocab: usize,
}

/// A group (or embedding) and the identities of the tensors that replace its weights
/// (`modules_to_save`, overwritten base parameters): uploaded once, reused on every switch back.
type OverrideKey = (usize, Vec<Option<candle_core::TensorId>>);

/// Counters for the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuStats {
    pub submits: u64,
    pub dispatches: u64,
}

/// A model resident on the GPU.
pub struct GpuModel {
    gpu: Gpu,
    kernels: Arc<Registry>,
    dims: Dims,
    vocab: usize,
    prog: Vec<Op>,
    groups: Vec<Group>,
    embeds: Vec<Embed>,
    norms: Vec<Norm>,
    kv: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    cap: usize,
    chunk: usize,
    acts: HashMap<B, wgpu::Buffer>,
    state: wgpu::Buffer,
    ids: wgpu::Buffer,
    history: wgpu::Buffer,
    /// cos/sin per position, one table per RoPE of the network.
    ropes: Vec<wgpu::Buffer>,
    /// Per RoPE: LongRoPE's switch position (its table holds the long set at rows `cap..`).
    rope_long: Vec<Option<usize>>,
    dummy: wgpu::Buffer,
    readback: Option<(wgpu::Buffer, u64)>,
    /// Two 4-byte read-back buffers for the chosen ids of consecutive decode steps.
    id_slots: [wgpu::Buffer; 2],
    // adapter state
    synced: Option<u64>,
    aux: wgpu::Buffer,
    norm_offs: HashMap<usize, (u32, u32, bool)>,
    gstate: Vec<GroupState>,
    estate: Vec<EmbedState>,
    t_buf: wgpu::Buffer,
    overrides: HashMap<OverrideKey, GpuWeight>,
    embed_overrides: HashMap<OverrideKey, Vec<(usize, GpuWeight)>>,
    plans: HashMap<plan::PlanKey, plan::Plan>,
    /// The row table of batched passes (a stand-in until [`GpuModel::enable_batch`]).
    rowinfo: wgpu::Buffer,
    batch: Option<batch::BatchState>,
    /// Positions in the KV cache.
    pub len: usize,
    pub stats: GpuStats,
    base_bytes: u64,
}

fn pack_weight(w: &Weight, f16: bool) -> Result<Packed> {
    if f16 {
        let t = w.tensor()?;
        let (r, c) = t.dims2()?;
        return Packed::f16(r, c, &t.flatten_all()?.to_vec1::<f32>()?);
    }
    match w {
        Weight::Quant(q) => Packed::from_qmatrix(q),
        Weight::Dense(t) => {
            let (r, c) = t.dims2()?;
            Packed::f32(r, c, &t.flatten_all()?.to_vec1::<f32>()?)
        }
    }
}

fn vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// A count, width or offset handed to a kernel as a u32: checked, since a silent truncation
/// would read the wrong memory.
fn u32_of(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::LimitExceeded {
        what: "a size passed to a kernel",
        need: v as u64,
        limit: u32::MAX as u64,
    })
}

impl GpuModel {
    /// Uploads the base weights of `net` (its modules in `table`) and the adapters active in
    /// `reg`.
    pub fn new(
        gpu: &Gpu,
        net: &Network,
        table: &ModuleTable,
        reg: &AdapterRegistry,
        opts: &GpuModelOptions,
    ) -> Result<GpuModel> {
        let low = lower::lower(gpu, net, table, opts.f16_weights)?;
        let dims = low.dims.clone();
        let cap = opts
            .max_context
            .unwrap_or(4096)
            .min(net.max_positions)
            .max(1);
        let max_bind = gpu.binding_limit();
        let widest = dims.vocab.max(dims.mlp).max(dims.qkv).max(dims.hidden);
        let chunk = MAX_CHUNK
            .min(cap)
            .min((max_bind / (widest as u64 * 4)).max(1) as usize);
        let zeroed = |label: &'static str, floats: usize| -> Result<wgpu::Buffer> {
            let bytes = (floats.max(1) * 4) as u64;
            gpu.check_binding(label, bytes)?;
            Ok(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        };
        let mut kv = Vec::with_capacity(net.blocks.len());
        for b in &net.blocks {
            let floats = cap * b.attn.kv_heads * b.attn.head_dim;
            gpu.check_binding("KV cache of one layer", (floats * 4) as u64)?;
            kv.push((zeroed("k cache", floats)?, zeroed("v cache", floats)?));
        }
        let mut acts = HashMap::new();
        for (k, w) in [
            (B::X, dims.hidden),
            (B::X2, dims.hidden),
            (B::H, dims.hidden),
            (B::E, dims.hidden),
            (B::Qkv, dims.qkv),
            (B::Att, dims.att),
            (B::Mlp, dims.mlp),
            (B::Last, dims.hidden),
            (B::Logits, dims.vocab),
        ] {
            acts.insert(k, zeroed("activations", chunk * w)?);
        }
        // cos/sin per position, exactly as the CPU path computes them; LongRoPE's second
        // set follows the first (rows cap..)
        let mut ropes = Vec::with_capacity(net.ropes.len());
        for r in &net.ropes {
            let sets: Vec<&[f32]> = match &r.long {
                Some(l) => vec![&r.inv_freq, &l.inv_freq],
                None => vec![&r.inv_freq],
            };
            let mut table = Vec::with_capacity(sets.len() * cap * r.inv_freq.len() * 2);
            for set in sets {
                for p in 0..cap {
                    for f in set {
                        let (mut s, mut c) = (p as f32 * f).sin_cos();
                        if r.attention_scaling != 1.0 {
                            s *= r.attention_scaling;
                            c *= r.attention_scaling;
                        }
                        table.push(c);
                        table.push(s);
                    }
                }
            }
            ropes.push(storage_f32(gpu, "rope table", &table)?);
        }
        let state = storage(gpu, "state", &[0u32; 4])?;
        let ids = zeroed("ids", chunk)?;
        let history = zeroed("history", cap)?;
        let dummy = storage(gpu, "unused", &[0u32; 4])?;
        let aux = storage(gpu, "aux", &[0u32])?;
        let t_buf = storage(gpu, "lora t", &[0u32])?;
        gpu.take_error()?;
        let mut g = GpuModel {
            gpu: gpu.clone(),
            kernels: Arc::new(Registry::default()),
            dims,
            vocab: net.vocab_size,
            prog: low.prog,
            groups: low.groups,
            embeds: low.embeds,
            norms: low.norms,
            kv,
            cap,
            chunk,
            acts,
            state,
            ids,
            history,
            ropes,
            rope_long: net
                .ropes
                .iter()
                .map(|r| r.long.as_ref().map(|l| l.after))
                .collect(),
            dummy,
            readback: None,
            id_slots: [0, 1].map(|_| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("id read-back"),
                    size: 4,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }),
            synced: None,
            aux,
            norm_offs: HashMap::new(),
            gstate: Vec::new(),
            estate: Vec::new(),
            t_buf,
            overrides: HashMap::new(),
            embed_overrides: HashMap::new(),
            plans: HashMap::new(),
            rowinfo: storage(gpu, "row table", &[0u32; 4])?,
            batch: None,
            len: 0,
            stats: GpuStats::default(),
            base_bytes: low.base_bytes,
        };
        g.sync(table, reg)?;
        Ok(g)
    }

    /// The device this model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of base weights on the GPU.
    pub fn base_bytes(&self) -> u64 {
        self.base_bytes
    }

    /// Positions the KV cache holds.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Pipelines compiled so far (constant across adapter switches).
    pub fn pipelines_compiled(&self) -> usize {
        self.kernels.compiled()
    }

    /// Dispatches of a decode step (one token) with the adapters of `reg`.
    pub fn dispatches_per_token(
        &mut self,
        table: &ModuleTable,
        reg: &AdapterRegistry,
    ) -> Result<usize> {
        self.sync(table, reg)?;
        let key = plan::PlanKey::decode(plan::Pick::Greedy);
        self.plan(key, plan::Pick::Greedy)?;
        Ok(self.plans.get(&key).map_or(0, |p| p.dispatches))
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.len = 0;
    }
}
