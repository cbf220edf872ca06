//! graft's safetensors reader (`graft_adapters::tensors::parse_safetensors`, which every
//! adapter and base-model file goes through) on arbitrary bytes. What parses must serialise
//! (`serialize_safetensors`, what `save_pretrained` writes) and parse back to the same names,
//! dtypes, shapes and values.
#![no_main]

use graft_adapters::tensors::{parse_safetensors, serialize_safetensors};
use libfuzzer_sys::fuzz_target;

fn values(t: &graft_adapters::tensors::LoadedTensor) -> Vec<f32> {
    t.tensor
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 CPU tensor")
}

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = parse_safetensors("fuzz.safetensors", data) else {
        return;
    };
    let bytes = serialize_safetensors(&tensors).expect("what parsed serialises");
    let back = parse_safetensors("roundtrip", &bytes).expect("what graft writes parses");
    assert_eq!(
        tensors.keys().collect::<Vec<_>>(),
        back.keys().collect::<Vec<_>>()
    );
    for (name, a) in &tensors {
        let b = &back[name];
        assert_eq!(a.dtype, b.dtype, "{name}");
        assert_eq!(a.tensor.dims(), b.tensor.dims(), "{name}");
        for (x, y) in values(a).iter().zip(values(b)) {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{name}: {x} vs {y}"
            );
        }
    }
});
