//! The Llama family — Llama 2/3, SmolLM2, TinyLlama (`model_type: llama`) and Mistral
//! (`model_type: mistral`) — as transformers' `LlamaForCausalLM` / `MistralForCausalLM`
//! compute it.

use serde_json::{json, Value};

use super::decoder::{self, Decoder};
use super::gguf_names::{self, Meta};
use super::{Architecture, GgufSupport};
use crate::config::{
    no_effect, null, null_or_one, only, read, ConfigReader, Key, Source, Understood,
};
use crate::error::{Error, Result};
use crate::gguf_weights::GgufFile;
use crate::network::{Activation, Network};
use crate::rope::{Rope, RopeOptions};
use crate::table::ModuleTable;
use crate::weights::WeightStore;

/// `LlamaConfig`'s keys (transformers 4.57 and 5.25).
pub const LLAMA_KEYS: &[Key] = &[
    read("vocab_size"),
    read("hidden_size"),
    read("intermediate_size"),
    read("num_hidden_layers"),
    read("num_attention_heads"),
    read("num_key_value_heads"),
    read("head_dim"),
    read("hidden_act"),
    read("max_position_embeddings"),
    read("rms_norm_eps"),
    read("tie_word_embeddings"),
    read("rope_theta"),
    read("rope_scaling"),
    read("rope_parameters"),
    read("partial_rotary_factor"),
    read("original_max_position_embeddings"),
    read("attention_bias"),
    read("mlp_bias"),
    read("attention_dropout"),
    read("layer_types"),
    only(
        "sliding_window",
        null,
        "null",
        "transformers' Llama attends to every position in a forward pass but sizes its generation cache by `sliding_window`, so the two disagree; a model trained with a sliding window is a `mistral`",
    ),
    only(
        "use_sliding_window",
        crate::config::null_or_false,
        "false",
        "transformers' Llama has no sliding-window attention",
    ),
    only(
        "pretraining_tp",
        null_or_one,
        "1",
        "tensor-parallel slicing of the projections is not implemented (transformers ignores it since 4.40)",
    ),
    no_effect("initializer_range"),
];

/// `MistralConfig`'s keys (transformers 4.57 and 5.25): Llama's without biases, with a
/// sliding window on every layer (default 4096).
pub const MISTRAL_KEYS: &[Key] = &[
    read("vocab_size"),
    read("hidden_size"),
    read("intermediate_size"),
    read("num_hidden_layers"),
    read("num_attention_heads"),
    read("num_key_value_heads"),
    read("head_dim"),
    read("hidden_act"),
    read("max_position_embeddings"),
    read("rms_norm_eps"),
    read("tie_word_embeddings"),
    read("rope_theta"),
    read("rope_scaling"),
    read("rope_parameters"),
    read("partial_rotary_factor"),
    read("original_max_position_embeddings"),
    read("sliding_window"),
    read("attention_dropout"),
    read("layer_types"),
    no_effect("initializer_range"),
];

/// A Llama-family configuration as graft understood it.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: Rope,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// Every layer attends to at most this many positions (Mistral).
    pub sliding_window: Option<usize>,
    /// Dropout on the attention probabilities in training (transformers' training mode).
    pub attention_dropout: f64,
}

/// Reads a `llama` or `mistral` configuration, fail-closed.
pub fn read_config(cfg: &Value, source_name: &str) -> Result<(LlamaConfig, Understood)> {
    let mistral = cfg.get("model_type").and_then(Value::as_str) == Some("mistral");
    let (class, keys) = if mistral {
        ("MistralConfig", MISTRAL_KEYS)
    } else {
        ("LlamaConfig", LLAMA_KEYS)
    };
    let mut r = ConfigReader::new(cfg, source_name, class, keys)?;
    r.str_or("model_type", "llama")?;
    r.dtype()?;
    let vocab_size = r.usize("vocab_size")?;
    let hidden_size = r.usize("hidden_size")?;
    let intermediate_size = r.usize("intermediate_size")?;
    let num_hidden_layers = r.usize("num_hidden_layers")?;
    let num_attention_heads = r.usize("num_attention_heads")?;
    // LlamaConfig defaults the KV heads to the query heads; MistralConfig to 8.
    let num_key_value_heads = if mistral {
        r.usize_or("num_key_value_heads", 8)?
    } else {
        match r.opt_usize("num_key_value_heads")? {
            Some(n) => n,
            None => {
                r.record(
                    "num_key_value_heads",
                    num_attention_heads,
                    Source::Derived("= num_attention_heads".into()),
                );
                num_attention_heads
            }
        }
    };
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(r.bad(
            "num_key_value_heads",
            format!(
                "= {num_key_value_heads} must divide num_attention_heads = {num_attention_heads}"
            ),
        ));
    }
    let head_dim = match r.opt_usize("head_dim")? {
        Some(d) => d,
        None => {
            let d = hidden_size / num_attention_heads;
            r.record(
                "head_dim",
                d,
                Source::Derived("= hidden_size / num_attention_heads".into()),
            );
            d
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(r.bad(
            "head_dim",
            format!("= {head_dim} must be even and positive for RoPE"),
        ));
    }
    let act = r.str_or("hidden_act", "silu")?;
    if act != "silu" && act != "swish" {
        return Err(r.unsupported(
            "hidden_act",
            &Value::String(act),
            "graft implements the SiLU-gated MLP (\"silu\") of the Llama family",
        ));
    }
    let max_position_embeddings = r.usize_or(
        "max_position_embeddings",
        if mistral { 4096 * 32 } else { 2048 },
    )?;
    let rms_norm_eps = r.f64_or("rms_norm_eps", 1e-6)?;
    if rms_norm_eps < 0.0 {
        return Err(r.bad(
            "rms_norm_eps",
            format!("= {rms_norm_eps} must not be negative"),
        ));
    }
    let tie_word_embeddings = r.bool_or("tie_word_embeddings", false)?;
    let (attention_bias, mlp_bias) = if mistral {
        (false, false)
    } else {
        (
            r.bool_or("attention_bias", false)?,
            r.bool_or("mlp_bias", false)?,
        )
    };
    let sliding_window = if mistral {
        // MistralConfig's default is 4096; an explicit null turns the window off.
        match cfg.get("sliding_window") {
            None => {
                r.raw("sliding_window")?;
                r.record("sliding_window", 4096, Source::Default);
                Some(4096)
            }
            Some(_) => {
                let w = r.opt_usize("sliding_window")?;
                if w.is_none() {
                    r.record(
                        "sliding_window",
                        "none",
                        Source::File("sliding_window".into()),
                    );
                }
                w
            }
        }
    } else {
        None
    };
    let attention_dropout = r.f64_or("attention_dropout", 0.0)?;
    if !(0.0..1.0).contains(&attention_dropout) {
        return Err(r.bad(
            "attention_dropout",
            format!("= {attention_dropout} must be in [0, 1)"),
        ));
    }
    check_layer_types(&mut r, num_hidden_layers, sliding_window.is_some())?;
    let rope = decoder::read_single_rope(
        &mut r,
        cfg,
        class,
        &RopeOptions {
            default_theta: 10000.0,
            max_positions: max_position_embeddings,
            default_original_max: None,
        },
        head_dim,
    )?;
    let c = LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope,
        max_position_embeddings,
        tie_word_embeddings,
        attention_bias,
        mlp_bias,
        sliding_window,
        attention_dropout,
    };
    Ok((c, r.finish()))
}

/// `layer_types` must say what transformers' Llama/Mistral do anyway: every layer full
/// attention (Llama, Mistral without a window) or every layer sliding (Mistral with one).
fn check_layer_types(r: &mut ConfigReader, layers: usize, sliding: bool) -> Result<()> {
    let Some(v) = r.raw("layer_types")? else {
        return Ok(());
    };
    let want = if sliding {
        "sliding_attention"
    } else {
        "full_attention"
    };
    let list = v
        .as_array()
        .ok_or_else(|| r.bad("layer_types", "must be a list of strings"))?;
    if list.len() != layers {
        return Err(r.bad(
            "layer_types",
            format!("has {} entries for {layers} layers", list.len()),
        ));
    }
    if let Some(other) = list.iter().find(|t| t.as_str() != Some(want)) {
        return Err(r.unsupported(
            "layer_types",
            v,
            &format!(
                "this architecture's layers are all `{want}` here (transformers ignores `layer_types` for it), so an entry {} would not mean what it says",
                crate::config::show(other)
            ),
        ));
    }
    r.record(
        "layer_types",
        format!("all {want}"),
        Source::File("layer_types".into()),
    );
    Ok(())
}

/// The network of a `llama` or `mistral` model, its modules registered in `t` under their
/// Hugging Face paths.
pub fn describe(
    cfg: &Value,
    source_name: &str,
    w: &WeightStore,
    t: &mut ModuleTable,
) -> Result<(Network, Understood)> {
    let (c, understood) = read_config(cfg, source_name)?;
    let model_type = cfg
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("llama")
        .to_string();
    let d = Decoder {
        model_type,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        rms_norm_eps: c.rms_norm_eps,
        max_positions: c.max_position_embeddings,
        tie_word_embeddings: c.tie_word_embeddings,
        qkv_bias: c.attention_bias,
        o_bias: c.attention_bias,
        mlp_bias: c.mlp_bias,
        fused: false,
        qk_norm: false,
        gemma: false,
        act: Activation::Silu,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
        attn_softcap: None,
        logit_softcap: None,
        layers: vec![(c.sliding_window, 0); c.num_hidden_layers],
        ropes: vec![c.rope],
        dropout: vec![("attention_dropout", c.attention_dropout)],
    };
    Ok((decoder::build(&d, w, t)?, understood))
}

/// The `config.json` equivalent of a Llama-family GGUF (`general.architecture` `llama`; llama.cpp
/// converts Mistral as `llama` too). Keys llama.cpp requires are required here. Llama 3.1+'s
/// `rope_freqs` tensor (llama.cpp's precomputed llama3 divisors, one per frequency) becomes
/// per-frequency factors, which is what llama.cpp computes with.
pub fn gguf_config(file: &GgufFile) -> Result<Value> {
    let m = Meta::new(&file.header)?;
    let mut cfg = m.common("llama")?;
    cfg.insert(
        "rope_theta".into(),
        json!(m.opt_f("rope.freq_base").unwrap_or(10000.0)),
    );
    cfg.insert(
        "attention_bias".into(),
        json!(m.has_tensor_ending("attn_q.bias")),
    );
    if let Some(sw) = m.opt_u("attention.sliding_window").filter(|w| *w > 0) {
        return Err(Error::Gguf(format!(
            "`{}` = {sw}: a sliding window on a `llama` GGUF is not read (convert Mistral models with their own architecture)",
            m.key("attention.sliding_window")
        )));
    }
    let scaling = m.rope_scaling()?;
    if let Some(t) = file
        .header
        .tensors
        .iter()
        .find(|t| t.name == "rope_freqs.weight")
    {
        if scaling.is_some() {
            return Err(Error::Gguf(
                "both `rope_freqs.weight` and a RoPE scaling type; graft reads one".into(),
            ));
        }
        let q = graft_quant::QMatrix::from_raw(
            t.qtype,
            1,
            t.dims.first().copied().unwrap_or(0) as usize,
            file.header.tensor_bytes(&file.bytes, t).to_vec(),
            vec![],
        )
        .map_err(|e| Error::Gguf(format!("tensor `rope_freqs.weight`: {e}")))?;
        let f = q.dequantize();
        let ctx = cfg
            .get("max_position_embeddings")
            .cloned()
            .unwrap_or(json!(1));
        cfg.insert(
            "rope_scaling".into(),
            json!({"rope_type": "longrope", "short_factor": f, "long_factor": f,
                   "original_max_position_embeddings": ctx, "attention_factor": 1.0}),
        );
    } else if let Some(s) = scaling {
        cfg.insert("rope_scaling".into(), s);
    }
    Ok(Value::Object(cfg))
}

/// GGUF tensor name → Hugging Face parameter name (Llama family).
pub fn gguf_tensor_name(gguf: &str) -> Option<String> {
    gguf_names::hf_name(gguf, gguf_names::LLAMA_BLOCK)
}

/// llama.cpp's converter permutes the rows of q_proj and k_proj (weights and biases) from
/// rotate-half RoPE to the interleaved layout, for arch `llama` only: the heads to undo it over.
pub fn gguf_permuted_heads(hf_name: &str, cfg: &Value) -> Option<usize> {
    let heads = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|h| h as usize);
    let param = hf_name.rsplit('.').next()?;
    let module = hf_name.strip_suffix(param)?.trim_end_matches('.');
    if module.ends_with("self_attn.q_proj") {
        heads("num_attention_heads")
    } else if module.ends_with("self_attn.k_proj") {
        heads("num_key_value_heads")
    } else {
        None
    }
}

/// The Llama family in the registry.
pub const ARCHITECTURE: Architecture = Architecture {
    model_types: &["llama", "mistral"],
    describe,
    gguf: Some(GgufSupport {
        architectures: &["llama", "mistral"],
        config: gguf_config,
        tensor_name: gguf_tensor_name,
        permuted_heads: gguf_permuted_heads,
        config_tensors: &["rope_freqs.weight"],
        norm_shift: 0.0,
    }),
};
