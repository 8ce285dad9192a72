//! The Shard web app: one Leptos page where people chat as Leeches, turn on Scout mode, and
//! watch the network. Trunk builds it from `www/index.html`; the Oracle serves it at `/`.
//!
//! * [`sse`], [`history`], [`oracle_api`], [`format`]: plain logic, unit-tested natively.
//! * `app`: the frame, tabs and the shared swarm poll.
//! * `chat`: the Leech view (streamed answers, history, queue position).
//! * `scout`: Scout mode (WebGPU or CPU, model download and cache, the libp2p client).
//! * `network`: peers and load.
//! * `http`, `model_store`: fetch, streams, the Cache API.
//! * `identity`: this browser's Scout key in IndexedDB, and the proofs signed with it.

pub mod format;
pub mod history;
pub mod oracle_api;
pub mod sse;

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
mod chat;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod identity;
#[cfg(target_arch = "wasm32")]
mod model_store;
#[cfg(target_arch = "wasm32")]
mod network;
#[cfg(target_arch = "wasm32")]
mod scout;

#[cfg(target_arch = "wasm32")]
unsafe extern "C" {
    /// The module's static constructors (cubecl registers its IR dialects through `inventory`).
    /// wasm-ld synthesizes it; when nothing calls it, wasm-ld wraps *every* export so that it
    /// runs first on each call from JS, which made every WebGPU kernel launch re-run hundreds
    /// of registrations. Calling it once here turns that off (see the `inventory` crate's docs).
    fn __wasm_call_ctors();
}

/// Runs the static constructors once, then mounts the app, when the module loads.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn main() {
    // SAFETY: called once, first thing, before any code that reads what the constructors register.
    unsafe { __wasm_call_ctors() };
    app::start();
}
