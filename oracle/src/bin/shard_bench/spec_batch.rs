//! `shard-bench spec-batch`: what Scout-style drafts buy end to end, through the real step
//! scheduler, at a given acceptance.
//!
//! The drafter proposes the target's own greedy continuation (computed first by plain
//! decoding), each drafted token replaced by a wrong one with probability 1 − α: an honest
//! stand-in for the content of Scouts' drafts, free for the Oracle to make and always in time.
//! The target's passes are real. Each row runs the same N requests through `--parallel N`
//! slots with and without drafts (plain runs before and after each drafted one), checks
//! that the output is the same, and reports the speed-up.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard_oracle::engine::generate::{generate, Event, GenerateParams, Session};
use shard_oracle::engine::kernels::{self, KernelChoice};
use shard_oracle::engine::{Engine, LoadOptions};
use shard_oracle::queue::{ClientKey, InferenceQueue, JobEvent, Placement, QueueConfig, SpecConfig};
use shard_oracle::spec::draft::{Draft, DraftRequest, DraftSource};
use shard_shared::sampling::SamplingParams;

/// Proposes the known continuation of each prompt, corrupted at rate 1 − α.
struct KnownContinuation {
    /// Prompt → the target's greedy continuation.
    answers: HashMap<Vec<u32>, Vec<u32>>,
    alpha: f64,
    n_vocab: u32,
}

impl DraftSource for KnownContinuation {
    fn name(&self) -> &str {
        "known-continuation"
    }
    fn trusted(&self) -> bool {
        false
    }
    fn draft(&self, req: &DraftRequest<'_>) -> Option<Draft> {
        let (prompt, answer) = self.answers.iter().find(|(p, _)| req.context.starts_with(p))?;
        let at = req.context.len() - prompt.len();
        let tokens = answer
            .get(at..)?
            .iter()
            .take(req.k)
            .enumerate()
            .map(|(i, &t)| {
                // A fixed coin per (sequence position): the same draft whatever else runs.
                let mut s = (req.context.len() as u64 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t as u64;
                s ^= s >> 29;
                s = s.wrapping_mul(0xbf58_476d_1ce4_e5b9);
                s ^= s >> 32;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                if u < self.alpha {
                    t
                } else {
                    (t + 1) % self.n_vocab
                }
            })
            .collect::<Vec<_>>();
        (!tokens.is_empty()).then_some(Draft { tokens, q: None })
    }
}

/// Runs `prompts` at once through `parallel` slots; returns each output, the wall time, and
/// the drafted and accepted tokens and target passes.
fn serve(
    engine: &Arc<Engine>,
    spec: Option<SpecConfig>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
) -> (Vec<Vec<u32>>, Duration, [u64; 3]) {
    let config =
        QueueConfig { capacity: prompts.len().max(1), parallel: prompts.len(), step_tokens: 512, ..QueueConfig::default() };
    let queue = InferenceQueue::start_with(engine.clone(), config, spec, None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    let outs = rt.block_on(async {
        let subs: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| queue.submit(p.clone(), params.clone(), Placement::leech(ClientKey(i as u64))).expect("room"))
            .collect();
        let mut outs = vec![];
        for mut sub in subs {
            let mut out = vec![];
            while let Some(ev) = sub.recv().await {
                match ev {
                    JobEvent::Event(Event::Token { id, .. }) => out.push(id),
                    JobEvent::Event(_) => {}
                    JobEvent::Finished(f) => {
                        f.expect("generation");
                        break;
                    }
                }
            }
            outs.push(out);
        }
        outs
    });
    let elapsed = started.elapsed();
    // The finish is sent just after the counters are updated: wait for the last one.
    std::thread::sleep(Duration::from_millis(50));
    let s = &queue.stats.spec;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    (outs, elapsed, [load(&s.drafted_tokens), load(&s.accepted_tokens), load(&s.target_passes)])
}

pub fn run(target: &Path, tokens: usize, streams: &[usize], alphas: &[f64], k_max: usize, context: usize) -> anyhow::Result<()> {
    let kernel = kernels::select(KernelChoice::Auto).map_err(anyhow::Error::msg)?;
    let engine = Arc::new(Engine::load(target, &LoadOptions::new(kernel), |_, _| {})?);
    let n_vocab = engine.model.config.n_vocab as u32;
    let most = streams.iter().copied().max().unwrap_or(1);
    // Distinct prompts of `context` tokens (ids spread over the vocabulary).
    let prompts: Vec<Vec<u32>> =
        (0..most).map(|i| (0..context).map(|j| 2 + ((i * 7919 + j * 104_729) as u32 % (n_vocab - 2))).collect()).collect();
    let params = GenerateParams {
        max_tokens: tokens,
        sampling: SamplingParams::greedy(),
        seed: 1,
        stop: vec![],
        logprobs: None,
        prompt_logprobs: None,
    };
    // The target's own answers, decoded plainly one at a time.
    let mut answers = HashMap::new();
    for p in &prompts {
        let mut out = vec![];
        generate(&engine, &mut Session::new(&engine), p, &params, None, &mut |e| {
            if let Event::Token { id, .. } = e {
                out.push(id);
            }
            true
        })?;
        answers.insert(p.clone(), out);
    }
    // The scheduler prices drafts from these timed passes at first (measured once, here,
    // outside the timed rows).
    let timings = engine.pass_timings();
    let fit = shard_oracle::spec::adaptive::PassCost::from_timings(timings).model();
    println!(
        "# spec-batch: {} ({} prompt tokens, {tokens} generated per stream, k ≤ {k_max}); drafts are the target's \
         greedy continuation with each token wrong with probability 1 − α",
        target.display(),
        context
    );
    if let Some((base, per_token)) = fit {
        println!("# timed passes at start: {base:.1} ms + {per_token:.1} ms a token ({timings:.1?})");
    }
    println!();
    println!("| streams | α | plain tok/s | drafted tok/s | speed-up | accepted / drafted | tokens per pass | identical |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    for &n in streams {
        let batch = &prompts[..n];
        let (plain_out, mut plain_before, _) = serve(&engine, None, batch, &params);
        let generated: usize = plain_out.iter().map(Vec::len).sum();
        for &alpha in alphas {
            let source = Arc::new(KnownContinuation { answers: answers.clone(), alpha, n_vocab });
            let spec = SpecConfig { source, k_max, paced: false, reads_text: false };
            let (out, time, [drafted, accepted, passes]) = serve(&engine, Some(spec), batch, &params);
            // This host's speed drifts by tens of percent within minutes: each drafted run is
            // compared with the mean of the plain runs just before and just after it.
            let (_, plain_after, _) = serve(&engine, None, batch, &params);
            let plain_time = (plain_before + plain_after) / 2;
            plain_before = plain_after;
            let rate = |t: Duration| generated as f64 / t.as_secs_f64();
            println!(
                "| {n} | {alpha:.1} | {:.1} | {:.1} | {:.2}× | {:.2} | {:.2} | {} |",
                rate(plain_time),
                rate(time),
                plain_time.as_secs_f64() / time.as_secs_f64(),
                accepted as f64 / drafted.max(1) as f64,
                generated as f64 / passes.max(1) as f64,
                if out == plain_out { "yes" } else { "NO" }
            );
        }
    }
    Ok(())
}
