//! Speculative decoding: a cheap draft proposes tokens, the target checks them all in one
//! forward pass and keeps what it would have produced anyway.
//!
//! * [`draft`]: the [`draft::DraftSource`] trait that every draft provider implements: the
//!   in-process draft model ([`local`]) and the libp2p Scouts (`p2p::scheduler`).
//! * [`accept`]: the acceptance rules, lossless for greedy and sampled requests.
//! * [`local`]: the in-process draft source (`shard-oracle --draft-model`).
//! * [`adaptive`]: the draft length, adapted to the acceptance observed.
//! * [`metrics`]: counters for `/metrics` and the response's usage.
//!
//! The decoding loop in `engine::generate` never waits for a draft: it asks its source for a
//! draft of the current prefix and, when none is ready, decodes one token itself.

pub mod accept;
pub mod adaptive;
pub mod draft;
pub mod local;
pub mod metrics;
