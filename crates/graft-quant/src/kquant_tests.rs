//! Q5_0, Q5_1 and the K-quants: dequantization against gguf-py, and every matmul path against
//! "dequantize, then matmul".
//!
//! The reference is `tests/fixtures/kquants.safetensors`, written by
//! `scripts/make_kquant_fixtures.py` with gguf-py 0.17.1's `gguf.quants.dequantize` (llama.cpp's
//! own Python decoder) from random valid blocks: per format, `NAME.raw` (U8, rows × row bytes, as
//! a GGUF file stores them) and `NAME.deq` (F32, rows × cols). Dequantization must match it **bit
//! for bit**: each decoded value is exact products (f16 scale × sub-block scale × quant) followed
//! by at most one rounding step (`− dmin·m` or `+ m`), the same single rounding gguf-py does, so
//! there is no ulp of slack to allow (see `blocks.rs`).

use crate::kernels::{rows, rows_generic};
use crate::{Error, QMatrix, QType};

const NEW: [QType; 7] = [
    QType::Q5_0,
    QType::Q5_1,
    QType::Q2_K,
    QType::Q3_K,
    QType::Q4_K,
    QType::Q5_K,
    QType::Q6_K,
];

fn name(q: QType) -> &'static str {
    match q {
        QType::Q5_0 => "q5_0",
        QType::Q5_1 => "q5_1",
        QType::Q2_K => "q2_k",
        QType::Q3_K => "q3_k",
        QType::Q4_K => "q4_k",
        QType::Q5_K => "q5_k",
        QType::Q6_K => "q6_k",
        other => panic!("{other:?} is not in the fixture"),
    }
}

/// Byte offsets of a block's f16 fields (ggml-common.h).
fn f16_fields(q: QType) -> &'static [usize] {
    match q {
        QType::Q5_0 | QType::Q4_0 | QType::Q8_0 => &[0],
        QType::Q5_1 | QType::Q4_1 | QType::Q4_K | QType::Q5_K => &[0, 2],
        QType::Q2_K => &[80, 82],
        QType::Q3_K => &[108],
        QType::Q6_K => &[208],
        other => panic!("{other:?}"),
    }
}

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 7) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// A finite half: mostly a model-like magnitude, sometimes any finite bit pattern.
    fn f16(&mut self) -> u16 {
        if self.next().is_multiple_of(4) {
            let b = self.next() as u16;
            if b & 0x7c00 == 0x7c00 {
                b & !0x4000
            } else {
                b
            }
        } else {
            half::f16::from_f32(self.unit() * 0.05).to_bits()
        }
    }
}

/// `rows` rows of `blocks` random valid blocks: random bytes, finite f16 fields.
pub(crate) fn random_matrix(q: QType, rows: usize, blocks: usize, rng: &mut Rng) -> QMatrix {
    let bb = q.block_bytes();
    let mut data: Vec<u8> = (0..rows * blocks * bb).map(|_| rng.next() as u8).collect();
    for blk in data.chunks_exact_mut(bb) {
        for &off in f16_fields(q) {
            blk[off..off + 2].copy_from_slice(&rng.f16().to_le_bytes());
        }
    }
    QMatrix::from_raw(q, rows, blocks * q.block_len(), data, vec![]).unwrap()
}

/// Checks y (n, rows) against the f64 product of the dequantized weights, within the f32
/// summation bound 8·cols·ε·Σ|w·x| (a wrong or missing term is far outside it).
fn check_matmul(ctx: &str, m: &QMatrix, x: &[f32], n: usize, got: &[f32]) {
    let (rows, cols) = (m.rows, m.cols);
    let w = m.dequantize();
    assert_eq!(got.len(), n * rows, "{ctx}: length");
    for t in 0..n {
        for r in 0..rows {
            let (mut want, mut mag) = (0f64, 0f64);
            for k in 0..cols {
                let term = w[r * cols + k] as f64 * x[t * cols + k] as f64;
                want += term;
                mag += term.abs();
            }
            let tol = 8.0 * cols as f64 * f32::EPSILON as f64 * mag + 1e-30;
            let g = got[t * rows + r] as f64;
            assert!(
                (g - want).abs() <= tol,
                "{ctx}: row {r} token {t}: {g} vs {want} (tolerance {tol:e})"
            );
        }
    }
}

/// The kernel paths of one matmul, each in (n, rows) order: the portable rows (no AVX2), the
/// dispatched rows (the AVX2 kernels on a CPU that has them), and the public entry points.
fn every_path(m: &QMatrix, x: &[f32], n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let xsum: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
    let transpose = |out_t: Vec<f32>| -> Vec<f32> {
        let mut y = vec![0f32; out_t.len()];
        for r in 0..m.rows {
            for t in 0..n {
                y[t * m.rows + r] = out_t[r * n + t];
            }
        }
        y
    };
    let mut portable = vec![0f32; m.rows * n];
    rows_generic::<false>(m, x, &xsum, n, 0, &mut portable);
    let mut dispatched = vec![0f32; m.rows * n];
    rows(m, x, &xsum, n, 0, &mut dispatched);
    let shared = std::sync::Arc::new(m.clone());
    vec![
        ("portable", transpose(portable)),
        ("dispatched", transpose(dispatched)),
        ("matmul", m.matmul(x, n).unwrap()),
        ("matmul_shared", shared.matmul_shared(x, n).unwrap()),
    ]
}

fn fixture() -> safetensors::SafeTensors<'static> {
    static BYTES: &[u8] = include_bytes!("../tests/fixtures/kquants.safetensors");
    safetensors::SafeTensors::deserialize(BYTES).unwrap()
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let st = fixture();
    for q in NEW {
        let raw = st.tensor(&format!("{}.raw", name(q))).unwrap();
        let deq = st.tensor(&format!("{}.deq", name(q))).unwrap();
        assert_eq!(raw.dtype(), safetensors::Dtype::U8);
        assert_eq!(deq.dtype(), safetensors::Dtype::F32);
        let (rows, cols) = (deq.shape()[0], deq.shape()[1]);
        assert_eq!(raw.shape(), [rows, cols / q.block_len() * q.block_bytes()]);
        assert!(
            rows % 2 == 1 && cols / q.block_len() >= 3,
            "{q:?}: fixture shape"
        );
        let m = QMatrix::from_raw(q, rows, cols, raw.data().to_vec(), vec![]).unwrap();
        let got = m.dequantize();
        let want: Vec<f32> = deq
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{q:?} row {} col {}: graft {g:e} ({:#010x}) vs gguf-py {w:e} ({:#010x})",
                i / cols,
                i % cols,
                g.to_bits(),
                w.to_bits()
            );
        }
        // one row at a time (what the prefill tiles and embedding lookups use) gives the same
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            assert!(row
                .iter()
                .zip(&want[r * cols..])
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

#[test]
fn matmul_on_the_fixture_matches_its_values() {
    let st = fixture();
    let mut rng = Rng(42);
    for q in NEW {
        let raw = st.tensor(&format!("{}.raw", name(q))).unwrap();
        let deq = st.tensor(&format!("{}.deq", name(q))).unwrap();
        let (rows, cols) = (deq.shape()[0], deq.shape()[1]);
        let m = QMatrix::from_raw(q, rows, cols, raw.data().to_vec(), vec![]).unwrap();
        for n in [1, 3, 8] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.unit()).collect();
            for (path, y) in every_path(&m, &x, n) {
                check_matmul(&format!("fixture {q:?} n={n} {path}"), &m, &x, n, &y);
            }
        }
    }
}

/// Rows 1..=7, one to three blocks per row, 1, 3 (row dots) and 8 tokens (decoded tiles), on
/// the portable and the dispatched (AVX2 where the CPU has it) paths.
#[test]
fn every_path_matches_dequantize_then_matmul_over_shapes() {
    let mut rng = Rng(7);
    for q in NEW {
        for rows in 1..=7 {
            for blocks in 1..=3 {
                let m = random_matrix(q, rows, blocks, &mut rng);
                for n in [1, 3, 8] {
                    let x: Vec<f32> = (0..n * m.cols).map(|_| rng.unit()).collect();
                    for (path, y) in every_path(&m, &x, n) {
                        let ctx = format!("{q:?} {rows}x{} n={n} {path}", m.cols);
                        check_matmul(&ctx, &m, &x, n, &y);
                    }
                }
            }
        }
    }
}

/// Matrices big enough for the threaded paths (rayon row chunks, the spinning pool).
#[test]
fn threaded_paths_match_on_larger_matrices() {
    let mut rng = Rng(11);
    for q in NEW {
        let blocks = if q.block_len() == 256 { 3 } else { 18 };
        let m = random_matrix(q, 131, blocks, &mut rng);
        for n in [1, 2, 5, 20] {
            let x: Vec<f32> = (0..n * m.cols).map(|_| rng.unit()).collect();
            let shared = std::sync::Arc::new(m.clone());
            for (path, y) in [
                ("matmul", m.matmul(&x, n).unwrap()),
                ("matmul_shared", shared.matmul_shared(&x, n).unwrap()),
            ] {
                check_matmul(&format!("{q:?} 131x{} n={n} {path}", m.cols), &m, &x, n, &y);
            }
        }
    }
}

#[test]
fn sizes_names_and_bits_per_weight() {
    // (format, name, values per block, bytes per block, bits per weight): gguf's GGML_QUANT_SIZES
    let table = [
        (QType::Q5_0, "q5_0", 32, 22, 5.5),
        (QType::Q5_1, "q5_1", 32, 24, 6.0),
        (QType::Q2_K, "q2_k", 256, 84, 2.625),
        (QType::Q3_K, "q3_k", 256, 110, 3.4375),
        (QType::Q4_K, "q4_k", 256, 144, 4.5),
        (QType::Q5_K, "q5_k", 256, 176, 5.5),
        (QType::Q6_K, "q6_k", 256, 210, 6.5625),
    ];
    for (q, s, bl, bb, bpw) in table {
        assert_eq!(QType::parse(s), Some(q));
        assert_eq!((q.block_len(), q.block_bytes()), (bl, bb), "{q:?}");
        assert_eq!(q.bits_per_weight(), bpw, "{q:?}");
        assert!(!q.can_quantize());
    }
}

#[test]
fn rows_that_are_not_whole_blocks_and_quantizing_are_errors() {
    for q in NEW {
        let bl = q.block_len();
        for cols in [bl / 2, bl + 16, 3 * bl - 1] {
            let bytes = q.block_bytes() * 3;
            assert_eq!(
                QMatrix::from_raw(q, 1, cols, vec![0; bytes], vec![]).unwrap_err(),
                Error::NotBlockAligned {
                    qtype: q,
                    cols,
                    block: bl
                },
                "{q:?} cols {cols}"
            );
            assert!(matches!(
                QMatrix::row_bytes(q, cols),
                Err(Error::NotBlockAligned { .. })
            ));
        }
        // a whole number of blocks, the wrong number of bytes
        assert!(matches!(
            QMatrix::from_raw(q, 2, bl, vec![0; q.block_bytes() * 2 + 1], vec![]),
            Err(Error::WrongSize { .. })
        ));
        assert_eq!(
            QMatrix::quantize(q, 1, bl, &vec![0.5; bl]).unwrap_err(),
            Error::CannotQuantize { qtype: q }
        );
    }
}

/// Not a correctness test: one thread's mat-vec speed, portable against dispatched, per format
/// (`cargo test --release -p graft-quant kquant_speed -- --ignored --nocapture`).
#[test]
#[ignore = "timing probe, run by hand"]
fn kquant_speed() {
    let mut rng = Rng(3);
    let (nrows, cols) = (1536, 1536);
    let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
    let xsum: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
    let w: Vec<f32> = (0..nrows * cols).map(|_| rng.unit()).collect();
    let mut formats: Vec<QMatrix> = [QType::Q8_0, QType::Q4_0, QType::Q4_1]
        .iter()
        .map(|&q| QMatrix::quantize(q, nrows, cols, &w).unwrap())
        .collect();
    formats.extend(
        NEW.iter()
            .map(|&q| random_matrix(q, nrows, cols / q.block_len(), &mut rng)),
    );
    for m in &formats {
        let mut out = vec![0f32; nrows];
        let mut time = |portable: bool| {
            let iters = 100;
            let t = std::time::Instant::now();
            for _ in 0..iters {
                if portable {
                    rows_generic::<false>(m, &x, &xsum, 1, 0, &mut out);
                } else {
                    rows(m, &x, &xsum, 1, 0, &mut out);
                }
            }
            (nrows * cols * iters) as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let (p, d) = (time(true), time(false));
        println!(
            "{:?}: portable {p:.2}, dispatched {d:.2} GMAC/s per thread",
            m.qtype
        );
    }
}

/// The decode steps of several sequences in one pass (`matmul_per_token`, a server's batch)
/// and a few tokens through `matmul_shared`: each token's outputs bit for bit those of a
/// one-token call, for every block format and token count.
#[test]
fn several_tokens_give_each_token_its_one_token_numbers() {
    let mut rng = Rng(11);
    let mut mats: Vec<QMatrix> = NEW
        .iter()
        .map(|&q| random_matrix(q, 37, 2, &mut rng))
        .collect();
    for q in [QType::Q8_0, QType::Q4_0, QType::Q4_1] {
        let (rows, cols) = (37, 512);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        mats.push(QMatrix::quantize(q, rows, cols, &w).unwrap());
    }
    for m in mats {
        let m = std::sync::Arc::new(m);
        for n in 1..=9 {
            let x: Vec<f32> = (0..n * m.cols).map(|_| rng.unit()).collect();
            let batched = m.matmul_per_token(&x, n).unwrap();
            let shared = (n <= 3).then(|| m.matmul_shared(&x, n).unwrap());
            for t in 0..n {
                let alone = m
                    .matmul_shared(&x[t * m.cols..(t + 1) * m.cols], 1)
                    .unwrap();
                for r in 0..m.rows {
                    let got = batched[t * m.rows + r];
                    assert_eq!(
                        got.to_bits(),
                        alone[r].to_bits(),
                        "{:?} n={n} token {t} row {r}",
                        m.qtype
                    );
                    if let Some(s) = &shared {
                        assert_eq!(
                            s[t * m.rows + r].to_bits(),
                            alone[r].to_bits(),
                            "{:?} shared n={n}",
                            m.qtype
                        );
                    }
                }
            }
        }
    }
}

/// Decode steps of n sequences in one pass: time per call of `matmul_per_token` against n
/// one-token calls (`cargo test --release -p graft-quant per_token_speed -- --ignored --nocapture`).
#[test]
#[ignore]
fn per_token_speed() {
    let mut rng = Rng(5);
    for q in [QType::Q8_0, QType::Q5_0, QType::Q4_K, QType::Q6_K] {
        // Qwen2.5-0.5B's MLP shape (896 → 4864; 1024 columns for the 256-value K-quant blocks)
        let rows = 4864;
        let m = if q == QType::Q8_0 {
            let cols = 896;
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() * 0.05).collect();
            QMatrix::quantize(q, rows, cols, &w).unwrap()
        } else {
            let blocks = if q.block_len() == 32 { 28 } else { 4 };
            random_matrix(q, rows, blocks, &mut rng)
        };
        let m = std::sync::Arc::new(m);
        for n in [1usize, 4, 8, 16, 32] {
            let x: Vec<f32> = (0..n * m.cols).map(|_| rng.unit()).collect();
            let reps = 20;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                std::hint::black_box(m.matmul_per_token(&x, n).unwrap());
            }
            let per = t.elapsed().as_secs_f64() / reps as f64;
            let t1 = std::time::Instant::now();
            for _ in 0..reps {
                std::hint::black_box(m.matmul_shared(&x[..m.cols], 1).unwrap());
            }
            let one = t1.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{:?} {}x{} n={n:2}: {:7.3} ms per call, {:6.3} ms per token (one token alone {:6.3} ms)",
                m.qtype, m.rows, m.cols, per * 1e3, per * 1e3 / n as f64, one * 1e3
            );
        }
    }
}
