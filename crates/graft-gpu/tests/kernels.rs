//! Every WGSL kernel against a CPU reference over many shapes, run one dispatch at a time
//! through `Ops` (on Mesa's lavapipe in CI; any adapter wgpu finds elsewhere). The uniforms and
//! bindings are filled as `GpuModel::build_plan` fills them.
//!
//! Tolerances: a GPU sum of f32 products is compared with the f64 sum of the same (dequantized)
//! values, within `REL · Σ|terms| + ABS`: the error of an f32 sum is bounded by a small multiple
//! of ε·Σ|terms| (ε = 1.2e-7; the linear kernel's longest chain of additions is ~40 for the
//! widths here), while a single wrong or missing term moves the result by about Σ|terms|/cols,
//! which is 100× larger than the tolerance at the widest row tested.

use std::sync::OnceLock;

use bytemuck::bytes_of;
use graft_cpu::attention::{rope_in_place, KvCache};
use graft_gpu::kernels::{
    ArgmaxParams, AttentionParams, CopyParams, EmbedParams, Fmt, GatherParams, Kernel,
    LinearParams, NormParams, Seg, DESC_WORDS, E_ACCUM, E_LORA, E_POSITIONS, F_ACCUM, F_BIAS,
    F_DORA, F_GATHER, F_IN_SCALE, F_LORA, F_MIXED, F_OUT_SCALE, F_POST_BIAS, MAX_HEAD_DIM,
    MAX_SEGS, NO_ADAPTER, N_BIAS, N_RMS, ROW_WORDS, R_QKNORM, R_ROPE, R_SOFTCAP, S_GUMBEL,
    TN_DECODE, TN_PREFILL, X_GELU, X_LAYER_NORM, X_NONE, X_RELU, X_RMS, X_SILU_MUL,
};
use graft_gpu::ops::{Input, Ops};
use graft_gpu::weights::Packed;
use graft_gpu::{Gpu, GpuOptions};
use graft_quant::{QMatrix, QType};

// ---------------------------------------------------------------- harness

/// The GPU the tests share, or `None` (with a message) where no adapter exists; with
/// `GRAFT_REQUIRE_GPU=1` a missing GPU fails instead.
fn gpu() -> Option<Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let g = GPU.get_or_init(|| {
        let g = Gpu::new_blocking(&GpuOptions::default()).map_err(|e| e.to_string());
        if let Ok(g) = &g {
            eprintln!(
                "kernel tests on {} ({}, {})",
                g.info.name, g.info.backend, g.info.driver
            );
        }
        g
    });
    match g {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            if std::env::var("GRAFT_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("GRAFT_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("skipping: no GPU ({e})");
            None
        }
    }
}

/// One kernel runner for all tests, so that each pipeline is compiled once.
fn ops(gpu: &Gpu) -> &'static Ops {
    static OPS: OnceLock<Ops> = OnceLock::new();
    OPS.get_or_init(|| Ops::new(gpu))
}

/// Runs one dispatch and returns the bindings in `read`, panicking with `ctx` on an error.
fn run(
    ops: &Ops,
    kernel: Kernel,
    params: &[u8],
    inputs: &[Input],
    wg: (u32, u32, u32),
    read: &[usize],
    ctx: &str,
) -> Vec<Vec<u32>> {
    ops.run(kernel, params, inputs, wg, read)
        .unwrap_or_else(|e| panic!("{ctx}: {e}"))
}

/// The first `len` words read back, as f32 (buffers shorter than four words come back padded).
fn floats(words: &[u32], len: usize) -> Vec<f32> {
    bytemuck::cast_slice::<u32, f32>(&words[..len]).to_vec()
}

/// A deterministic generator (64-bit LCG, high bits).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d)
    }

    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 8_388_608.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| lo + (self.unit() + 1.0) * 0.5 * (hi - lo))
            .collect()
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n
    }
}

fn qtype(f: Fmt) -> QType {
    match f {
        Fmt::F32 => QType::F32,
        Fmt::F16 => QType::F16,
        Fmt::Bf16 => QType::BF16,
        Fmt::Q8_0 => QType::Q8_0,
        Fmt::Q4_0 => QType::Q4_0,
        Fmt::Q4_1 => QType::Q4_1,
        Fmt::Q5_0 => QType::Q5_0,
        Fmt::Q5_1 => QType::Q5_1,
        Fmt::Q2K => QType::Q2_K,
        Fmt::Q3K => QType::Q3_K,
        Fmt::Q4K => QType::Q4_K,
        Fmt::Q5K => QType::Q5_K,
        Fmt::Q6K => QType::Q6_K,
        Fmt::Int8 => QType::Int8,
        Fmt::Nf4 => QType::Nf4,
    }
}

/// Random valid blocks of a format graft reads from GGUF files but does not quantize into:
/// random bytes (every quant and packed sub-block scale), with the f16 fields (d, dmin, m)
/// finite: mostly model-like magnitudes of both signs, some zero, subnormal or large. Seeded by
/// `values`, so that each call gives other blocks.
fn random_blocks(q: QType, rows: usize, cols: usize, values: &[f32]) -> QMatrix {
    let seed = values.iter().fold((rows * 31 + cols) as u64, |h, v| {
        h.rotate_left(7) ^ u64::from(v.to_bits())
    });
    let mut rng = Rng::new(seed);
    // byte offsets of a block's f16 fields (ggml-common.h)
    let halves: &[usize] = match q {
        QType::Q5_0 => &[0],
        QType::Q5_1 | QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q6_K => &[208],
        other => panic!("{other:?} is quantized, not drawn"),
    };
    let bb = q.block_bytes();
    let mut data: Vec<u8> = (0..rows * cols / q.block_len() * bb)
        .map(|_| rng.next_u32() as u8)
        .collect();
    for blk in data.chunks_exact_mut(bb) {
        for &at in halves {
            let h = match rng.below(10) {
                0 => 0x8000 * (rng.below(2) as u16), // ±0
                1 => rng.below(0x400) as u16 | (0x8000 * rng.below(2) as u16), // subnormal
                2 => 0x5000 + rng.below(0x400) as u16, // 32..64
                _ => half::f16::from_f32(rng.unit() * 0.05).to_bits(),
            };
            blk[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    QMatrix::from_raw(q, rows, cols, data, vec![])
        .unwrap_or_else(|e| panic!("{q:?} {rows}x{cols}: {e}"))
}

/// `values` quantized to `fmt` (or, for the formats only read from GGUF files, random blocks),
/// packed for the GPU, and the exact values it holds.
fn pack(fmt: Fmt, rows: usize, cols: usize, values: &[f32]) -> (Packed, Vec<f32>) {
    let q = if qtype(fmt).can_quantize() {
        QMatrix::quantize(qtype(fmt), rows, cols, values)
            .unwrap_or_else(|e| panic!("quantize {fmt:?} {rows}x{cols}: {e}"))
    } else {
        random_blocks(qtype(fmt), rows, cols, values)
    };
    let p = Packed::from_qmatrix(&q).unwrap_or_else(|e| panic!("pack {fmt:?}: {e}"));
    assert_eq!(p.fmt, fmt);
    (p, q.dequantize())
}

/// Checks `got` against `want` within `rel · mag + abs` per element (`mag`: the sum of the
/// magnitudes of the terms that made the value).
fn check(ctx: &str, got: &[f32], want: &[f64], mag: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = rel * m + abs;
        let err = (*g as f64 - w).abs();
        assert!(
            err <= tol, // false for NaN
            "{ctx}: element {i}: gpu {g} vs reference {w} (error {err:e} > tolerance {tol:e})"
        );
    }
}

// ---------------------------------------------------------------- linear

/// The linear kernel's bindings other than the uniform and the weights (wq, ws).
struct LinearIo<'a> {
    x: &'a [f32],
    aux: &'a [f32],
    lt: &'a [f32],
    lb: &'a [f32],
    y: &'a [f32],
}

fn run_linear(
    ops: &Ops,
    tn: u32,
    p: &LinearParams,
    w: &Packed,
    io: &LinearIo,
    ctx: &str,
) -> Vec<f32> {
    run_linear_rows(ops, tn, p, w, io, &[0; 4], ctx)
}

/// [`run_linear`] with a row table (batched passes).
fn run_linear_rows(
    ops: &Ops,
    tn: u32,
    p: &LinearParams,
    w: &Packed,
    io: &LinearIo,
    rowinfo: &[u32],
    ctx: &str,
) -> Vec<f32> {
    let rows = if p.flags & F_GATHER != 0 {
        p.gather_rows
    } else {
        w.desc.rows
    };
    let out = run(
        ops,
        Kernel::Linear { fmt: w.fmt, tn },
        bytes_of(p),
        &[
            Input::F32(io.x),
            Input::U32(&w.wq),
            Input::U32(&w.ws),
            Input::F32(io.aux),
            Input::F32(io.lt),
            Input::F32(io.lb),
            Input::F32(io.y),
            Input::U32(rowinfo),
        ],
        (rows.div_ceil(graft_gpu::kernels::RPW), p.n.div_ceil(tn), 1),
        &[7],
        ctx,
    );
    floats(&out[0], io.y.len())
}

/// Shapes (rows, cols, n) per format: odd row counts (not multiples of RPW), token counts that
/// are not multiples of TN, and for the formats without blocks widths that leave a tail for
/// `w1` (cols % 8 != 0). NF4 runs over both c8n = cols/8 (cols % 8 == 0) and c8n = 0.
fn linear_shapes(fmt: Fmt) -> Vec<(usize, usize, usize)> {
    let rn = [
        (1, 1),
        (7, 2),
        (9, 7),
        (13, 9),
        (33, 17),
        (8, 16),
        (20, 8),
        (3, 1),
    ];
    let cols: &[usize] = match fmt {
        Fmt::Q8_0 | Fmt::Q4_0 | Fmt::Q4_1 | Fmt::Q5_0 | Fmt::Q5_1 => &[32, 96, 576],
        Fmt::Q2K | Fmt::Q3K | Fmt::Q4K | Fmt::Q5K | Fmt::Q6K => &[256, 512, 768],
        Fmt::Nf4 => &[8, 64, 96, 5, 13, 37, 100],
        _ => &[1, 5, 13, 37, 64, 100, 576],
    };
    let mut v = Vec::new();
    for (i, &c) in cols.iter().enumerate() {
        for k in 0..3 {
            let (r, n) = rn[(i * 3 + k) % rn.len()];
            v.push((r, c, n));
        }
    }
    v
}

#[test]
fn linear_every_format_matches_the_dequantized_matmul() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(1);
    for fmt in Fmt::ALL {
        for (rows, cols, n) in linear_shapes(fmt) {
            let mut vals = rng.vec(rows * cols);
            if rows > 2 {
                // a row of tiny values (f16 subnormal values and block scales) and a row of
                // zeros (zero scales), then a few signed zeros
                vals[..cols].iter_mut().for_each(|v| *v *= 1e-3);
                vals[cols..2 * cols].fill(0.0);
                vals[2 * cols] = -0.0;
            }
            let (w, deq) = pack(fmt, rows, cols, &vals);
            // the direct constructors (LoRA A, overrides) lay out as the quantized path does
            let direct = match fmt {
                Fmt::F32 => Some(Packed::f32(rows, cols, &vals).unwrap()),
                Fmt::F16 => Some(Packed::f16(rows, cols, &vals).unwrap()),
                _ => None,
            };
            if let Some(d) = direct {
                let same = d.wq == w.wq && d.ws == w.ws && d.c8n == w.c8n;
                let desc = (
                    d.desc.rows,
                    d.desc.cols,
                    d.desc.row_words,
                    d.desc.row_swords,
                );
                let want = (
                    w.desc.rows,
                    w.desc.cols,
                    w.desc.row_words,
                    w.desc.row_swords,
                );
                assert!(
                    same && desc == want,
                    "Packed::{fmt:?} {rows}x{cols} differs from from_qmatrix"
                );
            }
            if fmt == Fmt::Nf4 && cols % 8 != 0 {
                assert_eq!(w.c8n, 0, "NF4 {rows}x{cols}: c8n");
            }
            // a row stride wider than the matrix for some shapes, as the model's buffers are
            let x_stride = cols + n % 3;
            let x = rng.vec(n * x_stride);
            let mut want = vec![0f64; n * rows];
            let mut mag = vec![0f64; n * rows];
            for t in 0..n {
                for r in 0..rows {
                    for c in 0..cols {
                        let term = deq[r * cols + c] as f64 * x[t * x_stride + c] as f64;
                        want[t * rows + r] += term;
                        mag[t * rows + r] += term.abs();
                    }
                }
            }
            for tn in [TN_DECODE, TN_PREFILL] {
                let p = LinearParams {
                    wd: w.desc,
                    n: n as u32,
                    x_stride: x_stride as u32,
                    y_stride: rows as u32,
                    c8n: w.c8n,
                    ..Default::default()
                };
                // NaN everywhere first: an element the kernel skips fails the comparison
                let y0 = vec![f32::NAN; n * rows];
                let io = LinearIo {
                    x: &x,
                    aux: &[],
                    lt: &[],
                    lb: &[],
                    y: &y0,
                };
                let ctx = format!(
                    "linear {fmt:?} tn={tn} rows={rows} cols={cols} n={n} x_stride={x_stride}"
                );
                let got = run_linear(ops, tn, &p, &w, &io, &ctx);
                check(&ctx, &got, &want, &mag, 1e-5, 0.0);
            }
        }
    }
}

/// One module of a fused group: its rows and its LoRA rank (0: no LoRA on it).
#[derive(Clone, Copy)]
struct SegSpec {
    rows: usize,
    r: usize,
}

/// Every epilogue stage, alone and together, against linear.wgsl's stated order, for fused
/// groups of up to MAX_SEGS modules (ranks 0, 1 and more), writing into a column range of a
/// wider output (y_off, y_stride) whose other elements must stay as they were.
#[test]
fn linear_epilogue_flags_segments_and_output_placement() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(2);
    let cases: &[(Fmt, usize)] = &[
        (Fmt::F32, 37),
        (Fmt::F32, 64),
        (Fmt::Q8_0, 96),
        (Fmt::Nf4, 13),
    ];
    let seg_sets: &[&[SegSpec]] = &[
        &[
            SegSpec { rows: 5, r: 1 },
            SegSpec { rows: 7, r: 0 },
            SegSpec { rows: 9, r: 3 },
        ],
        &[
            SegSpec { rows: 3, r: 2 },
            SegSpec { rows: 4, r: 1 },
            SegSpec { rows: 2, r: 0 },
            SegSpec { rows: 6, r: 4 },
        ],
        &[SegSpec { rows: 11, r: 1 }],
    ];
    let all = F_BIAS | F_OUT_SCALE | F_IN_SCALE | F_DORA | F_POST_BIAS | F_LORA | F_ACCUM;
    let singles = [
        0,
        F_BIAS,
        F_OUT_SCALE,
        F_IN_SCALE,
        F_DORA,
        F_POST_BIAS,
        F_LORA,
        F_ACCUM,
        all,
    ];
    for (ci, &(fmt, cols)) in cases.iter().enumerate() {
        for (si, segs) in seg_sets.iter().enumerate() {
            assert!(segs.len() <= MAX_SEGS);
            let rows: usize = segs.iter().map(|s| s.rows).sum();
            let r_total: usize = segs.iter().map(|s| s.r).sum();
            let (w, deq) = pack(fmt, rows, cols, &rng.vec(rows * cols));
            // every combination of the seven flags for the first case, each alone and all
            // together for the others
            let masks: Vec<u32> = if ci == 0 && si == 0 {
                (0..=all).collect()
            } else {
                singles.to_vec()
            };
            // seg table, LoRA B (after 3 unused values, so no b_off is 0) and t's row stride
            let mut seg = [Seg::default(); MAX_SEGS];
            let mut lb = rng.vec(3);
            let (mut end, mut t_off) = (0usize, 0usize);
            for (i, s) in segs.iter().enumerate() {
                end += s.rows;
                seg[i] = Seg {
                    end: end as u32,
                    t_off: t_off as u32,
                    r: s.r as u32,
                    b_off: lb.len() as u32,
                };
                lb.extend(rng.vec(s.rows * s.r));
                t_off += s.r;
            }
            let t_stride = r_total + 2;
            // aux: [unused | bias | out scale | dora | post bias | in scale]
            let mut aux = rng.vec(5);
            let mut push = |v: Vec<f32>| -> u32 {
                let off = aux.len() as u32;
                aux.extend(v);
                off
            };
            let bias_off = push(rng.vec(rows));
            let scale_off = push(rng.range(rows, 0.5, 1.5));
            let dora_off = push(rng.range(rows, 0.5, 1.5));
            let post_off = push(rng.vec(rows));
            let in_off = push(rng.range(cols, 0.5, 1.5));
            let at = |off: u32, i: usize| aux[off as usize + i] as f64;
            for (mi, &flags) in masks.iter().enumerate() {
                let n = [9, 1, 3][mi % 3];
                let x_stride = cols + 1;
                let x = rng.vec(n * x_stride);
                let lt = rng.vec(n * t_stride);
                let y_off = 3;
                let y_stride = y_off + rows + 4;
                // one row past n too: the kernel must not write there
                let y0 = rng.vec((n + 1) * y_stride);
                let mut want: Vec<f64> = y0.iter().map(|v| *v as f64).collect();
                let mut mag: Vec<f64> = vec![0.0; y0.len()];
                let has = |f: u32| flags & f != 0;
                for t in 0..n {
                    for r in 0..rows {
                        let (mut v, mut m) = (0f64, 0f64);
                        for c in 0..cols {
                            let mut xv = x[t * x_stride + c] as f64;
                            if has(F_IN_SCALE) {
                                xv *= at(in_off, c);
                            }
                            let term = deq[r * cols + c] as f64 * xv;
                            v += term;
                            m += term.abs();
                        }
                        if has(F_DORA) {
                            v *= at(dora_off, r);
                            m *= at(dora_off, r).abs();
                        }
                        if has(F_BIAS) {
                            v += at(bias_off, r);
                            m += at(bias_off, r).abs();
                        }
                        if has(F_OUT_SCALE) {
                            v *= at(scale_off, r);
                            m *= at(scale_off, r).abs();
                        }
                        if has(F_POST_BIAS) {
                            v += at(post_off, r);
                            m += at(post_off, r).abs();
                        }
                        if has(F_LORA) {
                            let s = seg.iter().position(|s| r < s.end as usize).unwrap();
                            let start = if s == 0 { 0 } else { seg[s - 1].end as usize };
                            let sg = seg[s];
                            for j in 0..sg.r as usize {
                                let term = lt[t * t_stride + sg.t_off as usize + j] as f64
                                    * lb[sg.b_off as usize + (r - start) * sg.r as usize + j]
                                        as f64;
                                v += term;
                                m += term.abs();
                            }
                        }
                        let yi = t * y_stride + y_off + r;
                        if has(F_ACCUM) {
                            v += y0[yi] as f64;
                            m += (y0[yi] as f64).abs();
                        }
                        want[yi] = v;
                        mag[yi] = m;
                    }
                }
                let p = LinearParams {
                    wd: w.desc,
                    n: n as u32,
                    x_stride: x_stride as u32,
                    y_stride: y_stride as u32,
                    y_off: y_off as u32,
                    flags,
                    bias_off,
                    scale_off,
                    dora_off,
                    post_off,
                    in_off,
                    t_stride: t_stride as u32,
                    nseg: segs.len() as u32,
                    c8n: w.c8n,
                    seg,
                    ..Default::default()
                };
                let io = LinearIo {
                    x: &x,
                    aux: &aux,
                    lt: &lt,
                    lb: &lb,
                    y: &y0,
                };
                for tn in [TN_DECODE, TN_PREFILL] {
                    let ranks: Vec<usize> = segs.iter().map(|s| s.r).collect();
                    let ctx = format!(
                        "linear epilogue {fmt:?} tn={tn} rows={rows} cols={cols} n={n} flags={flags:#09b} seg ranks {ranks:?}"
                    );
                    let got = run_linear(ops, tn, &p, &w, &io, &ctx);
                    // elements outside the written range (mag 0) must be untouched: tolerance 0
                    check(&ctx, &got, &want, &mag, 1e-5, 0.0);
                }
            }
        }
    }
}

/// The input transforms the linear kernel applies as it reads x (the norm before q/k/v and
/// gate/up, the activation before down_proj / fc2), against the transform done on the CPU
/// followed by the matmul.
#[test]
fn linear_input_transforms() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(10);
    let shapes: &[(Fmt, usize, usize)] = &[
        (Fmt::F32, 13, 37),
        (Fmt::F32, 9, 64),
        (Fmt::F16, 33, 100),
        (Fmt::Q8_0, 17, 96),
        (Fmt::Q4_1, 5, 576),
        (Fmt::Q5_0, 3, 96),
        (Fmt::Q4K, 5, 512),
        (Fmt::Q6K, 3, 256),
        (Fmt::Int8, 8, 257),
        (Fmt::Nf4, 7, 13),
    ];
    let xforms = [
        ("none", X_NONE, false),
        ("rms", X_RMS, false),
        ("layernorm", X_LAYER_NORM, false),
        ("layernorm+bias", X_LAYER_NORM, true),
        ("silu*mul", X_SILU_MUL, false),
        ("relu", X_RELU, false),
        ("gelu", X_GELU, false),
    ];
    let mut case = 0usize;
    for &(fmt, rows, cols) in shapes {
        let (w, deq) = pack(fmt, rows, cols, &rng.vec(rows * cols));
        for &(name, xform, has_nb) in &xforms {
            let n = [1, 3, 9, 17][case % 4];
            let flags = [0, F_BIAS | F_ACCUM][case % 2];
            case += 1;
            let norm = xform == X_RMS || xform == X_LAYER_NORM;
            // SiLU·mul reads up at column + act_off: gate and up side by side
            let act_off = if xform == X_SILU_MUL { cols + 1 } else { 0 };
            let x_stride = cols + act_off + 2;
            let x = if norm {
                rng.range(n * x_stride, 1.0, 3.0)
            } else {
                rng.range(n * x_stride, -6.0, 6.0)
            };
            // aux: [3 unused | norm weight | norm bias | bias]
            let mut aux = rng.vec(3);
            let nw_off = aux.len();
            aux.extend(rng.range(cols, 0.5, 1.5));
            let nb_off = aux.len();
            aux.extend(rng.vec(cols));
            let bias_off = aux.len();
            aux.extend(rng.vec(rows));
            // a model's eps, and one large enough that leaving it out shows
            let eps = [1e-5f32, 0.5][case % 2];
            let gelu: Vec<f32> = if xform == X_GELU {
                candle_core::Tensor::from_slice(&x, x.len(), &candle_core::Device::Cpu)
                    .and_then(|t| t.gelu_erf())
                    .and_then(|t| t.to_vec1::<f32>())
                    .unwrap()
            } else {
                Vec::new()
            };
            let y_stride = rows + 1;
            let y0 = rng.vec(n * y_stride);
            let mut want: Vec<f64> = y0.iter().map(|v| *v as f64).collect();
            let mut mag = vec![0f64; y0.len()];
            for t in 0..n {
                let xr = &x[t * x_stride..];
                let row: Vec<f64> = xr[..cols].iter().map(|v| *v as f64).collect();
                let mean = if xform == X_LAYER_NORM {
                    row.iter().sum::<f64>() / cols as f64
                } else {
                    0.0
                };
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                let xt: Vec<f64> = (0..cols)
                    .map(|c| {
                        let v = row[c];
                        match xform {
                            X_RMS | X_LAYER_NORM => {
                                let mut r = (v - mean) * inv * aux[nw_off + c] as f64;
                                if has_nb {
                                    r += aux[nb_off + c] as f64;
                                }
                                r
                            }
                            X_SILU_MUL => v / (1.0 + (-v).exp()) * xr[c + act_off] as f64,
                            X_RELU => v.max(0.0),
                            X_GELU => gelu[t * x_stride + c] as f64,
                            _ => v,
                        }
                    })
                    .collect();
                for r in 0..rows {
                    let (mut v, mut m) = (0f64, 0f64);
                    for (c, xc) in xt.iter().enumerate() {
                        let term = deq[r * cols + c] as f64 * xc;
                        v += term;
                        m += term.abs();
                    }
                    let yi = t * y_stride + r;
                    if flags & F_BIAS != 0 {
                        v += aux[bias_off + r] as f64;
                        m += aux[bias_off + r].abs() as f64;
                    }
                    if flags & F_ACCUM != 0 {
                        v += y0[yi] as f64;
                        m += y0[yi].abs() as f64;
                    }
                    want[yi] = v;
                    mag[yi] = m;
                }
            }
            let p = LinearParams {
                wd: w.desc,
                n: n as u32,
                x_stride: x_stride as u32,
                y_stride: y_stride as u32,
                flags,
                bias_off: bias_off as u32,
                c8n: w.c8n,
                xform,
                act_off: act_off as u32,
                nw_off: nw_off as u32,
                nb_off: nb_off as u32,
                eps,
                has_nb: u32::from(has_nb),
                ..Default::default()
            };
            let io = LinearIo {
                x: &x,
                aux: &aux,
                lt: &[],
                lb: &[],
                y: &y0,
            };
            for tn in [TN_DECODE, TN_PREFILL] {
                let ctx = format!(
                    "linear xform {name} {fmt:?} tn={tn} rows={rows} cols={cols} n={n} flags={flags:#09b} eps={eps}"
                );
                let got = run_linear(ops, tn, &p, &w, &io, &ctx);
                check(&ctx, &got, &want, &mag, 2e-5, 0.0);
            }
        }
    }
}

// ---------------------------------------------------------------- embed

/// Lookups for every format, plain and with LoRA (r 1 and 3), positions and accumulation, from
/// a whole table and from a table split by rows.
#[test]
fn embed_every_format_with_lora_positions_accum_and_split_tables() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(3);
    for fmt in Fmt::ALL {
        let shapes: &[(usize, usize)] = match fmt {
            Fmt::Q8_0 | Fmt::Q4_0 | Fmt::Q4_1 | Fmt::Q5_0 | Fmt::Q5_1 => &[(37, 64), (5, 96)],
            Fmt::Q2K | Fmt::Q3K | Fmt::Q4K | Fmt::Q5K | Fmt::Q6K => &[(37, 256), (5, 512)],
            // 37·13 = 481: NF4's last block is partial
            _ => &[(37, 13), (50, 64), (9, 1)],
        };
        for &(rows, cols) in shapes {
            let (w, deq) = pack(fmt, rows, cols, &rng.vec(rows * cols));
            // (flags, lora r, state[0], pos_offset)
            let cases: &[(u32, usize, u32, u32)] = &[
                (0, 0, 0, 0),
                (E_LORA, 1, 0, 0),
                (E_LORA | E_ACCUM, 3, 0, 0),
                (E_ACCUM, 0, 0, 0),
                (E_POSITIONS, 0, 3, 2),
                (E_POSITIONS | E_ACCUM | E_LORA, 3, 1, 0),
            ];
            for &(flags, r, pos0, pos_offset) in cases {
                let positions = flags & E_POSITIONS != 0;
                let n = if positions { 4 } else { 6 };
                // ids 0 and rows-1, random ones, and one out of range (clamped to rows-1)
                let ids: Vec<u32> = (0..n)
                    .map(|t| match t {
                        0 => 0,
                        1 => rows as u32 - 1,
                        5 => rows as u32 + 7,
                        _ => rng.below(rows as u32),
                    })
                    .collect();
                let la = rng.vec(r * rows);
                let lb = rng.vec(cols * r);
                let y_stride = cols + 3;
                let y0 = rng.vec(n * y_stride + 2);
                let mut want: Vec<f64> = y0.iter().map(|v| *v as f64).collect();
                let mut mag = vec![0f64; y0.len()];
                for (t, &tid) in ids.iter().enumerate() {
                    let id = if positions {
                        (pos0 + t as u32 + pos_offset) as usize
                    } else {
                        tid as usize
                    }
                    .min(rows - 1);
                    for d in 0..cols {
                        let mut v = deq[id * cols + d] as f64;
                        let mut m = v.abs() + 1.0;
                        if flags & E_LORA != 0 {
                            for j in 0..r {
                                let term = la[j * rows + id] as f64 * lb[d * r + j] as f64;
                                v += term;
                                m += term.abs();
                            }
                        }
                        let yi = t * y_stride + d;
                        if flags & E_ACCUM != 0 {
                            v += y0[yi] as f64;
                            m += (y0[yi] as f64).abs();
                        }
                        want[yi] = v;
                        mag[yi] = m;
                    }
                }
                // the whole table, then (as the model splits a table larger than a binding)
                // two row ranges dispatched in turn over the same output, each writing only
                // the tokens whose ids fall in it (NF4's blocks run across rows: no split)
                let mut parts = vec![(0, w.clone())];
                if fmt != Fmt::Nf4 {
                    let a = rows / 3 + 1;
                    parts.push((0, w.slice_rows(0, a).unwrap()));
                    parts.push((a, w.slice_rows(a, rows).unwrap()));
                }
                for split in [false, true] {
                    let runs = if split { &parts[1..] } else { &parts[..1] };
                    if runs.is_empty() {
                        continue;
                    }
                    let ranges: Vec<(usize, u32)> =
                        runs.iter().map(|(r0, p)| (*r0, p.desc.rows)).collect();
                    let ctx = format!(
                        "embed {fmt:?} rows={rows} cols={cols} n={n} flags={flags:#05b} r={r} state={pos0} pos_offset={pos_offset} parts (row0, rows) {ranges:?}"
                    );
                    let y = ops.upload_f32(&y0).unwrap();
                    let mut out = Vec::new();
                    for (row0, part) in runs {
                        let p = EmbedParams {
                            wd: part.desc,
                            n: n as u32,
                            y_stride: y_stride as u32,
                            flags,
                            lora_r: r as u32,
                            pos_offset,
                            row0: *row0 as u32,
                            total_rows: rows as u32,
                            ..Default::default()
                        };
                        out = run(
                            ops,
                            Kernel::Embed(fmt),
                            bytes_of(&p),
                            &[
                                Input::U32(&ids),
                                Input::U32(&part.wq),
                                Input::U32(&part.ws),
                                Input::F32(&la),
                                Input::F32(&lb),
                                Input::U32(&[pos0]),
                                Input::Buffer(&y),
                            ],
                            ((cols as u32).div_ceil(64), n as u32, 1),
                            &[7],
                            &ctx,
                        );
                    }
                    let got = floats(&out[0], y0.len());
                    // a lookup decodes as the CPU does (the products are exact and at most the
                    // final + m or − dmin·m rounds, fused or not); elements
                    // outside the rows written must be unchanged (mag 0, tolerance 0)
                    check(&ctx, &got, &want, &mag, 1e-6, 0.0);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- norm

#[test]
fn norm_rms_and_layernorm() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(4);
    for dim in [1usize, 7, 257, 576, 1000] {
        for (mode, flags) in [("rms", N_RMS), ("layernorm", 0), ("layernorm+bias", N_BIAS)] {
            for n in 1..=4usize {
                let x_row0 = (n + dim) % 3;
                let x_stride = dim + 5;
                // an offset, so that LayerNorm's mean matters
                let x = rng.range((x_row0 + n) * x_stride, 1.0, 3.0);
                let y_stride = dim + 1;
                let y0 = rng.vec(n * y_stride);
                // aux: [7 unused | w | 3 unused | b]
                let mut aux = rng.vec(7);
                let w_off = aux.len();
                aux.extend(rng.range(dim, 0.5, 1.5));
                aux.extend(rng.vec(3));
                let b_off = aux.len();
                aux.extend(rng.vec(dim));
                let eps = 1e-5f32;
                let mut want: Vec<f64> = y0.iter().map(|v| *v as f64).collect();
                let mut mag = vec![0f64; y0.len()];
                for t in 0..n {
                    let row = &x[(t + x_row0) * x_stride..][..dim];
                    let mean = if flags & N_RMS != 0 {
                        0.0
                    } else {
                        row.iter().map(|v| *v as f64).sum::<f64>() / dim as f64
                    };
                    let var =
                        row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    for i in 0..dim {
                        let mut v = (row[i] as f64 - mean) * inv * aux[w_off + i] as f64;
                        let mut m = v.abs() + 1.0;
                        if flags & N_BIAS != 0 {
                            v += aux[b_off + i] as f64;
                            m += aux[b_off + i].abs() as f64;
                        }
                        want[t * y_stride + i] = v;
                        mag[t * y_stride + i] = m;
                    }
                }
                let p = NormParams {
                    n: n as u32,
                    dim: dim as u32,
                    x_stride: x_stride as u32,
                    y_stride: y_stride as u32,
                    flags,
                    w_off: w_off as u32,
                    b_off: b_off as u32,
                    eps,
                    x_row0: x_row0 as u32,
                    ..Default::default()
                };
                let ctx = format!("norm {mode} dim={dim} n={n} x_row0={x_row0}");
                let out = run(
                    ops,
                    Kernel::Norm,
                    bytes_of(&p),
                    &[Input::F32(&x), Input::F32(&aux), Input::F32(&y0)],
                    (n as u32, 1, 1),
                    &[3],
                    &ctx,
                );
                check(&ctx, &floats(&out[0], y0.len()), &want, &mag, 2e-5, 0.0);
            }
        }
    }
}

// ---------------------------------------------------------------- rope + attention

/// One attention configuration: heads, head_dim, rotary or not, window (0: none), padding of
/// the qkv and output rows, and the tokens of each step (the first a prefill).
struct AttnCase {
    nh: usize,
    nkv: usize,
    hd: usize,
    rope: bool,
    window: usize,
    pad: usize,
    steps: &'static [usize],
    /// Gemma 2's soft-capping of the scores.
    softcap: Option<f32>,
    /// Per-head RMSNorms of q and k before the rotation (Qwen3, Gemma 3).
    qk_norm: bool,
}

/// RMSNorm over each `hd`-wide head of `x` with weights `w`, as the CPU forward does.
fn head_rms(x: &mut [f32], hd: usize, w: &[f32], eps: f32) {
    for h in x.chunks_mut(hd) {
        let ms = h.iter().map(|v| v * v).sum::<f32>() / hd as f32;
        let r = (ms + eps).sqrt();
        for (v, wi) in h.iter_mut().zip(w) {
            *v = *v / r * wi;
        }
    }
}

fn attention_case(ops: &Ops, rng: &mut Rng, c: &AttnCase) {
    let (nh, nkv, hd) = (c.nh, c.nkv, c.hd);
    let half = hd / 2;
    let cap: usize = c.steps.iter().sum::<usize>() + 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|j| 1.0 / 10000f32.powf(2.0 * j as f32 / hd as f32))
        .collect();
    // (cos, sin) per position and frequency, as GpuModel::new builds it
    let mut table = Vec::with_capacity(cap * hd);
    for p in 0..cap {
        for f in &inv_freq {
            let (s, co) = (p as f32 * f).sin_cos();
            table.push(co);
            table.push(s);
        }
    }
    // room for two positions past cap: the kernel must stop at cap, not at the buffer's end
    let kv_len = (cap + 2) * nkv * hd;
    let kc = ops.upload_f32(&vec![0f32; kv_len]).unwrap();
    let vc = ops.upload_f32(&vec![0f32; kv_len]).unwrap();
    let mut want_kc = vec![0f32; kv_len];
    let mut want_vc = vec![0f32; kv_len];
    let mut cache = KvCache::new();
    let qkv_stride = (nh + 2 * nkv) * hd + c.pad;
    let (q_w, kv_w) = (nh * hd, nkv * hd);
    let out_stride = nh * hd + c.pad;
    let scale = 1.0 / (hd as f32).sqrt();
    // the q and k norms' weights, as the model's aux buffer holds them
    let aux: Vec<f32> = (0..2 * hd).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
    let eps = 1e-6f32;
    let mut len = 0usize;
    for (step, &m) in c.steps.iter().enumerate() {
        let ctx = format!(
            "attention nh={nh} nkv={nkv} hd={hd} rope={} window={} pad={} step {step}: {m} tokens at {len}",
            c.rope, c.window, c.pad
        );
        let qkv = rng.vec(m * qkv_stride);
        let qkv_buf = ops.upload_f32(&qkv).unwrap();
        let state = [len as u32];
        // CPU: split, rotate, append, attend
        let mut q = Vec::with_capacity(m * q_w);
        let mut k = Vec::with_capacity(m * kv_w);
        let mut v = Vec::with_capacity(m * kv_w);
        for t in 0..m {
            let row = &qkv[t * qkv_stride..];
            q.extend_from_slice(&row[..q_w]);
            k.extend_from_slice(&row[q_w..q_w + kv_w]);
            v.extend_from_slice(&row[q_w + kv_w..q_w + 2 * kv_w]);
        }
        if c.qk_norm {
            head_rms(&mut q, hd, &aux[..hd], eps);
            head_rms(&mut k, hd, &aux[hd..], eps);
        }
        if c.rope {
            rope_in_place(&mut q, m, nh, hd, len, &inv_freq);
            rope_in_place(&mut k, m, nkv, hd, len, &inv_freq);
        }
        want_kc[len * kv_w..(len + m) * kv_w].copy_from_slice(&k);
        want_vc[len * kv_w..(len + m) * kv_w].copy_from_slice(&v);
        let layer = cache.layer(0, nkv, hd);
        layer.append(len, m, &k, &v);
        let window = (c.window > 0).then_some(c.window);
        let want_out = layer.attend_capped(&q, m, nh, len + m, scale, window, c.softcap);
        let p = AttentionParams {
            n: m as u32,
            nh: nh as u32,
            nkv: nkv as u32,
            hd: hd as u32,
            qkv_stride: qkv_stride as u32,
            q_off: 0,
            k_off: q_w as u32,
            v_off: (q_w + kv_w) as u32,
            out_stride: out_stride as u32,
            window: c.window as u32,
            flags: if c.rope { R_ROPE } else { 0 }
                | if c.qk_norm { R_QKNORM } else { 0 }
                | if c.softcap.is_some() { R_SOFTCAP } else { 0 },
            cap: cap as u32,
            scale,
            softcap: c.softcap.unwrap_or(0.0),
            qn_off: 0,
            kn_off: hd as u32,
            eps,
            ..Default::default()
        };
        let out0 = vec![f32::NAN; m * out_stride];
        let got = run(
            ops,
            Kernel::Attention,
            bytes_of(&p),
            &[
                Input::U32(&state),
                Input::F32(&table),
                Input::Buffer(&qkv_buf),
                Input::Buffer(&kc),
                Input::Buffer(&vc),
                Input::F32(&out0),
                Input::F32(&aux),
            ],
            (nh as u32, m as u32, 1),
            &[4, 5, 6],
            &format!("{ctx}: attention"),
        );
        let to64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<_>>();
        let ones = |n: usize| vec![1f64; n];
        check(
            &format!("{ctx}: k cache"),
            &floats(&got[0], kv_len),
            &to64(&want_kc),
            &ones(kv_len),
            1e-6,
            0.0,
        );
        check(
            &format!("{ctx}: v cache"),
            &floats(&got[1], kv_len),
            &to64(&want_vc),
            &vec![0f64; kv_len],
            0.0,
            0.0,
        );
        let got = &got[2..];
        let got = floats(&got[0], out0.len());
        let mut g = Vec::with_capacity(m * q_w);
        for t in 0..m {
            g.extend_from_slice(&got[t * out_stride..][..q_w]);
            for (i, pad) in got[t * out_stride + q_w..][..c.pad].iter().enumerate() {
                assert!(
                    pad.is_nan(),
                    "{ctx}: attention wrote padding {i} of token {t}"
                );
            }
        }
        // outputs are convex combinations of values in [-1, 1]
        check(
            &format!("{ctx}: attention output"),
            &g,
            &to64(&want_out),
            &ones(g.len()),
            2e-5,
            0.0,
        );
        len += m;
    }
    // Past the cache's end nothing is written: two tokens at cap - 1 and cap (rotation off, as
    // the table has no row for cap), of which only the first reaches the cache.
    let ctx = format!(
        "attention nh={nh} nkv={nkv} hd={hd}: 2 tokens at cap - 1 = {}",
        cap - 1
    );
    let qkv = rng.vec(2 * qkv_stride);
    for (i, v) in [&mut want_kc, &mut want_vc].into_iter().enumerate() {
        let src = q_w + i * kv_w;
        v[(cap - 1) * kv_w..cap * kv_w].copy_from_slice(&qkv[src..src + kv_w]);
    }
    let p = AttentionParams {
        n: 2,
        nh: nh as u32,
        nkv: nkv as u32,
        hd: hd as u32,
        qkv_stride: qkv_stride as u32,
        q_off: 0,
        k_off: q_w as u32,
        v_off: (q_w + kv_w) as u32,
        out_stride: out_stride as u32,
        flags: 0,
        cap: cap as u32,
        scale,
        ..Default::default()
    };
    let got = run(
        ops,
        Kernel::Attention,
        bytes_of(&p),
        &[
            Input::U32(&[cap as u32 - 1]),
            Input::F32(&table),
            Input::F32(&qkv),
            Input::Buffer(&kc),
            Input::Buffer(&vc),
            Input::F32(&vec![0f32; 2 * out_stride]),
            Input::F32(&[0f32; 4]),
        ],
        (nh as u32, 2, 1),
        &[4, 5],
        &ctx,
    );
    if c.qk_norm {
        // normalised keys: x·(1/r)·w on the GPU, x/r·w on the CPU
        let kc = floats(&got[0], kv_len);
        check(
            &format!("{ctx}: k cache"),
            &kc,
            &want_kc.iter().map(|x| *x as f64).collect::<Vec<_>>(),
            &vec![1f64; kv_len],
            1e-5,
            0.0,
        );
    } else {
        assert!(floats(&got[0], kv_len) == want_kc, "{ctx}: k cache");
    }
    assert!(floats(&got[1], kv_len) == want_vc, "{ctx}: v cache");
}

#[test]
fn attention_with_rope_and_cache_write_prefill_then_decode() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(5);
    let mut i = 0usize;
    for (nh, nkv) in [(4, 2), (3, 3), (9, 3)] {
        for hd in [8, 64, 128] {
            for rope in [true, false] {
                for window in [0, 5] {
                    attention_case(
                        ops,
                        &mut rng,
                        &AttnCase {
                            nh,
                            nkv,
                            hd,
                            rope,
                            window,
                            pad: [0, 3][i % 2],
                            steps: &[5, 1, 1, 1],
                            softcap: [None, Some(1.5)][(i / 2) % 2],
                            qk_norm: i % 3 == 1,
                        },
                    );
                    i += 1;
                }
            }
        }
    }
    // longer histories: several key tiles (64 positions each), a chunked prefill at a
    // non-zero cache length, and windows that start inside a tile
    for (nh, nkv, hd, window) in [(4, 2, 64, 0), (9, 3, 128, 67), (3, 3, 8, 100)] {
        attention_case(
            ops,
            &mut rng,
            &AttnCase {
                nh,
                nkv,
                hd,
                rope: true,
                window,
                pad: 1,
                steps: &[70, 60, 1, 1],
                softcap: None,
                qk_norm: false,
            },
        );
    }
    // an odd head_dim (its last value is not rotated, as on the CPU) and the largest one
    // (MAX_HEAD_DIM: all four output slots of each thread)
    for (hd, window) in [(5, 0), (5, 3), (MAX_HEAD_DIM, 0), (MAX_HEAD_DIM, 4)] {
        attention_case(
            ops,
            &mut rng,
            &AttnCase {
                nh: 2,
                nkv: 1,
                hd,
                rope: true,
                window,
                pad: 2,
                steps: &[6, 1, 1],
                softcap: Some(4.0),
                qk_norm: true,
            },
        );
    }
}

// ---------------------------------------------------------------- argmax

/// The shader's counter-based hash.
fn hash(a: u32) -> u32 {
    let mut x = a;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The shader's Gumbel noise for (seed, position, index): -log(-log(u)), u in (0, 1).
fn gumbel(seed: u32, pos: u32, i: u32) -> f32 {
    let h = hash(hash(hash(seed) ^ pos) ^ i);
    let u = ((h >> 9) as f32 + 0.5) / 8_388_608.0;
    -(-u.ln()).ln()
}

/// The inverse of the odd multiplier `c` modulo 2³² (Newton's iteration).
fn inv_mul(c: u32) -> u32 {
    let mut x = c;
    for _ in 0..5 {
        x = x.wrapping_mul(2u32.wrapping_sub(c.wrapping_mul(x)));
    }
    x
}

/// `hash`'s inverse: `hash(unhash(h)) == h`.
fn unhash(h: u32) -> u32 {
    let mut x = h;
    x ^= x >> 16;
    x = x.wrapping_mul(inv_mul(0x846c_a68b));
    x ^= (x >> 15) ^ (x >> 30);
    x = x.wrapping_mul(inv_mul(0x7feb_352d));
    x ^= x >> 16;
    x
}

struct ArgmaxOut {
    id: u32,
    history: Vec<u32>,
    state: u32,
}

const SENTINEL: u32 = 0xdead_beef;
/// history_len, and the history buffer's length (longer: writes must stop at history_len).
const HISTORY: usize = 8;
const HISTORY_BUF: usize = 12;

fn run_argmax(ops: &Ops, p: &ArgmaxParams, logits: &[f32], pos: u32, ctx: &str) -> ArgmaxOut {
    let out = run(
        ops,
        Kernel::Argmax,
        bytes_of(p),
        &[
            Input::F32(logits),
            Input::U32(&[SENTINEL; 4]),
            Input::U32(&[SENTINEL; HISTORY_BUF]),
            Input::U32(&[pos, 0, 0, 0]),
        ],
        (1, 1, 1),
        &[2, 3, 4],
        ctx,
    );
    assert!(
        out[0][1..].iter().all(|v| *v == SENTINEL),
        "{ctx}: ids[1..] written"
    );
    ArgmaxOut {
        id: out[0][0],
        history: out[1][..HISTORY_BUF].to_vec(),
        state: out[2][0],
    }
}

/// Checks the id and its bookkeeping: history[pos] (when pos < history_len = HISTORY, and
/// nothing else in the history) and state[0].
fn check_argmax(ctx: &str, got: &ArgmaxOut, want: u32, pos: u32, advance: u32) {
    assert_eq!(got.id, want, "{ctx}: id");
    for (i, h) in got.history.iter().enumerate() {
        let w = if i as u32 == pos && i < HISTORY {
            want
        } else {
            SENTINEL
        };
        assert_eq!(*h, w, "{ctx}: history[{i}] (pos {pos})");
    }
    assert_eq!(got.state, pos + advance, "{ctx}: state[0]");
}

/// torch.argmax: the first index of the maximum.
fn first_argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn argmax_greedy_ties_and_bookkeeping() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(7);
    let mut case = 0u32;
    let mut go = |name: &str, len: usize, rows_before: usize, fill: &dyn Fn(&mut Vec<f32>)| {
        let mut logits = rng.vec((rows_before + 1) * len);
        let row = &mut logits[rows_before * len..];
        let mut r = row.to_vec();
        fill(&mut r);
        row.copy_from_slice(&r);
        let want = first_argmax(&r);
        // positions inside and past the history, advance 1 and several
        let pos = [3, HISTORY as u32, 0, 7, HISTORY as u32 + 2][case as usize % 5];
        let advance = [1, 5][case as usize % 2];
        case += 1;
        let p = ArgmaxParams {
            len: len as u32,
            row_off: (rows_before * len) as u32,
            flags: 0,
            seed: 0,
            inv_temp: 1.0,
            advance,
            history_len: HISTORY as u32,
            ..Default::default()
        };
        let ctx = format!(
            "argmax {name} len={len} row_off={} pos={pos}",
            rows_before * len
        );
        let got = run_argmax(ops, &p, &logits, pos, &ctx);
        check_argmax(&ctx, &got, want, pos, advance);
    };
    for len in [1usize, 255, 256, 257, 49152] {
        go("random", len, len % 2, &|_| {});
        go("random, max at the end", len, 0, &|r| {
            let l = r.len();
            r[l - 1] = 2.0;
        });
        go("all equal", len, 1, &|r| r.fill(0.25));
    }
    let tie = |a: usize, b: usize| {
        move |r: &mut Vec<f32>| {
            r[a] = 5.0;
            r[b] = 5.0;
        }
    };
    // ties within one thread's stride (i, i + 256), across threads, across the halves
    go("tie same lane", 1000, 0, &tie(263, 7));
    go("tie across lanes", 1000, 1, &tie(300, 40));
    go("tie 255/256", 257, 0, &tie(256, 255));
    go("tie far apart", 49152, 0, &tie(49151, 49000));
    go("tie three", 49152, 1, &|r| {
        r[40000] = 9.0;
        r[12345] = 9.0;
        r[20000] = 9.0;
    });
    go("large negatives", 3000, 0, &|r| {
        r.iter_mut().for_each(|v| *v = -1e30 + *v * 1e29);
        r[2999] = -1e28;
    });
    go("all -inf", 700, 0, &|r| r.fill(f32::NEG_INFINITY));
    go("-inf but one", 700, 0, &|r| {
        r.fill(f32::NEG_INFINITY);
        r[511] = -3.0;
    });
}

#[test]
fn argmax_gumbel_matches_its_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(8);
    // the twin's hash inverse is right (the regression case below depends on it)
    for h in [0u32, 1, 0xffff_ff80, 0x1234_5678] {
        assert_eq!(hash(unhash(h)), h);
    }
    for s in 0..20u32 {
        let len = [1000usize, 49152, 257][s as usize % 3];
        let seed = rng.next_u32();
        let pos = rng.below(12);
        let temp = [1.0f32, 0.7, 1.5][s as usize % 3];
        let inv_temp = 1.0 / temp;
        let logits = rng.range(len, -4.0, 4.0);
        let scores: Vec<f32> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| l * inv_temp + gumbel(seed, pos, i as u32))
            .collect();
        let want = first_argmax(&scores);
        let p = ArgmaxParams {
            len: len as u32,
            row_off: 0,
            flags: S_GUMBEL,
            seed,
            inv_temp,
            advance: 1,
            history_len: HISTORY as u32,
            ..Default::default()
        };
        let ctx = format!("argmax gumbel len={len} seed={seed:#x} pos={pos} T={temp}");
        let got = run_argmax(ops, &p, &logits, pos, &ctx);
        // the GPU's log may differ from the CPU's by an ulp: only a near-tie may go either way
        let top = scores[want as usize];
        let second = scores
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != want)
            .map(|(_, v)| *v)
            .fold(f32::NEG_INFINITY, f32::max);
        if top - second > 1e-3 {
            check_argmax(&ctx, &got, want, pos, 1);
        } else {
            let gs = scores[got.id as usize];
            assert!(
                top - gs <= 1e-3,
                "{ctx}: id {} (score {gs}) vs twin {want} (score {top})",
                got.id
            );
        }
    }
    // noise present at all: over these seeds, the sampled tokens are not all the greedy one
    let mut differs = 0;
    for s in 0..8u32 {
        let logits = rng.range(300, -1.0, 1.0);
        let p = ArgmaxParams {
            len: 300,
            flags: S_GUMBEL,
            seed: s,
            inv_temp: 1.0,
            advance: 0,
            history_len: 0,
            ..Default::default()
        };
        let got = run_argmax(ops, &p, &logits, 0, "argmax gumbel noise present");
        differs += usize::from(got.id != first_argmax(&logits));
    }
    assert!(
        differs >= 4,
        "argmax gumbel: {differs} of 8 samples differ from greedy"
    );

    // A token whose hash is the largest possible must get finite noise: with u = 1 its noise
    // is -log(-log(1)) = +inf and it wins whatever its logit. Build (seed, position 0) so that
    // index 100's hash is 0xffffffff, give it a hopeless logit, and it must never be chosen.
    let i = 100u32;
    let a = unhash(0xffff_ffff) ^ i; // hash(a ^ i) = 0xffffffff
    let seed = unhash(unhash(a)); // hash(hash(seed) ^ 0) = a
    assert_eq!(hash(hash(hash(seed)) ^ i), 0xffff_ffff);
    let mut logits = vec![0f32; 256];
    logits[i as usize] = -1000.0;
    let p = ArgmaxParams {
        len: 256,
        flags: S_GUMBEL,
        seed,
        inv_temp: 1.0,
        advance: 1,
        history_len: HISTORY as u32,
        ..Default::default()
    };
    let ctx = format!("argmax gumbel, index {i} with the largest hash and logit -1000");
    let got = run_argmax(ops, &p, &logits, 0, &ctx);
    let scores: Vec<f32> = logits
        .iter()
        .enumerate()
        .map(|(j, l)| l + gumbel(seed, 0, j as u32))
        .collect();
    assert!(
        scores[i as usize].is_finite(),
        "{ctx}: twin noise is infinite"
    );
    assert_ne!(got.id, i, "{ctx}: chosen");
    check_argmax(&ctx, &got, first_argmax(&scores), 0, 1);
}

// ---------------------------------------------------------------- copy

#[test]
fn copy_vec4_grid_stride() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(9);
    // (vec4s to copy, workgroups): one workgroup looping, exactly enough, more than enough
    for (len4, wgs) in [(1usize, 1u32), (1000, 1), (1000, 2), (1024, 4), (300, 8)] {
        let src = rng.vec(len4 * 4 + 8);
        let dst0 = rng.vec(len4 * 4 + 8);
        let p = CopyParams {
            len4: len4 as u32,
            ..Default::default()
        };
        let ctx = format!("copy len4={len4} workgroups={wgs}");
        let out = run(
            ops,
            Kernel::Copy,
            bytes_of(&p),
            &[Input::F32(&src), Input::F32(&dst0)],
            (wgs, 1, 1),
            &[2],
            &ctx,
        );
        let got = floats(&out[0], dst0.len());
        let mut want = src[..len4 * 4].to_vec();
        want.extend_from_slice(&dst0[len4 * 4..]);
        assert!(got == want, "{ctx}: differs");
    }
}

// ---------------------------------------------------------------- batched passes

/// A batched pass's epilogue (F_MIXED): every token, whatever its neighbours' adapters, gets
/// bit for bit what the kernel gives it with its own adapter's terms in P and aux (the
/// one-sequence path), for random slots (some tokens without an adapter), random flag subsets
/// per slot, both token tilings and quantized weights.
#[test]
fn linear_mixed_rows_equal_each_adapter_alone() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(21);
    let adapter_flags = [F_OUT_SCALE, F_IN_SCALE, F_DORA, F_POST_BIAS, F_LORA];
    for (case, &(fmt, cols, n)) in [
        (Fmt::F32, 37usize, 9usize),
        (Fmt::Q8_0, 64, 13),
        (Fmt::Q4_0, 96, 5),
    ]
    .iter()
    .enumerate()
    {
        let segs = [5usize, 3, 6];
        let rows: usize = segs.iter().sum();
        let max_rank = 4;
        let slots = 3;
        let (w, _) = pack(fmt, rows, cols, &rng.vec(rows * cols));
        // pool per slot: B (rows × max_rank) | out scale | dora | post | in scale
        let slot_floats = rows * max_rank + 3 * rows + cols;
        let mut pool = rng.vec(2);
        let pool0 = pool.len();
        pool.extend(rng.range(slots * slot_floats, 0.5, 1.5));
        let bias = rng.vec(rows);
        // descriptors after a row table of unused words
        let desc_off = 40usize;
        let ad_off = 1usize;
        let ad_stride = 3usize;
        let mut rowinfo = vec![0u32; desc_off + slots * DESC_WORDS];
        let mut descs = Vec::new();
        for a in 0..slots {
            let base = pool0 + a * slot_floats;
            let mut flags = 0;
            for f in adapter_flags {
                if rng.below(2) == 1 || (case == 0 && a == 0) {
                    flags |= f;
                }
            }
            let mut d = [0u32; DESC_WORDS];
            d[0] = flags;
            d[1] = (base + rows * max_rank) as u32;
            d[2] = (base + rows * max_rank + rows) as u32;
            d[3] = (base + rows * max_rank + 2 * rows) as u32;
            d[4] = (base + rows * max_rank + 3 * rows) as u32;
            let (mut t_off, mut b_at) = (0usize, 0usize);
            for (s, &sr) in segs.iter().enumerate() {
                let r = 1 + rng.below(max_rank as u32) as usize;
                d[8 + 4 * s] = t_off as u32;
                d[8 + 4 * s + 1] = r as u32;
                d[8 + 4 * s + 2] = (base + b_at) as u32;
                t_off += r;
                b_at += sr * max_rank;
            }
            rowinfo[desc_off + a * DESC_WORDS..desc_off + (a + 1) * DESC_WORDS].copy_from_slice(&d);
            descs.push(d);
        }
        let slot_of: Vec<u32> = (0..n)
            .map(|_| match rng.below(slots as u32 + 1) {
                x if x == slots as u32 => NO_ADAPTER,
                x => x,
            })
            .collect();
        for (t, &a) in slot_of.iter().enumerate() {
            rowinfo[ad_off + t * ad_stride] = a;
        }
        let mut seg = [Seg::default(); MAX_SEGS];
        let mut end = 0;
        for (i, r) in segs.iter().enumerate() {
            end += r;
            seg[i].end = end as u32;
        }
        let t_stride = segs.len() * max_rank + 1;
        let x = rng.vec(n * cols);
        let lt = rng.vec(n * t_stride);
        let y0 = rng.vec(n * rows);
        // aux for the reference runs: the bias, then the pool (so aux[rows + i] = pool[i])
        let mut aux = bias.clone();
        aux.extend_from_slice(&pool);
        for tn in [TN_DECODE, TN_PREFILL] {
            let p = LinearParams {
                wd: w.desc,
                n: n as u32,
                x_stride: cols as u32,
                y_stride: rows as u32,
                flags: F_MIXED | F_BIAS | F_ACCUM,
                bias_off: 0,
                t_stride: t_stride as u32,
                nseg: segs.len() as u32,
                c8n: w.c8n,
                desc_off: desc_off as u32,
                ad_off: ad_off as u32,
                ad_stride: ad_stride as u32,
                seg,
                ..Default::default()
            };
            let io = LinearIo {
                x: &x,
                aux: &aux,
                lt: &lt,
                lb: &pool,
                y: &y0,
            };
            let ctx = format!("mixed {fmt:?} tn={tn} rows={rows} cols={cols} n={n}");
            let got = run_linear_rows(ops, tn, &p, &w, &io, &rowinfo, &ctx);
            for a in (0..slots as u32).chain([NO_ADAPTER]) {
                // the one-sequence path: this adapter's terms in P and aux
                let mut single = LinearParams {
                    flags: F_BIAS | F_ACCUM,
                    desc_off: 0,
                    ad_off: 0,
                    ad_stride: 0,
                    ..p
                };
                if a != NO_ADAPTER {
                    let d = &descs[a as usize];
                    single.flags |= d[0];
                    single.scale_off = rows as u32 + d[1];
                    single.dora_off = rows as u32 + d[2];
                    single.post_off = rows as u32 + d[3];
                    single.in_off = rows as u32 + d[4];
                    for s in 0..segs.len() {
                        single.seg[s].t_off = d[8 + 4 * s];
                        single.seg[s].r = d[8 + 4 * s + 1];
                        single.seg[s].b_off = d[8 + 4 * s + 2];
                    }
                }
                let want = run_linear(ops, tn, &single, &w, &io, &format!("{ctx} slot {a}"));
                for (t, &ta) in slot_of.iter().enumerate() {
                    if ta != a {
                        continue;
                    }
                    let (g, wv) = (
                        &got[t * rows..(t + 1) * rows],
                        &want[t * rows..(t + 1) * rows],
                    );
                    assert!(
                        g.iter().zip(wv).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{ctx}: token {t} (slot {a}, flags {:#b}) differs from alone",
                        if a == NO_ADAPTER {
                            0
                        } else {
                            descs[a as usize][0]
                        }
                    );
                }
            }
        }
    }
}

/// The shrink of a batched pass (F_GATHER): each token's t row is x·Aᵀ over its own slot's
/// rows of the stacked A, bit for bit the one-sequence shrink over that slot alone; tokens
/// without an adapter leave their row untouched.
#[test]
fn linear_gather_shrink_reads_each_tokens_slot() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(22);
    for &(cols, r_g, slots, n) in &[
        (37usize, 6usize, 3usize, 7usize),
        (64, 8, 2, 4),
        (9, 3, 4, 11),
    ] {
        let a_all = rng.vec(slots * r_g * cols);
        let (w, _) = pack(Fmt::F32, slots * r_g, cols, &a_all);
        let x = rng.vec(n * cols);
        let y0 = rng.vec(n * r_g);
        let slot_of: Vec<u32> = (0..n)
            .map(|t| {
                if t % 4 == 3 {
                    NO_ADAPTER
                } else {
                    rng.below(slots as u32)
                }
            })
            .collect();
        let mut rowinfo = vec![0u32; n * ROW_WORDS];
        for (t, &a) in slot_of.iter().enumerate() {
            rowinfo[t * ROW_WORDS + 4] = a;
        }
        let p = LinearParams {
            wd: w.desc,
            n: n as u32,
            x_stride: cols as u32,
            y_stride: r_g as u32,
            flags: F_GATHER,
            c8n: w.c8n,
            ad_off: 4,
            ad_stride: ROW_WORDS as u32,
            gather_rows: r_g as u32,
            ..Default::default()
        };
        let io = LinearIo {
            x: &x,
            aux: &[0.0; 4],
            lt: &[0.0; 4],
            lb: &[0.0; 4],
            y: &y0,
        };
        let ctx = format!("gather shrink cols={cols} r={r_g} slots={slots} n={n}");
        let got = run_linear_rows(ops, TN_DECODE, &p, &w, &io, &rowinfo, &ctx);
        for a in 0..slots {
            let (wa, _) = pack(
                Fmt::F32,
                r_g,
                cols,
                &a_all[a * r_g * cols..(a + 1) * r_g * cols],
            );
            let single = LinearParams {
                wd: wa.desc,
                flags: 0,
                ad_off: 0,
                ad_stride: 0,
                gather_rows: 0,
                c8n: wa.c8n,
                ..p
            };
            let want = run_linear(ops, TN_DECODE, &single, &wa, &io, &ctx);
            for (t, &ta) in slot_of.iter().enumerate() {
                let row = t * r_g..(t + 1) * r_g;
                if ta == NO_ADAPTER {
                    assert!(
                        got[row.clone()] == y0[row],
                        "{ctx}: token {t} without adapter written"
                    );
                } else if ta as usize == a {
                    assert!(
                        got[row.clone()]
                            .iter()
                            .zip(&want[row])
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{ctx}: token {t} (slot {a}) differs from the slot alone"
                    );
                }
            }
        }
    }
}

/// The gather of each sequence's last row: rows picked by index, copied exactly.
#[test]
fn gather_rows_by_index() {
    let Some(gpu) = gpu() else { return };
    let ops = ops(&gpu);
    let mut rng = Rng::new(23);
    for &(rows_in, width, out) in &[
        (5usize, 7usize, 3usize),
        (40, 300, 9),
        (1, 1, 1),
        (64, 576, 64),
    ] {
        let src = rng.vec(rows_in * width);
        let dst0 = rng.vec((out + 1) * width);
        let (idx_off, idx_stride) = (3usize, 2usize);
        let mut idx = vec![0u32; idx_off + out * idx_stride];
        let picks: Vec<usize> = (0..out)
            .map(|_| rng.below(rows_in as u32) as usize)
            .collect();
        for (i, &r) in picks.iter().enumerate() {
            idx[idx_off + i * idx_stride] = r as u32;
        }
        let p = GatherParams {
            rows: out as u32,
            width: width as u32,
            idx_off: idx_off as u32,
            idx_stride: idx_stride as u32,
        };
        let ctx = format!("gather rows_in={rows_in} width={width} out={out}");
        let res = run(
            ops,
            Kernel::Gather,
            bytes_of(&p),
            &[Input::U32(&idx), Input::F32(&src), Input::F32(&dst0)],
            (
                (width as u32).div_ceil(Kernel::Gather.workgroup_x()),
                out as u32,
                1,
            ),
            &[3],
            &ctx,
        );
        let got = floats(&res[0], dst0.len());
        let mut want = Vec::new();
        for &r in &picks {
            want.extend_from_slice(&src[r * width..(r + 1) * width]);
        }
        want.extend_from_slice(&dst0[out * width..]);
        assert!(got == want, "{ctx}: differs");
    }
}
