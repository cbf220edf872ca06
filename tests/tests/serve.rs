//! `graft serve` over HTTP, with a Rust client (ureq), on the real SmolLM2-135M-Instruct Q4_1
//! and LoRA adapters made from the committed smollm2-pirate one: answers streamed and whole,
//! equal to what `graft generate` gives each request alone while other adapters' requests
//! share the batch; seeded sampling; every error status; a client that goes away; the queue
//! limit; adapters loaded and unloaded during traffic; the API key; shutdown.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graft_models::{LoadAdapterOptions, Model, Sampling};
use graft_serve::{Loader, ServeConfig, Server};
use graft_text::{Message, Tokenizer};
use serde_json::{json, Value};

struct DirLoader;

impl Loader for DirLoader {
    fn load(
        &self,
        model: &Model,
        name: &str,
        source: &str,
    ) -> Result<graft_adapters::Adapter, String> {
        model
            .build_adapter_dir(
                Path::new(source),
                LoadAdapterOptions {
                    adapter_name: Some(name.into()),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())
    }

    fn allow_hub(&self) -> bool {
        false
    }
}

fn pirate() -> PathBuf {
    graft_tests::fixtures().join("../../adapters/smollm2-pirate")
}

/// A LoRA made from the pirate one: its B matrices scaled by `factor` (and rsLoRA's scale with
/// `rslora`), so that each adapter answers differently.
fn variant(dir: &Path, name: &str, factor: f32, rslora: bool) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(pirate().join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["use_rslora"] = json!(rslora);
    std::fs::write(out.join("adapter_config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(pirate().join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (k, v) in st.tensors() {
        let mut data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if k.contains("lora_B") {
            for x in &mut data {
                *x *= factor;
            }
        }
        let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((k, raw, v.shape().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, d, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("adapter_model.safetensors")).unwrap();
    out
}

/// Adapters a, b, c (LoRA ×1, ×−1.5 and rsLoRA ×0.5) in a temporary folder.
fn adapters(dir: &Path) -> Vec<(String, PathBuf)> {
    vec![
        ("a".into(), variant(dir, "a", 1.0, false)),
        ("b".into(), variant(dir, "b", -1.5, false)),
        ("c".into(), variant(dir, "c", 0.5, true)),
    ]
}

const BASE: &str = "smollm2";

fn tokenizer(m: &Model) -> Tokenizer {
    Tokenizer::from_gguf_metadata(&m.gguf_tokenizer_metadata().unwrap()).unwrap()
}

fn eos(m: &Model, tk: &Tokenizer) -> Vec<u32> {
    let mut e = m.eos_token_ids();
    if let Some(x) = tk.eos_id {
        if !e.contains(&x) {
            e.push(x);
        }
    }
    e
}

struct TestServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(
        adapters: &[(String, PathBuf)],
        edit: impl FnOnce(&mut ServeConfig),
    ) -> Option<TestServer> {
        TestServer::start_on(adapters, edit, false)
    }

    /// With `gpu`, the model runs on the test GPU (its batched passes).
    fn start_on(
        adapters: &[(String, PathBuf)],
        edit: impl FnOnce(&mut ServeConfig),
        gpu: bool,
    ) -> Option<TestServer> {
        let path = graft_tests::real_model()?;
        let mut model = Model::open_base(&path).unwrap();
        if gpu {
            let opts = graft_models::DeviceOptions {
                max_context: Some(256),
                open_gpu: Some(graft_tests::test_gpu()?),
                ..Default::default()
            };
            model.set_device(graft_models::Device::Gpu, &opts).unwrap();
        }
        let tk = tokenizer(&model);
        let eos = eos(&model, &tk);
        let mut cfg = ServeConfig {
            base_name: BASE.into(),
            max_batch: 8,
            max_context: 512,
            prefill_chunk: 512,
            max_queue: 64,
            adapter_memory: 1 << 30,
            api_key: None,
            shutdown_timeout: Duration::from_secs(30),
            gpu_adapter_slots: 4,
            max_lora_rank: 16,
        };
        edit(&mut cfg);
        let built: Vec<(String, String, graft_adapters::Adapter)> = adapters
            .iter()
            .map(|(n, p)| {
                let src = p.display().to_string();
                let a = DirLoader.load(&model, n, &src).unwrap();
                (n.clone(), src, a)
            })
            .collect();
        let server = Server::new(model, tk, eos, cfg, Arc::new(DirLoader), built).unwrap();
        Some(TestServer::serve(server))
    }

    /// Runs `server` on a loopback port in a thread of its own.
    fn serve(server: Server) -> TestServer {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                atx.send(l.local_addr().unwrap()).unwrap();
                server
                    .run(l, async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = arx.recv().unwrap();
        TestServer {
            url: format!("http://{addr}"),
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// (status, headers' retry-after, body)
fn post(url: &str, path: &str, body: &str, key: Option<&str>) -> (u16, Option<String>, String) {
    let mut r = agent()
        .post(format!("{url}{path}"))
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        r = r.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = r.send(body).unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let status = resp.status().as_u16();
    (status, retry, resp.body_mut().read_to_string().unwrap())
}

fn get(url: &str, path: &str) -> (u16, String) {
    let mut resp = agent().get(format!("{url}{path}")).call().unwrap();
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap(),
    )
}

fn chat_body(model: &str, user: &str, max_tokens: usize, stream: bool, extra: Value) -> String {
    let mut v = json!({
        "model": model,
        "messages": [{"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    });
    if stream {
        v["stream_options"] = json!({"include_usage": true});
    }
    if let Value::Object(m) = extra {
        for (k, x) in m {
            v[k] = x;
        }
    }
    v.to_string()
}

/// A whole or streamed answer: (text, finish_reason, completion_tokens).
fn ask(url: &str, body: &str) -> (String, String, u64) {
    let stream = serde_json::from_str::<Value>(body).unwrap()["stream"] == json!(true);
    let resp = agent()
        .post(format!("{url}/v1/chat/completions"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    if !stream {
        let v: Value = serde_json::from_reader(resp.into_body().into_reader()).unwrap();
        let c = &v["choices"][0];
        return (
            c["message"]["content"].as_str().unwrap().to_string(),
            c["finish_reason"].as_str().unwrap().to_string(),
            v["usage"]["completion_tokens"].as_u64().unwrap(),
        );
    }
    let (mut text, mut finish, mut usage, mut done) = (String::new(), String::new(), 0, 0);
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.unwrap();
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        if d == "[DONE]" {
            done += 1;
            continue;
        }
        assert_eq!(done, 0, "data after [DONE]");
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(c) = v["choices"].get(0) {
            if let Some(t) = c["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                assert!(finish.is_empty(), "two finish reasons");
                finish = f.to_string();
            }
        }
        if let Some(u) = v["usage"]["completion_tokens"].as_u64() {
            usage = u;
        }
    }
    assert_eq!(done, 1, "exactly one [DONE]");
    (text, finish, usage)
}

/// What `graft generate --chat` gives: greedy tokens of the chat prompt with one adapter (or
/// none) active, as text.
fn reference(
    adapters: &[(String, PathBuf)],
    model: Option<&str>,
    user: &str,
    max: usize,
) -> (String, u64) {
    let path = graft_tests::real_model().unwrap();
    let mut m = Model::open_base(&path).unwrap();
    for (n, p) in adapters {
        m.load_adapter(
            p,
            LoadAdapterOptions {
                adapter_name: Some(n.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    match model {
        Some(a) => m.set_adapter(&[a]).unwrap(),
        None => m.disable_adapters().unwrap(),
    }
    let tk = tokenizer(&m);
    let eos = eos(&m, &tk);
    let ids = tk
        .encode(
            &tk.apply_chat_template(&[Message::new("user", user)], true)
                .unwrap(),
            false,
        )
        .unwrap();
    let out = m
        .generate_with(&ids, max, &eos, &Sampling::default(), |_| {})
        .unwrap();
    (tk.decode(&out, true).unwrap(), out.len() as u64)
}

fn metric(url: &str, name: &str) -> f64 {
    let (_, text) = get(url, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn mixed_adapters_in_one_batch_answer_as_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ads = adapters(dir.path());
    let Some(srv) = TestServer::start(&ads, |_| {}) else {
        return;
    };
    let jobs: Vec<(&str, &str, bool)> = vec![
        (BASE, "What is the capital of France?", true),
        ("a", "What is the capital of France?", false),
        ("b", "Tell me about the sea.", true),
        ("c", "Name three colours.", false),
        ("a", "Write a haiku about ships.", true),
        ("b", "What is 2 + 2?", false),
        (BASE, "Say hello.", false),
        ("c", "Where do pirates live?", true),
    ];
    let max = 24;
    let answers: Vec<(String, String, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(m, q, stream)| {
                let url = srv.url.clone();
                s.spawn(move || ask(&url, &chat_body(m, q, max, *stream, json!({}))))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // the requests did share passes
    let passes = metric(&srv.url, "graft_batch_sequences_count");
    let rows = metric(&srv.url, "graft_batch_sequences_sum");
    // some pass ran several sequences (an average would depend on how fast the clients
    // arrive: under load, 101 rows in 51 passes once failed a `> 2 per pass` check)
    assert!(rows > passes, "{rows} rows in {passes} passes: not batched");
    for ((m, q, _), (text, finish, n)) in jobs.iter().zip(&answers) {
        let adapter = (*m != BASE).then_some(*m);
        let (want, want_n) = reference(&ads, adapter, q, max);
        assert_eq!(text, &want, "{m}: {q}");
        assert_eq!(*n, want_n, "{m}: {q}");
        assert_eq!(
            finish,
            if want_n as usize == max {
                "length"
            } else {
                "stop"
            }
        );
    }
    // the adapters do change the answers (else the test proves nothing)
    assert_ne!(answers[0].0, answers[1].0);
}

/// The same on the GPU with the real model: requests on three adapters and the base share its
/// batched passes, with two adapter slots (the third adapter waits for one), and each answer
/// is what the GPU's one-sequence generation gives that request alone. Ignored: about 6
/// minutes on lavapipe (SmolLM2 runs near a token per second there); the tiny-model test
/// below runs the same path in CI.
#[test]
#[ignore]
fn gpu_mixed_adapters_in_one_batch_answer_as_alone_real_model() {
    if graft_tests::test_gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ads = adapters(dir.path());
    let Some(srv) = TestServer::start_on(
        &ads,
        |c| {
            c.max_batch = 4;
            c.max_context = 256;
            c.prefill_chunk = 64;
            c.gpu_adapter_slots = 2;
        },
        true,
    ) else {
        return;
    };
    // lavapipe runs SmolLM2 at about a token per second: few, short answers
    let jobs: Vec<(&str, &str, bool)> = vec![
        ("a", "What is the capital of France?", true),
        ("b", "What is the capital of France?", false),
        ("c", "Name three colours.", true),
        (BASE, "Say hello.", false),
    ];
    let max = 3;
    let answers: Vec<(String, String, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(m, q, stream)| {
                let url = srv.url.clone();
                s.spawn(move || ask(&url, &chat_body(m, q, max, *stream, json!({}))))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let passes = metric(&srv.url, "graft_batch_sequences_count");
    let rows = metric(&srv.url, "graft_batch_sequences_sum");
    assert!(rows > passes, "{rows} rows in {passes} passes: not batched");
    // the reference: the GPU's one-sequence generation, each adapter alone
    let path = graft_tests::real_model().unwrap();
    let mut m = Model::open_base(&path).unwrap();
    for (n, p) in &ads {
        m.load_adapter(
            p,
            LoadAdapterOptions {
                adapter_name: Some(n.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let opts = graft_models::DeviceOptions {
        max_context: Some(256),
        open_gpu: graft_tests::test_gpu(),
        ..Default::default()
    };
    m.set_device(graft_models::Device::Gpu, &opts).unwrap();
    let tk = tokenizer(&m);
    let eos = eos(&m, &tk);
    for ((name, q, _), (text, _, n)) in jobs.iter().zip(&answers) {
        if *name == BASE {
            m.disable_adapters().unwrap();
        } else {
            m.enable_adapters().unwrap();
            m.set_adapter(&[name]).unwrap();
        }
        let ids = tk
            .encode(
                &tk.apply_chat_template(&[Message::new("user", q)], true)
                    .unwrap(),
                false,
            )
            .unwrap();
        let out = m
            .generate_with(&ids, max, &eos, &Sampling::default(), |_| {})
            .unwrap();
        assert_eq!(text, &tk.decode(&out, true).unwrap(), "{name}: {q}");
        assert_eq!(*n, out.len() as u64, "{name}: {q}");
    }
    assert_ne!(answers[0].0, answers[1].0, "the adapters change nothing");
}

#[test]
fn seeded_sampling_is_reproducible_in_any_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ads = adapters(dir.path());
    let Some(srv) = TestServer::start(&ads, |_| {}) else {
        return;
    };
    let body = |seed: u64| {
        chat_body(
            "a",
            "Tell me a story.",
            20,
            false,
            json!({"temperature": 0.9, "top_p": 0.95, "top_k": 40, "seed": seed}),
        )
    };
    let alone = ask(&srv.url, &body(7));
    let crowd: Vec<(String, String, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|k| {
                let url = srv.url.clone();
                let b = if k == 0 {
                    body(7)
                } else {
                    chat_body(
                        "b",
                        "Tell me a story.",
                        20,
                        true,
                        json!({"temperature": 1.0}),
                    )
                };
                s.spawn(move || ask(&url, &b))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, crowd[0]);
    let other = ask(&srv.url, &body(8));
    assert_ne!(alone.0, other.0, "a different seed gave the same text");
}

#[test]
fn every_error_has_its_status_and_openai_shape() {
    let Some(srv) = TestServer::start(&[], |c| {
        c.api_key = Some("sekrit".into());
        c.max_context = 64;
    }) else {
        return;
    };
    let u = &srv.url;
    let k = Some("sekrit");
    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        (
            "/v1/chat/completions",
            chat_body(BASE, "hi", 4, false, json!({})),
            None,
            401,
        ),
        (
            "/v1/chat/completions",
            chat_body(BASE, "hi", 4, false, json!({})),
            Some("wrong"),
            401,
        ),
        ("/v1/chat/completions", "{not json".into(), k, 400),
        (
            "/v1/chat/completions",
            chat_body(BASE, "hi", 4, false, json!({"n": 2})),
            k,
            400,
        ),
        (
            "/v1/chat/completions",
            chat_body(BASE, "hi", 4, false, json!({"logit_bias": {"5": 3}})),
            k,
            400,
        ),
        (
            "/v1/chat/completions",
            chat_body(BASE, "hi", 4, false, json!({"frobnicate": true})),
            k,
            400,
        ),
        (
            "/v1/chat/completions",
            chat_body(BASE, "hi", 4, false, json!({"temperature": -1})),
            k,
            400,
        ),
        (
            "/v1/chat/completions",
            chat_body(BASE, "hi", 60, false, json!({})),
            k,
            400,
        ),
        (
            "/v1/chat/completions",
            chat_body("nobody", "hi", 4, false, json!({})),
            k,
            404,
        ),
        (
            "/v1/chat/completions",
            chat_body(BASE, &"word ".repeat(100), 4, false, json!({})),
            k,
            413,
        ),
        (
            "/v1/completions",
            json!({"model": BASE, "prompt": [999999]}).to_string(),
            k,
            400,
        ),
        (
            "/v1/completions",
            json!({"model": BASE, "prompt": ["a", "b"]}).to_string(),
            k,
            400,
        ),
        (
            "/v1/load_lora_adapter",
            json!({"lora_name": "x"}).to_string(),
            k,
            400,
        ),
        (
            "/v1/load_lora_adapter",
            json!({"lora_name": "x", "lora_path": "/nonexistent"}).to_string(),
            k,
            400,
        ),
        (
            "/v1/unload_lora_adapter",
            json!({"lora_name": "x"}).to_string(),
            k,
            404,
        ),
        ("/v1/nothing", "{}".into(), k, 404),
    ];
    for (path, body, key, want) in cases {
        let (status, _, text) = post(u, path, &body, key);
        assert_eq!(status, want, "{path} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert!(v["error"]["message"].is_string(), "{text}");
        assert!(v["error"]["type"].is_string(), "{text}");
    }
    // with the key: fine; /health and /metrics need none
    let (status, _, _) = post(
        u,
        "/v1/completions",
        &json!({"model": BASE, "prompt": "Hi", "max_tokens": 2}).to_string(),
        k,
    );
    assert_eq!(status, 200);
    assert_eq!(get(u, "/health").0, 200);
    assert_eq!(get(u, "/metrics").0, 200);
}

/// Reads SSE lines until `n` data chunks have come.
fn read_chunks(reader: &mut impl BufRead, n: usize) {
    let mut got = 0;
    let mut line = String::new();
    while got < n {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
        if line.starts_with("data: ") {
            got += 1;
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_leaves_frees_its_slot() {
    let Some(srv) = TestServer::start(&[], |c| c.max_batch = 1) else {
        return;
    };
    let resp = agent()
        .post(format!("{}/v1/chat/completions", srv.url))
        .header("Content-Type", "application/json")
        .send(chat_body(
            BASE,
            "Count to one thousand.",
            400,
            true,
            json!({"stop": null}),
        ))
        .unwrap();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    read_chunks(&mut reader, 3);
    drop(reader); // the client goes away mid-answer
    wait_for("the cancellation", || {
        metric(
            &srv.url,
            "graft_requests_total{adapter=\"smollm2\",finish_reason=\"cancelled\"}",
        ) == 1.0
    });
    // the only slot is free again: the next request runs at once
    let (_, finish, _) = ask(&srv.url, &chat_body(BASE, "Say hi.", 4, false, json!({})));
    assert!(finish == "length" || finish == "stop");
    assert_eq!(metric(&srv.url, "graft_running_sequences"), 0.0);
}

#[test]
fn a_full_queue_answers_429_and_loses_nothing() {
    let Some(srv) = TestServer::start(&[], |c| {
        c.max_batch = 1;
        c.max_queue = 1;
    }) else {
        return;
    };
    let url = srv.url.clone();
    std::thread::scope(|s| {
        // A runs (the one slot) …
        let resp = agent()
            .post(format!("{url}/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .send(chat_body(
                BASE,
                "Tell me about the sea.",
                48,
                true,
                json!({}),
            ))
            .unwrap();
        let mut a = BufReader::new(resp.into_body().into_reader());
        read_chunks(&mut a, 2);
        // … B waits (the one queue place) …
        let u2 = url.clone();
        let b = s.spawn(move || ask(&u2, &chat_body(BASE, "Say hi.", 8, false, json!({}))));
        wait_for("B in the queue", || {
            metric(&url, "graft_queue_depth") == 1.0
        });
        // … so C is turned away, with Retry-After
        let (status, retry, text) = post(
            &url,
            "/v1/chat/completions",
            &chat_body(BASE, "x", 2, false, json!({})),
            None,
        );
        assert_eq!(status, 429, "{text}");
        assert_eq!(retry.as_deref(), Some("1"));
        // A and B each finish once
        let mut rest = String::new();
        a.read_to_string(&mut rest).unwrap();
        assert_eq!(rest.matches("data: [DONE]").count(), 1);
        assert_eq!(rest.matches("\"finish_reason\":\"").count(), 1);
        let (_, finish, _) = b.join().unwrap();
        assert!(!finish.is_empty());
    });
    assert_eq!(metric(&url, "graft_requests_total"), 2.0);
}

#[test]
fn adapters_load_and_unload_while_requests_run() {
    let dir = tempfile::tempdir().unwrap();
    let ads = adapters(dir.path());
    let Some(srv) = TestServer::start(&ads[..1], |_| {}) else {
        return;
    };
    let url = srv.url.clone();
    std::thread::scope(|s| {
        let u = url.clone();
        let running = s.spawn(move || {
            ask(
                &u,
                &chat_body("a", "Tell me about the sea.", 40, true, json!({})),
            )
        });
        wait_for("a running request", || {
            metric(&url, "graft_running_sequences") >= 1.0
        });
        let body =
            json!({"lora_name": "b", "lora_path": ads[1].1.display().to_string()}).to_string();
        let (status, _, text) = post(&url, "/v1/load_lora_adapter", &body, None);
        assert_eq!(status, 200, "{text}");
        let (status, _, _) = post(&url, "/v1/load_lora_adapter", &body, None);
        assert_eq!(status, 400, "loading a name twice");
        let (_, models) = get(&url, "/v1/models");
        let v: Value = serde_json::from_str(&models).unwrap();
        let b = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "b")
            .unwrap();
        assert_eq!(b["parent"], BASE);
        let (text_b, _, _) = ask(&url, &chat_body("b", "Say hi.", 8, false, json!({})));
        assert_eq!(text_b, reference(&ads, Some("b"), "Say hi.", 8).0);
        // unloading `a` while its request runs: that request finishes, new ones get 404
        let (status, _, _) = post(
            &url,
            "/v1/unload_lora_adapter",
            &json!({"lora_name": "a"}).to_string(),
            None,
        );
        assert_eq!(status, 200);
        let (status, _, _) = post(
            &url,
            "/v1/chat/completions",
            &chat_body("a", "x", 2, false, json!({})),
            None,
        );
        assert_eq!(status, 404);
        let (text, _, n) = running.join().unwrap();
        let (want, want_n) = reference(&ads, Some("a"), "Tell me about the sea.", 40);
        assert_eq!((text, n), (want, want_n));
    });
}

#[test]
fn adapters_past_the_memory_budget_are_dropped_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let ads = adapters(dir.path());
    // room for about one adapter (each ~0.9 MiB)
    let Some(srv) = TestServer::start(&ads, |c| c.adapter_memory = 1 << 20) else {
        return;
    };
    assert_eq!(metric(&srv.url, "graft_adapters_resident"), 1.0);
    for m in ["a", "b", "c", "a"] {
        let (text, _, _) = ask(&srv.url, &chat_body(m, "Say hi.", 6, false, json!({})));
        assert_eq!(text, reference(&ads, Some(m), "Say hi.", 6).0, "{m}");
    }
    assert_eq!(metric(&srv.url, "graft_adapters_resident"), 1.0);
}

#[test]
fn shutdown_lets_running_requests_finish_and_refuses_new_ones() {
    let Some(mut srv) = TestServer::start(&[], |_| {}) else {
        return;
    };
    let url = srv.url.clone();
    let resp = agent()
        .post(format!("{url}/v1/chat/completions"))
        .header("Content-Type", "application/json")
        .send(chat_body(
            BASE,
            "Tell me about the sea.",
            30,
            true,
            json!({}),
        ))
        .unwrap();
    let mut a = BufReader::new(resp.into_body().into_reader());
    read_chunks(&mut a, 2);
    let stopper = std::thread::spawn(move || srv.shutdown());
    let mut rest = String::new();
    a.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.matches("data: [DONE]").count(), 1, "{rest}");
    stopper.join().unwrap();
    // the listener is closed
    assert!(agent().get(format!("{url}/health")).call().is_err());
}

/// A word-level tokenizer over the tiny fixture model's 128 ids ("w0" … "w127").
fn tiny_tokenizer() -> Tokenizer {
    let vocab: serde_json::Map<String, Value> =
        (0..128).map(|i| (format!("w{i}"), json!(i))).collect();
    let t = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    Tokenizer::from_bytes(t.to_string().as_bytes(), None).unwrap()
}

/// The GPU's batched passes behind the server, on the tiny fixture model (fast on lavapipe):
/// eight requests over LoRA, rsLoRA, DoRA, IA3 and AdaLoRA adapters and the base, four at a
/// time in two adapter slots (so adapters wait for and take over slots), prompts longer than
/// the prefill chunk; each answer is what the GPU's one-sequence generation gives that request
/// alone. An adapter the slots cannot hold (rank above the cap) is refused as it loads (400).
#[test]
fn gpu_server_answers_as_alone_on_the_tiny_model() {
    let Some(gpu) = graft_tests::test_gpu() else {
        return;
    };
    let cases = graft_tests::fixtures().join("cases");
    let ads: Vec<(String, PathBuf)> = [
        ("lora", "lora_qv"),
        ("rslora", "all_linear_rslora_patterns"),
        ("dora", "dora"),
        ("ia3", "ia3"),
        ("adalora", "adalora"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), cases.join(c).join("adapters/default")))
    .collect();
    let base = graft_tests::fixtures().join("models/llama");
    let open = || {
        let mut m = Model::open_base(&base).unwrap();
        let opts = graft_models::DeviceOptions {
            max_context: Some(64),
            open_gpu: Some(gpu.clone()),
            ..Default::default()
        };
        m.set_device(graft_models::Device::Gpu, &opts).unwrap();
        m
    };
    let model = open();
    let cfg = ServeConfig {
        base_name: BASE.into(),
        max_batch: 4,
        max_context: 64,
        prefill_chunk: 8,
        max_queue: 64,
        adapter_memory: 1 << 30,
        api_key: None,
        shutdown_timeout: Duration::from_secs(30),
        gpu_adapter_slots: 2,
        max_lora_rank: 16,
    };
    let built: Vec<(String, String, graft_adapters::Adapter)> = ads
        .iter()
        .map(|(n, p)| {
            let src = p.display().to_string();
            (
                n.clone(),
                src.clone(),
                DirLoader.load(&model, n, &src).unwrap(),
            )
        })
        .collect();
    let server = Server::new(
        model,
        tiny_tokenizer(),
        vec![2],
        cfg,
        Arc::new(DirLoader),
        built,
    )
    .unwrap();
    let srv = TestServer::serve(server);
    let prompt = |len: usize, seed: u32| -> Vec<u32> {
        (0..len as u32)
            .map(|i| (i * 37 + seed * 11 + 3) % 125 + 3)
            .collect()
    };
    let jobs: Vec<(&str, Vec<u32>)> = vec![
        ("lora", prompt(5, 1)),
        ("dora", prompt(13, 2)),
        (BASE, prompt(3, 3)),
        ("ia3", prompt(9, 4)),
        ("adalora", prompt(20, 5)),
        ("rslora", prompt(2, 6)),
        ("lora", prompt(11, 7)),
        ("dora", prompt(7, 8)),
    ];
    let max = 12;
    let answers: Vec<(String, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(m, p)| {
                let url = srv.url.clone();
                let body = json!({"model": m, "prompt": p, "max_tokens": max,
                                  "temperature": 0, "ignore_eos": true})
                .to_string();
                s.spawn(move || {
                    let (status, _, text) = post(&url, "/v1/completions", &body, None);
                    assert_eq!(status, 200, "{text}");
                    let v: Value = serde_json::from_str(&text).unwrap();
                    (
                        v["choices"][0]["text"].as_str().unwrap().to_string(),
                        v["usage"]["completion_tokens"].as_u64().unwrap(),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let passes = metric(&srv.url, "graft_batch_sequences_count");
    let rows = metric(&srv.url, "graft_batch_sequences_sum");
    // some pass ran several sequences (an average would depend on how fast the clients
    // arrive: under load, 101 rows in 51 passes once failed a `> 2 per pass` check)
    assert!(rows > passes, "{rows} rows in {passes} passes: not batched");
    // the reference: one sequence at a time on the GPU, the adapter active in the registry
    let mut m = open();
    for (n, p) in &ads {
        m.load_adapter(
            p,
            LoadAdapterOptions {
                adapter_name: Some(n.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let tk = tiny_tokenizer();
    let mut texts = Vec::new();
    for ((name, p), (text, n)) in jobs.iter().zip(&answers) {
        if *name == BASE {
            m.disable_adapters().unwrap();
        } else {
            m.enable_adapters().unwrap();
            m.set_adapter(&[name]).unwrap();
        }
        let out = m
            .generate_with(p, max, &[], &Sampling::default(), |_| {})
            .unwrap();
        assert_eq!(*n, out.len() as u64, "{name}");
        assert_eq!(text, &tk.decode(&out, true).unwrap(), "{name}: {p:?}");
        texts.push(text.clone());
    }
    assert_ne!(texts[0], texts[6], "the prompts change nothing");
    // a rank past the slots' cap is refused as it loads
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(ads[0].1.join("adapter_config.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let r = cfg["r"].as_u64().unwrap();
    let st = std::fs::read(ads[0].1.join("adapter_model.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&st).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    let widen = 17 / r as usize + 1;
    for (k, v) in t.tensors() {
        let shape = v.shape().to_vec();
        let (rows, cols) = (shape[0], shape[1]);
        let data = v.data();
        let mut out = Vec::new();
        let new_shape = if k.contains("lora_A") {
            // stack A's rows `widen` times
            for _ in 0..widen {
                out.extend_from_slice(data);
            }
            vec![rows * widen, cols]
        } else {
            for row in data.chunks(cols * 4) {
                for _ in 0..widen {
                    out.extend_from_slice(row);
                }
            }
            vec![rows, cols * widen]
        };
        tensors.push((k, out, new_shape));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, d, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &big.join("adapter_model.safetensors")).unwrap();
    cfg["r"] = json!(r as usize * widen);
    cfg["lora_alpha"] = json!(r as usize * widen);
    std::fs::write(big.join("adapter_config.json"), cfg.to_string()).unwrap();
    let body = json!({"lora_name": "big", "lora_path": big.display().to_string()}).to_string();
    let (status, _, text) = post(&srv.url, "/v1/load_lora_adapter", &body, None);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("rank"), "{text}");
}
