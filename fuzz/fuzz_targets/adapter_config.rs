//! `adapter_config.json` parsing (graft-adapters' `AdapterConfig`), and a whole
//! `Model::load_adapter_from_bytes` of an arbitrary config onto a tiny fixture model, with the
//! weights PEFT saved for a fixture case (or arbitrary weights). A loaded adapter must run
//! (a forward pass), save (`adapter_files_bytes`) and load back from what it saved.
//!
//! Input: a JSON config (weights: the first fixture adapter, on the llama base), or a selector
//! byte (0x00..0x1f, not whitespace) then the JSON: fixture adapter `selector % N` on its base;
//! selector 0x1e: [0x1e, i, json]: fixture adapter `i % N`; selector 0x1f:
//! [0x1f, base, json length (u16 LE), json, safetensors bytes].
#![no_main]

use graft_adapters::config::AdapterConfig;
use graft_fuzz::{selector, with_model, ADAPTERS, BASES};
use graft_models::{KvCache, LoadAdapterOptions, Model};
use libfuzzer_sys::fuzz_target;

fn run(m: &mut Model, json: &[u8], weights: &[u8], allow_partial: bool) {
    let opts = LoadAdapterOptions {
        allow_partial,
        ..Default::default()
    };
    if m.load_adapter_from_bytes(json, weights, opts).is_err() {
        return;
    }
    // It runs…
    m.set_adapter(&["default"])
        .expect("the adapter just loaded");
    let v = m.vocab_size.max(1) as u32;
    let mut cache = KvCache::new();
    let _ = m.forward(&[0, (v - 1).min(5), (v - 1).min(3)], &mut cache);
    // …and what it saves loads again.
    let files = m
        .adapter_files_bytes(Some(&["default"]))
        .expect("a loaded adapter saves");
    let get = |n: &str| {
        files
            .iter()
            .find(|(p, _)| p == n)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no {n} among {:?}",
                    files.iter().map(|f| &f.0).collect::<Vec<_>>()
                )
            })
    };
    let (cfg, st) = (get("adapter_config.json"), get("adapter_model.safetensors"));
    let opts = LoadAdapterOptions {
        adapter_name: Some("again".into()),
        allow_partial,
        ..Default::default()
    };
    if let Err(e) = m.load_adapter_from_bytes(&cfg, &st, opts) {
        // As PEFT: an IA³ config with `feedforward_modules: null` gets the model type's default
        // (e.g. `down_proj`) while loading, and saves it; when `target_modules` does not
        // include it, PEFT's IA3Config then refuses the saved file too (its subset check runs
        // only on a config as constructed, before the defaults are filled in).
        if e.to_string()
            .contains("should be a subset of `target_modules`")
        {
            m.delete_adapter(&["default"]).expect("it is there");
            return;
        }
        panic!(
            "a saved adapter does not load back: {e}\nconfig: {}",
            String::from_utf8_lossy(&cfg)
        );
    }
    m.delete_adapter(&["default", "again"])
        .expect("both are there");
}

fuzz_target!(|data: &[u8]| {
    let (base, json, weights): (usize, &[u8], &[u8]) = match selector(data) {
        Some((0x1f, rest)) => {
            if rest.len() < 3 {
                return;
            }
            let base = rest[0] as usize % BASES.len();
            let n = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            let rest = &rest[3..];
            if n > rest.len() {
                return;
            }
            (base, &rest[..n], &rest[n..])
        }
        Some((0x1e, rest)) => {
            let Some((&i, rest)) = rest.split_first() else {
                return;
            };
            let (base, w) = ADAPTERS[i as usize % ADAPTERS.len()];
            (base, rest, w)
        }
        Some((s, rest)) => {
            let (base, w) = ADAPTERS[s as usize % ADAPTERS.len()];
            (base, rest, w)
        }
        None => (ADAPTERS[0].0, data, ADAPTERS[0].1),
    };

    // The config alone: parsed, written back as PEFT writes it, and parsed again.
    if let Ok(text) = std::str::from_utf8(json) {
        if let Ok(mut c) = AdapterConfig::from_json_str(text) {
            let again = c.to_json_string();
            if let Err(e) = AdapterConfig::from_json_str(&again) {
                panic!("a parsed config does not parse back: {e}\n{again}");
            }
            let _ = c.resolve_defaults("llama");
        }
    }

    let allow_partial = data.len() % 2 == 1;
    with_model(base, |m| run(m, json, weights, allow_partial));
});
