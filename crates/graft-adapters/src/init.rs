//! Fresh adapters for `add_adapter`, initialised as PEFT initialises them.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::config::{AdapterConfig, InitLoraWeights, PeftType};
use crate::error::{Error, Result};
use crate::matching::{Matcher, ModuleInventory, ModuleKind};
use crate::tensors::LoadedTensor;

fn uniform(rng: &mut StdRng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-bound..=bound) as f32)
        .collect()
}

fn normal(rng: &mut StdRng, n: usize, std: f64) -> Result<Vec<f32>> {
    let d = Normal::new(0.0, std).map_err(|e| Error::InvalidConfig(e.to_string()))?;
    Ok((0..n).map(|_| d.sample(rng) as f32).collect())
}

fn t(v: Vec<f32>, shape: &[usize]) -> Result<LoadedTensor> {
    Ok(LoadedTensor {
        tensor: Tensor::from_vec(v, shape, &Device::Cpu)?,
        dtype: DType::F32,
    })
}

/// The state dict (keys without `base_model.model.`) of a fresh adapter for `config`:
/// LoRA `init_lora_weights=true`: A ~ Kaiming-uniform(a=√5) = U(±1/√in), B = 0;
/// `"gaussian"`: A ~ N(0, 1/r), B = 0; `false`: A and B both uniform (a debugging adapter);
/// embeddings the other way round (A = 0, B ~ N(0, 1)). IA3: ones. AdaLoRA: A, B ~ N(0, 0.02),
/// E = 0. `modules_to_save` copies start equal to the base (taken from `base_param`).
pub fn fresh_state(
    config: &AdapterConfig,
    inventory: &ModuleInventory,
    base_param: &dyn Fn(usize, &str) -> Result<Option<Tensor>>,
    seed: u64,
) -> Result<BTreeMap<String, LoadedTensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut config = config.clone();
    config.resolve_defaults(&inventory.model_type)?;
    let config = &config;
    let matcher = Matcher::new(config, &inventory.model_type)?;
    let mut out = BTreeMap::new();
    for (i, m) in inventory.modules.iter().enumerate() {
        if crate::matching::is_module_to_save(config, &m.path) {
            for (p, _) in m.param_shapes() {
                if let Some(base) = base_param(i, p)? {
                    out.insert(
                        format!("{}.{p}", m.path),
                        LoadedTensor {
                            tensor: base.copy()?,
                            dtype: DType::F32,
                        },
                    );
                }
            }
            continue;
        }
        if !matcher.is_target(m) {
            continue;
        }
        let path = &m.path;
        match (config.peft_type, &m.kind) {
            (
                PeftType::Lora,
                ModuleKind::Linear {
                    in_features,
                    out_features,
                    ..
                },
            ) => {
                let (r, _, _) = config.lora_scale(path);
                let (a, b) = match config.init_lora_weights {
                    InitLoraWeights::Default => (
                        uniform(
                            &mut rng,
                            r * in_features,
                            1.0 / (*in_features as f64).sqrt(),
                        ),
                        vec![0.0; out_features * r],
                    ),
                    InitLoraWeights::Gaussian => (
                        normal(&mut rng, r * in_features, 1.0 / r as f64)?,
                        vec![0.0; out_features * r],
                    ),
                    InitLoraWeights::Random => (
                        uniform(
                            &mut rng,
                            r * in_features,
                            1.0 / (*in_features as f64).sqrt(),
                        ),
                        uniform(&mut rng, out_features * r, 1.0 / (r as f64).sqrt()),
                    ),
                    InitLoraWeights::Other => {
                        return Err(Error::UnsupportedFeature {
                            field: "init_lora_weights".into(),
                            value: config.fields["init_lora_weights"].to_string(),
                            why: "add_adapter supports true, false and \"gaussian\"".into(),
                        })
                    }
                };
                out.insert(format!("{path}.lora_A.weight"), t(a, &[r, *in_features])?);
                out.insert(format!("{path}.lora_B.weight"), t(b, &[*out_features, r])?);
                if config.lora_bias {
                    out.insert(
                        format!("{path}.lora_B.bias"),
                        t(vec![0.0; *out_features], &[*out_features])?,
                    );
                }
                if config.use_dora {
                    // m starts as ‖W‖ per row, so the fresh adapter is a no-op (B = 0).
                    let w = base_param(i, "weight")?.ok_or_else(|| {
                        Error::InvalidConfig(format!("DoRA needs the base weight of {path}"))
                    })?;
                    let norm = w.sqr()?.sum(1)?.sqrt()?;
                    out.insert(
                        format!("{path}.lora_magnitude_vector"),
                        LoadedTensor {
                            tensor: norm,
                            dtype: DType::F32,
                        },
                    );
                }
            }
            (
                PeftType::Lora,
                ModuleKind::Embedding {
                    num_embeddings,
                    dim,
                },
            ) => {
                let (r, _, _) = config.lora_scale(path);
                let (a, b) = match config.init_lora_weights {
                    InitLoraWeights::Random => (
                        normal(&mut rng, r * num_embeddings, 1.0)?,
                        normal(&mut rng, dim * r, 1.0)?,
                    ),
                    _ => (
                        vec![0.0; r * num_embeddings],
                        normal(&mut rng, dim * r, 1.0)?,
                    ),
                };
                out.insert(
                    format!("{path}.lora_embedding_A"),
                    t(a, &[r, *num_embeddings])?,
                );
                out.insert(format!("{path}.lora_embedding_B"), t(b, &[*dim, r])?);
            }
            (
                PeftType::Ia3,
                ModuleKind::Linear {
                    in_features,
                    out_features,
                    ..
                },
            ) => {
                let ff = config.is_feedforward(path);
                let shape = if ff {
                    vec![1, *in_features]
                } else {
                    vec![*out_features, 1]
                };
                let n = shape[0] * shape[1];
                let v = if config.init_ia3_weights {
                    vec![1.0; n]
                } else {
                    normal(&mut rng, n, 1.0)?
                };
                out.insert(format!("{path}.ia3_l"), t(v, &shape)?);
            }
            (
                PeftType::AdaLora,
                ModuleKind::Linear {
                    in_features,
                    out_features,
                    ..
                },
            ) => {
                let r = config.init_r;
                out.insert(
                    format!("{path}.lora_A"),
                    t(normal(&mut rng, r * in_features, 0.02)?, &[r, *in_features])?,
                );
                out.insert(
                    format!("{path}.lora_B"),
                    t(
                        normal(&mut rng, out_features * r, 0.02)?,
                        &[*out_features, r],
                    )?,
                );
                out.insert(format!("{path}.lora_E"), t(vec![0.0; r], &[r, 1])?);
            }
            _ => {}
        }
    }
    Ok(out)
}
