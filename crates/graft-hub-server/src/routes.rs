//! Route handlers for the Hub and CDN origins.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::http::{
    parse_range, percent_decode, percent_encode, Body, RangeOutcome, Request, Response,
};
use crate::repo::{list_files, valid_repo_path, valid_segment, Repo, RepoType, Snapshot};
use crate::Shared;

/// Error response in the Hub's shape: `X-Error-Code`, `X-Error-Message`, JSON `{"error": ...}`.
pub(crate) fn error(status: u16, code: Option<&str>, message: &str) -> Response {
    let mut r =
        Response::json(status, &json!({ "error": message })).header("X-Error-Message", message);
    if let Some(code) = code {
        r.set_header("X-Error-Code", code);
    }
    r
}

pub(crate) fn not_found() -> Response {
    Response::json(404, &json!({ "error": "Not found" }))
}

pub(crate) fn preflight() -> Response {
    Response::new(204)
        .header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
        .header(
            "Access-Control-Allow-Headers",
            "Authorization, Range, Content-Type, Accept, If-None-Match",
        )
        .header("Access-Control-Max-Age", "600")
}

fn server_error(msg: &str) -> Response {
    error(500, None, msg)
}

enum Auth {
    Anonymous,
    Valid(String),
    Invalid,
}

/// A Bearer token is valid when `root/tokens.json` lists it (or when there is no such file).
fn authenticate(shared: &Shared, req: &Request) -> Auth {
    let Some(value) = req.header("Authorization") else {
        return Auth::Anonymous;
    };
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
            t.trim()
        }
        _ => return Auth::Invalid,
    };
    match fs::read(shared.root.join("tokens.json")) {
        Ok(bytes) => match serde_json::from_slice::<Vec<String>>(&bytes) {
            Ok(list) if list.iter().any(|t| t == token) => Auth::Valid(token.to_string()),
            _ => Auth::Invalid,
        },
        Err(_) => Auth::Valid(token.to_string()),
    }
}

/// Auth, repo visibility, gating and revision resolution shared by every repo route.
/// Returns the repo and the snapshot of the resolved revision, or the error response.
fn open_checked(
    shared: &Shared,
    req: &Request,
    ty: RepoType,
    org: &str,
    name: &str,
    rev: &str,
) -> Result<(Repo, Snapshot), Response> {
    let auth = authenticate(shared, req);
    let token = match &auth {
        Auth::Invalid => {
            return Err(error(
                401,
                None,
                "Invalid credentials in Authorization header",
            ));
        }
        Auth::Valid(t) => Some(t.as_str()),
        Auth::Anonymous => None,
    };
    // The Hub answers 401 to anonymous callers for missing repos too ("401 is misleading").
    let repo_not_found = || {
        let status = if token.is_some() { 404 } else { 401 };
        error(status, Some("RepoNotFound"), "Repository not found")
    };
    let repo = match Repo::open(&shared.root, ty, org, name) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(repo_not_found()),
        Err(e) => return Err(server_error(&e)),
    };
    let has = |list: &[String]| token.is_some_and(|t| list.iter().any(|x| x == t));
    if repo.config.private && !has(&repo.config.readers) {
        return Err(repo_not_found());
    }
    if repo.config.gated && !has(&repo.config.approved) {
        let id = repo.id();
        let kind = ty.singular();
        return Err(if token.is_none() {
            error(
                401,
                Some("GatedRepo"),
                &format!(
                    "Access to {kind} {id} is restricted. You must have access to it and be \
                     authenticated to access it. Please log in."
                ),
            )
        } else {
            error(
                403,
                Some("GatedRepo"),
                &format!(
                    "Access to {kind} {id} is restricted and you are not in the authorized list. \
                     Visit https://huggingface.co/{id} to ask for access."
                ),
            )
        });
    }
    match resolve_revision(shared, &repo, rev) {
        Ok(Some(snap)) => Ok((repo, snap)),
        Ok(None) => Err(error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        )),
        Err(e) => Err(server_error(&e.to_string())),
    }
}

/// Branch name, then tag, then a 40-hex commit equal to some branch's current commit.
fn resolve_revision(shared: &Shared, repo: &Repo, rev: &str) -> std::io::Result<Option<Snapshot>> {
    if let Some(dir) = repo.branch_dir(rev) {
        return repo.snapshot(&dir, &shared.hashes).map(Some);
    }
    if let Some(dir) = repo.config.tags.get(rev).and_then(|b| repo.branch_dir(b)) {
        return repo.snapshot(&dir, &shared.hashes).map(Some);
    }
    if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        let wanted = rev.to_ascii_lowercase();
        for (_, dir) in repo.branches() {
            let snap = repo.snapshot(&dir, &shared.hashes)?;
            if snap.commit == wanted {
                return Ok(Some(snap));
            }
        }
    }
    Ok(None)
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("json") => "application/json",
        Some("txt" | "md" | "py" | "yaml" | "yml" | "jinja" | "gitattributes") => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

fn etag_matches(req: &Request, etag_hex: &str) -> bool {
    req.header("If-None-Match").is_some_and(|v| {
        v.split(',').any(|t| {
            let t = t.trim();
            let t = t.strip_prefix("W/").unwrap_or(t);
            t == "*" || t.trim_matches('"') == etag_hex
        })
    })
}

/// 200/206/304/416 for `len` bytes of `fs_path`, honouring `Range` unless told not to.
fn serve_bytes(
    req: &Request,
    resp: Response,
    fs_path: &Path,
    len: u64,
    etag_hex: &str,
    ignore_range: bool,
) -> Response {
    let mut resp = resp
        .header("ETag", format!("\"{etag_hex}\""))
        .header("Accept-Ranges", "bytes");
    if etag_matches(req, etag_hex) {
        resp.status = 304;
        return resp;
    }
    let range = if ignore_range {
        RangeOutcome::Full
    } else {
        parse_range(req.header("Range"), len)
    };
    let file = |start, len| Body::File {
        path: fs_path.to_path_buf(),
        start,
        len,
    };
    match range {
        RangeOutcome::Full => {
            resp.status = 200;
            resp.body(file(0, len))
        }
        RangeOutcome::Partial(a, b) => {
            resp.status = 206;
            resp.header("Content-Range", format!("bytes {a}-{b}/{len}"))
                .body(file(a, b - a + 1))
        }
        RangeOutcome::Unsatisfiable => {
            resp.status = 416;
            resp.header("Content-Range", format!("bytes */{len}"))
        }
    }
}

/// Routes of the Hub origin (control routes and OPTIONS are handled by the caller).
pub(crate) fn hub(shared: &Shared, req: &Request, ignore_range: bool) -> Response {
    let Some(rest) = req.path.strip_prefix('/') else {
        return not_found();
    };
    let Some(segs) = rest
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
    else {
        return error(400, None, "Malformed percent-encoding in path");
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get_or_head = req.method == "GET" || req.method == "HEAD";
    if !get_or_head {
        return not_found();
    }
    match segs.as_slice() {
        ["api", t, org, name, "revision", rev] => match RepoType::parse(t) {
            Some(ty) if t.ends_with('s') => revision_api(shared, req, ty, org, name, rev),
            _ => not_found(),
        },
        ["api", t, org, name, "tree", rev, path @ ..] => match RepoType::parse(t) {
            Some(ty) if t.ends_with('s') => {
                tree_api(shared, req, ty, org, name, rev, &path.join("/"))
            }
            _ => not_found(),
        },
        ["datasets", org, name, kind @ ("resolve" | "raw"), rev, path @ ..] if !path.is_empty() => {
            let raw = *kind == "raw";
            file_route(
                shared,
                req,
                RepoType::Dataset,
                org,
                name,
                rev,
                &path.join("/"),
                raw,
                ignore_range,
            )
        }
        [org, name, kind @ ("resolve" | "raw"), rev, path @ ..] if !path.is_empty() => {
            let raw = *kind == "raw";
            file_route(
                shared,
                req,
                RepoType::Model,
                org,
                name,
                rev,
                &path.join("/"),
                raw,
                ignore_range,
            )
        }
        _ => not_found(),
    }
}

#[allow(clippy::too_many_arguments)]
fn file_route(
    shared: &Shared,
    req: &Request,
    ty: RepoType,
    org: &str,
    name: &str,
    rev: &str,
    path: &str,
    raw: bool,
    ignore_range: bool,
) -> Response {
    let (repo, snap) = match open_checked(shared, req, ty, org, name, rev) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let commit = snap.commit.clone();
    // Lookup is by repo path in the listing, so `..` can never reach outside the branch.
    let Some(file) = snap.file(path).filter(|_| valid_repo_path(path)) else {
        return error(
            404,
            Some("EntryNotFound"),
            &format!("{path} does not exist on \"{rev}\""),
        )
        .header("X-Repo-Commit", commit);
    };
    let base = Response::new(200).header("X-Repo-Commit", commit.clone());
    if !file.lfs {
        let resp = base.header("Content-Type", content_type(path));
        return serve_bytes(
            req,
            resp,
            &file.fs_path,
            file.hashes.len,
            &file.hashes.git_sha1,
            ignore_range,
        );
    }
    if raw {
        // /raw/ serves what git stores: the LFS pointer.
        let pointer = file.pointer();
        return base
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("ETag", format!("\"{}\"", file.blob_oid()))
            .body(Body::Bytes(pointer.into_bytes()));
    }
    let sha = &file.hashes.sha256;
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(0);
    // Opaque signature, only there so the URL looks like a signed CDN link.
    let sig = &crate::sha256_hex(format!("{sha}:{expires}:{commit}").as_bytes())[..32];
    let location = format!(
        "{}/repos/{}/{}/{}/{sha}?filename={}&expires={expires}&sig={sig}",
        shared.cdn_origin,
        repo.ty.plural(),
        percent_encode(&repo.org, false),
        percent_encode(&repo.name, false),
        percent_encode(path, false),
    );
    let body = format!("Found. Redirecting to {location}");
    let mut resp = base
        .header("Location", location)
        .header("X-Linked-Etag", format!("\"{sha}\""))
        .header("X-Linked-Size", file.hashes.len.to_string())
        .header("ETag", format!("\"{sha}\""))
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Body::Bytes(body.into_bytes()));
    resp.status = 302;
    resp
}

fn revision_api(
    shared: &Shared,
    req: &Request,
    ty: RepoType,
    org: &str,
    name: &str,
    rev: &str,
) -> Response {
    let (repo, snap) = match open_checked(shared, req, ty, org, name, rev) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let blobs = matches!(
        req.query_param("blobs").as_deref(),
        Some("true" | "1" | "True")
    );
    let siblings: Vec<Value> = snap
        .files
        .iter()
        .map(|f| {
            let mut s = json!({ "rfilename": f.path });
            if blobs {
                s["size"] = json!(f.hashes.len);
                s["blobId"] = json!(f.blob_oid());
                if f.lfs {
                    s["lfs"] = json!({
                        "sha256": f.hashes.sha256,
                        "size": f.hashes.len,
                        "pointerSize": f.pointer().len(),
                    });
                }
            }
            s
        })
        .collect();
    let gated = if repo.config.gated {
        json!("auto")
    } else {
        json!(false)
    };
    Response::json(
        200,
        &json!({
            "id": repo.id(),
            "sha": snap.commit,
            "private": repo.config.private,
            "gated": gated,
            "siblings": siblings,
        }),
    )
    .header("X-Repo-Commit", snap.commit.clone())
}

fn tree_api(
    shared: &Shared,
    req: &Request,
    ty: RepoType,
    org: &str,
    name: &str,
    rev: &str,
    path: &str,
) -> Response {
    let (_repo, snap) = match open_checked(shared, req, ty, org, name, rev) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let recursive = matches!(
        req.query_param("recursive").as_deref(),
        Some("true" | "1" | "True")
    );
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let under: Vec<_> = snap
        .files
        .iter()
        .filter(|f| f.path.starts_with(&prefix))
        .collect();
    if !path.is_empty() && under.is_empty() {
        return error(
            404,
            Some("EntryNotFound"),
            &format!("{path} does not exist on \"{rev}\""),
        )
        .header("X-Repo-Commit", snap.commit.clone());
    }
    let file_entry = |f: &crate::repo::FileMeta| {
        let mut e = json!({
            "type": "file",
            "oid": f.blob_oid(),
            "size": f.hashes.len,
            "path": f.path,
        });
        if f.lfs {
            e["lfs"] = json!({
                "oid": f.hashes.sha256,
                "size": f.hashes.len,
                "pointerSize": f.pointer().len(),
            });
        }
        e
    };
    let mut out = Vec::new();
    if recursive {
        out.extend(under.iter().map(|f| file_entry(f)));
    } else {
        let mut dirs: Vec<String> = Vec::new();
        for f in &under {
            let rel = &f.path[prefix.len()..];
            match rel.split_once('/') {
                None => out.push(file_entry(f)),
                Some((dir, _)) => {
                    if dirs.last().map(String::as_str) != Some(dir) {
                        dirs.push(dir.to_string());
                    }
                }
            }
        }
        for dir in dirs {
            let full = format!("{prefix}{dir}");
            let inner = format!("{full}/");
            // A stable id for the folder's content (not git's tree hash, which needs modes).
            let mut listing = String::from("graft-hub-tree\n");
            for f in under.iter().filter(|f| f.path.starts_with(&inner)) {
                listing.push_str(&format!("{}\0{}\n", &f.path[inner.len()..], f.blob_oid()));
            }
            out.push(json!({
                "type": "directory",
                "oid": crate::git_blob_sha1(listing.as_bytes()),
                "size": 0,
                "path": full,
            }));
        }
    }
    Response::json(200, &Value::Array(out)).header("X-Repo-Commit", snap.commit.clone())
}

/// `GET|HEAD /repos/{type}/{org}/{name}/{sha256}?...` on the CDN origin. Never checks auth.
pub(crate) fn cdn(shared: &Shared, req: &Request, ignore_range: bool) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return not_found();
    }
    let Some(rest) = req.path.strip_prefix('/') else {
        return not_found();
    };
    let Some(segs) = rest
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
    else {
        return error(400, None, "Malformed percent-encoding in path");
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let ["repos", t, org, name, sha] = segs.as_slice() else {
        return not_found();
    };
    let Some(ty) = RepoType::parse(t).filter(|_| t.ends_with('s')) else {
        return not_found();
    };
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) || !valid_segment(org) {
        return not_found();
    }
    let sha = sha.to_ascii_lowercase();
    let repo = match Repo::open(&shared.root, ty, org, name) {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(),
        Err(e) => return server_error(&e),
    };
    // Try the file the link names first, so a lookup normally hashes one file.
    let hint = req.query_param("filename");
    let mut candidates: Vec<(String, std::path::PathBuf)> = repo
        .branches()
        .into_iter()
        .flat_map(|(_, dir)| list_files(&dir))
        .collect();
    candidates.sort_by_key(|(p, _)| Some(p) != hint.as_ref());
    for (path, fs_path) in candidates {
        let Ok(meta) = fs::metadata(&fs_path) else {
            continue;
        };
        if !repo.is_lfs(&path, meta.len()) {
            continue;
        }
        let Ok(h) = shared.hashes.get(&fs_path) else {
            continue;
        };
        if h.sha256 != sha {
            continue;
        }
        let base = path.rsplit('/').next().unwrap_or(&path);
        let safe: String = base
            .chars()
            .map(|c| {
                if c == '"' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let resp = Response::new(200)
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Disposition",
                format!("inline; filename=\"{safe}\";"),
            );
        return serve_bytes(req, resp, &fs_path, h.len, &sha, ignore_range);
    }
    not_found()
}
