//! Gemma 2 (`model_type: gemma2`) and Gemma 3 text (`gemma3_text`, `Gemma3ForCausalLM`), as
//! transformers computes them: embeddings times √hidden, RMSNorms multiplying by `1 + w`, a
//! norm before and after each branch, GeGLU with tanh GELU, scores scaled by
//! `query_pre_attn_scalar^-½`, sliding-window layers by `layer_types`; Gemma 2 soft-caps the
//! attention scores and the logits, Gemma 3 normalises q and k per head and gives its sliding
//! layers a RoPE of their own.

use serde_json::{json, Value};

use super::decoder::{
    self, read_act, read_dropout, read_eps, read_heads, read_layer_types, Decoder,
};
use super::gguf_names::{self, Meta};
use super::{Architecture, GgufSupport};
use crate::config::{
    finite, no_effect, null_or_false, only, read, show, ConfigReader, Key, Source, Understood,
};
use crate::error::{Error, Result};
use crate::gguf_weights::GgufFile;
use crate::network::{Activation, Network};
use crate::rope::{self, Rope, RopeOptions, RopeParams, RopeScaling};
use crate::table::ModuleTable;
use crate::weights::WeightStore;

/// `Gemma2Config`'s and `Gemma3TextConfig`'s keys (transformers 4.57 and 5.25).
pub const GEMMA_KEYS: &[Key] = &[
    read("vocab_size"),
    read("hidden_size"),
    read("intermediate_size"),
    read("num_hidden_layers"),
    read("num_attention_heads"),
    read("num_key_value_heads"),
    read("head_dim"),
    read("hidden_activation"),
    read("max_position_embeddings"),
    read("rms_norm_eps"),
    read("tie_word_embeddings"),
    read("rope_theta"),
    read("rope_scaling"),
    read("rope_parameters"),
    read("partial_rotary_factor"),
    read("original_max_position_embeddings"),
    read("rope_local_base_freq"),
    read("attention_bias"),
    read("attention_dropout"),
    read("query_pre_attn_scalar"),
    read("sliding_window"),
    read("sliding_window_pattern"),
    read("layer_types"),
    read("final_logit_softcapping"),
    read("attn_logit_softcapping"),
    only(
        "use_bidirectional_attention",
        null_or_false,
        "false",
        "bidirectional attention is for Gemma's embedding models, not causal language models",
    ),
    no_effect("initializer_range"),
    no_effect("cache_implementation"),
    // written by transformers 4.5x next to `layer_types`; never read back
    no_effect("_sliding_window_pattern"),
];

/// A soft-capping value: absent or null is none; otherwise positive.
fn softcap(
    r: &mut ConfigReader,
    cfg: &Value,
    key: &str,
    default: Option<f64>,
) -> Result<Option<f32>> {
    // an explicit null turns it off; an absent key takes the class default
    let present = cfg.get(key).is_some();
    let v = match r.raw(key)? {
        None if present => None,
        None => default,
        Some(v) => Some(finite(v).filter(|c| *c > 0.0).ok_or_else(|| {
            r.bad(
                key,
                format!("= {} must be a positive number or null", show(v)),
            )
        })?),
    };
    let shown = v.map_or("none".to_string(), |c| c.to_string());
    let src = if present {
        Source::File(key.into())
    } else {
        Source::Default
    };
    r.record(key, shown, src);
    Ok(v.map(|c| c as f32))
}

/// The network of a `gemma2` or `gemma3_text` model.
pub fn describe(
    cfg: &Value,
    source_name: &str,
    w: &WeightStore,
    t: &mut ModuleTable,
) -> Result<(Network, Understood)> {
    let gemma3 = cfg.get("model_type").and_then(Value::as_str) == Some("gemma3_text");
    let class = if gemma3 {
        "Gemma3TextConfig"
    } else {
        "Gemma2Config"
    };
    let mut r = ConfigReader::new(cfg, source_name, class, GEMMA_KEYS)?;
    let model_type = r.str_or("model_type", "gemma2")?;
    r.dtype()?;
    let vocab_size = r.usize("vocab_size")?;
    let hidden_size = r.usize("hidden_size")?;
    let intermediate_size = r.usize("intermediate_size")?;
    let layers = r.usize("num_hidden_layers")?;
    let (heads, kv_heads, head_dim) = read_heads(&mut r, hidden_size, Some(4), Some(256))?;
    let act = read_act(
        &mut r,
        "hidden_activation",
        "gelu_pytorch_tanh",
        &[
            ("gelu_pytorch_tanh", Activation::GeluTanh),
            ("gelu_new", Activation::GeluTanh),
            ("gelu", Activation::GeluErf),
        ],
    )?;
    let max_positions = r.usize_or(
        "max_position_embeddings",
        if gemma3 { 131_072 } else { 8192 },
    )?;
    let eps = read_eps(&mut r, 1e-6)?;
    let tie = r.bool_or("tie_word_embeddings", true)?;
    let bias = r.bool_or("attention_bias", false)?;
    let attention_dropout = read_dropout(&mut r, "attention_dropout")?;
    let qpas = r.usize_or("query_pre_attn_scalar", 256)?;
    let window = r.usize_or("sliding_window", 4096)?;
    // Gemma 3 derives the layer types from a pattern when `layer_types` is absent; Gemma 2
    // alternates and has no such key
    let pattern = if gemma3 {
        r.usize_or("sliding_window_pattern", 6)?
    } else {
        if r.raw("sliding_window_pattern")?.is_some() {
            r.note_unused("sliding_window_pattern");
        }
        2
    };
    let sliding = read_layer_types(
        &mut r,
        layers,
        |i| (i + 1) % pattern != 0,
        if gemma3 {
            "every layer but each sliding_window_pattern-th (6) slides"
        } else {
            "even layers slide"
        },
    )?;
    let attn_softcap = softcap(
        &mut r,
        cfg,
        "attn_logit_softcapping",
        (!gemma3).then_some(50.0),
    )?;
    let logit_softcap = softcap(
        &mut r,
        cfg,
        "final_logit_softcapping",
        (!gemma3).then_some(30.0),
    )?;
    let (ropes, rope_of) = if gemma3 {
        gemma3_ropes(&mut r, cfg, max_positions)?
    } else {
        let rope = decoder::read_single_rope(
            &mut r,
            cfg,
            class,
            &RopeOptions {
                default_theta: 10000.0,
                max_positions,
                default_original_max: None,
            },
            head_dim,
        )?;
        (vec![rope], [0, 0])
    };
    for rope in &ropes {
        if rope.factor_len().is_some() {
            return Err(r.unsupported(
                "rope_parameters",
                &cfg.get("rope_parameters")
                    .or(cfg.get("rope_scaling"))
                    .cloned()
                    .unwrap_or_default(),
                "LongRoPE is Phi-3's; Gemma takes default, linear or llama3 RoPE here",
            ));
        }
    }
    let d = Decoder {
        model_type,
        vocab_size,
        hidden_size,
        intermediate_size,
        heads,
        kv_heads,
        head_dim,
        rms_norm_eps: eps,
        max_positions,
        tie_word_embeddings: tie,
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: false,
        fused: false,
        qk_norm: gemma3,
        gemma: true,
        act,
        // transformers multiplies by the Python float query_pre_attn_scalar**-0.5
        scale: (qpas as f64).powf(-0.5) as f32,
        attn_softcap,
        logit_softcap,
        layers: sliding
            .iter()
            .map(|s| {
                if *s {
                    (Some(window), rope_of[1])
                } else {
                    (None, rope_of[0])
                }
            })
            .collect(),
        ropes,
        dropout: vec![("attention_dropout", attention_dropout)],
    };
    let understood = r.finish();
    Ok((decoder::build(&d, w, t)?, understood))
}

/// Gemma 3's two RoPEs — full-attention layers and sliding ones — and which each layer kind
/// uses: transformers 5's `rope_parameters` per layer type, or transformers 4's `rope_theta`
/// and `rope_scaling` (global layers) with `rope_local_base_freq` (sliding layers, unscaled).
fn gemma3_ropes(
    r: &mut ConfigReader,
    cfg: &Value,
    max_positions: usize,
) -> Result<(Vec<Rope>, [usize; 2])> {
    let local = r.raw("rope_local_base_freq")?.cloned();
    let opts = RopeOptions {
        default_theta: 1_000_000.0,
        max_positions,
        default_original_max: None,
    };
    match rope::read(r, &opts)? {
        RopeParams::PerLayerType(types) => {
            let find = |name: &str| types.iter().find(|(n, _)| n == name).cloned();
            let mut out = Vec::new();
            for name in ["full_attention", "sliding_attention"] {
                let key = format!("rope_parameters.{name}");
                let Some((_, Some(rope))) = find(name) else {
                    return Err(r.bad(&key, "is missing; Gemma 3 needs a RoPE for each layer type"));
                };
                // transformers fills a missing base from the class defaults per type, which the
                // generic reader cannot know: ask for it instead
                let nested = cfg
                    .get("rope_parameters")
                    .and_then(|p| p.get(name))
                    .and_then(|o| o.get("rope_theta"));
                if nested.is_none() {
                    return Err(r.bad(&format!("{key}.rope_theta"), "is missing"));
                }
                out.push(rope);
            }
            if let Some(l) = &local {
                if finite(l) != Some(out[1].theta) {
                    return Err(r.unsupported(
                        "rope_local_base_freq",
                        l,
                        &format!(
                            "rope_parameters.sliding_attention.rope_theta = {} disagrees with it",
                            out[1].theta
                        ),
                    ));
                }
            }
            if types.len() != 2 {
                let v = cfg.get("rope_parameters").cloned().unwrap_or_default();
                return Err(r.unsupported(
                    "rope_parameters",
                    &v,
                    "Gemma 3 has full_attention and sliding_attention layers only",
                ));
            }
            Ok((out, [0, 1]))
        }
        RopeParams::Global(global) => {
            if cfg
                .get("rope_parameters")
                .is_some_and(|v| !v.is_null() && cfg.get("rope_scaling").is_none())
            {
                let v = cfg.get("rope_parameters").cloned().unwrap_or_default();
                return Err(r.unsupported(
                    "rope_parameters",
                    &v,
                    "Gemma 3 takes `rope_parameters` per layer type ({\"full_attention\": …, \"sliding_attention\": …})",
                ));
            }
            let theta = match &local {
                None => 10_000.0,
                Some(v) => finite(v).filter(|t| *t > 0.0).ok_or_else(|| {
                    r.bad(
                        "rope_local_base_freq",
                        format!("= {} must be a positive number", show(v)),
                    )
                })?,
            };
            let sliding = Rope {
                theta,
                scaling: RopeScaling::None,
            };
            r.record(
                "rope (sliding_attention)",
                format!("default, theta {theta}"),
                if local.is_some() {
                    Source::File("rope_local_base_freq".into())
                } else {
                    Source::Default
                },
            );
            Ok((vec![global, sliding], [0, 1]))
        }
    }
}

/// The `config.json` equivalent of a `gemma2` / `gemma3` GGUF, as llama.cpp reads it: the
/// sliding layers by its pattern (Gemma 2: every other, from layer 0; Gemma 3: five of six, or
/// `attention.sliding_window_pattern`), the local RoPE base `rope.freq_base_swa` (default
/// 10000), and queries scaled by head_dim^-½ (Gemma 3 27B: (hidden/heads)^-½).
pub fn gguf_config(file: &GgufFile) -> Result<Value> {
    let m = Meta::new(&file.header)?;
    let gemma3 = m.arch == "gemma3";
    let mut cfg = m.common(if gemma3 { "gemma3_text" } else { "gemma2" })?;
    let layers = m.u("block_count")? as usize;
    let (hidden, heads) = (m.u("embedding_length")?, m.u("attention.head_count")?);
    let head_dim = cfg.get("head_dim").and_then(Value::as_u64).unwrap_or(0);
    cfg.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    let qpas = if gemma3 && layers == 62 {
        hidden / heads
    } else {
        head_dim
    };
    cfg.insert("query_pre_attn_scalar".into(), json!(qpas));
    let window = m.opt_u("attention.sliding_window").filter(|w| *w > 0);
    let pattern_key = m.key("attention.sliding_window_pattern");
    let sliding: Vec<bool> = match (window, file.header.get(&pattern_key)) {
        (None, _) => vec![false; layers],
        (Some(_), Some(crate::gguf::Value::Array(a))) => {
            let v: Option<Vec<bool>> = a
                .iter()
                .map(|b| match b {
                    crate::gguf::Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect();
            match v {
                Some(v) if v.len() == layers => v,
                _ => {
                    return Err(Error::Gguf(format!(
                        "`{pattern_key}` must be {layers} booleans"
                    )))
                }
            }
        }
        (Some(_), Some(v)) => {
            let n = v
                .as_u64()
                .ok_or_else(|| Error::Gguf(format!("`{pattern_key}` must be a number")))?
                as usize;
            (0..layers).map(|i| n == 0 || i % n < n - 1).collect()
        }
        (Some(_), None) => {
            let n = if gemma3 { 6 } else { 2 };
            (0..layers).map(|i| i % n < n - 1).collect()
        }
    };
    cfg.insert("sliding_window".into(), json!(window.unwrap_or(4096)));
    let types: Vec<&str> = sliding
        .iter()
        .map(|s| {
            if *s {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    cfg.insert("layer_types".into(), json!(types));
    let soft = |k: &str| -> Value {
        m.opt_f(k)
            .filter(|c| *c > 0.0)
            .map_or(Value::Null, |c| json!(c))
    };
    cfg.insert(
        "attn_logit_softcapping".into(),
        soft("attn_logit_softcapping"),
    );
    cfg.insert(
        "final_logit_softcapping".into(),
        soft("final_logit_softcapping"),
    );
    let theta = m.opt_f("rope.freq_base").unwrap_or(10000.0);
    if gemma3 {
        let mut full = json!({"rope_type": "default", "rope_theta": theta});
        if let Some(s) = m.rope_scaling()? {
            full = s;
            full["rope_theta"] = json!(theta);
        }
        let local = m.opt_f("rope.freq_base_swa").unwrap_or(10000.0);
        cfg.insert(
            "rope_parameters".into(),
            json!({"full_attention": full,
                   "sliding_attention": {"rope_type": "default", "rope_theta": local}}),
        );
    } else {
        cfg.insert("rope_theta".into(), json!(theta));
        if let Some(s) = m.rope_scaling()? {
            cfg.insert("rope_scaling".into(), s);
        }
    }
    Ok(Value::Object(cfg))
}

fn gguf_tensor_name(gguf: &str) -> Option<String> {
    gguf_names::hf_name(gguf, gguf_names::GEMMA_BLOCK)
}

/// Gemma 2 and Gemma 3 text in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &["gemma2", "gemma3_text"],
    describe,
    gguf: Some(GgufSupport {
        architectures: &["gemma2", "gemma3"],
        config: gguf_config,
        tensor_name: gguf_tensor_name,
        permuted_heads: |_, _| None,
        config_tensors: &[],
        // llama.cpp's converter stores Gemma's norms as 1 + w
        norm_shift: 1.0,
    }),
};
