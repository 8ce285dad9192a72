//! Model hyperparameters, read from GGUF metadata.
//!
//! Two BitNet b1.58 dialects exist: llama.cpp's arch `bitnet` (SiLU-gated FFN) and
//! microsoft/BitNet's `bitnet-b1.58` (squared-ReLU FFN, optional separate `output` tensor).
//! Their graphs are otherwise the same, so one config covers both; `{arch}.hidden_act`
//! overrides the default activation when a file states it. Plain `llama` files (float
//! weights, no sub-norms, interleaved RoPE) use the same graph minus the BitNet parts, which
//! lets the Oracle run the default draft model as well.

use shard_shared::gguf::Gguf;

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// silu(gate) * up
    Silu,
    /// relu(gate)^2 * up
    ReluSquared,
}

/// How RoPE pairs a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension i with i + n_rot/2 (GPT-NeoX; llama.cpp's BitNet archs).
    Neox,
    /// Dimensions 2i and 2i+1 (llama.cpp's `llama` arch).
    Interleaved,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BitNetConfig {
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Rotated dimensions per head (NeoX-style RoPE).
    pub n_rot: usize,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
    pub n_ctx_train: usize,
    pub activation: Activation,
    pub rope_style: RopeStyle,
    /// BitNet's extra RMSNorms before `attn_output` and `ffn_down`.
    pub sub_norms: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("architecture {0:?} is not supported (bitnet, bitnet-b1.58 and llama are)")]
    UnsupportedArch(String),
    #[error("GGUF metadata lacks {0}")]
    Missing(String),
    #[error("inconsistent hyperparameters: {0}")]
    Invalid(String),
}

/// Architectures this engine runs.
pub const SUPPORTED_ARCHS: &[&str] = &["bitnet", "bitnet-b1.58", "bitnet-25", "llama"];

impl BitNetConfig {
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Self, ConfigError> {
        let arch = g.architecture().ok_or_else(|| ConfigError::Missing("general.architecture".into()))?.to_string();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            return Err(ConfigError::UnsupportedArch(arch));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let req = |k: &str| -> Result<usize, ConfigError> {
            g.get_u64(&key(k)).map(|v| v as usize).ok_or_else(|| ConfigError::Missing(key(k)))
        };
        let n_embd = req("embedding_length")?;
        let n_layer = req("block_count")?;
        let n_ff = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = g.get_u64(&key("attention.head_count_kv")).map_or(n_head, |v| v as usize);
        let n_vocab = match g.get_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| ConfigError::Missing(key("vocab_size")))?,
        };
        if n_head == 0 || n_head_kv == 0 || n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(ConfigError::Invalid(format!("{n_embd} embedding dims, {n_head} heads, {n_head_kv} KV heads")));
        }
        if n_layer == 0 || n_layer > 1024 || n_embd > 1 << 16 || n_ff > 1 << 18 || n_vocab == 0 || n_vocab > 1 << 22 {
            return Err(ConfigError::Invalid(format!("{n_layer} layers, {n_embd} dims, {n_ff} ff, {n_vocab} vocab")));
        }
        let head_dim = n_embd / n_head;
        let n_rot = g.get_u64(&key("rope.dimension_count")).map_or(head_dim, |v| v as usize);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(ConfigError::Invalid(format!("rope dimension {n_rot} for head size {head_dim}")));
        }
        let activation = match g.get_str(&key("hidden_act")) {
            Some("silu") | Some("swish") => Activation::Silu,
            Some("relu2") | Some("relu_squared") | Some("relu²") | Some("relu_sqr") => Activation::ReluSquared,
            Some(other) => return Err(ConfigError::Invalid(format!("unknown hidden_act {other:?}"))),
            None if arch == "bitnet" || arch == "llama" => Activation::Silu,
            None => Activation::ReluSquared,
        };
        Ok(Self {
            n_vocab,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rope_freq_base: g.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            n_ctx_train: g.get_u64(&key("context_length")).map_or(2048, |v| v as usize),
            activation,
            rope_style: if arch == "llama" { RopeStyle::Interleaved } else { RopeStyle::Neox },
            sub_norms: arch != "llama",
            arch,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
