//! Chaos on the Oracle → Scout path, over real libp2p on loopback:
//! * Scouts are killed every second or so while the Oracle serves concurrent completions, and
//!   replacements join: no request fails or hangs, and the output equals plain decoding.
//! * The Oracle is restarted with the same state dir and ports: the Scouts reconnect by
//!   themselves, and the Oracle comes back with the same peer id.
//!
//! The Oracle runs the scalar kernel on one thread, as in `swarm.rs`, so Scouts keep up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shard_tests::{default_pair, fresh_dir, get_json, post_json, Oracle, Scout};

/// A slow target (so Scouts' drafts matter), taking every test request from this one host.
const SLOW: [&str; 6] = ["--kernel", "scalar", "--threads", "1", "--max-requests-per-client", "128"];

fn completions(oracle_url: &str, n: usize) -> Vec<String> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let url = format!("{oracle_url}/v1/completions");
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
                let prompt = format!("And the {} said unto", ["man", "king", "people", "LORD", "woman", "servant"][i % 6]);
                let r = post_json(&client, &url, json!({"prompt": prompt, "max_tokens": 40, "temperature": 0, "seed": i}));
                r["choices"][0]["text"].as_str().unwrap().to_string()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a request failed")).collect()
}

fn scouts_joined(client: &reqwest::blocking::Client, url: &str, n: usize, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(format!("{url}/api/swarm")).send() {
            if let Ok(v) = r.json::<Value>() {
                if v["scouts"].as_array().is_some_and(|s| s.len() >= n) {
                    return v;
                }
            }
        }
        assert!(Instant::now() < deadline, "{n} Scouts did not (re)join within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tcp_addrs(client: &reqwest::blocking::Client, oracle: &Oracle) -> Vec<String> {
    get_json(client, &oracle.endpoint("/api/p2p/addrs"))["tcp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn killing_scouts_mid_draft_loses_nothing() {
    let (target, _) = default_pair();
    let client = reqwest::blocking::Client::new();
    let plain = Oracle::start(&target, &[&["--no-p2p"][..], &SLOW[..]].concat());
    let expected = completions(&plain.url, 30);
    drop(plain);

    let oracle = Oracle::start(&target, &SLOW);
    let addrs = tcp_addrs(&client, &oracle);
    let scouts = Arc::new(Mutex::new((0..3).map(|_| Scout::start(&addrs)).collect::<Vec<_>>()));
    scouts_joined(&client, &oracle.url, 3, Duration::from_secs(60));

    // Every ~0.8 s: kill the oldest Scout, start a new one.
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (scouts, done, addrs) = (scouts.clone(), done.clone(), addrs.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(800));
                let mut s = scouts.lock().unwrap();
                s.remove(0).kill();
                s.push(Scout::start(&addrs));
                kills += 1;
            }
            kills
        })
    };
    let got = completions(&oracle.url, 30);
    done.store(true, Ordering::SeqCst);
    let kills = killer.join().unwrap();
    eprintln!("{kills} Scouts killed during the run");
    assert!(kills >= 2, "the run ended before the chaos started");
    assert_eq!(got, expected, "output under Scout churn differs from plain decoding");
    let swarm = get_json(&client, &oracle.endpoint("/api/swarm"));
    eprintln!("after churn: {} scouts, oracle {}", swarm["scouts"].as_array().unwrap().len(), swarm["oracle"]);
}

#[test]
fn scouts_reconnect_after_an_oracle_restart_with_the_same_peer_id() {
    let (target, _) = default_pair();
    let client = reqwest::blocking::Client::new();
    let state = fresh_dir("restart-state");
    let state_arg = state.display().to_string();
    // A fixed port, so the Scouts' remembered address stays right.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let args = [&["--state-dir", &state_arg, "--p2p-tcp-port", &port][..], &SLOW[..]].concat();

    let first = Oracle::start(&target, &args);
    let addrs = tcp_addrs(&client, &first);
    let peer_id = get_json(&client, &first.endpoint("/api/swarm"))["oracle"]["peer_id"].as_str().unwrap().to_string();
    let mut scouts: Vec<Scout> = (0..3).map(|_| Scout::start(&addrs)).collect();
    scouts_joined(&client, &first.url, 3, Duration::from_secs(60));
    drop(first);

    let second = Oracle::start(&target, &args);
    let swarm = scouts_joined(&client, &second.url, 3, Duration::from_secs(60));
    assert_eq!(swarm["oracle"]["peer_id"].as_str().unwrap(), peer_id, "the Oracle's peer id changed across a restart");
    assert_eq!(tcp_addrs(&client, &second), addrs);
    // And they work: a completion with their drafts equals plain decoding.
    let with_scouts = completions(&second.url, 6);
    assert!(scouts.iter_mut().all(|s| s.alive()), "a Scout died across the restart");
    drop(second);
    let plain = Oracle::start(&target, &[&["--no-p2p"][..], &SLOW[..]].concat());
    assert_eq!(with_scouts, completions(&plain.url, 6));
}
