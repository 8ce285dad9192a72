//! Model hyperparameters, read from GGUF metadata.
//!
//! Two BitNet b1.58 dialects exist: llama.cpp's arch `bitnet` (SiLU-gated FFN, output tied to
//! the token embedding) and microsoft/BitNet's `bitnet-b1.58` (squared-ReLU FFN, optional
//! separate `output` tensor). Their graphs are otherwise the same, so one config covers both.
//! The activation comes from the architecture, as in both llama.cpp forks: neither reads
//! `{arch}.hidden_act`, so neither does this (see [`shard_shared::hparams`] for every key).
//! `--ffn-activation` overrides it explicitly. Plain `llama` files (float weights, no
//! sub-norms, interleaved RoPE) use the same graph minus the BitNet parts, which lets the
//! Oracle run the default draft model as well.

use shard_shared::gguf::Gguf;
use shard_shared::hparams::{Hparams, HparamsError};

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Activation {
    /// silu(gate) * up
    Silu,
    /// relu(gate)^2 * up
    #[value(name = "relu2")]
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

/// The file's hyperparameters ([`Hparams`], which it derefs to) plus what the architecture
/// implies for the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct BitNetConfig {
    pub hparams: Hparams,
    pub activation: Activation,
    pub rope_style: RopeStyle,
    /// BitNet's extra RMSNorms before `attn_output` and `ffn_down`.
    pub sub_norms: bool,
    /// Whether the file may carry a separate `output.weight`. llama.cpp's `bitnet` graph
    /// always multiplies by `token_embd`, and its loader refuses a file with an extra tensor.
    pub separate_output: bool,
}

impl std::ops::Deref for BitNetConfig {
    type Target = Hparams;
    fn deref(&self) -> &Hparams {
        &self.hparams
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("architecture {0:?} is not supported (bitnet, bitnet-b1.58, bitnet-25 and llama are)")]
    UnsupportedArch(String),
    #[error("GGUF metadata lacks {0}")]
    Missing(String),
    #[error(transparent)]
    Hparams(#[from] HparamsError),
}

/// Architectures this engine runs.
pub const SUPPORTED_ARCHS: &[&str] = &["bitnet", "bitnet-b1.58", "bitnet-25", "llama"];

impl BitNetConfig {
    /// The file's configuration; `activation` overrides the architecture's FFN activation.
    pub fn from_gguf(g: &Gguf<'_>, activation: Option<Activation>) -> Result<Self, ConfigError> {
        let arch = g.architecture().ok_or_else(|| ConfigError::Missing("general.architecture".into()))?.to_string();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            return Err(ConfigError::UnsupportedArch(arch));
        }
        let h = Hparams::from_gguf(g, &arch)?;
        let arch_activation = match arch.as_str() {
            "bitnet" | "llama" => Activation::Silu,
            _ => Activation::ReluSquared,
        };
        Ok(Self {
            activation: activation.unwrap_or(arch_activation),
            rope_style: if arch == "llama" { RopeStyle::Interleaved } else { RopeStyle::Neox },
            sub_norms: arch != "llama",
            separate_output: arch != "bitnet",
            hparams: h,
        })
    }
}
