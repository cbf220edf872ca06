//! The kernel registry: every shader in `shaders/` embedded at build time, composed with the
//! weight-format decoder it needs, specialised with WGSL `override` constants, and compiled
//! once per (kernel, constants) into a cached pipeline. Also the Rust twins of the shaders'
//! uniform structs (their layouts are checked against naga's in the tests).

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;

const COMMON: &str = include_str!("../shaders/common.wgsl");
const LINEAR: &str = include_str!("../shaders/linear.wgsl");
const EMBED: &str = include_str!("../shaders/embed.wgsl");
const NORM: &str = include_str!("../shaders/norm.wgsl");
const ATTENTION: &str = include_str!("../shaders/attention.wgsl");
const ARGMAX: &str = include_str!("../shaders/argmax.wgsl");
const COPY: &str = include_str!("../shaders/copy.wgsl");
const MATH: &str = include_str!("../shaders/math.wgsl");
const SOFTCAP: &str = include_str!("../shaders/softcap.wgsl");
const GATHER: &str = include_str!("../shaders/gather.wgsl");

/// A weight layout on the GPU (see `shaders/formats/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fmt {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Int8,
    Nf4,
}

impl Fmt {
    pub const ALL: [Fmt; 15] = [
        Fmt::F32,
        Fmt::F16,
        Fmt::Bf16,
        Fmt::Q8_0,
        Fmt::Q4_0,
        Fmt::Q4_1,
        Fmt::Q5_0,
        Fmt::Q5_1,
        Fmt::Q2K,
        Fmt::Q3K,
        Fmt::Q4K,
        Fmt::Q5K,
        Fmt::Q6K,
        Fmt::Int8,
        Fmt::Nf4,
    ];

    fn decoder(self) -> &'static str {
        match self {
            Fmt::F32 => include_str!("../shaders/formats/f32.wgsl"),
            Fmt::F16 => include_str!("../shaders/formats/f16.wgsl"),
            Fmt::Bf16 => include_str!("../shaders/formats/bf16.wgsl"),
            Fmt::Q8_0 => include_str!("../shaders/formats/q8_0.wgsl"),
            Fmt::Q4_0 => include_str!("../shaders/formats/q4_0.wgsl"),
            Fmt::Q4_1 => include_str!("../shaders/formats/q4_1.wgsl"),
            Fmt::Q5_0 => include_str!("../shaders/formats/q5_0.wgsl"),
            Fmt::Q5_1 => include_str!("../shaders/formats/q5_1.wgsl"),
            Fmt::Q2K => include_str!("../shaders/formats/q2_k.wgsl"),
            Fmt::Q3K => include_str!("../shaders/formats/q3_k.wgsl"),
            Fmt::Q4K => include_str!("../shaders/formats/q4_k.wgsl"),
            Fmt::Q5K => include_str!("../shaders/formats/q5_k.wgsl"),
            Fmt::Q6K => include_str!("../shaders/formats/q6_k.wgsl"),
            Fmt::Int8 => include_str!("../shaders/formats/int8.wgsl"),
            Fmt::Nf4 => include_str!("../shaders/formats/nf4.wgsl"),
        }
    }
}

/// Threads of the linear kernel's workgroup, and output rows each workgroup computes.
pub const LINEAR_WG: u32 = 256;
pub const RPW: u32 = 8;
/// Threads of the embedding and copy kernels' workgroups.
const EMBED_WG: u32 = 64;
const COPY_WG: u32 = 256;

/// Tokens per workgroup of the linear kernel's variants: decode (mat-vec) and prefill.
pub const TN_DECODE: u32 = 1;
pub const TN_PREFILL: u32 = 8;

/// A kernel, with what selects its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Linear { fmt: Fmt, tn: u32 },
    Embed(Fmt),
    Norm,
    Attention,
    Argmax,
    Copy,
    Softcap,
    Gather,
}

impl Kernel {
    /// Every kernel variant graft compiles (for validation in tests).
    pub fn all() -> Vec<Kernel> {
        let mut v = Vec::new();
        for f in Fmt::ALL {
            v.push(Kernel::Linear {
                fmt: f,
                tn: TN_DECODE,
            });
            v.push(Kernel::Linear {
                fmt: f,
                tn: TN_PREFILL,
            });
            v.push(Kernel::Embed(f));
        }
        v.extend([
            Kernel::Norm,
            Kernel::Attention,
            Kernel::Argmax,
            Kernel::Copy,
            Kernel::Softcap,
            Kernel::Gather,
        ]);
        v
    }

    /// The WGSL source: the kernel's file, with the shared declarations and its weight decoder.
    pub fn source(self) -> String {
        match self {
            Kernel::Linear { fmt, tn } => format!(
                "const TN: u32 = {tn}u;\n{COMMON}\n{MATH}\n{LINEAR}\n{}",
                fmt.decoder()
            ),
            Kernel::Embed(fmt) => format!("{COMMON}\n{EMBED}\n{}", fmt.decoder()),
            Kernel::Norm => NORM.to_string(),
            Kernel::Attention => format!("{MATH}\n{ATTENTION}"),
            Kernel::Argmax => ARGMAX.to_string(),
            Kernel::Copy => COPY.to_string(),
            Kernel::Softcap => format!("{MATH}\n{SOFTCAP}"),
            Kernel::Gather => GATHER.to_string(),
        }
    }

    /// The kernel's bindings in group 0, in order (binding i is entry i).
    pub fn bindings(self) -> &'static [Bind] {
        use Bind::{Read as R, ReadWrite as W, Uniform as U};
        match self {
            Kernel::Linear { .. } => &[U, R, R, R, R, R, R, W, R],
            Kernel::Embed(_) => &[U, R, R, R, R, R, R, W],
            Kernel::Norm => &[U, R, R, W],
            Kernel::Attention => &[U, R, R, R, W, W, W, R],
            Kernel::Argmax => &[U, R, W, W, W],
            Kernel::Copy => &[U, R, W],
            Kernel::Softcap => &[U, W],
            Kernel::Gather => &[U, R, R, W],
        }
    }

    /// The WGSL `override` constants this kernel is compiled with (workgroup size, rows per
    /// workgroup): the one place they are chosen, for the model, the tests and the benchmark.
    pub fn constants(self) -> &'static [(&'static str, u32)] {
        match self {
            Kernel::Linear { .. } => &[("WG", LINEAR_WG), ("RPW", RPW)],
            Kernel::Embed(_) => &[("WG", EMBED_WG)],
            Kernel::Copy | Kernel::Softcap | Kernel::Gather => &[("WG", COPY_WG)],
            Kernel::Norm | Kernel::Attention | Kernel::Argmax => &[],
        }
    }

    /// Threads per workgroup along x, for dispatch sizes (the `WG` constant, or the kernel's
    /// fixed size).
    pub fn workgroup_x(self) -> u32 {
        self.constants()
            .iter()
            .find(|(k, _)| *k == "WG")
            .map_or(1, |(_, v)| *v)
    }

    /// Name of the uniform struct's Rust twin (for the layout tests).
    pub fn params_name(self) -> &'static str {
        match self {
            Kernel::Linear { .. } => "LinearParams",
            Kernel::Embed(_) => "EmbedParams",
            Kernel::Norm => "NormParams",
            Kernel::Attention => "AttentionParams",
            Kernel::Argmax => "ArgmaxParams",
            Kernel::Copy => "CopyParams",
            Kernel::Softcap => "SoftcapParams",
            Kernel::Gather => "GatherParams",
        }
    }
}

/// How a binding is used: explicit layouts, so that a binding a variant leaves unused (the f32
/// decoder reads no scales) is still part of one layout per kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// Compiled pipelines, keyed by kernel (each kernel has its own override constants).
#[derive(Default)]
pub struct Registry {
    modules: Mutex<HashMap<Kernel, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    layouts: Mutex<HashMap<Kernel, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>>,
    compiled: std::sync::atomic::AtomicUsize,
}

impl Registry {
    /// The pipeline for `kernel` with its [`Kernel::constants`], compiled on first use.
    pub fn pipeline(&self, gpu: &Gpu, kernel: Kernel) -> wgpu::ComputePipeline {
        let key = kernel;
        let mut pipes = match self.pipelines.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        if let Some(p) = pipes.get(&key) {
            return p.clone();
        }
        let module = {
            let mut mods = match self.modules.lock() {
                Ok(m) => m,
                Err(m) => m.into_inner(),
            };
            mods.entry(kernel)
                .or_insert_with(|| {
                    gpu.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(kernel.params_name()),
                            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
                        })
                })
                .clone()
        };
        let (_, layout) = self.layout(gpu, kernel);
        let consts: Vec<(&str, f64)> = kernel
            .constants()
            .iter()
            .map(|(k, v)| (*k, f64::from(*v)))
            .collect();
        let p = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.params_name()),
                layout: Some(&layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &consts,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        self.compiled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pipes.insert(key, p.clone());
        p
    }

    /// The bind group layout (and pipeline layout) of `kernel`.
    pub fn layout(
        &self,
        gpu: &Gpu,
        kernel: Kernel,
    ) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let mut l = match self.layouts.lock() {
            Ok(l) => l,
            Err(l) => l.into_inner(),
        };
        l.entry(kernel)
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
                    .bindings()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: match b {
                                Bind::Uniform => wgpu::BufferBindingType::Uniform,
                                Bind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                                Bind::ReadWrite => {
                                    wgpu::BufferBindingType::Storage { read_only: false }
                                }
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                let bgl = gpu
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(kernel.params_name()),
                        entries: &entries,
                    });
                let pl = gpu
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(kernel.params_name()),
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                (bgl, pl)
            })
            .clone()
    }

    /// Pipelines compiled so far (switching adapters must not add any).
    pub fn compiled(&self) -> usize {
        self.compiled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// ---- uniform twins (field order and padding exactly as the WGSL structs) ----

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct WeightDesc {
    pub rows: u32,
    pub cols: u32,
    pub row_words: u32,
    pub row_swords: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct Seg {
    pub end: u32,
    pub t_off: u32,
    pub r: u32,
    pub b_off: u32,
}

pub const F_BIAS: u32 = 1;
pub const F_OUT_SCALE: u32 = 2;
pub const F_IN_SCALE: u32 = 4;
pub const F_DORA: u32 = 8;
pub const F_POST_BIAS: u32 = 16;
pub const F_LORA: u32 = 32;
pub const F_ACCUM: u32 = 64;
/// A batched pass: each token's adapter terms come from its slot's descriptor.
pub const F_MIXED: u32 = 128;
/// The shrink of a batched pass: each token reads its slot's A rows.
pub const F_GATHER: u32 = 256;
/// The flags a descriptor may set.
pub const F_ADAPTER: u32 = F_OUT_SCALE | F_IN_SCALE | F_DORA | F_POST_BIAS | F_LORA;
/// A token without an adapter in a batched pass.
pub const NO_ADAPTER: u32 = u32::MAX;
/// u32 words of one adapter slot's descriptor of one group: flags, scale, DoRA, post-bias and
/// input-scale offsets (in the slot pool), 3 unused, then per segment (t_off, r, b_off, unused).
pub const DESC_WORDS: usize = 24;

/// How the linear kernel transforms its input as it reads it.
pub const X_NONE: u32 = 0;
pub const X_RMS: u32 = 1;
pub const X_LAYER_NORM: u32 = 2;
pub const X_SILU_MUL: u32 = 3;
pub const X_RELU: u32 = 4;
pub const X_GELU: u32 = 5;
pub const X_GELU_TANH_MUL: u32 = 6;
/// Modules per fused linear dispatch (q, k, v).
pub const MAX_SEGS: usize = 4;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct LinearParams {
    pub wd: WeightDesc,
    pub n: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub y_off: u32,
    pub flags: u32,
    pub bias_off: u32,
    pub scale_off: u32,
    pub dora_off: u32,
    pub post_off: u32,
    pub in_off: u32,
    pub t_stride: u32,
    pub nseg: u32,
    pub c8n: u32,
    pub xform: u32,
    pub act_off: u32,
    pub nw_off: u32,
    pub nb_off: u32,
    pub eps: f32,
    pub has_nb: u32,
    /// Mixed passes: where the group's slot descriptors start in the row table.
    pub desc_off: u32,
    /// Mixed passes: each token's slot at row table[ad_off + token · ad_stride].
    pub ad_off: u32,
    pub ad_stride: u32,
    /// The shrink of a mixed pass: A rows per slot.
    pub gather_rows: u32,
    pub _pad0: u32,
    pub seg: [Seg; MAX_SEGS],
}

pub const E_LORA: u32 = 1;
pub const E_ACCUM: u32 = 2;
pub const E_POSITIONS: u32 = 4;
pub const E_SCALE: u32 = 8;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct EmbedParams {
    pub wd: WeightDesc,
    pub n: u32,
    pub y_stride: u32,
    pub flags: u32,
    pub lora_r: u32,
    pub pos_offset: u32,
    pub row0: u32,
    pub total_rows: u32,
    pub scale: f32,
}

pub const N_RMS: u32 = 1;
pub const N_BIAS: u32 = 2;
pub const N_ACCUM: u32 = 4;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct NormParams {
    pub n: u32,
    pub dim: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub flags: u32,
    pub w_off: u32,
    pub b_off: u32,
    pub eps: f32,
    pub x_row0: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

pub const R_ROPE: u32 = 1;
pub const R_QKNORM: u32 = 2;
pub const R_SOFTCAP: u32 = 4;
pub const R_LONG: u32 = 8;
/// A batched pass: each query row's sequence (cache slot, positions) from the row table.
pub const R_ROWS: u32 = 16;
/// u32 words per row of a batched pass's row table: cache slot, the sequence's first position
/// in the pass, its first row, its row count, its adapter slot, 3 unused.
pub const ROW_WORDS: usize = 8;

/// head_dim the attention kernel takes at most.
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct AttentionParams {
    pub n: u32,
    pub nh: u32,
    pub nkv: u32,
    pub hd: u32,
    pub qkv_stride: u32,
    pub q_off: u32,
    pub k_off: u32,
    pub v_off: u32,
    pub out_stride: u32,
    pub window: u32,
    pub flags: u32,
    pub cap: u32,
    pub scale: f32,
    pub softcap: f32,
    pub qn_off: u32,
    pub kn_off: u32,
    pub eps: f32,
    pub long_after: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

pub const S_GUMBEL: u32 = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct ArgmaxParams {
    pub len: u32,
    pub row_off: u32,
    pub flags: u32,
    pub seed: u32,
    pub inv_temp: f32,
    pub advance: u32,
    pub history_len: u32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct SoftcapParams {
    pub n: u32,
    pub dim: u32,
    pub stride: u32,
    pub cap: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct GatherParams {
    pub rows: u32,
    pub width: u32,
    pub idx_off: u32,
    pub idx_stride: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct CopyParams {
    pub len4: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// (field name, byte offset) of each twin and its size, for the layout tests.
pub fn twin_layout(name: &str) -> Option<(Vec<(&'static str, usize)>, usize)> {
    use std::mem::{offset_of, size_of};
    macro_rules! lay {
        ($t:ty; $($f:ident),*) => {
            Some((vec![$((stringify!($f), offset_of!($t, $f))),*], size_of::<$t>()))
        };
    }
    match name {
        "LinearParams" => {
            lay!(LinearParams; wd, n, x_stride, y_stride, y_off, flags, bias_off, scale_off, dora_off, post_off, in_off, t_stride, nseg, c8n, xform, act_off, nw_off, nb_off, eps, has_nb, desc_off, ad_off, ad_stride, gather_rows, _pad0, seg)
        }
        "EmbedParams" => {
            lay!(EmbedParams; wd, n, y_stride, flags, lora_r, pos_offset, row0, total_rows, scale)
        }
        "NormParams" => {
            lay!(NormParams; n, dim, x_stride, y_stride, flags, w_off, b_off, eps, x_row0, _pad0, _pad1, _pad2)
        }
        "AttentionParams" => {
            lay!(AttentionParams; n, nh, nkv, hd, qkv_stride, q_off, k_off, v_off, out_stride, window, flags, cap, scale, softcap, qn_off, kn_off, eps, long_after, _pad0, _pad1)
        }
        "ArgmaxParams" => {
            lay!(ArgmaxParams; len, row_off, flags, seed, inv_temp, advance, history_len, _pad0)
        }
        "CopyParams" => lay!(CopyParams; len4, _pad0, _pad1, _pad2),
        "SoftcapParams" => lay!(SoftcapParams; n, dim, stride, cap),
        "GatherParams" => lay!(GatherParams; rows, width, idx_off, idx_stride),
        _ => None,
    }
}

/// Named u32 constants the host mirrors (flags), for the parity test.
pub fn host_constants() -> Vec<(&'static str, u32)> {
    vec![
        ("F_BIAS", F_BIAS),
        ("F_OUT_SCALE", F_OUT_SCALE),
        ("F_IN_SCALE", F_IN_SCALE),
        ("F_DORA", F_DORA),
        ("F_POST_BIAS", F_POST_BIAS),
        ("F_LORA", F_LORA),
        ("F_ACCUM", F_ACCUM),
        ("F_MIXED", F_MIXED),
        ("F_GATHER", F_GATHER),
        ("F_ADAPTER", F_ADAPTER),
        ("NO_ADAPTER", NO_ADAPTER),
        ("DESC_WORDS", DESC_WORDS as u32),
        ("ROW_WORDS", ROW_WORDS as u32),
        ("R_ROWS", R_ROWS),
        ("X_NONE", X_NONE),
        ("X_RMS", X_RMS),
        ("X_LAYER_NORM", X_LAYER_NORM),
        ("X_SILU_MUL", X_SILU_MUL),
        ("X_RELU", X_RELU),
        ("X_GELU", X_GELU),
        ("X_GELU_TANH_MUL", X_GELU_TANH_MUL),
        ("E_LORA", E_LORA),
        ("E_ACCUM", E_ACCUM),
        ("E_POSITIONS", E_POSITIONS),
        ("E_SCALE", E_SCALE),
        ("N_RMS", N_RMS),
        ("N_BIAS", N_BIAS),
        ("N_ACCUM", N_ACCUM),
        ("R_ROPE", R_ROPE),
        ("R_QKNORM", R_QKNORM),
        ("R_SOFTCAP", R_SOFTCAP),
        ("R_LONG", R_LONG),
        ("S_GUMBEL", S_GUMBEL),
        ("MAX_HD", MAX_HEAD_DIM as u32),
    ]
}
