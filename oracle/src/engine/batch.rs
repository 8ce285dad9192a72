//! One forward pass over tokens of many sequences (llama.cpp's `llama_batch`).
//!
//! Each [`Segment`] is one sequence's new tokens, its KV cache and which of its rows need
//! logits. The model multiplies every weight matrix once for the tokens of all segments
//! together, while positions, RoPE and attention stay per segment. Every per-token step
//! (quantization, the ternary and dense products, norms) gives the same bits whatever else is
//! in the pass, so a sequence's output does not depend on its neighbours.

use super::kv_cache::KvCache;
use super::model::{Logits, RowUse};

/// One sequence's share of a batched pass.
pub struct Segment<'a> {
    /// New tokens, run at positions `cache.len()..`.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub want: Logits,
    /// What the rows feed: an argmax only lets a screened output layer skip most of them.
    pub rows: RowUse,
}

impl Segment<'_> {
    /// Rows of logits this segment gets back.
    pub fn logit_rows(&self) -> usize {
        match self.want {
            Logits::Last => 1,
            Logits::All => self.tokens.len(),
        }
    }
}

/// Where each row of the pass comes from: its segment and its index within the segment.
pub(crate) struct RowMap {
    pub rows: Vec<(usize, usize)>,
    /// First row of each segment.
    pub offsets: Vec<usize>,
}

impl RowMap {
    pub fn new(segments: &[Segment<'_>]) -> Self {
        let mut rows = Vec::new();
        let mut offsets = Vec::with_capacity(segments.len());
        for (s, seg) in segments.iter().enumerate() {
            offsets.push(rows.len());
            rows.extend((0..seg.tokens.len()).map(|t| (s, t)));
        }
        Self { rows, offsets }
    }

    /// Rows whose logits are wanted, in segment order.
    pub fn wanted(&self, segments: &[Segment<'_>]) -> Vec<usize> {
        segments
            .iter()
            .zip(&self.offsets)
            .flat_map(|(seg, &off)| match seg.want {
                Logits::Last => off + seg.tokens.len() - 1..off + seg.tokens.len(),
                Logits::All => off..off + seg.tokens.len(),
            })
            .collect()
    }
}
