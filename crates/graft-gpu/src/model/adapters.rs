//! The active adapters folded into the lowered program: per stacked group, the LoRA A rows
//! (one shrink dispatch) and B columns (the epilogue), IA³ scales, DoRA's magnitudes, biases
//! and `modules_to_save` replacements, all in small buffers rebuilt when the registry changes.

use std::collections::HashMap;

use candle_core::Tensor;
use graft_adapters::adapter::ModuleAdapter;
use graft_adapters::AdapterRegistry;
use graft_arch::table::ModuleTable;

use super::{u32_of, vec_f32, EmbedState, GpuModel, GroupState};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::weights::{storage_f32, GpuWeight, Packed};

/// One LoRA-type term on a module: A rows (r, in), B (out, r) with the scale folded in, r, and
/// the scaled `lora_bias`.
pub(super) type LoraTerm = (Vec<f32>, Vec<f32>, usize, Option<Vec<f32>>);

/// What the adapters on one module (or a row range `sk .. sk + out` of it) put into the
/// linear kernel's epilogue, in PEFT's order: LoRA terms (B rows of the range, scale and a
/// DoRA factor folded in), IA³ scales of the input or of the range's outputs, DoRA's
/// m/‖W+sBA‖ on the range.
pub(super) struct ModuleTerms {
    pub loras: Vec<LoraTerm>,
    pub in_scale: Option<Vec<f32>>,
    pub out_scale: Option<Vec<f32>>,
    pub dora: Option<Vec<f32>>,
}

/// The epilogue terms of `layers` (the adapters active on module `path`, in order). `multi`:
/// the module shares its input with others in one dispatch (an IA³ input scale cannot be
/// expressed then).
pub(super) fn module_terms(
    layers: &[&ModuleAdapter],
    cols: usize,
    multi: bool,
    path: &str,
    sk: usize,
    out: usize,
) -> Result<ModuleTerms> {
    let mut loras: Vec<LoraTerm> = Vec::new();
    let mut dora_at: Option<(usize, Vec<f32>)> = None;
    let mut in_scale: Option<Vec<f32>> = None;
    let mut out_scale: Option<Vec<f32>> = None;
    for layer in layers {
        match layer {
            ModuleAdapter::Ia3(i) => {
                let l = vec_f32(&i.l)?;
                if i.feedforward {
                    if multi {
                        return Err(Error::Unsupported(format!(
                            "IA3 scaling the input of {path}, which shares its input with other modules"
                        )));
                    }
                    let s = in_scale.get_or_insert_with(|| vec![1f32; cols]);
                    s.iter_mut().zip(&l).for_each(|(a, b)| *a *= b);
                } else {
                    let s = out_scale.get_or_insert_with(|| vec![1f32; out]);
                    s.iter_mut()
                        .zip(&l[sk..sk + out])
                        .for_each(|(a, b)| *a *= b);
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
        if out_scale.is_some() {
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
    }
    Ok(ModuleTerms {
        loras,
        in_scale,
        out_scale,
        dora: dora_at.map(|d| d.1),
    })
}

impl GpuModel {
    /// Brings the adapters on the GPU up to date with `reg` (a no-op when nothing changed).
    /// Base weights stay where they are and no pipeline is compiled.
    pub fn sync(&mut self, table: &ModuleTable, reg: &AdapterRegistry) -> Result<()> {
        if self.synced == Some(reg.version()) {
            return Ok(());
        }
        let mut aux: Vec<f32> = Vec::new();
        let mut push = |v: &[f32]| -> u32 {
            // every offset is at most aux.len(), checked against u32 below
            let off = aux.len() as u32;
            aux.extend_from_slice(v);
            off
        };
        // norms
        let mut norm_offs = HashMap::new();
        for n in &self.norms {
            let p = &table.params[n.id];
            let mut w = match reg.param(n.id, false) {
                Some(t) => vec_f32(t)?,
                None => vec_f32(&p.weight.tensor()?)?,
            };
            if n.unit_offset {
                // Gemma's 1 + w, in f32 as transformers adds it
                for v in &mut w {
                    *v += 1.0;
                }
            }
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
            let st = self.group_state(gi, table, reg, &mut push)?;
            r_max = r_max.max(st.r_total);
            gstate.push(st);
        }
        // embeddings
        let mut estate = Vec::with_capacity(self.embeds.len());
        for ei in 0..self.embeds.len() {
            estate.push(self.embed_state(ei, reg)?);
        }
        u32_of(aux.len())?;
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
        table: &ModuleTable,
        reg: &AdapterRegistry,
    ) -> Result<Option<GpuWeight>> {
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
        table: &ModuleTable,
        reg: &AdapterRegistry,
        push: &mut impl FnMut(&[f32]) -> u32,
    ) -> Result<GroupState> {
        let weight = self.override_weight(gi, table, reg)?;
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
            let layers = reg.active_layers(m);
            let terms = module_terms(&layers, g.cols, multi, path, sk, out)?;
            let loras = terms.loras;
            if let Some(l) = &terms.in_scale {
                let s = inscale.get_or_insert_with(|| vec![1f32; g.cols]);
                s.iter_mut().zip(l).for_each(|(a, b)| *a *= b);
                flags |= F_IN_SCALE;
            }
            if let Some(l) = &terms.out_scale {
                scale[row0..row0 + out].copy_from_slice(l);
                flags |= F_OUT_SCALE;
            }
            if let Some(gvec) = &terms.dora {
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
                end: u32_of(row0 + out)?,
                t_off: u32_of(t_off)?,
                r: u32_of(r_m)?,
                b_off: u32_of(b_off)?,
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

    fn embed_state(&mut self, ei: usize, reg: &AdapterRegistry) -> Result<EmbedState> {
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
}
