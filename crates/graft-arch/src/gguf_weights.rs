//! Models from GGUF files: the file in memory, and its tensors under the Hugging Face names its
//! architecture maps them to, so that PEFT adapters trained on the Hugging Face model attach
//! unchanged. Quantized tensors stay quantized, pointing into the file's bytes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use graft_adapters::tensors::{read_file, MAX_FILE_SIZE};
use graft_quant::{QData, QMatrix, QType};

use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::table::Weight;
use crate::weights::WeightStore;

/// A GGUF file in memory with its parsed header.
pub struct GgufFile {
    /// Shared with the quantized weights, which point into it instead of copying.
    pub bytes: Arc<Vec<u8>>,
    pub header: Gguf,
}

impl GgufFile {
    /// Reads a `.gguf` file (at most [`MAX_FILE_SIZE`] bytes) and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read_file(path, MAX_FILE_SIZE)?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// Parses the header of GGUF bytes held in memory, keeping the bytes (moved, not copied)
    /// for the weights to point into. `label` names the file in error messages.
    pub fn from_bytes(bytes: Vec<u8>, label: &str) -> Result<Self> {
        let size = bytes.len() as u64;
        if size > MAX_FILE_SIZE {
            return Err(graft_adapters::Error::FileTooLarge {
                path: label.into(),
                size,
                limit: MAX_FILE_SIZE,
            }
            .into());
        }
        let header = Gguf::parse(&bytes).map_err(|e| Error::Gguf(format!("{label}: {e}")))?;
        Ok(GgufFile {
            bytes: Arc::new(bytes),
            header,
        })
    }
}

/// llama.cpp's converter permutes the rows of q_proj and k_proj from Hugging Face's rotate-half
/// RoPE layout to the interleaved one; this puts them back: HF row `h·D + t·D/2 + j` is GGUF row
/// `h·D + 2j + t`.
fn unpermute_rows(data: &[u8], rows: usize, row_bytes: usize, heads: usize) -> Result<Vec<u8>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::Gguf(format!(
            "cannot un-permute {rows} rows into {heads} RoPE heads"
        )));
    }
    let hd = rows / heads;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..hd / 2 {
                let hf = h * hd + t * (hd / 2) + j;
                let gg = h * hd + 2 * j + t;
                out[hf * row_bytes..(hf + 1) * row_bytes]
                    .copy_from_slice(&data[gg * row_bytes..(gg + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}

fn weight_of(file: &GgufFile, t: &TensorInfo, heads_for_permute: Option<usize>) -> Result<Weight> {
    let bytes = file.header.tensor_bytes(&file.bytes, t);
    let gerr = |e: graft_quant::Error| Error::Gguf(format!("tensor `{}`: {e}", t.name));
    match t.dims.as_slice() {
        [n] => {
            let n = *n as usize;
            let q = QMatrix::from_raw(t.qtype, 1, n, bytes.to_vec(), vec![]).map_err(gerr)?;
            let mut v = q.dequantize();
            if let Some(h) = heads_for_permute {
                // a q/k bias: its elements are the rows
                let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                let back = unpermute_rows(&raw, n, 4, h)?;
                v = back
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            }
            Ok(Weight::Dense(Tensor::from_vec(v, n, &Device::Cpu)?))
        }
        [cols, rows] => {
            let (rows, cols) = (*rows as usize, *cols as usize);
            let row_bytes = QMatrix::row_bytes(t.qtype, cols).map_err(gerr)?;
            let data: QData = match heads_for_permute {
                Some(h) => unpermute_rows(bytes, rows, row_bytes, h)?.into(),
                None => QData::Shared {
                    buf: file.bytes.clone(),
                    start: (file.header.data_offset + t.offset) as usize,
                    len: t.nbytes as usize,
                },
            };
            let q = QMatrix::from_raw(t.qtype, rows, cols, data, vec![]).map_err(gerr)?;
            if t.qtype == QType::F32 {
                Ok(Weight::Dense(Tensor::from_vec(
                    q.dequantize(),
                    (rows, cols),
                    &Device::Cpu,
                )?))
            } else {
                Ok(Weight::Quant(Arc::new(q)))
            }
        }
        other => Err(Error::Gguf(format!(
            "tensor `{}` has {} dimensions; expected 1 or 2",
            t.name,
            other.len()
        ))),
    }
}

/// The weights of a GGUF under Hugging Face names: `hf_name` maps each tensor's GGUF name to
/// its Hugging Face parameter name, and `permuted_heads` gives, for the parameters llama.cpp's
/// converter permuted (q/k rows of arch `llama`), the number of RoPE heads to undo it over.
pub fn weights(
    file: &GgufFile,
    hf_name: impl Fn(&str) -> Option<String>,
    permuted_heads: impl Fn(&str) -> Option<usize>,
    norm_shift: impl Fn(&str) -> f32,
) -> Result<WeightStore> {
    let mut map = HashMap::new();
    let mut unknown = Vec::new();
    for t in &file.header.tensors {
        let Some(name) = hf_name(&t.name) else {
            unknown.push(t.name.clone());
            continue;
        };
        // an empty name: a tensor the configuration was read from
        if name.is_empty() {
            continue;
        }
        let permute = permuted_heads(&name);
        let mut w = weight_of(file, t, permute)?;
        let shift = norm_shift(&name);
        if shift != 0.0 {
            w = match w {
                Weight::Dense(t) => Weight::Dense((t - f64::from(shift))?),
                Weight::Quant(_) => {
                    return Err(Error::Gguf(format!(
                        "norm tensor `{name}` is quantized; graft reads norms stored as floats"
                    )))
                }
            };
        }
        map.insert(name, w);
    }
    if !unknown.is_empty() {
        return Err(Error::Gguf(format!(
            "tensors graft does not know how to use: {unknown:?}"
        )));
    }
    Ok(WeightStore::from_map(map))
}
