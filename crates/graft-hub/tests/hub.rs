//! The native Hub client against the local Hub (`graft-hub-server`): cache layout, revisions,
//! typed errors, verification, resumption, timeouts, offline mode, tokens, model file
//! selection, concurrency and progress.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use graft_hub::{Error, Hub, HubOptions, Progress, ProgressFn, Repo, RepoType, Token};
use graft_hub_server::{
    git_blob_sha1, sha256_hex, Fault, FaultKind, HubServer, Origin, RequestRecord,
};
use tempfile::TempDir;

const CONFIG: &[u8] = b"{\"hidden_size\": 8}\n";
const DEV_CONFIG: &[u8] = b"{\"hidden_size\": 16, \"branch\": \"dev\"}\n";
const OLD_CONFIG: &[u8] = b"{\"hidden_size\": 4, \"branch\": \"old\"}\n";
const ADAPTER_CONFIG: &[u8] = b"{\"peft_type\": \"LORA\", \"r\": 8}\n";
const SUB_ADAPTER_CONFIG: &[u8] = b"{\"peft_type\": \"LORA\", \"r\": 4}\n";
const TOKENIZER: &[u8] = b"{\"model\": {\"type\": \"BPE\"}}\n";

/// ~300 KB of non-repeating bytes (an LFS file: `.safetensors`).
fn weights() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn small_lfs(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

struct Env {
    _dir: TempDir,
    root: PathBuf,
    server: HubServer,
}

/// A temporary Hub root with a few repositories, served on two local ports.
fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write(
        &root.join("tokens.json"),
        br#"["reader-tok", "approved-tok", "plain-tok"]"#,
    );

    let m = root.join("models/org/small");
    write(&m.join("repo.json"), br#"{"tags": {"v1.0": "old"}}"#);
    write(&m.join("branches/main/config.json"), CONFIG);
    write(&m.join("branches/main/model.safetensors"), &weights());
    write(&m.join("branches/dev/config.json"), DEV_CONFIG);
    write(&m.join("branches/old/config.json"), OLD_CONFIG);

    let p = root.join("models/org/private");
    write(
        &p.join("repo.json"),
        br#"{"private": true, "readers": ["reader-tok"]}"#,
    );
    write(&p.join("branches/main/config.json"), CONFIG);
    write(
        &p.join("branches/main/model.safetensors"),
        &small_lfs(1, 5000),
    );

    let g = root.join("models/org/gated");
    write(
        &g.join("repo.json"),
        br#"{"gated": true, "approved": ["approved-tok"]}"#,
    );
    write(&g.join("branches/main/config.json"), CONFIG);

    let d = root.join("datasets/org/data");
    write(&d.join("branches/main/README.md"), b"# data\n");
    write(&d.join("branches/main/train.parquet"), &small_lfs(2, 3000));

    let a = root.join("models/org/adapter/branches/main");
    write(&a.join("adapter_config.json"), ADAPTER_CONFIG);
    write(&a.join("adapter_model.safetensors"), &small_lfs(3, 4000));
    write(&a.join("sub/adapter_config.json"), SUB_ADAPTER_CONFIG);
    write(
        &a.join("sub/adapter_model.safetensors"),
        &small_lfs(4, 2000),
    );
    write(&a.join("README.md"), b"# adapter\n");

    let s = root.join("models/org/single/branches/main");
    write(&s.join("config.json"), CONFIG);
    write(&s.join("model.safetensors"), &small_lfs(5, 6000));
    write(&s.join("tokenizer.json"), TOKENIZER);
    write(&s.join("README.md"), b"# single\n");

    let sh = root.join("models/org/sharded/branches/main");
    write(&sh.join("config.json"), CONFIG);
    write(
        &sh.join("model.safetensors.index.json"),
        br#"{"metadata": {"total_size": 3000}, "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
            "c.weight": "model-00001-of-00002.safetensors"}}"#,
    );
    write(
        &sh.join("model-00001-of-00002.safetensors"),
        &small_lfs(6, 1500),
    );
    write(
        &sh.join("model-00002-of-00002.safetensors"),
        &small_lfs(7, 1500),
    );
    // Not named by the index: must not be fetched.
    write(&sh.join("stale.safetensors"), &small_lfs(8, 1500));

    let g1 = root.join("models/org/gguf1/branches/main");
    write(&g1.join("model.Q4_0.gguf"), &small_lfs(9, 2500));
    write(&g1.join("README.md"), b"# gguf\n");

    let g2 = root.join("models/org/gguf2/branches/main");
    write(&g2.join("a.Q4_0.gguf"), &small_lfs(10, 2500));
    write(&g2.join("b.Q8_0.gguf"), &small_lfs(11, 2600));

    let server = HubServer::start(&root).unwrap();
    Env {
        _dir: dir,
        root,
        server,
    }
}

/// Options for a client of `endpoint` with its cache in `cache`: short timeouts, 4 attempts,
/// waits of at most 2 s, no terminal bar.
fn options(endpoint: &str, cache: &Path) -> HubOptions {
    let mut o = HubOptions::from_vars(|_| None);
    o.endpoint = endpoint.to_string();
    o.token = None;
    o.cache_dir = cache.to_path_buf();
    o.offline = false;
    o.max_attempts = 4;
    o.etag_timeout = Duration::from_secs(2);
    o.read_timeout = Duration::from_secs(2);
    o.max_retry_wait = Duration::from_secs(2);
    o.progress = None;
    o.quiet = true;
    o
}

fn hub(env: &Env, cache: &TempDir) -> Hub {
    Hub::new(options(&env.server.endpoint(), cache.path()))
}

fn model(id: &str) -> Repo {
    Repo::model(id).unwrap()
}

fn cdn_gets(env: &Env) -> Vec<RequestRecord> {
    env.server
        .requests()
        .into_iter()
        .filter(|r| r.origin == Origin::Cdn && r.method == "GET")
        .collect()
}

fn fault(origin: Option<Origin>, path_contains: &str, times: usize, kind: FaultKind) -> Fault {
    Fault {
        path_contains: path_contains.to_string(),
        origin,
        times,
        kind,
    }
}

/// Names in a folder, sorted (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn blobs_dir(cache: &TempDir, folder: &str) -> PathBuf {
    cache.path().join(folder).join("blobs")
}

#[test]
fn small_and_lfs_files_land_in_the_huggingface_cache_layout() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let repo = model("org/small");
    let commit = env.server.commit("model", "org/small", "main").unwrap();
    let repo_dir = cache.path().join("models--org--small");

    // A small (git) file: the blob is named after its git blob sha1.
    let p = hub.download(&repo, "config.json").unwrap();
    assert_eq!(fs::read(&p).unwrap(), CONFIG);
    let sha1 = git_blob_sha1(CONFIG);
    assert_eq!(
        p,
        repo_dir.join("snapshots").join(&commit).join("config.json")
    );
    assert_eq!(p, hub.cache().pointer_path(&repo, &commit, "config.json"));
    assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    assert_eq!(
        fs::read_link(&p).unwrap(),
        Path::new("../../blobs").join(&sha1)
    );
    assert_eq!(
        fs::canonicalize(&p).unwrap(),
        fs::canonicalize(hub.cache().blob_path(&repo, &sha1)).unwrap()
    );
    assert_eq!(
        fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        commit
    );
    assert_eq!(hub.cache().cached_commit(&repo).as_deref(), Some(&*commit));

    // An LFS file: redirected to the CDN, the blob is named after its sha256.
    let w = weights();
    let sha256 = sha256_hex(&w);
    let meta = hub.metadata(&repo, "model.safetensors").unwrap();
    assert_eq!(meta.etag, sha256);
    assert_eq!(meta.commit, commit);
    assert_eq!(meta.size, w.len() as u64);
    assert!(meta.location.starts_with(&env.server.cdn_origin()));
    let q = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&q).unwrap(), w);
    assert_eq!(
        fs::read_link(&q).unwrap(),
        Path::new("../../blobs").join(&sha256)
    );
    assert_eq!(names(&repo_dir.join("blobs")), {
        let mut v = vec![sha1.clone(), sha256.clone()];
        v.sort();
        v
    });
    let gets = cdn_gets(&env);
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[0].status, 200);
    assert_eq!(
        hub.cache()
            .cached_file(&repo, "model.safetensors")
            .unwrap()
            .as_deref(),
        Some(q.as_path())
    );

    // Again: one HEAD each to the Hub, nothing from the CDN.
    env.server.clear_requests();
    assert_eq!(hub.download(&repo, "config.json").unwrap(), p);
    assert_eq!(hub.download(&repo, "model.safetensors").unwrap(), q);
    let log = env.server.requests();
    assert!(log.iter().all(|r| r.origin == Origin::Hub), "{log:?}");
    assert_eq!(log.iter().filter(|r| r.method == "HEAD").count(), 2);
    assert_eq!(log.len(), 2, "{log:?}");
}

#[test]
fn branches_tags_and_commits_each_resolve_to_their_content() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let at = |rev: &str| Repo::new("org/small", RepoType::Model, Some(rev)).unwrap();
    let refs = cache.path().join("models--org--small/refs");

    let main = hub.download(&at("main"), "config.json").unwrap();
    assert_eq!(fs::read(&main).unwrap(), CONFIG);
    let dev = hub.download(&at("dev"), "config.json").unwrap();
    assert_eq!(fs::read(&dev).unwrap(), DEV_CONFIG);
    let tag = hub.download(&at("v1.0"), "config.json").unwrap();
    assert_eq!(fs::read(&tag).unwrap(), OLD_CONFIG);
    let old_commit = env.server.commit("model", "org/small", "old").unwrap();
    assert_eq!(fs::read_to_string(refs.join("v1.0")).unwrap(), old_commit);
    assert_eq!(
        tag,
        cache
            .path()
            .join("models--org--small/snapshots")
            .join(&old_commit)
            .join("config.json")
    );

    let dev_commit = env.server.commit("model", "org/small", "dev").unwrap();
    assert_eq!(fs::read_to_string(refs.join("dev")).unwrap(), dev_commit);
    let pinned = at(&dev_commit);
    assert!(pinned.is_commit());
    let by_commit = hub.download(&pinned, "config.json").unwrap();
    assert_eq!(by_commit, dev);
    assert_eq!(fs::read(&by_commit).unwrap(), DEV_CONFIG);
    // A commit is not a ref name: nothing is written under refs/ for it.
    assert_eq!(names(&refs), vec!["dev", "main", "v1.0"]);
    assert_ne!(main, dev);
    assert_ne!(dev, tag);

    // A cached commit needs no network at all.
    drop(env);
    let again = hub.download(&pinned, "config.json").unwrap();
    assert_eq!(again, by_commit);
    assert_eq!(fs::read(&again).unwrap(), DEV_CONFIG);
}

#[test]
fn subfolders_datasets_and_snapshots() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);

    let adapter = model("org/adapter");
    let commit = env.server.commit("model", "org/adapter", "main").unwrap();
    let p = hub.download(&adapter, "sub/adapter_config.json").unwrap();
    assert_eq!(fs::read(&p).unwrap(), SUB_ADAPTER_CONFIG);
    assert_eq!(
        p,
        cache
            .path()
            .join("models--org--adapter/snapshots")
            .join(&commit)
            .join("sub/adapter_config.json")
    );
    // One level deeper: one more `..` in the relative link.
    assert_eq!(
        fs::read_link(&p).unwrap(),
        Path::new("../../../blobs").join(git_blob_sha1(SUB_ADAPTER_CONFIG))
    );
    let w = hub
        .download(&adapter, "sub/adapter_model.safetensors")
        .unwrap();
    assert_eq!(fs::read(&w).unwrap(), small_lfs(4, 2000));

    let data = Repo::new("org/data", RepoType::Dataset, None).unwrap();
    let dcommit = env.server.commit("dataset", "org/data", "main").unwrap();
    let readme = hub.download(&data, "README.md").unwrap();
    assert_eq!(fs::read(&readme).unwrap(), b"# data\n");
    let parquet = hub.download(&data, "train.parquet").unwrap();
    assert_eq!(fs::read(&parquet).unwrap(), small_lfs(2, 3000));
    let ddir = cache.path().join("datasets--org--data");
    assert_eq!(
        parquet,
        ddir.join("snapshots").join(&dcommit).join("train.parquet")
    );
    assert_eq!(fs::read_to_string(ddir.join("refs/main")).unwrap(), dcommit);
    assert_eq!(names(&ddir.join("blobs")), {
        let mut v = vec![git_blob_sha1(b"# data\n"), sha256_hex(&small_lfs(2, 3000))];
        v.sort();
        v
    });
    // The model repo of the same name would be another folder.
    assert!(!cache.path().join("models--org--data").exists());

    // The whole repository.
    let info = hub.info(&adapter).unwrap();
    assert_eq!(info.commit, commit);
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        listed,
        vec![
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "sub/adapter_config.json",
            "sub/adapter_model.safetensors"
        ]
    );
    let snap = hub.snapshot(&adapter).unwrap();
    assert_eq!(snap, hub.cache().snapshot_dir(&adapter, &commit));
    assert_eq!(
        fs::read(snap.join("adapter_config.json")).unwrap(),
        ADAPTER_CONFIG
    );
    assert_eq!(fs::read(snap.join("README.md")).unwrap(), b"# adapter\n");
    assert_eq!(
        fs::read(snap.join("adapter_model.safetensors")).unwrap(),
        small_lfs(3, 4000)
    );
}

#[test]
fn missing_and_private_repositories() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);

    let e = hub.download(&model("org/nope"), "config.json").unwrap_err();
    assert!(
        matches!(&e, Error::RepoNotFound { repo, .. } if repo == "org/nope"),
        "{e:?}"
    );
    assert_eq!(e.kind(), "RepoNotFound");
    assert!(e.to_string().contains("check the id"), "{e}");
    assert!(e.to_string().contains("use a token"), "{e}");
    // the library describes the problem; the CLI and the browser package name their options
    assert!(!e.to_string().contains("--"), "{e}");

    // Private and anonymous: indistinguishable from a missing repository.
    let private = model("org/private");
    let e = hub.download(&private, "config.json").unwrap_err();
    assert!(
        matches!(&e, Error::RepoNotFound { repo, .. } if repo == "org/private"),
        "{e:?}"
    );
    // A valid token that is not a reader: the same.
    let plain = hub.with_token(Token::new("plain-tok"));
    let e = plain.download(&private, "config.json").unwrap_err();
    assert!(matches!(e, Error::RepoNotFound { .. }), "{e:?}");

    let reader = hub.with_token(Token::new("reader-tok"));
    let p = reader.download(&private, "config.json").unwrap();
    assert_eq!(fs::read(&p).unwrap(), CONFIG);
    // Nothing of the failed attempts was cached for the missing repo.
    assert!(!cache.path().join("models--org--nope").exists());
}

#[test]
fn missing_revisions_and_files() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);

    let nobranch = Repo::new("org/small", RepoType::Model, Some("nope")).unwrap();
    let e = hub.download(&nobranch, "config.json").unwrap_err();
    assert!(
        matches!(&e, Error::RevisionNotFound { revision, .. } if revision == "nope"),
        "{e:?}"
    );
    assert_eq!(e.kind(), "RevisionNotFound");
    assert!(e.to_string().contains("40-character commit hash"), "{e}");
    // An unknown commit hash is a missing revision too.
    let nocommit = Repo::new("org/small", RepoType::Model, Some(&"0".repeat(40))).unwrap();
    let e = hub.download(&nocommit, "config.json").unwrap_err();
    assert!(matches!(e, Error::RevisionNotFound { .. }), "{e:?}");

    let repo = model("org/small");
    let e = hub.download(&repo, "missing.json").unwrap_err();
    assert!(
        matches!(&e, Error::EntryNotFound { path, revision, .. } if path == "missing.json" && revision == "main"),
        "{e:?}"
    );
    assert_eq!(e.kind(), "EntryNotFound");
    assert!(e.to_string().contains("check the file name"), "{e}");
    // huggingface_hub's `.no_exist` marker was written, so the cache now knows.
    let commit = env.server.commit("model", "org/small", "main").unwrap();
    assert!(cache
        .path()
        .join("models--org--small/.no_exist")
        .join(&commit)
        .join("missing.json")
        .is_file());
    let offline = Hub::new(HubOptions {
        offline: true,
        ..hub.options().clone()
    });
    let e = offline.download(&repo, "missing.json").unwrap_err();
    assert!(matches!(e, Error::EntryNotFound { .. }), "{e:?}");
}

#[test]
fn gated_repositories_and_invalid_tokens() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let gated = model("org/gated");

    let e = hub.download(&gated, "config.json").unwrap_err();
    assert!(
        matches!(&e, Error::GatedRepo { authenticated: false, repo, .. } if repo == "org/gated"),
        "{e:?}"
    );
    assert_eq!(e.kind(), "GatedRepo");
    assert!(e.to_string().contains("accept its conditions"), "{e}");

    let e = hub
        .with_token(Token::new("plain-tok"))
        .download(&gated, "config.json")
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::GatedRepo {
                authenticated: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("ask for access"), "{e}");

    let p = hub
        .with_token(Token::new("approved-tok"))
        .download(&gated, "config.json")
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), CONFIG);

    // A token the Hub does not know, even for a public repository.
    let e = hub
        .with_token(Token::new("hf_bogus"))
        .download(&model("org/small"), "config.json")
        .unwrap_err();
    assert!(matches!(e, Error::InvalidToken { .. }), "{e:?}");
    assert_eq!(e.kind(), "InvalidToken");
    assert!(e.to_string().contains("rejected the token"), "{e}");
    assert!(!e.to_string().contains("hf_bogus"), "the token leaked: {e}");
}

#[test]
fn server_errors_are_retried_then_reported() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let repo = model("org/small");

    env.server.add_fault(fault(
        Some(Origin::Hub),
        "",
        0,
        FaultKind::Status {
            code: 500,
            retry_after: None,
        },
    ));
    let e = hub.download(&repo, "config.json").unwrap_err();
    assert!(
        matches!(
            e,
            Error::Server {
                status: 500,
                attempts: 4,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.kind(), "ServerError");
    assert!(e.to_string().contains("run again later"), "{e}");
    let log = env.server.requests();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(log.iter().all(|r| r.method == "HEAD" && r.status == 500));
}

#[test]
fn rate_limits_honour_retry_after() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let repo = model("org/small");
    let limited = FaultKind::Status {
        code: 429,
        retry_after: Some(1),
    };

    // Once: waited for, then the download goes through.
    env.server
        .add_fault(fault(Some(Origin::Hub), "", 1, limited.clone()));
    let t = Instant::now();
    let p = hub.download(&repo, "config.json").unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(fs::read(&p).unwrap(), CONFIG);
    // HEAD (429), HEAD again, then the small file's GET on the Hub itself.
    let log: Vec<(String, u16)> = env
        .server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status))
        .collect();
    assert_eq!(
        log,
        vec![
            ("HEAD".to_string(), 429),
            ("HEAD".to_string(), 200),
            ("GET".to_string(), 200)
        ]
    );

    // Always: RateLimited once the attempts are spent.
    env.server.clear_requests();
    env.server
        .add_fault(fault(Some(Origin::Hub), "", 0, limited));
    let mut o = hub.options().clone();
    o.max_attempts = 2;
    let e = Hub::new(o)
        .download(&repo, "model.safetensors")
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::RateLimited {
                attempts: 2,
                retry_after: Some(1),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.kind(), "RateLimited");
    assert!(e.to_string().contains("wait a while"), "{e}");
    assert_eq!(env.server.requests().len(), 2);
}

#[test]
fn an_unreachable_endpoint_is_a_network_error() {
    let cache = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut o = options(&endpoint, cache.path());
    o.max_attempts = 2;
    let e = Hub::new(o)
        .download(&model("org/small"), "config.json")
        .unwrap_err();
    assert!(
        matches!(&e, Error::Network { attempts: 2, url, .. } if url.starts_with(&endpoint)),
        "{e:?}"
    );
    assert_eq!(e.kind(), "NetworkError");
    assert!(e.to_string().contains("check the network"), "{e}");
    assert!(e.to_string().contains("work offline"), "{e}");
    assert!(!e.to_string().contains("--"), "{e}");
}

#[test]
fn hostile_names_are_refused_before_any_request() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);

    for id in ["../x", "org/../x", "a/b/c", "org--x/y", "", "org/x y"] {
        let e = Repo::model(id).unwrap_err();
        assert!(matches!(e, Error::InvalidRepoId(_)), "{id}: {e:?}");
        assert!(e.to_string().contains("not a valid repo id"), "{e}");
    }
    for rev in ["../x", "/main", "a/../b", "a\nb"] {
        let e = Repo::new("org/small", RepoType::Model, Some(rev)).unwrap_err();
        assert!(matches!(e, Error::InvalidRevision(_)), "{rev:?}: {e:?}");
    }
    let repo = model("org/small");
    for path in ["../x", "a/../../x", "/etc/passwd", "C:/x", "a//b", "..\\x"] {
        let e = hub.download(&repo, path).unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{path}: {e:?}");
        assert_eq!(e.kind(), "UnsafePath");
        assert!(e.to_string().contains("only relative paths"), "{e}");
        let e = hub.metadata(&repo, path).unwrap_err();
        assert!(matches!(e, Error::UnsafePath { .. }), "{path}: {e:?}");
    }
    assert!(env.server.requests().is_empty());
    assert!(names(cache.path()).is_empty());
}

#[test]
fn corrupt_bytes_never_enter_the_cache() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let repo = model("org/small");
    let w = weights();
    let sha = sha256_hex(&w);
    let blobs = blobs_dir(&cache, "models--org--small");

    env.server.add_fault(fault(
        Some(Origin::Cdn),
        "",
        1,
        FaultKind::Corrupt { offset: 150_000 },
    ));
    let e = hub.download(&repo, "model.safetensors").unwrap_err();
    assert!(
        matches!(&e, Error::Integrity { path, what, .. } if path == "model.safetensors" && what.contains("sha256")),
        "{e:?}"
    );
    assert_eq!(e.kind(), "IntegrityError");
    assert!(
        e.to_string().contains("nothing was added to the cache"),
        "{e}"
    );
    assert!(!blobs.join(&sha).exists());
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
    assert!(names(&blobs).is_empty(), "{:?}", names(&blobs));
    assert_eq!(
        hub.cache().cached_file(&repo, "model.safetensors").unwrap(),
        None
    );

    // The fault is used up: the next run downloads it whole.
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    assert_eq!(names(&blobs), vec![sha.clone()]);

    // A git file corrupted on the Hub origin fails its git blob sha1.
    env.server.add_fault(fault(
        Some(Origin::Hub),
        "config.json",
        0,
        FaultKind::Corrupt { offset: 3 },
    ));
    let e = hub.download(&repo, "config.json").unwrap_err();
    assert!(
        matches!(&e, Error::Integrity { what, .. } if what.contains("git blob sha1")),
        "{e:?}"
    );
    assert_eq!(names(&blobs), vec![sha]);
}

#[test]
fn an_interrupted_transfer_resumes_with_range() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let repo = model("org/small");
    let w = weights();

    env.server.add_fault(fault(
        Some(Origin::Cdn),
        "",
        1,
        FaultKind::DropAfter { bytes: 100_000 },
    ));
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    let gets = cdn_gets(&env);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(gets[1].status, 206);
    let blobs = blobs_dir(&cache, "models--org--small");
    assert_eq!(names(&blobs), vec![sha256_hex(&w)]);
}

#[test]
fn a_transfer_that_keeps_breaking_off_gives_up_and_keeps_its_bytes() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let repo = model("org/small");
    let w = weights();
    let sha = sha256_hex(&w);

    // Every answer breaks off after 20 000 bytes: four attempts, then a network error.
    env.server.add_fault(fault(
        Some(Origin::Cdn),
        "",
        0,
        FaultKind::DropAfter { bytes: 20_000 },
    ));
    let e = hub.download(&repo, "model.safetensors").unwrap_err();
    assert!(
        matches!(&e, Error::Network { attempts: 4, message, .. } if message.contains("broke off 4 times")),
        "{e:?}"
    );
    let ranges: Vec<Option<String>> = cdn_gets(&env).into_iter().map(|r| r.range).collect();
    assert_eq!(
        ranges,
        vec![
            None,
            Some("bytes=20000-".to_string()),
            Some("bytes=40000-".to_string()),
            Some("bytes=60000-".to_string())
        ]
    );
    let part = part_path(&hub, &repo, &sha);
    assert_eq!(fs::read(&part).unwrap(), &w[..80_000]);
    assert!(!hub.cache().blob_path(&repo, &sha).exists());

    // Without the fault, the next run picks up where it stopped.
    env.server.clear_faults();
    env.server.clear_requests();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    let gets = cdn_gets(&env);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=80000-"));
    assert!(!part.exists());

    // Nothing at all before the connection closes, forever: still bounded.
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(&env.server.endpoint(), cache.path());
    o.max_attempts = 3;
    let hub = Hub::new(o);
    env.server.add_fault(fault(
        Some(Origin::Cdn),
        "",
        0,
        FaultKind::DropAfter { bytes: 0 },
    ));
    env.server.clear_requests();
    let e = hub.download(&repo, "model.safetensors").unwrap_err();
    assert!(matches!(e, Error::Network { attempts: 3, .. }), "{e:?}");
    assert_eq!(cdn_gets(&env).len(), 3);
}

#[test]
fn a_partial_file_from_an_earlier_run_is_resumed_or_discarded() {
    let env = env();
    let w = weights();
    let repo = model("org/small");
    let k = 123_457;

    // Correct first K bytes: only the rest is asked for.
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let meta = hub.metadata(&repo, "model.safetensors").unwrap();
    let part = hub
        .cache()
        .blob_path(&repo, &meta.etag)
        .with_extension("incomplete");
    assert_eq!(
        part.file_name().unwrap().to_string_lossy(),
        format!("{}.incomplete", meta.etag)
    );
    write(&part, &w[..k]);
    env.server.clear_requests();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    let gets = cdn_gets(&env);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={k}-").as_str())
    );
    assert_eq!(gets[0].status, 206);
    assert!(!part.exists());

    // Wrong first K bytes: the whole file fails verification and the partial file goes.
    let cache = tempfile::tempdir().unwrap();
    let hub = self::hub(&env, &cache);
    let part = hub
        .cache()
        .blob_path(&repo, &meta.etag)
        .with_extension("incomplete");
    let mut wrong = w[..k].to_vec();
    wrong[10] ^= 0x55;
    write(&part, &wrong);
    env.server.clear_requests();
    let e = hub.download(&repo, "model.safetensors").unwrap_err();
    assert!(matches!(e, Error::Integrity { .. }), "{e:?}");
    assert!(!part.exists());
    assert!(!hub.cache().blob_path(&repo, &meta.etag).exists());
    assert_eq!(
        cdn_gets(&env)[0].range.as_deref(),
        Some(format!("bytes={k}-").as_str())
    );
    // And the run after that starts from scratch and succeeds.
    env.server.clear_requests();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    assert_eq!(cdn_gets(&env)[0].range, None);

    // A partial file longer than the file itself is not trusted either.
    let cache = tempfile::tempdir().unwrap();
    let hub = self::hub(&env, &cache);
    let mut long = w.clone();
    long.extend_from_slice(b"trailing junk");
    write(&part_path(&hub, &repo, &meta.etag), &long);
    env.server.clear_requests();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    assert_eq!(cdn_gets(&env)[0].range, None);
}

fn part_path(hub: &Hub, repo: &Repo, etag: &str) -> PathBuf {
    hub.cache()
        .blob_path(repo, etag)
        .with_file_name(format!("{etag}.incomplete"))
}

#[test]
fn a_server_ignoring_range_makes_the_client_start_over() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);
    let repo = model("org/small");
    let w = weights();
    let meta = hub.metadata(&repo, "model.safetensors").unwrap();
    let k = 50_000;

    // Resumed from an earlier run's partial file.
    write(&part_path(&hub, &repo, &meta.etag), &w[..k]);
    env.server
        .add_fault(fault(Some(Origin::Cdn), "", 1, FaultKind::IgnoreRange));
    env.server.clear_requests();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    let gets = cdn_gets(&env);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range.as_deref(), Some("bytes=50000-"));
    assert_eq!(gets[0].status, 200);

    // Resumed after a dropped connection, with wrong bytes kept before: starting over
    // from 0 replaces them, so the result still verifies.
    let cache = tempfile::tempdir().unwrap();
    let hub = self::hub(&env, &cache);
    let mut wrong = w[..k].to_vec();
    wrong[0] ^= 1;
    write(&part_path(&hub, &repo, &meta.etag), &wrong);
    env.server
        .add_fault(fault(Some(Origin::Cdn), "", 1, FaultKind::IgnoreRange));
    env.server.clear_requests();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    assert_eq!(cdn_gets(&env)[0].status, 200);
}

#[test]
fn stalls_are_retried_and_slow_transfers_complete() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(&env.server.endpoint(), cache.path());
    o.read_timeout = Duration::from_secs(1);
    let hub = Hub::new(o);
    let repo = model("org/small");
    let w = weights();

    env.server.add_fault(fault(
        Some(Origin::Cdn),
        "",
        1,
        FaultKind::Stall { delay_ms: 2500 },
    ));
    let t = Instant::now();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(fs::read(&p).unwrap(), w);
    // The stalled request is logged when the server wakes up: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cdn_gets(&env).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cdn_gets(&env).len(), 2);

    // Slow but steady (each chunk well within the timeout): one request, right bytes.
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(&env.server.endpoint(), cache.path());
    o.read_timeout = Duration::from_secs(1);
    let hub = Hub::new(o);
    env.server.add_fault(fault(
        Some(Origin::Cdn),
        "",
        1,
        FaultKind::Slow {
            chunk: 64 * 1024,
            delay_ms: 100,
        },
    ));
    env.server.clear_requests();
    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), w);
    let gets = cdn_gets(&env);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].range, None);
}

#[test]
fn offline_mode_serves_the_cache_only() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let online = hub(&env, &cache);
    let repo = model("org/small");
    let commit = env.server.commit("model", "org/small", "main").unwrap();
    let cfg = online.download(&repo, "config.json").unwrap();
    let st = online.download(&repo, "model.safetensors").unwrap();
    drop(env);

    let mut o = online.options().clone();
    o.offline = true;
    let offline = Hub::new(o);
    assert_eq!(offline.download(&repo, "config.json").unwrap(), cfg);
    assert_eq!(offline.download(&repo, "model.safetensors").unwrap(), st);
    assert_eq!(fs::read(&st).unwrap(), weights());

    let e = offline.download(&repo, "tokenizer.json").unwrap_err();
    assert!(
        matches!(&e, Error::NotCached { path, revision, .. } if path == "tokenizer.json" && revision == "main"),
        "{e:?}"
    );
    assert_eq!(e.kind(), "NotCached");
    assert!(e.to_string().contains("offline"), "{e}");
    let dev = Repo::new("org/small", RepoType::Model, Some("dev")).unwrap();
    let e = offline.download(&dev, "config.json").unwrap_err();
    assert!(matches!(e, Error::NotCached { .. }), "{e:?}");

    let info = offline.info(&repo).unwrap();
    assert_eq!(info.commit, commit);
    let listed: Vec<(&str, Option<u64>)> = info
        .siblings
        .iter()
        .map(|s| (s.path.as_str(), s.size))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("config.json", Some(CONFIG.len() as u64)),
            ("model.safetensors", Some(weights().len() as u64)),
        ]
    );
    let e = offline.info(&model("org/other")).unwrap_err();
    assert!(matches!(e, Error::NotCached { .. }), "{e:?}");
}

#[test]
fn the_cache_answers_when_the_hub_fails_but_not_when_it_says_no() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let mut o = options(&env.server.endpoint(), cache.path());
    o.max_attempts = 2;
    let hub = Hub::new(o);
    let repo = model("org/small");
    let cfg = hub.download(&repo, "config.json").unwrap();
    let dev = Repo::new("org/small", RepoType::Model, Some("dev")).unwrap();
    let dev_cfg = hub.download(&dev, "config.json").unwrap();

    env.server.add_fault(fault(
        Some(Origin::Hub),
        "",
        0,
        FaultKind::Status {
            code: 500,
            retry_after: None,
        },
    ));
    assert_eq!(hub.download(&repo, "config.json").unwrap(), cfg);
    assert_eq!(fs::read(&cfg).unwrap(), CONFIG);
    // The file list falls back to the cached snapshot as well.
    let info = hub.info(&repo).unwrap();
    assert_eq!(
        info.commit,
        env.server.commit("model", "org/small", "main").unwrap()
    );
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(listed, vec!["config.json"]);
    // Not cached: the server error stands.
    let e = hub.download(&repo, "model.safetensors").unwrap_err();
    assert!(matches!(e, Error::Server { .. }), "{e:?}");
    env.server.clear_faults();

    // The file is gone from the branch: EntryNotFound, not the stale copy.
    fs::remove_file(env.root.join("models/org/small/branches/main/config.json")).unwrap();
    let e = hub.download(&repo, "config.json").unwrap_err();
    assert!(matches!(e, Error::EntryNotFound { .. }), "{e:?}");
    // The branch is gone: RevisionNotFound, not the stale copy.
    fs::remove_dir_all(env.root.join("models/org/small/branches/dev")).unwrap();
    let e = hub.download(&dev, "config.json").unwrap_err();
    assert!(matches!(e, Error::RevisionNotFound { .. }), "{e:?}");
    // The cached files themselves are untouched.
    assert_eq!(fs::read(&dev_cfg).unwrap(), DEV_CONFIG);
}

#[test]
fn the_token_goes_to_the_hub_and_never_to_the_cdn() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache).with_token(Token::new("reader-tok"));
    let repo = model("org/private");

    let p = hub.download(&repo, "model.safetensors").unwrap();
    assert_eq!(fs::read(&p).unwrap(), small_lfs(1, 5000));
    let info = hub.info(&repo).unwrap();
    assert!(info.has("model.safetensors"));

    let log = env.server.requests();
    let (cdn, hub_side): (Vec<_>, Vec<_>) = log.iter().partition(|r| r.origin == Origin::Cdn);
    assert_eq!(cdn.len(), 1, "{log:?}");
    assert!(cdn.iter().all(|r| r.authorization.is_none()), "{cdn:?}");
    assert_eq!(hub_side.len(), 2, "{log:?}");
    assert!(
        hub_side
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer reader-tok")),
        "{hub_side:?}"
    );
}

#[test]
fn model_and_adapter_files_are_picked_from_the_listing() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&env, &cache);

    // One safetensors file with its tokenizer; the README is not needed.
    let single = model("org/single");
    let dir = hub.fetch_model(&single, None).unwrap();
    let commit = env.server.commit("model", "org/single", "main").unwrap();
    assert_eq!(dir, hub.cache().snapshot_dir(&single, &commit));
    assert_eq!(
        names(&dir),
        vec!["config.json", "model.safetensors", "tokenizer.json"]
    );
    assert_eq!(fs::read(dir.join("tokenizer.json")).unwrap(), TOKENIZER);
    assert_eq!(
        fs::read(dir.join("model.safetensors")).unwrap(),
        small_lfs(5, 6000)
    );

    // Sharded: the index names the shards; the stale file is left alone.
    env.server.clear_requests();
    let dir = hub.fetch_model(&model("org/sharded"), None).unwrap();
    assert_eq!(
        names(&dir),
        vec![
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert_eq!(
        fs::read(dir.join("model-00002-of-00002.safetensors")).unwrap(),
        small_lfs(7, 1500)
    );
    let log = env.server.requests();
    assert!(log.iter().all(|r| !r.path.contains("stale")), "{log:?}");
    assert_eq!(cdn_gets(&env).len(), 2);

    // One GGUF file: its path.
    let g = hub.fetch_model(&model("org/gguf1"), None).unwrap();
    assert_eq!(g.file_name().unwrap(), "model.Q4_0.gguf");
    assert_eq!(fs::read(&g).unwrap(), small_lfs(9, 2500));
    // Two: the user must choose.
    let two = model("org/gguf2");
    let e = hub.fetch_model(&two, None).unwrap_err();
    assert!(matches!(e, Error::Files { .. }), "{e:?}");
    assert_eq!(e.kind(), "RepoFiles");
    assert!(e.to_string().contains("choose one by name"), "{e}");
    assert!(!e.to_string().contains("--"), "{e}");
    assert!(e.to_string().contains("a.Q4_0.gguf"), "{e}");
    let b = hub.fetch_model(&two, Some("b.Q8_0.gguf")).unwrap();
    assert_eq!(fs::read(&b).unwrap(), small_lfs(11, 2600));
    let e = hub.fetch_model(&two, Some("c.gguf")).unwrap_err();
    assert!(matches!(e, Error::EntryNotFound { .. }), "{e:?}");
    // Not a model at all.
    let e = hub.fetch_model(&model("org/adapter"), None).unwrap_err();
    assert!(matches!(e, Error::Files { .. }), "{e:?}");

    // Adapters: the folder that holds adapter_config.json.
    let adapter = model("org/adapter");
    let acommit = env.server.commit("model", "org/adapter", "main").unwrap();
    let top = hub.fetch_adapter(&adapter, None).unwrap();
    assert_eq!(top, hub.cache().snapshot_dir(&adapter, &acommit));
    assert_eq!(
        fs::read(top.join("adapter_config.json")).unwrap(),
        ADAPTER_CONFIG
    );
    assert_eq!(
        fs::read(top.join("adapter_model.safetensors")).unwrap(),
        small_lfs(3, 4000)
    );
    assert!(!top.join("README.md").exists());
    let sub = hub.fetch_adapter(&adapter, Some("sub")).unwrap();
    assert_eq!(sub, top.join("sub"));
    assert_eq!(
        names(&sub),
        vec!["adapter_config.json", "adapter_model.safetensors"]
    );
    assert_eq!(
        fs::read(sub.join("adapter_config.json")).unwrap(),
        SUB_ADAPTER_CONFIG
    );
    assert!(hub.is_adapter_repo(&adapter, Some("sub")).unwrap());
    assert!(!hub.is_adapter_repo(&single, None).unwrap());
    let e = hub.fetch_adapter(&single, None).unwrap_err();
    assert!(
        matches!(&e, Error::Files { what, .. } if what.contains("not a PEFT adapter")),
        "{e:?}"
    );
}

#[test]
fn concurrent_downloads_of_one_file_share_one_blob() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let repo = model("org/small");
    let w = Arc::new(weights());
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let hub = Hub::new(options(&env.server.endpoint(), cache.path()));
            let repo = repo.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                hub.download(&repo, "model.safetensors")
            })
        })
        .collect();
    let paths: Vec<PathBuf> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert!(paths.iter().all(|p| *p == paths[0]), "{paths:?}");
    assert_eq!(fs::read(&paths[0]).unwrap(), *w);
    let sha = sha256_hex(&w);
    assert_eq!(
        names(&blobs_dir(&cache, "models--org--small")),
        vec![sha.clone()]
    );
    // The blob's lock let one thread download it; the others found it done.
    assert_eq!(cdn_gets(&env).len(), 1);
    let commit = env.server.commit("model", "org/small", "main").unwrap();
    let snap = hub_snapshot_names(&cache, &commit);
    assert_eq!(snap, vec!["model.safetensors"]);
}

fn hub_snapshot_names(cache: &TempDir, commit: &str) -> Vec<String> {
    names(
        &cache
            .path()
            .join("models--org--small/snapshots")
            .join(commit),
    )
}

#[test]
fn progress_reports_start_advance_and_done() {
    let env = env();
    let cache = tempfile::tempdir().unwrap();
    let events: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&events);
    let progress: ProgressFn = Arc::new(move |p: &Progress| sink.lock().unwrap().push(p.clone()));
    let mut o = options(&env.server.endpoint(), cache.path());
    o.progress = Some(progress);
    let hub = Hub::new(o);
    let total = weights().len() as u64;
    let file = "model.safetensors".to_string();
    hub.download(&model("org/small"), &file).unwrap();

    let ev = events.lock().unwrap().clone();
    assert!(ev.len() >= 3, "{ev:?}");
    assert_eq!(
        ev[0],
        Progress::Start {
            file: file.clone(),
            total,
            done: 0
        }
    );
    assert_eq!(ev.last().unwrap(), &Progress::Done { file: file.clone() });
    let mut last = 0;
    for e in &ev[1..ev.len() - 1] {
        match e {
            Progress::Advance {
                file: f,
                done,
                total: t,
            } => {
                assert_eq!(f, &file);
                assert_eq!(*t, total);
                assert!(*done > last, "{ev:?}");
                last = *done;
            }
            other => panic!("unexpected {other:?} in {ev:?}"),
        }
    }
    assert_eq!(last, total);

    // A cached file is not downloaded again: no events.
    events.lock().unwrap().clear();
    hub.download(&model("org/small"), &file).unwrap();
    assert!(events.lock().unwrap().is_empty());
}
