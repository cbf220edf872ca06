//! The OpenAI request fields, read fail-closed: each field is understood, or it is a 400
//! naming it. A field that would change the answer and that graft does not implement (`n` >
//! 1, penalties, logit biases, tools, log-probabilities…) is never silently ignored.

use serde_json::{Map, Value};

use crate::error::{ApiError, Result};

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A message of a chat request.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What to run on.
#[derive(Debug, Clone)]
pub enum Input {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A generation request, validated.
#[derive(Debug, Clone)]
pub struct Request {
    pub endpoint: Endpoint,
    pub model: String,
    pub input: Input,
    /// `None`: up to the context (chat) or 16 (completions, as OpenAI).
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// vLLM's and llama.cpp's extension: EOS does not end the answer (benchmarks).
    pub ignore_eos: bool,
}

/// Fields accepted and without effect on the answer.
const INERT: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];

/// Largest value accepted for a token count (a bound before anything is allocated).
const MAX_TOKENS_CAP: u64 = 1 << 24;

fn as_u64(v: &Value, field: &str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| ApiError::field(field, format!("`{field}` must be a non-negative integer")))
}

fn as_f32(v: &Value, field: &str, lo: f64, hi: f64) -> Result<f32> {
    match v.as_f64() {
        Some(x) if (lo..=hi).contains(&x) => Ok(x as f32),
        _ => Err(ApiError::field(
            field,
            format!("`{field}` must be a number from {lo} to {hi}"),
        )),
    }
}

fn as_bool(v: &Value, field: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| ApiError::field(field, format!("`{field}` must be true or false")))
}

/// A field that graft accepts only at the value that changes nothing.
fn must_be_neutral(field: &str, v: &Value) -> Result<()> {
    let neutral = match field {
        "n" | "best_of" => v.is_null() || v.as_u64() == Some(1),
        "frequency_penalty" | "presence_penalty" => v.is_null() || v.as_f64() == Some(0.0),
        "repetition_penalty" => v.is_null() || v.as_f64() == Some(1.0),
        "logit_bias" => v.is_null() || v.as_object().is_some_and(|m| m.is_empty()),
        "logprobs" => v.is_null() || v.as_bool() == Some(false),
        "top_logprobs" => v.is_null() || v.as_u64() == Some(0),
        "echo" => v.is_null() || v.as_bool() == Some(false),
        "suffix" => v.is_null() || v.as_str() == Some(""),
        "tools" | "functions" => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
        "tool_choice" | "function_call" => v.is_null() || v.as_str() == Some("none"),
        "response_format" => v.is_null() || v.get("type").and_then(Value::as_str) == Some("text"),
        "min_p" => v.is_null() || v.as_f64() == Some(0.0),
        _ => false,
    };
    if neutral {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("`{field}` = {v} is not supported by graft serve (it would change the answer)"),
        ))
    }
}

const NEUTRAL_ONLY: &[&str] = &[
    "n",
    "best_of",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "min_p",
];

/// Reads a request body. `body` is the raw bytes.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Request> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(m) = v else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let mut r = Request {
        endpoint,
        model: String::new(),
        input: Input::Text(String::new()),
        max_tokens: None,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed: None,
        stop: Vec::new(),
        stream: false,
        include_usage: false,
        ignore_eos: false,
    };
    let mut have_input = false;
    for (k, v) in &m {
        match k.as_str() {
            "model" => {
                r.model = v
                    .as_str()
                    .ok_or_else(|| ApiError::field("model", "`model` must be a string"))?
                    .to_string()
            }
            "messages" if endpoint == Endpoint::Chat => {
                r.input = Input::Chat(messages(v)?);
                have_input = true;
            }
            "prompt" if endpoint == Endpoint::Completions => {
                r.input = prompt(v)?;
                have_input = true;
            }
            "max_tokens" | "max_completion_tokens" => {
                if !v.is_null() {
                    let n = as_u64(v, k)?;
                    if n == 0 || n > MAX_TOKENS_CAP {
                        return Err(ApiError::field(
                            k,
                            format!("`{k}` must be from 1 to {MAX_TOKENS_CAP}"),
                        ));
                    }
                    r.max_tokens = Some(n as usize);
                }
            }
            "temperature" => {
                if !v.is_null() {
                    r.temperature = as_f32(v, k, 0.0, 2.0)?
                }
            }
            "top_p" => {
                if !v.is_null() {
                    r.top_p = as_f32(v, k, 0.0, 1.0)?;
                    if r.top_p <= 0.0 {
                        return Err(ApiError::field(k, "`top_p` must be above 0"));
                    }
                }
            }
            "top_k" => {
                // vLLM's extension: -1 or 0 turns it off
                r.top_k = match v.as_i64() {
                    None if v.is_null() => 0,
                    Some(-1) | Some(0) => 0,
                    Some(n) if n > 0 => n as usize,
                    _ => return Err(ApiError::field(k, "`top_k` must be an integer ≥ -1")),
                }
            }
            "seed" => {
                if !v.is_null() {
                    r.seed = Some(match (v.as_u64(), v.as_i64()) {
                        (Some(s), _) => s,
                        (None, Some(s)) => s as u64,
                        _ => return Err(ApiError::field(k, "`seed` must be an integer")),
                    })
                }
            }
            "stop" => r.stop = stop(v)?,
            "ignore_eos" => {
                if !v.is_null() {
                    r.ignore_eos = as_bool(v, k)?
                }
            }
            "stream" => {
                if !v.is_null() {
                    r.stream = as_bool(v, k)?
                }
            }
            "stream_options" => {
                if let Value::Object(o) = v {
                    for (ok, ov) in o {
                        match ok.as_str() {
                            "include_usage" => r.include_usage = as_bool(ov, "include_usage")?,
                            "continuous_usage_stats" if ov.as_bool() != Some(true) => {}
                            _ => {
                                return Err(ApiError::field(
                                    "stream_options",
                                    format!("unknown stream option `{ok}`"),
                                ))
                            }
                        }
                    }
                } else if !v.is_null() {
                    return Err(ApiError::field(k, "`stream_options` must be an object"));
                }
            }
            f if INERT.contains(&f) => {}
            f if NEUTRAL_ONLY.contains(&f) => must_be_neutral(f, v)?,
            f => {
                return Err(ApiError::field(
                    f,
                    format!(
                        "unknown field `{f}`: graft serve refuses fields it does not understand"
                    ),
                ))
            }
        }
    }
    if r.model.is_empty() {
        return Err(ApiError::field("model", "`model` is required"));
    }
    if !have_input {
        let f = match endpoint {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        };
        return Err(ApiError::field(f, format!("`{f}` is required")));
    }
    if r.include_usage && !r.stream {
        return Err(ApiError::field(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    Ok(r)
}

fn messages(v: &Value) -> Result<Vec<ChatMessage>> {
    let Some(list) = v.as_array().filter(|a| !a.is_empty()) else {
        return Err(ApiError::field(
            "messages",
            "`messages` must be a non-empty array",
        ));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Some(o) = m.as_object() else {
            return Err(ApiError::field(&at, format!("`{at}` must be an object")));
        };
        let role = match o.get("role").and_then(Value::as_str) {
            // OpenAI's newer name for system instructions; chat templates know `system`.
            Some("developer") => "system",
            Some(r @ ("system" | "user" | "assistant")) => r,
            Some(r) => {
                return Err(ApiError::field(
                    &at,
                    format!(
                        "`{at}.role` `{r}` is not supported (system, developer, user, assistant)"
                    ),
                ))
            }
            None => return Err(ApiError::field(&at, format!("`{at}.role` is required"))),
        };
        for k in o.keys() {
            if !matches!(k.as_str(), "role" | "content" | "name") {
                return Err(ApiError::field(&at, format!("`{at}.{k}` is not supported")));
            }
        }
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => texts.push(t),
                        _ => {
                            return Err(ApiError::field(
                                &at,
                                format!("`{at}.content` parts must be text parts (graft serve runs text models)"),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            Some(Value::Null) | None if role == "assistant" => String::new(),
            _ => {
                return Err(ApiError::field(
                    &at,
                    format!("`{at}.content` must be a string or a list of text parts"),
                ))
            }
        };
        out.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    Ok(out)
}

fn prompt(v: &Value) -> Result<Input> {
    match v {
        Value::String(s) => Ok(Input::Text(s.clone())),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            Ok(Input::Text(a[0].as_str().unwrap_or_default().to_string()))
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_u64) => Ok(Input::Tokens(
            a.iter()
                .map(|t| {
                    t.as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .ok_or_else(|| ApiError::field("prompt", "token ids must fit in 32 bits"))
                })
                .collect::<Result<_>>()?,
        )),
        Value::Array(a) if a.len() > 1 => Err(ApiError::field(
            "prompt",
            "several prompts in one request are not supported; send one request per prompt",
        )),
        _ => Err(ApiError::field(
            "prompt",
            "`prompt` must be a string, a one-string array or an array of token ids",
        )),
    }
}

fn stop(v: &Value) -> Result<Vec<String>> {
    let list: Vec<String> = match v {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::field("stop", "`stop` entries must be strings"))
            })
            .collect::<Result<_>>()?,
        _ => {
            return Err(ApiError::field(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    if list.len() > 4 {
        return Err(ApiError::field("stop", "at most 4 stop strings"));
    }
    if list.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::field(
            "stop",
            "stop strings must be 1 to 256 bytes",
        ));
    }
    Ok(list)
}

/// The body of a `POST /v1/load_lora_adapter` or `/v1/unload_lora_adapter` (vLLM's fields).
pub fn lora_fields(body: &[u8], need_path: bool) -> Result<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let m: &Map<String, Value> = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    for k in m.keys() {
        if !matches!(
            k.as_str(),
            "lora_name" | "lora_path" | "lora_int_id" | "load_inplace"
        ) {
            return Err(ApiError::field(k, format!("unknown field `{k}`")));
        }
    }
    let name = m
        .get("lora_name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::field("lora_name", "`lora_name` is required"))?
        .to_string();
    let path = m
        .get("lora_path")
        .and_then(Value::as_str)
        .map(str::to_string);
    if need_path && path.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::field("lora_path", "`lora_path` is required"));
    }
    Ok((name, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_does_not_implement() {
        let bad = [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"presence_penalty":0.5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":true}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"frobnicate":1}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m"}"#,
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":3}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
            r#"{"model":"m","messages":[{"role":"tool","content":"hi"}]}"#,
            r#"not json"#,
            r#"[1,2]"#,
        ];
        for b in bad {
            let e = parse(Endpoint::Chat, b.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{b}: {e}");
        }
    }

    #[test]
    fn reads_what_clients_send() {
        let r = parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":5,"temperature":0,"seed":-3,"stop":"x","stream":true,"stream_options":{"include_usage":true},"n":1,"user":"u","presence_penalty":0}"#,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.temperature, 0.0);
        assert_eq!(r.stop, vec!["x"]);
        assert!(r.stream && r.include_usage);
        let Input::Chat(m) = &r.input else { panic!() };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "hi");
        let r = parse(Endpoint::Completions, br#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert!(matches!(r.input, Input::Tokens(ref t) if t == &[1, 2, 3]));
    }
}
