//! Stable names for every error graft can raise, as JavaScript sees them (`err.kind`).

/// The kind of a model error (adapter, file format, architecture, Hub…).
pub fn model_error_kind(e: &graft_models::Error) -> &'static str {
    use graft_models::Error as E;
    match e {
        E::Core(c) => core_error_kind(c),
        E::Arch(a) => arch_error_kind(a),
        E::Hub(h) => h.kind(),
        E::NoModelConfig { .. } | E::BadModelConfig(_) => "ModelConfig",
        E::TokenOutOfRange { .. } => "TokenOutOfRange",
        E::TooLong { .. } => "TooLong",
        E::BaseModel(_) => "BaseModel",
        E::Gpu(g) => gpu_error_kind(g),
        E::NoGpu(_) => "NoWebGPU",
        E::Candle(_) => "Tensor",
        _ => "ModelError",
    }
}

/// The kind of a model-description error (configuration, weights, GGUF).
pub fn arch_error_kind(e: &graft_arch::Error) -> &'static str {
    use graft_arch::Error as E;
    match e {
        E::Core(c) => core_error_kind(c),
        E::BadConfig(_) => "ModelConfig",
        E::UnsupportedConfig(_) => "UnsupportedConfig",
        E::UnsupportedArchitecture(..) => "UnsupportedArchitecture",
        E::NoWeights { .. } | E::MissingWeight { .. } | E::WeightShape { .. } => "ModelWeights",
        E::Gguf(_) => "Gguf",
        E::Candle(_) => "Tensor",
        _ => "ModelError",
    }
}

/// The kind of an adapter-level error (formats, matching, registry).
pub fn core_error_kind(_e: &graft_adapters::Error) -> &'static str {
    "AdapterError"
}

/// The kind of a GPU error.
pub fn gpu_error_kind(e: &graft_gpu::Error) -> &'static str {
    use graft_gpu::Error as E;
    match e {
        E::NoAdapter(_) => "NoWebGPU",
        E::RequestDevice(_) => "GpuDevice",
        E::LimitExceeded { .. } => "GpuLimit",
        E::OutOfMemory(_) => "GpuOutOfMemory",
        E::DeviceLost(_) => "GpuDeviceLost",
        E::Validation(_) => "GpuValidation",
        E::Readback(_) => "GpuReadback",
        E::Unsupported(_) => "GpuUnsupported",
        E::Input(_) => "InvalidArgument",
        E::Arch(a) => arch_error_kind(a),
        E::Core(c) => core_error_kind(c),
        E::Tensor(_) => "Tensor",
        _ => "GpuError",
    }
}

/// What to change in the JavaScript call for an error of `kind` (the library's message says
/// what went wrong; the options that fix it are the package's to name).
pub fn js_hint(kind: &str, message: &str) -> Option<&'static str> {
    Some(match kind {
        "NoWebGPU" => "load with { device: \"cpu\" }, or open the page in a browser with WebGPU",
        "GpuUnsupported" | "GpuLimit" | "GpuOutOfMemory" => "load with { device: \"cpu\" }",
        "RepoNotFound" | "GatedRepo" | "InvalidToken" => "pass { token: \"hf_…\" } in the options",
        "BaseModel" if message.contains("base_model_name_or_path") => {
            "pass the base with the `base_model` option"
        }
        "AdapterError" if message.contains("does not fit this base model") => {
            "check that the adapter was trained on this base"
        }
        "RepoFiles" if message.contains("several GGUF files") => {
            "choose one with the `gguf_file` option, or a `dtype` that names it"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_keep_their_kind_through_the_model_layer() {
        let e = graft_models::Error::Hub(graft_hub::Error::InvalidRepoId("x/y/z".into()));
        assert_eq!(model_error_kind(&e), "InvalidRepoId");
        let g = graft_models::Error::Gpu(graft_gpu::Error::Unsupported("x".into()));
        assert_eq!(model_error_kind(&g), "GpuUnsupported");
        assert_eq!(
            gpu_error_kind(&graft_gpu::Error::NoAdapter("none".into())),
            "NoWebGPU"
        );
    }
}
