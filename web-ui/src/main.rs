//! Trunk's entry point: mounts the web app (see `lib.rs`). Natively there is nothing to run;
//! the crate's plain modules are unit-tested there.

fn main() {
    #[cfg(target_arch = "wasm32")]
    shard_web_ui::app::start();
}
