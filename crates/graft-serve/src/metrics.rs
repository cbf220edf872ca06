//! `GET /metrics` in Prometheus' text format: requests and tokens by adapter, the queue, the
//! batches, time to first token and inter-token latency.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounterVec,
    pub generation_tokens: IntCounterVec,
    pub queue_depth: IntGauge,
    pub running: IntGauge,
    pub batch_sequences: Histogram,
    pub batch_tokens: Histogram,
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    pub adapters_resident: IntGauge,
    pub adapter_bytes: Gauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(t) => t,
        // names and labels are constants below: this cannot fail at run time
        Err(e) => unreachable!("metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let by_adapter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let requests = by_adapter(
            "graft_requests_total",
            "Finished requests by adapter (the base's name for none) and finish reason.",
            &["adapter", "finish_reason"],
        );
        let prompt_tokens = by_adapter(
            "graft_prompt_tokens_total",
            "Prompt tokens run, by adapter.",
            &["adapter"],
        );
        let generation_tokens = by_adapter(
            "graft_generation_tokens_total",
            "Tokens generated, by adapter.",
            &["adapter"],
        );
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let queue_depth = gauge("graft_queue_depth", "Requests waiting for a batch slot.");
        let running = gauge("graft_running_sequences", "Sequences in the running batch.");
        let adapters_resident = gauge("graft_adapters_resident", "Adapters held in memory.");
        let adapter_bytes = must(Gauge::new(
            "graft_adapter_memory_bytes",
            "Bytes the resident adapters hold.",
        ));
        must(registry.register(Box::new(adapter_bytes.clone())));
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = must(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets),
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let sizes = vec![
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ];
        let batch_sequences = hist(
            "graft_batch_sequences",
            "Sequences in each forward pass.",
            sizes.clone(),
        );
        let batch_tokens = hist("graft_batch_tokens", "Tokens in each forward pass.", sizes);
        let secs = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &["adapter"],
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let ttft = secs(
            "graft_time_to_first_token_seconds",
            "From a request's arrival to its first token, by adapter.",
            vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        );
        let itl = secs(
            "graft_inter_token_latency_seconds",
            "Between consecutive tokens of a request, by adapter.",
            vec![
                0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
            ],
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            generation_tokens,
            queue_depth,
            running,
            batch_sequences,
            batch_tokens,
            ttft,
            itl,
            adapters_resident,
            adapter_bytes,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
