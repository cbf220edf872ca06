//! A [`Model`] on the GPU: the base weights uploaded once, the active adapters folded into the
//! kernels' epilogues (refreshed when the registry changes, without touching the base or
//! recompiling a pipeline), a KV cache per layer, and forward passes recorded as one compute
//! pass and one submit.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use graft_core::adapter::ModuleAdapter;
use graft_models::base::{ModuleTable, Norm, Weight};
use graft_models::hf_config::Activation;
use graft_models::model::Arch;
use graft_models::sampling::{Sampler, Sampling};
use graft_models::Model;
use wgpu::util::DeviceExt;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::readback::map_read;
use crate::weights::{storage, storage_f32, GpuWeight, Packed};

/// Rows of a linear dispatch per workgroup and threads per workgroup.
const RPW: u32 = 8;
const LINEAR_WG: u32 = 256;
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
    /// The activation before down_proj / fc2: one of the X_* codes.
    Act(u32),
}

#[derive(Debug, Clone)]
enum Op {
    Embed {
        e: usize,
        dst: B,
        accum: bool,
        positions: bool,
    },
    Norm {
        norm: Norm,
        src: B,
        dst: B,
        tail: bool,
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
    Attention {
        layer: usize,
    },
    LastRow {
        src: B,
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

struct Step {
    pipe: wgpu::ComputePipeline,
    bg: wgpu::BindGroup,
    wg: (u32, u32, u32),
}

enum Part {
    Pass(Vec<Step>),
    Copy {
        src: wgpu::Buffer,
        src_off: u64,
        dst: wgpu::Buffer,
        size: u64,
    },
}

struct Plan {
    parts: Vec<Part>,
    dispatches: usize,
    _uniforms: wgpu::Buffer,
}

/// How the next token is chosen on the GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    None,
    Greedy,
    Gumbel { inv_temp: f32, seed: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    n: usize,
    last_only: bool,
    /// 0 none, 1 greedy, 2 Gumbel (with its temperature bits and seed)
    pick: (u8, u32, u32),
}

/// Shapes the kernels need.
#[derive(Debug, Clone)]
struct Dims {
    hidden: usize,
    emb_dim: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    layers: usize,
    mlp_width: usize,
    act_width: usize,
    vocab: usize,
    rope: bool,
    window: u32,
}

/// A group (or embedding) and the identities of the tensors that replace its weights
/// (`modules_to_save`, overwritten base parameters): uploaded once, reused on every switch back.
type OverrideKey = (usize, Vec<Option<candle_core::TensorId>>);

/// One LoRA-type term on a module: A rows (r, in), B (out, r) with the scale folded in, r, and
/// the scaled `lora_bias`.
type LoraTerm = (Vec<f32>, Vec<f32>, usize, Option<Vec<f32>>);

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
    rope: wgpu::Buffer,
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
    plans: HashMap<PlanKey, Plan>,
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

fn u(v: usize) -> u32 {
    v as u32
}

impl GpuModel {
    /// Uploads `model`'s base weights and its current adapters.
    pub fn new(gpu: &Gpu, model: &Model, opts: &GpuModelOptions) -> Result<GpuModel> {
        let table = model.table();
        let mut b = Builder {
            gpu,
            table,
            groups: Vec::new(),
            embeds: Vec::new(),
            norms: Vec::new(),
            prog: Vec::new(),
            base_bytes: 0,
            f16: opts.f16_weights,
        };
        let dims = match model.arch() {
            Arch::Llama(m) => {
                let c = &m.cfg;
                if c.head_dim > MAX_HEAD_DIM {
                    return Err(Error::Unsupported(format!(
                        "head_dim {} (the attention kernel takes up to {MAX_HEAD_DIM})",
                        c.head_dim
                    )));
                }
                let e = b.embed(m.embed, 0)?;
                b.prog.push(Op::Embed {
                    e,
                    dst: B::X,
                    accum: false,
                    positions: false,
                });
                // per layer: qkv (norm fused), attention (RoPE and KV write fused), o (+ residual),
                // gate/up (norm fused), down (SiLU·mul fused, + residual)
                for (li, l) in m.layers.iter().enumerate() {
                    let qkv = b.group(&[l.q, l.k, l.v], None)?;
                    let xf = b.fused_norm(l.input_norm);
                    b.linear(qkv, B::X, B::Qkv, false, false, xf);
                    b.prog.push(Op::Attention { layer: li });
                    let o = b.group(&[l.o], None)?;
                    b.linear(o, B::Att, B::X, true, false, Xform::None);
                    let gu = b.group(&[l.gate, l.up], None)?;
                    let xf = b.fused_norm(l.post_norm);
                    b.linear(gu, B::X, B::Mlp, false, false, xf);
                    let down = b.group(&[l.down], None)?;
                    b.linear(down, B::Mlp, B::X, true, false, Xform::Act(X_SILU_MUL));
                }
                b.prog.push(Op::LastRow { src: B::X });
                b.norm(m.norm, B::Tail, B::H, true);
                let head = b.group(&[m.head], m.tied.then_some(m.embed))?;
                b.linear(head, B::H, B::Logits, false, true, Xform::None);
                Dims {
                    hidden: c.hidden_size,
                    emb_dim: c.hidden_size,
                    nh: c.num_attention_heads,
                    nkv: c.num_key_value_heads,
                    hd: c.head_dim,
                    layers: c.num_hidden_layers,
                    mlp_width: 2 * c.intermediate_size,
                    act_width: c.intermediate_size,
                    vocab: c.vocab_size,
                    rope: true,
                    window: c.sliding_window.map_or(0, u),
                }
            }
            Arch::Opt(m) => {
                let c = &m.cfg;
                let hd = c.hidden_size / c.num_attention_heads;
                if hd > MAX_HEAD_DIM {
                    return Err(Error::Unsupported(format!("head_dim {hd}")));
                }
                let e = b.embed(m.embed, 0)?;
                if let Some(pi) = m.project_in {
                    b.prog.push(Op::Embed {
                        e,
                        dst: B::E,
                        accum: false,
                        positions: false,
                    });
                    let g = b.group(&[pi], None)?;
                    b.linear(g, B::E, B::X, false, false, Xform::None);
                } else {
                    b.prog.push(Op::Embed {
                        e,
                        dst: B::X,
                        accum: false,
                        positions: false,
                    });
                }
                let pe = b.embed(m.positions, u(graft_models::opt::POSITION_OFFSET))?;
                b.prog.push(Op::Embed {
                    e: pe,
                    dst: B::X,
                    accum: true,
                    positions: true,
                });
                let pre = c.do_layer_norm_before;
                let (mut x, mut x2) = (B::X, B::X2);
                let act = match c.activation {
                    Activation::Relu => X_RELU,
                    Activation::Gelu => X_GELU,
                };
                for (li, l) in m.layers.iter().enumerate() {
                    // pre-LN: the norm is fused into q/k/v and fc1; post-LN normalises the
                    // residual stream itself, so it stays a dispatch of its own
                    let xf = if pre {
                        b.fused_norm(l.attn_norm)
                    } else {
                        Xform::None
                    };
                    let qkv = b.group(&[l.q, l.k, l.v], None)?;
                    b.linear(qkv, x, B::Qkv, false, false, xf);
                    b.prog.push(Op::Attention { layer: li });
                    let o = b.group(&[l.out], None)?;
                    b.linear(o, B::Att, x, true, false, Xform::None);
                    if !pre {
                        b.norm(l.attn_norm, x, x2, false);
                        std::mem::swap(&mut x, &mut x2);
                    }
                    let xf = if pre {
                        b.fused_norm(l.final_norm)
                    } else {
                        Xform::None
                    };
                    let fc1 = b.group(&[l.fc1], None)?;
                    b.linear(fc1, x, B::Mlp, false, false, xf);
                    let fc2 = b.group(&[l.fc2], None)?;
                    b.linear(fc2, B::Mlp, x, true, false, Xform::Act(act));
                    if !pre {
                        b.norm(l.final_norm, x, x2, false);
                        std::mem::swap(&mut x, &mut x2);
                    }
                }
                b.prog.push(Op::LastRow { src: x });
                let mut cur = B::Tail;
                if let Some(f) = m.final_norm {
                    b.norm(f, cur, B::H, true);
                    cur = B::H;
                }
                if let Some(po) = m.project_out {
                    let g = b.group(&[po], None)?;
                    let dst = if cur == B::H { B::E } else { B::H };
                    b.linear(g, cur, dst, false, true, Xform::None);
                    cur = dst;
                }
                let head = b.group(&[m.head], m.tied.then_some(m.embed))?;
                b.linear(head, cur, B::Logits, false, true, Xform::None);
                Dims {
                    hidden: c.hidden_size,
                    emb_dim: c.word_embed_proj_dim,
                    nh: c.num_attention_heads,
                    nkv: c.num_attention_heads,
                    hd,
                    layers: c.num_hidden_layers,
                    mlp_width: c.ffn_dim,
                    act_width: c.ffn_dim,
                    vocab: c.vocab_size,
                    rope: false,
                    window: 0,
                }
            }
        };
        let Builder {
            groups,
            embeds,
            norms,
            prog,
            base_bytes,
            ..
        } = b;
        let cap = opts
            .max_context
            .unwrap_or(4096)
            .min(model.max_positions())
            .max(1);
        let kv_bytes = (cap * dims.nkv * dims.hd * 4) as u64;
        gpu.check_binding("KV cache of one layer", kv_bytes)?;
        let max_bind = gpu
            .limits
            .max_storage_buffer_binding_size
            .min(gpu.limits.max_buffer_size);
        let widest = dims
            .vocab
            .max(dims.mlp_width)
            .max((dims.nh + 2 * dims.nkv) * dims.hd)
            .max(dims.hidden)
            .max(dims.emb_dim);
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
        let kv = (0..dims.layers)
            .map(|_| {
                Ok((
                    zeroed("k cache", cap * dims.nkv * dims.hd)?,
                    zeroed("v cache", cap * dims.nkv * dims.hd)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let hmax = dims.hidden.max(dims.emb_dim);
        let mut acts = HashMap::new();
        for (k, w) in [
            (B::X, hmax),
            (B::X2, hmax),
            (B::H, hmax),
            (B::E, hmax),
            (B::Qkv, (dims.nh + 2 * dims.nkv) * dims.hd),
            (B::Att, dims.nh * dims.hd),
            (B::Mlp, dims.mlp_width),
            (B::Last, hmax),
            (B::Logits, dims.vocab),
        ] {
            acts.insert(k, zeroed("activations", chunk * w)?);
        }
        // cos/sin per position, exactly as the CPU path computes them
        let inv_freq: Vec<f32> = match model.arch() {
            Arch::Llama(m) => m.inv_freq.clone(),
            Arch::Opt(_) => Vec::new(),
        };
        let half = inv_freq.len();
        let mut table = Vec::with_capacity(cap * half * 2);
        for p in 0..cap {
            for f in &inv_freq {
                let (s, c) = (p as f32 * f).sin_cos();
                table.push(c);
                table.push(s);
            }
        }
        let rope = storage_f32(gpu, "rope table", &table)?;
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
            prog,
            groups,
            embeds,
            norms,
            kv,
            cap,
            chunk,
            acts,
            state,
            ids,
            history,
            rope,
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
            len: 0,
            stats: GpuStats::default(),
            base_bytes,
        };
        g.sync(model)?;
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

    /// Dispatches of a decode step (one token) with the current adapters.
    pub fn dispatches_per_token(&mut self, model: &Model) -> Result<usize> {
        self.sync(model)?;
        let key = PlanKey {
            n: 1,
            last_only: true,
            pick: (1, 0, 0),
        };
        self.plan(key, Pick::Greedy)?;
        Ok(self.plans.get(&key).map_or(0, |p| p.dispatches))
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Brings the adapters on the GPU up to date with `model`'s registry (a no-op when nothing
    /// changed). Base weights stay where they are and no pipeline is compiled.
    pub fn sync(&mut self, model: &Model) -> Result<()> {
        let reg = model.registry();
        if self.synced == Some(reg.version()) {
            return Ok(());
        }
        let table = model.table();
        let mut aux: Vec<f32> = Vec::new();
        let mut push = |v: &[f32]| -> u32 {
            let off = aux.len() as u32;
            aux.extend_from_slice(v);
            off
        };
        // norms
        let mut norm_offs = HashMap::new();
        for n in &self.norms {
            let p = &table.params[n.id];
            let w = match reg.param(n.id, false) {
                Some(t) => vec_f32(t)?,
                None => vec_f32(&p.weight.tensor()?)?,
            };
            let b = match reg.param(n.id, true).or(p.bias.as_ref()) {
                Some(t) => Some(vec_f32(t)?),
                None => None,
            };
            let w_off = push(&w);
            let b_off = b.as_deref().map_or(0, &mut push);
            norm_offs.insert(n.id, (w_off, b_off, b.is_some()));
        }
        // linear groups
        let mut gstate = Vec::with_capacity(self.groups.len());
        let mut r_max = 0usize;
        for gi in 0..self.groups.len() {
            let st = self.group_state(gi, model, table, &mut push)?;
            r_max = r_max.max(st.r_total);
            gstate.push(st);
        }
        // embeddings
        let mut estate = Vec::with_capacity(self.embeds.len());
        for ei in 0..self.embeds.len() {
            estate.push(self.embed_state(ei, model)?);
        }
        self.aux = storage_f32(&self.gpu, "aux", &aux)?;
        self.t_buf = storage_f32(
            &self.gpu,
            "lora t",
            &vec![0f32; (self.chunk * r_max).max(1)],
        )?;
        self.norm_offs = norm_offs;
        self.gstate = gstate;
        self.estate = estate;
        self.plans.clear();
        self.synced = Some(reg.version());
        self.gpu.take_error()
    }

    fn override_weight(
        &mut self,
        gi: usize,
        model: &Model,
        table: &ModuleTable,
    ) -> Result<Option<GpuWeight>> {
        let reg = model.registry();
        let g = &self.groups[gi];
        let pick = |id: usize| -> Option<&Tensor> {
            match g.tied_to {
                Some(e) => reg.param(id, false).or_else(|| reg.base_param(e, false)),
                None => reg.param(id, false),
            }
        };
        let ts: Vec<Option<&Tensor>> = g.modules.iter().map(|&m| pick(m)).collect();
        if ts.iter().all(|t| t.is_none()) {
            return Ok(None);
        }
        let key = (gi, ts.iter().map(|t| t.map(|t| t.id())).collect::<Vec<_>>());
        if let Some(w) = self.overrides.get(&key) {
            return Ok(Some(w.clone()));
        }
        let mut vals = Vec::new();
        for (i, &m) in g.modules.iter().enumerate() {
            let t = match ts[i] {
                Some(t) => t.clone(),
                None => {
                    let src = g.tied_to.unwrap_or(m);
                    table.params[src].weight.tensor()?
                }
            };
            vals.extend(vec_f32(&t)?);
        }
        let rows: usize = g.rows.iter().sum();
        let part = &vals[g.row0 * g.cols..(g.row0 + rows) * g.cols];
        let w = GpuWeight::upload(&self.gpu, &Packed::f32(rows, g.cols, part)?)?;
        self.overrides.insert(key, w.clone());
        Ok(Some(w))
    }

    fn group_state(
        &mut self,
        gi: usize,
        model: &Model,
        table: &ModuleTable,
        push: &mut impl FnMut(&[f32]) -> u32,
    ) -> Result<GroupState> {
        let reg = model.registry();
        let weight = self.override_weight(gi, model, table)?;
        let g = &self.groups[gi];
        let total_rows: usize = g.rows.iter().sum();
        let multi = g.modules.len() > 1;
        let (mut bias, mut scale, mut dora, mut post, mut inscale) = (
            vec![0f32; total_rows],
            vec![1f32; total_rows],
            vec![1f32; total_rows],
            vec![0f32; total_rows],
            None::<Vec<f32>>,
        );
        let mut flags = 0u32;
        let mut a_rows: Vec<f32> = Vec::new();
        let mut b_all: Vec<f32> = Vec::new();
        let mut segs = Vec::new();
        let mut row0 = 0usize;
        let mut t_off = 0usize;
        for (mi, &m) in g.modules.iter().enumerate() {
            let out = g.rows[mi];
            let path = &table.inventory.modules[m].path;
            // a part of a module split by rows covers its rows sk .. sk + out
            let sk = g.row0;
            if let Some(bt) = reg.param(m, true).or(table.params[m].bias.as_ref()) {
                bias[row0..row0 + out].copy_from_slice(&vec_f32(bt)?[sk..sk + out]);
                flags |= F_BIAS;
            }
            // (A rows (r, in), B (out, r) with the scale folded in, lora bias · scale)
            let mut loras: Vec<LoraTerm> = Vec::new();
            let mut dora_at: Option<(usize, Vec<f32>)> = None;
            let mut out_scaled = false;
            for layer in reg.active_layers(m) {
                match layer {
                    ModuleAdapter::Ia3(i) => {
                        let l = vec_f32(&i.l)?;
                        if i.feedforward {
                            if multi {
                                return Err(Error::Unsupported(format!(
                                    "IA3 scaling the input of {path}, which shares its input with other modules"
                                )));
                            }
                            let s = inscale.get_or_insert_with(|| vec![1f32; g.cols]);
                            s.iter_mut().zip(&l).for_each(|(a, b)| *a *= b);
                            flags |= F_IN_SCALE;
                        } else {
                            scale[row0..row0 + out]
                                .iter_mut()
                                .zip(&l[sk..sk + out])
                                .for_each(|(a, b)| *a *= b);
                            flags |= F_OUT_SCALE;
                            out_scaled = true;
                        }
                    }
                    ModuleAdapter::Lora(l) => {
                        let s = l.scale as f32;
                        let mut bv = vec_f32(&l.b)?;
                        bv.iter_mut().for_each(|v| *v *= s);
                        let pb = match &l.b_bias {
                            Some(bb) => Some(vec_f32(bb)?.iter().map(|v| v * s).collect()),
                            None => None,
                        };
                        if let Some(d) = &l.dora {
                            if dora_at.is_some() {
                                return Err(Error::Unsupported(format!(
                                    "two active DoRA adapters on {path}"
                                )));
                            }
                            dora_at = Some((loras.len(), vec_f32(&d.mag_norm_scale)?));
                        }
                        loras.push((vec_f32(&l.a)?, bv, l.r, pb));
                    }
                    ModuleAdapter::AdaLora(ad) => {
                        let e = vec_f32(&ad.e)?;
                        let mut av = vec_f32(&ad.a)?;
                        let cols = g.cols;
                        for (j, row) in av.chunks_mut(cols).enumerate() {
                            row.iter_mut().for_each(|v| *v *= e[j]);
                        }
                        let s = (ad.scaling / (ad.ranknum + 1e-5)) as f32;
                        let mut bv = vec_f32(&ad.b)?;
                        bv.iter_mut().for_each(|v| *v *= s);
                        loras.push((av, bv, ad.r, None));
                    }
                    ModuleAdapter::LoraEmbedding(_) => {}
                }
            }
            for l in loras.iter_mut() {
                let r = l.2;
                l.1 = l.1[sk * r..(sk + out) * r].to_vec();
                if let Some(pb) = &mut l.3 {
                    *pb = pb[sk..sk + out].to_vec();
                }
            }
            if let Some((_, gvec)) = &mut dora_at {
                *gvec = gvec[sk..sk + out].to_vec();
            }
            if let Some((k, gvec)) = &dora_at {
                if out_scaled {
                    return Err(Error::Unsupported(format!(
                        "DoRA and an IA3 output scale active together on {path}"
                    )));
                }
                // result = bias + g·(W x + Σ_{i ≤ k} terms) + Σ_{i > k} terms
                for l in loras.iter_mut().take(k + 1) {
                    let r = l.2;
                    for o in 0..out {
                        for j in 0..r {
                            l.1[o * r + j] *= gvec[o];
                        }
                        if let Some(pb) = &mut l.3 {
                            pb[o] *= gvec[o];
                        }
                    }
                }
                dora[row0..row0 + out].copy_from_slice(gvec);
                flags |= F_DORA;
            }
            let r_m: usize = loras.iter().map(|l| l.2).sum();
            for l in &loras {
                if let Some(pb) = &l.3 {
                    post[row0..row0 + out]
                        .iter_mut()
                        .zip(pb)
                        .for_each(|(a, b)| *a += b);
                    flags |= F_POST_BIAS;
                }
                a_rows.extend_from_slice(&l.0);
            }
            let b_off = b_all.len();
            for o in 0..out {
                for l in &loras {
                    b_all.extend_from_slice(&l.1[o * l.2..(o + 1) * l.2]);
                }
            }
            segs.push(Seg {
                end: u(row0 + out),
                t_off: u(t_off),
                r: u(r_m),
                b_off: u(b_off),
            });
            t_off += r_m;
            row0 += out;
        }
        let mut st = GroupState {
            weight,
            flags,
            ..Default::default()
        };
        if flags & F_BIAS != 0 {
            st.bias_off = push(&bias);
        }
        if flags & F_OUT_SCALE != 0 {
            st.scale_off = push(&scale);
        }
        if flags & F_DORA != 0 {
            st.dora_off = push(&dora);
        }
        if flags & F_POST_BIAS != 0 {
            st.post_off = push(&post);
        }
        if let Some(s) = &inscale {
            st.in_off = push(s);
        }
        if t_off > 0 {
            st.flags |= F_LORA;
            st.r_total = t_off;
            st.segs = segs;
            st.a = Some(GpuWeight::upload(
                &self.gpu,
                &Packed::f32(t_off, g.cols, &a_rows)?,
            )?);
            st.b = Some(storage_f32(&self.gpu, "lora B", &b_all)?);
        }
        Ok(st)
    }

    fn embed_state(&mut self, ei: usize, model: &Model) -> Result<EmbedState> {
        let reg = model.registry();
        let m = self.embeds[ei].module;
        let (num, dim) = (self.embeds[ei].rows, self.embeds[ei].cols);
        let mut st = EmbedState::default();
        if let Some(t) = reg.param(m, false) {
            let key = (usize::MAX - ei, vec![Some(t.id())]);
            let parts = match self.embed_overrides.get(&key) {
                Some(w) => w.clone(),
                None => {
                    let (r, c) = t.dims2()?;
                    let w = GpuWeight::upload_split(&self.gpu, &Packed::f32(r, c, &vec_f32(t)?)?)?;
                    self.embed_overrides.insert(key, w.clone());
                    w
                }
            };
            st.table = Some(parts);
        }
        let mut a_all = Vec::new();
        let mut bs: Vec<(Vec<f32>, usize)> = Vec::new();
        for layer in reg.active_layers(m) {
            if let ModuleAdapter::LoraEmbedding(le) = layer {
                a_all.extend(vec_f32(&le.a)?);
                let s = le.scale as f32;
                bs.push((vec_f32(&le.b)?.iter().map(|v| v * s).collect(), le.r));
            }
        }
        let r: usize = bs.iter().map(|b| b.1).sum();
        if r > 0 {
            let mut b_all = Vec::with_capacity(dim * r);
            for d in 0..dim {
                for (b, rr) in &bs {
                    b_all.extend_from_slice(&b[d * rr..(d + 1) * rr]);
                }
            }
            debug_assert_eq!(a_all.len(), r * num);
            st.r = r;
            st.a = Some(storage_f32(&self.gpu, "lora embedding A", &a_all)?);
            st.b = Some(storage_f32(&self.gpu, "lora embedding B", &b_all)?);
        }
        Ok(st)
    }

    fn act(&self, b: B) -> &wgpu::Buffer {
        // every activation buffer is created in `new`
        match self.acts.get(&b) {
            Some(x) => x,
            None => &self.dummy,
        }
    }

    fn width(&self, b: B) -> usize {
        let d = &self.dims;
        match b {
            B::X | B::X2 | B::H | B::E | B::Last | B::Tail => d.hidden.max(d.emb_dim),
            B::Qkv => (d.nh + 2 * d.nkv) * d.hd,
            B::Att => d.nh * d.hd,
            B::Mlp => d.mlp_width,
            B::Logits => d.vocab,
        }
    }

    fn plan(&mut self, key: PlanKey, pick: Pick) -> Result<()> {
        if self.plans.contains_key(&key) {
            return Ok(());
        }
        let plan = self.build_plan(key.n, key.last_only, pick)?;
        self.plans.insert(key, plan);
        Ok(())
    }

    fn build_plan(&self, n: usize, last_only: bool, pick: Pick) -> Result<Plan> {
        let gpu = &self.gpu;
        let d = &self.dims;
        let mut params: Vec<u8> = Vec::new();
        let mut put = |bytes: &[u8]| -> u64 {
            let off = params.len() as u64;
            params.extend_from_slice(bytes);
            params.resize(params.len().next_multiple_of(UNIFORM_STRIDE as usize), 0);
            off
        };
        // Record each step's kernel, uniform offset and buffers; bind groups are made once the
        // uniform buffer exists.
        struct Pending {
            kernel: Kernel,
            consts: Vec<(&'static str, u32)>,
            uoff: u64,
            usize_: u64,
            bufs: Vec<wgpu::Buffer>,
            wg: (u32, u32, u32),
        }
        enum PPart {
            Pass(Vec<Pending>),
            Copy {
                src: wgpu::Buffer,
                src_off: u64,
                dst: wgpu::Buffer,
                size: u64,
            },
        }
        let mut parts: Vec<PPart> = vec![PPart::Pass(Vec::new())];
        let cut = last_only && n > 1;
        let mut tail_src = B::X;
        let tn_of = |n: usize| if n == 1 { TN_DECODE } else { TN_PREFILL };
        let resolve = |b: B, tail_src: B| {
            if b == B::Tail {
                if cut {
                    B::Last
                } else {
                    tail_src
                }
            } else {
                b
            }
        };
        macro_rules! step {
            ($p:expr) => {
                match parts.last_mut() {
                    Some(PPart::Pass(v)) => v.push($p),
                    _ => parts.push(PPart::Pass(vec![$p])),
                }
            };
        }
        for op in &self.prog {
            match op {
                Op::Embed {
                    e,
                    dst,
                    accum,
                    positions,
                } => {
                    let em = &self.embeds[*e];
                    let es = &self.estate[*e];
                    let table = es.table.as_ref().unwrap_or(&em.parts);
                    let mut flags = 0;
                    if *accum {
                        flags |= E_ACCUM;
                    }
                    if *positions {
                        flags |= E_POSITIONS;
                    }
                    if es.r > 0 {
                        flags |= E_LORA;
                    }
                    // a table split by rows: each part writes the tokens whose ids it holds
                    for (row0, part) in table {
                        let p = EmbedParams {
                            wd: part.desc,
                            n: u(n),
                            y_stride: u(self.width(*dst)),
                            flags,
                            lora_r: u(es.r),
                            pos_offset: em.pos_offset,
                            row0: u(*row0),
                            total_rows: u(em.rows),
                            ..Default::default()
                        };
                        let uoff = put(bytemuck::bytes_of(&p));
                        step!(Pending {
                            kernel: Kernel::Embed(part.fmt),
                            consts: vec![("WG", 64)],
                            uoff,
                            usize_: std::mem::size_of::<EmbedParams>() as u64,
                            bufs: vec![
                                self.ids.clone(),
                                part.wq.clone(),
                                part.ws.clone(),
                                es.a.clone().unwrap_or(self.dummy.clone()),
                                es.b.clone().unwrap_or(self.dummy.clone()),
                                self.state.clone(),
                                self.act(*dst).clone(),
                            ],
                            wg: (part.desc.cols.div_ceil(64), u(n), 1),
                        });
                    }
                }
                Op::Norm {
                    norm,
                    src,
                    dst,
                    tail,
                } => {
                    let (w_off, b_off, has_b) =
                        self.norm_offs.get(&norm.id).copied().unwrap_or_default();
                    let ne = if *tail && last_only { 1 } else { n };
                    let src = resolve(*src, tail_src);
                    let mut flags = if norm.rms { N_RMS } else { 0 };
                    if has_b {
                        flags |= N_BIAS;
                    }
                    let p = NormParams {
                        n: u(ne),
                        // every norm of both architectures runs over the hidden size
                        dim: u(d.hidden),
                        x_stride: u(self.width(src)),
                        y_stride: u(self.width(*dst)),
                        flags,
                        w_off,
                        b_off,
                        eps: norm.eps as f32,
                        x_row0: 0,
                        ..Default::default()
                    };
                    let uoff = put(bytemuck::bytes_of(&p));
                    step!(Pending {
                        kernel: Kernel::Norm,
                        consts: vec![],
                        uoff,
                        usize_: std::mem::size_of::<NormParams>() as u64,
                        bufs: vec![
                            self.act(src).clone(),
                            self.aux.clone(),
                            self.act(*dst).clone()
                        ],
                        wg: (u(ne), 1, 1),
                    });
                }
                Op::Linear {
                    g,
                    src,
                    dst,
                    y_off,
                    accum,
                    tail,
                    xform,
                } => {
                    let grp = &self.groups[*g];
                    let gs = &self.gstate[*g];
                    let ne = if *tail && last_only { 1 } else { n };
                    let src = resolve(*src, tail_src);
                    let tn = tn_of(ne);
                    // what the shrink and the main matmul share: the input and its transform
                    let mut input = LinearParams {
                        n: u(ne),
                        x_stride: u(self.width(src)),
                        ..Default::default()
                    };
                    match xform {
                        Xform::None => {}
                        Xform::Norm(nm) => {
                            let (w, b, hb) =
                                self.norm_offs.get(&nm.id).copied().unwrap_or_default();
                            input.xform = if nm.rms { X_RMS } else { X_LAYER_NORM };
                            (input.nw_off, input.nb_off) = (w, b);
                            input.eps = nm.eps as f32;
                            input.has_nb = u32::from(hb);
                        }
                        Xform::Act(k) => {
                            input.xform = *k;
                            if *k == X_SILU_MUL {
                                input.act_off = u(d.act_width);
                            }
                        }
                    }
                    // one linear dispatch: weight `w`, LoRA t and B buffers, output `y`
                    let mut linear_step =
                        |w: &GpuWeight,
                         p: LinearParams,
                         lt: &wgpu::Buffer,
                         lb: &wgpu::Buffer,
                         y: &wgpu::Buffer| {
                            Pending {
                                kernel: Kernel::Linear { fmt: w.fmt, tn },
                                consts: vec![("WG", LINEAR_WG), ("RPW", RPW)],
                                uoff: put(bytemuck::bytes_of(&p)),
                                usize_: std::mem::size_of::<LinearParams>() as u64,
                                bufs: vec![
                                    self.act(src).clone(),
                                    w.wq.clone(),
                                    w.ws.clone(),
                                    self.aux.clone(),
                                    lt.clone(),
                                    lb.clone(),
                                    y.clone(),
                                ],
                                wg: (w.desc.rows.div_ceil(RPW), u(ne).div_ceil(tn), 1),
                            }
                        };
                    if let Some(a) = &gs.a {
                        // LoRA's shrink: t = x·Aᵀ over every active adapter of the group
                        let p = LinearParams {
                            wd: a.desc,
                            y_stride: u(gs.r_total),
                            c8n: a.c8n,
                            ..input
                        };
                        step!(linear_step(a, p, &self.dummy, &self.dummy, &self.t_buf));
                    }
                    let w = gs.weight.as_ref().unwrap_or(&grp.base);
                    let mut seg = [Seg::default(); MAX_SEGS];
                    for (i, s) in gs.segs.iter().enumerate().take(MAX_SEGS) {
                        seg[i] = *s;
                    }
                    let p = LinearParams {
                        wd: w.desc,
                        y_stride: u(self.width(*dst)),
                        y_off: *y_off,
                        flags: gs.flags | if *accum { F_ACCUM } else { 0 },
                        bias_off: gs.bias_off,
                        scale_off: gs.scale_off,
                        dora_off: gs.dora_off,
                        post_off: gs.post_off,
                        in_off: gs.in_off,
                        t_stride: u(gs.r_total),
                        nseg: u(gs.segs.len()),
                        c8n: w.c8n,
                        seg,
                        ..input
                    };
                    let (lt, lb) = match &gs.b {
                        Some(b) => (&self.t_buf, b),
                        None => (&self.dummy, &self.dummy),
                    };
                    let y = self.act(*dst).clone();
                    step!(linear_step(w, p, lt, lb, &y));
                }
                Op::Attention { layer } => {
                    // RoPE and the KV-cache write happen inside (shaders/attention.wgsl)
                    let p = AttentionParams {
                        n: u(n),
                        nh: u(d.nh),
                        nkv: u(d.nkv),
                        hd: u(d.hd),
                        qkv_stride: u((d.nh + 2 * d.nkv) * d.hd),
                        q_off: 0,
                        k_off: u(d.nh * d.hd),
                        v_off: u((d.nh + d.nkv) * d.hd),
                        out_stride: u(d.nh * d.hd),
                        window: d.window,
                        flags: if d.rope { R_ROPE } else { 0 },
                        cap: u(self.cap),
                        scale: 1.0 / (d.hd as f32).sqrt(),
                        ..Default::default()
                    };
                    let uoff = put(bytemuck::bytes_of(&p));
                    let (kc, vc) = &self.kv[*layer];
                    step!(Pending {
                        kernel: Kernel::Attention,
                        consts: vec![],
                        uoff,
                        usize_: std::mem::size_of::<AttentionParams>() as u64,
                        bufs: vec![
                            self.state.clone(),
                            self.rope.clone(),
                            self.act(B::Qkv).clone(),
                            kc.clone(),
                            vc.clone(),
                            self.act(B::Att).clone(),
                        ],
                        wg: (u(d.nh), u(n), 1),
                    });
                }
                Op::LastRow { src } => {
                    tail_src = *src;
                    if cut {
                        let w = (self.width(*src) * 4) as u64;
                        parts.push(PPart::Copy {
                            src: self.act(*src).clone(),
                            src_off: (n as u64 - 1) * w,
                            dst: self.act(B::Last).clone(),
                            size: w,
                        });
                    }
                }
            }
        }
        if pick != Pick::None {
            let (flags, inv_temp, seed) = match pick {
                Pick::Gumbel { inv_temp, seed } => (S_GUMBEL, inv_temp, seed),
                _ => (0, 1.0, 0),
            };
            let rows = if last_only { 1 } else { n };
            let p = ArgmaxParams {
                len: u(d.vocab),
                row_off: u((rows - 1) * d.vocab),
                flags,
                seed,
                inv_temp,
                advance: u(n),
                history_len: u(self.cap),
                ..Default::default()
            };
            let uoff = put(bytemuck::bytes_of(&p));
            step!(Pending {
                kernel: Kernel::Argmax,
                consts: vec![],
                uoff,
                usize_: std::mem::size_of::<ArgmaxParams>() as u64,
                bufs: vec![
                    self.act(B::Logits).clone(),
                    self.ids.clone(),
                    self.history.clone(),
                    self.state.clone(),
                ],
                wg: (1, 1, 1),
            });
        }
        let uniforms = gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("step uniforms"),
                contents: &params,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut out = Vec::new();
        let mut dispatches = 0;
        for part in parts {
            match part {
                PPart::Copy {
                    src,
                    src_off,
                    dst,
                    size,
                } => out.push(Part::Copy {
                    src,
                    src_off,
                    dst,
                    size,
                }),
                PPart::Pass(steps) => {
                    let mut v = Vec::with_capacity(steps.len());
                    for s in steps {
                        let pipe = self.kernels.pipeline(gpu, s.kernel, &s.consts);
                        let (bgl, _) = self.kernels.layout(gpu, s.kernel);
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &uniforms,
                                offset: s.uoff,
                                size: std::num::NonZeroU64::new(s.usize_),
                            }),
                        }];
                        for (i, b) in s.bufs.iter().enumerate() {
                            entries.push(wgpu::BindGroupEntry {
                                binding: i as u32 + 1,
                                resource: b.as_entire_binding(),
                            });
                        }
                        let bg = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: None,
                            layout: &bgl,
                            entries: &entries,
                        });
                        dispatches += 1;
                        v.push(Step { pipe, bg, wg: s.wg });
                    }
                    out.push(Part::Pass(v));
                }
            }
        }
        gpu.take_error()?;
        Ok(Plan {
            parts: out,
            dispatches,
            _uniforms: uniforms,
        })
    }

    fn encode(&self, key: &PlanKey, enc: &mut wgpu::CommandEncoder) -> usize {
        let Some(plan) = self.plans.get(key) else {
            return 0;
        };
        for part in &plan.parts {
            match part {
                Part::Pass(steps) => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: None,
                    });
                    for s in steps {
                        pass.set_pipeline(&s.pipe);
                        pass.set_bind_group(0, &s.bg, &[]);
                        pass.dispatch_workgroups(s.wg.0, s.wg.1, s.wg.2);
                    }
                }
                Part::Copy {
                    src,
                    src_off,
                    dst,
                    size,
                } => enc.copy_buffer_to_buffer(src, *src_off, dst, 0, *size),
            }
        }
        plan.dispatches
    }

    fn check_tokens(&self, model: &Model, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Model(graft_models::Error::BaseModel(
                "no tokens to run".into(),
            )));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= model.vocab_size) {
            return Err(Error::Model(graft_models::Error::BaseModel(format!(
                "token id {t} is outside the vocabulary ({})",
                model.vocab_size
            ))));
        }
        if self.len + tokens.len() > self.cap {
            return Err(Error::LimitExceeded {
                what: "positions in the GPU KV cache (--max-context)",
                need: (self.len + tokens.len()) as u64,
                limit: self.cap as u64,
            });
        }
        Ok(())
    }

    /// Runs one chunk (≤ `chunk` tokens) and optionally picks the next token on the GPU.
    fn run_chunk(&mut self, tokens: &[u32], last_only: bool, pick: Pick) -> Result<PlanKey> {
        let n = tokens.len();
        let key = PlanKey {
            n,
            last_only,
            pick: match pick {
                Pick::None => (0, 0, 0),
                Pick::Greedy => (1, 0, 0),
                Pick::Gumbel { inv_temp, seed } => (2, inv_temp.to_bits(), seed),
            },
        };
        self.plan(key, pick)?;
        self.gpu
            .queue
            .write_buffer(&self.state, 0, bytemuck::cast_slice(&[u(self.len)]));
        self.gpu
            .queue
            .write_buffer(&self.ids, 0, bytemuck::cast_slice(tokens));
        Ok(key)
    }

    async fn submit(
        &mut self,
        key: &PlanKey,
        read: Option<(&wgpu::Buffer, u64)>,
    ) -> Result<Vec<u8>> {
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let d = self.encode(key, &mut enc);
        let bytes = read.map_or(0, |r| r.1);
        if let Some((src, size)) = read {
            let need = size.next_multiple_of(4).max(4);
            let rb = match &self.readback {
                Some((b, cap)) if *cap >= need => b.clone(),
                _ => {
                    let b = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("readback"),
                        size: need,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    self.readback = Some((b.clone(), need));
                    b
                }
            };
            enc.copy_buffer_to_buffer(src, 0, &rb, 0, need);
        }
        let idx = self.gpu.queue.submit([enc.finish()]);
        self.stats.submits += 1;
        self.stats.dispatches += d as u64;
        if bytes == 0 {
            self.gpu.take_error()?;
            return Ok(Vec::new());
        }
        let Some((rb, _)) = &self.readback else {
            return Err(Error::Readback("no readback buffer".into()));
        };
        map_read(&self.gpu, rb, bytes, Some(idx)).await
    }

    /// Logits (n, vocab) of `tokens` after what the cache holds (the last position's only
    /// with `last_only`), appending them to the cache. Blocks on the device (native only; see
    /// [`GpuModel::forward_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(&mut self, model: &Model, tokens: &[u32], last_only: bool) -> Result<Tensor> {
        pollster::block_on(self.forward_async(model, tokens, last_only))
    }

    /// [`GpuModel::forward`] as a future: awaits each read-back instead of blocking, so it runs
    /// in the browser (WebGPU) as well as under any executor natively.
    pub async fn forward_async(
        &mut self,
        model: &Model,
        tokens: &[u32],
        last_only: bool,
    ) -> Result<Tensor> {
        self.sync(model)?;
        self.check_tokens(model, tokens)?;
        let v = self.dims.vocab;
        let mut out: Vec<f32> = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.chunk).collect();
        let nchunks = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let last = last_only;
            let key = self.run_chunk(c, last, Pick::None)?;
            let rows = if last { 1 } else { c.len() };
            let logits = self.act(B::Logits).clone();
            let need_read = !last_only || i + 1 == nchunks;
            let bytes = self
                .submit(&key, need_read.then_some((&logits, (rows * v * 4) as u64)))
                .await?;
            self.len += c.len();
            if need_read {
                out.extend_from_slice(bytemuck::cast_slice(&bytes[..rows * v * 4]));
            }
        }
        let rows = out.len() / v.max(1);
        Ok(Tensor::from_vec(out, (rows, v), &candle_core::Device::Cpu)?)
    }

    /// Generation on the GPU: the prompt in chunks, then one submit per token that reads back
    /// only the chosen id. Greedy and plain temperature sampling run on the GPU; top-k/top-p
    /// read the last logits back and sample on the CPU. Blocks on the device (native only; see
    /// [`GpuModel::generate_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(
        &mut self,
        model: &Model,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        sampling: &Sampling,
        on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        pollster::block_on(self.generate_async(
            model,
            prompt,
            max_new_tokens,
            eos,
            sampling,
            on_token,
        ))
    }

    /// [`GpuModel::generate`] as a future: awaits each read-back instead of blocking (in the
    /// browser, `on_token` is called between returns to the event loop).
    pub async fn generate_async(
        &mut self,
        model: &Model,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        sampling: &Sampling,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        self.sync(model)?;
        self.reset();
        let mut out = Vec::new();
        if max_new_tokens == 0 {
            return Ok(out);
        }
        self.check_tokens(model, prompt)?;
        let on_gpu = sampling.temperature <= 0.0 || (sampling.top_k == 0 && sampling.top_p >= 1.0);
        let pick = if sampling.temperature <= 0.0 {
            Pick::Greedy
        } else {
            Pick::Gumbel {
                inv_temp: 1.0 / sampling.temperature,
                seed: sampling.seed as u32,
            }
        };
        let mut sampler = Sampler::new(sampling.clone());
        // prompt: all chunks but the last without logits
        let chunks: Vec<&[u32]> = prompt.chunks(self.chunk).collect();
        let (last_chunk, head) = match chunks.split_last() {
            Some(x) => x,
            None => return Ok(out),
        };
        for c in head {
            let key = self.run_chunk(c, true, Pick::None)?;
            self.submit(&key, None).await?;
            self.len += c.len();
        }
        let mut input: Vec<u32> = last_chunk.to_vec();
        if on_gpu {
            self.decode_pipelined(&input, pick, max_new_tokens, eos, &mut out, &mut on_token)
                .await?;
            return Ok(out);
        }
        // top-k / top-p: the last logits come back and the CPU's sampler picks
        loop {
            let next = {
                let key = self.run_chunk(&input, true, Pick::None)?;
                let logits = self.act(B::Logits).clone();
                let v = self.dims.vocab;
                let b = self.submit(&key, Some((&logits, (v * 4) as u64))).await?;
                sampler.pick(bytemuck::cast_slice(&b[..v * 4]))
            };
            self.len += input.len();
            out.push(next);
            on_token(next);
            if eos.contains(&next) || out.len() == max_new_tokens || self.len + 1 > self.cap {
                break;
            }
            input = vec![next];
        }
        Ok(out)
    }
}

impl GpuModel {
    /// Decode with the sampled id never leaving the GPU between steps: step k+1 (whose input
    /// is the id step k's argmax wrote into `ids`) is submitted before step k's id is read
    /// back, so the read-back round trip overlaps the next token's work. A step enqueued past
    /// EOS is discarded (the cache length is the host's, rewritten before every step).
    async fn decode_pipelined(
        &mut self,
        prompt_tail: &[u32],
        pick: Pick,
        max_new_tokens: usize,
        eos: &[u32],
        out: &mut Vec<u32>,
        on_token: &mut impl FnMut(u32),
    ) -> Result<()> {
        let key = self.run_chunk(prompt_tail, true, pick)?;
        let mut pending = self.submit_id(&key, 0)?;
        self.len += prompt_tail.len();
        let mut slot = 0;
        let decode_key = PlanKey {
            n: 1,
            last_only: true,
            pick: key.pick,
        };
        loop {
            let more = out.len() + 1 < max_new_tokens && self.len < self.cap;
            let next = if more {
                self.plan(decode_key, pick)?;
                self.gpu
                    .queue
                    .write_buffer(&self.state, 0, bytemuck::cast_slice(&[u(self.len)]));
                Some(self.submit_id(&decode_key, 1 - slot)?)
            } else {
                None
            };
            let id = self.read_id(slot, pending).await?;
            out.push(id);
            on_token(id);
            match next {
                Some(n) if !eos.contains(&id) => {
                    self.len += 1;
                    pending = n;
                    slot = 1 - slot;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Submits a planned step and copies the chosen id into read-back slot `slot`.
    fn submit_id(&mut self, key: &PlanKey, slot: usize) -> Result<wgpu::SubmissionIndex> {
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let d = self.encode(key, &mut enc);
        enc.copy_buffer_to_buffer(&self.ids, 0, &self.id_slots[slot], 0, 4);
        let idx = self.gpu.queue.submit([enc.finish()]);
        self.stats.submits += 1;
        self.stats.dispatches += d as u64;
        Ok(idx)
    }

    async fn read_id(&self, slot: usize, idx: wgpu::SubmissionIndex) -> Result<u32> {
        let b = map_read(&self.gpu, &self.id_slots[slot], 4, Some(idx)).await?;
        match b[..] {
            [a, b, c, d] => Ok(u32::from_le_bytes([a, b, c, d])),
            _ => Err(Error::Readback(format!("{} bytes for an id", b.len()))),
        }
    }
}

struct Builder<'a> {
    gpu: &'a Gpu,
    table: &'a ModuleTable,
    groups: Vec<Group>,
    embeds: Vec<Embed>,
    norms: Vec<Norm>,
    prog: Vec<Op>,
    base_bytes: u64,
    f16: bool,
}

impl Builder<'_> {
    fn embed(&mut self, module: usize, pos_offset: u32) -> Result<usize> {
        let p = pack_weight(&self.table.params[module].weight, false)?;
        self.base_bytes += p.nbytes();
        let parts = GpuWeight::upload_split(self.gpu, &p)?;
        self.embeds.push(Embed {
            module,
            parts,
            rows: p.desc.rows as usize,
            cols: p.desc.cols as usize,
            pos_offset,
        });
        Ok(self.embeds.len() - 1)
    }

    fn norm(&mut self, n: Norm, src: B, dst: B, tail: bool) {
        if !self.norms.iter().any(|m| m.id == n.id) {
            self.norms.push(n);
        }
        self.prog.push(Op::Norm {
            norm: n,
            src,
            dst,
            tail,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        gs: Vec<(usize, u32)>,
        src: B,
        dst: B,
        accum: bool,
        tail: bool,
        xform: Xform,
    ) {
        for (g, y_off) in gs {
            self.prog.push(Op::Linear {
                g,
                src,
                dst,
                y_off,
                accum,
                tail,
                xform,
            });
        }
    }

    /// A norm folded into the linear dispatch that reads its output.
    fn fused_norm(&mut self, n: Norm) -> Xform {
        if !self.norms.iter().any(|m| m.id == n.id) {
            self.norms.push(n);
        }
        Xform::Norm(n)
    }

    /// Modules sharing an input: stacked into one matrix (one dispatch) when their layouts
    /// allow, else one group per module writing its own columns of the output.
    fn group(&mut self, modules: &[usize], tied_to: Option<usize>) -> Result<Vec<(usize, u32)>> {
        let t = self.table;
        let cols = t.params[modules[0]]
            .weight
            .dims()
            .get(1)
            .copied()
            .unwrap_or(0);
        let rows: Vec<usize> = modules
            .iter()
            .map(|&m| t.params[m].weight.dims().first().copied().unwrap_or(0))
            .collect();
        let mut out = Vec::new();
        if let Some(e) = tied_to {
            // the head reads the embedding's buffers (each of its parts): no second copy
            if let Some(em) = self.embeds.iter().find(|x| x.module == e) {
                for (row0, part) in &em.parts {
                    self.groups.push(Group {
                        modules: modules.to_vec(),
                        rows: vec![part.desc.rows as usize],
                        cols,
                        base: part.clone(),
                        tied_to,
                        row0: *row0,
                    });
                    out.push((self.groups.len() - 1, u(*row0)));
                }
                return Ok(out);
            }
        }
        let packed = modules
            .iter()
            .map(|&m| pack_weight(&t.params[m].weight, self.f16))
            .collect::<Result<Vec<_>>>()?;
        let limit = self.gpu.binding_limit();
        let joined = match Packed::concat(&packed) {
            Some(p)
                if modules.len() <= MAX_SEGS && p.row_parts(limit).is_ok_and(|r| r.len() == 1) =>
            {
                Some(p)
            }
            _ => None,
        };
        if let Some(p) = joined {
            self.base_bytes += p.nbytes();
            let base = GpuWeight::upload(self.gpu, &p)?;
            self.groups.push(Group {
                modules: modules.to_vec(),
                rows,
                cols,
                base,
                tied_to,
                row0: 0,
            });
            return Ok(vec![(self.groups.len() - 1, 0)]);
        }
        // one module at a time, each split by rows where it exceeds a binding
        let mut y_off = 0usize;
        for ((&m, n), p) in modules.iter().zip(rows).zip(packed) {
            self.base_bytes += p.nbytes();
            for (row0, part) in GpuWeight::upload_split(self.gpu, &p)? {
                self.groups.push(Group {
                    modules: vec![m],
                    rows: vec![part.desc.rows as usize],
                    cols,
                    base: part,
                    tied_to,
                    row0,
                });
                out.push((self.groups.len() - 1, u(y_off + row0)));
            }
            y_off += n;
        }
        Ok(out)
    }
}
