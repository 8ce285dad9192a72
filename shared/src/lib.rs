//! Shard's wasm-safe core, shared by the native Oracle and the browser Scout.
//!
//! Nothing here touches threads, files or sockets, so it builds for `wasm32-unknown-unknown`.

pub mod chat;
pub mod dequant;
pub mod gguf;
pub mod hparams;
pub mod sampling;
pub mod tokenizer;
pub mod wire;
#[cfg(feature = "p2p")]
pub mod wire_codec;
