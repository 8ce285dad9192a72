//! Speculative decoding is lossless.
//!
//! * Greedy: on the default model pair, over 100+ random prompts, the output with a good
//!   draft (the shipped draft model), a random draft and an adversarial draft is token for
//!   token the output of plain greedy decoding.
//! * Sampled: on two toy models over a 24-token vocabulary, the joint distribution of the
//!   second and third generated tokens (the ones that pass through drafting) matches the
//!   target's exact distribution (chi-square at significance 0.001, fixed seeds), with a
//!   trusted draft that reports q and with untrusted fixed proposals; and the same test
//!   rejects the draft's own distribution, which shows it has power.

use std::sync::Mutex;

use proptest::prelude::*;
use shard_oracle::engine::generate::{generate, Event, GenerateParams, Session, Speculation};
use shard_oracle::engine::kernels::{self, KernelChoice};
use shard_oracle::engine::model::Logits;
use shard_oracle::engine::{Engine, LoadOptions};
use shard_oracle::spec::adaptive::Pace;
use shard_oracle::spec::draft::{Draft, DraftRequest, DraftSource};
use shard_oracle::spec::local::LocalDraft;
use shard_shared::sampling::{log_softmax, SamplingParams};
use shard_tests::{repo_root, synthetic_model_named};

fn load(path: &std::path::Path) -> Engine {
    let opts = LoadOptions::new(kernels::select(KernelChoice::Auto).unwrap());
    Engine::load(path, &opts, |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs one generation and returns the token ids it produced.
fn run(
    engine: &Engine,
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
    spec: Option<Speculation<'_>>,
) -> Vec<u32> {
    let mut out = vec![];
    generate(engine, session, prompt, params, spec, &mut |e| {
        if let Event::Token { id, .. } = e {
            out.push(id);
        }
        true
    })
    .expect("generate");
    out
}

/// A greedy request for up to `max_tokens`, without logprobs.
fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        seed: 1,
        stop: vec![],
        logprobs: None,
        prompt_logprobs: None,
    }
}

/// Proposes uniformly random tokens.
struct RandomDraft(Mutex<u64>);

impl DraftSource for RandomDraft {
    fn name(&self) -> &str {
        "random"
    }
    fn trusted(&self) -> bool {
        false
    }
    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft> {
        let mut s = self.0.lock().unwrap();
        let mut next = || {
            *s ^= *s << 13;
            *s ^= *s >> 7;
            *s ^= *s << 17;
            *s
        };
        let n_vocab = 6144;
        Some(Draft { tokens: (0..req.k).map(|_| (next() % n_vocab) as u32).collect(), q: None })
    }
}

/// Tries to break the verifier: right tokens then wrong ones, end-of-text, ids outside the
/// vocabulary, overlong and empty drafts, and a false claim of certainty (q = 1).
struct AdversarialDraft {
    good: LocalDraft,
    turn: Mutex<u64>,
}

impl DraftSource for AdversarialDraft {
    fn name(&self) -> &str {
        "adversarial"
    }
    fn trusted(&self) -> bool {
        false
    }
    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft> {
        let mut turn = self.turn.lock().unwrap();
        *turn += 1;
        let honest = self.good.draft(req)?.tokens;
        let claim = |tokens: &[u32]| {
            Some(tokens.iter().map(|&t| shard_shared::sampling::Distribution { ids: vec![t], probs: vec![1.0] }).collect())
        };
        let tokens: Vec<u32> = match *turn % 6 {
            0 => honest.iter().enumerate().map(|(i, &t)| if i == honest.len() / 2 { (t + 1) % 6144 } else { t }).collect(),
            1 => vec![1; req.k],                                            // end of text, over and over
            2 => vec![u32::MAX, 5, 6],                                      // outside the vocabulary
            3 => honest.iter().cycle().take(req.k * 10).copied().collect(), // too long
            4 => vec![],
            _ => honest.iter().rev().copied().collect(),
        };
        let q = claim(&tokens);
        Some(Draft { tokens, q })
    }
}

fn default_pair() -> (Engine, Engine) {
    let root = repo_root();
    (load(&root.join("models/shard-target-bitnet-tq2_0.gguf")), load(&root.join("models/shard-draft-llama-f16.gguf")))
}

#[test]
fn greedy_output_is_identical_with_any_draft() {
    let (target, draft) = default_pair();
    let good = LocalDraft::new(draft, &target).expect("compatible pair");
    let (_, draft2) = default_pair();
    let adversarial = AdversarialDraft { good: LocalDraft::new(draft2, &target).unwrap(), turn: Mutex::new(0) };
    let random = RandomDraft(Mutex::new(0x2545f4914f6cdd1d));
    let sources: [&dyn DraftSource; 3] = [&good, &random, &adversarial];
    // The runner takes a `Fn`, so the state it updates sits in RefCells.
    let plain_session = std::cell::RefCell::new(Session::new(&target));
    let spec_session = std::cell::RefCell::new(Session::new(&target));
    let cases = std::cell::Cell::new(0u64);
    let stats = std::cell::RefCell::new([(0usize, 0usize); 3]);
    // Every other case is paced (the draft length follows measured costs, plain steps
    // included), as the Oracle runs an in-process draft.
    let pace = Pace::new();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 120, ..ProptestConfig::default() });
    let strategy = (proptest::collection::vec(2u32..6144, 1..24), 1usize..40, 0usize..3);
    runner
        .run(&strategy, |(prompt, max_tokens, which)| {
            let params = greedy(max_tokens);
            let want = run(&target, &mut plain_session.borrow_mut(), &prompt, &params, None);
            let paced = (cases.get() % 2 == 1).then_some(&pace);
            let spec = Speculation { source: sources[which], k_max: 6, sequence: cases.get(), pace: paced };
            let mut got = vec![];
            let finish = generate(&target, &mut spec_session.borrow_mut(), &prompt, &params, Some(spec), &mut |e| {
                if let Event::Token { id, .. } = e {
                    got.push(id);
                }
                true
            })
            .unwrap();
            stats.borrow_mut()[which].0 += finish.spec.drafted;
            stats.borrow_mut()[which].1 += finish.spec.accepted;
            cases.set(cases.get() + 1);
            prop_assert_eq!(
                &got,
                &want,
                "{} draft (paced: {}) changed the output of {:?}",
                sources[which].name(),
                paced.is_some(),
                prompt
            );
            Ok(())
        })
        .unwrap();
    let stats = stats.into_inner();
    for (i, s) in sources.iter().enumerate() {
        eprintln!("{}: {} drafted, {} accepted", s.name(), stats[i].0, stats[i].1);
    }
    assert!(cases.get() >= 100);
    assert!(stats[0].1 > stats[0].0 / 3, "the shipped draft should be accepted often: {:?}", stats[0]);
}

/// The screened output layer (`--head screened`) serves greedy rows: plain and speculative
/// greedy output on it, with the shipped draft and a random one, is token for token plain
/// greedy decoding on the exact layer; a request with logprobs takes the exact layer and
/// reports the same logprobs.
#[test]
fn screened_head_gives_the_exact_heads_greedy_output() {
    use shard_oracle::engine::Head;
    let root = repo_root();
    let path = root.join("models/shard-target-bitnet-tq2_0.gguf");
    let exact = load(&path);
    let opts = LoadOptions { head: Head::Screened, ..LoadOptions::new(kernels::select(KernelChoice::Auto).unwrap()) };
    let screened = Engine::load(&path, &opts, |_, _| {}).unwrap();
    let good = LocalDraft::new(load(&root.join("models/shard-draft-llama-f16.gguf")), &screened).expect("compatible pair");
    let random = RandomDraft(Mutex::new(0x9e3779b97f4a7c15));
    let sources: [&dyn DraftSource; 2] = [&good, &random];
    // The runner takes a `Fn`, so the sessions it uses sit in RefCells.
    let plain = std::cell::RefCell::new(Session::new(&exact));
    let on_screened = std::cell::RefCell::new(Session::new(&screened));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 40, ..ProptestConfig::default() });
    let strategy = (proptest::collection::vec(2u32..6144, 1..24), 1usize..40, 0usize..3);
    let cases = std::cell::Cell::new(0u64);
    runner
        .run(&strategy, |(prompt, max_tokens, which)| {
            let params = greedy(max_tokens);
            let want = run(&exact, &mut plain.borrow_mut(), &prompt, &params, None);
            let spec = (which < 2).then(|| Speculation { source: sources[which], k_max: 6, sequence: cases.get(), pace: None });
            cases.set(cases.get() + 1);
            let got = run(&screened, &mut on_screened.borrow_mut(), &prompt, &params, spec);
            prop_assert_eq!(&got, &want, "screened head, draft {:?}, prompt {:?}", which, prompt);
            Ok(())
        })
        .unwrap();
    let stats = *screened.model.head_screen.as_ref().unwrap().stats.lock().unwrap();
    eprintln!("screened: {stats:?}");
    assert!(stats.tokens > 0 && stats.candidates < stats.tokens * screened.model.config.n_vocab / 8, "{stats:?}");
    // Logprobs need every logit: those rows take the exact layer, bit for bit.
    let params = GenerateParams { logprobs: Some(5), prompt_logprobs: Some(3), ..greedy(12) };
    let logprobs = |engine: &Engine, session: &mut Session| {
        let mut out = vec![];
        generate(engine, session, &[1, 422, 2048, 77], &params, None, &mut |e| {
            out.push(format!("{e:?}"));
            true
        })
        .unwrap();
        out
    };
    assert_eq!(logprobs(&screened, &mut on_screened.borrow_mut()), logprobs(&exact, &mut plain.borrow_mut()));
}

/// Exact probability of each outcome of generating three tokens after `prompt`, seen through
/// the second and third tokens (the first is always sampled from the prompt's logits; the
/// second and third go through drafting and verification). Index `t2 * V + t3`; a generation
/// that ended early counts end-of-text (id 0) for the missing token, and one that ended at the
/// first token is the extra last cell.
fn exact_distribution(engine: &Engine, prompt: &[u32]) -> Vec<f64> {
    let v = engine.model.config.n_vocab;
    let probs = |tokens: &[u32]| -> Vec<f64> {
        let mut cache = engine.model.new_cache(64);
        let logits = engine.model.forward(engine.kernel, tokens, &mut cache, Logits::Last);
        log_softmax(&logits).iter().map(|&l| (l as f64).exp()).collect()
    };
    let p1 = probs(prompt);
    let mut joint = vec![0.0; v * v + 1];
    joint[v * v] = p1[0];
    for t1 in 1..v {
        let ctx1: Vec<u32> = prompt.iter().copied().chain([t1 as u32]).collect();
        let p2 = probs(&ctx1);
        joint[0] += p1[t1] * p2[0];
        for t2 in 1..v {
            let ctx2: Vec<u32> = ctx1.iter().copied().chain([t2 as u32]).collect();
            let p3 = probs(&ctx2);
            for t3 in 0..v {
                joint[t2 * v + t3] += p1[t1] * p2[t2] * p3[t3];
            }
        }
    }
    joint
}

fn outcome(tokens: &[u32], v: usize) -> usize {
    match tokens {
        [] => v * v,
        [_] => 0,
        [_, t2] => *t2 as usize * v,
        [_, t2, t3, ..] => *t2 as usize * v + *t3 as usize,
    }
}

/// Pearson's chi-square over cells with expected count ≥ 5 (the rest pooled), and its
/// critical value at significance 0.001 (Wilson–Hilferty).
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, f64) {
    let n: usize = counts.iter().sum();
    let (mut stat, mut cells, mut pooled_obs, mut pooled_exp) = (0.0, 0usize, 0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if e >= 5.0 {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        } else {
            pooled_obs += c as f64;
            pooled_exp += e;
        }
    }
    if pooled_exp > 0.0 {
        stat += (pooled_obs - pooled_exp).powi(2) / pooled_exp.max(1e-9);
        cells += 1;
    }
    let df = (cells - 1) as f64;
    let z = 3.090; // one-sided 0.999 quantile of N(0, 1)
    let critical = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (stat, critical)
}

/// Hides a source's `q`, as for an untrusted remote peer.
struct Untrusted(LocalDraft);

impl DraftSource for Untrusted {
    fn name(&self) -> &str {
        "untrusted"
    }
    fn trusted(&self) -> bool {
        false
    }
    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft> {
        self.0.draft(req).map(|d| Draft { q: None, ..d })
    }
}

#[test]
fn sampled_output_has_the_target_distribution() {
    let target = load(&synthetic_model_named("smallvocab-21-tq2_0"));
    let v = target.model.config.n_vocab;
    let prompt: Vec<u32> = vec![3, 1, 2];
    let exact = exact_distribution(&target, &prompt);
    const N: usize = 30_000;
    let sample = |source: Option<&dyn DraftSource>| -> Vec<usize> {
        let mut session = Session::new(&target);
        let mut counts = vec![0usize; v * v + 1];
        let mut drafted = 0;
        for seed in 0..N as u64 {
            let params = GenerateParams {
                max_tokens: 3,
                sampling: SamplingParams::default(),
                seed,
                stop: vec![],
                logprobs: None,
                prompt_logprobs: None,
            };
            let spec = source.map(|s| Speculation { source: s, k_max: 3, sequence: seed, pace: None });
            let mut tokens = vec![];
            let finish = generate(&target, &mut session, &prompt, &params, spec, &mut |e| {
                if let Event::Token { id, .. } = e {
                    tokens.push(id);
                }
                true
            })
            .unwrap();
            drafted += finish.spec.drafted;
            counts[outcome(&tokens, v)] += 1;
        }
        assert!(source.is_none() || drafted >= N / 2, "the draft must take part: {drafted} drafted tokens");
        counts
    };
    let trusted = LocalDraft::new(load(&synthetic_model_named("smallvocab-22-tq2_0")), &target).unwrap();
    let untrusted = Untrusted(LocalDraft::new(load(&synthetic_model_named("smallvocab-22-tq2_0")), &target).unwrap());
    for (name, source) in [
        ("plain", None),
        ("trusted draft with q", Some(&trusted as &dyn DraftSource)),
        ("untrusted proposals", Some(&untrusted as &dyn DraftSource)),
    ] {
        let (stat, critical) = chi_square(&sample(source), &exact);
        eprintln!("{name}: chi-square {stat:.1}, critical value at 0.001 {critical:.1}");
        assert!(stat < critical, "{name}: sampled output departs from the target distribution ({stat:.1} ≥ {critical:.1})");
    }

    // Power: the draft model's own distribution (what accepting every draft would give).
    let draft = load(&synthetic_model_named("smallvocab-22-tq2_0"));
    let mut session = Session::new(&draft);
    let mut counts = vec![0usize; v * v + 1];
    for seed in 0..N as u64 {
        let params = GenerateParams {
            max_tokens: 3,
            sampling: SamplingParams::default(),
            seed,
            stop: vec![],
            logprobs: None,
            prompt_logprobs: None,
        };
        counts[outcome(&run(&draft, &mut session, &prompt, &params, None), v)] += 1;
    }
    let (stat, critical) = chi_square(&counts, &exact);
    eprintln!("draft's own distribution: chi-square {stat:.1} (critical {critical:.1})");
    assert!(stat > 3.0 * critical, "the test must be able to tell a different distribution apart");
}
