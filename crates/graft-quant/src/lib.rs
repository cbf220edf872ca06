//! graft-quant: quantized weight matrices and their CPU matrix multiplication.
//!
//! Formats:
//! - GGML `Q8_0` (blocks of 32: f16 scale + 32 i8), `Q4_0` (f16 scale + 16 bytes of nibbles,
//!   value = (q − 8)·d), `Q4_1` (f16 scale, f16 min + nibbles, value = q·d + m), as llama.cpp
//!   lays them out (low nibbles are elements 0..16 of a block, high nibbles 16..32);
//! - GGML `Q5_0`, `Q5_1` (Q4's blocks of 32 plus a fifth bit per value) and the K-quants
//!   `Q2_K`, `Q3_K`, `Q4_K`, `Q5_K`, `Q6_K` (super-blocks of 256 with packed sub-block scales),
//!   decoded as ggml and gguf-py decode them (`blocks.rs`); these come from GGUF files, so
//!   graft reads them but does not quantize into them;
//! - `Int8` rows with one absmax scale per row (`load_in_8bit`'s vector-wise quantization,
//!   without LLM.int8's outlier decomposition);
//! - `Nf4`: 4-bit NormalFloat with one absmax per block of 64, as bitsandbytes defines it
//!   (`load_in_4bit`, without double quantization);
//! - `F32`, `F16`, `BF16` for completeness.
//!
//! A matrix is (rows = out_features, cols = in_features), stored row by row; a row is whole
//! blocks. Matmul dequantizes block by block and never materialises an f32 copy of the weights.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod blocks;
pub mod cpu;
pub mod gemm;
pub mod int8;
mod kernels;
#[cfg(test)]
mod kquant_tests;
pub mod pool;

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error("{qtype:?}: a row of {cols} values is not a whole number of {block}-value blocks")]
    NotBlockAligned {
        qtype: QType,
        cols: usize,
        block: usize,
    },
    #[error("{qtype:?} matrix {rows}x{cols} needs {expected} bytes, got {got}")]
    WrongSize {
        qtype: QType,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("matrix size {rows}x{cols} overflows")]
    Overflow { rows: usize, cols: usize },
    #[error("input has {got} values per row, the matrix expects {expected}")]
    InputWidth { expected: usize, got: usize },
    #[error("value at index {index} is not finite; cannot quantize")]
    NonFinite { index: usize },
    #[error("{qtype:?} is read from GGUF files; graft does not quantize into it")]
    CannotQuantize { qtype: QType },
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A weight format.
// The GGML formats keep GGML's names (Q4_K, not Q4K).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Int8,
    Nf4,
}

impl QType {
    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            QType::F32 | QType::F16 | QType::BF16 | QType::Int8 => 1,
            QType::Q8_0 | QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 => 32,
            QType::Nf4 => 64,
            QType::Q2_K | QType::Q3_K | QType::Q4_K | QType::Q5_K | QType::Q6_K => 256,
        }
    }

    /// Bytes per block in `data` (per-row / per-block f32 scales of Int8/Nf4 live in `scales`).
    pub fn block_bytes(self) -> usize {
        match self {
            QType::F32 => 4,
            QType::F16 | QType::BF16 => 2,
            QType::Int8 => 1,
            QType::Q8_0 => 34,
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q2_K => 84,
            QType::Q3_K => 110,
            QType::Q4_K => 144,
            QType::Q5_K => 176,
            QType::Q6_K => 210,
            QType::Nf4 => 32,
        }
    }

    /// Bits per weight, scales included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            QType::Nf4 => 4.5,
            other => other.block_bytes() as f64 * 8.0 / other.block_len() as f64,
        }
    }

    /// Parses the names the CLI uses.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "f32" => QType::F32,
            "f16" => QType::F16,
            "bf16" => QType::BF16,
            "q8_0" => QType::Q8_0,
            "q4_0" => QType::Q4_0,
            "q4_1" => QType::Q4_1,
            "q5_0" => QType::Q5_0,
            "q5_1" => QType::Q5_1,
            "q2_k" => QType::Q2_K,
            "q3_k" => QType::Q3_K,
            "q4_k" => QType::Q4_K,
            "q5_k" => QType::Q5_K,
            "q6_k" => QType::Q6_K,
            "int8" => QType::Int8,
            "nf4" => QType::Nf4,
            _ => return None,
        })
    }

    /// Whether `QMatrix::quantize` can produce this format (the GGUF-only ones are read, not
    /// made).
    pub fn can_quantize(self) -> bool {
        !matches!(
            self,
            QType::Q5_0
                | QType::Q5_1
                | QType::Q2_K
                | QType::Q3_K
                | QType::Q4_K
                | QType::Q5_K
                | QType::Q6_K
        )
    }
}

/// bitsandbytes' NF4 code book (`get_4bit_type("nf4")`): quantiles of N(0, 1) scaled to [−1, 1].
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The bytes of a matrix: owned, or a range of a shared buffer (e.g. a GGUF file read once,
/// so that loading does not hold the weights twice).
#[derive(Debug, Clone)]
pub enum QData {
    Owned(Vec<u8>),
    Shared {
        buf: std::sync::Arc<Vec<u8>>,
        start: usize,
        len: usize,
    },
}

impl QData {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            QData::Owned(v) => v,
            QData::Shared { buf, start, len } => &buf[*start..*start + *len],
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for QData {
    fn from(v: Vec<u8>) -> Self {
        QData::Owned(v)
    }
}

impl std::ops::Deref for QData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// A quantized (out, in) matrix.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub qtype: QType,
    pub rows: usize,
    pub cols: usize,
    /// Row-major blocks.
    pub data: QData,
    /// Int8: one scale per row (absmax/127). Nf4: one absmax per block. Empty otherwise.
    pub scales: Vec<f32>,
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    kernels::f16_at(b, i)
}

impl QMatrix {
    /// Bytes per row of `data`.
    pub fn row_bytes(qtype: QType, cols: usize) -> Result<usize> {
        if qtype == QType::Nf4 {
            // NF4 blocks run over the flattened matrix (as bitsandbytes does), not per row.
            return Ok(cols.div_ceil(2));
        }
        let bl = qtype.block_len();
        if !cols.is_multiple_of(bl) {
            return Err(Error::NotBlockAligned {
                qtype,
                cols,
                block: bl,
            });
        }
        (cols / bl)
            .checked_mul(qtype.block_bytes())
            .ok_or(Error::Overflow { rows: 1, cols })
    }

    /// Wraps raw bytes (e.g. from a GGUF file), checking the size.
    pub fn from_raw(
        qtype: QType,
        rows: usize,
        cols: usize,
        data: impl Into<QData>,
        scales: Vec<f32>,
    ) -> Result<Self> {
        let data: QData = data.into();
        let numel = rows
            .checked_mul(cols)
            .ok_or(Error::Overflow { rows, cols })?;
        let expected = if qtype == QType::Nf4 {
            numel.div_ceil(2)
        } else {
            Self::row_bytes(qtype, cols)?
                .checked_mul(rows)
                .ok_or(Error::Overflow { rows, cols })?
        };
        if data.len() != expected {
            return Err(Error::WrongSize {
                qtype,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        let n_scales = match qtype {
            QType::Int8 => rows,
            QType::Nf4 => numel.div_ceil(64),
            _ => 0,
        };
        if scales.len() != n_scales {
            return Err(Error::WrongSize {
                qtype,
                rows,
                cols,
                expected: n_scales,
                got: scales.len(),
            });
        }
        Ok(QMatrix {
            qtype,
            rows,
            cols,
            data,
            scales,
        })
    }

    /// Quantizes an f32 (rows, cols) matrix.
    pub fn quantize(qtype: QType, rows: usize, cols: usize, w: &[f32]) -> Result<Self> {
        if !qtype.can_quantize() {
            return Err(Error::CannotQuantize { qtype });
        }
        if w.len()
            != rows
                .checked_mul(cols)
                .ok_or(Error::Overflow { rows, cols })?
        {
            return Err(Error::InputWidth {
                expected: rows * cols,
                got: w.len(),
            });
        }
        if let Some(index) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { index });
        }
        if qtype == QType::Nf4 {
            return Ok(Self::quantize_nf4(rows, cols, w));
        }
        let rb = Self::row_bytes(qtype, cols)?;
        let mut data = Vec::with_capacity(rb * rows);
        let mut scales = Vec::new();
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            match qtype {
                QType::F32 => row
                    .iter()
                    .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
                QType::F16 => row
                    .iter()
                    .for_each(|v| data.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
                QType::BF16 => row
                    .iter()
                    .for_each(|v| data.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
                QType::Int8 => {
                    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = amax / 127.0;
                    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                    scales.push(s);
                    data.extend(
                        row.iter()
                            .map(|v| ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8),
                    );
                }
                QType::Q8_0 => {
                    for b in row.chunks_exact(32) {
                        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let d = amax / 127.0;
                        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                        data.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                        data.extend(b.iter().map(|v| ((v * id).round() as i8) as u8));
                    }
                }
                QType::Q4_0 => {
                    // As ggml's quantize_row_q4_0_ref: the value of largest magnitude maps to −8.
                    for b in row.chunks_exact(32) {
                        let mut amax = 0f32;
                        let mut max = 0f32;
                        for v in b {
                            if v.abs() > amax {
                                amax = v.abs();
                                max = *v;
                            }
                        }
                        let d = max / -8.0;
                        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                        data.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                        for j in 0..16 {
                            let q0 = ((b[j] * id + 8.5) as i32).min(15) as u8;
                            let q1 = ((b[j + 16] * id + 8.5) as i32).min(15) as u8;
                            data.push(q0 | (q1 << 4));
                        }
                    }
                }
                QType::Q4_1 => {
                    for b in row.chunks_exact(32) {
                        let min = b.iter().fold(f32::INFINITY, |m, v| m.min(*v));
                        let max = b.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                        let d = (max - min) / 15.0;
                        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                        data.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                        data.extend_from_slice(&half::f16::from_f32(min).to_le_bytes());
                        for j in 0..16 {
                            let q0 = (((b[j] - min) * id + 0.5) as i32).min(15) as u8;
                            let q1 = (((b[j + 16] - min) * id + 0.5) as i32).min(15) as u8;
                            data.push(q0 | (q1 << 4));
                        }
                    }
                }
                // refused above
                QType::Nf4
                | QType::Q5_0
                | QType::Q5_1
                | QType::Q2_K
                | QType::Q3_K
                | QType::Q4_K
                | QType::Q5_K
                | QType::Q6_K => {}
            }
        }
        Ok(QMatrix {
            qtype,
            rows,
            cols,
            data: data.into(),
            scales,
        })
    }

    /// bitsandbytes' blockwise NF4: the flattened matrix in blocks of 64, one absmax each
    /// (the last block padded with zeros); element 2i in the high nibble of byte i.
    fn quantize_nf4(rows: usize, cols: usize, w: &[f32]) -> Self {
        let mut data = vec![0u8; w.len().div_ceil(2)];
        let mut scales = Vec::with_capacity(w.len().div_ceil(64));
        for (bi, b) in w.chunks(64).enumerate() {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            scales.push(amax);
            let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
            for (j, v) in b.iter().enumerate() {
                let e = bi * 64 + j;
                let q = nf4_index(v * inv);
                data[e / 2] |= if e % 2 == 0 { q << 4 } else { q };
            }
        }
        // A padded tail encodes 0.0 (code 7), as bitsandbytes' zero padding does.
        if w.len() % 2 == 1 {
            if let Some(last) = data.last_mut() {
                *last |= 7;
            }
        }
        QMatrix {
            qtype: QType::Nf4,
            rows,
            cols,
            data: data.into(),
            scales,
        }
    }

    /// Dequantizes row `r` into `out` (length `cols`).
    #[inline(always)]
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.qtype == QType::Nf4 {
            let base = r * self.cols;
            for (k, o) in out.iter_mut().enumerate() {
                let e = base + k;
                let byte = self.data[e / 2];
                let q = if e.is_multiple_of(2) {
                    byte >> 4
                } else {
                    byte & 0x0f
                };
                *o = NF4_CODE[q as usize] * self.scales[e / 64];
            }
            return;
        }
        let rb = self.data.len() / self.rows.max(1);
        let row = &self.data[r * rb..(r + 1) * rb];
        match self.qtype {
            QType::F32 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            QType::F16 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            QType::BF16 => {
                for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            QType::Int8 => {
                let s = self.scales[r];
                for (o, q) in out.iter_mut().zip(row) {
                    *o = (*q as i8) as f32 * s;
                }
            }
            QType::Q8_0 => {
                for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(34)) {
                    let d = f16_at(b, 0);
                    for (j, v) in o.iter_mut().enumerate() {
                        *v = (b[2 + j] as i8) as f32 * d;
                    }
                }
            }
            QType::Q4_0 => {
                for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(18)) {
                    let d = f16_at(b, 0);
                    for j in 0..16 {
                        o[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                        o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                    }
                }
            }
            QType::Q4_1 => {
                for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(20)) {
                    let d = f16_at(b, 0);
                    let m = f16_at(b, 2);
                    for j in 0..16 {
                        o[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                        o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                    }
                }
            }
            QType::Q5_0
            | QType::Q5_1
            | QType::Q2_K
            | QType::Q3_K
            | QType::Q4_K
            | QType::Q5_K
            | QType::Q6_K => {
                let (bl, bb) = (self.qtype.block_len(), self.qtype.block_bytes());
                for (o, b) in out.chunks_exact_mut(bl).zip(row.chunks_exact(bb)) {
                    blocks::dequantize_block(self.qtype, b, o);
                }
            }
            QType::Nf4 => {}
        }
    }

    /// The whole matrix in f32 (for tests and for DoRA's norm at load).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.dequantize_row(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        out
    }

    /// y (n, rows) = x (n, cols) · Wᵀ.
    pub fn matmul(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if x.len() != n * self.cols {
            return Err(Error::InputWidth {
                expected: self.cols,
                got: x.len() / n.max(1),
            });
        }
        Ok(kernels::matmul(self, x, n))
    }

    /// [`QMatrix::matmul`] for a few tokens (decode steps) on the spinning thread pool, which
    /// avoids a thread wake-up per call.
    pub fn matmul_shared(self: &std::sync::Arc<Self>, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if x.len() != n * self.cols {
            return Err(Error::InputWidth {
                expected: self.cols,
                got: x.len() / n.max(1),
            });
        }
        Ok(kernels::matvec_spin(self, x, n))
    }

    /// [`QMatrix::matmul_shared`] where each token's outputs are bit for bit those of a
    /// one-token call, whatever `n` is: one pass over the weights for the decode steps of
    /// several sequences, each getting the numbers it gets alone.
    pub fn matmul_per_token(self: &std::sync::Arc<Self>, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if x.len() != n * self.cols {
            return Err(Error::InputWidth {
                expected: self.cols,
                got: x.len() / n.max(1),
            });
        }
        Ok(kernels::matvec_spin_per_token(self, x, n))
    }

    /// Bytes held (data + scales).
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }
}

/// Nearest NF4 code (bitsandbytes' `dQuantizeNF4` compares against the midpoints).
fn nf4_index(x: f32) -> u8 {
    let mut best = 0usize;
    let mut bd = f32::INFINITY;
    for (i, c) in NF4_CODE.iter().enumerate() {
        let d = (x - c).abs();
        if d < bd {
            bd = d;
            best = i;
        }
    }
    best as u8
}
