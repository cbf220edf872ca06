//! Stable names for every error graft can raise, as JavaScript sees them (`err.kind`).

/// The kind of a model error (adapter, file format, architecture, Hub…).
pub fn model_error_kind(e: &graft_models::Error) -> &'static str {
    use graft_models::Error as E;
    match e {
        E::Core(c) => core_error_kind(c),
        E::Arch(a) => arch_error_kind(a),
        E::Hub(h) => h.kind(),
        E::NoModelConfig { .. } | E::BadModelConfig(_) => "ModelConfig",
        E::NoWeights { .. } | E::MissingWeight { .. } | E::WeightShape { .. } => "ModelWeights",
        E::UnsupportedArchitecture(_) => "UnsupportedArchitecture",
        E::TokenOutOfRange { .. } => "TokenOutOfRange",
        E::TooLong { .. } => "TooLong",
        E::BaseModel(_) => "BaseModel",
        E::Gguf(_) => "Gguf",
        E::Candle(_) => "Tensor",
        _ => "ModelError",
    }
}

/// The kind of a model-description error (configuration, weights, GGUF).
pub fn arch_error_kind(e: &graft_arch::Error) -> &'static str {
    use graft_arch::Error as E;
    match e {
        E::Core(c) => core_error_kind(c),
        E::BadConfig { .. } | E::NoModelConfig { .. } => "ModelConfig",
        E::UnsupportedConfig { .. } => "UnsupportedConfig",
        E::UnsupportedArchitecture(..) => "UnsupportedArchitecture",
        E::NoWeights { .. } | E::MissingWeight { .. } | E::WeightShape { .. } => "ModelWeights",
        E::Gguf(_) => "Gguf",
        E::Candle(_) => "Tensor",
        _ => "ModelError",
    }
}

/// The kind of an adapter-level error (formats, matching, registry).
pub fn core_error_kind(_e: &graft_core::Error) -> &'static str {
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
        E::Model(m) => model_error_kind(m),
        E::Core(c) => core_error_kind(c),
        E::Tensor(_) => "Tensor",
        _ => "GpuError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_keep_their_kind_through_the_model_layer() {
        let e = graft_models::Error::Hub(graft_hub::Error::InvalidRepoId("x/y/z".into()));
        assert_eq!(model_error_kind(&e), "InvalidRepoId");
        let g = graft_gpu::Error::Model(graft_models::Error::TooLong { len: 9, max: 8 });
        assert_eq!(gpu_error_kind(&g), "TooLong");
        assert_eq!(
            gpu_error_kind(&graft_gpu::Error::NoAdapter("none".into())),
            "NoWebGPU"
        );
    }
}
