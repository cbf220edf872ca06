//! `graft bench --device gpu`: the GPU benchmark. Prefill tokens/s; decode tokens/s
//! at batch 1 with no adapter, LoRA r=8 on q,v, LoRA r=16 on every linear layer and IA3;
//! dispatches and submits per token; the decode mat-vec's bandwidth for every GGUF block type
//! next to a copy kernel's.
//! Timings are wall clock around submit and read-back, best of `runs`.

use std::path::Path;
use std::time::Instant;

use graft_gpu::kernels::{CopyParams, Kernel, LinearParams, TN_DECODE};
use graft_gpu::ops::{Input, Ops};
use graft_gpu::weights::{storage, Packed};
use graft_gpu::{Gpu, GpuStats};
use graft_models::{Device, DeviceOptions, Model};
use graft_quant::{QMatrix, QType};
use serde_json::json;

use super::model::ModelArgs;
use crate::CliResult;

/// The model's GPU counters.
fn stats(model: &Model) -> CliResult<GpuStats> {
    model
        .with_gpu(|g, _, _| g.stats)
        .ok_or_else(|| "the model is not on a GPU".into())
}

/// (prefill tok/s, decode tok/s, dispatches per token, submits per token)
fn measure(
    model: &Model,
    prompt: &[u32],
    decode: usize,
    runs: usize,
) -> CliResult<(f64, f64, usize, f64)> {
    let (mut best_p, mut best_d) = (0f64, 0f64);
    let mut submits = 0f64;
    // warm-up: pipelines compiled, plans built
    model.generate(prompt, 2, &[], |_| {})?;
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let prefill = model.with_gpu(|g, table, reg| {
            g.reset();
            g.forward(table, reg, prompt, true).map(|_| ())
        });
        prefill.ok_or("the model is not on a GPU")??;
        best_p = best_p.max(prompt.len() as f64 / t0.elapsed().as_secs_f64());
        let mut first = None;
        let s0 = stats(model)?;
        let out = model.generate(prompt, decode + 1, &[], |_| {
            first.get_or_insert_with(Instant::now);
        })?;
        let s1 = stats(model)?;
        let n = out.len().saturating_sub(1);
        if let Some(f) = first {
            best_d = best_d.max(n as f64 / f.elapsed().as_secs_f64().max(1e-9));
        }
        // the prompt's submits are not decode's
        let prompt_submits = prompt.len().div_ceil(512) as u64;
        submits = (s1.submits - s0.submits).saturating_sub(prompt_submits) as f64 / n.max(1) as f64;
    }
    let dispatches = model
        .with_gpu(|g, table, reg| g.dispatches_per_token(table, reg))
        .ok_or("the model is not on a GPU")??;
    Ok((best_p, best_d, dispatches, submits))
}

/// A seeded xorshift byte stream: `n` bytes per call (benchmark weights, whose values do not
/// matter).
pub(super) fn random_bytes(mut seed: u32) -> impl FnMut(usize) -> Vec<u8> {
    move |n| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    }
}

/// The GGUF block types the GPU decodes, as the mat-vec benchmark runs them.
const MATVEC_TYPES: [QType; 10] = [
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
];

/// Copy-kernel GB/s, then (type, rows × cols, mat-vec GB/s) for every GGUF block type: a decode
/// mat-vec (batch 1) over a weight as large as one binding allows (at most 64 Mi weights), in
/// the layout the model uploads. The blocks are random bytes: the kernels' speed does not depend
/// on the values (no branch reads them), so no valid scales are needed.
type Bandwidth = (f64, Vec<(QType, (u32, u32), f64)>);

fn bandwidth(gpu: &Gpu) -> CliResult<Bandwidth> {
    let ops = Ops::new(gpu);
    let limit = gpu.binding_limit();
    let cols = 4096usize;
    let mut rnd = random_bytes(0x9e3779b9);
    let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut out = Vec::new();
    let mut largest = 0u64;
    for qtype in MATVEC_TYPES {
        let row_bytes = QMatrix::row_bytes(qtype, cols)?;
        let rows = ((limit / row_bytes as u64) as usize).min(16384) / 8 * 8;
        let q = QMatrix::from_raw(qtype, rows, cols, rnd(rows * row_bytes), Vec::new())?;
        let packed = Packed::from_qmatrix(&q)?;
        let bytes = packed.nbytes();
        largest = largest.max(bytes);
        let wq = storage(gpu, "weights", &packed.wq)?;
        let ws = storage(gpu, "scales", &packed.ws)?;
        let p = LinearParams {
            wd: packed.desc,
            n: 1,
            x_stride: packed.desc.cols,
            y_stride: packed.desc.rows,
            c8n: packed.c8n,
            ..Default::default()
        };
        let y = vec![0f32; rows];
        let t = ops.time(
            Kernel::Linear {
                fmt: packed.fmt,
                tn: TN_DECODE,
            },
            bytemuck::bytes_of(&p),
            &[
                Input::F32(&x),
                Input::Buffer(&wq),
                Input::Buffer(&ws),
                Input::F32(&[0.0; 4]),
                Input::F32(&[0.0; 4]),
                Input::F32(&[0.0; 4]),
                Input::F32(&y),
                Input::U32(&[0; 4]),
            ],
            (packed.desc.rows.div_ceil(8), 1, 1),
            20,
        )?;
        out.push((
            qtype,
            (packed.desc.rows, packed.desc.cols),
            bytes as f64 / t / 1e9,
        ));
    }
    // copy as many bytes as the largest weight
    let len4 = u32::try_from(largest / 16).map_err(|_| "copy size out of range")?;
    let src = ops.upload_u32(&vec![1u32; len4 as usize * 4])?;
    let dst = ops.upload_u32(&vec![0u32; len4 as usize * 4])?;
    let cp = CopyParams {
        len4,
        ..Default::default()
    };
    let groups = len4.div_ceil(256).min(65535);
    let t_cp = ops.time(
        Kernel::Copy,
        bytemuck::bytes_of(&cp),
        &[Input::Buffer(&src), Input::Buffer(&dst)],
        (groups, 1, 1),
        20,
    )?;
    // the copy reads and writes every byte
    Ok((2.0 * (len4 as u64 * 16) as f64 / t_cp / 1e9, out))
}

pub fn run(
    model: &mut Model,
    args: &ModelArgs,
    prompt_tokens: usize,
    decode: usize,
    runs: usize,
    json_out: Option<&Path>,
    f16_weights: bool,
) -> CliResult<()> {
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|i| ((i * 7919) % 10000 + 100) as u32)
        .collect();
    let opts = DeviceOptions {
        max_context: Some(args.max_context.unwrap_or(prompt_tokens + decode + 8)),
        f16_weights,
        ..Default::default()
    };
    model.set_device(Device::Gpu, &opts)?;
    let (gpu, base_bytes) = model
        .with_gpu(|g, _, _| (g.gpu().clone(), g.base_bytes()))
        .ok_or("the model is not on a GPU")?;
    println!(
        "device: {} ({}, {}, driver {}); weights {}, {:.1} MiB on the GPU",
        gpu.info.name,
        gpu.info.backend,
        gpu.info.device_type,
        gpu.info.driver,
        if f16_weights { "f16" } else { "as stored" },
        base_bytes as f64 / (1 << 20) as f64
    );
    println!("| configuration | prefill tok/s ({prompt_tokens}) | decode tok/s | dispatches/token | submits/token |");
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    let user_adapters = !model.registry().adapter_names().is_empty();
    let mut configs: Vec<(&str, Option<serde_json::Value>)> = Vec::new();
    if user_adapters {
        configs.push(("given adapters", None));
    }
    configs.extend([
        ("no adapter", None),
        (
            "LoRA r=8 q,v",
            Some(json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false})),
        ),
        (
            "LoRA r=16 all linear",
            Some(json!({"peft_type": "LORA", "r": 16, "lora_alpha": 32,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "init_lora_weights": false})),
        ),
        (
            "IA3",
            Some(json!({"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"],
                "feedforward_modules": ["down_proj"], "init_ia3_weights": false})),
        ),
    ]);
    let mut base_decode = None;
    for (i, (label, cfg)) in configs.into_iter().enumerate() {
        match (label, cfg) {
            ("given adapters", _) => model.enable_adapters()?,
            ("no adapter", _) if user_adapters => model.disable_adapters()?,
            (_, Some(cfg)) => {
                let name = format!("bench{i}");
                let cfg = graft_adapters::config::config_from_kwargs(cfg)?;
                if let Err(e) = model.add_adapter(cfg, Some(&name), 0) {
                    println!("| {label} | (not run: {e}) | | | |");
                    continue;
                }
                model.enable_adapters()?;
                model.set_adapter(&[&name])?;
            }
            _ => {}
        }
        let (p, d, disp, subs) = measure(model, &prompt, decode, runs)?;
        let overhead = match base_decode {
            Some(b) if label != "no adapter" => {
                format!(" ({:+.1}% time/token)", (b / d - 1.0) * 100.0)
            }
            _ => String::new(),
        };
        if label == "no adapter" {
            base_decode = Some(d);
        }
        println!("| {label} | {p:.1} | {d:.1}{overhead} | {disp} | {subs:.2} |");
        rows.push(
            json!({"configuration": label, "prefill_tps": p, "decode_tps": d,
            "dispatches_per_token": disp, "submits_per_token": subs}),
        );
    }
    let (copy, matvec) = bandwidth(&gpu)?;
    println!("bandwidth: copy kernel {copy:.1} GB/s; decode mat-vec per weight type (GB/s of weights read, % of the copy kernel):");
    for (qtype, (r, c), gbps) in &matvec {
        println!(
            "  {:<5} {r}x{c}: {gbps:.1} GB/s = {:.0}%",
            format!("{qtype:?}"),
            gbps / copy * 100.0
        );
    }
    let compiled = model
        .with_gpu(|g, _, _| g.pipelines_compiled())
        .unwrap_or(0);
    println!("pipelines compiled: {compiled} (switching adapters added none)");
    if let Some(j) = json_out {
        let v = json!({
            "engine": "graft-gpu", "device": gpu.info.name, "backend": gpu.info.backend,
            "driver": gpu.info.driver, "f16_weights": f16_weights, "prompt_tokens": prompt_tokens,
            "decode_tokens": decode, "rows": rows, "copy_gbps": copy,
            "matvec": matvec.iter().map(|(t, (r, c), g)| json!({"type": format!("{t:?}"), "rows": r, "cols": c, "gbps": g})).collect::<Vec<_>>(),
        });
        std::fs::write(j, serde_json::to_string_pretty(&v)?)
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    Ok(())
}

/// A GGUF of SmolLM2-135M's exact shape and formats (Q4_1 linear weights, a Q8_0 embedding tied
/// as the head, f32 norms) with random weights: for benchmarking on a machine the 96 MB file
/// cannot be copied to. Speed depends on shapes and formats, not on the values.
pub fn synthetic_smollm2() -> Vec<u8> {
    use graft_arch::gguf::writer::{write, RawTensor};
    use graft_arch::gguf::Value;
    let (vocab, h, inter, layers, heads, kv, hd) =
        (49152u64, 576u64, 1536u64, 30, 9u64, 3u64, 64u64);
    let mut bytes = random_bytes(0x2545f491);
    // (d, m) f16 = (2^-7, -2^-4) for Q4_1; d = 2^-9 for Q8_0
    let q4_1 = |rows: u64, cols: u64, bytes: &mut dyn FnMut(usize) -> Vec<u8>| -> Vec<u8> {
        let blocks = (rows * cols / 32) as usize;
        let nib = bytes(blocks * 16);
        let mut out = Vec::with_capacity(blocks * 20);
        for b in 0..blocks {
            out.extend_from_slice(&0x2000u16.to_le_bytes());
            out.extend_from_slice(&0xac00u16.to_le_bytes());
            out.extend_from_slice(&nib[b * 16..(b + 1) * 16]);
        }
        out
    };
    let mut tensors = Vec::new();
    let emb_blocks = (vocab * h / 32) as usize;
    let q = bytes(emb_blocks * 32);
    let mut emb = Vec::with_capacity(emb_blocks * 34);
    for b in 0..emb_blocks {
        emb.extend_from_slice(&0x1800u16.to_le_bytes());
        emb.extend_from_slice(&q[b * 32..(b + 1) * 32]);
    }
    tensors.push(RawTensor {
        name: "token_embd.weight".into(),
        dims: vec![h, vocab],
        ggml_type: 8,
        data: emb,
    });
    let ones = |n: u64| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    tensors.push(RawTensor {
        name: "output_norm.weight".into(),
        dims: vec![h],
        ggml_type: 0,
        data: ones(h),
    });
    for l in 0..layers {
        for (name, rows, cols) in [
            ("attn_q", heads * hd, h),
            ("attn_k", kv * hd, h),
            ("attn_v", kv * hd, h),
            ("attn_output", h, heads * hd),
            ("ffn_gate", inter, h),
            ("ffn_up", inter, h),
            ("ffn_down", h, inter),
        ] {
            tensors.push(RawTensor {
                name: format!("blk.{l}.{name}.weight"),
                dims: vec![cols, rows],
                ggml_type: 3,
                data: q4_1(rows, cols, &mut bytes),
            });
        }
        for name in ["attn_norm", "ffn_norm"] {
            tensors.push(RawTensor {
                name: format!("blk.{l}.{name}.weight"),
                dims: vec![h],
                ggml_type: 0,
                data: ones(h),
            });
        }
    }
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("llama.embedding_length", Value::U32(h as u32)),
        ("llama.feed_forward_length", Value::U32(inter as u32)),
        ("llama.block_count", Value::U32(layers)),
        ("llama.attention.head_count", Value::U32(heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(kv as u32)),
        ("llama.context_length", Value::U32(8192)),
        ("llama.rope.freq_base", Value::F32(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    write(&meta, &tensors)
}
