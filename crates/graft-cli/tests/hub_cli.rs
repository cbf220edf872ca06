//! The CLI with Hub repo ids, against the local Hub (`graft-hub-server`): `--model ORG/ADAPTER`
//! gives the numbers the local folders give, `graft download` fills the cache shared with
//! huggingface_hub, two processes downloading one file leave one good copy, offline mode
//! serves the cache, and errors read as instructions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use graft_adapters::tensors::load_safetensors;
use graft_hub_server::{Fault, FaultKind, HubServer, Origin};
use graft_tests::{assert_close, fixtures, real_model};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A local Hub, a cache folder, and `graft` pointed at both.
struct Env {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
    server: Option<HubServer>,
    endpoint: String,
}

impl Env {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let server = HubServer::start(root.path()).unwrap();
        Env {
            root,
            cache,
            endpoint: server.endpoint(),
            server: Some(server),
        }
    }

    fn server(&self) -> &HubServer {
        self.server.as_ref().unwrap()
    }

    /// `root/models/{id}/branches/main`.
    fn branch(&self, id: &str) -> PathBuf {
        let p = self
            .root
            .path()
            .join("models")
            .join(id)
            .join("branches/main");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_graft"));
        c.args(args)
            .current_dir(repo_root())
            .env("HF_ENDPOINT", &self.endpoint)
            .env("HF_HUB_CACHE", self.cache.path())
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env("HF_HOME", self.cache.path().join("home"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run graft")
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "graft failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The tiny Llama base as `graft-test/tiny-llama`, and the lora_qv adapter as
/// `graft-test/tiny-lora` whose base_model_name_or_path names that repo.
fn publish_tiny(env: &Env) {
    let base = env.branch("graft-test/tiny-llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("models/llama").join(f), base.join(f)).unwrap();
    }
    let ad = env.branch("graft-test/tiny-lora");
    let src = fixtures().join("cases/lora_qv/adapters/default");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        ad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = "graft-test/tiny-llama".into();
    std::fs::write(
        ad.join("adapter_config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
}

const TOKENS: &str = "1,5,17,42,99,3,64,7,120,0,33,2";

fn logits(env: &Env, model_args: &[&str]) -> candle_core::Tensor {
    let out = env
        .cache
        .path()
        .join(format!("l{}.safetensors", model_args.len()));
    let mut args = vec!["logits", "--device", "cpu"];
    args.extend_from_slice(model_args);
    args.extend_from_slice(&["--tokens", TOKENS, "--out", out.to_str().unwrap()]);
    ok(&env.run(&args));
    load_safetensors(&out).unwrap()["logits"].tensor.clone()
}

#[test]
fn model_argument_that_is_an_adapter_repo_fetches_its_base() {
    let env = Env::new();
    publish_tiny(&env);
    let got = logits(&env, &["--model", "graft-test/tiny-lora"]);
    let want = load_safetensors(&fixtures().join("cases/lora_qv/logits.safetensors")).unwrap();
    assert_close("hub adapter", &got, &want["on"].tensor, 1e-4);
    // The same as the local folders.
    let local = logits(
        &env,
        &["--model", "tests/fixtures/cases/lora_qv/adapters/default"],
    );
    assert_close("hub vs local", &got, &local, 0.0);
    // The base repo with the adapter as --adapter REPO gives the same numbers; a pinned
    // revision (`@main`) works too.
    let again = logits(
        &env,
        &[
            "--model",
            "graft-test/tiny-llama@main",
            "--adapter",
            "x=graft-test/tiny-lora",
        ],
    );
    assert_close("--adapter repo", &again, &got, 0.0);
    // Everything is cached: offline with the server gone gives the same logits.
    let mut env = env;
    env.server = None;
    let offline = logits(&env, &["--model", "graft-test/tiny-lora", "--offline"]);
    assert_close("offline", &offline, &got, 0.0);
}

#[test]
fn missing_or_null_base_is_an_error_asking_for_model() {
    let env = Env::new();
    publish_tiny(&env);
    let ad = env.branch("graft-test/no-base");
    let src = env
        .root
        .path()
        .join("models/graft-test/tiny-lora/branches/main");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        ad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = serde_json::Value::Null;
    std::fs::write(
        ad.join("adapter_config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let o = env.run(&[
        "logits",
        "--model",
        "graft-test/no-base",
        "--tokens",
        "1,2",
        "--out",
        "/dev/null",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("base_model_name_or_path") && err.contains("--model"),
        "{err}"
    );
    // With --model naming the base and the adapter as --adapter, it works.
    let got = logits(
        &env,
        &[
            "--model",
            "graft-test/tiny-llama",
            "--adapter",
            "graft-test/no-base",
        ],
    );
    let want = load_safetensors(&fixtures().join("cases/lora_qv/logits.safetensors")).unwrap();
    assert_close("explicit base", &got, &want["on"].tensor, 1e-4);
}

#[test]
fn download_prints_cached_paths_and_errors_say_what_to_do() {
    let env = Env::new();
    publish_tiny(&env);
    let out = ok(&env.run(&[
        "download",
        "graft-test/tiny-lora",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]));
    let paths: Vec<&str> = out.lines().collect();
    assert_eq!(paths.len(), 2);
    let commit = env
        .server()
        .commit("model", "graft-test/tiny-lora", "main")
        .unwrap();
    let snap = env
        .cache
        .path()
        .join("models--graft-test--tiny-lora/snapshots")
        .join(&commit);
    assert_eq!(PathBuf::from(paths[0]), snap.join("adapter_config.json"));
    assert!(std::fs::symlink_metadata(paths[1])
        .unwrap()
        .file_type()
        .is_symlink());
    let src = env
        .root
        .path()
        .join("models/graft-test/tiny-lora/branches/main/adapter_model.safetensors");
    assert_eq!(
        std::fs::read(paths[1]).unwrap(),
        std::fs::read(src).unwrap()
    );
    // The whole repository: the snapshot folder.
    let out = ok(&env.run(&["download", "graft-test/tiny-llama"]));
    let dir = PathBuf::from(out.trim());
    assert!(dir.join("config.json").is_file() && dir.join("model.safetensors").is_file());

    let cases: [(&[&str], &str); 4] = [
        (&["download", "graft-test/nope", "x.json"], "not found"),
        (
            &["download", "graft-test/tiny-lora", "nope.json"],
            "does not exist",
        ),
        (
            &[
                "download",
                "graft-test/tiny-lora@nope",
                "adapter_config.json",
            ],
            "revision `nope` does not exist",
        ),
        (
            &["download", "graft-test/tiny-lora", "../../etc/passwd"],
            "unsafe path",
        ),
    ];
    for (args, phrase) in cases {
        let o = env.run(args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(phrase), "{args:?}: {err}");
    }
    // Offline, an uncached file is an error that names offline mode.
    let o = env.run(&[
        "download",
        "graft-test/tiny-llama",
        "tokenizer.json",
        "--offline",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("offline"), "{err}");
}

#[test]
fn two_processes_downloading_one_file_leave_one_good_copy() {
    let env = Env::new();
    let main = env.branch("graft-test/big");
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(main.join("weights.safetensors"), &data).unwrap();
    // Slow enough that the two transfers overlap.
    env.server().add_fault(Fault {
        path_contains: "".into(),
        origin: Some(Origin::Cdn),
        times: 0,
        kind: FaultKind::Slow {
            chunk: 256 * 1024,
            delay_ms: 60,
        },
    });
    let spawn = || {
        env.cmd(&[
            "download",
            "--quiet",
            "graft-test/big",
            "weights.safetensors",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (pa, pb) = (ok(&a), ok(&b));
    assert_eq!(pa, pb);
    assert_eq!(std::fs::read(pa.trim()).unwrap(), data);
    let blobs = env.cache.path().join("models--graft-test--big/blobs");
    let names: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        vec![graft_hub_server::sha256_hex(&data)],
        "{names:?}"
    );
    // The lock made the second process wait for the first: the bytes crossed once.
    let cdn_gets = env
        .server()
        .requests()
        .iter()
        .filter(|r| r.origin == Origin::Cdn && r.method == "GET")
        .count();
    assert_eq!(cdn_gets, 1);
}

#[test]
fn smollm2_adapter_repo_over_the_hub_generates_as_locally() {
    let Some(gguf) = real_model() else {
        eprintln!("skipping: the SmolLM2 GGUF is not here (scripts/fetch_default_model.sh)");
        return;
    };
    let env = Env::new();
    let base = env.branch("graft-test/smollm2-gguf");
    std::os::unix::fs::symlink(
        gguf.canonicalize().unwrap(),
        base.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    .unwrap();
    let ad = env.branch("graft-test/smollm2-pirate");
    let src = repo_root().join("adapters/smollm2-pirate");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        ad.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = "graft-test/smollm2-gguf".into();
    std::fs::write(
        ad.join("adapter_config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let gen = |model: &[&str]| {
        let mut args = vec!["generate", "--device", "cpu", "--max-new-tokens", "8"];
        args.extend_from_slice(model);
        args.extend_from_slice(&["--chat", "What is the capital of France?"]);
        ok(&env.run(&args))
    };
    let hub = gen(&["--model", "graft-test/smollm2-pirate"]);
    let local = gen(&["--adapter", "adapters/smollm2-pirate"]);
    assert_eq!(hub, local);
    assert!(!hub.trim().is_empty());
}
