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

/// Σ over the blocks of row `r` of (|each f16 scale or min of the block| · 4096 · Σ|x| over the
/// block): a bound on the offsets the kernels apply per block (sub-block scales are at most
/// 127, quants at most 32 from their midpoint).
fn offset_bound(q: &QMatrix, r: usize, xs: &[f32]) -> f64 {
    let fields: &[usize] = match q.qtype {
        QType::Q8_0 | QType::Q4_0 | QType::Q5_0 => &[0],
        QType::Q4_1 | QType::Q5_1 | QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q6_K => &[208],
        _ => return 0.0,
    };
    let (bl, bb) = (q.qtype.block_len(), q.qtype.block_bytes());
    let row_bytes = q.cols / bl * bb;
    let row = &q.data[r * row_bytes..(r + 1) * row_bytes];
    row.chunks_exact(bb)
        .zip(xs.chunks_exact(bl))
        .map(|(blk, x)| {
            let scales: f64 = fields
                .iter()
                .map(|&i| f64::from(half_to_f32(blk[i], blk[i + 1]).abs()))
                .sum();
            let xsum: f64 = x.iter().map(|v| f64::from(v.abs())).sum();
            scales * 4096.0 * xsum
        })
        .sum()
}

/// IEEE half → f32.
fn half_to_f32(lo: u8, hi: u8) -> f32 {
    let h = u16::from_le_bytes([lo, hi]);
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mant = f32::from(h & 0x3ff);
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        31 => {
            if mant == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        e => sign * (1.0 + mant / 1024.0) * 2f32.powi(e - 15),
    }
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
            // The kernels fold a block's offset (Q4_0's −8·d, Q4_1's m, a K-quant's dmin·m…)
            // into d·Σx over the block, so their rounding error scales with the block's scales
            // times Σ|x|, not only with Σ|w·x| (the two agree to ~1e-7 of that, well inside
            // this bound, while a wrong decode of one value would be far outside it).
            let offs = offset_bound(q, r, xs);
            if !mag.is_finite() || mag > 1e30 || !offs.is_finite() || offs > 1e30 {
                continue;
            }
            let tol = 1e-4 * mag + 1e-6 * offs + 1e-30;
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
