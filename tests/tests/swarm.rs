//! The full Oracle → Scout path over real libp2p on loopback: native `shard-scout` processes
//! dial the Oracle over TCP, take draft jobs and answer them, while the Oracle serves
//! concurrent completions and never waits for them.
//!
//! The default target is tiny (6 M ternary weights): with the SIMD kernels it decodes a token
//! in well under a millisecond, faster than any Scout can draft and answer over the network,
//! so every draft would arrive after its sequence had moved on, and verifying a drafted token
//! would cost as much as decoding it. Real targets are the slow side, and their passes cost a
//! base plus a little per token (a 2B model: about 30 ms plus 14 ms a token here, less on a
//! GPU). The Oracle in this test is therefore paced like a big target whose verification is
//! cheap (`--min-step-ms 50 --min-step-token-ms 3`), so that Scouts' drafts arrive in time
//! and pay: the scheduler drafts only where its measured pass costs say a draft pays.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shard_tests::{default_pair, get_json, post_json, Oracle, Scout};

const PROMPTS: usize = 50;
const MAX_TOKENS: u64 = 48;

fn prompt(i: usize) -> String {
    let openings = ["In the beginning", "And it came to pass", "The man said", "She looked at the", "It was a time of"];
    format!("{} {}", openings[i % openings.len()], ["of", "the", "and", "that", "in", "a", "to", "was", "he", "it"][i % 10])
}

/// Greedy completions of every prompt, in parallel; the texts in prompt order.
fn complete_all(oracle: &Oracle) -> Vec<String> {
    let url = oracle.endpoint("/v1/completions");
    let handles: Vec<_> = (0..PROMPTS)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
                let r = post_json(&client, &url, json!({"prompt": prompt(i), "max_tokens": MAX_TOKENS, "temperature": 0}));
                r["choices"][0]["text"].as_str().unwrap().to_string()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("request thread")).collect()
}

fn wait_for_scouts(client: &reqwest::blocking::Client, oracle: &Oracle, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let swarm = get_json(client, &oracle.endpoint("/api/swarm"));
        if swarm["scouts"].as_array().unwrap().len() >= n {
            return swarm;
        }
        assert!(Instant::now() < deadline, "{n} Scouts did not join in time: {swarm}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_scouts_serve_fifty_concurrent_completions_losslessly() {
    let (target, _) = default_pair();
    let client = reqwest::blocking::Client::new();

    // The reference: the same Oracle build with no Scouts at all (unpaced: pacing only
    // holds passes, it does not change them).
    let plain = Oracle::start(&target, &["--no-p2p", "--queue-capacity", "128", "--max-requests-per-client", "128"]);
    let expected = complete_all(&plain);
    drop(plain);

    let oracle = Oracle::start(
        &target,
        &["--queue-capacity", "128", "--max-requests-per-client", "128", "--min-step-ms", "50", "--min-step-token-ms", "3"],
    );
    let addrs = get_json(&client, &oracle.endpoint("/api/p2p/addrs"));
    let tcp: Vec<String> = addrs["tcp"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert!(!tcp.is_empty() && addrs["webrtc_direct"][0].as_str().unwrap().contains("/certhash/"), "{addrs}");
    let scouts: Vec<Scout> = (0..3).map(|_| Scout::start(&tcp)).collect();
    wait_for_scouts(&client, &oracle, 3);

    let got = complete_all(&oracle);
    for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(a, b, "prompt {i}: output with Scouts differs from plain decoding");
    }

    let swarm = get_json(&client, &oracle.endpoint("/api/swarm"));
    eprintln!("{}", serde_json::to_string_pretty(&swarm["scouts"]).unwrap());
    for s in swarm["scouts"].as_array().unwrap() {
        assert_eq!(s["transport"], "tcp");
        assert!(s["jobs_answered"].as_u64().unwrap() > 0, "a Scout answered no jobs: {s}");
        assert!(s["tokens_accepted"].as_u64().unwrap() > 0, "a Scout had no draft tokens accepted: {s}");
        // Deltas: jobs after the first of a sequence carry only the new tokens.
        assert!(s["job_bytes"].as_u64().unwrap() < s["job_bytes_without_deltas"].as_u64().unwrap(), "{s}");
    }
    drop(scouts);
}
