//! The Scout: a peer that drafts tokens for the Oracle's speculative decoder.
//!
//! For now it only checks, on both targets, that a draft model file the Oracle publishes is a
//! well-formed GGUF. The burn draft model and the libp2p client arrive with their issues.

use shard_shared::gguf::{Gguf, GgufError};

/// What a Scout needs to know about a draft model before it runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftModelInfo {
    pub architecture: String,
    pub n_tensors: usize,
    pub n_vocab: usize,
}

/// Reads the header of a draft model the Scout downloaded.
pub fn inspect_draft_model(bytes: &[u8]) -> Result<DraftModelInfo, GgufError> {
    let g = Gguf::parse(bytes)?;
    let n_vocab = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0);
    Ok(DraftModelInfo { architecture: g.architecture().unwrap_or("unknown").to_string(), n_tensors: g.tensors.len(), n_vocab })
}
