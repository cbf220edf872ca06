//! The routes: OpenAI's `/v1/chat/completions`, `/v1/completions` and `/v1/models`, vLLM's
//! `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, `/health` and `/metrics`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use graft_adapters::Adapter;
use graft_models::Sampling;
use graft_text::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, Endpoint, Input, Request};
use crate::engine::{Event, Job};
use crate::error::{ApiError, Result};
use crate::Shared;

pub fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/load_lora_adapter", post(load_lora))
        .route("/v1/unload_lora_adapter", post(unload_lora))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn auth(s: &Shared, headers: &HeaderMap) -> Result<()> {
    let Some(key) = &s.cfg.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (send `Authorization: Bearer KEY`)",
        ))
    }
}

fn open(s: &Shared) -> Result<()> {
    if s.shutting_down.load(Ordering::SeqCst) {
        Err(ApiError::unavailable("the server is shutting down", 5))
    } else {
        Ok(())
    }
}

fn body(b: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
    b.map_err(|r| {
        let status = r.status();
        ApiError::new(
            status,
            format!("the body could not be read: {}", r.body_text()),
        )
    })
}

async fn chat(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, Endpoint::Chat, headers, b)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    generate(s, Endpoint::Completions, headers, b)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The adapter a request's `model` names: `None` for the base.
async fn resolve(s: &Arc<Shared>, model: &str) -> Result<Option<Arc<Adapter>>> {
    if model == s.cfg.base_name {
        return Ok(None);
    }
    if let Some(a) = s.adapters.get_resident(model) {
        return Ok(Some(a));
    }
    let source = match s.adapters.source(model) {
        Some(src) => src,
        None if s.adapters.allow_hub() && model.contains('/') && crate::adapters::valid_name(model) => {
            model.to_string()
        }
        None => {
            return Err(ApiError::not_found(format!(
                "the model `{model}` does not exist: use `{}` (the base) or a loaded adapter (GET /v1/models)",
                s.cfg.base_name
            )))
        }
    };
    // built on a blocking thread: the engine's running decodes never wait for it
    let (s2, name, src) = (s.clone(), model.to_string(), source.clone());
    let built = tokio::task::spawn_blocking(move || s2.adapters.build(&s2.model, &name, &src))
        .await
        .map_err(|e| ApiError::internal(format!("loading the adapter stopped: {e}")))?;
    match built {
        Ok(a) => s
            .adapters
            .insert(model, &source, a, true)
            .map(Some)
            .map_err(ApiError::bad_request),
        Err(e) => Err(ApiError::not_found(format!(
            "the adapter `{model}` could not be loaded: {e}"
        ))),
    }
}

fn tokenize(s: &Shared, r: &Request) -> Result<Vec<u32>> {
    let tk = &s.tokenizer;
    let ids = match &r.input {
        Input::Chat(msgs) => {
            let msgs: Vec<Message> = msgs
                .iter()
                .map(|m| Message::new(&m.role, &m.content))
                .collect();
            let text = tk.apply_chat_template(&msgs, true).map_err(|e| {
                ApiError::field("messages", format!("the chat template failed: {e}"))
            })?;
            // as apply_chat_template(tokenize=True): the template writes the special tokens
            tk.encode(&text, false)
                .map_err(|e| ApiError::field("messages", e.to_string()))?
        }
        Input::Text(t) => tk
            .encode(t, true)
            .map_err(|e| ApiError::field("prompt", e.to_string()))?,
        Input::Tokens(t) => {
            if let Some(&bad) = t.iter().find(|&&id| id as usize >= s.vocab_size) {
                return Err(ApiError::field(
                    "prompt",
                    format!(
                        "token id {bad} is outside the vocabulary ({} ids)",
                        s.vocab_size
                    ),
                ));
            }
            t.clone()
        }
    };
    if ids.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    Ok(ids)
}

async fn generate(
    s: Arc<Shared>,
    endpoint: Endpoint,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    auth(&s, &headers)?;
    open(&s)?;
    let arrived = Instant::now();
    let req = api::parse(endpoint, &body(b)?)?;
    let prompt = tokenize(&s, &req)?;
    let ctx = s.cfg.max_context;
    if prompt.len() >= ctx {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the prompt has {} tokens; this server's context holds {ctx} (prompt and answer together)",
                prompt.len()
            ),
        ));
    }
    let room = ctx - prompt.len();
    let max_tokens = match req.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::field(
                "max_tokens",
                format!(
                    "the context holds {ctx} tokens: {} in the prompt leave {room} for the answer, not {n}",
                    prompt.len()
                ),
            ))
        }
        Some(n) => n,
        None if endpoint == Endpoint::Completions => 16.min(room),
        None => room,
    };
    let adapter = resolve(&s, &req.model).await?;
    // the queue's limit, counted before the job exists so two requests cannot both pass it
    if s.engine.waiting.fetch_add(1, Ordering::SeqCst) >= s.cfg.max_queue {
        s.engine.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the queue is full ({} requests waiting); retry shortly",
                    s.cfg.max_queue
                ),
            )
        });
    }
    let seed = req
        .seed
        .unwrap_or_else(|| s.ids.fetch_add(1, Ordering::Relaxed) ^ now_secs().rotate_left(32));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        label: req.model.clone(),
        adapter,
        prompt,
        max_tokens,
        sampling: Sampling {
            temperature: req.temperature,
            top_k: req.top_k,
            top_p: req.top_p,
            seed,
        },
        stop: req.stop.clone(),
        ignore_eos: req.ignore_eos,
        events: tx,
        arrived,
    };
    if !s.engine.submit(job) {
        s.engine.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::unavailable("the server is shutting down", 5));
    }
    let n = s.ids.fetch_add(1, Ordering::Relaxed);
    let reply = Reply {
        id: match endpoint {
            Endpoint::Chat => format!("chatcmpl-{n:016x}"),
            Endpoint::Completions => format!("cmpl-{n:016x}"),
        },
        created: now_secs(),
        model: req.model.clone(),
        endpoint,
        include_usage: req.include_usage,
    };
    if req.stream {
        Ok(stream(reply, rx).into_response())
    } else {
        whole(reply, rx).await
    }
}

/// What every chunk of one answer repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    include_usage: bool,
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    /// A streamed chunk: `text` new text (chat: `role` on the first), `finish` at the end.
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

async fn whole(r: Reply, mut rx: UnboundedReceiver<Event>) -> Result<Response> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                let choice = match r.endpoint {
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish_reason,
                    }),
                    Endpoint::Completions => json!({
                        "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason,
                    }),
                };
                let v = json!({
                    "id": r.id, "object": r.object(false), "created": r.created, "model": r.model,
                    "choices": [choice], "usage": usage(prompt_tokens, completion_tokens),
                });
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    v.to_string(),
                )
                    .into_response());
            }
            Some(Event::Failed(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::unavailable("the engine stopped", 5)),
        }
    }
}

struct Streaming {
    r: Reply,
    rx: UnboundedReceiver<Event>,
    out: VecDeque<String>,
    ended: bool,
}

fn stream(
    r: Reply,
    rx: UnboundedReceiver<Event>,
) -> Sse<impl futures_util::Stream<Item = std::result::Result<SseEvent, Infallible>>> {
    let mut out = VecDeque::new();
    if r.endpoint == Endpoint::Chat {
        out.push_back(r.chunk(Some(""), true, None).to_string());
    }
    let st = Streaming {
        r,
        rx,
        out,
        ended: false,
    };
    // When the client goes away, this stream is dropped with its receiver, and the engine
    // frees the sequence's slot at its next step.
    Sse::new(futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(d) = st.out.pop_front() {
                return Some((Ok(SseEvent::default().data(d)), st));
            }
            if st.ended {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text(t)) => st
                    .out
                    .push_back(st.r.chunk(Some(&t), false, None).to_string()),
                Some(Event::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    let last = match st.r.endpoint {
                        Endpoint::Chat => st.r.chunk(None, false, Some(finish_reason)),
                        Endpoint::Completions => st.r.chunk(Some(""), false, Some(finish_reason)),
                    };
                    st.out.push_back(last.to_string());
                    if st.r.include_usage {
                        let u = json!({
                            "id": st.r.id, "object": st.r.object(true), "created": st.r.created,
                            "model": st.r.model, "choices": [],
                            "usage": usage(prompt_tokens, completion_tokens),
                        });
                        st.out.push_back(u.to_string());
                    }
                    st.out.push_back("[DONE]".into());
                    st.ended = true;
                }
                Some(Event::Failed(e)) => {
                    st.out.push_back(ApiError::internal(e).body().to_string());
                    st.out.push_back("[DONE]".into());
                    st.ended = true;
                }
                None => {
                    st.out.push_back(
                        ApiError::unavailable("the engine stopped", 5)
                            .body()
                            .to_string(),
                    );
                    st.out.push_back("[DONE]".into());
                    st.ended = true;
                }
            }
        }
    }))
}

async fn models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Result<Response> {
    auth(&s, &headers)?;
    let mut data = vec![json!({
        "id": s.cfg.base_name, "object": "model", "created": s.created, "owned_by": "graft",
        "root": s.cfg.base_name, "parent": null, "max_model_len": s.cfg.max_context,
    })];
    for a in s.adapters.list() {
        data.push(json!({
            "id": a.name, "object": "model", "created": s.created, "owned_by": "graft",
            "root": a.source, "parent": s.cfg.base_name, "resident": a.resident,
        }));
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"object": "list", "data": data}).to_string(),
    )
        .into_response())
}

async fn load_lora(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    auth(&s, &headers)?;
    open(&s)?;
    let (name, path) = api::lora_fields(&body(b)?, true)?;
    let path = path.unwrap_or_default();
    if !crate::adapters::valid_name(&name) || name == s.cfg.base_name {
        return Err(ApiError::field(
            "lora_name",
            format!("`{name}` cannot name an adapter (letters, digits, - _ . / : @; not the base's name)"),
        ));
    }
    if s.adapters.contains(&name) {
        return Err(ApiError::field(
            "lora_name",
            format!("the adapter `{name}` is already loaded; unload it first"),
        ));
    }
    let (s2, n2, p2) = (s.clone(), name.clone(), path.clone());
    let built = tokio::task::spawn_blocking(move || s2.adapters.build(&s2.model, &n2, &p2))
        .await
        .map_err(|e| ApiError::internal(format!("loading the adapter stopped: {e}")))?
        .map_err(|e| {
            ApiError::field("lora_path", format!("the adapter could not be loaded: {e}"))
        })?;
    s.adapters
        .insert(&name, &path, built, false)
        .map_err(|e| ApiError::field("lora_name", e))?;
    Ok((
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' added successfully."),
    )
        .into_response())
}

async fn unload_lora(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    b: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    auth(&s, &headers)?;
    let (name, _) = api::lora_fields(&body(b)?, false)?;
    if !s.adapters.remove(&name) {
        return Err(ApiError::not_found(format!(
            "no adapter named `{name}` is loaded"
        )));
    }
    Ok((
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' removed successfully."),
    )
        .into_response())
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    if s.shutting_down.load(Ordering::SeqCst) {
        ApiError::unavailable("the server is shutting down", 5).into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let (n, bytes) = s.adapters.resident();
    s.metrics.adapters_resident.set(n as i64);
    s.metrics.adapter_bytes.set(bytes as f64);
    s.metrics
        .queue_depth
        .set(s.engine.waiting.load(Ordering::SeqCst) as i64);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}
