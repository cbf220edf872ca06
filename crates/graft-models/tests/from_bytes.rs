//! The bytes constructors (what the browser build uses: no filesystem) against the path-based
//! ones: bit-identical logits on the fixtures, byte-identical saved adapters, typed errors for
//! bad bytes, and forward passes without a worker pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use graft_adapters::Error as CoreError;
use graft_arch::Error as ArchError;
use graft_models::{Error, LoadAdapterOptions, Model, OpenOptions, Threading};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const TOKENS: &[u32] = &[1, 5, 17, 42, 99, 3, 64, 7, 120, 0, 33, 2];

fn logits(m: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    m.logits(tokens)
        .expect("forward")
        .to_vec2::<f32>()
        .expect("f32 logits")
}

/// Bit-identical, not merely close.
fn assert_bits_eq(a: &[Vec<f32>], b: &[Vec<f32>]) {
    assert_eq!(a.len(), b.len());
    for (ra, rb) in a.iter().zip(b) {
        let ba: Vec<u32> = ra.iter().map(|x| x.to_bits()).collect();
        let bb: Vec<u32> = rb.iter().map(|x| x.to_bits()).collect();
        assert_eq!(ba, bb);
    }
}

/// Every file of a model folder except config.json, as (name, bytes).
fn weight_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("model dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "config.json" && keep(n))
        .map(|n| {
            let b = read(&dir.join(&n));
            (n, b)
        })
        .collect();
    v.sort();
    v
}

fn llama_from_bytes(name: &str, keep: impl Fn(&str) -> bool) -> Result<Model, Error> {
    let dir = fixtures().join("models").join(name);
    Model::from_safetensors_bytes(
        &read(&dir.join("config.json")),
        weight_files(&dir, keep),
        &dir.display().to_string(),
        &OpenOptions::default(),
    )
}

fn adapter_dir() -> PathBuf {
    fixtures().join("cases/lora_qv/adapters/default")
}

#[test]
fn safetensors_bytes_match_the_folder() {
    let dir = fixtures().join("models/llama");
    let by_path = Model::open_base(&dir).expect("open llama");
    let by_bytes = llama_from_bytes("llama", |n| n == "model.safetensors").expect("bytes");
    assert_eq!(by_bytes.name_or_path, by_path.name_or_path);
    assert_eq!(by_bytes.config, by_path.config);
    assert_bits_eq(&logits(&by_path, TOKENS), &logits(&by_bytes, TOKENS));
}

#[test]
fn sharded_bytes_match_the_folder_with_and_without_the_index() {
    let dir = fixtures().join("models/llama-tied");
    let by_path = Model::open_base(&dir).expect("open llama-tied");
    let want = logits(&by_path, TOKENS);
    let with_index = llama_from_bytes("llama-tied", |n| n.contains(".safetensors")).expect("index");
    assert_bits_eq(&want, &logits(&with_index, TOKENS));
    let shards_only =
        llama_from_bytes("llama-tied", |n| n.ends_with(".safetensors")).expect("shards");
    assert_bits_eq(&want, &logits(&shards_only, TOKENS));

    // With the index, every shard it names must be there.
    let missing = llama_from_bytes("llama-tied", |n| {
        n.contains(".safetensors") && !n.starts_with("model-00002")
    });
    assert!(
        matches!(&missing, Err(Error::Arch(ArchError::NoWeights { hint, .. })) if hint.contains("model-00002")),
        "{:?}",
        missing.err()
    );
    // Without the index, a missing shard shows as a missing weight.
    let missing = llama_from_bytes("llama-tied", |n| {
        n.ends_with(".safetensors") && !n.starts_with("model-00002")
    });
    assert!(
        matches!(missing, Err(Error::Arch(ArchError::MissingWeight { .. }))),
        "{:?}",
        missing.err()
    );
}

#[test]
fn adapter_bytes_match_the_folder() {
    let base = fixtures().join("models/llama");
    let mut by_path = Model::open_base(&base).expect("base");
    let mut by_bytes = Model::open_base(&base).expect("base");
    let r1 = by_path
        .load_adapter(&adapter_dir(), LoadAdapterOptions::default())
        .expect("load by path");
    let r2 = by_bytes
        .load_adapter_from_bytes(
            &read(&adapter_dir().join("adapter_config.json")),
            &read(&adapter_dir().join("adapter_model.safetensors")),
            LoadAdapterOptions::default(),
        )
        .expect("load from bytes");
    assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
    let on = logits(&by_path, TOKENS);
    assert_bits_eq(&on, &logits(&by_bytes, TOKENS));
    // The adapter does something (so the comparison above is not base vs base).
    by_bytes.disable_adapters().expect("disable");
    assert_ne!(on, logits(&by_bytes, TOKENS));

    // A subfolder has no meaning for bytes.
    let mut m = Model::open_base(&base).expect("base");
    let e = m.load_adapter_from_bytes(
        &read(&adapter_dir().join("adapter_config.json")),
        &read(&adapter_dir().join("adapter_model.safetensors")),
        LoadAdapterOptions {
            subfolder: Some("x".into()),
            ..Default::default()
        },
    );
    assert!(e.is_err());
    assert!(m.registry().adapter_names().is_empty());
}

#[test]
fn adapter_files_bytes_equal_save_pretrained_and_round_trip() {
    let base = fixtures().join("models/llama");
    let mut m = Model::open_base(&base).expect("base");
    m.load_adapter(&adapter_dir(), LoadAdapterOptions::default())
        .expect("default");
    m.load_adapter(
        &adapter_dir(),
        LoadAdapterOptions {
            adapter_name: Some("second".into()),
            ..Default::default()
        },
    )
    .expect("second");
    let files = m.adapter_files_bytes(None).expect("files");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "second/adapter_config.json",
            "second/adapter_model.safetensors",
        ]
    );

    // Byte for byte what save_pretrained writes, and nothing else is written.
    let tmp = tempfile::tempdir().expect("tmp");
    let written = m.save_pretrained(tmp.path(), None).expect("save");
    assert_eq!(
        written,
        vec![tmp.path().to_path_buf(), tmp.path().join("second")]
    );
    let mut on_disk = BTreeMap::new();
    for d in [tmp.path().to_path_buf(), tmp.path().join("second")] {
        for e in std::fs::read_dir(&d).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                let rel = p
                    .strip_prefix(tmp.path())
                    .expect("inside")
                    .to_string_lossy()
                    .replace('\\', "/");
                on_disk.insert(rel, read(&p));
            }
        }
    }
    let in_memory: BTreeMap<String, Vec<u8>> = files.iter().cloned().collect();
    assert_eq!(on_disk, in_memory);

    // A subset.
    let only = m.adapter_files_bytes(Some(&["second"])).expect("subset");
    assert_eq!(only.len(), 2);
    assert_eq!(only[0].0, "second/adapter_config.json");
    assert!(matches!(
        m.adapter_files_bytes(Some(&["nope"])),
        Err(Error::Core(CoreError::AdapterNotFound { .. }))
    ));

    // Round trip: the saved bytes load back to the same logits.
    m.set_adapter(&["default"]).expect("set");
    let want = logits(&m, TOKENS);
    let mut fresh = Model::open_base(&base).expect("base");
    fresh
        .load_adapter_from_bytes(&files[0].1, &files[1].1, LoadAdapterOptions::default())
        .expect("reload");
    assert_bits_eq(&want, &logits(&fresh, TOKENS));
    fresh
        .load_adapter_from_bytes(
            &files[2].1,
            &files[3].1,
            LoadAdapterOptions {
                adapter_name: Some("second".into()),
                ..Default::default()
            },
        )
        .expect("reload second");
    fresh.set_adapter(&["second"]).expect("set second");
    m.set_adapter(&["second"]).expect("set second");
    assert_bits_eq(&logits(&m, TOKENS), &logits(&fresh, TOKENS));

    // No adapter: the typed error, as save_pretrained gives.
    let bare = Model::open_base(&base).expect("base");
    assert!(matches!(
        bare.adapter_files_bytes(None),
        Err(Error::Core(CoreError::NoAdapterLoaded))
    ));
}

#[test]
fn gguf_bytes_match_the_file() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        eprintln!(
            "skipped: {} is absent (scripts/fetch_default_model.sh fetches it)",
            path.display()
        );
        return;
    }
    let by_path = Model::open_base(&path).expect("open gguf");
    let by_bytes =
        Model::from_gguf_bytes(read(&path), &path.display().to_string()).expect("gguf bytes");
    assert_eq!(by_bytes.name_or_path, by_path.name_or_path);
    assert_eq!(by_bytes.config, by_path.config);
    assert_eq!(
        by_bytes.gguf_tokenizer_metadata(),
        by_path.gguf_tokenizer_metadata()
    );
    let toks = [1u32, 504, 3458, 282, 253, 1345, 30];
    assert_bits_eq(&logits(&by_path, &toks), &logits(&by_bytes, &toks));
    // A decode step too (the spinning pool's mat-vec path).
    let a = by_path.generate(&toks, 3, &[], |_| {}).expect("generate");
    let b = by_bytes.generate(&toks, 3, &[], |_| {}).expect("generate");
    assert_eq!(a, b);

    // Truncated GGUF bytes: a typed error.
    let mut cut = read(&path);
    cut.truncate(cut.len() / 2);
    assert!(matches!(
        Model::from_gguf_bytes(cut, "cut.gguf"),
        Err(Error::Arch(ArchError::Gguf(_)))
    ));
}

#[test]
fn bad_bytes_are_typed_errors() {
    let dir = fixtures().join("models/llama");
    let cfg = read(&dir.join("config.json"));
    let st = read(&dir.join("model.safetensors"));
    let opts = OpenOptions::default();

    let r = Model::from_safetensors_bytes(b"{\"model_type\": ", vec![], "x", &opts);
    assert!(matches!(r, Err(Error::BadModelConfig(_))), "{:?}", r.err());

    let r = Model::from_safetensors_bytes(
        &cfg,
        vec![("model.safetensors".into(), st[..st.len() / 2].to_vec())],
        "x",
        &opts,
    );
    assert!(
        matches!(r, Err(Error::Core(CoreError::Safetensors { .. }))),
        "{:?}",
        r.err()
    );
    let r = Model::from_safetensors_bytes(
        &cfg,
        vec![("model.safetensors".into(), st[..5].to_vec())],
        "x",
        &opts,
    );
    assert!(matches!(r, Err(Error::Core(CoreError::Safetensors { .. }))));

    let r = Model::from_safetensors_bytes(&cfg, vec![], "x", &opts);
    assert!(
        matches!(r, Err(Error::Arch(ArchError::NoWeights { .. }))),
        "{:?}",
        r.err()
    );
    let r = Model::from_safetensors_bytes(
        &cfg,
        vec![
            ("model.safetensors".into(), st.clone()),
            ("model.safetensors".into(), st.clone()),
        ],
        "x",
        &opts,
    );
    assert!(matches!(r, Err(Error::Arch(ArchError::BadWeightFiles(_)))));
    let r = Model::from_safetensors_bytes(
        &cfg,
        vec![
            ("model.safetensors.index.json".into(), b"[1,".to_vec()),
            ("a.safetensors".into(), st.clone()),
        ],
        "x",
        &opts,
    );
    assert!(matches!(r, Err(Error::Arch(ArchError::BadWeightFiles(_)))));
    let r = Model::from_safetensors_bytes(
        &cfg,
        vec![(
            "model.safetensors.index.json".into(),
            br#"{"weight_map": {"a": "../evil.safetensors"}}"#.to_vec(),
        )],
        "x",
        &opts,
    );
    assert!(matches!(r, Err(Error::Arch(ArchError::BadWeightFiles(_)))));

    assert!(matches!(
        Model::from_gguf_bytes(b"GGUF".to_vec(), "x.gguf"),
        Err(Error::Arch(ArchError::Gguf(_)))
    ));
    assert!(matches!(
        Model::from_gguf_bytes(Vec::new(), "x.gguf"),
        Err(Error::Arch(ArchError::Gguf(_)))
    ));

    let mut m = Model::open_base(&dir).expect("base");
    let acfg = read(&adapter_dir().join("adapter_config.json"));
    let ast = read(&adapter_dir().join("adapter_model.safetensors"));
    let r = m.load_adapter_from_bytes(b"{not json", &ast, LoadAdapterOptions::default());
    assert!(
        matches!(r, Err(Error::Core(CoreError::ConfigNotJson(_)))),
        "{:?}",
        r.err()
    );
    let r = m.load_adapter_from_bytes(&[0xff, 0xfe], &ast, LoadAdapterOptions::default());
    assert!(matches!(r, Err(Error::Core(CoreError::ConfigNotJson(_)))));
    let r = m.load_adapter_from_bytes(&acfg, &ast[..ast.len() - 3], LoadAdapterOptions::default());
    assert!(
        matches!(r, Err(Error::Core(CoreError::Safetensors { .. }))),
        "{:?}",
        r.err()
    );
    let r = m.load_adapter_from_bytes(&acfg, &[], LoadAdapterOptions::default());
    assert!(matches!(r, Err(Error::Core(CoreError::Safetensors { .. }))));
    // Nothing was loaded by the failures.
    assert!(m.registry().adapter_names().is_empty());
}

#[test]
fn forward_passes_run_without_a_worker_pool() {
    let dir = fixtures().join("models/llama");
    let pooled = Model::open_base(&dir).expect("base");
    if cfg!(not(target_arch = "wasm32")) {
        assert_eq!(pooled.threading(), Threading::Pool);
    }
    let want = logits(&pooled, TOKENS);
    let mut inline = Model::open_base(&dir).expect("base");
    inline.set_threading(Threading::CallingThread);
    assert_eq!(inline.threading(), Threading::CallingThread);
    assert_bits_eq(&want, &logits(&inline, TOKENS));

    // What wasm32 has: rayon's pool is the calling thread alone (a pool of one that uses the
    // current thread, as rayon's global pool falls back to where threads cannot be spawned).
    // Done on a thread of its own: such a pool claims its thread for good.
    std::thread::scope(|s| {
        s.spawn(|| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
                .expect("a pool of one on the current thread");
            assert_eq!(pool.current_thread_index(), Some(0));
            assert_eq!(rayon::current_num_threads(), 1);
            let me = std::thread::current().id();
            let got = logits(&inline, TOKENS);
            assert_bits_eq(&want, &got);
            let gen = inline.generate(TOKENS, 4, &[], |_| {
                assert_eq!(std::thread::current().id(), me);
            });
            assert_eq!(
                gen.expect("generate"),
                pooled.generate(TOKENS, 4, &[], |_| {}).expect("generate")
            );
            drop(pool);
        });
    });
    inline.set_threading(Threading::Pool);
    assert_bits_eq(&want, &logits(&inline, TOKENS));
}
