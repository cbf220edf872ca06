//! The browser client: the Hub over `fetch`, files kept in the Cache API.
//!
//! A browser cannot read the Hub's headers behind the redirect to the CDN, so the commit,
//! sizes and hashes come from the JSON API (`/api/{type}s/{id}/revision/{rev}?blobs=true`)
//! and files are fetched at `resolve/<commit>/<path>`: an immutable URL, which is also the
//! cache key, so a second visit downloads nothing. Every downloaded file is verified
//! (sha256 or git sha1) before it is cached or returned.

use std::collections::BTreeMap;

use js_sys::{Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Headers, Request, RequestInit, Response};

use crate::error::{refusal_error, Error, Refusal, Result};
use crate::info::{adapter_files, model_layout, shard_names, ModelLayout, RepoInfo};
use crate::options::{Progress, DEFAULT_ENDPOINT};
use crate::repo::{url_origin, validate_path, Repo, Token};
use crate::verify::Hasher;

/// Receives download progress in the browser (single-threaded, so no `Send` bound: a
/// JavaScript callback fits).
pub type BrowserProgressFn = std::rc::Rc<dyn Fn(&Progress)>;

/// Settings of the browser client.
#[derive(Clone)]
pub struct BrowserOptions {
    pub endpoint: String,
    /// Only for private or gated repos; sent to the endpoint's origin only.
    pub token: Option<Token>,
    /// The Cache API cache's name; `None` disables caching.
    pub cache_name: Option<String>,
    pub max_attempts: u32,
    pub progress: Option<BrowserProgressFn>,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            cache_name: Some("graft-hub".to_string()),
            max_attempts: 4,
            progress: None,
        }
    }
}

/// The Hub client for WebAssembly in a page or a worker.
pub struct BrowserHub {
    opts: BrowserOptions,
}

fn js_err(url: &str, v: JsValue) -> Error {
    let message = v
        .as_string()
        .or_else(|| {
            Reflect::get(&v, &JsValue::from_str("message"))
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{v:?}"));
    Error::Network {
        url: url.to_string(),
        message,
        attempts: 1,
    }
}

/// `fetch` from the page or the worker, whichever this is.
fn global_fetch(req: &Request) -> Result<Promise> {
    let g = js_sys::global();
    if let Some(w) = g.dyn_ref::<web_sys::Window>() {
        return Ok(w.fetch_with_request(req));
    }
    if let Some(w) = g.dyn_ref::<web_sys::WorkerGlobalScope>() {
        return Ok(w.fetch_with_request(req));
    }
    Err(Error::Network {
        url: req.url(),
        message: "no fetch in this JavaScript context".into(),
        attempts: 0,
    })
}

fn caches() -> Option<web_sys::CacheStorage> {
    let g = js_sys::global();
    if let Some(w) = g.dyn_ref::<web_sys::Window>() {
        return w.caches().ok();
    }
    g.dyn_ref::<web_sys::WorkerGlobalScope>()
        .and_then(|w| w.caches().ok())
}

async fn sleep_ms(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        let g = js_sys::global();
        if let Ok(f) = Reflect::get(&g, &JsValue::from_str("setTimeout")) {
            if let Some(f) = f.dyn_ref::<js_sys::Function>() {
                let _ = f.call2(&g, &resolve, &JsValue::from(ms));
                return;
            }
        }
        let _ = resolve.call0(&JsValue::NULL);
    });
    let _ = JsFuture::from(p).await;
}

impl BrowserHub {
    pub fn new(mut opts: BrowserOptions) -> Self {
        opts.endpoint = opts.endpoint.trim_end_matches('/').to_string();
        BrowserHub { opts }
    }

    pub fn endpoint(&self) -> &str {
        &self.opts.endpoint
    }

    fn request(&self, url: &str, range_from: Option<u64>) -> Result<Request> {
        let init = RequestInit::new();
        init.set_method("GET");
        // graft keeps files in the Cache API itself; the HTTP cache would hold a second copy
        // (and answer a retry from disk instead of the server).
        init.set_cache(web_sys::RequestCache::NoStore);
        let headers = Headers::new().map_err(|e| js_err(url, e))?;
        if let (Some(t), true) = (
            &self.opts.token,
            url_origin(url) == url_origin(&self.opts.endpoint),
        ) {
            headers
                .set("Authorization", &t.bearer())
                .map_err(|e| js_err(url, e))?;
        }
        if let Some(from) = range_from {
            headers
                .set("Range", &format!("bytes={from}-"))
                .map_err(|e| js_err(url, e))?;
        }
        init.set_headers(&headers);
        Request::new_with_str_and_init(url, &init).map_err(|e| js_err(url, e))
    }

    /// A fetch with retries on network errors, 5xx and 429 (honouring `Retry-After`).
    async fn fetch(&self, url: &str, range_from: Option<u64>) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = self.request(url, range_from)?;
            let (retry, wait_ms, err) = match JsFuture::from(global_fetch(&req)?).await {
                Ok(v) => {
                    let resp: Response = v.dyn_into().map_err(|e| js_err(url, e))?;
                    let s = resp.status();
                    if s == 429 {
                        let secs = resp
                            .headers()
                            .get("retry-after")
                            .ok()
                            .flatten()
                            .and_then(|v| v.trim().parse::<i32>().ok())
                            .unwrap_or(1);
                        let e = Error::RateLimited {
                            endpoint: url_origin(url).to_string(),
                            attempts: attempt,
                            retry_after: Some(secs.max(0) as u64),
                        };
                        (true, secs.clamp(0, 60) * 1000, e)
                    } else if s >= 500 {
                        let e = Error::Server {
                            url: url.to_string(),
                            status: s,
                            attempts: attempt,
                            message: None,
                        };
                        (true, 500 << attempt.min(5), e)
                    } else {
                        return Ok(resp);
                    }
                }
                Err(e) => (true, 200 << attempt.min(5), js_err(url, e)),
            };
            if !retry || attempt >= self.opts.max_attempts {
                return Err(match err {
                    Error::Network { url, message, .. } => Error::Network {
                        url,
                        message,
                        attempts: attempt,
                    },
                    e => e,
                });
            }
            sleep_ms(wait_ms).await;
        }
    }

    async fn refusal(&self, repo: &Repo, path: Option<&str>, url: &str, resp: &Response) -> Error {
        let h = resp.headers();
        let code = h.get("x-error-code").ok().flatten();
        let mut message = h.get("x-error-message").ok().flatten();
        if message.is_none() {
            if let Ok(p) = resp.text() {
                if let Ok(t) = JsFuture::from(p).await {
                    message = t.as_string().and_then(|t| {
                        serde_json::from_str::<serde_json::Value>(&t)
                            .ok()
                            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                    });
                }
            }
        }
        let authenticated = self.opts.token.is_some();
        refusal_error(
            repo,
            path,
            &self.opts.endpoint,
            Refusal {
                url,
                status: resp.status(),
                code: code.as_deref(),
                message,
                authenticated,
            },
        )
    }

    /// The commit and files of the repo at its revision.
    pub async fn info(&self, repo: &Repo) -> Result<RepoInfo> {
        let url = repo.info_url(&self.opts.endpoint);
        let resp = self.fetch(&url, None).await?;
        if !resp.ok() {
            return Err(self.refusal(repo, None, &url, &resp).await);
        }
        let text = JsFuture::from(resp.text().map_err(|e| js_err(&url, e))?)
            .await
            .map_err(|e| js_err(&url, e))?
            .as_string()
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Protocol {
            url: url.clone(),
            what: format!("repository info is not JSON: {e}"),
        })?;
        RepoInfo::from_json(&url, &v)
    }

    async fn open_cache(&self) -> Option<Cache> {
        let name = self.opts.cache_name.as_ref()?;
        let p = caches()?.open(name);
        JsFuture::from(p).await.ok()?.dyn_into().ok()
    }

    /// One file at `info`'s commit: from the Cache API, else downloaded, verified against the
    /// JSON API's hash and size, and cached. Interrupted transfers resume with `Range`.
    pub async fn file(&self, repo: &Repo, info: &RepoInfo, path: &str) -> Result<Vec<u8>> {
        validate_path(path)?;
        let sib = info.get(path).ok_or_else(|| Error::EntryNotFound {
            repo: repo.to_string(),
            revision: repo.revision.clone(),
            path: path.to_string(),
        })?;
        let pinned = repo.at(&info.commit)?;
        let url = pinned.resolve_url(&self.opts.endpoint, path);
        let cache = self.open_cache().await;
        if let Some(c) = &cache {
            if let Ok(hit) = JsFuture::from(c.match_with_str(&url)).await {
                if let Ok(resp) = hit.dyn_into::<Response>() {
                    if let Ok(buf) = resp.array_buffer() {
                        if let Ok(b) = JsFuture::from(buf).await {
                            let bytes = Uint8Array::new(&b).to_vec();
                            if sib.size.is_none_or(|s| s == bytes.len() as u64) {
                                self.emit(Progress::Done {
                                    file: path.to_string(),
                                });
                                return Ok(bytes);
                            }
                        }
                    }
                }
            }
        }
        let bytes = self.download(repo, path, &url, sib).await?;
        if let Some(c) = &cache {
            let arr = Uint8Array::from(bytes.as_slice());
            if let Ok(resp) = Response::new_with_opt_buffer_source(Some(&arr)) {
                // A full cache (quota) only costs a re-download next time.
                let _ = JsFuture::from(c.put_with_str(&url, &resp)).await;
            }
        }
        Ok(bytes)
    }

    fn emit(&self, ev: Progress) {
        if let Some(p) = &self.opts.progress {
            p(&ev);
        }
    }

    async fn download(
        &self,
        repo: &Repo,
        path: &str,
        url: &str,
        sib: &crate::Sibling,
    ) -> Result<Vec<u8>> {
        let expected = sib.expected.clone().ok_or_else(|| Error::Protocol {
            url: repo.info_url(&self.opts.endpoint),
            what: format!("no hash for `{path}` in the repository info"),
        })?;
        let size = sib.size.ok_or_else(|| Error::Protocol {
            url: repo.info_url(&self.opts.endpoint),
            what: format!("no size for `{path}` in the repository info"),
        })?;
        // The announced size bounds the allocation: a 4 GiB wasm memory cannot hold more.
        if size > u32::MAX as u64 {
            return Err(Error::Files {
                repo: repo.to_string(),
                what: format!("`{path}` is {size} bytes, more than a browser can hold"),
            });
        }
        let mut out: Vec<u8> = Vec::new();
        // Reserve fallibly: a failed allocation must be an error, not an abort of the module.
        out.try_reserve_exact(size as usize)
            .map_err(|_| Error::Files {
                repo: repo.to_string(),
                what: format!("`{path}` ({size} bytes) does not fit in this page's memory"),
            })?;
        let mut hasher = Hasher::new(expected.clone(), size);
        let mut failures = 0;
        self.emit(Progress::Start {
            file: path.to_string(),
            total: size,
            done: 0,
        });
        while (out.len() as u64) < size {
            let have = out.len() as u64;
            let resp = self.fetch(url, (have > 0).then_some(have)).await?;
            let status = resp.status();
            if status == 200 && have > 0 {
                out.clear();
                hasher = Hasher::new(expected.clone(), size);
            } else if status != 200 && status != 206 {
                return Err(self.refusal(repo, Some(path), url, &resp).await);
            }
            let Some(body) = resp.body() else { break };
            let reader: web_sys::ReadableStreamDefaultReader = body
                .get_reader()
                .dyn_into()
                .map_err(|e: js_sys::Object| js_err(url, e.into()))?;
            let broke = loop {
                let chunk = match JsFuture::from(reader.read()).await {
                    Ok(c) => c,
                    Err(e) => break Some(js_err(url, e)),
                };
                let done = Reflect::get(&chunk, &JsValue::from_str("done"))
                    .ok()
                    .and_then(|d| d.as_bool())
                    .unwrap_or(true);
                if done {
                    break None;
                }
                let Ok(value) = Reflect::get(&chunk, &JsValue::from_str("value")) else {
                    break None;
                };
                let arr = Uint8Array::new(&value);
                let n = arr.length() as usize;
                if out.len() + n > size as usize {
                    return Err(Error::Integrity {
                        repo: repo.to_string(),
                        path: path.to_string(),
                        what: format!("the server sent more than the {size} bytes announced"),
                    });
                }
                let start = out.len();
                out.resize(start + n, 0);
                arr.copy_to(&mut out[start..]);
                hasher.update(&out[start..]);
                self.emit(Progress::Advance {
                    file: path.to_string(),
                    done: out.len() as u64,
                    total: size,
                });
            };
            if (out.len() as u64) < size {
                failures += 1;
                if failures >= self.opts.max_attempts {
                    return Err(broke.unwrap_or(Error::Network {
                        url: url.to_string(),
                        message: "the connection closed early".into(),
                        attempts: failures,
                    }));
                }
            }
        }
        hasher.finish().map_err(|what| Error::Integrity {
            repo: repo.to_string(),
            path: path.to_string(),
            what,
        })?;
        self.emit(Progress::Done {
            file: path.to_string(),
        });
        Ok(out)
    }

    /// The adapter's `adapter_config.json` and weights, by repo path.
    pub async fn fetch_adapter(
        &self,
        repo: &Repo,
        subfolder: Option<&str>,
    ) -> Result<BTreeMap<String, Vec<u8>>> {
        let info = self.info(repo).await?;
        let mut out = BTreeMap::new();
        for f in adapter_files(repo, &info, subfolder)? {
            let b = self.file(repo, &info, &f).await?;
            out.insert(f, b);
        }
        Ok(out)
    }

    /// A base model's files, by repo path (safetensors single or sharded with tokenizer
    /// files, or one GGUF file).
    /// `info` is the repo's listing (from [`BrowserHub::info`]), so the caller can look at
    /// the files before choosing.
    pub async fn fetch_model(
        &self,
        repo: &Repo,
        info: &RepoInfo,
        gguf_file: Option<&str>,
    ) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let files = match model_layout(repo, info, gguf_file)? {
            ModelLayout::Safetensors { files } => files,
            ModelLayout::Gguf { file } => vec![file],
            ModelLayout::Sharded { mut files, index } => {
                let b = self.file(repo, info, &index).await?;
                let v: serde_json::Value =
                    serde_json::from_slice(&b).map_err(|e| Error::Files {
                        repo: repo.to_string(),
                        what: format!("{index} is not JSON: {e}"),
                    })?;
                files.extend(shard_names(repo, &v)?);
                out.insert(index, b);
                files
            }
        };
        for f in files {
            let b = self.file(repo, info, &f).await?;
            out.insert(f, b);
        }
        Ok(out)
    }
}
