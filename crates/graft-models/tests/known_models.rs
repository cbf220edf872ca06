//! The Hub ids of the known models resolve to their fetched GGUF in `models/` when it is there,
//! and to the Hub otherwise (here an offline Hub with an empty cache, so: an error).
//!
//! One test in its own binary: it changes the working directory and `GRAFT_DEFAULT_MODEL`,
//! which are the process's.

use std::path::{Path, PathBuf};

use graft_models::hub::{resolve, resolve_base, stand_in, Hub, HubOptions};
use graft_models::model::{
    default_model_path, known_model, local_known_model, KNOWN_MODELS, MODELS_DIR,
};

#[test]
fn known_hub_ids_resolve_to_their_fetched_gguf() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("hf-cache");
    let hub = Hub::new(HubOptions::from_vars(|k| match k {
        "HF_HUB_CACHE" => Some(cache.display().to_string()),
        "HF_HUB_OFFLINE" => Some("1".into()),
        _ => None,
    }));
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join(MODELS_DIR)).expect("mkdir");
    std::env::set_current_dir(&work).expect("cd");
    std::env::remove_var("GRAFT_DEFAULT_MODEL");

    let ids = [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        "google/gemma-3-270m",
    ];
    assert_eq!(KNOWN_MODELS.len(), ids.len());
    assert_eq!(default_model_path(), KNOWN_MODELS[0].path());
    for id in ids {
        let k = known_model(id).expect("known");
        assert_eq!(k.hub_id, id);
        // The Hub compares ids without case.
        assert_eq!(known_model(&id.to_ascii_uppercase()), Some(k));
        let file = PathBuf::from(MODELS_DIR).join(k.file);
        assert_eq!(k.path(), file);
        assert_eq!(k.path_in(Path::new("/x")), Path::new("/x").join(k.file));
        assert!(k.fetch.starts_with("scripts/fetch_"), "{}", k.fetch);

        // Absent: the Hub is asked (offline, nothing cached: an error naming the repo).
        assert_eq!(local_known_model(id), None);
        assert_eq!(stand_in(id, None, None), None);
        let e = resolve(&hub, id, None, None).expect_err("offline, empty cache");
        assert!(e.to_string().contains(id), "{e}");

        // Present: the file, for the id alone and as an adapter's base.
        std::fs::write(&file, b"GGUF").expect("write");
        assert_eq!(local_known_model(id), Some(file.clone()));
        let r = resolve(&hub, id, None, None).expect("resolves locally");
        assert_eq!(r.base, file);
        assert_eq!(r.adapter, None);
        // Adapters made on it record the Hub id (as PEFT does), not the models/ path.
        assert_eq!(r.base_id.as_deref(), Some(id));
        // An adapter folder naming the id as its base: the same.
        let adapter = work.join(format!("adapter-{}", k.file));
        std::fs::create_dir_all(&adapter).expect("mkdir");
        std::fs::write(
            adapter.join("adapter_config.json"),
            format!(r#"{{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "{id}"}}"#),
        )
        .expect("write");
        let a = resolve(&hub, adapter.to_str().expect("utf-8"), None, None).expect("adapter");
        assert_eq!((a.base, a.base_id.as_deref()), (file.clone(), Some(id)));
        assert_eq!(
            resolve_base(&hub, &work, Some(id), None).expect("base"),
            file
        );
        // A revision or a named GGUF file means the repository itself.
        assert_eq!(stand_in(id, Some("main"), None), None);
        assert_eq!(stand_in(&format!("{id}@main"), None, None), None);
        assert_eq!(stand_in(id, None, Some("x.gguf")), None);
        assert!(resolve(&hub, id, Some("main"), None).is_err());
        assert!(resolve(&hub, &format!("{id}@v1"), None, None).is_err());
        assert!(resolve(&hub, id, None, Some("x.gguf")).is_err());
        assert!(resolve_base(&hub, &work, Some(id), Some("x.gguf")).is_err());
    }
    // Other ids are not known.
    assert_eq!(known_model("Qwen/Qwen2.5-Coder-7B-Instruct"), None);
    assert_eq!(stand_in("Qwen/Qwen2.5-Coder-7B-Instruct", None, None), None);

    // $GRAFT_DEFAULT_MODEL moves the default model only.
    let elsewhere = tmp.path().join("smol.gguf");
    std::fs::write(&elsewhere, b"GGUF").expect("write");
    std::env::set_var("GRAFT_DEFAULT_MODEL", &elsewhere);
    assert_eq!(default_model_path(), elsewhere);
    assert_eq!(
        local_known_model("HuggingFaceTB/SmolLM2-135M-Instruct"),
        Some(elsewhere.clone())
    );
    assert_eq!(
        local_known_model("google/gemma-3-270m"),
        Some(PathBuf::from(MODELS_DIR).join("gemma-3-270m-q4_k_m.gguf"))
    );
    std::env::remove_var("GRAFT_DEFAULT_MODEL");
}
