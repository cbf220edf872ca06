//! GGUF (versions 2 and 3), parsed as hostile input: every count, length, size and offset is
//! bounded against the bytes that remain before anything is allocated (the checks llama.cpp
//! added after its CVEs, and the caps of @huggingface/gguf).

use std::collections::BTreeMap;

use graft_quant::QType;

/// GGUF parse errors; each names what was wrong and where.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum GgufError {
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    BadVersion(u32),
    #[error("GGUF file ends early: {what} needs {need} bytes at offset {at}, {have} remain")]
    Truncated {
        what: String,
        need: u64,
        at: u64,
        have: u64,
    },
    #[error("GGUF {what} = {value} is beyond the limit of {limit}")]
    TooLarge {
        what: String,
        value: u64,
        limit: u64,
    },
    #[error("GGUF metadata `{key}`: {why}")]
    BadValue { key: String, why: String },
    #[error("GGUF tensor `{name}`: {why}")]
    BadTensor { name: String, why: String },
}

type R<T> = std::result::Result<T, GgufError>;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    pub qtype: QType,
    /// Byte offset within the data section.
    pub offset: u64,
    pub nbytes: u64,
}

/// A parsed GGUF file: metadata, tensor infos and where the data section starts.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
}

// DoS caps (as @huggingface/gguf); real files are far below them.
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 16;
const MAX_STRING: u64 = 16 << 20;
const MAX_ARRAY: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;
const MAX_DIM: u64 = 1 << 32;
const MAX_NAME: u64 = 256;
const MAX_ALIGNMENT: u64 = 1 << 16;

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> R<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.into(),
                need: n,
                at: self.pos as u64,
                have: self.remaining(),
            });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> R<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> R<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> R<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    fn string(&mut self, what: &str, cap: u64) -> R<String> {
        let n = self.u64(what)?;
        if n > cap {
            return Err(GgufError::TooLarge {
                what: format!("{what} length"),
                value: n,
                limit: cap,
            });
        }
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::BadValue {
            key: what.into(),
            why: "not UTF-8".into(),
        })
    }

    fn value(&mut self, key: &str, ty: u32, depth: u32) -> R<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(key)?[0]),
            1 => Value::I8(self.arr::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => match self.arr::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                v => {
                    return Err(GgufError::BadValue {
                        key: key.into(),
                        why: format!("bool byte {v}"),
                    })
                }
            },
            8 => Value::String(self.string(key, MAX_STRING)?),
            9 => {
                if depth > 0 {
                    return Err(GgufError::BadValue {
                        key: key.into(),
                        why: "nested arrays are not allowed".into(),
                    });
                }
                let ety = self.u32(key)?;
                let n = self.u64(key)?;
                if n > MAX_ARRAY {
                    return Err(GgufError::TooLarge {
                        what: format!("array `{key}` length"),
                        value: n,
                        limit: MAX_ARRAY,
                    });
                }
                // Every element takes at least one byte (strings at least 8): bound by what remains.
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => {
                        return Err(GgufError::BadValue {
                            key: key.into(),
                            why: format!("array element type {ety}"),
                        })
                    }
                };
                if n.saturating_mul(min) > self.remaining() {
                    return Err(GgufError::Truncated {
                        what: format!("array `{key}`"),
                        need: n.saturating_mul(min),
                        at: self.pos as u64,
                        have: self.remaining(),
                    });
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(key, ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(key)?)),
            other => {
                return Err(GgufError::BadValue {
                    key: key.into(),
                    why: format!("unknown value type {other}"),
                })
            }
        })
    }
}

fn ggml_type(t: u32) -> Option<QType> {
    Some(match t {
        0 => QType::F32,
        1 => QType::F16,
        2 => QType::Q4_0,
        3 => QType::Q4_1,
        6 => QType::Q5_0,
        7 => QType::Q5_1,
        8 => QType::Q8_0,
        10 => QType::Q2_K,
        11 => QType::Q3_K,
        12 => QType::Q4_K,
        13 => QType::Q5_K,
        14 => QType::Q6_K,
        30 => QType::BF16,
        _ => return None,
    })
}

fn ggml_type_name(t: u32) -> String {
    let n = match t {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        _ => "",
    };
    if n.is_empty() {
        format!("type {t}")
    } else {
        format!("{n} (type {t})")
    }
}

impl Gguf {
    /// Parses the header of a GGUF file held in memory and checks every tensor against the data.
    pub fn parse(bytes: &[u8]) -> R<Self> {
        let mut r = Reader { b: bytes, pos: 0 };
        let magic: [u8; 4] = r.arr("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::BadVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        if n_tensors > MAX_TENSORS {
            return Err(GgufError::TooLarge {
                what: "tensor count".into(),
                value: n_tensors,
                limit: MAX_TENSORS,
            });
        }
        let n_kv = r.u64("metadata count")?;
        if n_kv > MAX_KV {
            return Err(GgufError::TooLarge {
                what: "metadata count".into(),
                value: n_kv,
                limit: MAX_KV,
            });
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key", 65535)?;
            if key.is_empty() {
                return Err(GgufError::BadValue {
                    key,
                    why: "empty key".into(),
                });
            }
            let ty = r.u32(&key)?;
            let v = r.value(&key, ty, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(GgufError::BadValue {
                    key,
                    why: "duplicate key".into(),
                });
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::U32(a)) => u64::from(*a),
            Some(_) => {
                return Err(GgufError::BadValue {
                    key: "general.alignment".into(),
                    why: "must be a u32".into(),
                })
            }
        };
        if alignment == 0 || !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
            return Err(GgufError::BadValue {
                key: "general.alignment".into(),
                why: format!("{alignment} is not a power of two up to {MAX_ALIGNMENT}"),
            });
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = r.string("tensor name", MAX_NAME)?;
            let bad = |why: String| GgufError::BadTensor {
                name: name.clone(),
                why,
            };
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(format!(
                    "{n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut numel: u64 = 1;
            for _ in 0..n_dims {
                let d = r.u64(&name)?;
                if d > MAX_DIM {
                    return Err(bad(format!("dimension {d} exceeds {MAX_DIM}")));
                }
                numel = numel
                    .checked_mul(d)
                    .ok_or_else(|| bad("element count overflows".into()))?;
                dims.push(d);
            }
            let t = r.u32(&name)?;
            let qtype = ggml_type(t).ok_or_else(|| {
                bad(format!(
                    "tensor type {} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                    ggml_type_name(t)
                ))
            })?;
            let bl = qtype.block_len() as u64;
            if dims[0] % bl != 0 {
                return Err(bad(format!(
                    "row length {} is not a multiple of {qtype:?}'s {bl}-value block",
                    dims[0]
                )));
            }
            let nbytes = (numel / bl)
                .checked_mul(qtype.block_bytes() as u64)
                .ok_or_else(|| bad("byte size overflows".into()))?;
            let offset = r.u64(&name)?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {offset} is not aligned to {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(bad("duplicate tensor name".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                qtype,
                offset,
                nbytes,
            });
        }
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let data_len =
            (bytes.len() as u64)
                .checked_sub(data_offset)
                .ok_or(GgufError::Truncated {
                    what: "data section".into(),
                    need: data_offset,
                    at: 0,
                    have: bytes.len() as u64,
                })?;
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let end = t
                .offset
                .checked_add(t.nbytes)
                .ok_or_else(|| GgufError::BadTensor {
                    name: t.name.clone(),
                    why: "offset + size overflows".into(),
                })?;
            if end > data_len {
                return Err(GgufError::BadTensor {
                    name: t.name.clone(),
                    why: format!("data [{}, {end}) is past the end of the file (data section is {data_len} bytes)", t.offset),
                });
            }
            spans.push((t.offset, end, &t.name));
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(GgufError::BadTensor {
                    name: w[1].2.to_string(),
                    why: format!("overlaps tensor `{}`", w[0].2),
                });
            }
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            data_offset,
        })
    }

    /// The bytes of a tensor (bounds were checked at parse time).
    pub fn tensor_bytes<'a>(&self, file: &'a [u8], t: &TensorInfo) -> &'a [u8] {
        let start = (self.data_offset + t.offset) as usize;
        &file[start..start + t.nbytes as usize]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// Test helper and writer for small files: builds GGUF bytes (used by tests to craft hostile
/// files and fixtures).
pub mod writer {
    use super::Value;

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(u8::from(*x)),
            Value::String(s) => put_str(out, s),
            Value::Array(a) => {
                let et = a.first().map(type_id).unwrap_or(0);
                out.extend_from_slice(&et.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for e in a {
                    put_value(out, e);
                }
            }
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    /// A raw tensor for [`write`]: name, GGML dims, GGML type id, bytes.
    pub struct RawTensor {
        pub name: String,
        pub dims: Vec<u64>,
        pub ggml_type: u32,
        pub data: Vec<u8>,
    }

    /// Writes a version-3 GGUF with 32-byte alignment.
    pub fn write(metadata: &[(&str, Value)], tensors: &[RawTensor]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut off = 0u64;
        for t in tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
            off += (t.data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for t in tensors {
            out.extend_from_slice(&t.data);
            while out.len() % 32 != 0 {
                out.push(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::writer::{write, RawTensor};
    use super::*;

    fn small() -> Vec<u8> {
        write(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("x.count", Value::U32(3)),
            ],
            &[RawTensor {
                name: "a".into(),
                dims: vec![32, 2],
                ggml_type: 8,
                data: vec![0; 68],
            }],
        )
    }

    #[test]
    fn parses_what_it_writes() {
        let b = small();
        let g = Gguf::parse(&b).unwrap();
        assert_eq!(g.get_str("general.architecture"), Some("llama"));
        assert_eq!(g.tensors[0].nbytes, 68);
        assert_eq!(g.tensor_bytes(&b, &g.tensors[0]).len(), 68);
    }

    /// Every GGML type graft reads, with its id and its bytes for a (512, 3) tensor (gguf-py's
    /// GGML_QUANT_SIZES).
    #[test]
    fn ggml_type_ids_and_sizes() {
        let types = [
            (0, QType::F32, 4 * 1536),
            (1, QType::F16, 2 * 1536),
            (2, QType::Q4_0, 48 * 18),
            (3, QType::Q4_1, 48 * 20),
            (6, QType::Q5_0, 48 * 22),
            (7, QType::Q5_1, 48 * 24),
            (8, QType::Q8_0, 48 * 34),
            (10, QType::Q2_K, 6 * 84),
            (11, QType::Q3_K, 6 * 110),
            (12, QType::Q4_K, 6 * 144),
            (13, QType::Q5_K, 6 * 176),
            (14, QType::Q6_K, 6 * 210),
            (30, QType::BF16, 2 * 1536),
        ];
        for (id, q, bytes) in types {
            let b = write(
                &[],
                &[RawTensor {
                    name: "t".into(),
                    dims: vec![512, 3],
                    ggml_type: id,
                    data: vec![0; bytes],
                }],
            );
            let g = Gguf::parse(&b).unwrap();
            assert_eq!((g.tensors[0].qtype, g.tensors[0].nbytes), (q, bytes as u64));
        }
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let b = small();
        let g = Gguf::parse(&b).unwrap();
        let end = (g.data_offset + g.tensors[0].offset + g.tensors[0].nbytes) as usize;
        for cut in 0..end {
            assert!(Gguf::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_headers() {
        let mut b = small();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd tensor count
        assert!(matches!(Gguf::parse(&b), Err(GgufError::TooLarge { .. })));
        let b = write(&[("general.alignment", Value::U32(0))], &[]);
        assert!(matches!(Gguf::parse(&b), Err(GgufError::BadValue { .. })));
        let b = write(
            &[],
            &[RawTensor {
                name: "t".into(),
                dims: vec![1 << 32, 1 << 32, 1 << 32],
                ggml_type: 0,
                data: vec![],
            }],
        );
        assert!(matches!(Gguf::parse(&b), Err(GgufError::BadTensor { .. })));
        let b = write(
            &[],
            &[RawTensor {
                name: "t".into(),
                dims: vec![256],
                ggml_type: 15,
                data: vec![0; 292],
            }],
        );
        let e = Gguf::parse(&b).unwrap_err().to_string();
        assert!(e.contains("Q8_K (type 15) is not supported"), "{e}");
        // a K-quant row must be whole 256-value super-blocks
        let b = write(
            &[],
            &[RawTensor {
                name: "t".into(),
                dims: vec![32],
                ggml_type: 12,
                data: vec![0; 32],
            }],
        );
        let e = Gguf::parse(&b).unwrap_err().to_string();
        assert!(e.contains("Q4_K's 256-value block"), "{e}");
        let mut b = write(
            &[],
            &[RawTensor {
                name: "t".into(),
                dims: vec![32],
                ggml_type: 0,
                data: vec![0; 128],
            }],
        );
        let n = b.len();
        b.truncate(n - 64); // offset + size past the end
        assert!(matches!(Gguf::parse(&b), Err(GgufError::BadTensor { .. })));
        let mut b = small();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Gguf::parse(&b).unwrap_err(), GgufError::BadVersion(1));
    }
}
