//! The web app in a real headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/`), against a real Oracle that serves trunk's build of the app.
//!
//! Each test starts an Oracle and runs one scenario of `tests/browser/e2e.mjs`; the checks are
//! in that script (see its header), and its measurements are printed here. Screenshots go to
//! `$SHARD_SCREENSHOTS` (default: `<data dir>/screenshots`).
//!
//! A draft helps only a target that is slower per token than the drafter. The tiny default
//! target decodes a token in under a millisecond, faster than any browser drafts, so the Scout
//! tests hold each target step to a minimum time (`--min-step-ms`): 80 ms, what
//! bitnet-b1.58-2B-4T takes here (docs/performance.md), for the CPU Scout (about 100 tok/s in
//! wasm); 1000 ms for WebGPU, because headless Chromium's WebGPU here is SwiftShader, a CPU
//! emulation of a GPU on which the draft takes about 300 ms a token under load. The leech and queue tests use the scalar kernel on one
//! thread (about 9 ms a token) so that an answer takes long enough to be seen streaming and
//! waiting.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use shard_tests::{data_dir, default_pair, repo_root, Oracle};

/// One Chromium at a time: each is several processes, and the machine has two cores.
static BROWSER: Mutex<()> = Mutex::new(());

fn web_dir() -> PathBuf {
    let dir = std::env::var_os("SHARD_WEB_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("dist"));
    assert!(
        dir.join("index.html").is_file(),
        "{} has no web app: run `trunk build --release` (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn run_scenario(scenario: &str, oracle_args: &[&str]) -> serde_json::Value {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let browser_dir = repo_root().join("tests").join("browser");
    assert!(
        browser_dir.join("node_modules").join("playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/setup.sh (npm ci in tests/browser)"
    );
    let web = web_dir();
    let mut args = vec!["--web-dir", web.to_str().unwrap()];
    args.extend_from_slice(oracle_args);
    let oracle = Oracle::start(&default_pair().0, &args);
    let shots = std::env::var_os("SHARD_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| data_dir().join("screenshots"));
    let out = Command::new("node")
        .arg("e2e.mjs")
        .arg(scenario)
        .current_dir(&browser_dir)
        .env("SHARD_URL", &oracle.url)
        .env("SHARD_SCREENSHOTS", &shots)
        .output()
        .expect("run node (install Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    eprintln!("{scenario}: {last}");
    assert!(
        out.status.success(),
        "scenario {scenario} failed:\n{stdout}\n{stderr}\n--- oracle log ---\n{}",
        oracle.log.lock().unwrap().join("\n")
    );
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{scenario}: no JSON result ({e}): {stdout}"))
}

#[test]
fn leech_chat_streams_and_keeps_history() {
    let r = run_scenario("leech", &["--kernel", "scalar", "--threads", "1"]);
    assert!(r["stream_updates_seen"].as_u64().unwrap() >= 2, "{r}");
}

#[test]
fn keyboard_only_use_and_axe_core_finds_no_wcag_problems() {
    let r = run_scenario("a11y", &["--kernel", "scalar", "--threads", "1"]);
    assert_eq!(r["axe"].as_object().unwrap().len(), 6, "{r}");
}

#[test]
fn leech_sees_its_place_in_the_queue_count_down() {
    // Two slots for the scenario's four busy requests: two run, two wait, and the tab's
    // request waits behind them for a slot.
    let r = run_scenario("queue", &["--kernel", "scalar", "--threads", "1", "--parallel", "2"]);
    assert!(r["queue_updates"].as_array().unwrap().len() >= 2, "{r}");
}

#[test]
fn scout_on_webgpu_drafts_accepted_tokens_over_webrtc_direct() {
    let r = run_scenario("scout-webgpu", &["--min-step-ms", "1000"]);
    assert_eq!(r["backend"], "WebGPU", "{r}");
    assert_eq!(r["transport"], "webrtc-direct", "{r}");
    // Accepted drafts earned credits, and the chat tab was then served in the Scout tier.
    assert!(r["credits_in_swarm"].as_i64().unwrap() > 0 && r["chat_tier"] == "scout", "{r}");
    assert_eq!(r["same_peer_after_reload"], true, "{r}");
}

#[test]
fn scout_without_webgpu_falls_back_to_the_cpu() {
    let r = run_scenario("scout-cpu", &["--min-step-ms", "80"]);
    assert!(r["backend"].as_str().unwrap().starts_with("CPU"), "{r}");
    assert!(r["credits_in_swarm"].as_i64().unwrap() > 0 && r["chat_tier"] == "scout", "{r}");
    assert_eq!(r["same_peer_after_reload"], true, "{r}");
}

#[test]
fn scout_over_the_websocket_fallback() {
    let r = run_scenario("scout-websocket", &["--min-step-ms", "80"]);
    assert_eq!(r["transport"], "websocket", "{r}");
}
