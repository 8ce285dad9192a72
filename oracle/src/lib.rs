//! The Shard Oracle: it holds the big ternary model, runs it on the CPU with Shard's own
//! kernels, and serves it over an OpenAI-compatible HTTP API.
//!
//! * [`engine`]: the BitNet b1.58 model, its kernels, KV cache and decoding loop.
//! * [`spec`]: speculative decoding: draft sources, lossless acceptance, metrics.
//! * [`queue`]: the bounded request queue in front of the engine.
//! * [`api`]: the axum routes.

pub mod api;
pub mod engine;
pub mod p2p;
pub mod queue;
pub mod spec;
pub mod trust;

/// Reported as `system_fingerprint` in API responses.
pub const FINGERPRINT: &str = concat!("shard-", env!("CARGO_PKG_VERSION"));
