//! Reading and writing safetensors files as hostile input: sizes are bounded before anything is
//! allocated, and every failure is a typed error naming the file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Refuse files larger than this (64 GiB): far beyond any adapter or small model we load.
pub const MAX_FILE_SIZE: u64 = 64 << 30;

/// A tensor read from a file: f32 on the CPU for the math, with the dtype it was stored in
/// (so that saving writes it back the same way).
#[derive(Debug, Clone)]
pub struct LoadedTensor {
    pub tensor: Tensor,
    pub dtype: DType,
}

/// Reads a whole file after checking its size.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(Error::FileTooLarge {
            path: path.display().to_string(),
            size,
            limit,
        });
    }
    // Grow as data arrives: a sparse or lying file must not reserve its claimed size up front.
    let mut buf = Vec::with_capacity(size.min(1 << 30) as usize);
    file.take(limit).read_to_end(&mut buf).map_err(io)?;
    Ok(buf)
}

fn to_f32(name: &str, dtype: Dtype, data: &[u8]) -> Result<(Vec<f32>, DType)> {
    let out = match dtype {
        Dtype::F32 => (
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F32,
        ),
        Dtype::F16 => (
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F16,
        ),
        Dtype::BF16 => (
            data.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16,
        ),
        Dtype::F64 => (
            data.chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
            DType::F64,
        ),
        other => {
            return Err(Error::BadDtype {
                name: name.into(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(out)
}

/// Parses safetensors bytes into f32 CPU tensors, keyed by name (sorted).
///
/// The `safetensors` crate bounds the header (100 MB), checks that it is JSON, that offsets are
/// in range, contiguous and non-overlapping, and that each byte length equals shape × dtype.
pub fn parse_safetensors(label: &str, bytes: &[u8]) -> Result<BTreeMap<String, LoadedTensor>> {
    precheck_header(label, bytes)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        path: label.into(),
        reason: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let (data, dtype) = to_f32(&name, view.dtype(), view.data())?;
        let tensor = Tensor::from_vec(data, view.shape(), &Device::Cpu)?;
        out.insert(name, LoadedTensor { tensor, dtype });
    }
    Ok(out)
}

/// Largest header we accept (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100 << 20;
/// Largest rank and dimension we accept: far beyond any real tensor, small enough that no
/// shape or stride computation can overflow.
const MAX_RANK: usize = 8;
const MAX_DIM: u64 = 1 << 32;
/// Largest product of dimensions (zeros counted as one): 2^40 values.
const MAX_SPAN: u64 = 1 << 40;

/// Validates the header before the `safetensors` crate sees it, so that every problem names the
/// tensor, and no dimension can overflow later shape arithmetic (even for zero-element tensors).
fn precheck_header(label: &str, bytes: &[u8]) -> Result<()> {
    let err = |reason: String| Error::Safetensors {
        path: label.into(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(err(format!(
            "file is {} bytes, too short for a header",
            bytes.len()
        )));
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n8);
    let avail = bytes.len() as u64 - 8;
    if n > MAX_HEADER {
        return Err(err(format!(
            "header length {n} exceeds the {MAX_HEADER}-byte limit"
        )));
    }
    if n > avail {
        return Err(err(format!("header length {n} is past the end of the file ({avail} bytes after the length); the file is truncated or corrupt")));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n as usize])
        .map_err(|e| err(format!("header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(entries) = header else {
        return Err(err("header is not a JSON object".into()));
    };
    let data_len = avail - n;
    let mut spans: Vec<(u64, u64, &str)> = Vec::new();
    for (name, info) in &entries {
        if name == "__metadata__" {
            continue;
        }
        let terr = |what: String| err(format!("tensor `{name}`: {what}"));
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| terr("no dtype".into()))?;
        let size: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            other => return Err(terr(format!("unknown dtype {other}"))),
        };
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| terr("no shape".into()))?;
        if shape.len() > MAX_RANK {
            return Err(terr(format!(
                "rank {} is more than {MAX_RANK}",
                shape.len()
            )));
        }
        let mut numel: u64 = 1;
        // The product of max(d, 1) bounds every stride, also for zero-element tensors.
        let mut span: u64 = 1;
        let mut dims = Vec::with_capacity(shape.len());
        for d in shape {
            let d = d
                .as_u64()
                .filter(|d| *d <= MAX_DIM)
                .ok_or_else(|| terr(format!("dimension {d} is not an integer up to {MAX_DIM}")))?;
            dims.push(d);
            span = span
                .checked_mul(d.max(1))
                .filter(|s| *s <= MAX_SPAN)
                .ok_or_else(|| terr(format!("shape {shape:?} is too large")))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| terr("element count overflows".into()))?;
        }
        let nbytes = numel
            .checked_mul(size)
            .ok_or_else(|| terr("byte size overflows".into()))?;
        let offs = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| terr("data_offsets must be [begin, end]".into()))?;
        let (b, e) = match (offs[0].as_u64(), offs[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(terr("data_offsets must be integers".into())),
        };
        if b > e || e > data_len {
            return Err(terr(format!(
                "data_offsets [{b}, {e}] are out of range (data section is {data_len} bytes)"
            )));
        }
        if e - b != nbytes {
            return Err(terr(format!(
                "shape {dims:?} of {dtype} needs {nbytes} bytes but data_offsets span {}",
                e - b
            )));
        }
        spans.push((b, e, name));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(err(format!(
                "tensors `{}` and `{}` overlap",
                w[0].2, w[1].2
            )));
        }
    }
    Ok(())
}

/// Reads a safetensors file.
pub fn load_safetensors(path: &Path) -> Result<BTreeMap<String, LoadedTensor>> {
    let bytes = read_file(path, MAX_FILE_SIZE)?;
    parse_safetensors(&path.display().to_string(), &bytes)
}

fn dtype_to_st(d: DType) -> Dtype {
    match d {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        _ => Dtype::F32,
    }
}

/// Serialises tensors (converted to each entry's dtype) with PEFT's `{"format": "pt"}` metadata.
pub fn serialize_safetensors(tensors: &BTreeMap<String, LoadedTensor>) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let flat = t
            .tensor
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = match t.dtype {
            DType::F16 => flat
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::BF16 => flat
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::F64 => flat
                .iter()
                .flat_map(|v| f64::from(*v).to_le_bytes())
                .collect(),
            _ => flat.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        owned.push((
            name.clone(),
            dtype_to_st(t.dtype),
            t.tensor.dims().to_vec(),
            bytes,
        ));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Safetensors {
                    path: n.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors {
        path: "<output>".into(),
        reason: e.to_string(),
    })
}

/// Checks a tensor for NaN/inf.
pub fn check_finite(name: &str, t: &Tensor) -> Result<()> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite { name: name.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_dtype_and_values() {
        let mut m = BTreeMap::new();
        let t = Tensor::new(&[[1.5f32, -2.0], [0.25, 3.0]], &Device::Cpu).unwrap();
        m.insert(
            "a".to_string(),
            LoadedTensor {
                tensor: t.clone(),
                dtype: DType::F32,
            },
        );
        m.insert(
            "b".to_string(),
            LoadedTensor {
                tensor: t,
                dtype: DType::BF16,
            },
        );
        let bytes = serialize_safetensors(&m).unwrap();
        let back = parse_safetensors("mem", &bytes).unwrap();
        assert_eq!(back["b"].dtype, DType::BF16);
        assert_eq!(
            back["a"].tensor.to_vec2::<f32>().unwrap(),
            vec![vec![1.5, -2.0], vec![0.25, 3.0]]
        );
    }

    #[test]
    fn hostile_headers_are_errors() {
        // header length larger than the file
        let mut b = 1_000_000u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(matches!(
            parse_safetensors("x", &b),
            Err(Error::Safetensors { .. })
        ));
        // header not JSON
        let mut b = 4u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"nope");
        assert!(matches!(
            parse_safetensors("x", &b),
            Err(Error::Safetensors { .. })
        ));
        // truncated below the 8-byte length
        assert!(parse_safetensors("x", &[1, 2, 3]).is_err());
    }
}
