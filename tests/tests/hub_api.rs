//! The seed's calls with Hub repo ids, through the library: `from_pretrained("org/adapter")`
//! and `load_adapter(repo_id, revision, token)` against the local Hub, giving PEFT's numbers.

use std::path::PathBuf;

use graft_adapters::tensors::load_safetensors;
use graft_hub::{Hub, HubOptions, Token};
use graft_hub_server::HubServer;
use graft_models::{LoadAdapterOptions, Model, OpenOptions};
use graft_tests::{assert_close, case_tokens, fixtures};

struct Env {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
    server: HubServer,
}

impl Env {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("tokens.json"),
            r#"["hf_reader", "hf_other"]"#,
        )
        .unwrap();
        let server = HubServer::start(root.path()).unwrap();
        Env {
            root,
            cache: tempfile::tempdir().unwrap(),
            server,
        }
    }

    fn repo(&self, id: &str, branch: &str, repo_json: Option<&str>) -> PathBuf {
        let dir = self.root.path().join("models").join(id);
        if let Some(j) = repo_json {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("repo.json"), j).unwrap();
        }
        let p = dir.join("branches").join(branch);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn hub(&self) -> Hub {
        let mut o = HubOptions::from_vars(|_| None);
        o.endpoint = self.server.endpoint();
        o.cache_dir = self.cache.path().to_path_buf();
        o.quiet = true;
        o.max_attempts = 2;
        Hub::new(o)
    }
}

/// Writes a fixture adapter into `dir` with its base named `base`.
fn put_adapter(dir: &std::path::Path, case: &str, base: &str) {
    let src = fixtures().join("cases").join(case).join("adapters/default");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = base.into();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
}

fn case(
    name: &str,
) -> (
    Vec<u32>,
    std::collections::BTreeMap<String, graft_adapters::tensors::LoadedTensor>,
) {
    let dir = fixtures().join("cases").join(name);
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
    (
        case_tokens(&c),
        load_safetensors(&dir.join("logits.safetensors")).unwrap(),
    )
}

#[test]
fn from_pretrained_on_an_adapter_repo_fetches_the_base_then_the_adapter() {
    let env = Env::new();
    let base = env.repo("graft-test/tiny-llama", "main", None);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("models/llama").join(f), base.join(f)).unwrap();
    }
    // The adapter lives on a tag only (v1 → branch `release`), so the revision matters.
    let ad = env.repo(
        "graft-test/tiny-lora",
        "release",
        Some(r#"{"tags": {"v1": "release"}}"#),
    );
    put_adapter(&ad, "lora_qv", "graft-test/tiny-llama");
    let hub = env.hub();
    let m = Model::from_pretrained_hub(
        &hub,
        "graft-test/tiny-lora",
        Some("v1"),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(m.active_adapters().unwrap(), vec!["default".to_string()]);
    let (tokens, want) = case("lora_qv");
    assert_close(
        "from_pretrained(repo)",
        &m.logits(&tokens).unwrap(),
        &want["on"].tensor,
        1e-4,
    );
    // At `main` the adapter repo has no such branch: a typed error naming the revision.
    let err =
        Model::from_pretrained_hub(&hub, "graft-test/tiny-lora", None, &OpenOptions::default())
            .err()
            .unwrap();
    assert!(
        matches!(
            err,
            graft_models::Error::Hub(graft_hub::Error::RevisionNotFound { .. })
        ),
        "{err}"
    );
}

#[test]
fn load_adapter_with_revision_token_and_subfolder() {
    let env = Env::new();
    let base = env.repo("graft-test/tiny-llama", "main", None);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("models/llama").join(f), base.join(f)).unwrap();
    }
    // A private repo holding the adapter in a subfolder.
    let ad = env.repo(
        "graft-test/private-lora",
        "main",
        Some(r#"{"private": true, "readers": ["hf_reader"]}"#),
    );
    let sub = ad.join("qv");
    std::fs::create_dir_all(&sub).unwrap();
    put_adapter(&sub, "lora_qv", "graft-test/tiny-llama");
    let hub = env.hub();
    let mut m =
        Model::from_pretrained_hub(&hub, "graft-test/tiny-llama", None, &OpenOptions::default())
            .unwrap();
    let opts = || LoadAdapterOptions {
        adapter_name: Some("qv".into()),
        subfolder: Some("qv".into()),
        ..Default::default()
    };
    // Anonymous: the Hub hides private repos (RepoNotFound), and the message asks for a token.
    let err = m
        .load_adapter_hub(&hub, "graft-test/private-lora", None, opts())
        .unwrap_err();
    assert!(matches!(
        err,
        graft_models::Error::Hub(graft_hub::Error::RepoNotFound { .. })
    ));
    assert!(err.to_string().contains("token"), "{err}");
    // A valid token without access is still not found; the reader's token works.
    let other = hub.with_token(Token::new("hf_other"));
    assert!(m
        .load_adapter_hub(&other, "graft-test/private-lora", None, opts())
        .is_err());
    let reader = hub.with_token(Token::new("hf_reader"));
    m.load_adapter_hub(&reader, "graft-test/private-lora", Some("main"), opts())
        .unwrap();
    let (tokens, want) = case("lora_qv");
    assert_close(
        "load_adapter(repo, token)",
        &m.logits(&tokens).unwrap(),
        &want["on"].tensor,
        1e-4,
    );
    // No request with the token ever reached the CDN origin.
    let log = env.server.requests();
    assert!(log
        .iter()
        .any(|r| r.authorization.as_deref() == Some("Bearer hf_reader")));
    assert!(log
        .iter()
        .filter(|r| r.origin == graft_hub_server::Origin::Cdn)
        .all(|r| r.authorization.is_none()));
}

#[test]
fn a_sharded_base_named_by_an_adapter_repo_is_fetched_shard_by_shard() {
    let env = Env::new();
    let base = env.repo("graft-test/tiny-llama-tied", "main", None);
    let src = fixtures().join("models/llama-tied");
    for e in std::fs::read_dir(&src).unwrap() {
        let name = e.unwrap().file_name();
        let n = name.to_string_lossy();
        if n.starts_with("model") || n == "config.json" {
            std::fs::copy(src.join(&name), base.join(&name)).unwrap();
        }
    }
    let ad = env.repo("graft-test/tied-lora", "main", None);
    put_adapter(&ad, "tied_lora", "graft-test/tiny-llama-tied");
    let hub = env.hub();
    let m = Model::from_pretrained_hub(&hub, "graft-test/tied-lora", None, &OpenOptions::default())
        .unwrap();
    let (tokens, want) = case("tied_lora");
    assert_close(
        "sharded base over the Hub",
        &m.logits(&tokens).unwrap(),
        &want["on"].tensor,
        1e-4,
    );
    let shards = env
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("model-0000"))
        .count();
    assert_eq!(shards, 3, "each of the index's shards is fetched once");
}
