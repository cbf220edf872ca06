//! `graft bench`: prefill and decode tokens/s on the CPU with the adapters on and off, and
//! peak memory; `--device gpu` hands over to [`super::bench_gpu`].

use std::path::Path;
use std::time::Instant;

use graft_models::Model;

use super::model::{open, ModelArgs};
use crate::CliResult;

/// Peak resident memory of this process (Linux), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// (prefill tokens/s, decode tokens/s), best of `runs`.
fn bench_once(model: &Model, prompt: &[u32], decode: usize, runs: usize) -> CliResult<(f64, f64)> {
    let (mut best_p, mut best_d) = (0f64, 0f64);
    for _ in 0..runs {
        let mut cache = graft_models::KvCache::with_capacity(prompt.len() + decode);
        let t0 = Instant::now();
        let logits = model.forward_last(prompt, &mut cache)?;
        let prefill = t0.elapsed().as_secs_f64();
        let last = logits.get(0)?.to_vec1::<f32>()?;
        let mut next = graft_models::sampling::argmax(&last);
        let t1 = Instant::now();
        for _ in 0..decode {
            let l = model.forward_last(&[next], &mut cache)?;
            next = graft_models::sampling::argmax(&l.get(0)?.to_vec1::<f32>()?);
        }
        let dec = t1.elapsed().as_secs_f64();
        best_p = best_p.max(prompt.len() as f64 / prefill);
        best_d = best_d.max(decode as f64 / dec.max(1e-9));
    }
    Ok((best_p, best_d))
}

pub fn bench(
    args: &ModelArgs,
    prompt_tokens: usize,
    decode: usize,
    runs: usize,
    json: Option<&Path>,
    f16_weights: bool,
    synthetic: bool,
) -> CliResult<()> {
    let (mut model, path) = if synthetic {
        let p = std::env::temp_dir().join(format!("graft-synthetic-{}.gguf", std::process::id()));
        std::fs::write(&p, super::bench_gpu::synthetic_smollm2())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let m = Model::open_base(&p);
        let _ = std::fs::remove_file(&p);
        eprintln!("graft: benchmarking a synthetic SmolLM2-135M (Q4_1, random weights)");
        (m?, p)
    } else {
        open(args)?
    };
    if args.device == "gpu" {
        return super::bench_gpu::run(
            &mut model,
            args,
            prompt_tokens,
            decode,
            runs,
            json,
            f16_weights,
        );
    }
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|i| ((i * 7919) % 10000 + 100) as u32)
        .collect();
    let file_bytes: u64 = if path.is_file() {
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
    } else {
        std::fs::read_dir(&path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let has_adapters = !model.registry().adapter_names().is_empty();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Peak memory of one generation (later repetitions only add allocator churn).
    let first = bench_once(&model, &prompt, decode, 1)?;
    let peak = peak_rss().unwrap_or(0);
    let (p_on, d_on) = bench_once(&model, &prompt, decode, runs.saturating_sub(1))?;
    let (p_on, d_on) = (p_on.max(first.0), d_on.max(first.1));
    let (p_off, d_off) = if has_adapters {
        model.disable_adapters()?;
        let r = bench_once(&model, &prompt, decode, runs)?;
        model.enable_adapters()?;
        r
    } else {
        (p_on, d_on)
    };
    let kv = model.kv_cache_bytes(prompt_tokens + decode);
    println!("| graft ({threads} threads) | prefill tok/s | decode tok/s |");
    println!("|---|---|---|");
    if has_adapters {
        println!(
            "| adapters on ({}) | {p_on:.1} | {d_on:.1} |",
            model.active_adapters()?.join(",")
        );
        println!("| adapters off | {p_off:.1} | {d_off:.1} |");
        println!(
            "unmerged adapter overhead: prefill {:.1}%, decode {:.1}%",
            (p_off / p_on - 1.0) * 100.0,
            (d_off / d_on - 1.0) * 100.0
        );
    } else {
        println!("| base | {p_on:.1} | {d_on:.1} |");
    }
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    if file_bytes == 0 {
        println!("peak RSS {:.1} MiB", mb(peak));
    } else {
        println!(
        "peak RSS {:.1} MiB; model file(s) {:.1} MiB + KV cache {:.1} MiB = {:.1} MiB; ratio {:.2}",
        mb(peak),
        mb(file_bytes),
        mb(kv),
        mb(file_bytes + kv),
        peak as f64 / (file_bytes + kv).max(1) as f64
    );
    }
    if let Some(j) = json {
        let v = serde_json::json!({
            "engine": "graft", "threads": threads, "prompt_tokens": prompt_tokens, "decode_tokens": decode,
            "runs": runs, "adapters": has_adapters,
            "prefill_tps": p_on, "decode_tps": d_on, "prefill_tps_adapters_off": p_off, "decode_tps_adapters_off": d_off,
            "peak_rss_bytes": peak, "model_file_bytes": file_bytes, "kv_cache_bytes": kv,
        });
        std::fs::write(j, serde_json::to_string_pretty(&v)?)
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    Ok(())
}
