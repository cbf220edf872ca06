//! `Gguf::parse` on arbitrary bytes: header, metadata and tensor table. A parsed file's tensors
//! must all lie inside the bytes, aligned and without overlap.
#![no_main]

use graft_arch::gguf::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    assert!(g.data_offset as usize <= data.len());
    for t in &g.tensors {
        let b = g.tensor_bytes(data, t);
        assert_eq!(b.len() as u64, t.nbytes);
        assert!(!t.dims.is_empty() && t.dims.len() <= 4);
    }
    for (k, v) in &g.metadata {
        let _ = (g.get_u64(k), g.get_f64(k), g.get_str(k), v.as_array());
    }
});
