//! What the fuzz targets share: the tiny fixture models of `tests/fixtures` (compiled in, so a
//! target runs from any directory), loaded once per process.

use std::cell::RefCell;

use graft_arch::WeightStore;
use graft_models::{Model, OpenOptions, Threading};

/// A fixture base model: its folder name, `config.json` and weight files.
pub struct Base {
    pub name: &'static str,
    pub config: &'static [u8],
    pub files: &'static [(&'static str, &'static [u8])],
}

macro_rules! base {
    ($name:literal, $dir:literal) => {
        Base {
            name: $name,
            config: include_bytes!(concat!("../../tests/fixtures/", $dir, "/config.json")),
            files: &[(
                "model.safetensors",
                include_bytes!(concat!("../../tests/fixtures/", $dir, "/model.safetensors")),
            )],
        }
    };
}

/// Every fixture base: the conformance models, then one per architecture.
pub const BASES: &[Base] = &[
    base!("llama", "models/llama"),
    Base {
        name: "llama-tied",
        config: include_bytes!("../../tests/fixtures/models/llama-tied/config.json"),
        files: &[
            (
                "model.safetensors.index.json",
                include_bytes!(
                    "../../tests/fixtures/models/llama-tied/model.safetensors.index.json"
                ),
            ),
            (
                "model-00001-of-00003.safetensors",
                include_bytes!(
                    "../../tests/fixtures/models/llama-tied/model-00001-of-00003.safetensors"
                ),
            ),
            (
                "model-00002-of-00003.safetensors",
                include_bytes!(
                    "../../tests/fixtures/models/llama-tied/model-00002-of-00003.safetensors"
                ),
            ),
            (
                "model-00003-of-00003.safetensors",
                include_bytes!(
                    "../../tests/fixtures/models/llama-tied/model-00003-of-00003.safetensors"
                ),
            ),
        ],
    },
    base!("opt", "models/opt"),
    base!("gemma2", "arch/models/gemma2"),
    base!("gemma3", "arch/models/gemma3"),
    base!("llama3", "arch/models/llama3"),
    base!("mistral", "arch/models/mistral"),
    base!("phi3", "arch/models/phi3"),
    base!("qwen2", "arch/models/qwen2"),
    base!("qwen3", "arch/models/qwen3"),
];

/// The adapters PEFT saved for the fixture cases: (index in [`BASES`], `adapter_model.safetensors`).
pub const ADAPTERS: &[(usize, &[u8])] = &[
    (0, include_bytes!("../../tests/fixtures/cases/adalora/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/adalora_pruned/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/all_linear_rslora_patterns/adapters/default/adapter_model.safetensors")),
    (1, include_bytes!("../../tests/fixtures/cases/bias_lora_only/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/dora/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/ia3/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/layers_to_transform/adapters/default/adapter_model.safetensors")),
    (2, include_bytes!("../../tests/fixtures/cases/lora_bias_all/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/lora_embedding/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/lora_qv/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/modules_to_save_lm_head/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/multi_adapter/adapters/a/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/multi_adapter/adapters/b/adapter_model.safetensors")),
    (2, include_bytes!("../../tests/fixtures/cases/opt_lora/adapters/default/adapter_model.safetensors")),
    (0, include_bytes!("../../tests/fixtures/cases/regex_targets/adapters/default/adapter_model.safetensors")),
    (1, include_bytes!("../../tests/fixtures/cases/tied_lora/adapters/default/adapter_model.safetensors")),
    (3, include_bytes!("../../tests/fixtures/arch/cases/gemma2_ia3/adapters/ia3/adapter_model.safetensors")),
    (3, include_bytes!("../../tests/fixtures/arch/cases/gemma2_lora/adapters/dora/adapter_model.safetensors")),
    (3, include_bytes!("../../tests/fixtures/arch/cases/gemma2_lora/adapters/lora/adapter_model.safetensors")),
    (4, include_bytes!("../../tests/fixtures/arch/cases/gemma3_ia3/adapters/ia3/adapter_model.safetensors")),
    (4, include_bytes!("../../tests/fixtures/arch/cases/gemma3_lora/adapters/dora/adapter_model.safetensors")),
    (4, include_bytes!("../../tests/fixtures/arch/cases/gemma3_lora/adapters/lora/adapter_model.safetensors")),
    (5, include_bytes!("../../tests/fixtures/arch/cases/llama3_ia3/adapters/ia3/adapter_model.safetensors")),
    (5, include_bytes!("../../tests/fixtures/arch/cases/llama3_lora/adapters/dora/adapter_model.safetensors")),
    (5, include_bytes!("../../tests/fixtures/arch/cases/llama3_lora/adapters/lora/adapter_model.safetensors")),
    (6, include_bytes!("../../tests/fixtures/arch/cases/mistral_ia3/adapters/ia3/adapter_model.safetensors")),
    (6, include_bytes!("../../tests/fixtures/arch/cases/mistral_lora/adapters/dora/adapter_model.safetensors")),
    (6, include_bytes!("../../tests/fixtures/arch/cases/mistral_lora/adapters/lora/adapter_model.safetensors")),
    (7, include_bytes!("../../tests/fixtures/arch/cases/phi3_ia3/adapters/ia3/adapter_model.safetensors")),
    (7, include_bytes!("../../tests/fixtures/arch/cases/phi3_lora/adapters/dora/adapter_model.safetensors")),
    (7, include_bytes!("../../tests/fixtures/arch/cases/phi3_lora/adapters/lora/adapter_model.safetensors")),
    (8, include_bytes!("../../tests/fixtures/arch/cases/qwen2_ia3/adapters/ia3/adapter_model.safetensors")),
    (8, include_bytes!("../../tests/fixtures/arch/cases/qwen2_lora/adapters/dora/adapter_model.safetensors")),
    (8, include_bytes!("../../tests/fixtures/arch/cases/qwen2_lora/adapters/lora/adapter_model.safetensors")),
    (9, include_bytes!("../../tests/fixtures/arch/cases/qwen3_ia3/adapters/ia3/adapter_model.safetensors")),
    (9, include_bytes!("../../tests/fixtures/arch/cases/qwen3_lora/adapters/dora/adapter_model.safetensors")),
    (9, include_bytes!("../../tests/fixtures/arch/cases/qwen3_lora/adapters/lora/adapter_model.safetensors")),
];

impl Base {
    pub fn weight_files(&self) -> Vec<(String, Vec<u8>)> {
        self.files
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect()
    }

    /// The base's weights.
    pub fn weights(&self) -> WeightStore {
        WeightStore::from_safetensors_bytes(self.weight_files(), self.name)
            .expect("fixture weights load")
    }

    /// The base model, running on the calling thread.
    pub fn model(&self) -> Model {
        let mut m = Model::from_safetensors_bytes(
            self.config,
            self.weight_files(),
            self.name,
            &OpenOptions::default(),
        )
        .expect("fixture model loads");
        m.set_threading(Threading::CallingThread);
        m
    }
}

thread_local! {
    static MODELS: RefCell<Vec<Option<Model>>> = RefCell::new((0..BASES.len()).map(|_| None).collect());
    static WEIGHTS: RefCell<Vec<Option<std::rc::Rc<WeightStore>>>> = RefCell::new((0..BASES.len()).map(|_| None).collect());
}

/// Runs `f` on fixture base `i`'s model, loaded once per process (`f` must leave it as it found
/// it: no adapters).
pub fn with_model<R>(i: usize, f: impl FnOnce(&mut Model) -> R) -> R {
    MODELS.with(|m| {
        let mut m = m.borrow_mut();
        let slot = &mut m[i];
        if slot.is_none() {
            *slot = Some(BASES[i].model());
        }
        f(slot.as_mut().expect("just loaded"))
    })
}

/// Fixture base `i`'s weights, loaded once per process.
pub fn weights(i: usize) -> std::rc::Rc<WeightStore> {
    WEIGHTS.with(|w| {
        w.borrow_mut()[i]
            .get_or_insert_with(|| std::rc::Rc::new(BASES[i].weights()))
            .clone()
    })
}

/// A selector byte in front of a JSON document: a control character that JSON cannot start
/// with (not whitespace).
pub fn selector(data: &[u8]) -> Option<(u8, &[u8])> {
    match data.first() {
        Some(&b) if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') => Some((b, &data[1..])),
        _ => None,
    }
}
