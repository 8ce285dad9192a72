//! The interface between the decoding loop and whoever drafts tokens.

use shard_shared::sampling::{Distribution, SamplingParams};

/// What the decoding loop asks for.
#[derive(Debug, Clone, Copy)]
pub struct DraftRequest<'a> {
    /// Identifies the sequence, so a source can keep per-sequence state (a KV cache).
    pub sequence: u64,
    /// Every token so far: prompt and generated.
    pub context: &'a [u32],
    /// How many tokens to propose at most.
    pub k: usize,
    pub sampling: &'a SamplingParams,
    pub seed: u64,
}

/// Proposed tokens to follow the request's context.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub tokens: Vec<u32>,
    /// The distributions the tokens were sampled from. Used only when the source is
    /// [`DraftSource::trusted`]; an untrusted source's claims could bias the output.
    pub q: Option<Vec<Distribution>>,
}

/// A provider of drafts.
pub trait DraftSource: Send + Sync {
    fn name(&self) -> &str;

    /// Whether the source really samples from the `q` it reports (in-process code does;
    /// a remote peer cannot be assumed to).
    fn trusted(&self) -> bool;

    /// A draft continuing exactly `req.context`, if one can be had now. It must not wait on
    /// anything slow: returning `None` makes the target decode one token itself.
    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft>;

    /// How the last draft for `sequence` fared.
    fn feedback(&self, _sequence: u64, _proposed: usize, _accepted: usize) {}

    /// `sequence` is done: per-sequence state can go.
    fn finished(&self, _sequence: u64) {}
}
