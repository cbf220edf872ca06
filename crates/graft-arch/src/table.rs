//! The module table of a base model: every named module (its `named_modules()` path), its
//! kind and its base parameters. The description refers to modules by index; the adapter
//! registry works on the same indices.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use graft_adapters::adapter::WeightMatrix;
use graft_adapters::{ModuleInfo, ModuleInventory, ModuleKind};
use graft_quant::{QMatrix, QType};

use crate::error::Result;
use crate::network::{Norm, NormKind};
use crate::weights::WeightStore;

/// A base weight matrix: dense f32, or quantized (never expanded to f32 as a whole).
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Quant(Arc<QMatrix>),
}

impl Weight {
    /// (rows, cols) for matrices, (len,) for vectors.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => vec![q.rows, q.cols],
        }
    }

    /// The weight as an f32 tensor (dequantized if needed): for small parameters and DoRA.
    pub fn tensor(&self) -> Result<Tensor> {
        Ok(self.dense()?)
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count() * 4,
            Weight::Quant(q) => q.nbytes(),
        }
    }
}

/// From this many tokens on (prefill), a quantized matmul dequantizes a tile of rows at a time
/// and hands it to candle's GEMM, which blocks for the cache and registers far better than a
/// row-at-a-time kernel; only one tile is ever in f32.
const GEMM_MIN_TOKENS: usize = 16;
/// Rows of a quantized weight dequantized at once (prefill's GEMM and training's backward).
pub const TILE_ROWS: usize = 256;

/// Calls `f(first_row, tile)` for consecutive tiles of at most [`TILE_ROWS`] rows of `q`, each
/// dequantized to an f32 (rows, cols) tensor: the one place a quantized matrix meets f32
/// matrix-matrix work, so no f32 copy of the whole matrix ever exists.
pub fn for_each_tile(
    q: &QMatrix,
    mut f: impl FnMut(usize, Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let mut r = 0;
    while r < q.rows {
        let rows = TILE_ROWS.min(q.rows - r);
        let mut w = vec![0f32; rows * q.cols];
        for k in 0..rows {
            q.dequantize_row(r + k, &mut w[k * q.cols..(k + 1) * q.cols]);
        }
        f(r, Tensor::from_vec(w, (rows, q.cols), &Device::Cpu)?)?;
        r += rows;
    }
    Ok(())
}

/// x·Wᵀ for a quantized W, a tile of rows at a time: dequantized (in parallel) and multiplied
/// by graft-quant's GEMM (each output one in-order FMA chain, so a row's numbers do not depend
/// on the other rows), or by candle's where that has no SIMD path.
fn tiled_gemm(q: &QMatrix, x: &Tensor) -> graft_adapters::Result<Tensor> {
    let (n, k) = x.dims2()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    if let Some(px) = graft_quant::gemm::PackedX::new(&xs, n, k) {
        use rayon::prelude::*;
        let mut y = vec![0f32; n * q.rows];
        let mut w = vec![0f32; TILE_ROWS.min(q.rows) * k];
        let mut r = 0;
        while r < q.rows {
            let rows = TILE_ROWS.min(q.rows - r);
            w[..rows * k]
                .par_chunks_mut(k.max(1))
                .enumerate()
                .for_each(|(i, row)| q.dequantize_row(r + i, row));
            px.times_wt(&w[..rows * k], rows, &mut y[r..], q.rows);
            r += rows;
        }
        return Ok(Tensor::from_vec(y, (n, q.rows), &Device::Cpu)?);
    }
    let mut parts = Vec::with_capacity(q.rows.div_ceil(TILE_ROWS));
    for_each_tile(q, |_, w| {
        parts.push(x.matmul(&w.t()?)?);
        Ok(())
    })?;
    Ok(Tensor::cat(&parts, 1)?)
}

fn qerr(e: graft_quant::Error) -> graft_adapters::Error {
    graft_adapters::Error::Weight(e.to_string())
}

impl WeightMatrix for Weight {
    fn matmul_t(&self, x: &Tensor) -> graft_adapters::Result<Tensor> {
        match self {
            Weight::Dense(w) => w.matmul_t(x),
            Weight::Quant(q) => {
                let (n, _) = x.dims2()?;
                if n >= GEMM_MIN_TOKENS {
                    return tiled_gemm(q, x);
                }
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let y = if n <= 3 {
                    q.matmul_shared(&xs, n)
                } else {
                    q.matmul(&xs, n)
                }
                .map_err(qerr)?;
                Ok(Tensor::from_vec(y, (n, q.rows), &Device::Cpu)?)
            }
        }
    }

    fn rows(&self, ids: &Tensor) -> graft_adapters::Result<Tensor> {
        match self {
            Weight::Dense(w) => w.rows(ids),
            Weight::Quant(q) => {
                let ids = ids.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
                let mut out = vec![0f32; ids.len() * q.cols];
                for (i, &id) in ids.iter().enumerate() {
                    let r = id as usize;
                    if r >= q.rows {
                        return Err(graft_adapters::Error::Weight(format!(
                            "row {r} out of {}",
                            q.rows
                        )));
                    }
                    q.dequantize_row(r, &mut out[i * q.cols..(i + 1) * q.cols]);
                }
                Ok(Tensor::from_vec(out, (ids.len(), q.cols), &Device::Cpu)?)
            }
        }
    }

    fn dense(&self) -> graft_adapters::Result<Tensor> {
        match self {
            Weight::Dense(w) => Ok(w.clone()),
            Weight::Quant(q) => Ok(Tensor::from_vec(
                q.dequantize(),
                (q.rows, q.cols),
                &Device::Cpu,
            )?),
        }
    }
}

/// Base parameters of one module.
#[derive(Debug, Clone)]
pub struct BaseParams {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

/// The module table while and after building an architecture.
pub struct ModuleTable {
    pub inventory: ModuleInventory,
    pub params: Vec<BaseParams>,
    /// Quantize dense Linear weights (all but the output head) while loading, as
    /// `load_in_8bit` / `load_in_4bit` do.
    pub quantize: Option<QType>,
    /// Modules left in f32 because their shape does not fit the quantization blocks.
    pub kept_dense: Vec<String>,
}

impl ModuleTable {
    pub fn new(model_type: &str) -> Self {
        ModuleTable {
            inventory: ModuleInventory {
                model_type: model_type.into(),
                modules: Vec::new(),
            },
            params: Vec::new(),
            quantize: None,
            kept_dense: Vec::new(),
        }
    }

    fn push(&mut self, path: &str, kind: ModuleKind, head: bool, p: BaseParams) -> usize {
        self.inventory.modules.push(ModuleInfo {
            path: path.into(),
            kind,
            is_output_head: head,
        });
        self.params.push(p);
        self.params.len() - 1
    }

    pub fn linear(
        &mut self,
        w: &WeightStore,
        path: &str,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<usize> {
        let mut weight = w.get(&format!("{path}.weight"), &[out, inp])?;
        if let (Some(q), Weight::Dense(t)) = (self.quantize, &weight) {
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            match QMatrix::quantize(q, out, inp, &values) {
                Ok(m) => weight = Weight::Quant(Arc::new(m)),
                Err(graft_quant::Error::NotBlockAligned { .. }) => {
                    self.kept_dense.push(path.to_string())
                }
                Err(e) => return Err(crate::Error::Core(qerr(e))),
            }
        }
        let bias = if bias {
            Some(w.tensor(&format!("{path}.bias"), &[out])?)
        } else {
            None
        };
        let kind = ModuleKind::Linear {
            in_features: inp,
            out_features: out,
            bias: bias.is_some(),
        };
        Ok(self.push(path, kind, false, BaseParams { weight, bias }))
    }

    /// The output head; `tied_to` shares the embedding's weight (as `tie_word_embeddings`).
    pub fn head(
        &mut self,
        w: &WeightStore,
        path: &str,
        inp: usize,
        out: usize,
        tied_to: Option<usize>,
    ) -> Result<usize> {
        let weight = match tied_to {
            Some(e) => self.params[e].weight.clone(),
            None => w.get(&format!("{path}.weight"), &[out, inp])?,
        };
        let kind = ModuleKind::Linear {
            in_features: inp,
            out_features: out,
            bias: false,
        };
        Ok(self.push(path, kind, true, BaseParams { weight, bias: None }))
    }

    pub fn embedding(
        &mut self,
        w: &WeightStore,
        path: &str,
        num: usize,
        dim: usize,
    ) -> Result<usize> {
        let weight = w.get(&format!("{path}.weight"), &[num, dim])?;
        Ok(self.push(
            path,
            ModuleKind::Embedding {
                num_embeddings: num,
                dim,
            },
            false,
            BaseParams { weight, bias: None },
        ))
    }

    pub fn norm(
        &mut self,
        w: &WeightStore,
        path: &str,
        dim: usize,
        bias: bool,
        eps: f64,
        kind: NormKind,
    ) -> Result<Norm> {
        let weight = Weight::Dense(w.tensor(&format!("{path}.weight"), &[dim])?);
        let bias = if bias {
            Some(w.tensor(&format!("{path}.bias"), &[dim])?)
        } else {
            None
        };
        let id = self.push(
            path,
            ModuleKind::Norm {
                dim,
                bias: bias.is_some(),
            },
            false,
            BaseParams { weight, bias },
        );
        Ok(Norm {
            id,
            eps,
            kind,
            unit_offset: false,
        })
    }
}
