//! Every `QType`: `QMatrix::from_raw` on arbitrary bytes and a small shape, `dequantize`, and
//! `matmul` / `matmul_shared` for a few tokens, which must agree with the dequantized matrix
//! times x (up to summation order); and `quantize` of arbitrary f32 values for the types graft
//! quantizes into, whose result must pass the same checks.
//!
//! Input: [qtype, rows, blocks, tokens, flags, data...]; `flags` bit 0 makes the column count
//! unaligned (an error expected), bits 1..3 take a few bytes off / add a few to the data.
#![no_main]

use std::sync::Arc;

use graft_quant::{QMatrix, QType};
use libfuzzer_sys::fuzz_target;

const TYPES: [QType; 15] = [
    QType::F32,
    QType::F16,
    QType::BF16,
    QType::Q8_0,
    QType::Q4_0,
    QType::Q4_1,
    QType::Q5_0,
    QType::Q5_1,
    QType::Q2_K,
    QType::Q3_K,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
    QType::Int8,
    QType::Nf4,
];

fn f32s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn check_matmul(q: &QMatrix, x: &[f32], n: usize) {
    let w = q.dequantize();
    assert_eq!(w.len(), q.rows * q.cols);
    let y = q.matmul(x, n).expect("input width is right");
    assert_eq!(y.len(), n * q.rows);
    let y2 = Arc::new(q.clone())
        .matmul_shared(x, n)
        .expect("input width is right");
    assert_eq!(y2.len(), n * q.rows);
    if !w.iter().all(|v| v.is_finite()) {
        return;
    }
    for t in 0..n {
        for r in 0..q.rows {
            let row = &w[r * q.cols..(r + 1) * q.cols];
            let xs = &x[t * q.cols..(t + 1) * q.cols];
            let exact: f64 = row.iter().zip(xs).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = row
                .iter()
                .zip(xs)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            if !mag.is_finite() || mag > 1e30 {
                continue;
            }
            let tol = 1e-4 * mag + 1e-30;
            for (which, got) in [
                ("matmul", y[t * q.rows + r]),
                ("matmul_shared", y2[t * q.rows + r]),
            ] {
                assert!(
                    (got as f64 - exact).abs() <= tol,
                    "{which} {:?} {}x{} token {t} row {r}: {got} vs {exact} (|.| sum {mag})",
                    q.qtype,
                    q.rows,
                    q.cols
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let qtype = TYPES[data[0] as usize % TYPES.len()];
    let rows = (data[1] % 9) as usize;
    let blocks = (data[2] % 5) as usize;
    let n = (data[3] % 4) as usize;
    let flags = data[4];
    let rest = &data[5..];
    let mut cols = blocks * qtype.block_len();
    if flags & 1 == 1 {
        cols += 1 + (flags as usize >> 4);
    }

    // x: a few tokens of small finite values taken from the input (reused cyclically).
    let xs: Vec<f32> = (0..n * cols)
        .map(|i| {
            let b = rest.get(i % rest.len().max(1)).copied().unwrap_or(1);
            (b as i8) as f32 / 16.0
        })
        .collect();

    // The raw matrix.
    let expected = match qtype {
        QType::Nf4 => (rows * cols).div_ceil(2),
        _ => QMatrix::row_bytes(qtype, cols)
            .map(|rb| rb * rows)
            .unwrap_or(rows * cols),
    };
    let delta = ((flags >> 1) & 7) as isize - 3; // −3..=4; 0 keeps the size right
    let want = (expected as isize + if delta == 1 { 0 } else { delta }).max(0) as usize;
    let mut bytes: Vec<u8> = rest
        .iter()
        .copied()
        .cycle()
        .take(if rest.is_empty() { 0 } else { want })
        .collect();
    bytes.resize(want, 0);
    let n_scales = match qtype {
        QType::Int8 => rows,
        QType::Nf4 => (rows * cols).div_ceil(64),
        _ => 0,
    };
    let scales: Vec<f32> = f32s(rest)
        .chain(std::iter::repeat(0.5))
        .take(n_scales)
        .collect();
    match QMatrix::from_raw(qtype, rows, cols, bytes, scales) {
        Ok(q) => {
            assert_eq!((q.rows, q.cols), (rows, cols));
            check_matmul(&q, &xs, n);
            // a wrong input width is an error, never a panic
            assert!(q.matmul(&xs[..xs.len().saturating_sub(1)], n).is_err() || cols == 0 || n == 0);
        }
        Err(_) => {}
    }

    // Quantizing arbitrary values (NaN and infinities are refused).
    if qtype.can_quantize() {
        let w: Vec<f32> = f32s(rest).take(rows * cols).collect();
        if w.len() == rows * cols {
            if let Ok(q) = QMatrix::quantize(qtype, rows, cols, &w) {
                let d = q.dequantize();
                assert_eq!(d.len(), w.len());
                check_matmul(&q, &xs, n);
            }
        }
    }
});
