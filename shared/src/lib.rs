//! Shard's wasm-safe core, shared by the native Oracle and the browser Scout.
//!
//! Nothing here touches threads, files or sockets, so it builds for `wasm32-unknown-unknown`.

pub mod chat;
pub mod dequant;
pub mod gguf;
pub mod hparams;
#[cfg(all(feature = "p2p", not(target_arch = "wasm32")))]
pub mod key_file;
pub mod sampling;
pub mod tokenizer;
pub mod trust;
pub mod wire;
#[cfg(feature = "p2p")]
pub mod wire_codec;
