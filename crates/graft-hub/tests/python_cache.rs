//! graft and Python share one cache: `tests/fixtures/hf-cache/hub` was written by the real
//! `huggingface_hub` (scripts/make_hf_cache_fixture.py, from the local Hub serving
//! `tests/fixtures/hub-repos`). graft reads it offline, reuses its blobs online without
//! downloading, and lays out its own downloads exactly as Python did.

use std::path::{Path, PathBuf};

use graft_hub::{Error, Hub, HubOptions, Repo, RepoType};
use graft_hub_server::{HubServer, Origin};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn manifest() -> Value {
    let p = fixtures().join("hf-cache/manifest.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn hub(cache: &Path, endpoint: &str, offline: bool) -> Hub {
    let mut o = HubOptions::from_vars(|_| None);
    o.cache_dir = cache.to_path_buf();
    o.endpoint = endpoint.to_string();
    o.offline = offline;
    o.quiet = true;
    o.max_attempts = 2;
    Hub::new(o)
}

fn sha256(p: &Path) -> String {
    graft_hub::verify::sha256_hex(&std::fs::read(p).unwrap())
}

/// Copies a tree, keeping symlinks as symlinks (the cache's snapshots are relative links).
fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&s).unwrap(), &d).unwrap();
        } else if ft.is_dir() {
            copy_tree(&s, &d);
        } else {
            std::fs::copy(&s, &d).unwrap();
        }
    }
}

fn entries(m: &Value) -> Vec<(String, String, String, String)> {
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_string();
            (s("revision"), s("path"), s("commit"), s("sha256"))
        })
        .collect()
}

#[test]
fn pythons_cache_is_read_offline() {
    let m = manifest();
    let cache = fixtures().join("hf-cache/hub");
    // Not even a server: offline must never touch the network.
    let h = hub(&cache, "http://127.0.0.1:9", true);
    for (rev, path, commit, sha) in entries(&m) {
        for r in [rev.as_str(), commit.as_str()] {
            let repo = Repo::new("graft-test/tiny-adapter", RepoType::Model, Some(r)).unwrap();
            let p = h.download(&repo, &path).unwrap();
            assert_eq!(sha256(&p), sha, "{path}@{r}");
            let snap = cache.join("models--graft-test--tiny-adapter/snapshots");
            assert!(p.starts_with(snap.join(&commit)));
        }
    }
    let repo = Repo::model("graft-test/tiny-adapter").unwrap();
    // Python's `.no_exist` marker answers "absent" without the network.
    assert!(matches!(
        h.download(&repo, "missing.json"),
        Err(Error::EntryNotFound { .. })
    ));
    assert!(matches!(
        h.download(&repo, "other.json"),
        Err(Error::NotCached { .. })
    ));
    let info = h.info(&repo).unwrap();
    assert_eq!(info.commit, m["refs"]["main"].as_str().unwrap());
    let names: Vec<&str> = info.siblings.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "sub/notes.json"
        ]
    );
    // A whole adapter, as the model loader asks for it.
    let dir = h.fetch_adapter(&repo, None).unwrap();
    assert!(dir.join("adapter_model.safetensors").is_file());
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn pythons_blobs_are_reused_online_and_graft_lays_out_files_as_python_does() {
    let m = manifest();
    let server = HubServer::start(fixtures().join("hub-repos")).unwrap();
    // Online over a copy of Python's cache: metadata requests only, no bytes.
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixtures().join("hf-cache/hub"), tmp.path());
    let h = hub(tmp.path(), &server.endpoint(), false);
    for (rev, path, _commit, sha) in entries(&m) {
        let repo = Repo::new("graft-test/tiny-adapter", RepoType::Model, Some(&rev)).unwrap();
        assert_eq!(sha256(&h.download(&repo, &path).unwrap()), sha);
    }
    let log = server.requests();
    assert!(!log.is_empty());
    assert!(
        log.iter()
            .all(|r| r.method == "HEAD" && r.origin == Origin::Hub),
        "{log:?}"
    );

    // graft into an empty cache: the same refs, blob names and relative links as Python's.
    let fresh = tempfile::tempdir().unwrap();
    let h = hub(fresh.path(), &server.endpoint(), false);
    for (rev, path, _, _) in entries(&m) {
        let repo = Repo::new("graft-test/tiny-adapter", RepoType::Model, Some(&rev)).unwrap();
        h.download(&repo, &path).unwrap();
    }
    for f in m["files"].as_array().unwrap() {
        let link = fresh.path().join(f["snapshot_path"].as_str().unwrap());
        let target = std::fs::read_link(&link).unwrap();
        assert_eq!(
            target.to_str().unwrap(),
            f["symlink_target"].as_str().unwrap()
        );
        assert_eq!(sha256(&link), f["sha256"].as_str().unwrap());
    }
    let repo_dir = fresh.path().join("models--graft-test--tiny-adapter");
    for (name, commit) in m["refs"].as_object().unwrap() {
        let got = std::fs::read_to_string(repo_dir.join("refs").join(name)).unwrap();
        assert_eq!(
            got,
            commit.as_str().unwrap(),
            "refs/{name}: no newline, as Python writes it"
        );
    }
    let python_blobs = fixtures().join("hf-cache/hub/models--graft-test--tiny-adapter/blobs");
    assert_eq!(names_in(&repo_dir.join("blobs")), names_in(&python_blobs));
}
