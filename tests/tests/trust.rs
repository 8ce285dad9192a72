//! Trust, part 1, against the real binary: tiers proven by operator keys and Scout
//! signatures (never by headers), priority and load-based admission per tier, credits earned by
//! native Scouts over libp2p, a ledger that survives SIGKILL, and bad credentials refused
//! without touching the store.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use shard_oracle::trust::auth::sign_proof;
use shard_oracle::trust::store::{CreditReason, TrustStore};
use shard_tests::{default_pair, fresh_dir, get_json, repo_root, sha256_file, synthetic_model, Oracle, Scout};

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A state directory set up before the Oracle starts: its key (so the test knows its peer
/// id) and a trust store with what the test needs in it.
struct State {
    dir: PathBuf,
    oracle_id: String,
}

impl State {
    fn new() -> Self {
        let dir = fresh_dir("trust-state");
        let key = shard_shared::key_file::load_or_create(&dir.join("oracle.key")).unwrap();
        Self { dir, oracle_id: key.public().to_peer_id().to_string() }
    }

    fn store(&self) -> TrustStore {
        TrustStore::open(&self.dir.join("trust.redb")).unwrap()
    }

    fn arg(&self) -> String {
        self.dir.display().to_string()
    }

    fn proof(&self, key: &Keypair) -> String {
        sign_proof(key, &self.oracle_id, now_ms(), rand_nonce())
    }
}

fn rand_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    for (i, b) in n.iter_mut().enumerate() {
        *b = (std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), i) & 0xff) as u8;
    }
    n
}

fn me(oracle: &Oracle, auth: Option<&str>, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client().get(oracle.endpoint("/api/me"));
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

#[test]
fn tiers_are_proven_never_claimed() {
    let state = State::new();
    let (rich, poor, banned) = (Keypair::generate_ed25519(), Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let novice = Keypair::generate_ed25519();
    let (key, old_key) = {
        let store = state.store();
        let key = store.add_key("ops").unwrap();
        let old = store.add_key("old").unwrap();
        store.revoke_key("old").unwrap();
        // Past probation (their golden tickets passed), so their credits are spendable.
        for k in [&rich, &banned] {
            store.update_peer(&k.public().to_peer_id().to_bytes(), |r| r.standing.probation = false).unwrap();
        }
        store.apply(&[(rich.public().to_peer_id().to_bytes(), 100, CreditReason::AcceptedDrafts)]).unwrap();
        store.apply(&[(banned.public().to_peer_id().to_bytes(), 100, CreditReason::AcceptedDrafts)]).unwrap();
        // On probation: what it earns is held.
        store.apply(&[(novice.public().to_peer_id().to_bytes(), 100, CreditReason::AcceptedDrafts)]).unwrap();
        store.set_ban(&banned.public().to_peer_id().to_bytes(), Some(now_ms() / 1000 + 3600)).unwrap();
        (key, old)
    };
    let oracle = Oracle::start(&synthetic_model("tq2_0"), &["--no-p2p", "--state-dir", &state.arg()]);

    assert_eq!(me(&oracle, None, &[]).1["tier"], "leech");
    let (status, op) = me(&oracle, Some(&key), &[]);
    assert_eq!((status, op["tier"].as_str(), op["key_name"].as_str()), (200, Some("oracle"), Some("ops")));
    // Headers a client sets for itself lift nothing.
    let spoof = [
        ("x-shard-tier", "oracle"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-shard-peer-id", &*rich.public().to_peer_id().to_string()),
    ];
    assert_eq!(me(&oracle, None, &spoof).1["tier"], "leech");
    // Wrong, revoked and unknown credentials: 401 in OpenAI's shape.
    for bad in ["sk-shard-0000", old_key.as_str(), "not-needed"] {
        let (status, body) = me(&oracle, Some(bad), &[]);
        assert_eq!(status, 401, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    }
    // A Scout's proof: the Scout tier while it has credits and is in good standing.
    let proof = state.proof(&rich);
    let (status, scout) = me(&oracle, Some(&proof), &[]);
    assert_eq!((status, scout["tier"].as_str()), (200, Some("scout")), "{scout}");
    assert_eq!(scout["peer_id"], rich.public().to_peer_id().to_string());
    assert_eq!(scout["credits"], 100);
    assert_eq!(me(&oracle, Some(&proof), &[]).0, 401, "a replayed proof");
    let (_, p) = me(&oracle, Some(&state.proof(&poor)), &[]);
    assert_eq!((p["tier"].as_str(), p["peer_id"].is_string()), (Some("leech"), true), "no credits: a known Leech: {p}");
    let (_, b) = me(&oracle, Some(&state.proof(&banned)), &[]);
    assert_eq!(b["tier"], "leech", "banned: {b}");
    let (_, n) = me(&oracle, Some(&state.proof(&novice)), &[]);
    assert_eq!(
        (n["tier"].as_str(), n["credits"].as_i64(), n["held_credits"].as_i64()),
        (Some("leech"), Some(0), Some(100)),
        "on probation: {n}"
    );
    assert_eq!(n["probation"], true, "{n}");
    let stale = sign_proof(&rich, &state.oracle_id, now_ms() - 120_000, rand_nonce());
    assert_eq!(me(&oracle, Some(&stale), &[]).0, 401, "an expired proof");
    let future = sign_proof(&rich, &state.oracle_id, now_ms() + 120_000, rand_nonce());
    assert_eq!(me(&oracle, Some(&future), &[]).0, 401, "a clock-skewed proof");
    let elsewhere = sign_proof(&rich, "12D3KooWAnotherOracleEntirelyXXXXXXXXXXXXXXXXXXXXXX", now_ms(), rand_nonce());
    assert_eq!(me(&oracle, Some(&elsewhere), &[]).0, 401, "a proof made for another Oracle");
    let forged = state.proof(&poor).replace(&poor.public().to_peer_id().to_string(), &rich.public().to_peer_id().to_string());
    assert_eq!(me(&oracle, Some(&forged), &[]).0, 401, "a signature by another key");

    // 401 on every route.
    let c = client();
    for (method, path) in
        [("GET", "/v1/models"), ("GET", "/health"), ("GET", "/api/queue"), ("POST", "/v1/completions"), ("POST", "/tokenize")]
    {
        let req = if method == "GET" {
            c.get(oracle.endpoint(path))
        } else {
            c.post(oracle.endpoint(path)).json(&json!({"prompt": "a"}))
        };
        let resp = req.header("authorization", "Bearer sk-shard-wrong").send().unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path}");
        let v: Value = resp.json().unwrap();
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // The operator key is what the official client sends as `api_key`.
    let python = std::env::var("SHARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("tests/python/openai_client.py"))
        .arg(&oracle.url)
        .args(["--api-key", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("all checks passed"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn malformed_credentials_get_a_4xx_and_leave_the_store_untouched() {
    let state = State::new();
    let key = state.store().add_key("ops").unwrap();
    let oracle = Oracle::start(&synthetic_model("tq2_0"), &["--no-p2p", "--state-dir", &state.arg()]);
    assert_eq!(me(&oracle, Some(&key), &[]).1["tier"], "oracle");
    let before = sha256_file(&state.dir.join("trust.redb"));
    let scout = Keypair::generate_ed25519();
    let good = state.proof(&scout);
    let fields: Vec<&str> = good.trim_start_matches("shard1.").split('.').collect();
    let cases = [
        "shard1.".to_string(),
        "shard1.a.b.c".to_string(),
        format!("shard1.0OIl{}.{}.{}.{}", fields[0], fields[1], fields[2], fields[3]),
        format!("shard1.{}.{}.{}.{}", "z".repeat(200), fields[1], fields[2], fields[3]),
        format!("shard1.{}.{}.{}.{}", fields[0], fields[1], fields[2], "zz".repeat(64)),
        format!("shard1.{}.{}.{}.{}", fields[0], fields[1], fields[2], &fields[3][..100]),
        format!("shard1.{}.notatime.{}.{}", fields[0], fields[2], fields[3]),
        format!("shard1.{}.{}.{}.{}", fields[0], fields[1], "00", fields[3]),
        format!("shard1.{}.{}.{}.{}", fields[0], "1", fields[2], fields[3]),
        format!("{good}.extra"),
        "x".repeat(5000),
    ];
    for bad in &cases {
        let (status, body) = me(&oracle, Some(bad), &[]);
        assert!((400..500).contains(&status), "{bad:.60}: {status} {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    for raw in ["Basic dXNlcjpwYXNz", "Bearer", "bearer  ", "Token abc"] {
        let status = client().get(oracle.endpoint("/api/me")).header("authorization", raw).send().unwrap().status().as_u16();
        assert!(raw.trim().eq_ignore_ascii_case("bearer") && status == 200 || status == 401, "{raw:?}: {status}");
    }
    assert_eq!(sha256_file(&state.dir.join("trust.redb")), before, "bad credentials changed the store");
}

/// Requests submitted together, each streamed, return their finish order.
fn finish_order(oracle: &Oracle, requests: Vec<(String, Option<String>)>) -> (Vec<String>, Vec<u16>) {
    let order = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let mut handles = vec![];
    for (name, auth) in requests {
        let (url, order) = (oracle.endpoint("/v1/completions"), order.clone());
        handles.push(std::thread::spawn(move || {
            let mut req =
                client().post(url).json(&json!({"prompt": format!("Request {name}"), "max_tokens": 24, "temperature": 0}));
            if let Some(a) = &auth {
                req = req.header("authorization", format!("Bearer {a}"));
            }
            let status = req.send().unwrap().status().as_u16();
            if status == 200 {
                order.lock().unwrap().push(name);
            }
            status
        }));
        std::thread::sleep(Duration::from_millis(30));
    }
    let statuses = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let order = order.lock().unwrap().clone();
    (order, statuses)
}

#[test]
fn higher_tiers_go_first_and_leeches_are_refused_first() {
    let state = State::new();
    let scout = Keypair::generate_ed25519();
    let key = {
        let store = state.store();
        store.update_peer(&scout.public().to_peer_id().to_bytes(), |r| r.standing.probation = false).unwrap();
        store.apply(&[(scout.public().to_peer_id().to_bytes(), 10_000, CreditReason::AcceptedDrafts)]).unwrap();
        store.add_key("ops").unwrap()
    };
    let oracle = Oracle::start(
        &synthetic_model("tq2_0"),
        &["--no-p2p", "--state-dir", &state.arg(), "--min-step-ms", "15", "--queue-capacity", "12", "--parallel", "1"],
    );
    // One slot, so the finish order is the order in which the tiers took it (with more
    // slots the same picks fill each free slot). Twelve Leeches queue first; an Oracle-tier
    // and a Scout-tier request come last.
    let mut requests: Vec<(String, Option<String>)> = (0..12).map(|i| (format!("leech-{i}"), None)).collect();
    requests.push(("oracle".into(), Some(key.clone())));
    requests.push(("scout".into(), Some(state.proof(&scout))));
    let (order, statuses) = finish_order(&oracle, requests);
    eprintln!("finish order: {order:?}");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
    let leeches_after = |n: &str| order[pos(n)..].iter().filter(|o| o.starts_with("leech")).count();
    assert!(leeches_after("oracle") > 6, "the Oracle-tier request finished behind most Leeches: {order:?}");
    assert!(leeches_after("scout") > 6, "the Scout-tier request finished behind most Leeches: {order:?}");
    let me = get_json(&client(), &oracle.endpoint("/api/queue"));
    eprintln!("queue after: {me}");

    // Overload: the Leech room fills and refuses, the higher tiers are still admitted.
    let mut requests: Vec<(String, Option<String>)> = (0..20).map(|i| (format!("flood-{i}"), None)).collect();
    requests.push(("oracle-late".into(), Some(key)));
    requests.push(("scout-late".into(), Some(state.proof(&scout))));
    let (order, statuses) = finish_order(&oracle, requests);
    let refused = statuses[..20].iter().filter(|&&s| s == 429).count();
    eprintln!("overload: {refused} Leech requests refused with 429; statuses {statuses:?}");
    assert!(refused > 0, "the Leech room never filled: {statuses:?}");
    assert_eq!(statuses[20..], [200, 200], "higher tiers were refused under Leech load");
    assert!(order.contains(&"oracle-late".to_string()) && order.contains(&"scout-late".to_string()));
    let q = get_json(&client(), &oracle.endpoint("/api/queue"));
    assert_eq!(q["tiers"][2]["refused"].as_u64().unwrap() as usize, refused, "{q}");
    assert_eq!(q["tiers"][0]["refused"], 0);
}

fn scout_key(state_dir: &Path) -> Keypair {
    Keypair::from_protobuf_encoding(&std::fs::read(state_dir.join("scout.key")).unwrap()).unwrap()
}

/// Waits until every Scout in `/api/swarm` has earned credits; returns the swarm.
fn wait_for_credits(oracle: &Oracle, n: usize, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let _ = client()
            .post(oracle.endpoint("/v1/completions"))
            .json(&json!({"prompt": "And the LORD spake unto Moses, saying", "max_tokens": 24, "temperature": 0}))
            .send();
        let swarm = get_json(&client(), &oracle.endpoint("/api/swarm"));
        let scouts = swarm["scouts"].as_array().unwrap();
        if scouts.len() >= n && scouts.iter().all(|s| s["credits"].as_i64().unwrap_or(0) > 0) {
            return swarm;
        }
        assert!(Instant::now() < deadline, "Scouts did not earn credits: {swarm}");
    }
}

#[test]
fn native_scouts_earn_credits_that_buy_the_scout_tier() {
    let state = State::new();
    let ops_key = state.store().add_key("ops").unwrap();
    let (target, _) = default_pair();
    let oracle = Oracle::start(&target, &["--state-dir", &state.arg(), "--min-step-ms", "60"]);
    let addrs = get_json(&client(), &oracle.endpoint("/api/p2p/addrs"));
    let tcp: Vec<String> = addrs["tcp"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let dirs = [fresh_dir("scout-a"), fresh_dir("scout-b")];
    let mut scouts: Vec<Scout> = dirs.iter().map(|d| Scout::start_in(&tcp, d)).collect();
    let swarm = wait_for_credits(&oracle, 2, Duration::from_secs(180));
    eprintln!(
        "credits in /api/swarm: {:?}",
        swarm["scouts"].as_array().unwrap().iter().map(|s| (&s["peer_id"], &s["credits"])).collect::<Vec<_>>()
    );
    // Each Scout sees its own credits with its own signed request, and is then a Scout-tier client.
    let key = scout_key(&dirs[0]);
    let peer = key.public().to_peer_id().to_string();
    let (_, mine) = me(&oracle, Some(&state.proof(&key)), &[]);
    assert_eq!(mine["peer_id"], peer);
    assert!(mine["credits"].as_i64().unwrap() > 0 && mine["tier"] == "scout", "{mine}");
    let r = client()
        .post(oracle.endpoint("/v1/completions"))
        .header("authorization", format!("Bearer {}", state.proof(&key)))
        .json(&json!({"prompt": "In the beginning", "max_tokens": 5, "temperature": 0, "stream": true}))
        .send()
        .unwrap();
    let body = r.text().unwrap();
    assert!(body.contains("\"tier\":\"scout\""), "the request waited in the Scout tier: {body:.400}");
    // Whose text goes to Scouts: a Leech request is drafted by them; an operator-key request and
    // a request marked private are not (the default `--scout-text any`, no `--scout-oracle-requests`).
    let drafted = |auth: Option<&str>, private: bool| -> u64 {
        let mut req = client()
            .post(oracle.endpoint("/v1/completions"))
            .json(&json!({"prompt": "And the LORD spake unto Moses", "max_tokens": 24, "temperature": 0}));
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        if private {
            req = req.header("x-shard-private", "true");
        }
        let v: Value = req.send().unwrap().json().unwrap();
        v["usage"]["speculative"]["drafted_tokens"].as_u64().unwrap_or(0)
    };
    assert!(drafted(None, false) > 0, "Scouts draft Leech requests");
    assert_eq!(drafted(Some(&ops_key), false), 0, "an Oracle-tier request went to Scouts");
    assert_eq!(drafted(None, true), 0, "a private request went to Scouts");
    // A restarted Scout is the same peer.
    scouts[0].kill();
    scouts[0] = Scout::start_in(&tcp, &dirs[0]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let swarm = get_json(&client(), &oracle.endpoint("/api/swarm"));
        let peers: Vec<&str> = swarm["scouts"].as_array().unwrap().iter().map(|s| s["peer_id"].as_str().unwrap()).collect();
        if peers.contains(&peer.as_str()) && peers.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted Scout did not come back as itself: {peers:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(scouts);
}

/// The child half of the in-process durability test: commits credits in a loop, printing each
/// committed balance, until it is killed.
fn writer_child(path: &Path) {
    let store = TrustStore::open(path).unwrap();
    let peers: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'p', i]).collect();
    // Trusted peers: credits go to the journal, not held on probation.
    for p in &peers {
        store.update_peer(p, |r| r.standing.probation = false).unwrap();
    }
    let mut out = std::io::stdout();
    for round in 0u64.. {
        let changes: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let delta = if (round + i as u64) % 5 == 4 { -3 } else { 2 + i as i64 };
                let reason = if delta < 0 { CreditReason::ScoutRequest } else { CreditReason::AcceptedDrafts };
                (p.clone(), delta, reason)
            })
            .collect();
        let balances = store.apply(&changes).unwrap();
        use std::io::Write;
        let _ = writeln!(out, "{}", balances.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" "));
        let _ = out.flush();
    }
}

#[test]
fn the_ledger_survives_sigkill_at_any_moment() {
    if let Some(path) = std::env::var_os("SHARD_TRUST_WRITER") {
        writer_child(Path::new(&path));
        return;
    }
    let dir = fresh_dir("ledger-kill");
    let path = dir.join("trust.redb");
    let exe = std::env::current_exe().unwrap();
    let mut shown = vec![0i64; 4];
    let mut commits_seen = 0usize;
    for round in 0..100u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["the_ledger_survives_sigkill_at_any_moment", "--exact", "--nocapture", "--test-threads", "1"])
            .env("SHARD_TRUST_WRITER", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Let it commit for a few to a few dozen milliseconds, then kill it without warning.
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 80));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        for line in rx.try_iter() {
            let balances: Vec<i64> = line.split(' ').filter_map(|v| v.parse().ok()).collect();
            if balances.len() == 4 {
                shown = balances;
                commits_seen += 1;
            }
        }
        let store = TrustStore::open(&path).unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        store.check_ledger().unwrap_or_else(|e| panic!("round {round}: {e}"));
        for (i, &b) in shown.iter().enumerate() {
            // Every balance shown was committed before it was shown: it is in the journal (the
            // writer may have committed more after printing it, never less).
            let journal = store.journal(&[b'p', i as u8]).unwrap();
            assert!(
                b == 0 || journal.iter().any(|e| e.balance == b),
                "round {round}: the shown balance {b} of peer {i} was lost"
            );
            let now = store.peer(&[b'p', i as u8]).unwrap().map_or(0, |r| r.credits);
            assert_eq!(
                Some(now),
                journal.last().map(|e| e.balance).or(Some(0)),
                "round {round}: peer {i}'s balance is not its journal's last"
            );
        }
    }
    eprintln!("100 SIGKILLs of a credit writer: {commits_seen} commits seen, ledger whole after every one");
    assert!(commits_seen > 100, "the writer hardly committed ({commits_seen})");
}

#[test]
fn the_real_oracle_keeps_its_ledger_through_sigkill_under_load() {
    let state = State::new();
    let (target, _) = default_pair();
    let args = ["--state-dir", &state.arg(), "--min-step-ms", "40", "--p2p-tcp-port", "0"];
    let mut oracle = Oracle::start(&target, &args);
    let mut shown: std::collections::HashMap<String, i64> = Default::default();
    let mut scouts: Vec<Scout> = vec![];
    let dirs = [fresh_dir("kill-scout-a"), fresh_dir("kill-scout-b")];
    for round in 0..10 {
        let addrs = get_json(&client(), &oracle.endpoint("/api/p2p/addrs"));
        let tcp: Vec<String> = addrs["tcp"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        scouts = dirs.iter().map(|d| Scout::start_in(&tcp, d)).collect();
        let swarm = wait_for_credits(&oracle, 2, Duration::from_secs(120));
        // Keep load on while the kill lands.
        let url = oracle.endpoint("/v1/completions");
        let load = std::thread::spawn(move || {
            for _ in 0..3 {
                let _ = client().post(&url).json(&json!({"prompt": "And it came to pass", "max_tokens": 40})).send();
            }
        });
        for s in swarm["scouts"].as_array().unwrap() {
            shown.insert(s["peer_id"].as_str().unwrap().to_string(), s["credits"].as_i64().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100 + 97 * round % 400));
        unsafe { libc::kill(oracle.pid() as i32, libc::SIGKILL) };
        let _ = oracle.alive();
        let _ = load.join();
        drop(std::mem::take(&mut scouts));
        let store = state.store();
        let peers = store.check_ledger().unwrap_or_else(|e| panic!("round {round}: {e}"));
        for (peer, &credits) in &shown {
            let id: libp2p::PeerId = peer.parse().unwrap();
            let now = store.peer(&id.to_bytes()).unwrap().map_or(0, |r| r.credits);
            assert!(now >= credits, "round {round}: {peer} has {now} credits after the kill, {credits} were shown");
        }
        eprintln!("kill {round}: the store opens, {peers} peers, every ledger sums, no shown credit lost: {shown:?}");
        drop(store);
        oracle = Oracle::start(&target, &args);
    }
}
