//! The wasm-bindgen exports. Async calls return Promises built with `future_to_promise`, so
//! the model lives in an `Rc<RefCell<…>>` the future owns a handle to; a second call while one
//! runs is an error ("busy"), never a double borrow.

use std::cell::RefCell;
use std::rc::Rc;

use graft_hub::browser::{BrowserHub, BrowserOptions};
use graft_hub::{Progress, Repo, RepoType, Token};
use graft_models::{Device, DeviceOptions, LoadAdapterOptions, Model, OpenOptions, Sampling};
use graft_text::{Message, Tokenizer};
use js_sys::{Array, Float32Array, Function, Object, Promise, Reflect, Uint32Array, Uint8Array};
use serde_json::Value;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::kinds::{js_hint, model_error_kind};
use crate::settings::{GenerateSettings, LoadSettings};

/// A JavaScript `Error` named `GraftError` with `kind` set, and — where the package has one —
/// `hint`: what to change in the call's options (also appended to the message).
fn js_error(kind: &str, message: &str) -> JsValue {
    let hint = js_hint(kind, message);
    let text = match hint {
        Some(h) => format!("{message} — {h}"),
        None => message.to_string(),
    };
    let e = js_sys::Error::new(&text);
    e.set_name("GraftError");
    let _ = Reflect::set(&e, &"kind".into(), &kind.into());
    if let Some(h) = hint {
        let _ = Reflect::set(&e, &"hint".into(), &h.into());
    }
    e.into()
}

trait IntoJs<T> {
    fn js(self) -> Result<T, JsValue>;
}

impl<T> IntoJs<T> for graft_models::Result<T> {
    fn js(self) -> Result<T, JsValue> {
        self.map_err(|e| js_error(model_error_kind(&e), &e.to_string()))
    }
}

impl<T> IntoJs<T> for graft_hub::Result<T> {
    fn js(self) -> Result<T, JsValue> {
        self.map_err(|e| js_error(e.kind(), &e.to_string()))
    }
}

impl<T> IntoJs<T> for graft_text::Result<T> {
    fn js(self) -> Result<T, JsValue> {
        self.map_err(|e| js_error("TokenizerError", &e.to_string()))
    }
}

impl<T> IntoJs<T> for graft_adapters::Result<T> {
    fn js(self) -> Result<T, JsValue> {
        self.map_err(|e| js_error("AdapterError", &e.to_string()))
    }
}

fn bad_arg(msg: impl std::fmt::Display) -> JsValue {
    js_error("InvalidArgument", &msg.to_string())
}

/// A JavaScript value as JSON (`undefined` → null).
fn to_json(v: &JsValue) -> Result<Value, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(Value::Null);
    }
    let s = js_sys::JSON::stringify(v)
        .map_err(|_| bad_arg("the argument cannot be converted to JSON"))?;
    let s: String = s.into();
    serde_json::from_str(&s).map_err(bad_arg)
}

/// Where files come from: the endpoint, token and Cache API name of one call.
#[derive(Clone)]
struct HubSettings {
    endpoint: String,
    token: Option<Token>,
    cache_name: Option<String>,
    progress: Option<Function>,
}

impl HubSettings {
    fn client(&self) -> BrowserHub {
        let progress = self.progress.clone().map(|f| {
            let cb = move |p: &Progress| {
                let o = Object::new();
                let set = |k: &str, v: JsValue| {
                    let _ = Reflect::set(&o, &k.into(), &v);
                };
                match p {
                    Progress::Start { file, total, done } => {
                        set("status", "initiate".into());
                        set("file", file.as_str().into());
                        set("loaded", (*done as f64).into());
                        set("total", (*total as f64).into());
                    }
                    Progress::Advance { file, done, total } => {
                        set("status", "progress".into());
                        set("file", file.as_str().into());
                        set("loaded", (*done as f64).into());
                        set("total", (*total as f64).into());
                        let pct = if *total > 0 {
                            *done as f64 * 100.0 / *total as f64
                        } else {
                            100.0
                        };
                        set("progress", pct.into());
                    }
                    Progress::Done { file } => {
                        set("status", "done".into());
                        set("file", file.as_str().into());
                    }
                }
                // A throwing callback must not break the download.
                let _ = f.call1(&JsValue::NULL, &o);
            };
            Rc::new(cb) as graft_hub::browser::BrowserProgressFn
        });
        BrowserHub::new(BrowserOptions {
            endpoint: self.endpoint.clone(),
            token: self.token.clone(),
            cache_name: self.cache_name.clone(),
            progress,
            ..BrowserOptions::default()
        })
    }
}

/// A model with its adapters, on WebGPU or on the CPU (the model owns the device).
#[wasm_bindgen]
pub struct GraftModel {
    inner: Rc<RefCell<Model>>,
    /// Outside the RefCell: a streamer decodes tokens while `generate` holds the model.
    tokenizer: Option<Rc<Tokenizer>>,
    eos: Rc<Vec<u32>>,
    hub: HubSettings,
    device: String,
    device_note: String,
    name: String,
}

fn busy() -> JsValue {
    js_error(
        "Busy",
        "the model is running another call; await it before starting the next",
    )
}

/// The files of a base model, fetched.
async fn fetch_base(
    hub: &BrowserHub,
    repo: &Repo,
    s: &LoadSettings,
) -> Result<(Model, Option<Tokenizer>), JsValue> {
    let info = hub.info(repo).await.js()?;
    let ggufs: Vec<&str> = info
        .siblings
        .iter()
        .map(|x| x.path.as_str())
        .filter(|p| p.ends_with(".gguf"))
        .collect();
    let has_st = info.has("config.json")
        && (info.has("model.safetensors") || info.has("model.safetensors.index.json"));
    // A dtype naming one of the repo's GGUF files (e.g. "q4_1") selects it over safetensors.
    let dtype_gguf = s.dtype.as_deref().is_some_and(|d| {
        let d = d.to_ascii_lowercase();
        ggufs.iter().any(|g| g.to_ascii_lowercase().contains(&d))
    });
    if !has_st || s.gguf_file.is_some() || dtype_gguf {
        let Some(file) = s.pick_gguf(&ggufs).map_err(bad_arg)? else {
            return Err(js_error(
                "RepoFiles",
                &format!("`{repo}` has no model weights (config.json + model.safetensors, or a .gguf file)"),
            ));
        };
        let mut files = hub.fetch_model(repo, &info, Some(file)).await.js()?;
        let bytes = files.remove(file).unwrap_or_default();
        let model = Model::from_gguf_bytes(bytes, &repo.id).js()?;
        let tok = match model.gguf_tokenizer_metadata() {
            Some(meta) => Some(Tokenizer::from_gguf_metadata(&meta).js()?),
            None => None,
        };
        return Ok((model, tok));
    }
    let mut config = Vec::new();
    let mut weights = Vec::new();
    let mut tok_json = None;
    let mut tok_cfg = None;
    for (f, b) in hub.fetch_model(repo, &info, None).await.js()? {
        match f.as_str() {
            "config.json" => config = b,
            "tokenizer.json" => tok_json = Some(b),
            "tokenizer_config.json" => tok_cfg = Some(b),
            // The shards, and the index that names them (checked against it while loading).
            n if n.ends_with(".safetensors") || n == "model.safetensors.index.json" => {
                weights.push((f, b))
            }
            _ => {}
        }
    }
    // Anything else a safetensors model can be asked for is a quantization while loading; a
    // dtype graft cannot honour is an error, never silently f32.
    let quantize = match s.dtype.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("fp32" | "float32" | "auto") => None,
        Some(d) => Some(graft_quant_parse(d).ok_or_else(|| {
            bad_arg(format!(
                "dtype `{d}`: `{repo}` has safetensors weights, which graft can quantize while loading to int8, nf4, q8_0 or q4_0 (or keep as fp32); no GGUF file there matches `{d}`"
            ))
        })?),
    };
    let model =
        Model::from_safetensors_bytes(&config, weights, &repo.id, &OpenOptions { quantize })
            .js()?;
    let tok = match tok_json {
        Some(t) => Some(Tokenizer::from_bytes(&t, tok_cfg.as_deref()).js()?),
        None => None,
    };
    Ok((model, tok))
}

/// A type graft can quantize safetensors weights into while loading (the K-quants and Q5 types
/// are read from GGUF files, not produced).
fn graft_quant_parse(s: &str) -> Option<graft_quant::QType> {
    graft_quant::QType::parse(&s.to_ascii_lowercase()).filter(|q| q.can_quantize())
}

fn repo_of(spec: &str, revision: Option<&str>) -> Result<Repo, JsValue> {
    let (id, rev) = graft_hub::repo::split_revision(spec);
    Repo::new(id, RepoType::Model, rev.or(revision)).js()
}

/// `AutoModelForCausalLM.from_pretrained(id, options)`: a base model repo, or an adapter repo
/// whose `base_model_name_or_path` names the base (fetched first; the adapter then loads as
/// `default`). Resolves to a `GraftModel`.
#[wasm_bindgen(js_name = loadModel)]
pub fn load_model(spec: String, options: JsValue, progress: Option<Function>) -> Promise {
    future_to_promise(async move {
        let s = LoadSettings::from_json(&to_json(&options)?).map_err(bad_arg)?;
        let hub_settings = HubSettings {
            endpoint: s
                .endpoint
                .clone()
                .unwrap_or_else(|| graft_hub::DEFAULT_ENDPOINT.to_string()),
            token: s.token.as_deref().and_then(Token::new),
            cache_name: s.cache_name.clone(),
            progress,
        };
        let hub = hub_settings.client();
        let repo = repo_of(&spec, s.revision.as_deref())?;
        let info = hub.info(&repo).await.js()?;
        let mut adapter = None;
        let base_repo = if info.has("adapter_config.json") {
            let files = hub.fetch_adapter(&repo, None).await.js()?;
            let cfg_bytes = files
                .get("adapter_config.json")
                .cloned()
                .unwrap_or_default();
            let cfg: Value = serde_json::from_slice(&cfg_bytes).map_err(bad_arg)?;
            let base = cfg
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .filter(|b| !b.is_empty() && *b != "None")
                .map(str::to_string)
                .or(s.base_model.clone())
                .ok_or_else(|| {
                    js_error(
                        "BaseModel",
                        &format!("`{repo}`'s adapter_config.json has no base_model_name_or_path (null); pass the base with the `base_model` option"),
                    )
                })?;
            adapter = Some(files);
            repo_of(&base, None)?
        } else {
            repo.clone()
        };
        let (mut model, tokenizer) = fetch_base(&hub, &base_repo, &s).await?;
        if let Some(files) = adapter {
            let cfg = files
                .get("adapter_config.json")
                .cloned()
                .unwrap_or_default();
            let w = files
                .iter()
                .find(|(k, _)| k.ends_with(".safetensors"))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    js_error("RepoFiles", "the adapter has no adapter_model.safetensors")
                })?;
            model
                .load_adapter_from_bytes(&cfg, &w, LoadAdapterOptions::default())
                .js()?;
        }
        let eos = model.eos_token_ids();
        let mut eos = eos;
        if let Some(e) = tokenizer.as_ref().and_then(|t| t.eos_id) {
            if !eos.contains(&e) {
                eos.push(e);
            }
        }
        let (device, device_note) = pick_device(&mut model, &s).await;
        let m = GraftModel {
            inner: Rc::new(RefCell::new(model)),
            tokenizer: tokenizer.map(Rc::new),
            eos: Rc::new(eos),
            hub: hub_settings,
            device,
            device_note,
            name: base_repo.id.clone(),
        };
        Ok(JsValue::from(m))
    })
}

/// WebGPU when asked for (or `auto`) and available, else the CPU, with the reason. In the
/// browser `auto` takes any adapter, software ones (SwiftShader) included: graft's wasm CPU
/// path has no threads to beat them with.
async fn pick_device(model: &mut Model, s: &LoadSettings) -> (String, String) {
    if s.device == "cpu" {
        return ("cpu".into(), "the CPU was asked for".into());
    }
    let opts = DeviceOptions {
        max_context: Some(s.max_context.unwrap_or(2048)),
        ..Default::default()
    };
    match model.set_device_async(Device::Gpu, &opts).await {
        Ok(r) if r.device == Device::Gpu => ("webgpu".into(), format!("WebGPU on {}", r.name)),
        Ok(r) => ("cpu".into(), r.to_string()),
        Err(graft_models::Error::Gpu(graft_gpu::Error::NoAdapter(e))) => {
            ("cpu".into(), format!("no WebGPU: {e}"))
        }
        Err(e) => ("cpu".into(), format!("WebGPU cannot run this model: {e}")),
    }
}

fn names_of(v: &JsValue) -> Result<Vec<String>, JsValue> {
    match to_json(v)? {
        Value::String(s) => Ok(vec![s]),
        Value::Array(a) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                _ => Err(bad_arg("adapter names must be strings")),
            })
            .collect(),
        _ => Err(bad_arg("expected an adapter name or a list of names")),
    }
}

#[wasm_bindgen]
impl GraftModel {
    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    /// Why this device runs (the adapter's name, or why WebGPU is not used).
    #[wasm_bindgen(getter)]
    pub fn device_note(&self) -> String {
        self.device_note.clone()
    }

    #[wasm_bindgen(getter)]
    pub fn name_or_path(&self) -> String {
        self.name.clone()
    }

    #[wasm_bindgen(getter)]
    pub fn vocab_size(&self) -> Result<usize, JsValue> {
        Ok(self.inner.try_borrow().map_err(|_| busy())?.vocab_size)
    }

    /// `model.load_adapter(repo_id, { adapter_name, revision, token, subfolder })`.
    pub fn load_adapter(&self, spec: String, options: JsValue) -> Promise {
        let inner = self.inner.clone();
        let mut hub = self.hub.clone();
        future_to_promise(async move {
            let o = to_json(&options)?;
            let get = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            if let Some(t) = get("token") {
                hub.token = Token::new(&t);
            }
            let repo = repo_of(&spec, get("revision").as_deref())?;
            let client = hub.client();
            let files = client
                .fetch_adapter(&repo, get("subfolder").as_deref())
                .await
                .js()?;
            let pick = |suffix: &str| {
                files
                    .iter()
                    .find(|(k, _)| k.ends_with(suffix))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let opts = LoadAdapterOptions {
                adapter_name: get("adapter_name"),
                is_trainable: o
                    .get("is_trainable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                ..Default::default()
            };
            let mut g = inner.try_borrow_mut().map_err(|_| busy())?;
            let report = g
                .load_adapter_from_bytes(&pick("adapter_config.json"), &pick(".safetensors"), opts)
                .js()?;
            Ok(JsValue::from(
                report
                    .warnings
                    .into_iter()
                    .map(JsValue::from)
                    .collect::<Array>(),
            ))
        })
    }

    /// `model.add_adapter(config, adapter_name)`: a fresh adapter from a PEFT config object.
    pub fn add_adapter(
        &self,
        config: JsValue,
        adapter_name: String,
        seed: Option<f64>,
    ) -> Result<(), JsValue> {
        let cfg = graft_adapters::config::config_from_kwargs(to_json(&config)?).js()?;
        let mut g = self.inner.try_borrow_mut().map_err(|_| busy())?;
        g.add_adapter(cfg, Some(&adapter_name), seed.unwrap_or(0.0) as u64)
            .js()?;
        Ok(())
    }

    /// `model.set_adapter("x")` or `set_adapter(["a", "b"])`.
    pub fn set_adapter(&self, names: JsValue) -> Result<(), JsValue> {
        let names = names_of(&names)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut g = self.inner.try_borrow_mut().map_err(|_| busy())?;
        g.set_adapter(&refs).js()
    }

    pub fn enable_adapters(&self) -> Result<(), JsValue> {
        self.inner
            .try_borrow_mut()
            .map_err(|_| busy())?
            .enable_adapters()
            .js()
    }

    pub fn disable_adapters(&self) -> Result<(), JsValue> {
        self.inner
            .try_borrow_mut()
            .map_err(|_| busy())?
            .disable_adapters()
            .js()
    }

    pub fn active_adapters(&self) -> Result<Vec<String>, JsValue> {
        self.inner
            .try_borrow()
            .map_err(|_| busy())?
            .active_adapters()
            .js()
    }

    pub fn delete_adapter(&self, names: JsValue) -> Result<(), JsValue> {
        let names = names_of(&names)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.inner
            .try_borrow_mut()
            .map_err(|_| busy())?
            .delete_adapter(&refs)
            .js()
    }

    /// `model.get_adapter_state_dict(name)`: `{ key: { dtype, shape, data: Float32Array } }`
    /// (values as f32; `dtype` says what the file stores).
    pub fn get_adapter_state_dict(&self, name: Option<String>) -> Result<JsValue, JsValue> {
        let g = self.inner.try_borrow().map_err(|_| busy())?;
        let sd = g.get_adapter_state_dict(name.as_deref()).js()?;
        let out = Object::new();
        for (k, t) in sd {
            let o = Object::new();
            let dims: Array = t
                .tensor
                .dims()
                .iter()
                .map(|d| JsValue::from(*d as f64))
                .collect();
            let data = t
                .tensor
                .to_dtype(candle_f32())
                .and_then(|x| x.flatten_all())
                .and_then(|x| x.to_vec1::<f32>())
                .map_err(|e| js_error("Tensor", &e.to_string()))?;
            let _ = Reflect::set(
                &o,
                &"dtype".into(),
                &format!("{:?}", t.dtype).to_lowercase().into(),
            );
            let _ = Reflect::set(&o, &"shape".into(), &dims);
            let _ = Reflect::set(&o, &"data".into(), &Float32Array::from(data.as_slice()));
            let _ = Reflect::set(&out, &k.into(), &o);
        }
        Ok(out.into())
    }

    /// `model.save_pretrained()`: `{ "adapter_config.json": Uint8Array, … }`, the files PEFT
    /// writes (adapters other than `default` in their own subfolders).
    pub fn save_pretrained(&self, names: JsValue) -> Result<JsValue, JsValue> {
        let names = if names.is_undefined() || names.is_null() {
            None
        } else {
            Some(names_of(&names)?)
        };
        let refs: Option<Vec<&str>> = names
            .as_ref()
            .map(|n| n.iter().map(String::as_str).collect());
        let g = self.inner.try_borrow().map_err(|_| busy())?;
        let files = g.adapter_files_bytes(refs.as_deref()).js()?;
        let out = Object::new();
        for (path, bytes) in files {
            let _ = Reflect::set(&out, &path.into(), &Uint8Array::from(bytes.as_slice()));
        }
        Ok(out.into())
    }

    /// One forward pass: `{ data: Float32Array, dims: [tokens, vocab] }`.
    // The borrow is held across the GPU read-back on purpose: it is what makes a second call
    // during this one fail with "Busy" (try_borrow) instead of racing on the model.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn logits(&self, tokens: Vec<u32>) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let g = inner.try_borrow_mut().map_err(|_| busy())?;
            let t = g.logits_async(&tokens).await.js()?;
            let dims: Array = t.dims().iter().map(|d| JsValue::from(*d as f64)).collect();
            let data = t
                .flatten_all()
                .and_then(|x| x.to_vec1::<f32>())
                .map_err(|e| js_error("Tensor", &e.to_string()))?;
            let o = Object::new();
            let _ = Reflect::set(&o, &"data".into(), &Float32Array::from(data.as_slice()));
            let _ = Reflect::set(&o, &"dims".into(), &dims);
            Ok(o.into())
        })
    }

    /// Generation from token ids; `on_token(id)` is called for each new token as it comes.
    /// Resolves to the new ids.
    // Holds the borrow across awaits on purpose, as `logits` does.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn generate(
        &self,
        tokens: Vec<u32>,
        options: JsValue,
        on_token: Option<Function>,
    ) -> Promise {
        let inner = self.inner.clone();
        let eos = self.eos.clone();
        future_to_promise(async move {
            let s = GenerateSettings::from_json(&to_json(&options)?).map_err(bad_arg)?;
            let sampling = Sampling {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed: s.seed,
            };
            let g = inner.try_borrow_mut().map_err(|_| busy())?;
            let eos: &[u32] = &eos;
            let cb = |id: u32| {
                if let Some(f) = &on_token {
                    let _ = f.call1(&JsValue::NULL, &JsValue::from(id));
                }
            };
            let out = g
                .generate_with_async(&tokens, s.max_new_tokens, eos, &sampling, cb)
                .await
                .js()?;
            Ok(Uint32Array::from(out.as_slice()).into())
        })
    }

    /// The tokenizer that came with the model (from tokenizer.json or the GGUF).
    pub fn encode(
        &self,
        text: String,
        add_special_tokens: Option<bool>,
    ) -> Result<Vec<u32>, JsValue> {
        self.tokenizer()?
            .encode(&text, add_special_tokens.unwrap_or(true))
            .js()
    }

    pub fn decode(
        &self,
        ids: Vec<u32>,
        skip_special_tokens: Option<bool>,
    ) -> Result<String, JsValue> {
        self.tokenizer()?
            .decode(&ids, skip_special_tokens.unwrap_or(true))
            .js()
    }

    /// `tokenizer.apply_chat_template(messages, { add_generation_prompt })` → the prompt text.
    pub fn apply_chat_template(
        &self,
        messages: JsValue,
        add_generation_prompt: Option<bool>,
    ) -> Result<String, JsValue> {
        let msgs = match to_json(&messages)? {
            Value::Array(a) => a
                .iter()
                .map(|m| {
                    let role = m.get("role").and_then(Value::as_str);
                    let content = m.get("content").and_then(Value::as_str);
                    match (role, content) {
                        (Some(r), Some(c)) => Ok(Message::new(r, c)),
                        _ => Err(bad_arg("each message needs string `role` and `content`")),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(bad_arg("messages must be a list of {role, content}")),
        };
        self.tokenizer()?
            .apply_chat_template(&msgs, add_generation_prompt.unwrap_or(true))
            .js()
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos.to_vec()
    }

    pub fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }
}

impl GraftModel {
    fn tokenizer(&self) -> Result<&Tokenizer, JsValue> {
        self.tokenizer.as_deref().ok_or_else(|| {
            js_error(
                "TokenizerError",
                "this model came without a tokenizer (no tokenizer.json or GGUF vocabulary); pass token ids",
            )
        })
    }
}

fn candle_f32() -> candle_core::DType {
    candle_core::DType::F32
}

/// Logs panics to the console (they should never happen: this only makes a bug readable).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys_console(&format!("graft panicked (a bug; please report it): {info}"));
    }));
}

fn web_sys_console(msg: &str) {
    let console = Reflect::get(&js_sys::global(), &"console".into()).ok();
    if let Some(c) = console {
        if let Ok(f) = Reflect::get(&c, &"error".into()) {
            if let Some(f) = f.dyn_ref::<Function>() {
                let _ = f.call1(&c, &msg.into());
            }
        }
    }
}
