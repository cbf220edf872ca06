//! `graft bench-serve`: closed-loop clients against an OpenAI-compatible server (graft serve,
//! or llama.cpp's llama-server for comparison): each client sends its next request when the
//! previous one ends. Fixed prompt and answer lengths (`ignore_eos`); output tokens/s and
//! p50/p99 time to first token and inter-token latency, per client count.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::CliResult;

#[derive(Args)]
pub struct BenchServeCmd {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// How requests pick their adapter: graft (`model` names it, as vLLM) or llama
    /// (llama-server's per-request `lora` list, adapter k = the k-th --lora it loaded).
    #[arg(long, default_value = "graft", value_parser = ["graft", "llama"])]
    pub api: String,
    /// The base's `model` name (graft) or any name (llama).
    #[arg(long)]
    pub base: String,
    /// Adapters requests are spread over, in turn (graft: names; llama: ignored beyond their
    /// count, see --adapters-count). Empty: every request runs the base.
    #[arg(long, value_delimiter = ',')]
    pub adapters: Vec<String>,
    /// Client counts to run, one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// Requests each client sends.
    #[arg(long, default_value_t = 2)]
    pub requests_per_client: usize,
    /// Prompt text (the same for every request).
    #[arg(
        long,
        default_value = "Write a short story about a lighthouse keeper who finds a message in a bottle. Describe the sea, the weather and the keeper's thoughts."
    )]
    pub prompt: String,
    /// Tokens each answer has (EOS ignored).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// A label for the results (e.g. graft/8-adapters).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Also append the results as JSON lines to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

struct One {
    ttft: f64,
    itl: Vec<f64>,
    tokens: u64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn one(c: &BenchServeCmd, agent: &ureq::Agent, k: usize) -> CliResult<One> {
    let mut body = json!({
        "prompt": c.prompt, "max_tokens": c.max_tokens, "temperature": 0,
        "stream": true, "ignore_eos": true, "stream_options": {"include_usage": true},
    });
    if c.api == "llama" {
        // every request has the same prompt: without this llama-server reuses the previous
        // request's KV cache for it and skips the prefill graft does
        body["cache_prompt"] = json!(false);
    }
    match (c.api.as_str(), c.adapters.is_empty()) {
        // llama-server: an explicit list even for the base, since a request without one runs
        // the server's global scales and may reuse a slot's cache made with another adapter
        ("llama", true) => {
            body["model"] = json!(c.base);
            body["lora"] = json!([{"id": 0, "scale": 0.0}]);
        }
        (_, true) => body["model"] = json!(c.base),
        ("llama", false) => {
            body["model"] = json!(c.base);
            let pick = k % c.adapters.len();
            body["lora"] = Value::Array(
                (0..c.adapters.len())
                    .map(|i| json!({"id": i, "scale": if i == pick { 1.0 } else { 0.0 }}))
                    .collect(),
            );
        }
        _ => body["model"] = json!(c.adapters[k % c.adapters.len()]),
    }
    let t0 = Instant::now();
    let resp = agent
        .post(format!("{}/v1/completions", c.url))
        .header("Content-Type", "application/json")
        .send(body.to_string())?;
    if resp.status() != 200 {
        return Err(format!("the server answered {}", resp.status()).into());
    }
    let (mut first, mut last, mut itl, mut tokens) = (None, None, Vec::new(), 0u64);
    let mut chunks = 0u64;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line?;
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(d)?;
        if let Some(u) = v["usage"]["completion_tokens"].as_u64() {
            tokens = u;
        }
        let text = v["choices"][0]["text"].as_str().unwrap_or("");
        if !text.is_empty() {
            let now = t0.elapsed().as_secs_f64();
            chunks += 1;
            if first.is_none() {
                first = Some(now);
            } else if let Some(l) = last {
                itl.push(now - l);
            }
            last = Some(now);
        }
    }
    if tokens == 0 {
        tokens = chunks;
    }
    Ok(One {
        ttft: first.unwrap_or(f64::NAN),
        itl,
        tokens,
    })
}

pub fn bench_serve(c: &BenchServeCmd) -> CliResult<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3600)))
        .build()
        .into();
    // one warm-up request
    one(c, &agent, 0)?;
    println!(
        "{:<28} {:>7} {:>8} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "run", "clients", "requests", "out tok/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99"
    );
    for &n in &c.clients {
        let t0 = Instant::now();
        let results: Vec<Result<Vec<One>, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|client| {
                    let agent = agent.clone();
                    s.spawn(move || -> Result<Vec<One>, String> {
                        (0..c.requests_per_client)
                            .map(|r| one(c, &agent, client + r * n).map_err(|e| e.to_string()))
                            .collect()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a client thread panicked".into()))
                })
                .collect()
        });
        let wall = t0.elapsed().as_secs_f64();
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        let tokens: u64 = all.iter().map(|o| o.tokens).sum();
        let mut ttft: Vec<f64> = all.iter().map(|o| o.ttft).collect();
        let mut itl: Vec<f64> = all.iter().flat_map(|o| o.itl.iter().copied()).collect();
        let tps = tokens as f64 / wall;
        let (t50, t99, i50, i99) = (
            pct(&mut ttft, 0.5) * 1e3,
            pct(&mut ttft, 0.99) * 1e3,
            pct(&mut itl, 0.5) * 1e3,
            pct(&mut itl, 0.99) * 1e3,
        );
        println!(
            "{:<28} {:>7} {:>8} {:>12.1} {:>8.0}ms {:>8.0}ms {:>8.1}ms {:>8.1}ms",
            c.label,
            n,
            all.len(),
            tps,
            t50,
            t99,
            i50,
            i99
        );
        if let Some(p) = &c.json {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            writeln!(
                f,
                "{}",
                json!({"label": c.label, "clients": n, "requests": all.len(), "output_tokens_per_s": tps,
                       "ttft_ms_p50": t50, "ttft_ms_p99": t99, "itl_ms_p50": i50, "itl_ms_p99": i99,
                       "adapters": c.adapters.len(), "max_tokens": c.max_tokens, "wall_s": wall})
            )?;
        }
    }
    Ok(())
}
