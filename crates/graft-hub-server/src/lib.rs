//! A local stand-in for the Hugging Face Hub's file-download protocol.
//!
//! Two origins on 127.0.0.1: the Hub (resolve/raw/JSON APIs) and a "CDN" that the Hub
//! redirects LFS downloads to (a different port, so clients must drop `Authorization`
//! when following the redirect). Built on `std::net` with a thread per connection so
//! that faults (dropped connections, corrupt bytes, stalls) can be injected on the wire.
//!
//! Folder layout: `root/{models|datasets}/{org}/{name}/branches/{percent-encoded branch}/...`,
//! an optional `repo.json` per repo (private, gated, readers, approved, tags, lfs_threshold)
//! and an optional `root/tokens.json` (valid Bearer tokens). Files are read at request time.

mod http;
mod repo;
mod routes;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use sha2::Sha256;

use http::{ReadError, Request, Response};
use repo::{HashCache, Repo, RepoType};

/// An injected misbehaviour.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    /// Applies to requests whose path (without query) contains this string ("" = any).
    #[serde(default)]
    pub path_contains: String,
    /// Which origin: None = both.
    #[serde(default)]
    pub origin: Option<Origin>,
    /// How many matching requests it applies to before it is used up (0 = forever).
    #[serde(default)]
    pub times: usize,
    pub kind: FaultKind,
}

/// Which of the two listeners a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    Hub,
    Cdn,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FaultKind {
    /// Send the headers (with the full Content-Length) and this many body bytes, then close the socket.
    DropAfter { bytes: u64 },
    /// Flip (xor 0xff) the body byte at this absolute file offset (if it is within the range being sent).
    Corrupt { offset: u64 },
    /// Sleep this long before each chunk of `chunk` bytes of the body.
    Slow { chunk: usize, delay_ms: u64 },
    /// Sleep this long before sending anything (headers included).
    Stall { delay_ms: u64 },
    /// Answer this status instead (with X-Error-Message "injected fault" and JSON error body),
    /// with `Retry-After: secs` when given.
    Status { code: u16, retry_after: Option<u64> },
    /// Answer 200 with the full body even when a Range was asked.
    IgnoreRange,
}

/// One entry of the request log.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    pub origin: Origin,
    pub method: String,
    /// Request target including the query.
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

/// Read timeout on accepted sockets: a silent client must not hold a thread forever.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Write timeout: a client that stops reading must not either.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections beyond this many in flight are closed at once ("bounded request counts").
const MAX_CONNECTIONS: usize = 512;
/// The log keeps the most recent entries only, so a long-running binary does not grow without bound.
const MAX_LOG: usize = 100_000;

struct FaultSlot {
    fault: Fault,
    /// None = forever.
    remaining: Option<usize>,
}

pub(crate) struct Shared {
    pub root: PathBuf,
    pub cdn_origin: String,
    pub hashes: HashCache,
    faults: Mutex<Vec<FaultSlot>>,
    log: Mutex<Vec<RequestRecord>>,
    stop: AtomicBool,
    connections: AtomicUsize,
}

/// Poisoning only means another connection thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn add_fault(&self, fault: Fault) {
        let remaining = (fault.times > 0).then_some(fault.times);
        lock(&self.faults).push(FaultSlot { fault, remaining });
    }

    /// First matching fault that is not used up, in insertion order; consumes one use.
    fn take_fault(&self, origin: Origin, path: &str) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let slot = faults.iter_mut().find(|s| {
            s.remaining != Some(0)
                && s.fault.origin.is_none_or(|o| o == origin)
                && path.contains(&s.fault.path_contains)
        })?;
        if let Some(r) = slot.remaining.as_mut() {
            *r -= 1;
        }
        Some(slot.fault.kind.clone())
    }

    fn record(&self, rec: RequestRecord) {
        let mut log = lock(&self.log);
        if log.len() >= MAX_LOG {
            log.remove(0);
        }
        log.push(rec);
    }
}

/// The running server; dropping it stops both listeners.
pub struct HubServer {
    shared: Arc<Shared>,
    hub_addr: SocketAddr,
    cdn_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl HubServer {
    /// Serves `root` on two ephemeral ports of 127.0.0.1.
    pub fn start(root: impl Into<PathBuf>) -> std::io::Result<HubServer> {
        HubServer::start_on(root, 0, 0)
    }

    /// Serves `root` on the given ports (0 = ephemeral).
    pub fn start_on(
        root: impl Into<PathBuf>,
        hub_port: u16,
        cdn_port: u16,
    ) -> std::io::Result<HubServer> {
        let hub = TcpListener::bind(("127.0.0.1", hub_port))?;
        let cdn = TcpListener::bind(("127.0.0.1", cdn_port))?;
        let hub_addr = hub.local_addr()?;
        let cdn_addr = cdn.local_addr()?;
        let shared = Arc::new(Shared {
            root: root.into(),
            cdn_origin: format!("http://{cdn_addr}"),
            hashes: HashCache::default(),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let mut threads = Vec::new();
        for (listener, origin) in [(hub, Origin::Hub), (cdn, Origin::Cdn)] {
            let for_loop = Arc::clone(&shared);
            let name = format!("graft-hub-accept-{origin:?}");
            let spawned = thread::Builder::new()
                .name(name)
                .spawn(move || accept_loop(listener, for_loop, origin));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    // Stop the loop that did start before reporting the failure.
                    let server = HubServer {
                        shared,
                        hub_addr,
                        cdn_addr,
                        threads,
                    };
                    drop(server);
                    return Err(e);
                }
            }
        }
        Ok(HubServer {
            shared,
            hub_addr,
            cdn_addr,
            threads,
        })
    }

    /// The Hub origin, e.g. "http://127.0.0.1:PORT" (no trailing slash).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.hub_addr)
    }

    /// The CDN origin LFS downloads are redirected to.
    pub fn cdn_origin(&self) -> String {
        format!("http://{}", self.cdn_addr)
    }

    pub fn add_fault(&self, fault: Fault) {
        self.shared.add_fault(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// The commit id a branch currently has (None if the repo/branch does not exist).
    /// repo_type: "model" | "dataset".
    pub fn commit(&self, repo_type: &str, repo_id: &str, branch: &str) -> Option<String> {
        let ty = RepoType::parse(repo_type)?;
        let (org, name) = repo_id.split_once('/')?;
        let repo = Repo::open(&self.shared.root, ty, org, name).ok()??;
        let dir = repo.branch_dir(branch)?;
        repo.snapshot(&dir, &self.shared.hashes)
            .ok()
            .map(|s| s.commit)
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake each blocked accept() with a throwaway connection; join only if that worked,
        // so a failed wake-up cannot hang the drop.
        let mut woke = true;
        for addr in [self.hub_addr, self.cdn_addr] {
            woke &= TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok();
        }
        if woke {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// git's blob id: sha1("blob {len}\0" + content), hex.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// sha256 of the content, hex (the LFS oid).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, origin: Origin) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else {
            // Typically EMFILE; back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            continue; // dropping the stream closes it
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let worker = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("graft-hub-conn".into())
            .spawn(move || {
                handle_connection(stream, &worker, origin);
                worker.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

const EXPOSE_HEADERS: &str = "X-Repo-Commit, X-Request-Id, X-Error-Code, X-Error-Message, ETag, \
X-Linked-Etag, X-Linked-Size, Link, Accept-Ranges, Content-Range, Content-Length, Location";

fn add_cors(resp: &mut Response, origin_header: Option<&str>) {
    resp.set_header("Access-Control-Allow-Origin", origin_header.unwrap_or("*"));
    resp.set_header("Access-Control-Expose-Headers", EXPOSE_HEADERS);
    resp.set_header("Vary", "Origin");
}

fn handle_connection(mut stream: TcpStream, shared: &Shared, origin: Origin) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let req = match http::read_request(&mut stream) {
        Ok(r) => r,
        Err(ReadError::Io) => return,
        Err(ReadError::Bad(msg)) => return reject(stream, 400, msg),
        Err(ReadError::TooLarge(msg)) => return reject(stream, 413, msg),
    };
    let control = origin == Origin::Hub && req.path.starts_with("/_graft/");
    // Control routes and preflights are exempt from faults so a "match anything" fault
    // cannot lock out the harness or eat a browser's preflight.
    let fault = if control || req.method == "OPTIONS" {
        None
    } else {
        shared.take_fault(origin, &req.path)
    };
    if let Some(FaultKind::Stall { delay_ms }) = &fault {
        thread::sleep(Duration::from_millis(*delay_ms));
    }
    let ignore_range = matches!(fault, Some(FaultKind::IgnoreRange));
    let mut resp = if let Some(FaultKind::Status { code, retry_after }) = &fault {
        let mut r = routes::error(*code, None, "injected fault");
        if let Some(secs) = retry_after {
            r.set_header("Retry-After", secs.to_string());
        }
        r
    } else if req.method == "OPTIONS" {
        routes::preflight()
    } else if control {
        control_route(shared, &req)
    } else {
        match origin {
            Origin::Hub => routes::hub(shared, &req, ignore_range),
            Origin::Cdn => routes::cdn(shared, &req, ignore_range),
        }
    };
    add_cors(&mut resp, req.header("Origin"));
    if !control {
        // Logged before writing so a client that has read the response always finds its entry.
        shared.record(RequestRecord {
            origin,
            method: req.method.clone(),
            path: req.target.clone(),
            range: req.header("Range").map(str::to_string),
            authorization: req.header("Authorization").map(str::to_string),
            status: resp.status,
        });
    }
    let head_only = req.method == "HEAD";
    match http::write_response(&mut stream, &resp, head_only, fault.as_ref()) {
        Ok(true) => close_gracefully(stream),
        // Deliberate truncation or a write error: just close.
        Ok(false) | Err(_) => {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Answers a request we could not parse, then closes.
fn reject(mut stream: TcpStream, status: u16, msg: &str) {
    let mut resp = routes::error(status, None, msg);
    add_cors(&mut resp, None);
    if http::write_response(&mut stream, &resp, false, None).is_ok() {
        close_gracefully(stream);
    }
}

/// Half-close, then drain briefly: closing with unread input would make the kernel send
/// RST, and the client could lose the response we just wrote.
fn close_gracefully(mut stream: TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < http::MAX_BODY {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn control_route(shared: &Shared, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/_graft/faults") => {
            // A list of faults or a single one.
            let parsed = serde_json::from_slice::<Vec<Fault>>(&req.body)
                .or_else(|_| serde_json::from_slice::<Fault>(&req.body).map(|f| vec![f]));
            match parsed {
                Ok(faults) => {
                    let n = faults.len();
                    for f in faults {
                        shared.add_fault(f);
                    }
                    Response::json(200, &serde_json::json!({ "added": n }))
                }
                Err(e) => routes::error(400, None, &format!("invalid fault: {e}")),
            }
        }
        ("DELETE", "/_graft/faults") => {
            lock(&shared.faults).clear();
            Response::json(200, &serde_json::json!({ "cleared": true }))
        }
        ("GET", "/_graft/requests") => {
            let log = lock(&shared.log).clone();
            match serde_json::to_value(log) {
                Ok(v) => Response::json(200, &v),
                Err(e) => routes::error(500, None, &e.to_string()),
            }
        }
        ("DELETE", "/_graft/requests") => {
            lock(&shared.log).clear();
            Response::json(200, &serde_json::json!({ "cleared": true }))
        }
        _ => routes::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_vector() {
        assert_eq!(
            git_blob_sha1(b"Hello, World!"),
            "b45ef6fec89518d314f546fd6c3025367b721684"
        );
    }

    #[test]
    fn fault_serde_shape() {
        let f: Fault = serde_json::from_str(
            r#"{"path_contains":"x","origin":"Cdn","times":2,"kind":{"DropAfter":{"bytes":5}}}"#,
        )
        .unwrap();
        assert!(matches!(f.kind, FaultKind::DropAfter { bytes: 5 }));
        let g: Fault = serde_json::from_str(r#"{"kind":"IgnoreRange"}"#).unwrap();
        assert!(g.origin.is_none() && g.times == 0);
    }
}
