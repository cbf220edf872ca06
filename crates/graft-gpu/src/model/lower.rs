//! Lowering a [`Network`] to the GPU program: every base weight uploaded once (modules that
//! share an input stacked into one matrix), norms folded into the matmuls that read them, the
//! activation folded into the matmul after it, attention with RoPE and the cache write inside,
//! leaving five dispatches per pre-norm block.

use graft_arch::network::{Activation, Mlp, Network, Norm, Residual};
use graft_arch::table::ModuleTable;

use super::{pack_weight, u32_of, AttentionOp, Dims, Embed, Group, Op, Xform, B};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::{MAX_HEAD_DIM, MAX_SEGS, X_GELU, X_GELU_TANH_MUL, X_RELU, X_SILU_MUL};
use crate::weights::{GpuWeight, Packed};

/// The program of a network and the weights it reads.
pub(super) struct Lowered {
    pub prog: Vec<Op>,
    pub groups: Vec<Group>,
    pub embeds: Vec<Embed>,
    pub norms: Vec<Norm>,
    pub dims: Dims,
    pub base_bytes: u64,
}

/// Lowers `net` (its weights in `table`) for `gpu`; `f16` uploads every Linear weight as f16.
pub(super) fn lower(gpu: &Gpu, net: &Network, table: &ModuleTable, f16: bool) -> Result<Lowered> {
    let mut b = Builder {
        gpu,
        table,
        groups: Vec::new(),
        embeds: Vec::new(),
        norms: Vec::new(),
        prog: Vec::new(),
        base_bytes: 0,
        f16,
    };
    let mut dims = Dims {
        hidden: net.hidden_size.max(net.embed_dim),
        norm: net.hidden_size,
        qkv: 0,
        att: 0,
        mlp: 0,
        vocab: net.vocab_size,
    };
    let e = b.embed(net.embed, 0)?;
    match net.project_in {
        Some(pi) => {
            b.prog.push(Op::Embed {
                e,
                dst: B::E,
                accum: false,
                positions: false,
                scale: net.embed_scale,
            });
            let g = b.group(&[pi], None)?;
            b.linear(g, B::E, B::X, false, false, Xform::None);
        }
        None => b.prog.push(Op::Embed {
            e,
            dst: B::X,
            accum: false,
            positions: false,
            scale: net.embed_scale,
        }),
    }
    if let Some(pos) = net.positions {
        let pe = b.embed(pos.module, u32_of(pos.offset)?)?;
        b.prog.push(Op::Embed {
            e: pe,
            dst: B::X,
            accum: true,
            positions: true,
            scale: None,
        });
    }
    // The residual stream and its spare (a post-norm block normalises it out of place).
    let (mut x, mut x2) = (B::X, B::X2);
    for (li, blk) in net.blocks.iter().enumerate() {
        let a = &blk.attn;
        if a.head_dim > MAX_HEAD_DIM {
            return Err(Error::Unsupported(format!(
                "head_dim {} (the attention kernel takes up to {MAX_HEAD_DIM})",
                a.head_dim
            )));
        }
        dims.qkv = dims.qkv.max((a.heads + 2 * a.kv_heads) * a.head_dim);
        dims.att = dims.att.max(a.heads * a.head_dim);
        let pre = blk.residual == Residual::PreNorm;
        // pre-norm: the norm is fused into q/k/v and the MLP's first matmul; post-norm
        // normalises the residual stream itself, a dispatch of its own
        let xf = if pre {
            b.fused_norm(blk.attn_norm)
        } else {
            Xform::None
        };
        let qkv = b.group(&a.qkv.modules(), None)?;
        b.linear(qkv, x, B::Qkv, false, false, xf);
        if let Some((qn, kn)) = a.qk_norm {
            b.register_norm(qn);
            b.register_norm(kn);
        }
        b.prog.push(Op::Attention(AttentionOp {
            layer: li,
            nh: u32_of(a.heads)?,
            nkv: u32_of(a.kv_heads)?,
            hd: u32_of(a.head_dim)?,
            rope: a.rope,
            window: u32_of(a.window.unwrap_or(0))?,
            scale: a.scale,
            qk_norm: a.qk_norm,
            softcap: a.softcap,
        }));
        let o = b.group(&[a.o], None)?;
        match blk.attn_out_norm {
            // o into a spare, then its norm added to the stream
            Some(on) if pre => {
                b.linear(o, B::Att, B::H, false, false, Xform::None);
                b.norm(on, B::H, x, false, true);
            }
            Some(_) => {
                return Err(Error::Unsupported(
                    "a norm on the attention output of a post-norm block".into(),
                ))
            }
            None => b.linear(o, B::Att, x, true, false, Xform::None),
        }
        if !pre {
            b.norm(blk.attn_norm, x, x2, false, false);
            std::mem::swap(&mut x, &mut x2);
        }
        let xf = if pre {
            b.fused_norm(blk.mlp_norm)
        } else {
            Xform::None
        };
        // the MLP's output: added to the stream, or (Gemma) into a spare for its norm
        let (mlp_dst, mlp_accum) = match blk.mlp_out_norm {
            Some(_) if !pre => {
                return Err(Error::Unsupported(
                    "a norm on the MLP output of a post-norm block".into(),
                ))
            }
            Some(_) => (B::H, false),
            None => (x, true),
        };
        match blk.mlp {
            Mlp::Gated { act, .. } | Mlp::GatedFused { act, .. } => {
                let code = match act {
                    Activation::Silu => X_SILU_MUL,
                    Activation::GeluTanh => X_GELU_TANH_MUL,
                    other => {
                        return Err(Error::Unsupported(format!(
                            "a gated MLP with {other:?} (the kernels fuse SiLU·up and tanh-GELU·up)"
                        )))
                    }
                };
                let (mods, down, ffn) = match blk.mlp {
                    Mlp::Gated { gate, up, down, .. } => {
                        (vec![gate, up], down, width_of(table, gate))
                    }
                    Mlp::GatedFused {
                        gate_up, down, ffn, ..
                    } => (vec![gate_up], down, ffn),
                    Mlp::Plain { .. } => unreachable!("matched above"),
                };
                dims.mlp = dims.mlp.max(2 * ffn);
                let gu = b.group(&mods, None)?;
                b.linear(gu, x, B::Mlp, false, false, xf);
                let d = b.group(&[down], None)?;
                let xf = Xform::Act {
                    code,
                    up_off: u32_of(ffn)?,
                };
                b.linear(d, B::Mlp, mlp_dst, mlp_accum, false, xf);
            }
            Mlp::Plain { fc1, fc2, act } => {
                let code = match act {
                    Activation::Relu => X_RELU,
                    Activation::GeluErf => X_GELU,
                    other => {
                        return Err(Error::Unsupported(format!(
                            "a plain (ungated) MLP with {other:?}"
                        )))
                    }
                };
                dims.mlp = dims.mlp.max(width_of(table, fc1));
                let g1 = b.group(&[fc1], None)?;
                b.linear(g1, x, B::Mlp, false, false, xf);
                let g2 = b.group(&[fc2], None)?;
                b.linear(
                    g2,
                    B::Mlp,
                    mlp_dst,
                    mlp_accum,
                    false,
                    Xform::Act { code, up_off: 0 },
                );
            }
        }
        if let (Some(on), true) = (blk.mlp_out_norm, pre) {
            b.norm(on, B::H, x, false, true);
        }
        if !pre {
            b.norm(blk.mlp_norm, x, x2, false, false);
            std::mem::swap(&mut x, &mut x2);
        }
    }
    b.prog.push(Op::LastRow { src: x });
    let mut cur = B::Tail;
    if let Some(f) = net.final_norm {
        b.norm(f, cur, B::H, true, false);
        cur = B::H;
    }
    if let Some(po) = net.project_out {
        let g = b.group(&[po], None)?;
        let dst = if cur == B::H { B::E } else { B::H };
        b.linear(g, cur, dst, false, true, Xform::None);
        cur = dst;
    }
    let head = b.group(&[net.head.module], net.head.tied_to)?;
    b.linear(head, cur, B::Logits, false, true, Xform::None);
    if let Some(cap) = net.logit_softcap {
        b.prog.push(Op::Softcap { cap });
    }
    let Builder {
        groups,
        embeds,
        norms,
        prog,
        base_bytes,
        ..
    } = b;
    Ok(Lowered {
        prog,
        groups,
        embeds,
        norms,
        dims,
        base_bytes,
    })
}

/// Output features of a Linear module.
fn width_of(table: &ModuleTable, module: usize) -> usize {
    table.params[module]
        .weight
        .dims()
        .first()
        .copied()
        .unwrap_or(0)
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

    /// A norm whose weights the kernels read from the aux buffer.
    fn register_norm(&mut self, n: Norm) {
        if !self.norms.iter().any(|m| m.id == n.id) {
            self.norms.push(n);
        }
    }

    /// A norm dispatch of its own: `dst = norm(src)`, or `dst += norm(src)` with `accum`.
    fn norm(&mut self, n: Norm, src: B, dst: B, tail: bool, accum: bool) {
        self.register_norm(n);
        self.prog.push(Op::Norm {
            norm: n,
            src,
            dst,
            tail,
            accum,
        });
    }

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
        self.register_norm(n);
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
                    out.push((self.groups.len() - 1, u32_of(*row0)?));
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
                out.push((self.groups.len() - 1, u32_of(y_off + row0)?));
            }
            y_off += n;
        }
        Ok(out)
    }
}
