//! The crate map, enforced. `cargo metadata` lists each workspace crate's dependencies; every
//! graft crate a library depends on (normal and build dependencies; tests may reach further)
//! must be below it in the layers:
//!
//! ```text
//! core ← quant, text ← arch (the descriptions) ← cpu, gpu (backends) ← models (the Model)
//!      ← train ← faces (cli, wasm, serve; cli mounts serve)   hub: beside everything, depends on no graft crate
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// The graft crates each crate may depend on. A crate missing here fails the test: a new crate
/// must be placed in the layers.
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    let below_models = vec![
        "graft-adapters",
        "graft-quant",
        "graft-text",
        "graft-arch",
        "graft-cpu",
        "graft-gpu",
        "graft-hub",
    ];
    let mut with_models = below_models.clone();
    with_models.push("graft-models");
    let mut faces = with_models.clone();
    faces.push("graft-train");
    // the server is a face the CLI mounts (`graft serve`)
    let serve = with_models.clone();
    let mut cli = faces.clone();
    cli.push("graft-serve");
    BTreeMap::from([
        ("graft-adapters", vec![]),
        ("graft-quant", vec!["graft-adapters"]),
        ("graft-text", vec!["graft-adapters"]),
        ("graft-hub", vec![]),
        ("graft-hub-server", vec![]),
        ("graft-arch", vec!["graft-adapters", "graft-quant"]),
        (
            "graft-cpu",
            vec!["graft-adapters", "graft-quant", "graft-arch"],
        ),
        (
            "graft-gpu",
            vec!["graft-adapters", "graft-quant", "graft-arch"],
        ),
        ("graft-models", below_models),
        ("graft-train", with_models),
        ("graft-serve", serve),
        ("graft-cli", cli),
        ("graft-wasm", faces),
    ])
}

/// The edges the architecture forbids in so many words (each also excluded by `allowed`).
const FORBIDDEN: &[(&str, &str)] = &[
    ("graft-gpu", "graft-models"),
    ("graft-gpu", "graft-hub"),
    ("graft-gpu", "graft-cli"),
    ("graft-gpu", "graft-wasm"),
    ("graft-hub", "graft-models"),
    ("graft-hub", "graft-gpu"),
    ("graft-quant", "graft-text"),
    ("graft-text", "graft-quant"),
];

fn metadata() -> Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
}

/// (crate, its graft dependencies that are not dev-dependencies)
fn edges(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_string();
        let deps: BTreeSet<String> = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter(|d| d["path"].is_string())
            .map(|d| d["name"].as_str().expect("dep name").to_string())
            .collect();
        out.insert(name, deps);
    }
    out
}

#[test]
fn no_dependency_runs_up_the_layers() {
    let meta = metadata();
    let edges = edges(&meta);
    let allowed = allowed();
    let mut bad = Vec::new();
    for (krate, deps) in &edges {
        if krate == "graft-tests" {
            continue;
        }
        let Some(ok) = allowed.get(krate.as_str()) else {
            bad.push(format!(
                "{krate} is not placed in the layers (tests/tests/layers.rs)"
            ));
            continue;
        };
        for d in deps {
            if !ok.contains(&d.as_str()) {
                bad.push(format!("{krate} → {d}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies that run up the layers:\n{}",
        bad.join("\n")
    );
    // the rule table itself keeps the issue's forbidden edges out
    for (from, to) in FORBIDDEN {
        assert!(!allowed[from].contains(to), "{from} → {to} is allowed");
        assert!(
            !edges.get(*from).is_some_and(|d| d.contains(*to)),
            "{from} → {to}"
        );
    }
    // and the table names the crates that exist
    for k in allowed.keys() {
        assert!(
            edges.contains_key(*k),
            "{k} is in the table but not in the workspace"
        );
    }
}
