//! A whole GGUF file through `Model::from_gguf_bytes` (header, the architecture's metadata →
//! config.json, tensor names, shapes and types → weights, the description), then a forward pass
//! over two tokens. The input is the whole file, so nothing may allocate more than a small
//! multiple of it (libFuzzer's `-malloc_limit_mb` catches a declared size taken on trust).
#![no_main]

use graft_models::{KvCache, Model, Threading};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut m) = Model::from_gguf_bytes(data.to_vec(), "fuzz.gguf") else {
        return;
    };
    m.set_threading(Threading::CallingThread);
    let _ = m.understood();
    let _ = m.module_paths();
    let _ = m.gguf_tokenizer_metadata();
    let _ = m.eos_token_ids();
    let v = m.vocab_size.max(1) as u32;
    let mut cache = KvCache::new();
    let _ = m.forward(&[0, (v - 1).min(7)], &mut cache);
});
