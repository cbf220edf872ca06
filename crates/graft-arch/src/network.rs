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
}

/// Element-wise activations of the MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)`.
    Silu,
    Relu,
    /// The exact GELU, `x · Φ(x)` (transformers' `"gelu"`).
    GeluErf,
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

/// Causal self-attention with grouped-query heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attention {
    /// Linear modules: queries, keys, values, output.
    pub q: usize,
    pub k: usize,
    pub v: usize,
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
}

/// One decoder block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
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
}

impl RopeTable {
    pub fn new(rope: Rope, head_dim: usize) -> Self {
        let inv_freq = rope.inv_freq(head_dim);
        RopeTable {
            rope,
            head_dim,
            inv_freq,
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
