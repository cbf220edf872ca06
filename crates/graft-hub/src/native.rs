//! The native client: blocking HTTP (ureq) into huggingface_hub's cache, with verified,
//! resumable, lock-protected downloads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::Cache;
use crate::error::{refusal_error, Error, Refusal, Result};
use crate::info::{adapter_files, model_layout, shard_names, ModelLayout, RepoInfo};
use crate::options::{HubOptions, Progress, ProgressFn};
use crate::repo::{url_origin, valid_etag, validate_path, Repo};
use crate::verify::{clean_etag, Expected, Hasher};

/// Where and what a file is, from the Hub's headers (`HEAD …/resolve/…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMetadata {
    /// The commit the revision resolved to (`X-Repo-Commit`).
    pub commit: String,
    /// `X-Linked-Etag` (LFS: sha256) or `ETag` (git sha1), without quotes.
    pub etag: String,
    /// `X-Linked-Size`, or `Content-Length` of a non-redirect answer.
    pub size: u64,
    /// Where the bytes are: the CDN's URL for LFS files, else the resolve URL.
    pub location: String,
}

/// An HTTP answer: status, lower-cased headers, and the body still to read.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: ureq::Body,
    url: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The server's message: `X-Error-Message`, else a JSON body's `error` (bounded read).
    fn message(&mut self) -> Option<String> {
        if let Some(m) = self.header("x-error-message") {
            return Some(m.to_string());
        }
        let text = self
            .body
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .ok()?;
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
    }
}

/// The Hub client for native programs (the CLI, tests, servers). Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    opts: HubOptions,
    cache: Cache,
    agent_meta: ureq::Agent,
    agent_body: ureq::Agent,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("opts", &self.opts).finish()
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Redirects are followed by hand: relative ones keep the token, others drop it.
        .max_redirects(0)
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .user_agent(concat!("graft/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Whether `location` is relative (same host): huggingface_hub follows only those itself.
fn is_relative(location: &str) -> bool {
    location.starts_with('/') && !location.starts_with("//")
}

fn absolute(base: &str, location: &str) -> Option<String> {
    if is_relative(location) {
        Some(format!("{}{}", url_origin(base), location))
    } else if location.starts_with("http://") || location.starts_with("https://") {
        Some(location.to_string())
    } else {
        None
    }
}

/// What one attempt of a request came to.
enum Attempt {
    Answer(Answer),
    /// Worth another attempt after this wait: (why, wait, status when HTTP).
    Retry(String, Duration, Option<u16>),
}

impl Hub {
    /// A client with [`HubOptions::from_env`].
    pub fn from_env() -> Self {
        Self::new(HubOptions::from_env())
    }

    pub fn new(opts: HubOptions) -> Self {
        Hub {
            cache: Cache::new(opts.cache_dir.clone()),
            agent_meta: agent(opts.etag_timeout),
            agent_body: agent(opts.read_timeout),
            opts,
        }
    }

    /// The same client with another token (`load_adapter(..., token=…)`); `None` keeps none.
    pub fn with_token(&self, token: Option<crate::Token>) -> Hub {
        let mut h = self.clone();
        h.opts.token = token;
        h
    }

    /// The same client in offline mode (cache only) or not.
    pub fn with_offline(&self, offline: bool) -> Hub {
        let mut h = self.clone();
        h.opts.offline = offline;
        h
    }

    /// The same client without a progress bar.
    pub fn with_quiet(&self, quiet: bool) -> Hub {
        let mut h = self.clone();
        h.opts.quiet = quiet;
        h
    }

    pub fn options(&self) -> &HubOptions {
        &self.opts
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Sends the token only to the endpoint's origin: never to a CDN or another host.
    fn auth_for(&self, url: &str) -> Option<String> {
        let t = self.opts.token.as_ref()?;
        (url_origin(url) == url_origin(&self.opts.endpoint)).then(|| t.bearer())
    }

    fn once(&self, method: &str, url: &str, range_from: Option<u64>) -> Attempt {
        let agent = if method == "HEAD" {
            &self.agent_meta
        } else {
            &self.agent_body
        };
        let mut req = match method {
            "HEAD" => agent.head(url),
            _ => agent.get(url),
        }
        .header("Accept-Encoding", "identity");
        if let Some(a) = self.auth_for(url) {
            req = req.header("Authorization", a);
        }
        if let Some(from) = range_from {
            req = req.header("Range", format!("bytes={from}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(e.to_string(), Duration::from_millis(200), None),
        };
        let status = resp.status().as_u16();
        let headers: HashMap<String, String> = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect();
        let answer = Answer {
            status,
            headers,
            body: resp.into_body(),
            url: url.to_string(),
        };
        match status {
            429 => {
                let wait = answer
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1));
                Attempt::Retry("HTTP 429".into(), wait, Some(429))
            }
            500..=599 => Attempt::Retry(
                format!("HTTP {status}"),
                Duration::from_millis(500),
                Some(status),
            ),
            _ => Attempt::Answer(answer),
        }
    }

    /// One request with retries on network errors, 5xx and 429 (honouring `Retry-After`,
    /// capped). Follows relative redirects when `follow_relative`.
    fn request(&self, method: &str, url: &str, range_from: Option<u64>) -> Result<Answer> {
        let mut attempts = 0;
        let mut backoff = 1u32;
        loop {
            attempts += 1;
            match self.once(method, url, range_from) {
                Attempt::Answer(a) => return Ok(a),
                Attempt::Retry(why, wait, status) => {
                    if attempts >= self.opts.max_attempts {
                        return Err(match status {
                            Some(429) => Error::RateLimited {
                                endpoint: url_origin(url).to_string(),
                                attempts,
                                retry_after: Some(wait.as_secs()),
                            },
                            Some(s) => Error::Server {
                                url: url.to_string(),
                                status: s,
                                attempts,
                                message: None,
                            },
                            None => Error::Network {
                                url: url.to_string(),
                                message: why,
                                attempts,
                            },
                        });
                    }
                    let wait = if status == Some(429) {
                        wait
                    } else {
                        wait * backoff
                    };
                    backoff = (backoff * 2).min(16);
                    std::thread::sleep(wait.min(self.opts.max_retry_wait));
                }
            }
        }
    }

    /// Maps an error status to the typed error huggingface_hub's `hf_raise_for_status` would
    /// raise, in its order.
    fn status_error(&self, repo: &Repo, path: Option<&str>, mut a: Answer) -> Error {
        let code = a.header("x-error-code").map(str::to_string);
        let message = a.message();
        let refusal = Refusal {
            url: &a.url,
            status: a.status,
            code: code.as_deref(),
            message,
            authenticated: self.auth_for(&a.url).is_some(),
        };
        refusal_error(repo, path, &self.opts.endpoint, refusal)
    }

    /// `HEAD …/resolve/…`: the commit, ETag, size and location of one file.
    pub fn metadata(&self, repo: &Repo, path: &str) -> Result<FileMetadata> {
        validate_path(path)?;
        let mut url = repo.resolve_url(&self.opts.endpoint, path);
        for _ in 0..10 {
            let a = self.request("HEAD", &url, None)?;
            let loc = a.header("location").map(str::to_string);
            let redirect = (300..400).contains(&a.status);
            if redirect && loc.as_deref().is_some_and(is_relative) {
                // A renamed repository or the resolve cache: followed on the same host, as
                // huggingface_hub does; an absolute Location is where the bytes are.
                url = absolute(&url, loc.as_deref().unwrap_or("/")).unwrap_or(url);
                continue;
            }
            if a.status >= 400 {
                if a.header("x-error-code") == Some("EntryNotFound") {
                    if let Some(c) = a
                        .header("x-repo-commit")
                        .filter(|c| crate::repo::is_commit_hash(c))
                    {
                        // As huggingface_hub does: the marker is only found through the ref.
                        self.cache.mark_missing(repo, c, path);
                        let _ = self.cache.write_ref(repo, c);
                    }
                }
                return Err(self.status_error(repo, Some(path), a));
            }
            let proto = |what: &str| Error::Protocol {
                url: url.clone(),
                what: what.to_string(),
            };
            let commit = a
                .header("x-repo-commit")
                .filter(|c| crate::repo::is_commit_hash(c))
                .ok_or_else(|| proto("no X-Repo-Commit header with a commit hash"))?
                .to_string();
            let etag = a
                .header("x-linked-etag")
                .or(a.header("etag"))
                .map(clean_etag)
                .ok_or_else(|| proto("no ETag"))?;
            if !valid_etag(&etag) {
                return Err(proto("the ETag is neither a sha256 nor a git sha1"));
            }
            let size = match a.header("x-linked-size") {
                Some(s) => s.trim().parse::<u64>().ok(),
                // A redirect's Content-Length is its own body's, not the file's.
                None if !redirect => a
                    .header("content-length")
                    .and_then(|s| s.trim().parse().ok()),
                None => None,
            }
            .ok_or_else(|| proto("no file size (X-Linked-Size or Content-Length)"))?;
            let location = match (redirect, loc) {
                (true, Some(l)) => absolute(&url, &l).ok_or_else(|| proto("unusable Location"))?,
                (true, None) => return Err(proto("a redirect without Location")),
                _ => url.clone(),
            };
            return Ok(FileMetadata {
                commit,
                etag,
                size,
                location,
            });
        }
        Err(Error::Protocol {
            url,
            what: "more than 10 redirects".into(),
        })
    }

    /// `hf_hub_download`: the local path of `path` in `repo` at its revision, downloading it
    /// into the cache (verified) if needed. Offline, the cache alone answers.
    pub fn download(&self, repo: &Repo, path: &str) -> Result<PathBuf> {
        validate_path(path)?;
        // A commit never changes: a cached file at a commit needs no network.
        if repo.is_commit() {
            if let Some(p) = self.cache.cached_file(repo, path)? {
                return Ok(p);
            }
        }
        if self.opts.offline {
            return self.cached_only(repo, path);
        }
        let meta = match self.metadata(repo, path) {
            Ok(m) => m,
            // Like huggingface_hub: an unreachable Hub falls back to a cached copy; errors that
            // say the file or revision does not exist (or is not allowed) are raised.
            Err(e @ (Error::Network { .. } | Error::Server { .. } | Error::RateLimited { .. })) => {
                return match self.cache.cached_file(repo, path)? {
                    Some(p) => {
                        eprintln!("graft: {e}; using the cached copy of {path}");
                        Ok(p)
                    }
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        self.cache.write_ref(repo, &meta.commit)?;
        let pointer = self.cache.pointer_path(repo, &meta.commit, path);
        if pointer.is_file() {
            return Ok(pointer);
        }
        self.fetch_blob(repo, path, &meta)?;
        self.cache.link(repo, &meta.commit, path, &meta.etag)
    }

    fn cached_only(&self, repo: &Repo, path: &str) -> Result<PathBuf> {
        self.cache
            .cached_file(repo, path)?
            .ok_or_else(|| Error::NotCached {
                repo: repo.to_string(),
                revision: repo.revision.clone(),
                path: path.to_string(),
                cache: self.cache.root().display().to_string(),
            })
    }

    /// Makes `blobs/<etag>` exist and hold verified bytes. One process downloads under the
    /// blob's lock (the lock huggingface_hub takes too); the others wait and find it done.
    fn fetch_blob(&self, repo: &Repo, path: &str, meta: &FileMetadata) -> Result<()> {
        let blob = self.cache.blob_path(repo, &meta.etag);
        if blob.is_file() {
            return Ok(());
        }
        let expected = Expected::from_etag(&meta.etag).ok_or_else(|| Error::Protocol {
            url: meta.location.clone(),
            what: "unusable ETag".into(),
        })?;
        let lock_path = self.cache.lock_path(repo, &meta.etag);
        let dir = lock_path
            .parent()
            .unwrap_or(self.cache.root())
            .to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let lock = File::create(&lock_path).map_err(|e| Error::io(lock_path.display(), e))?;
        lock.lock().map_err(|e| Error::io(lock_path.display(), e))?;
        if blob.is_file() {
            return Ok(()); // another process finished it while we waited
        }
        let blobs = blob.parent().unwrap_or(self.cache.root()).to_path_buf();
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io(blobs.display(), e))?;
        // A fixed name (under the lock) so that an interrupted download resumes next time.
        let part = blobs.join(format!("{}.incomplete", meta.etag));
        let result = self.transfer(repo, path, meta, expected, &part);
        match result {
            Ok(()) => {
                std::fs::rename(&part, &blob).map_err(|e| Error::io(blob.display(), e))?;
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::Integrity { .. }) {
                    // Corrupt bytes must not be resumed from either.
                    let _ = std::fs::remove_file(&part);
                }
                Err(e)
            }
        }
        // `lock` is released when dropped here.
    }

    fn progress(&self, file: &str, total: u64) -> Option<ProgressFn> {
        if let Some(p) = &self.opts.progress {
            return Some(p.clone());
        }
        if self.opts.quiet || total < (1 << 20) {
            return None;
        }
        crate::bar::terminal_bar(file, total)
    }

    /// Downloads into `part`, resuming from its length, hashing as bytes arrive. Network
    /// failures mid-body resume with `Range` until `max_attempts` is spent.
    fn transfer(
        &self,
        repo: &Repo,
        path: &str,
        meta: &FileMetadata,
        expected: Expected,
        part: &Path,
    ) -> Result<()> {
        let ioerr = |e| Error::io(part.display(), e);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .map_err(ioerr)?;
        let mut have = file.metadata().map_err(ioerr)?.len();
        if have > meta.size {
            have = 0;
            file.set_len(0).map_err(ioerr)?;
        }
        // Re-hash what an earlier run left, so the final check covers the whole file.
        let mut hasher = Hasher::new(expected.clone(), meta.size);
        file.seek(SeekFrom::Start(0)).map_err(ioerr)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = have;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = file.read(&mut buf[..want]).map_err(ioerr)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        file.seek(SeekFrom::Start(have)).map_err(ioerr)?;
        let progress = self.progress(path, meta.size);
        let emit = |ev: Progress| {
            if let Some(p) = &progress {
                p(&ev)
            }
        };
        emit(Progress::Start {
            file: path.to_string(),
            total: meta.size,
            done: have,
        });
        let mut failures = 0u32;
        let mut last_error = String::new();
        while have < meta.size {
            if failures >= self.opts.max_attempts {
                return Err(Error::Network {
                    url: meta.location.clone(),
                    message: format!("the transfer broke off {failures} times, last: {last_error}; {have} of {} bytes are kept and the next run resumes from there", meta.size),
                    attempts: failures,
                });
            }
            let range = (have > 0).then_some(have);
            let mut a = self.get_following(repo, path, &meta.location, range)?;
            match a.status {
                206 => {
                    let start = a
                        .header("content-range")
                        .and_then(|v| v.trim().strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if start != Some(have) {
                        return Err(Error::Protocol {
                            url: a.url.clone(),
                            what: format!(
                                "asked for bytes from {have}, got Content-Range {:?}",
                                a.header("content-range")
                            ),
                        });
                    }
                }
                200 => {
                    if have > 0 {
                        // The server ignored Range: start over (what huggingface_hub does).
                        have = 0;
                        file.set_len(0).map_err(ioerr)?;
                        file.seek(SeekFrom::Start(0)).map_err(ioerr)?;
                        hasher = Hasher::new(expected.clone(), meta.size);
                    }
                }
                416 if have == meta.size => break,
                _ => return Err(self.status_error(repo, Some(path), a)),
            }
            let mut reader = a.body.with_config().limit(u64::MAX).reader();
            let mut broke = false;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        last_error = e.to_string();
                        failures += 1;
                        broke = true;
                        break;
                    }
                };
                if have + n as u64 > meta.size {
                    return Err(Error::Integrity {
                        repo: repo.to_string(),
                        path: path.to_string(),
                        what: format!(
                            "the server sent more than the {} bytes it announced",
                            meta.size
                        ),
                    });
                }
                file.write_all(&buf[..n]).map_err(ioerr)?;
                hasher.update(&buf[..n]);
                have += n as u64;
                emit(Progress::Advance {
                    file: path.to_string(),
                    done: have,
                    total: meta.size,
                });
            }
            // A body that ended cleanly but short counts as a failure too.
            if have < meta.size && !broke {
                last_error = "the connection closed early".into();
                failures += 1;
            }
            if have < meta.size {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        file.sync_all().map_err(ioerr)?;
        drop(file);
        hasher.finish().map_err(|what| Error::Integrity {
            repo: repo.to_string(),
            path: path.to_string(),
            what,
        })?;
        emit(Progress::Done {
            file: path.to_string(),
        });
        Ok(())
    }

    /// GET with redirects followed by hand, so the token never leaves the endpoint's origin.
    fn get_following(
        &self,
        repo: &Repo,
        path: &str,
        url: &str,
        range: Option<u64>,
    ) -> Result<Answer> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let a = self.request("GET", &url, range)?;
            if (300..400).contains(&a.status) {
                let next = a
                    .header("location")
                    .and_then(|l| absolute(&url, l))
                    .ok_or_else(|| Error::Protocol {
                        url: url.clone(),
                        what: "a redirect without a usable Location".into(),
                    })?;
                url = next;
                continue;
            }
            if a.status >= 400 && a.status != 416 {
                return Err(self.status_error(repo, Some(path), a));
            }
            return Ok(a);
        }
        Err(Error::Protocol {
            url,
            what: "more than 10 redirects".into(),
        })
    }

    /// The repository's commit and files at its revision (the JSON API; offline, the cached
    /// snapshot).
    pub fn info(&self, repo: &Repo) -> Result<RepoInfo> {
        if self.opts.offline {
            return self
                .cache
                .cached_info(repo)
                .ok_or_else(|| Error::NotCached {
                    repo: repo.to_string(),
                    revision: repo.revision.clone(),
                    path: "(file list)".into(),
                    cache: self.cache.root().display().to_string(),
                });
        }
        let url = repo.info_url(&self.opts.endpoint);
        let fetched = (|| {
            let mut a = self.request("GET", &url, None)?;
            if a.status >= 300 {
                return Err(self.status_error(repo, None, a));
            }
            let text = a
                .body
                .with_config()
                .limit(64 << 20)
                .read_to_string()
                .map_err(|e| Error::Network {
                    url: url.clone(),
                    message: e.to_string(),
                    attempts: 1,
                })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Protocol {
                    url: url.clone(),
                    what: format!("repository info is not JSON: {e}"),
                })?;
            RepoInfo::from_json(&url, &v)
        })();
        match fetched {
            Ok(i) => {
                self.cache.write_ref(repo, &i.commit)?;
                Ok(i)
            }
            Err(e @ (Error::Network { .. } | Error::Server { .. } | Error::RateLimited { .. })) => {
                self.cache.cached_info(repo).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Downloads several files of one commit; returns the snapshot folder.
    pub fn download_files(
        &self,
        repo: &Repo,
        info: &RepoInfo,
        files: &[String],
    ) -> Result<PathBuf> {
        let pinned = repo.at(&info.commit)?;
        for f in files {
            self.download(&pinned, f)?;
        }
        Ok(self.cache.snapshot_dir(repo, &info.commit))
    }

    /// `snapshot_download`: every file of the repository at its revision; returns the
    /// snapshot folder.
    pub fn snapshot(&self, repo: &Repo) -> Result<PathBuf> {
        let info = self.info(repo)?;
        let files: Vec<String> = info.siblings.iter().map(|s| s.path.clone()).collect();
        self.download_files(repo, &info, &files)
    }

    /// Whether the repository holds a PEFT adapter (at the top or in `subfolder`).
    pub fn is_adapter_repo(&self, repo: &Repo, subfolder: Option<&str>) -> Result<bool> {
        let info = self.info(repo)?;
        Ok(info.has(&crate::info::in_subfolder(subfolder, "adapter_config.json")))
    }

    /// The adapter's files (config + weights) in the cache; returns the folder holding
    /// `adapter_config.json`.
    pub fn fetch_adapter(&self, repo: &Repo, subfolder: Option<&str>) -> Result<PathBuf> {
        let info = self.info(repo)?;
        let files = adapter_files(repo, &info, subfolder)?;
        let snap = self.download_files(repo, &info, &files)?;
        Ok(
            match subfolder
                .map(|s| s.trim_matches('/'))
                .filter(|s| !s.is_empty())
            {
                Some(s) => s.split('/').fold(snap, |p, seg| p.join(seg)),
                None => snap,
            },
        )
    }

    /// A base model's files in the cache: the snapshot folder (safetensors, single or
    /// sharded, with tokenizer files) or the GGUF file's path.
    pub fn fetch_model(&self, repo: &Repo, gguf_file: Option<&str>) -> Result<PathBuf> {
        let info = self.info(repo)?;
        match model_layout(repo, &info, gguf_file)? {
            ModelLayout::Safetensors { files } => self.download_files(repo, &info, &files),
            ModelLayout::Sharded { mut files, index } => {
                let pinned = repo.at(&info.commit)?;
                let idx_path = self.download(&pinned, &index)?;
                let bytes = read_bounded(&idx_path, 64 << 20)?;
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Files {
                        repo: repo.to_string(),
                        what: format!("{index} is not JSON: {e}"),
                    })?;
                files.extend(shard_names(repo, &v)?);
                self.download_files(repo, &info, &files)
            }
            ModelLayout::Gguf { file } => self.download(&repo.at(&info.commit)?, &file),
        }
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path.display(), e))?;
    if out.len() as u64 > max {
        return Err(Error::io(
            path.display(),
            std::io::Error::other(format!("larger than {max} bytes")),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_redirects() {
        assert_eq!(url_origin("http://127.0.0.1:5/a/b?c"), "http://127.0.0.1:5");
        assert_eq!(
            url_origin("https://huggingface.co"),
            "https://huggingface.co"
        );
        assert_eq!(
            absolute("http://h:1/x/y", "/api/z").unwrap(),
            "http://h:1/api/z"
        );
        assert_eq!(
            absolute("http://h:1/x", "https://cdn/x").unwrap(),
            "https://cdn/x"
        );
        assert!(absolute("http://h:1/x", "relative/x").is_none());
        assert!(!is_relative("//evil.com/x"));
    }
}
