//! Continuous batching does not change what anyone gets.
//!
//! * Greedy: 32 mixed requests (prompt lengths from 1 to 300 tokens, stop sequences,
//!   max_tokens, logprobs, some drafted in-process, some by an untrusted Scout-like source
//!   whose drafts arrive only now and then, some cancelled midway) give, through the real
//!   scheduler with 1, 4 and 32 slots, exactly what each gives decoded alone.
//! * Sampled: seeded requests give the same tokens alone and among 31 others.
//! * Load: 200 concurrent HTTP requests against `--parallel 8` and a small queue each end
//!   with a full answer or a 429 with `Retry-After`, none hangs, memory stays bounded, and
//!   streams cancelled midway free their slots.
//! * KV pages: memory follows the requests, and a capped pool makes requests wait, not fail.
//! * Pacing: a stand-in target's passes cost a base plus a cost per token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shard_oracle::engine::generate::{generate, Event, FinishReason, GenerateParams, Session};
use shard_oracle::engine::kernels::{self, KernelChoice};
use shard_oracle::engine::model::Logits;
use shard_oracle::engine::{Engine, LoadOptions};
use shard_oracle::queue::metrics::StepSummary;
use shard_oracle::queue::{ClientKey, InferenceQueue, JobEvent, Placement, QueueConfig, SpecConfig, Update};
use shard_oracle::spec::draft::{Draft, DraftRequest, DraftSource};
use shard_oracle::spec::local::LocalDraft;
use shard_shared::sampling::SamplingParams;
use shard_tests::{default_pair, rss_kib, Oracle};

fn load(path: &std::path::Path) -> Engine {
    let opts = LoadOptions::new(kernels::select(KernelChoice::Auto).unwrap());
    Engine::load(path, &opts, |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Drafts for some sequences in-process, for others like a Scout (untrusted, and only now
/// and then: a late draft is simply absent), and not at all for the rest; which one depends
/// on the context, so a request gets the same treatment alone and in a batch.
struct MixedDrafts {
    local: LocalDraft,
}

impl DraftSource for MixedDrafts {
    fn name(&self) -> &str {
        "mixed"
    }
    fn trusted(&self) -> bool {
        false
    }
    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft> {
        match req.context[0] % 3 {
            0 => None,
            1 => self.local.draft(req),
            // Scout-like: half the time nothing has arrived; otherwise the draft with its
            // last token wrong.
            _ => (req.context.len() % 2 == 0).then(|| self.local.draft(req)).flatten().map(|mut d| {
                if let Some(last) = d.tokens.last_mut() {
                    *last = (*last + 7) % 6144;
                }
                d.q = None;
                d
            }),
        }
    }
    fn feedback(&self, sequence: u64, proposed: usize, accepted: usize) {
        self.local.feedback(sequence, proposed, accepted)
    }
    fn finished(&self, sequence: u64) {
        self.local.finished(sequence)
    }
}

/// One request of the mix.
#[derive(Clone)]
struct Case {
    prompt: Vec<u32>,
    params: GenerateParams,
    /// Tokens after which the client goes away.
    cancel_after: Option<usize>,
}

/// What a request got.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    tokens: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    reason: Option<FinishReason>,
    /// The error it ended with instead, if any.
    failed: Option<String>,
}

fn mixed_cases(n: usize, sampled: bool) -> Vec<Case> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|i| {
            let len = match i % 4 {
                0 => 1 + next() as usize % 4,
                1 => 8 + next() as usize % 24,
                2 => 60 + next() as usize % 80,
                _ => 150 + next() as usize % 150,
            };
            let prompt: Vec<u32> = (0..len).map(|_| 2 + (next() % 6000) as u32).collect();
            let sampling = if sampled && i % 2 == 0 {
                SamplingParams { temperature: 0.9, top_p: 0.95, top_k: 40, ..SamplingParams::default() }
            } else {
                SamplingParams::greedy()
            };
            let params = GenerateParams {
                max_tokens: 4 + next() as usize % 40,
                sampling,
                seed: next(),
                stop: if i % 5 == 3 { vec![" the".into(), ".".into()] } else { vec![] },
                logprobs: (i % 3 == 1).then_some(2),
                prompt_logprobs: None,
            };
            Case { prompt, params, cancel_after: (i % 7 == 5).then_some(3) }
        })
        .collect()
}

fn alone(engine: &Engine, case: &Case) -> Got {
    let mut got = Got { tokens: vec![], text: String::new(), logprobs: vec![], reason: None, failed: None };
    let mut session = Session::new(engine);
    let f = generate(engine, &mut session, &case.prompt, &case.params, None, &mut |e| {
        if let Event::Token { id, text, logprob } = e {
            got.tokens.push(id);
            got.text.push_str(&text);
            got.logprobs.extend(logprob.map(|l| l.logprob));
        }
        case.cancel_after.is_none_or(|n| got.tokens.len() < n)
    })
    .expect("generate");
    got.text.push_str(&f.tail);
    got.reason = Some(f.reason);
    got
}

/// Submits every case at once to a queue with `parallel` slots and collects the answers.
fn batched(engine: Arc<Engine>, spec: Option<SpecConfig>, parallel: usize, cases: &[Case]) -> (Vec<Got>, f64) {
    let config = QueueConfig { capacity: 64, parallel, step_tokens: 256, ..QueueConfig::default() };
    let (got, summary) = batched_with(engine, spec, config, cases);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.failed, None, "request {i} failed");
    }
    (got, summary.tokens_per_step)
}

/// [`batched`] on any queue configuration, keeping the errors; with the step figures after.
fn batched_with(engine: Arc<Engine>, spec: Option<SpecConfig>, config: QueueConfig, cases: &[Case]) -> (Vec<Got>, StepSummary) {
    let queue = InferenceQueue::start_with(engine, config, spec, None);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outs = rt.block_on(async {
        let subs: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let placement = Placement::leech(ClientKey(i as u64 + 1));
                (queue.submit(c.prompt.clone(), c.params.clone(), placement).expect("room for every case"), c.cancel_after)
            })
            .collect();
        let tasks: Vec<_> = subs
            .into_iter()
            .map(|(mut sub, cancel_after)| {
                tokio::spawn(async move {
                    let mut got = Got { tokens: vec![], text: String::new(), logprobs: vec![], reason: None, failed: None };
                    while let Some(u) = sub.next_update().await {
                        match u {
                            Update::Queued(_) => {}
                            Update::Job(JobEvent::Event(Event::Token { id, text, logprob })) => {
                                got.tokens.push(id);
                                got.text.push_str(&text);
                                got.logprobs.extend(logprob.map(|l| l.logprob));
                                if cancel_after.is_some_and(|n| got.tokens.len() >= n) {
                                    // The client goes away: dropping the submission closes its channel.
                                    got.reason = Some(FinishReason::Cancelled);
                                    return got;
                                }
                            }
                            Update::Job(JobEvent::Event(_)) => {}
                            Update::Job(JobEvent::Finished(Ok(f))) => {
                                got.text.push_str(&f.tail);
                                got.reason = Some(f.reason);
                                return got;
                            }
                            Update::Job(JobEvent::Finished(Err(e))) => {
                                got.failed = Some(e.to_string());
                                return got;
                            }
                        }
                    }
                    panic!("the engine went away");
                })
            })
            .collect();
        let mut outs = vec![];
        for t in tasks {
            outs.push(tokio::time::timeout(Duration::from_secs(300), t).await.expect("no request hangs").unwrap());
        }
        outs
    });
    let summary = queue.stats.steps.summary();
    // Every slot is free again: cancelled requests left theirs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.rooms().1 > 0 {
        assert!(Instant::now() < deadline, "requests still hold slots after every answer was read");
        std::thread::sleep(Duration::from_millis(10));
    }
    (outs, summary)
}

fn spec_for(target: &Engine, draft_path: &std::path::Path) -> SpecConfig {
    let local = LocalDraft::new(load(draft_path), target).expect("compatible pair");
    SpecConfig { source: Arc::new(MixedDrafts { local }), k_max: 6, paced: false, reads_text: false }
}

#[test]
fn greedy_output_is_the_same_alone_and_in_batches_of_1_4_and_32() {
    let (target_path, draft_path) = default_pair();
    let target = Arc::new(load(&target_path));
    let cases = mixed_cases(32, false);
    let want: Vec<Got> = cases.iter().map(|c| alone(&target, c)).collect();
    assert!(want.iter().any(|g| g.reason == Some(FinishReason::Stop)), "some requests end on a stop sequence or EOS");
    assert!(want.iter().any(|g| g.reason == Some(FinishReason::Length)));
    for parallel in [1, 4, 32] {
        let (got, per_step) = batched(target.clone(), Some(spec_for(&target, &draft_path)), parallel, &cases);
        println!("--parallel {parallel}: {per_step:.1} tokens per pass");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if cases[i].cancel_after.is_some() {
                // Cancelled after a few tokens: what arrived is the start of the full answer.
                assert_eq!(g.tokens[..], w.tokens[..g.tokens.len()], "request {i} (cancelled) at --parallel {parallel}");
            } else {
                assert_eq!(g, w, "request {i} at --parallel {parallel}");
            }
        }
        if parallel == 32 {
            assert!(per_step > 4.0, "32 requests at once share passes ({per_step:.1} tokens per pass)");
        }
    }
}

#[test]
fn sampled_output_keeps_its_seed_whatever_else_runs() {
    let (target_path, draft_path) = default_pair();
    let target = Arc::new(load(&target_path));
    let cases = mixed_cases(32, true);
    // Alone: each request by itself through the same scheduler and drafts.
    let want: Vec<Got> = cases
        .iter()
        .map(|c| batched(target.clone(), Some(spec_for(&target, &draft_path)), 1, std::slice::from_ref(c)).0.remove(0))
        .collect();
    let (got, _) = batched(target.clone(), Some(spec_for(&target, &draft_path)), 16, &cases);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if cases[i].cancel_after.is_some() {
            assert_eq!(g.tokens[..], w.tokens[..g.tokens.len().min(w.tokens.len())], "request {i} (cancelled)");
        } else {
            assert_eq!(g, w, "request {i} ({:?})", cases[i].params.sampling);
        }
    }
}

/// KV memory follows the requests. 32 requests on 32 slots take pages for their own lengths,
/// not 32 contexts. With a cap below what 8 slots' requests need together, requests wait for
/// pages (idle slots' cached prefixes give theirs first) and every one gets exactly what it
/// gets alone; none hangs, and the pool keeps to its cap.
#[test]
fn kv_pages_follow_the_requests_and_a_full_cache_makes_them_wait() {
    use shard_oracle::engine::kv_cache::PAGE;
    let (target_path, _) = default_pair();
    let target = Arc::new(load(&target_path));
    let cases: Vec<Case> = mixed_cases(32, false).into_iter().map(|c| Case { cancel_after: None, ..c }).collect();
    let want: Vec<Got> = cases.iter().map(|c| alone(&target, c)).collect();
    let pages_for = |c: &Case| (c.prompt.len() + c.params.max_tokens + 1).div_ceil(PAGE);
    let needed: usize = cases.iter().map(pages_for).sum();
    let full_contexts = 32 * target.n_ctx.div_ceil(PAGE);

    let config = QueueConfig { capacity: 64, parallel: 32, step_tokens: 256, ..QueueConfig::default() };
    let (got, s) = batched_with(target.clone(), None, config, &cases);
    assert_eq!(got, want);
    println!(
        "32 requests on 32 slots: at most {} pages held ({} KiB each), for {needed} pages of tokens; 32 contexts are {full_contexts} pages",
        s.kv_pages_peak,
        s.kv_bytes / s.kv_pages.max(1) as u64 / 1024
    );
    assert!(s.kv_pages_peak <= needed, "{} pages held for {needed} pages of tokens", s.kv_pages_peak);
    assert_eq!(s.kv_pages_cap, full_contexts, "by default the cap is every slot's whole context");

    let biggest = cases.iter().map(pages_for).max().unwrap();
    let cap = biggest + 4;
    let config = QueueConfig { capacity: 64, parallel: 8, step_tokens: 256, kv_cache_tokens: cap * PAGE };
    let (got, s) = batched_with(target.clone(), None, config, &cases);
    let mut answered = 0;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        match &g.failed {
            None => {
                assert_eq!(g, w, "request {i} under a {cap}-page cap");
                answered += 1;
            }
            Some(e) => assert!(e.contains("KV cache is full"), "request {i}: {e}"),
        }
    }
    println!(
        "a {cap}-page cap on 8 slots ({needed} pages of tokens): {answered} of 32 answered, at most {} pages held",
        s.kv_pages_peak
    );
    assert!(s.kv_pages_peak <= cap, "{} pages held under a cap of {cap}", s.kv_pages_peak);
    assert_eq!(answered, 32, "requests waiting for pages get them in turn");

    // A request longer than the whole cap waits until nothing else runs, then gets the error.
    let config = QueueConfig { capacity: 64, parallel: 2, step_tokens: 256, kv_cache_tokens: 2 * PAGE };
    let long = Case { prompt: vec![5; 2 * PAGE], ..cases[0].clone() };
    assert!(pages_for(&cases[0]) <= 2);
    let (got, _) = batched_with(target.clone(), None, config, &[cases[0].clone(), long]);
    assert_eq!(got[0], want[0]);
    assert!(got[1].failed.as_deref().is_some_and(|e| e.contains("KV cache is full")), "{:?}", got[1]);
}

/// 200 requests at once against 8 slots and 16 places per tier.
#[test]
fn a_crowd_gets_answers_or_429s_and_nothing_hangs() {
    let (target_path, _) = default_pair();
    // Each pass takes at least 5 ms, so requests overlap as on a large model.
    let oracle = Oracle::start(&target_path, &["--parallel", "8", "--queue-capacity", "16", "--no-p2p", "--min-step-ms", "5"]);
    let pid = oracle.pid();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let queue_now = || -> serde_json::Value { client.get(oracle.endpoint("/api/queue")).send().unwrap().json().unwrap() };
    // Eight long streams fill the slots; their clients go away after the first bytes, and
    // the slots free at once (a 400-token answer would hold them for 2 s or more).
    let streams: Vec<_> = (0..8)
        .map(|i| {
            let body = serde_json::json!({"prompt": format!("Stream {i}"), "max_tokens": 400, "temperature": 0, "stream": true});
            let mut r = client.post(oracle.endpoint("/v1/completions")).json(&body).send().unwrap();
            assert_eq!(r.status(), 200);
            let mut first = [0u8; 16];
            std::io::Read::read_exact(&mut r, &mut first).unwrap();
            r
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_now()["active"] != 8 {
        assert!(Instant::now() < deadline, "the streams never held all 8 slots: {}", queue_now());
        std::thread::sleep(Duration::from_millis(5));
    }
    let dropped = Instant::now();
    drop(streams);
    while queue_now()["active"] != 0 {
        assert!(dropped.elapsed() < Duration::from_secs(2), "cancelled streams keep their slots: {}", queue_now());
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("8 cancelled streams left their slots within {} ms", dropped.elapsed().as_millis());
    let idle_rss = rss_kib(pid);
    let peak = Arc::new(Mutex::new(idle_rss));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let mut p = peak.lock().unwrap();
                *p = (*p).max(rss_kib(pid));
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let url = oracle.endpoint("/v1/completions");
    let started = Instant::now();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(240)).build().unwrap();
                let body = serde_json::json!({
                    "prompt": format!("Request {i}: once upon a time"),
                    "max_tokens": 24,
                    "temperature": 0,
                    "stream": i % 10 == 0,
                });
                let mut r = client.post(&url).json(&body).send().expect("an answer, not a hang");
                let status = r.status().as_u16();
                match status {
                    200 if i % 10 == 0 => {
                        // A streamed request whose client goes away after its first event.
                        let mut first = [0u8; 16];
                        let _ = std::io::Read::read(&mut r, &mut first);
                        drop(r);
                        (status, true)
                    }
                    200 => {
                        let v: serde_json::Value = r.json().expect("a JSON answer");
                        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
                        (status, false)
                    }
                    429 => {
                        let secs: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                        assert!(secs >= 1);
                        (status, false)
                    }
                    other => panic!("request {i}: status {other}: {}", r.text().unwrap_or_default()),
                }
            })
        })
        .collect();
    let results: Vec<(u16, bool)> = handles.into_iter().map(|h| h.join().expect("a request thread panicked")).collect();
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused = results.iter().filter(|r| r.0 == 429).count();
    let peak = *peak.lock().unwrap();
    println!(
        "200 requests in {:.1} s: {ok} answered, {refused} refused with 429; RSS idle {} MiB, peak {} MiB",
        elapsed.as_secs_f64(),
        idle_rss / 1024,
        peak / 1024
    );
    assert_eq!(ok + refused, 200);
    assert!(ok >= 8 && refused > 0, "some served, some refused");
    assert!(peak < idle_rss + 512 * 1024, "memory stays bounded: peak {peak} KiB from {idle_rss} KiB");
    // Cancelled streams left their slots: the queue drains, and a new request is served at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = queue_now();
        if q["depth"] == 0 && q["active"] == 0 {
            assert_eq!(q["slots"], 8);
            break;
        }
        assert!(Instant::now() < deadline, "the queue never drained: {q}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v: serde_json::Value = client
        .post(&url)
        .json(&serde_json::json!({"prompt": "after the crowd", "max_tokens": 4}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    let metrics = client.get(oracle.endpoint("/metrics")).send().unwrap().text().unwrap();
    for name in ["shard_active_slots", "shard_tokens_per_step", "shard_time_to_first_token_seconds", "shard_inter_token_seconds"]
    {
        assert!(metrics.contains(name), "/metrics reports {name}");
    }
}

/// A paced target (`--min-step-ms` with `--min-step-token-ms`) holds a pass of n tokens to
/// base + (n − 1) × per token, so that a stand-in for a big target verifies drafts at a cost.
#[test]
fn paced_passes_cost_a_base_plus_a_cost_per_token() {
    let (target_path, _) = default_pair();
    let mut engine = load(&target_path);
    engine.min_step = Duration::from_millis(20);
    engine.min_step_per_token = Duration::from_millis(10);
    let mut session = Session::new(&engine);
    let t = Instant::now();
    session.eval(&engine, &[1, 2, 3, 4], Logits::All);
    assert!(t.elapsed() >= Duration::from_millis(50), "a 4-token pass took {:?}", t.elapsed());
    let t = Instant::now();
    session.step(&engine, 5);
    assert!(t.elapsed() >= Duration::from_millis(20), "a 1-token pass took {:?}", t.elapsed());
}
