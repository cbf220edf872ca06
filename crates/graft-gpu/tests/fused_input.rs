//! The linear kernel's input transforms (`xform`), which fold a dispatch into the matmul that
//! reads its output: RMSNorm and LayerNorm (with and without bias) before q/k/v and gate/up,
//! and SiLU·mul, ReLU and GELU before down_proj / fc2. Each against a CPU reference, over
//! token counts on both sides of the prefill tile and widths with and without a tail.

use std::sync::OnceLock;

use graft_gpu::kernels::*;
use graft_gpu::ops::{Input, Ops};
use graft_gpu::weights::Packed;
use graft_gpu::{Gpu, GpuOptions};

fn gpu() -> Option<Gpu> {
    static G: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match G.get_or_init(|| Gpu::new_blocking(&GpuOptions::default()).map_err(|e| e.to_string())) {
        Ok(g) => Some(g.clone()),
        Err(e) => {
            assert!(
                std::env::var("GRAFT_REQUIRE_GPU").as_deref() != Ok("1"),
                "GRAFT_REQUIRE_GPU=1 but no GPU: {e}"
            );
            eprintln!("skipping: no GPU ({e})");
            None
        }
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20001) as f32 / 10000.0 - 1.0
        })
        .collect()
}

fn gelu(v: f64) -> f64 {
    // erf by its Taylor series (|v| ≤ ~3 here), accurate to ~1e-12
    let z = v / std::f64::consts::SQRT_2;
    let mut term = z;
    let mut sum = z;
    for k in 1..80 {
        term *= -z * z / k as f64;
        sum += term / (2 * k + 1) as f64;
    }
    0.5 * v * (1.0 + 2.0 / std::f64::consts::PI.sqrt() * sum)
}

/// What the kernel should see as input, per token (f64).
fn transform(
    xform: u32,
    x: &[f32],
    cols: usize,
    stride: usize,
    n: usize,
    aux: &[f32],
    eps: f32,
    has_b: bool,
) -> Vec<Vec<f64>> {
    (0..n)
        .map(|t| {
            let row: Vec<f64> = x[t * stride..t * stride + cols]
                .iter()
                .map(|v| *v as f64)
                .collect();
            match xform {
                X_RMS | X_LAYER_NORM => {
                    let mean = if xform == X_LAYER_NORM {
                        row.iter().sum::<f64>() / cols as f64
                    } else {
                        0.0
                    };
                    let var =
                        row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    (0..cols)
                        .map(|c| {
                            let mut r = (row[c] - mean) * inv * aux[c] as f64;
                            if has_b {
                                r += aux[cols + c] as f64;
                            }
                            r
                        })
                        .collect()
                }
                X_SILU_MUL => (0..cols)
                    .map(|c| {
                        let g = row[c];
                        let u = x[t * stride + cols + c] as f64;
                        g / (1.0 + (-g).exp()) * u
                    })
                    .collect(),
                X_RELU => row.iter().map(|v| v.max(0.0)).collect(),
                X_GELU => row.iter().map(|v| gelu(*v)).collect(),
                _ => row,
            }
        })
        .collect()
}

#[test]
fn input_transforms_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let ops = Ops::new(&gpu);
    let mut checked = 0;
    for &(xform, has_b) in &[
        (X_RMS, false),
        (X_LAYER_NORM, false),
        (X_LAYER_NORM, true),
        (X_SILU_MUL, false),
        (X_RELU, false),
        (X_GELU, false),
    ] {
        for &(rows, cols) in &[(5usize, 13usize), (17, 64), (9, 200)] {
            for &n in &[1usize, 3, 9] {
                let silu = xform == X_SILU_MUL;
                // SiLU·mul reads gate and up side by side; the others get a wider stride
                let stride = if silu { 2 * cols } else { cols + 3 };
                let x = values(n * stride, (rows * 31 + cols + n) as u32);
                let w = values(rows * cols, 7 + rows as u32);
                let aux: Vec<f32> = values(2 * cols, 99).iter().map(|v| v + 1.5).collect();
                let eps = 1e-5f32;
                let packed = Packed::f32(rows, cols, &w).unwrap();
                let tn = if n == 1 { TN_DECODE } else { TN_PREFILL };
                let p = LinearParams {
                    wd: packed.desc,
                    n: n as u32,
                    x_stride: stride as u32,
                    y_stride: rows as u32,
                    c8n: packed.c8n,
                    xform,
                    act_off: if silu { cols as u32 } else { 0 },
                    nw_off: 0,
                    nb_off: cols as u32,
                    eps,
                    has_nb: u32::from(has_b),
                    ..Default::default()
                };
                let y = vec![0f32; n * rows];
                let out = ops
                    .run(
                        Kernel::Linear { fmt: Fmt::F32, tn },
                        &[("WG", 256), ("RPW", 8)],
                        bytemuck::bytes_of(&p),
                        &[
                            Input::F32(&x),
                            Input::U32(&packed.wq),
                            Input::U32(&packed.ws),
                            Input::F32(&aux),
                            Input::F32(&[0.0; 4]),
                            Input::F32(&[0.0; 4]),
                            Input::F32(&y),
                        ],
                        ((rows as u32).div_ceil(8), (n as u32).div_ceil(tn), 1),
                        &[7],
                    )
                    .unwrap();
                let got: &[f32] = bytemuck::cast_slice(&out[0]);
                let xin = transform(xform, &x, cols, stride, n, &aux, eps, has_b);
                for t in 0..n {
                    for r in 0..rows {
                        let want: f64 = (0..cols).map(|c| xin[t][c] * w[r * cols + c] as f64).sum();
                        let g = got[t * rows + r] as f64;
                        assert!(
                            (g - want).abs() <= 2e-5 * (cols as f64).sqrt() * want.abs().max(1.0),
                            "xform {xform} (bias {has_b}) {rows}x{cols}, n {n}: token {t} row {r}: {g} vs {want}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 1000);
}
