//! CPU kernels. Weight rows are the outer loop (each row is decoded once per call, whatever the
//! number of tokens); rows are split across threads. For the GGML block formats the
//! activations are quantized to 8 bits per 32-value block (as llama.cpp does) and the block dot
//! products run in integers; other formats dequantize a row into a buffer and use f32 dots.

use crate::{QMatrix, QType, NF4_CODE};

/// Activations quantized per 32-value block: i8 values, one f32 scale and the block's sum.
pub struct QActivations {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<f32>,
}

/// Quantizes rows of `x` (n × cols, cols a multiple of 32) to 8-bit blocks.
pub fn quantize_activations(x: &[f32]) -> QActivations {
    let nb = x.len() / 32;
    let mut q = vec![0i8; x.len()];
    let mut d = Vec::with_capacity(nb);
    let mut sum = Vec::with_capacity(nb);
    for (b, (xs, qs)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let _ = b;
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = amax / 127.0;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        let mut acc = 0i32;
        for (qv, xv) in qs.iter_mut().zip(xs) {
            let v = (xv * inv).round() as i32;
            *qv = v as i8;
            acc += v;
        }
        d.push(s);
        sum.push(acc as f32 * s);
    }
    QActivations { q, d, sum }
}

#[inline(always)]
fn dot_i8_32(a: &[i8; 32], b: &[i8; 32]) -> i32 {
    let mut acc = 0i32;
    for j in 0..32 {
        acc += a[j] as i32 * b[j] as i32;
    }
    acc
}

#[inline(always)]
fn unpack_nibbles(bytes: &[u8], out: &mut [i8; 32], offset: i8) {
    for j in 0..16 {
        out[j] = (bytes[j] & 0x0f) as i8 - offset;
        out[j + 16] = (bytes[j] >> 4) as i8 - offset;
    }
}

fn as_block(s: &[i8]) -> &[i8; 32] {
    // chunks of exactly 32 are produced by the callers
    s.try_into().unwrap_or(&[0; 32])
}

/// Computes rows `r0..r1` of the output for all `n` tokens into `out` ((r1 − r0) × n, row-major by weight row).
fn rows_block_q(m: &QMatrix, xa: &QActivations, n: usize, r0: usize, r1: usize, out: &mut [f32]) {
    let rb = m.data.len() / m.rows.max(1);
    let nb = m.cols / 32;
    let mut w = [0i8; 32];
    for r in r0..r1 {
        let row = &m.data[r * rb..(r + 1) * rb];
        for t in 0..n {
            let mut acc = 0f32;
            for b in 0..nb {
                let xq = as_block(&xa.q[(t * nb + b) * 32..(t * nb + b + 1) * 32]);
                let dx = xa.d[t * nb + b];
                match m.qtype {
                    QType::Q8_0 => {
                        let blk = &row[b * 34..(b + 1) * 34];
                        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        for j in 0..32 {
                            w[j] = blk[2 + j] as i8;
                        }
                        acc += dw * dx * dot_i8_32(&w, xq) as f32;
                    }
                    QType::Q4_0 => {
                        let blk = &row[b * 18..(b + 1) * 18];
                        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        unpack_nibbles(&blk[2..18], &mut w, 8);
                        acc += dw * dx * dot_i8_32(&w, xq) as f32;
                    }
                    QType::Q4_1 => {
                        let blk = &row[b * 20..(b + 1) * 20];
                        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                        let mw = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                        unpack_nibbles(&blk[4..20], &mut w, 0);
                        acc += dw * dx * dot_i8_32(&w, xq) as f32 + mw * xa.sum[t * nb + b];
                    }
                    _ => {}
                }
            }
            out[(r - r0) * n + t] = acc;
        }
    }
}

fn rows_block_f(m: &QMatrix, x: &[f32], n: usize, r0: usize, r1: usize, out: &mut [f32]) {
    let mut buf = vec![0f32; m.cols];
    for r in r0..r1 {
        m.dequantize_row(r, &mut buf);
        for t in 0..n {
            let xs = &x[t * m.cols..(t + 1) * m.cols];
            let mut acc = [0f32; 8];
            let mut ch = buf.chunks_exact(8).zip(xs.chunks_exact(8));
            for (a, b) in &mut ch {
                for k in 0..8 {
                    acc[k] += a[k] * b[k];
                }
            }
            let mut s: f32 = acc.iter().sum();
            let tail = m.cols - m.cols % 8;
            for k in tail..m.cols {
                s += buf[k] * xs[k];
            }
            out[(r - r0) * n + t] = s;
        }
    }
}

/// How many threads to use for a matrix of this size.
fn threads_for(work: usize) -> usize {
    if work < 1 << 16 {
        return 1;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16)
}

/// y (n, rows) = x (n, cols) · Wᵀ.
pub fn matmul(m: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let quantized = matches!(m.qtype, QType::Q8_0 | QType::Q4_0 | QType::Q4_1);
    let xa = if quantized {
        Some(quantize_activations(x))
    } else {
        None
    };
    let threads = threads_for(m.rows * m.cols * n.max(1)).min(m.rows.max(1));
    // out_t is (rows, n); transposed into (n, rows) at the end.
    let mut out_t = vec![0f32; m.rows * n];
    let per = m.rows.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        for (ci, chunk) in out_t.chunks_mut(per * n).enumerate() {
            let r0 = ci * per;
            let r1 = (r0 + per).min(m.rows);
            let xa = xa.as_ref();
            let mut work = move || match xa {
                Some(xa) => rows_block_q(m, xa, n, r0, r1, chunk),
                None => rows_block_f(m, x, n, r0, r1, chunk),
            };
            if threads == 1 {
                work();
            } else {
                s.spawn(work);
            }
        }
    });
    if n == 1 {
        return out_t;
    }
    let mut y = vec![0f32; n * m.rows];
    for r in 0..m.rows {
        for t in 0..n {
            y[t * m.rows + r] = out_t[r * n + t];
        }
    }
    y
}

/// Keeps the NF4 table referenced from here for readers of the kernel.
#[allow(dead_code)]
const _NF4: [f32; 16] = NF4_CODE;

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                y[t * rows + r] = (0..cols).map(|k| w[r * cols + k] * x[t * cols + k]).sum();
            }
        }
        y
    }

    /// Each kernel equals "dequantize, then f32 matmul" (tightly for float formats; within the
    /// 8-bit activation rounding for the GGML block formats), over many shapes.
    #[test]
    fn kernels_match_dequantized_reference_over_shapes() {
        for &(rows, cols, n) in &[
            (3, 33, 2),
            (7, 1, 1),
            (1, 64, 1),
            (3, 64, 2),
            (17, 128, 1),
            (5, 192, 7),
            (300, 256, 1),
            (260, 320, 3),
            (64, 1024, 1),
        ] {
            for q in [
                QType::F32,
                QType::F16,
                QType::BF16,
                QType::Int8,
                QType::Q8_0,
                QType::Q4_0,
                QType::Q4_1,
                QType::Nf4,
            ] {
                if cols % q.block_len() != 0 && q != QType::Nf4 {
                    continue;
                }
                let w = lcg(rows * cols, 7 + rows as u64);
                let x = lcg(n * cols, 11 + cols as u64);
                let m = QMatrix::quantize(q, rows, cols, &w).unwrap();
                let deq = m.dequantize();
                let want = reference(&deq, &x, rows, cols, n);
                let got = m.matmul(&x, n).unwrap();
                let act_quant = matches!(q, QType::Q8_0 | QType::Q4_0 | QType::Q4_1);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let (t, r) = (i / rows, i % rows);
                    // Rounding x to 8 bits moves each x by at most amax(block)/254, so the result
                    // moves by at most Σ_blocks Σ|w| · amax/254 (plus f32 summation noise).
                    let mut tol = 1e-4 * (cols as f32).sqrt();
                    if act_quant {
                        for b in 0..cols / 32 {
                            let xs = &x[t * cols + b * 32..t * cols + b * 32 + 32];
                            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                            let wsum: f32 = deq[r * cols + b * 32..r * cols + b * 32 + 32]
                                .iter()
                                .map(|v| v.abs())
                                .sum();
                            tol += wsum * amax / 254.0 * 1.01;
                        }
                    }
                    assert!(
                        (a - b).abs() <= tol,
                        "{q:?} {rows}x{cols} n={n} at {i}: {a} vs {b} (tol {tol})"
                    );
                }
            }
        }
    }

    #[test]
    fn quantization_error_is_bounded_per_format() {
        let (rows, cols) = (64, 256);
        let w = lcg(rows * cols, 3);
        for (q, max_rel) in [
            (QType::F16, 1e-3),
            (QType::BF16, 8e-3),
            (QType::Int8, 1e-2),
            (QType::Q8_0, 1e-2),
            (QType::Q4_0, 0.15),
            (QType::Q4_1, 0.1),
            (QType::Nf4, 0.16),
        ] {
            let m = QMatrix::quantize(q, rows, cols, &w).unwrap();
            let d = m.dequantize();
            let err = w
                .iter()
                .zip(&d)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err <= max_rel,
                "{q:?}: max abs error {err} on values in [-1, 1]"
            );
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(matches!(
            QMatrix::quantize(QType::Q4_0, 2, 33, &[0.0; 66]),
            Err(crate::Error::NotBlockAligned { .. })
        ));
        assert!(matches!(
            QMatrix::from_raw(QType::Q8_0, 2, 32, vec![0; 67], vec![]),
            Err(crate::Error::WrongSize { .. })
        ));
        assert!(matches!(
            QMatrix::quantize(QType::Q8_0, 1, 32, &[f32::NAN; 32]),
            Err(crate::Error::NonFinite { .. })
        ));
        let m = QMatrix::quantize(QType::Q8_0, 1, 32, &[0.5; 32]).unwrap();
        assert!(m.matmul(&[0.0; 31], 1).is_err());
    }
}
