//! `graft bench-gemm`: the CPU's f32 GEMM (graft-quant's, which prefill runs on quantized
//! weights) against candle's (the `gemm` crate, what graft used before and what dense weights
//! still use) on prefill shapes, side by side in one run, next to the FMA peak of this CPU
//! measured with the same instructions.

use std::time::Instant;

use candle_core::{Device, Tensor};
use graft_quant::{cpu, gemm};
use serde_json::json;

use crate::CliResult;

/// (label, tokens, in features, out features)
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("SmolLM2 gate/up", 128, 576, 1536),
    ("SmolLM2 gate/up", 512, 576, 1536),
    ("SmolLM2 down", 512, 1536, 576),
    ("Qwen2.5-0.5B gate/up", 128, 896, 4864),
    ("Qwen2.5-0.5B gate/up", 512, 896, 4864),
    ("Qwen2.5-0.5B down", 512, 4864, 896),
];

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

pub fn bench_gemm(runs: usize, json_out: Option<&std::path::Path>) -> CliResult<()> {
    let threads = rayon::current_num_threads();
    let isa = cpu::isa();
    if !gemm::available() {
        return Err(format!("no SIMD GEMM on this machine ({isa:?})").into());
    }
    // the peak: one core, then every thread at once
    let iters = 50_000_000;
    let one = (0..3)
        .map(|_| gemm::fma_peak_gflops(iters))
        .fold(0f64, f64::max);
    let all: f64 = {
        use rayon::prelude::*;
        (0..threads)
            .into_par_iter()
            .map(|_| gemm::fma_peak_gflops(iters))
            .sum()
    };
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "{machine}; {threads} threads; kernels: {isa:?}; FMA peak {one:.1} GFLOP/s on one core, {all:.1} on {threads}"
    );
    println!(
        "{:<22} {:>6} {:>6} {:>6} {:>12} {:>8} {:>12} {:>8} {:>7}",
        "shape", "n", "k", "m", "graft GF/s", "of peak", "candle GF/s", "of peak", "ratio"
    );
    let mut rows = Vec::new();
    let mut seed = 0x2545_f491u32;
    let mut rand = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    for &(label, n, k, m) in SHAPES {
        let x = rand(n * k);
        let w = rand(m * k);
        let mut y = vec![0f32; n * m];
        let flops = 2.0 * (n * k * m) as f64;
        let g = flops
            / best_of(runs, || {
                gemm::gemm_nt(&x, n, k, &w, m, &mut y, m);
            })
            / 1e9;
        let xt = Tensor::from_vec(x.clone(), (n, k), &Device::Cpu)?;
        let wt = Tensor::from_vec(w.clone(), (m, k), &Device::Cpu)?;
        let mut err = None;
        let c = flops
            / best_of(runs, || {
                if let Err(e) = xt.matmul(&wt.t().unwrap_or_else(|_| wt.clone())) {
                    err = Some(e);
                }
            })
            / 1e9;
        if let Some(e) = err {
            return Err(e.into());
        }
        println!(
            "{label:<22} {n:>6} {k:>6} {m:>6} {g:>12.1} {:>7.0}% {c:>12.1} {:>7.0}% {:>6.2}x",
            100.0 * g / all,
            100.0 * c / all,
            g / c
        );
        rows.push(
            json!({"shape": label, "n": n, "k": k, "m": m, "graft_gflops": g, "candle_gflops": c}),
        );
    }
    if let Some(p) = json_out {
        let v = json!({"machine": machine, "threads": threads, "isa": format!("{isa:?}"),
                       "peak_one_core": one, "peak_all": all, "results": rows});
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}
