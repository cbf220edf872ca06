//! Recording a forward pass: for a token count, every step's kernel, parameters and bind group
//! built once and reused for every call with that count (the cache length lives in a small
//! buffer the host rewrites, so decode plans never change); encoding is a loop of dispatches.

use graft_arch::network::NormKind;
use wgpu::util::DeviceExt;

use super::{u32_of, GpuModel, Op, Xform, B, UNIFORM_STRIDE};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::weights::GpuWeight;

pub(super) struct Step {
    pipe: wgpu::ComputePipeline,
    bg: wgpu::BindGroup,
    wg: (u32, u32, u32),
}

pub(super) enum Part {
    Pass(Vec<Step>),
    Copy {
        src: wgpu::Buffer,
        src_off: u64,
        dst: wgpu::Buffer,
        size: u64,
    },
}

pub(super) struct Plan {
    parts: Vec<Part>,
    pub dispatches: usize,
    _uniforms: wgpu::Buffer,
}

/// How the next token is chosen on the GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Pick {
    None,
    Greedy,
    Gumbel { inv_temp: f32, seed: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PlanKey {
    pub n: usize,
    pub last_only: bool,
    /// 0 none, 1 greedy, 2 Gumbel (with its temperature bits and seed)
    pub pick: (u8, u32, u32),
    /// A batched pass: the sequences (one logits row each); 0 for a one-sequence pass.
    pub outs: usize,
}

impl PlanKey {
    pub fn new(n: usize, last_only: bool, pick: Pick) -> Self {
        PlanKey {
            n,
            last_only,
            pick: match pick {
                Pick::None => (0, 0, 0),
                Pick::Greedy => (1, 0, 0),
                Pick::Gumbel { inv_temp, seed } => (2, inv_temp.to_bits(), seed),
            },
            outs: 0,
        }
    }

    /// A batched pass of `n` rows over `outs` sequences (see `batch.rs`).
    pub fn batch(n: usize, outs: usize) -> Self {
        PlanKey {
            n,
            last_only: true,
            pick: (0, 0, 0),
            outs,
        }
    }

    /// One token, the last position's logits, the next id picked on the GPU.
    pub fn decode(pick: Pick) -> Self {
        PlanKey::new(1, true, pick)
    }
}

impl GpuModel {
    pub(super) fn act(&self, b: B) -> &wgpu::Buffer {
        // every activation buffer is created in `new`
        match self.acts.get(&b) {
            Some(x) => x,
            None => &self.dummy,
        }
    }

    fn width(&self, b: B) -> usize {
        let d = &self.dims;
        match b {
            B::X | B::X2 | B::H | B::E | B::Last | B::Tail => d.hidden,
            B::Qkv => d.qkv,
            B::Att => d.att,
            B::Mlp => d.mlp,
            B::Logits => d.vocab,
        }
    }

    pub(super) fn plan(&mut self, key: PlanKey, pick: Pick) -> Result<()> {
        if self.plans.contains_key(&key) {
            return Ok(());
        }
        let plan = self.build_plan(key.n, key.last_only, pick, key.outs)?;
        self.plans.insert(key, plan);
        Ok(())
    }

    /// The steps of a pass over `n` rows. `outs` > 0: a batched pass of that many sequences
    /// (rows, cache slots and adapters from the row table; their last rows' logits).
    fn build_plan(&self, n: usize, last_only: bool, pick: Pick, outs: usize) -> Result<Plan> {
        let gpu = &self.gpu;
        let batch = if outs > 0 {
            match &self.batch {
                Some(b) => Some(b),
                None => return Err(Error::Input("batched passes are not enabled".into())),
            }
        } else {
            None
        };
        // rows of the part after the last-row cut
        let tail_rows = if outs > 0 { outs } else { 1 };
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
        let cut = outs > 0 || (last_only && n > 1);
        let mut tail_src = B::X;
        let n32 = u32_of(n)?;
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
                    scale,
                } => {
                    if *positions && batch.is_some() {
                        return Err(Error::Unsupported(
                            "learned position embeddings in a batched pass".into(),
                        ));
                    }
                    let em = &self.embeds[*e];
                    let es = &self.estate[*e];
                    let table = es.table.as_ref().unwrap_or(&em.parts);
                    let mut flags = 0;
                    if *accum {
                        flags |= E_ACCUM;
                    }
                    if scale.is_some() {
                        flags |= E_SCALE;
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
                            n: n32,
                            y_stride: u32_of(self.width(*dst))?,
                            flags,
                            lora_r: u32_of(es.r)?,
                            pos_offset: em.pos_offset,
                            row0: u32_of(*row0)?,
                            total_rows: u32_of(em.rows)?,
                            scale: scale.unwrap_or(1.0),
                        };
                        let uoff = put(bytemuck::bytes_of(&p));
                        let kernel = Kernel::Embed(part.fmt);
                        step!(Pending {
                            kernel,
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
                            wg: (part.desc.cols.div_ceil(kernel.workgroup_x()), n32, 1),
                        });
                    }
                }
                Op::Norm {
                    norm,
                    src,
                    dst,
                    tail,
                    accum,
                } => {
                    let (w_off, b_off, has_b) =
                        self.norm_offs.get(&norm.id).copied().unwrap_or_default();
                    let ne = if *tail && last_only { tail_rows } else { n };
                    let src = resolve(*src, tail_src);
                    let mut flags = if norm.kind == NormKind::Rms { N_RMS } else { 0 };
                    if has_b {
                        flags |= N_BIAS;
                    }
                    if *accum {
                        flags |= N_ACCUM;
                    }
                    let p = NormParams {
                        n: u32_of(ne)?,
                        // every norm of the description runs over the residual stream
                        dim: u32_of(d.norm)?,
                        x_stride: u32_of(self.width(src))?,
                        y_stride: u32_of(self.width(*dst))?,
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
                        uoff,
                        usize_: std::mem::size_of::<NormParams>() as u64,
                        bufs: vec![
                            self.act(src).clone(),
                            self.aux.clone(),
                            self.act(*dst).clone()
                        ],
                        wg: (u32_of(ne)?, 1, 1),
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
                    let ne = if *tail && last_only { tail_rows } else { n };
                    let src = resolve(*src, tail_src);
                    let tn = tn_of(ne);
                    let ne32 = u32_of(ne)?;
                    // what the shrink and the main matmul share: the input and its transform
                    let mut input = LinearParams {
                        n: ne32,
                        x_stride: u32_of(self.width(src))?,
                        ..Default::default()
                    };
                    match xform {
                        Xform::None => {}
                        Xform::Norm(nm) => {
                            let (w, b, hb) =
                                self.norm_offs.get(&nm.id).copied().unwrap_or_default();
                            input.xform = match nm.kind {
                                NormKind::Rms => X_RMS,
                                NormKind::Layer => X_LAYER_NORM,
                            };
                            (input.nw_off, input.nb_off) = (w, b);
                            input.eps = nm.eps as f32;
                            input.has_nb = u32::from(hb);
                        }
                        Xform::Act { code, up_off } => {
                            input.xform = *code;
                            input.act_off = *up_off;
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
                                    self.rowinfo.clone(),
                                ],
                                wg: (w.desc.rows.div_ceil(RPW), ne32.div_ceil(tn), 1),
                            }
                        };
                    let w = gs.weight.as_ref().unwrap_or(&grp.base);
                    if let Some(bs) = batch {
                        // a batched pass: each token's adapter from the row table
                        let pool = &bs.pools[*g];
                        let (ad_off, ad_stride) = if *tail && last_only {
                            (bs.out_off + 1, 2)
                        } else {
                            (4, ROW_WORDS)
                        };
                        let mixed = LinearParams {
                            ad_off: u32_of(ad_off)?,
                            ad_stride: u32_of(ad_stride)?,
                            ..input
                        };
                        if let Some(a) = &pool.a {
                            // BGMV shrink: t = x·A_slotᵀ, one token per workgroup
                            let p = LinearParams {
                                wd: a.desc,
                                y_stride: u32_of(pool.r_g)?,
                                c8n: a.c8n,
                                flags: F_GATHER,
                                gather_rows: u32_of(pool.r_g)?,
                                ..mixed
                            };
                            let mut st = linear_step(a, p, &self.dummy, &self.dummy, &bs.t_buf);
                            st.kernel = Kernel::Linear {
                                fmt: a.fmt,
                                tn: TN_DECODE,
                            };
                            st.wg = (u32_of(pool.r_g)?.div_ceil(RPW), ne32, 1);
                            step!(st);
                        }
                        let mut seg = [Seg::default(); MAX_SEGS];
                        let mut end = 0usize;
                        for (i, r) in grp.rows.iter().enumerate().take(MAX_SEGS) {
                            end += r;
                            seg[i].end = u32_of(end)?;
                        }
                        let p = LinearParams {
                            wd: w.desc,
                            y_stride: u32_of(self.width(*dst))?,
                            y_off: *y_off,
                            flags: (gs.flags & F_BIAS) | F_MIXED | if *accum { F_ACCUM } else { 0 },
                            bias_off: gs.bias_off,
                            t_stride: u32_of(pool.r_g.max(1))?,
                            nseg: u32_of(grp.rows.len().min(MAX_SEGS))?,
                            c8n: w.c8n,
                            desc_off: u32_of(pool.desc_off)?,
                            seg,
                            ..mixed
                        };
                        let y = self.act(*dst).clone();
                        step!(linear_step(w, p, &bs.t_buf, &pool.b, &y));
                        continue;
                    }
                    if let Some(a) = &gs.a {
                        // LoRA's shrink: t = x·Aᵀ over every active adapter of the group
                        let p = LinearParams {
                            wd: a.desc,
                            y_stride: u32_of(gs.r_total)?,
                            c8n: a.c8n,
                            ..input
                        };
                        step!(linear_step(a, p, &self.dummy, &self.dummy, &self.t_buf));
                    }
                    let mut seg = [Seg::default(); MAX_SEGS];
                    for (i, s) in gs.segs.iter().enumerate().take(MAX_SEGS) {
                        seg[i] = *s;
                    }
                    let p = LinearParams {
                        wd: w.desc,
                        y_stride: u32_of(self.width(*dst))?,
                        y_off: *y_off,
                        flags: gs.flags | if *accum { F_ACCUM } else { 0 },
                        bias_off: gs.bias_off,
                        scale_off: gs.scale_off,
                        dora_off: gs.dora_off,
                        post_off: gs.post_off,
                        in_off: gs.in_off,
                        t_stride: u32_of(gs.r_total)?,
                        nseg: u32_of(gs.segs.len())?,
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
                Op::Attention(a) => {
                    // RoPE and the KV-cache write happen inside (shaders/attention.wgsl)
                    let p = AttentionParams {
                        n: n32,
                        nh: a.nh,
                        nkv: a.nkv,
                        hd: a.hd,
                        qkv_stride: u32_of(self.width(B::Qkv))?,
                        q_off: 0,
                        k_off: a.nh * a.hd,
                        v_off: (a.nh + a.nkv) * a.hd,
                        out_stride: u32_of(self.width(B::Att))?,
                        window: a.window,
                        flags: if a.rope.is_some() { R_ROPE } else { 0 }
                            | if batch.is_some() { R_ROWS } else { 0 },
                        cap: u32_of(self.cap)?,
                        scale: a.scale,
                        ..Default::default()
                    };
                    let mut p = p;
                    if let Some((qn, kn)) = a.qk_norm {
                        p.flags |= R_QKNORM;
                        p.qn_off = self.norm_offs.get(&qn.id).map_or(0, |o| o.0);
                        p.kn_off = self.norm_offs.get(&kn.id).map_or(0, |o| o.0);
                        // both norms of a layer share the model's epsilon
                        p.eps = qn.eps as f32;
                    }
                    if let Some(c) = a.softcap {
                        p.flags |= R_SOFTCAP;
                        p.softcap = c;
                    }
                    if let Some(after) = a
                        .rope
                        .and_then(|r| self.rope_long.get(r).copied().flatten())
                    {
                        p.flags |= R_LONG;
                        p.long_after = u32_of(after)?;
                    }
                    let uoff = put(bytemuck::bytes_of(&p));
                    let (kc, vc) = &self.kv[a.layer];
                    let rope = a
                        .rope
                        .and_then(|r| self.ropes.get(r))
                        .unwrap_or(&self.dummy);
                    step!(Pending {
                        kernel: Kernel::Attention,
                        uoff,
                        usize_: std::mem::size_of::<AttentionParams>() as u64,
                        bufs: vec![
                            if batch.is_some() {
                                self.rowinfo.clone()
                            } else {
                                self.state.clone()
                            },
                            rope.clone(),
                            self.act(B::Qkv).clone(),
                            kc.clone(),
                            vc.clone(),
                            self.act(B::Att).clone(),
                            self.aux.clone(),
                        ],
                        wg: (a.nh, n32, 1),
                    });
                }
                Op::Softcap { cap } => {
                    let rows = if last_only { tail_rows } else { n };
                    let p = SoftcapParams {
                        n: u32_of(rows)?,
                        dim: u32_of(d.vocab)?,
                        stride: u32_of(self.width(B::Logits))?,
                        cap: *cap,
                    };
                    let uoff = put(bytemuck::bytes_of(&p));
                    let kernel = Kernel::Softcap;
                    step!(Pending {
                        kernel,
                        uoff,
                        usize_: std::mem::size_of::<SoftcapParams>() as u64,
                        bufs: vec![self.act(B::Logits).clone()],
                        wg: (
                            u32_of(d.vocab)?.div_ceil(kernel.workgroup_x()),
                            u32_of(rows)?,
                            1
                        ),
                    });
                }
                Op::LastRow { src } => {
                    tail_src = *src;
                    if let Some(bs) = batch {
                        // each sequence's last row, by the row table's output list
                        let p = GatherParams {
                            rows: u32_of(outs)?,
                            width: u32_of(self.width(*src))?,
                            idx_off: u32_of(bs.out_off)?,
                            idx_stride: 2,
                        };
                        let uoff = put(bytemuck::bytes_of(&p));
                        let kernel = Kernel::Gather;
                        step!(Pending {
                            kernel,
                            uoff,
                            usize_: std::mem::size_of::<GatherParams>() as u64,
                            bufs: vec![
                                self.rowinfo.clone(),
                                self.act(*src).clone(),
                                self.act(B::Last).clone(),
                            ],
                            wg: (
                                u32_of(self.width(*src))?.div_ceil(kernel.workgroup_x()),
                                u32_of(outs)?,
                                1
                            ),
                        });
                    } else if cut {
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
                len: u32_of(d.vocab)?,
                row_off: u32_of((rows - 1) * d.vocab)?,
                flags,
                seed,
                inv_temp,
                advance: n32,
                history_len: u32_of(self.cap)?,
                ..Default::default()
            };
            let uoff = put(bytemuck::bytes_of(&p));
            step!(Pending {
                kernel: Kernel::Argmax,
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
                        let pipe = self.kernels.pipeline(gpu, s.kernel);
                        let (bgl, _) = self.kernels.layout(gpu, s.kernel);
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &uniforms,
                                offset: s.uoff,
                                size: std::num::NonZeroU64::new(s.usize_),
                            }),
                        }];
                        for (i, b) in (1u32..).zip(&s.bufs) {
                            entries.push(wgpu::BindGroupEntry {
                                binding: i,
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

    pub(super) fn encode(&self, key: &PlanKey, enc: &mut wgpu::CommandEncoder) -> usize {
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
}
