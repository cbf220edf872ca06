//! Protocol tests over raw TCP, so we see exactly what goes on the wire
//! (truncated bodies, Content-Length of redirects, CORS headers on errors).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use graft_hub_server::{git_blob_sha1, sha256_hex, Fault, FaultKind, HubServer, Origin};
use serde_json::Value;
use tempfile::TempDir;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    /// Everything after the head until EOF (not cut to Content-Length, so truncation shows).
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn content_length(&self) -> u64 {
        self.header("Content-Length").unwrap().parse().unwrap()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn send_raw(origin: &str, raw: &[u8]) -> Resp {
    let addr = origin.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no head");
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    Resp {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

fn req(origin: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    req_body(origin, method, path, headers, b"")
}

fn req_body(origin: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(origin, &bytes)
}

/// Splits an absolute URL into (origin, path-and-query).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let slash = rest.find('/').unwrap();
    (
        format!("http://{}", &rest[..slash]),
        rest[slash..].to_string(),
    )
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

const CONFIG: &[u8] = b"{\"hidden_size\": 8}\n";
const NESTED: &[u8] = b"{\"nested\": true}\n";

fn weights() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

struct Fixture {
    _dir: TempDir,
    root: std::path::PathBuf,
    server: HubServer,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write(
        &root.join("tokens.json"),
        br#"["reader-tok", "approved-tok", "plain-tok"]"#,
    );
    let m = root.join("models/org/small");
    write(
        &m.join("repo.json"),
        br#"{"tags": {"v1.0": "main"}, "lfs_threshold": 1000}"#,
    );
    write(&m.join("branches/main/config.json"), CONFIG);
    write(&m.join("branches/main/sub/file.json"), NESTED);
    write(&m.join("branches/main/model.safetensors"), &weights());
    // LFS by size (threshold 1000) although .txt is not an LFS extension.
    write(&m.join("branches/main/notes.txt"), &[b'n'; 2000]);
    write(
        &m.join("branches/refs%2Fpr%2F1/config.json"),
        b"{\"pr\": 1}\n",
    );

    let p = root.join("models/org/private");
    write(
        &p.join("repo.json"),
        br#"{"private": true, "readers": ["reader-tok"]}"#,
    );
    write(&p.join("branches/main/config.json"), CONFIG);

    let g = root.join("models/org/gated");
    write(
        &g.join("repo.json"),
        br#"{"gated": true, "approved": ["approved-tok"]}"#,
    );
    write(&g.join("branches/main/config.json"), CONFIG);

    let d = root.join("datasets/org/data");
    write(&d.join("branches/main/README.md"), b"# data\n");
    write(
        &d.join("branches/main/train.parquet"),
        b"PAR1 not really parquet PAR1",
    );

    let server = HubServer::start(&root).unwrap();
    Fixture {
        _dir: dir,
        root,
        server,
    }
}

fn main_commit(f: &Fixture) -> String {
    f.server.commit("model", "org/small", "main").unwrap()
}

fn assert_cors(r: &Resp) {
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    let expose = r.header("Access-Control-Expose-Headers").unwrap();
    for h in [
        "X-Repo-Commit",
        "ETag",
        "X-Linked-Etag",
        "X-Linked-Size",
        "Content-Range",
        "Location",
    ] {
        assert!(expose.contains(h), "{h} missing from {expose}");
    }
    assert_eq!(r.header("Vary"), Some("Origin"));
}

#[test]
fn git_blob_sha1_test_vector() {
    assert_eq!(
        git_blob_sha1(b"Hello, World!"),
        "b45ef6fec89518d314f546fd6c3025367b721684"
    );
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn small_file_head_and_get() {
    let f = fixture();
    let ep = f.server.endpoint();
    let commit = main_commit(&f);
    assert_eq!(commit.len(), 40);
    let etag = format!("\"{}\"", git_blob_sha1(CONFIG));

    let h = req(&ep, "HEAD", "/org/small/resolve/main/config.json", &[]);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("ETag"), Some(etag.as_str()));
    assert_eq!(h.header("X-Repo-Commit"), Some(commit.as_str()));
    assert_eq!(h.content_length(), CONFIG.len() as u64);
    assert_eq!(h.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(h.header("Content-Type"), Some("application/json"));
    assert_eq!(h.header("Connection"), Some("close"));
    assert!(h.body.is_empty());
    assert_cors(&h);

    let g = req(&ep, "GET", "/org/small/resolve/main/config.json", &[]);
    assert_eq!(g.status, 200);
    assert_eq!(g.body, CONFIG);
    assert_eq!(g.header("ETag"), Some(etag.as_str()));

    // Range on the hub origin too.
    let r = req(
        &ep,
        "GET",
        "/org/small/resolve/main/config.json",
        &[("Range", "bytes=0-0")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &CONFIG[..1]);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes 0-0/{}", CONFIG.len()).as_str())
    );

    // Nested path, percent-encoded slash in the filename is the same file.
    let n = req(&ep, "GET", "/org/small/resolve/main/sub/file.json", &[]);
    assert_eq!(n.status, 200);
    assert_eq!(n.body, NESTED);
    let n2 = req(&ep, "GET", "/org/small/resolve/main/sub%2Ffile.json", &[]);
    assert_eq!(n2.body, NESTED);

    // If-None-Match with the current ETag.
    let nm = req(
        &ep,
        "GET",
        "/org/small/resolve/main/config.json",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
}

#[test]
fn lfs_redirect_and_cdn_download() {
    let f = fixture();
    let ep = f.server.endpoint();
    let w = weights();
    let sha = sha256_hex(&w);
    let commit = main_commit(&f);

    for method in ["HEAD", "GET"] {
        let r = req(
            &ep,
            method,
            "/org/small/resolve/main/model.safetensors",
            &[],
        );
        assert_eq!(r.status, 302);
        let loc = r.header("Location").unwrap();
        assert!(loc.starts_with(&f.server.cdn_origin()), "{loc}");
        assert!(loc.contains(&sha));
        assert!(loc.contains("filename=model.safetensors"));
        assert_ne!(f.server.cdn_origin(), ep);
        assert_eq!(
            r.header("X-Linked-Etag"),
            Some(format!("\"{sha}\"").as_str())
        );
        assert_eq!(
            r.header("X-Linked-Size"),
            Some(w.len().to_string().as_str())
        );
        assert_eq!(r.header("X-Repo-Commit"), Some(commit.as_str()));
        // The redirect body is small but not empty, and its length is not the file's.
        let cl = r.content_length();
        assert!(cl > 10 && cl < w.len() as u64);
        if method == "GET" {
            assert_eq!(r.body.len() as u64, cl);
            assert!(String::from_utf8_lossy(&r.body).starts_with("Found."));
        }
        assert_cors(&r);
    }

    let r = req(&ep, "GET", "/org/small/resolve/main/model.safetensors", &[]);
    let (cdn, path) = split_url(r.header("Location").unwrap());
    let c = req(&cdn, "GET", &path, &[]);
    assert_eq!(c.status, 200);
    assert_eq!(c.body, w);
    assert_eq!(c.header("ETag"), Some(format!("\"{sha}\"").as_str()));
    assert_eq!(c.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(
        c.header("Content-Disposition"),
        Some("inline; filename=\"model.safetensors\";")
    );
    assert_eq!(c.header("Content-Type"), Some("application/octet-stream"));
    assert_cors(&c);

    // LFS by size: .txt over the repo's threshold.
    let t = req(&ep, "HEAD", "/org/small/resolve/main/notes.txt", &[]);
    assert_eq!(t.status, 302);
    assert_eq!(t.header("X-Linked-Size"), Some("2000"));

    // raw/ gives the pointer for LFS files and the content for small files.
    let p = req(&ep, "GET", "/org/small/raw/main/model.safetensors", &[]);
    assert_eq!(p.status, 200);
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {}\n",
        w.len()
    );
    assert_eq!(String::from_utf8(p.body).unwrap(), pointer);
    let s = req(&ep, "GET", "/org/small/raw/main/config.json", &[]);
    assert_eq!(s.body, CONFIG);
}

#[test]
fn cdn_ranges() {
    let f = fixture();
    let w = weights();
    let size = w.len();
    let r = req(
        &f.server.endpoint(),
        "GET",
        "/org/small/resolve/main/model.safetensors",
        &[],
    );
    let (cdn, path) = split_url(r.header("Location").unwrap());

    let a = req(&cdn, "GET", &path, &[("Range", "bytes=10-19")]);
    assert_eq!(a.status, 206);
    assert_eq!(a.body, &w[10..20]);
    assert_eq!(a.content_length(), 10);
    assert_eq!(
        a.header("Content-Range"),
        Some(format!("bytes 10-19/{size}").as_str())
    );

    let b = req(&cdn, "GET", &path, &[("Range", "bytes=1000-")]);
    assert_eq!(b.status, 206);
    assert_eq!(b.body, &w[1000..]);

    // hf-hub 0.4 asks for one past the end: clamp.
    let c = req(
        &cdn,
        "GET",
        &path,
        &[("Range", &format!("bytes=299990-{size}"))],
    );
    assert_eq!(c.status, 206);
    assert_eq!(c.body, &w[299_990..]);
    assert_eq!(
        c.header("Content-Range"),
        Some(format!("bytes 299990-{}/{size}", size - 1).as_str())
    );

    let d = req(&cdn, "GET", &path, &[("Range", &format!("bytes={size}-"))]);
    assert_eq!(d.status, 416);
    assert_eq!(
        d.header("Content-Range"),
        Some(format!("bytes */{size}").as_str())
    );

    for bad in ["bytes=0-1,5-6", "bytes=abc", "chunks=0-1", "bytes=9-2"] {
        let e = req(&cdn, "GET", &path, &[("Range", bad)]);
        assert_eq!(e.status, 200, "{bad}");
        assert_eq!(e.body.len(), size);
    }

    let h = req(&cdn, "HEAD", &path, &[("Range", "bytes=0-0")]);
    assert_eq!(h.status, 206);
    assert_eq!(
        h.header("Content-Range"),
        Some(format!("bytes 0-0/{size}").as_str())
    );
    assert!(h.body.is_empty());

    // Unknown hash.
    let z = req(
        &cdn,
        "GET",
        &format!("/repos/models/org/small/{}", "0".repeat(64)),
        &[],
    );
    assert_eq!(z.status, 404);
}

#[test]
fn revisions_tags_commits_and_pr_branches() {
    let f = fixture();
    let ep = f.server.endpoint();
    let commit = main_commit(&f);

    let t = req(&ep, "GET", "/org/small/resolve/v1.0/config.json", &[]);
    assert_eq!(t.status, 200);
    assert_eq!(t.body, CONFIG);
    assert_eq!(t.header("X-Repo-Commit"), Some(commit.as_str()));

    let c = req(
        &ep,
        "GET",
        &format!("/org/small/resolve/{commit}/config.json"),
        &[],
    );
    assert_eq!(c.status, 200);
    assert_eq!(c.header("X-Repo-Commit"), Some(commit.as_str()));

    let pr = req(
        &ep,
        "GET",
        "/org/small/resolve/refs%2Fpr%2F1/config.json",
        &[],
    );
    assert_eq!(pr.status, 200);
    assert_eq!(pr.body, b"{\"pr\": 1}\n");
    let pr_commit = f.server.commit("model", "org/small", "refs/pr/1").unwrap();
    assert_eq!(pr.header("X-Repo-Commit"), Some(pr_commit.as_str()));
    assert_ne!(pr_commit, commit);

    let bad = req(&ep, "GET", "/org/small/resolve/nope/config.json", &[]);
    assert_eq!(bad.status, 404);
    assert_eq!(bad.header("X-Error-Code"), Some("RevisionNotFound"));
    assert_eq!(bad.header("X-Error-Message"), Some("Invalid rev id: nope"));
    assert_eq!(bad.json()["error"], "Invalid rev id: nope");

    let fake = "a".repeat(40);
    let bad = req(
        &ep,
        "GET",
        &format!("/org/small/resolve/{fake}/config.json"),
        &[],
    );
    assert_eq!(bad.header("X-Error-Code"), Some("RevisionNotFound"));
}

#[test]
fn entry_and_repo_errors() {
    let f = fixture();
    let ep = f.server.endpoint();
    let commit = main_commit(&f);

    let e = req(&ep, "HEAD", "/org/small/resolve/main/missing.json", &[]);
    assert_eq!(e.status, 404);
    assert_eq!(e.header("X-Error-Code"), Some("EntryNotFound"));
    assert_eq!(e.header("X-Repo-Commit"), Some(commit.as_str()));
    assert_eq!(
        e.header("X-Error-Message"),
        Some("missing.json does not exist on \"main\"")
    );
    assert_cors(&e);
    let e = req(
        &ep,
        "GET",
        "/org/small/resolve/main/../small/config.json",
        &[],
    );
    assert_eq!(e.status, 404);

    // Missing repo: 401 anonymous, 404 with a valid token.
    let a = req(&ep, "GET", "/org/none/resolve/main/config.json", &[]);
    assert_eq!(a.status, 401);
    assert_eq!(a.header("X-Error-Code"), Some("RepoNotFound"));
    assert_eq!(a.json()["error"], "Repository not found");
    let b = req(
        &ep,
        "GET",
        "/org/none/resolve/main/config.json",
        &[("Authorization", "Bearer plain-tok")],
    );
    assert_eq!(b.status, 404);
    assert_eq!(b.header("X-Error-Code"), Some("RepoNotFound"));

    // Invalid token, whatever the repo.
    let i = req(
        &ep,
        "GET",
        "/org/small/resolve/main/config.json",
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(i.status, 401);
    assert_eq!(
        i.header("X-Error-Message"),
        Some("Invalid credentials in Authorization header")
    );
    assert_eq!(
        i.json()["error"],
        "Invalid credentials in Authorization header"
    );

    // Unknown route.
    let u = req(&ep, "GET", "/nothing/here", &[]);
    assert_eq!(u.status, 404);
    assert_eq!(u.json()["error"], "Not found");
}

#[test]
fn private_and_gated_repos() {
    let f = fixture();
    let ep = f.server.endpoint();
    let path = "/org/private/resolve/main/config.json";
    let a = req(&ep, "GET", path, &[]);
    assert_eq!(
        (a.status, a.header("X-Error-Code")),
        (401, Some("RepoNotFound"))
    );
    let b = req(&ep, "GET", path, &[("Authorization", "Bearer plain-tok")]);
    assert_eq!(
        (b.status, b.header("X-Error-Code")),
        (404, Some("RepoNotFound"))
    );
    let c = req(&ep, "GET", path, &[("Authorization", "Bearer reader-tok")]);
    assert_eq!(c.status, 200);
    assert_eq!(c.body, CONFIG);

    let path = "/org/gated/resolve/main/config.json";
    let a = req(&ep, "GET", path, &[]);
    assert_eq!(
        (a.status, a.header("X-Error-Code")),
        (401, Some("GatedRepo"))
    );
    assert_eq!(
        a.header("X-Error-Message"),
        Some(
            "Access to model org/gated is restricted. You must have access to it and be \
             authenticated to access it. Please log in."
        )
    );
    let b = req(&ep, "GET", path, &[("Authorization", "Bearer plain-tok")]);
    assert_eq!(
        (b.status, b.header("X-Error-Code")),
        (403, Some("GatedRepo"))
    );
    assert_eq!(
        b.header("X-Error-Message"),
        Some(
            "Access to model org/gated is restricted and you are not in the authorized list. \
             Visit https://huggingface.co/org/gated to ask for access."
        )
    );
    let c = req(
        &ep,
        "GET",
        path,
        &[("Authorization", "Bearer approved-tok")],
    );
    assert_eq!(c.status, 200);

    let api = req(
        &ep,
        "GET",
        "/api/models/org/gated/revision/main",
        &[("Authorization", "Bearer approved-tok")],
    );
    assert_eq!(api.json()["gated"], "auto");
    let api = req(&ep, "GET", "/api/models/org/gated/revision/main", &[]);
    assert_eq!(api.status, 401);
}

#[test]
fn revision_api() {
    let f = fixture();
    let ep = f.server.endpoint();
    let commit = main_commit(&f);
    let w = weights();

    let r = req(&ep, "GET", "/api/models/org/small/revision/main", &[]);
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["id"], "org/small");
    assert_eq!(j["sha"], commit.as_str());
    assert_eq!(j["private"], false);
    assert_eq!(j["gated"], false);
    let names: Vec<&str> = j["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rfilename"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "notes.txt",
            "sub/file.json"
        ]
    );
    assert!(j["siblings"][0].get("size").is_none());

    let r = req(
        &ep,
        "GET",
        "/api/models/org/small/revision/v1.0?blobs=true",
        &[],
    );
    let j = r.json();
    assert_eq!(j["sha"], commit.as_str());
    let s = &j["siblings"];
    assert_eq!(s[0]["size"], CONFIG.len());
    assert_eq!(s[0]["blobId"], git_blob_sha1(CONFIG));
    assert!(s[0].get("lfs").is_none());
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        sha256_hex(&w),
        w.len()
    );
    assert_eq!(s[1]["size"], w.len());
    assert_eq!(s[1]["blobId"], git_blob_sha1(pointer.as_bytes()));
    assert_eq!(s[1]["lfs"]["sha256"], sha256_hex(&w));
    assert_eq!(s[1]["lfs"]["size"], w.len());
    assert_eq!(s[1]["lfs"]["pointerSize"], pointer.len());

    let r = req(&ep, "GET", "/api/models/org/small/revision/nope", &[]);
    assert_eq!(r.header("X-Error-Code"), Some("RevisionNotFound"));
}

#[test]
fn tree_api() {
    let f = fixture();
    let ep = f.server.endpoint();
    let w = weights();

    let r = req(&ep, "GET", "/api/models/org/small/tree/main", &[]);
    assert_eq!(r.status, 200);
    let j = r.json();
    let items = j.as_array().unwrap();
    let paths: Vec<(&str, &str)> = items
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            ("file", "config.json"),
            ("file", "model.safetensors"),
            ("file", "notes.txt"),
            ("directory", "sub")
        ]
    );
    assert_eq!(items[0]["oid"], git_blob_sha1(CONFIG));
    assert_eq!(items[0]["size"], CONFIG.len());
    assert_eq!(items[1]["lfs"]["oid"], sha256_hex(&w));
    assert_eq!(items[1]["lfs"]["size"], w.len());
    assert_eq!(items[3]["size"], 0);
    assert_eq!(items[3]["oid"].as_str().unwrap().len(), 40);

    let r = req(
        &ep,
        "GET",
        "/api/models/org/small/tree/main?recursive=true",
        &[],
    );
    let j = r.json();
    let paths: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "config.json",
            "model.safetensors",
            "notes.txt",
            "sub/file.json"
        ]
    );

    let r = req(&ep, "GET", "/api/models/org/small/tree/main/sub", &[]);
    let j = r.json();
    assert_eq!(j.as_array().unwrap().len(), 1);
    assert_eq!(j[0]["path"], "sub/file.json");

    let r = req(&ep, "GET", "/api/models/org/small/tree/main/nope", &[]);
    assert_eq!(r.status, 404);
}

#[test]
fn dataset_repos() {
    let f = fixture();
    let ep = f.server.endpoint();
    let commit = f.server.commit("dataset", "org/data", "main").unwrap();
    let r = req(&ep, "GET", "/datasets/org/data/resolve/main/README.md", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"# data\n");
    assert_eq!(r.header("X-Repo-Commit"), Some(commit.as_str()));

    let p = req(
        &ep,
        "GET",
        "/datasets/org/data/resolve/main/train.parquet",
        &[],
    );
    assert_eq!(p.status, 302);
    let loc = p.header("Location").unwrap();
    assert!(loc.contains("/repos/datasets/org/data/"));
    let (cdn, path) = split_url(loc);
    assert_eq!(
        req(&cdn, "GET", &path, &[]).body,
        b"PAR1 not really parquet PAR1"
    );

    let a = req(&ep, "GET", "/api/datasets/org/data/revision/main", &[]);
    assert_eq!(a.json()["sha"], commit.as_str());
    let t = req(&ep, "GET", "/api/datasets/org/data/tree/main", &[]);
    assert_eq!(t.json().as_array().unwrap().len(), 2);

    // The model namespace does not see datasets.
    let m = req(&ep, "GET", "/org/data/resolve/main/README.md", &[]);
    assert_eq!(m.header("X-Error-Code"), Some("RepoNotFound"));
    let g = req(
        &ep,
        "GET",
        "/datasets/org/gated/resolve/main/config.json",
        &[],
    );
    assert_eq!(g.header("X-Error-Code"), Some("RepoNotFound"));
}

#[test]
fn cors_preflight_and_error_headers() {
    let f = fixture();
    let ep = f.server.endpoint();
    let o = req(
        &ep,
        "OPTIONS",
        "/org/small/resolve/main/config.json",
        &[
            ("Origin", "http://localhost:8080"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization, range"),
        ],
    );
    assert_eq!(o.status, 204);
    assert_eq!(
        o.header("Access-Control-Allow-Origin"),
        Some("http://localhost:8080")
    );
    assert_eq!(
        o.header("Access-Control-Allow-Methods"),
        Some("GET, HEAD, POST, OPTIONS")
    );
    let allow = o.header("Access-Control-Allow-Headers").unwrap();
    assert!(allow.contains("Authorization") && allow.contains("Range"));
    assert_eq!(o.header("Access-Control-Max-Age"), Some("600"));

    let e = req(
        &ep,
        "GET",
        "/org/none/resolve/main/x",
        &[("Origin", "http://localhost:8080")],
    );
    assert_eq!(e.status, 401);
    assert_eq!(
        e.header("Access-Control-Allow-Origin"),
        Some("http://localhost:8080")
    );
    assert!(e
        .header("Access-Control-Expose-Headers")
        .unwrap()
        .contains("X-Error-Code"));

    let c = req(&f.server.cdn_origin(), "OPTIONS", "/repos/x", &[]);
    assert_eq!(c.status, 204);
    assert_eq!(c.header("Access-Control-Allow-Origin"), Some("*"));
}

fn cdn_path(f: &Fixture) -> (String, String) {
    let r = req(
        &f.server.endpoint(),
        "GET",
        "/org/small/resolve/main/model.safetensors",
        &[],
    );
    split_url(r.header("Location").unwrap())
}

fn fault(kind: FaultKind, origin: Option<Origin>, times: usize) -> Fault {
    Fault {
        path_contains: String::new(),
        origin,
        times,
        kind,
    }
}

#[test]
fn fault_drop_after() {
    let f = fixture();
    let (cdn, path) = cdn_path(&f);
    f.server.add_fault(fault(
        FaultKind::DropAfter { bytes: 1000 },
        Some(Origin::Cdn),
        1,
    ));
    let r = req(&cdn, "GET", &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), weights().len() as u64);
    assert_eq!(r.body, &weights()[..1000]);
    // Used up: the next request is whole.
    assert_eq!(req(&cdn, "GET", &path, &[]).body.len(), weights().len());
}

#[test]
fn fault_corrupt() {
    let f = fixture();
    let (cdn, path) = cdn_path(&f);
    let w = weights();
    f.server
        .add_fault(fault(FaultKind::Corrupt { offset: 150_000 }, None, 0));
    let r = req(&cdn, "GET", &path, &[]);
    let diffs: Vec<usize> = (0..w.len()).filter(|&i| r.body[i] != w[i]).collect();
    assert_eq!(diffs, [150_000]);
    assert_eq!(r.body[150_000], w[150_000] ^ 0xff);
    // Absolute offset within a range.
    let r = req(&cdn, "GET", &path, &[("Range", "bytes=149990-150009")]);
    assert_eq!(r.status, 206);
    let diffs: Vec<usize> = (0..20).filter(|&i| r.body[i] != w[149_990 + i]).collect();
    assert_eq!(diffs, [10]);
    // Outside the range: untouched.
    let r = req(&cdn, "GET", &path, &[("Range", "bytes=0-99")]);
    assert_eq!(r.body, &w[..100]);
}

#[test]
fn fault_slow_and_stall() {
    let f = fixture();
    let ep = f.server.endpoint();
    f.server.add_fault(Fault {
        path_contains: "config.json".into(),
        origin: Some(Origin::Hub),
        times: 1,
        kind: FaultKind::Slow {
            chunk: 5,
            delay_ms: 40,
        },
    });
    let t = Instant::now();
    let r = req(&ep, "GET", "/org/small/resolve/main/config.json", &[]);
    // 19 bytes in 5-byte chunks: 4 delays.
    assert!(
        t.elapsed() >= Duration::from_millis(160),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.body, CONFIG);

    f.server.add_fault(fault(
        FaultKind::Stall { delay_ms: 300 },
        Some(Origin::Hub),
        1,
    ));
    let t = Instant::now();
    let r = req(&ep, "HEAD", "/org/small/resolve/main/config.json", &[]);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200);
    let t = Instant::now();
    req(&ep, "HEAD", "/org/small/resolve/main/config.json", &[]);
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[test]
fn fault_status_ignore_range_and_times() {
    let f = fixture();
    let ep = f.server.endpoint();
    f.server.add_fault(Fault {
        path_contains: "/resolve/".into(),
        origin: Some(Origin::Hub),
        times: 2,
        kind: FaultKind::Status {
            code: 429,
            retry_after: Some(3),
        },
    });
    for _ in 0..2 {
        let r = req(&ep, "GET", "/org/small/resolve/main/config.json", &[]);
        assert_eq!(r.status, 429);
        assert_eq!(r.header("Retry-After"), Some("3"));
        assert_eq!(r.header("X-Error-Message"), Some("injected fault"));
        assert_eq!(r.json()["error"], "injected fault");
        assert_cors(&r);
    }
    // Path filter: the API is not affected even while the fault is live.
    assert_eq!(
        req(&ep, "GET", "/org/small/resolve/main/config.json", &[]).status,
        200
    );

    let (cdn, path) = cdn_path(&f);
    f.server.add_fault(fault(
        FaultKind::Status {
            code: 503,
            retry_after: None,
        },
        Some(Origin::Hub),
        0,
    ));
    // Origin filter: the CDN is unaffected by a hub fault.
    f.server
        .add_fault(fault(FaultKind::IgnoreRange, Some(Origin::Cdn), 1));
    let r = req(&cdn, "GET", &path, &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), weights().len());
    assert!(r.header("Content-Range").is_none());
    let r = req(&cdn, "GET", &path, &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 206);
    // times = 0: forever.
    for _ in 0..3 {
        let r = req(&ep, "GET", "/org/small/resolve/main/config.json", &[]);
        assert_eq!(r.status, 503);
        assert!(r.header("Retry-After").is_none());
    }
    f.server.clear_faults();
    assert_eq!(
        req(&ep, "GET", "/org/small/resolve/main/config.json", &[]).status,
        200
    );
}

#[test]
fn request_log_records_authorization() {
    let f = fixture();
    let ep = f.server.endpoint();
    f.server.clear_requests();
    let auth = [("Authorization", "Bearer reader-tok")];
    let r = req(
        &ep,
        "GET",
        "/org/small/resolve/main/model.safetensors",
        &auth,
    );
    let (cdn, path) = split_url(r.header("Location").unwrap());
    // A well-behaved client drops the token; a buggy one forwards it.
    req(&cdn, "GET", &path, &[("Range", "bytes=0-0")]);
    req(&cdn, "GET", &path, &auth);
    let log = f.server.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].origin, Origin::Hub);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, "/org/small/resolve/main/model.safetensors");
    assert_eq!(log[0].authorization.as_deref(), Some("Bearer reader-tok"));
    assert_eq!(log[0].status, 302);
    assert_eq!(log[1].origin, Origin::Cdn);
    assert_eq!(log[1].path, path);
    assert_eq!(log[1].authorization, None);
    assert_eq!(log[1].range.as_deref(), Some("bytes=0-0"));
    assert_eq!(log[1].status, 206);
    assert_eq!(log[2].authorization.as_deref(), Some("Bearer reader-tok"));
    assert_eq!(log[2].status, 200);
    f.server.clear_requests();
    assert!(f.server.requests().is_empty());
}

#[test]
fn control_routes() {
    let f = fixture();
    let ep = f.server.endpoint();
    let body = br#"[{"path_contains": "config.json", "origin": "Hub", "times": 1,
                     "kind": {"Status": {"code": 500, "retry_after": null}}},
                    {"path_contains": "", "origin": null, "times": 0, "kind": "IgnoreRange"}]"#;
    let r = req_body(
        &ep,
        "POST",
        "/_graft/faults",
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        req(&ep, "GET", "/org/small/resolve/main/config.json", &[]).status,
        500
    );
    let g = req(
        &ep,
        "GET",
        "/org/small/resolve/main/config.json",
        &[("Range", "bytes=0-0")],
    );
    assert_eq!(g.status, 200);

    let single = br#"{"path_contains": "", "origin": "Cdn", "times": 1, "kind": {"Stall": {"delay_ms": 1}}}"#;
    assert_eq!(
        req_body(&ep, "POST", "/_graft/faults", &[], single).status,
        200
    );
    assert_eq!(
        req_body(&ep, "POST", "/_graft/faults", &[], b"{nope").status,
        400
    );

    assert_eq!(req(&ep, "DELETE", "/_graft/faults", &[]).status, 200);
    let g = req(
        &ep,
        "GET",
        "/org/small/resolve/main/config.json",
        &[("Range", "bytes=0-0")],
    );
    assert_eq!(g.status, 206);

    let log = req(&ep, "GET", "/_graft/requests", &[]);
    assert_eq!(log.status, 200);
    let j = log.json();
    let entries = j.as_array().unwrap();
    assert_eq!(entries.len(), 3, "control requests are not logged: {j}");
    assert_eq!(entries[0]["origin"], "Hub");
    assert_eq!(entries[0]["status"], 500);
    assert_eq!(entries[2]["range"], "bytes=0-0");
    assert_eq!(req(&ep, "DELETE", "/_graft/requests", &[]).status, 200);
    assert_eq!(
        req(&ep, "GET", "/_graft/requests", &[]).json(),
        serde_json::json!([])
    );
}

#[test]
fn malformed_requests_get_400() {
    let f = fixture();
    let ep = f.server.endpoint();
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /x\r\n\r\n",
        b"get /x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
        b"GET /org/small/resolve/main/%zz HTTP/1.1\r\n\r\n",
    ] {
        let r = send_raw(&ep, raw);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("Connection"), Some("close"));
    }
    let mut huge = b"GET /x HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(send_raw(&ep, &huge).status, 413);
    let big_body = format!(
        "POST /_graft/faults HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    assert_eq!(send_raw(&ep, big_body.as_bytes()).status, 413);
    // Still serving afterwards.
    assert_eq!(
        req(&ep, "GET", "/org/small/resolve/main/config.json", &[]).status,
        200
    );
}

#[test]
fn commit_is_deterministic_and_tracks_changes() {
    let f = fixture();
    let a = main_commit(&f);
    assert_eq!(a, main_commit(&f));
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    // Same content in a second server over the same folder: same commit.
    let other = HubServer::start(&f.root).unwrap();
    assert_eq!(
        other.commit("model", "org/small", "main").as_deref(),
        Some(a.as_str())
    );
    drop(other);

    assert_eq!(f.server.commit("model", "org/small", "nope"), None);
    assert_eq!(f.server.commit("model", "org/none", "main"), None);
    assert_eq!(f.server.commit("space", "org/small", "main"), None);

    // Files added after start are served, and change the commit.
    let added = f.root.join("models/org/small/branches/main/added.json");
    write(&added, b"{}");
    let b = main_commit(&f);
    assert_ne!(a, b);
    let r = req(
        &f.server.endpoint(),
        "GET",
        "/org/small/resolve/main/added.json",
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Repo-Commit"), Some(b.as_str()));
    // The old commit no longer resolves.
    let r = req(
        &f.server.endpoint(),
        "GET",
        &format!("/org/small/resolve/{a}/config.json"),
        &[],
    );
    assert_eq!(r.header("X-Error-Code"), Some("RevisionNotFound"));
    // Content change of the same length changes it too.
    write(
        &f.root.join("models/org/small/branches/main/config.json"),
        b"{\"hidden_size\": 9}\n",
    );
    assert_ne!(main_commit(&f), b);
}

#[test]
fn symlinked_files_are_followed() {
    let f = fixture();
    let target = f.root.join("outside.gguf");
    write(&target, b"GGUF fake weights");
    let link = f.root.join("models/org/small/branches/main/linked.gguf");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &link).unwrap();
    #[cfg(not(unix))]
    fs::copy(&target, &link).unwrap();
    let r = req(
        &f.server.endpoint(),
        "HEAD",
        "/org/small/resolve/main/linked.gguf",
        &[],
    );
    assert_eq!(r.status, 302);
    assert_eq!(r.header("X-Linked-Size"), Some("17"));
    let (cdn, path) = split_url(r.header("Location").unwrap());
    assert_eq!(req(&cdn, "GET", &path, &[]).body, b"GGUF fake weights");
}

#[test]
fn drop_stops_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let server = HubServer::start(dir.path()).unwrap();
    let ep = server.endpoint();
    let addr = ep.strip_prefix("http://").unwrap().to_string();
    drop(server);
    assert!(TcpStream::connect(&addr).is_err());
}
