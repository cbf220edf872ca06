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

/// Total decode tokens/s of `batch` sequences stepped together through
/// [`Model::forward_batch`], each with its own prompt (a distinct shift of `prompt`) and cache,
/// all through `adapter` (`None`: the base); best of `runs`. Prefill is not timed.
fn bench_batch(
    model: &Model,
    prompt: &[u32],
    decode: usize,
    batch: usize,
    adapter: Option<&graft_adapters::inject::Adapter>,
    runs: usize,
) -> CliResult<f64> {
    let vocab = model.vocab_size as u32;
    let mut best = 0f64;
    for _ in 0..runs.max(1) {
        let mut caches = Vec::with_capacity(batch);
        let mut next = Vec::with_capacity(batch);
        for s in 0..batch {
            let p: Vec<u32> = prompt
                .iter()
                .map(|&t| (t + 13 * s as u32) % vocab)
                .collect();
            let mut cache = graft_models::KvCache::with_capacity(p.len() + decode);
            let l = model.forward_last(&p, &mut cache)?;
            next.push(graft_models::sampling::argmax(&l.get(0)?.to_vec1::<f32>()?));
            caches.push(cache);
        }
        let t0 = Instant::now();
        for _ in 0..decode {
            let ids: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut seqs: Vec<graft_models::Sequence> = caches
                .iter_mut()
                .zip(&ids)
                .map(|(cache, ids)| graft_models::Sequence {
                    ids,
                    cache,
                    adapter,
                })
                .collect();
            let logits = model.forward_batch(&mut seqs)?;
            for (s, t) in next.iter_mut().enumerate() {
                *t = graft_models::sampling::argmax(&logits.get(s)?.to_vec1::<f32>()?);
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        best = best.max((batch * decode) as f64 / secs.max(1e-9));
    }
    Ok(best)
}

/// Greedy decode of `decode` tokens after `prompt`: the tokens and each step's logits.
fn greedy_logits(
    model: &Model,
    prompt: &[u32],
    decode: usize,
    forced: Option<&[u32]>,
) -> CliResult<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut cache = graft_models::KvCache::with_capacity(prompt.len() + decode + 1);
    let mut l = model
        .forward_last(prompt, &mut cache)?
        .get(0)?
        .to_vec1::<f32>()?;
    let (mut toks, mut logits) = (Vec::new(), Vec::new());
    for i in 0..decode {
        let next = match forced {
            Some(f) => f[i],
            None => graft_models::sampling::argmax(&l),
        };
        toks.push(graft_models::sampling::argmax(&l));
        l = model
            .forward_last(&[next], &mut cache)?
            .get(0)?
            .to_vec1::<f32>()?;
        logits.push(l.clone());
    }
    Ok((toks, logits))
}

/// The 8-bit-activation decode path against the exact one on the same model and prompt:
/// decode tokens/s of each, how far the logits of each decode step move (the 8-bit pass fed
/// the exact pass's tokens) and where free-running greedy decoding first differs.
fn int8_effect(
    model: &Model,
    prompt: &[u32],
    decode: usize,
    runs: usize,
) -> CliResult<serde_json::Value> {
    use graft_quant::int8::set_int8_activations;
    set_int8_activations(false);
    let (exact_toks, exact_logits) = greedy_logits(model, prompt, decode, None)?;
    let (_, d_exact) = bench_once(model, prompt, decode, runs)?;
    set_int8_activations(true);
    let (int8_toks, _) = greedy_logits(model, prompt, decode, None)?;
    let (_, forced_logits) = greedy_logits(model, prompt, decode, Some(&exact_toks))?;
    let (_, d_int8) = bench_once(model, prompt, decode, runs)?;
    let (mut max_rel, mut sum_rel, mut top1) = (0f64, 0f64, 0usize);
    for (e, q) in exact_logits.iter().zip(&forced_logits) {
        let range = e.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = e.iter().zip(q).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let rel = f64::from(diff / range);
        max_rel = max_rel.max(rel);
        sum_rel += rel;
        top1 += usize::from(graft_models::sampling::argmax(e) == graft_models::sampling::argmax(q));
    }
    let steps = exact_logits.len().max(1);
    let first_diff = exact_toks.iter().zip(&int8_toks).position(|(a, b)| a != b);
    println!("| decode path | decode tok/s | × exact |");
    println!("|---|---|---|");
    println!("| exact (f32 activations) | {d_exact:.1} | 1.00 |");
    println!(
        "| 8-bit activations | {d_int8:.1} | {:.2} |",
        d_int8 / d_exact
    );
    println!(
        "8-bit vs exact logits over {steps} decode steps (fed the exact tokens): max |Δ| {:.2e} of max |logit|, mean {:.2e}; top-1 equal at {top1}/{steps}; free-running greedy tokens {}",
        max_rel,
        sum_rel / steps as f64,
        match first_diff {
            None => format!("identical for all {decode}"),
            Some(i) => format!("first differ at token {i} of {decode}"),
        }
    );
    Ok(serde_json::json!({
        "decode_tps_exact": d_exact, "decode_tps_int8": d_int8,
        "max_rel_logit_diff": max_rel, "mean_rel_logit_diff": sum_rel / steps as f64,
        "top1_equal": top1, "steps": steps, "greedy_first_difference": first_diff,
    }))
}

#[allow(clippy::too_many_arguments)]
pub fn bench(
    args: &ModelArgs,
    prompt_tokens: usize,
    decode: usize,
    runs: usize,
    json: Option<&Path>,
    f16_weights: bool,
    synthetic: bool,
    batch: &[usize],
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
    let path = if args.int8_activations {
        ", 8-bit activations"
    } else {
        ""
    };
    println!("| graft ({threads} threads{path}) | prefill tok/s | decode tok/s |");
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
    // Batched decode: the adapter each sequence runs is the one active adapter (a batch row
    // carries one adapter, as in `graft serve`), and the base when adapters are off.
    let mut batched = Vec::new();
    if !batch.is_empty() {
        if batch.contains(&0) {
            return Err("--batch: a batch has at least one sequence".into());
        }
        let active = if has_adapters {
            model.active_adapters()?
        } else {
            Vec::new()
        };
        let adapter = match active.as_slice() {
            [] => None,
            [one] => model.registry().get(one),
            more => {
                return Err(format!(
                    "--batch runs one adapter per sequence; {} are active ({})",
                    more.len(),
                    more.join(",")
                )
                .into())
            }
        };
        let mut variants = vec![(adapter.map(|a| a.name.clone()), adapter)];
        if adapter.is_some() {
            variants.push((None, None));
        }
        println!();
        println!("| batched decode ({threads} threads) | sequences | total decode tok/s | × one sequence |");
        println!("|---|---|---|---|");
        for (name, a) in &variants {
            let mut one = None;
            for &b in batch {
                let tps = bench_batch(&model, &prompt, decode, b, *a, runs)?;
                let base = *one.get_or_insert(if b == 1 {
                    tps
                } else {
                    bench_batch(&model, &prompt, decode, 1, *a, runs)?
                });
                let label = name.as_deref().unwrap_or("base");
                println!("| {label} | {b} | {tps:.1} | {:.2} |", tps / base);
                batched.push(serde_json::json!({
                    "adapter": name, "sequences": b, "decode_tps": tps, "ratio_to_one": tps / base,
                }));
            }
        }
    }
    let int8 = if args.int8_activations {
        println!();
        Some(int8_effect(&model, &prompt, decode, runs)?)
    } else {
        None
    };
    if let Some(j) = json {
        let v = serde_json::json!({
            "int8_activations": int8,
            "batched_decode": batched,
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
