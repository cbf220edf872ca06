//! The description of a network: what every backend runs.
//!
//! An architecture file turns a configuration and its weights into a [`Network`]: the
//! embeddings, the decoder blocks as data (norms, attention with its options, the MLP kind, where
//! the norms sit around the residual), the final norm and the output head. Module ids index the
//! [`crate::table::ModuleTable`], which holds each module's Hugging Face path (so PEFT adapters
//! attach by name) and its base parameters. The CPU forward pass, the GPU lowering and the
//! training forward pass read only this, so an architecture is written once.

use crate::rope::Rope;

/// Normalisation: RMSNorm (`x / rms(x) · w`) or LayerNorm (`(x − mean) / std · w + b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    Layer,
}

/// A norm module: its id in the module table (weight, and bias for LayerNorm), its epsilon
/// and kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norm {
    pub id: usize,
    pub eps: f64,
    pub kind: NormKind,
    /// Gemma's RMSNorm multiplies by `1 + w` (its weights are stored as offsets from one).
    pub unit_offset: bool,
}

/// Element-wise activations of the MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)`.
    Silu,
    Relu,
    /// The exact GELU, `x · Φ(x)` (transformers' `"gelu"`).
    GeluErf,
    /// GELU's tanh approximation (transformers' `"gelu_pytorch_tanh"`, Gemma's GeGLU).
    GeluTanh,
}

/// The feed-forward part of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    /// `down(act(gate(x)) · up(x))` (Llama family).
    Gated {
        gate: usize,
        up: usize,
        down: usize,
        act: Activation,
    },
    /// `down(act(g) · u)` where one module computes `[g | u]`, each `ffn` wide (Phi-3's
    /// `gate_up_proj`; PEFT adapts the fused module as one Linear).
    GatedFused {
        gate_up: usize,
        down: usize,
        ffn: usize,
        act: Activation,
    },
    /// `fc2(act(fc1(x)))` (OPT).
    Plain {
        fc1: usize,
        fc2: usize,
        act: Activation,
    },
}

/// Where a block's norms sit around its two residual branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `x + f(norm(x))` (Llama, OPT with `do_layer_norm_before`).
    PreNorm,
    /// `norm(x + f(x))` (OPT-350m).
    PostNorm,
}

/// The modules that compute queries, keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qkv {
    Separate {
        q: usize,
        k: usize,
        v: usize,
    },
    /// One module whose output is `[q | k | v]` (Phi-3's `qkv_proj`; PEFT adapts it as one
    /// Linear).
    Fused(usize),
}

impl Qkv {
    /// The Linear modules, in output order.
    pub fn modules(&self) -> Vec<usize> {
        match *self {
            Qkv::Separate { q, k, v } => vec![q, k, v],
            Qkv::Fused(m) => vec![m],
        }
    }
}

/// Causal self-attention with grouped-query heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attention {
    pub qkv: Qkv,
    /// The output projection.
    pub o: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Index into [`Network::ropes`] (rotate-half RoPE on q and k), or none.
    pub rope: Option<usize>,
    /// Multiplies q·kᵀ (head_dim^-0.5 unless the architecture says otherwise).
    pub scale: f32,
    /// A query attends to at most this many positions, itself included (sliding window).
    pub window: Option<usize>,
    /// RMSNorms over each head of q and of k, before RoPE (Qwen3, Gemma 3).
    pub qk_norm: Option<(Norm, Norm)>,
    /// Scores become `cap · tanh(s / cap)` before the softmax (Gemma 2).
    pub softcap: Option<f32>,
}

/// One decoder block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    /// A norm on the attention branch's output before the residual add (Gemma 2/3;
    /// pre-norm blocks only).
    pub attn_out_norm: Option<Norm>,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
    /// A norm on the MLP branch's output before the residual add (Gemma 2/3).
    pub mlp_out_norm: Option<Norm>,
    pub residual: Residual,
}

/// Learned absolute positions added to the token embeddings (OPT: rows `position + offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    pub module: usize,
    pub offset: usize,
}

/// The output head: its module (a Linear without bias), tied to the embedding or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub module: usize,
    /// The embedding module whose weight the head reads (`tie_word_embeddings`).
    pub tied_to: Option<usize>,
}

/// RoPE of some layers, with its inverse frequencies computed once for every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    pub rope: Rope,
    pub head_dim: usize,
    /// `head_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 otherwise).
    pub attention_scaling: f32,
    /// LongRoPE: a forward pass whose last position is at or past `after` uses these
    /// frequencies for all of its tokens (transformers picks the set per call by its longest
    /// position; keys already cached keep theirs).
    pub long: Option<LongFreq>,
}

/// The second frequency set of LongRoPE.
#[derive(Debug, Clone, PartialEq)]
pub struct LongFreq {
    pub after: usize,
    pub inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(rope: Rope, head_dim: usize) -> Self {
        let inv_freq = rope.inv_freq(head_dim);
        let attention_scaling = rope.attention_scaling() as f32;
        let long = rope
            .long_inv_freq(head_dim)
            .map(|(after, inv_freq)| LongFreq { after, inv_freq });
        RopeTable {
            rope,
            head_dim,
            inv_freq,
            attention_scaling,
            long,
        }
    }

    /// The frequencies of a forward pass over positions `..end`.
    pub fn inv_freq_for(&self, end: usize) -> &[f32] {
        match &self.long {
            Some(l) if end > l.after => &l.inv_freq,
            _ => &self.inv_freq,
        }
    }
}

/// A whole decoder-only causal language model.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub model_type: String,
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Longest sequence the model takes.
    pub max_positions: usize,
    /// Token embedding (an Embedding module; width `embed_dim`).
    pub embed: usize,
    pub embed_dim: usize,
    /// `embed_dim` → `hidden_size` after the embeddings (OPT-350m's `project_in`).
    pub project_in: Option<usize>,
    pub positions: Option<Positions>,
    pub blocks: Vec<Block>,
    pub final_norm: Option<Norm>,
    /// `hidden_size` → `embed_dim` before the head (OPT-350m's `project_out`).
    pub project_out: Option<usize>,
    pub head: Head,
    /// Multiplies the token embeddings (Gemma: √hidden_size, rounded to f32).
    pub embed_scale: Option<f32>,
    /// Logits become `cap · tanh(logits / cap)` (Gemma 2's final soft-capping).
    pub logit_softcap: Option<f32>,
    pub ropes: Vec<RopeTable>,
    /// The dropouts of training mode, by configuration key (`attention_dropout`, OPT's
    /// `dropout`, `layerdrop`…), with their probabilities. A forward pass in evaluation mode
    /// has none; a trainer refuses what it does not implement rather than train another model.
    pub dropout: Vec<(&'static str, f64)>,
}

impl Network {
    /// Bytes of f32 keys and values per cached position, over every layer.
    pub fn kv_bytes_per_position(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| (2 * b.attn.kv_heads * b.attn.head_dim * 4) as u64)
            .sum()
    }
}
