//! `shard-bench`: timings of Shard's engine, printed as a table (and JSON for scripts).
//!
//! * `shard-bench model FILE`: decode tokens/s, and the time of one forward pass of
//!   k = 1, 2, 4, 8 new tokens after a context (what speculative verification costs).
//! * `shard-bench kernels`: every available ternary kernel against the scalar reference on
//!   bitnet-b1.58-2B-4T's matrix shapes, as a ratio.
//! * `shard-bench dense`: the F16 matrix product (output layer, F16 drafts) against one
//!   dot product per row and token, as a ratio.
//! * `shard-bench tickets TARGET REFERENCE`: what golden tickets cost the Oracle: the checker's
//!   time per ticket against the target's time per Scout job, and the CPU share at each rate.
//! * `shard-bench spec-batch TARGET`: Scout-style drafts at acceptance α through the step
//!   scheduler, 1 and N streams, against plain decoding ([`spec_batch`]).
//! * `shard-bench sampling`: sorting a vocabulary's candidates for a sampled token, radix
//!   against comparison, and the whole distribution ([`sampling`]).
//!
//! `scripts/bench.sh` runs the model benchmark side by side with llama.cpp on the same file.

mod head;
mod sampling;
mod spec_batch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use shard_oracle::engine::kernels::{
    self, formats, KernelChoice, QuantizedActivations, TernaryFormat, TernaryMatrix, WeightBytes,
};
use shard_oracle::engine::model::{Logits, RowUse};
use shard_oracle::engine::{ActScales, Engine, Head, LoadOptions, WeightMemory};
use shard_shared::sampling::argmax;

#[derive(Parser)]
#[command(about = "Benchmarks Shard's engine and kernels")]
struct Args {
    /// Threads for the kernels (default: all cores).
    #[arg(short, long, global = true)]
    threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Decode speed and k-token forward passes on a model file.
    Model {
        model: PathBuf,
        #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
        kernel: KernelChoice,
        /// The output layer's product.
        #[arg(long, value_enum, default_value_t = Head::Exact)]
        head: Head,
        /// How activations are scaled to int8 (per 256 values as llama.cpp, or per token).
        #[arg(long, value_enum, default_value_t = ActScales::Block)]
        act_scales: ActScales,
        /// Where the weights live: the file's pages, or a copy in 2 MiB pages (the Oracle's
        /// default on Linux; `shard-oracle --mmap` takes the other).
        #[arg(long, value_enum, default_value_t = WeightMemory::default())]
        weights: WeightMemory,
        /// Tokens of context before the timed passes.
        #[arg(long, default_value_t = 64)]
        context: usize,
        /// Tokens to decode for the tokens/s figure.
        #[arg(long, default_value_t = 32)]
        decode: usize,
        /// Repetitions of each k-token pass (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Tokens in the timed passes (9 is verifying 8 drafted tokens; 32 is a step of 32
        /// decoding streams, less their separate attention).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 9])]
        passes: Vec<usize>,
    },
    /// Speculative decoding with an in-process draft against plain decoding, greedy.
    Spec {
        target: PathBuf,
        draft: PathBuf,
        /// Tokens generated per prompt.
        #[arg(long, default_value_t = 96)]
        tokens: usize,
        /// Longest draft.
        #[arg(long, default_value_t = 8)]
        k_max: usize,
        /// Hold each target pass to at least this long, as the Oracle's --min-step-ms.
        #[arg(long, default_value_t = 0.0)]
        min_step_ms: f64,
        /// What each token of a target pass past the first adds (--min-step-token-ms).
        #[arg(long, default_value_t = 0.0)]
        min_step_token_ms: f64,
    },
    /// Scout-style drafts at a given acceptance through the step scheduler, against plain
    /// decoding of the same requests (`spec_batch.rs`).
    SpecBatch {
        target: PathBuf,
        /// Tokens generated per stream.
        #[arg(long, default_value_t = 48)]
        tokens: usize,
        /// Concurrent streams (each its own slot).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
        streams: Vec<usize>,
        /// Per-token acceptance of the drafts.
        #[arg(long, value_delimiter = ',', default_values_t = [0.6f64, 0.8, 0.9])]
        acceptance: Vec<f64>,
        #[arg(long, default_value_t = 8)]
        k_max: usize,
        /// Prompt tokens per stream.
        #[arg(long, default_value_t = 32)]
        context: usize,
    },
    /// Every kernel against the scalar reference.
    Kernels {
        /// Tokens per product (1 = decoding; more = batched verification).
        #[arg(long, default_values_t = [1usize, 8])]
        tokens: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Only this layout (tq2_0, tq1_0, i2s) and scaling (row, block, tensor, token), e.g. for
        /// counting instructions under callgrind one case at a time.
        #[arg(long)]
        only: Option<String>,
        /// Only this shape, ROWSxCOLS.
        #[arg(long)]
        shape: Option<String>,
    },
    /// What golden tickets cost: the reference draft model's check of one ticket against the
    /// target's verification of one Scout job, and the CPU share at the ticket rates.
    Tickets {
        target: PathBuf,
        /// The Scouts' draft model, which the Oracle runs to check tickets.
        reference: PathBuf,
        /// Drafted tokens per job.
        #[arg(long, default_value_t = 8)]
        k: usize,
        /// Tokens of context before the first job.
        #[arg(long, default_value_t = 128)]
        context: usize,
        /// Jobs timed (each a delta of a few tokens on the same sequence).
        #[arg(long, default_value_t = 24)]
        jobs: usize,
    },
    /// What a sampled token's distribution costs: the vocabulary's sort, radix against
    /// comparison, and the whole distribution.
    Sampling {
        /// Vocabulary sizes (SmolLM2's and Llama 3's / bitnet-b1.58-2B-4T's).
        #[arg(long, value_delimiter = ',', default_values_t = [49152usize, 128256])]
        vocab: Vec<usize>,
        #[arg(long, default_value_t = 21)]
        reps: usize,
    },
    /// The output layer exact, as int8 and screened (`--head`), on 49k and 128k vocabularies.
    Head {
        /// Tokens per product (1 = decoding; 9 = verifying 8 drafted tokens).
        #[arg(long, default_values_t = [1usize, 9])]
        tokens: Vec<usize>,
        #[arg(long, default_value_t = 11)]
        reps: usize,
    },
    /// The F16 matrix product against one dot product per row and token.
    Dense {
        /// Tokens per product (1 = decoding; 9 = verifying 8 drafted tokens).
        #[arg(long, default_values_t = [1usize, 9])]
        tokens: Vec<usize>,
        #[arg(long, default_value_t = 21)]
        reps: usize,
    },
}

/// A seeded xorshift64 generator: the same synthetic weights on every run.
fn xorshift(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Bytes per second that rayon's threads read from memory together: each sums its share of a
/// 1 GiB buffer (far larger than any cache), best of five.
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let share = words.div_ceil(rayon::current_num_threads());
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let sum: u64 = buf.par_chunks(share).map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v))).sum();
            std::hint::black_box(sum);
            (words * 8) as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Median time of `f` over `reps` runs after one warm-up run (which is not counted).
fn median_time(reps: usize, mut f: impl FnMut()) -> Duration {
    let v = (0..reps.max(1) + 1)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .skip(1)
        .collect();
    median(v)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    match args.cmd {
        Cmd::Model { model, kernel, head, act_scales, weights, context, decode, reps, passes } => {
            let opts = ModelOptions { kernel, head, act_scales, weights, context, decode, reps, passes };
            bench_model(model, opts, threads, args.json)
        }
        Cmd::Kernels { tokens, reps, only, shape } => {
            bench_kernels(&tokens, reps, only.as_deref(), shape.as_deref(), threads, args.json)
        }
        Cmd::Dense { tokens, reps } => bench_dense(&tokens, reps, threads, args.json),
        Cmd::Head { tokens, reps } => head::run(&tokens, reps, threads),
        Cmd::Sampling { vocab, reps } => {
            sampling::run(&vocab, reps);
            Ok(())
        }
        Cmd::Spec { target, draft, tokens, k_max, min_step_ms, min_step_token_ms } => {
            let pace = (Duration::from_secs_f64(min_step_ms / 1e3), Duration::from_secs_f64(min_step_token_ms / 1e3));
            bench_spec(&target, &draft, tokens, k_max, pace, threads, args.json)
        }
        Cmd::SpecBatch { target, tokens, streams, acceptance, k_max, context } => {
            spec_batch::run(&target, tokens, &streams, &acceptance, k_max, context)
        }
        Cmd::Tickets { target, reference, k, context, jobs } => {
            bench_tickets(&target, &reference, k, context, jobs, threads, args.json)
        }
    }
}

/// What `shard-bench model` loads and times.
struct ModelOptions {
    kernel: KernelChoice,
    head: Head,
    act_scales: ActScales,
    weights: WeightMemory,
    context: usize,
    decode: usize,
    reps: usize,
    passes: Vec<usize>,
}

fn bench_model(path: PathBuf, opts: ModelOptions, threads: usize, as_json: bool) -> anyhow::Result<()> {
    let ModelOptions { kernel, head, act_scales, weights, context, decode, reps, passes } = opts;
    anyhow::ensure!(passes.first() == Some(&1) && !passes.contains(&0), "--passes starts with 1 (the ratios are to it)");
    let kernel = kernels::select(kernel).map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    let engine = Engine::load(
        &path,
        &LoadOptions {
            n_ctx: context + decode.max(passes.iter().copied().max().unwrap_or(1)) + 16,
            head,
            act_scales,
            weights,
            ..LoadOptions::new(kernel)
        },
        |_, _| {},
    )?;
    let load = t0.elapsed();
    let m = &engine.model;
    let n_vocab = m.config.n_vocab as u32;
    let prompt: Vec<u32> = (0..context as u32).map(|i| (i * 7919 + 13) % n_vocab).collect();
    let mut cache = m.new_cache(engine.n_ctx);

    // Decoding here is greedy, and so is the verification a k-token pass stands for: every
    // row feeds an argmax (which only a screened output layer, `--head screened`, uses).
    let pass = |tokens: &[u32], cache: &mut _, want| m.forward_for(kernel, tokens, cache, want, RowUse::Argmax);
    let t = Instant::now();
    let mut logits = pass(&prompt, &mut cache, Logits::Last);
    let prompt_time = t.elapsed();

    // k-token passes after the context, rolled back each time (as verification does).
    let mut k_times = vec![];
    for &k in &passes {
        let toks: Vec<u32> = (0..k as u32).map(|i| (i * 31 + 5) % n_vocab).collect();
        let mut times = vec![];
        for _ in 0..reps.max(1) + 1 {
            let t = Instant::now();
            std::hint::black_box(pass(&toks, &mut cache, Logits::All));
            times.push(t.elapsed());
            cache.truncate(context);
        }
        times.remove(0); // warm-up
        k_times.push((k, median(times)));
    }

    let t = Instant::now();
    for _ in 0..decode {
        let next = argmax(&logits);
        logits = pass(&[next], &mut cache, Logits::Last);
    }
    let decode_time = t.elapsed();
    let screened = m.head_screen.as_ref().map(|s| *s.stats.lock().unwrap_or_else(|e| e.into_inner()));
    let tok_s = decode as f64 / decode_time.as_secs_f64();
    let pp_tok_s = context as f64 / prompt_time.as_secs_f64();
    // Decoding reads every weight once per token: the memory bound, from the bandwidth this
    // machine delivers to this many threads right now.
    let bytes = m.weight_bytes_per_pass();
    let bandwidth = read_bandwidth();
    let bound_tok_s = bandwidth / bytes as f64;

    if as_json {
        println!(
            "{}",
            json!({
                "engine": "shard", "kernel": kernel.name(), "head": format!("{head:?}"), "act_scales": format!("{act_scales:?}"), "weights": format!("{weights:?}"), "threads": threads, "load_s": load.as_secs_f64(),
                "prompt_tok_s": pp_tok_s, "decode_tok_s": tok_s,
                "weight_bytes_per_token": bytes, "read_bandwidth_gb_s": bandwidth / 1e9, "bound_tok_s": bound_tok_s,
                "forward_ms": k_times.iter().map(|(k, d)| (k.to_string(), json!(d.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>(),
                "screened_candidates_per_token": screened.map(|s| s.candidates as f64 / s.tokens.max(1) as f64),
            })
        );
    } else {
        println!(
            "model {} ({} layers, {} embd), kernel {}, head {head:?}, activations scaled per {}, weights {weights:?}, {threads} threads",
            path.display(),
            m.config.n_layer,
            m.config.n_embd,
            kernel.name(),
            match act_scales {
                ActScales::Block => "256 values",
                ActScales::Token => "token",
            }
        );
        println!("load            {:>10.2} s", load.as_secs_f64());
        println!("prompt ({context:>3} tok) {:>8.1} tok/s", pp_tok_s);
        println!("decode          {:>10.2} tok/s", tok_s);
        println!(
            "memory bound    {:>10.2} tok/s ({:.0} MB of weights per token at {:.1} GB/s read; decode is {:.0}% of it)",
            bound_tok_s,
            bytes as f64 / 1e6,
            bandwidth / 1e9,
            100.0 * tok_s / bound_tok_s
        );
        if let Some(s) = screened {
            println!(
                "screened head   {:>10.1} exact rows a token ({} tokens, {} of them with every row exact)",
                s.candidates as f64 / s.tokens.max(1) as f64,
                s.tokens,
                s.full_rows
            );
        }
        for (k, d) in &k_times {
            println!(
                "forward k={k:<2}    {:>10.2} ms  ({:.2}x one token)",
                d.as_secs_f64() * 1e3,
                d.as_secs_f64() / k_times[0].1.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// The checker's work per ticket (`Reference::check`: the job's delta, then the answer with
/// teacher forcing) against the target's per job (one pass over the delta and the k drafted
/// tokens, as verification does), on one sequence growing by deltas.
fn bench_tickets(
    target: &std::path::Path,
    reference: &std::path::Path,
    k: usize,
    context: usize,
    jobs: usize,
    threads: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    use shard_oracle::engine::generate::Session;
    use shard_oracle::trust::agreement::AgreementRule;
    use shard_oracle::trust::checker::{Reference, TicketJob};
    use shard_oracle::trust::standing::StandingRules;
    use shard_shared::wire::WireSampling;
    let kernel = kernels::select(KernelChoice::Auto).map_err(anyhow::Error::msg)?;
    let n_ctx = context + jobs * (k + 4) + 16;
    let opts = LoadOptions { n_ctx, ..LoadOptions::new(kernel) };
    let target_engine = Engine::load(target, &opts, |_, _| {})?;
    let ref_engine = Engine::load(reference, &opts, |_, _| {})?;
    let n_vocab = target_engine.model.config.n_vocab.min(ref_engine.model.config.n_vocab) as u32;
    let mut checker = Reference::new(ref_engine, [0; 32], AgreementRule::default());
    let mut session = Session::new(&target_engine);
    let mut next = xorshift(7);
    let mut tokens: Vec<u32> = (0..context).map(|_| (next() % n_vocab as u64) as u32).collect();
    session.extend_to(&target_engine, &tokens);
    let _ = checker.rows(1, &tokens, &[1]);
    let (mut target_time, mut check_time) = (Duration::ZERO, Duration::ZERO);
    for job in 0..jobs {
        // The sequence moved on by a few tokens since the last job; the Scout answers k.
        let delta = 1 + job % 4;
        let answer: Vec<u32> = (0..k).map(|_| (next() % n_vocab as u64) as u32).collect();
        let t = Instant::now();
        let fresh: Vec<u32> = (0..delta).map(|_| (next() % n_vocab as u64) as u32).collect();
        let verify: Vec<u32> = fresh.iter().chain(&answer).copied().collect();
        std::hint::black_box(session.eval(&target_engine, &verify, Logits::All));
        session.truncate(tokens.len() + delta);
        target_time += t.elapsed();
        tokens.extend(fresh);
        let ticket = TicketJob {
            peer: libp2p::PeerId::random(),
            job_id: job as u64,
            sequence: 1,
            context: tokens.clone(),
            k: k as u8,
            sampling: WireSampling { temperature: 0.0, top_k: 0, top_p: 1.0 },
            seed: 0,
            answer,
            refused: false,
            observed: Default::default(),
        };
        let t = Instant::now();
        std::hint::black_box(checker.check(&ticket));
        check_time += t.elapsed();
    }
    let (per_job, per_ticket) = (target_time / jobs as u32, check_time / jobs as u32);
    let rules = StandingRules::default();
    let rates = [("probation", rules.probation_rate), ("after 10 passes", 0.1), ("trusted floor", rules.min_rate)];
    let share = |rate: f64| {
        let t = rate * per_ticket.as_secs_f64();
        t / (t + per_job.as_secs_f64())
    };
    if as_json {
        println!(
            "{}",
            json!({
                "target": target.display().to_string(), "reference": reference.display().to_string(), "threads": threads, "k": k,
                "target_ms_per_job": per_job.as_secs_f64() * 1e3, "check_ms_per_ticket": per_ticket.as_secs_f64() * 1e3,
                "cpu_share": rates.iter().map(|(n, r)| (n.to_string(), json!(share(*r)))).collect::<serde_json::Map<_, _>>(),
            })
        );
    } else {
        println!("target {} / reference {} ({threads} threads, k = {k}, {jobs} jobs)", target.display(), reference.display());
        println!("| | ms |\n|---|---:|");
        println!("| target: verify one job (delta + {k} tokens) | {:.3} |", per_job.as_secs_f64() * 1e3);
        println!("| checker: one ticket | {:.3} |", per_ticket.as_secs_f64() * 1e3);
        println!("\n| ticket rate | share of the Oracle's CPU |\n|---|---:|");
        for (name, rate) in rates {
            println!("| {name} ({:.0}%) | {:.2}% |", rate * 100.0, share(rate) * 100.0);
        }
    }
    Ok(())
}

/// Prompts in the default pair's voice (Brown corpus and King James Bible openings).
const SPEC_PROMPTS: [&str; 6] = [
    "In the beginning God created the heaven and the earth.",
    "The jury said that the city",
    "And the LORD spake unto Moses, saying,",
    "The President told reporters that",
    "<|user|>Tell me about the king of Israel.<|end|><|assistant|>",
    "It was a cold morning in the valley when",
];

fn bench_spec(
    target: &std::path::Path,
    draft: &std::path::Path,
    tokens: usize,
    k_max: usize,
    hold: (Duration, Duration),
    threads: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    use shard_oracle::engine::generate::{generate, Event, GenerateParams, Session, Speculation};
    use shard_oracle::spec::adaptive::Pace;
    use shard_oracle::spec::local::LocalDraft;
    use shard_shared::sampling::SamplingParams;
    let kernel = kernels::select(KernelChoice::Auto).map_err(anyhow::Error::msg)?;
    let opts = LoadOptions::new(kernel);
    let mut t_engine = Engine::load(target, &opts, |_, _| {})?;
    // A paced target stands in for a big one (its passes held to base + per token).
    (t_engine.min_step, t_engine.min_step_per_token) = hold;
    let d_engine = Engine::load(draft, &opts, |_, _| {})?;
    let local = LocalDraft::new(d_engine, &t_engine)?;
    let params = GenerateParams {
        max_tokens: tokens,
        sampling: SamplingParams::greedy(),
        seed: 1,
        stop: vec![],
        logprobs: None,
        prompt_logprobs: None,
    };
    let run = |spec: Option<Speculation<'_>>| -> anyhow::Result<(Vec<Vec<u32>>, Duration, usize, shard_oracle::spec::metrics::SpecStats)> {
        let mut all = vec![];
        let mut total = Duration::ZERO;
        let mut n = 0;
        let mut stats = shard_oracle::spec::metrics::SpecStats::default();
        for (i, p) in SPEC_PROMPTS.iter().enumerate() {
            let prompt = t_engine.tokenizer.encode_prompt(p)?;
            // A fresh session per prompt, so no run reuses another's cache.
            let mut session = Session::new(&t_engine);
            let mut out = vec![];
            let spec = spec.map(|s| Speculation { sequence: i as u64, ..s });
            let f = generate(&t_engine, &mut session, &prompt, &params, spec, &mut |e| {
                if let Event::Token { id, .. } = e {
                    out.push(id);
                }
                true
            })?;
            total += f.decode_time;
            n += f.completion_tokens;
            stats.drafted += f.spec.drafted;
            stats.accepted += f.spec.accepted;
            stats.verifications += f.spec.verifications;
            stats.target_passes += f.spec.target_passes;
            all.push(out);
        }
        Ok((all, total, n, stats))
    };
    // Plain, always-drafting and paced rounds alternate, best of ROUNDS each: this machine's
    // neighbours slow single runs by up to a third. The paced runs share one Pace, as the
    // requests one Oracle worker serves do.
    const ROUNDS: usize = 3;
    let pace = Pace::new();
    let always = Speculation { source: &local, k_max, sequence: 0, pace: None };
    let paced = Speculation { pace: Some(&pace), ..always };
    let mut runs = [run(None)?, run(Some(always))?, run(Some(paced))?];
    for _ in 1..ROUNDS {
        for (r, spec) in runs.iter_mut().zip([None, Some(always), Some(paced)]) {
            let again = run(spec)?;
            if again.1 < r.1 {
                *r = again;
            }
        }
    }
    let identical = runs[1].0 == runs[0].0 && runs[2].0 == runs[0].0;
    let tps: Vec<f64> = runs.iter().map(|r| r.2 as f64 / r.1.as_secs_f64()).collect();
    let per_pass: Vec<f64> = runs.iter().map(|r| r.2 as f64 / r.3.target_passes.max(1) as f64).collect();
    let acceptance: Vec<Option<f64>> = runs.iter().map(|r| r.3.acceptance_rate()).collect();
    let show = |a: Option<f64>| a.map_or("none drafted".to_string(), |a| format!("{a:.3}"));
    let drafting_share: Vec<f64> = runs.iter().map(|r| r.3.verifications as f64 / r.3.target_passes.max(1) as f64).collect();

    // What one verification costs against one decoding step, on the target alone, and what
    // one drafted token costs (a decoding step of the draft model).
    let ctx = t_engine.tokenizer.encode_prompt(SPEC_PROMPTS[0])?;
    let step = pass_time(&t_engine, &ctx, 1);
    let verify: Vec<(usize, Duration)> = [2usize, 4, 8].iter().map(|&k| (k, pass_time(&t_engine, &ctx, k + 1))).collect();
    let draft_step = pass_time(&Engine::load(draft, &opts, |_, _| {})?, &ctx, 1);
    if as_json {
        println!(
            "{}",
            json!({"plain_tok_s": tps[0], "always_tok_s": tps[1], "paced_tok_s": tps[2], "identical": identical,
                   "acceptance": acceptance[1], "paced_acceptance": acceptance[2], "tokens_per_target_pass": per_pass[1], "paced_drafting_share": drafting_share[2],
                   "step_ms": step.as_secs_f64() * 1e3, "draft_step_ms": draft_step.as_secs_f64() * 1e3,
                   "verify_ms": verify.iter().map(|(k, d)| (k.to_string(), json!(d.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>()})
        );
        return Ok(());
    }
    println!(
        "target {}, draft {}, greedy, {} prompts x {tokens} tokens, k_max {k_max}, {threads} threads, best of {ROUNDS} rounds",
        target.display(),
        draft.display(),
        SPEC_PROMPTS.len()
    );
    if hold != (Duration::ZERO, Duration::ZERO) {
        println!(
            "target passes held to at least {:.1} ms + {:.1} ms per token past the first (a big target's costs)",
            hold.0.as_secs_f64() * 1e3,
            hold.1.as_secs_f64() * 1e3
        );
    }
    println!("| {:<34} | {:>10} | {:>13} | {:>8} | {:>10} | {:>8} |", "", "plain", "draft always", "ratio", "paced", "ratio");
    println!("|{:-<36}|{:-<12}|{:-<15}|{:-<10}|{:-<12}|{:-<10}|", "", "", "", "", "", "");
    println!(
        "| {:<34} | {:>10.1} | {:>13.1} | {:>7.2}x | {:>10.1} | {:>7.2}x |",
        "decode tok/s",
        tps[0],
        tps[1],
        tps[1] / tps[0],
        tps[2],
        tps[2] / tps[0]
    );
    let same = |b: bool| if b { "yes" } else { "NO" };
    println!(
        "| {:<34} | {:>10} | {:>13} | {:>8} | {:>10} | {:>8} |",
        "greedy output identical",
        "",
        same(runs[1].0 == runs[0].0),
        "",
        same(runs[2].0 == runs[0].0),
        ""
    );
    println!(
        "| {:<34} | {:>10} | {:>13} | {:>8} | {:>10} | {:>8} |",
        "draft acceptance rate",
        "",
        show(acceptance[1]),
        "",
        show(acceptance[2]),
        ""
    );
    println!(
        "| {:<34} | {:>10.2} | {:>13.2} | {:>8} | {:>10.2} | {:>8} |",
        "tokens per target forward pass", per_pass[0], per_pass[1], "", per_pass[2], ""
    );
    println!(
        "| {:<34} | {:>10} | {:>13.2} | {:>8} | {:>10.2} | {:>8} |",
        "passes that verify a draft", "", drafting_share[1], "", drafting_share[2], ""
    );
    println!(
        "| {:<34} | {:>10.3} | {:>13} | {:>8} | {:>10} | {:>8} |",
        "target: one decoding step (ms)",
        step.as_secs_f64() * 1e3,
        "",
        "",
        "",
        ""
    );
    println!(
        "| {:<34} | {:>10} | {:>13.3} | {:>7.2}x | {:>10} | {:>8} |",
        "draft: one decoding step (ms)",
        "",
        draft_step.as_secs_f64() * 1e3,
        draft_step.as_secs_f64() / step.as_secs_f64(),
        "",
        ""
    );
    for (k, d) in &verify {
        println!(
            "| {:<34} | {:>10} | {:>13.3} | {:>7.2}x | {:>10} | {:>8} |",
            format!("target: verify k={k} (k+1 tokens, ms)"),
            "",
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / step.as_secs_f64(),
            "",
            ""
        );
    }
    if let Some(c) = pace.costs() {
        println!(
            "pace measured: step {:.3} ms, verification {:.3} ms more per drafted token, drafting {:.3} ms per token",
            c.step_ms, c.extra_per_token_ms, c.draft_per_token_ms
        );
    }
    Ok(())
}

/// Median time of one forward pass of `k` tokens after `ctx`, rolled back each time (the first
/// pass, which warms the caches, is not counted).
fn pass_time(engine: &Engine, ctx: &[u32], k: usize) -> Duration {
    let m = &engine.model;
    let mut cache = m.new_cache(engine.n_ctx);
    m.forward(engine.kernel, ctx, &mut cache, Logits::Last);
    let toks = vec![5u32; k];
    median_time(15, || {
        let t = Instant::now();
        std::hint::black_box(m.forward(engine.kernel, &toks, &mut cache, Logits::All));
        engine.hold_pass(t, k);
        cache.truncate(ctx.len());
    })
}

fn bench_kernels(
    tokens: &[usize],
    reps: usize,
    only: Option<&str>,
    shape: Option<&str>,
    threads: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    // bitnet-b1.58-2B-4T: attention 2560x2560, FFN up/gate 6912x2560, FFN down 2560x6912.
    let shapes = [(2560usize, 2560usize), (6912, 2560), (2560, 6912)];
    let all = kernels::available();
    let mut rows_out = vec![];
    // What the bench's threads get from 512-bit `vpdpbusd` alone, each at once: a batched
    // product cannot beat it (64 multiply-adds per instruction).
    let peak = peak_vpdpbusd();
    if !as_json {
        if let Some(p) = peak {
            println!("vpdpbusd peak: {:.0} G multiply-adds/s on {threads} threads (512-bit, no loads)", p / 1e9);
        }
        print!("{:<6} {:<9} {:>10} {:>2}", "format", "scales", "shape", "n");
        for k in &all {
            print!(" {:>16}", format!("{} ms", k.name()));
        }
        if peak.is_some() {
            print!(" {:>9}", "% of peak");
        }
        println!("   (speed-up over scalar; {threads} threads, median of {reps})");
    }
    // "row": every block of a row shares one scale, as BitNet converters write them (the SIMD
    // kernels factor it out); "block": each block its own (the per-block path). I2_S blocks
    // have no scale. "token": row scales, with activations scaled per token
    // (`--act-scales token`) instead of per 256 values.
    let cases = [
        (TernaryFormat::TQ2_0, "row"),
        (TernaryFormat::TQ2_0, "token"),
        (TernaryFormat::TQ2_0, "block"),
        (TernaryFormat::TQ1_0, "row"),
        (TernaryFormat::TQ1_0, "token"),
        (TernaryFormat::TQ1_0, "block"),
        (TernaryFormat::I2S, "tensor"),
        (TernaryFormat::I2S, "token"),
    ];
    for (format, scaling) in cases {
        if only.is_some_and(|o| !o.eq_ignore_ascii_case(&format!("{format:?}:{scaling}"))) {
            continue;
        }
        for &(rows, cols) in &shapes {
            if shape.is_some_and(|s| s != format!("{rows}x{cols}")) {
                continue;
            }
            let mut next = xorshift(0x9e3779b97f4a7c15u64);
            let values: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
            let scales: Vec<f32> = (0..rows * cols / format.block_len())
                .map(|b| if scaling == "block" && b % 2 == 1 { 0.5 + 1.0 / 1024.0 } else { 0.5 })
                .collect();
            let bytes = formats::encode_matrix(format, rows, cols, &values, &scales);
            let m =
                TernaryMatrix::new(format, rows, cols, WeightBytes::Owned(Arc::new(bytes))).map_err(|e| anyhow::anyhow!(e.0))?;
            for &n in tokens {
                let x: Vec<f32> = (0..n * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
                let q = if scaling == "token" {
                    QuantizedActivations::quantize_per_token(&x, n, cols)
                } else {
                    QuantizedActivations::quantize(&x, n, cols)
                };
                let mut out = vec![0f32; rows * n];
                let mut time =
                    |k: &dyn kernels::TernaryKernel| median_time(reps, || m.matmul(k, &q, &mut out)).as_secs_f64() * 1e3;
                let times: Vec<f64> = all.iter().map(|k| time(*k)).collect();
                // The AVX-512 kernel's multiply-adds per second over the instruction's peak.
                let share = peak.zip(all.iter().position(|k| k.name() == "avx512vnni")).map(|(p, i)| {
                    let rate = (rows * cols * n) as f64 / (times[i] / 1e3);
                    100.0 * rate / p
                });
                if as_json {
                    rows_out.push(json!({"format": format!("{format:?}"), "scales": scaling, "rows": rows, "cols": cols, "tokens": n,
                        "ms": all.iter().zip(&times).map(|(k, t)| (k.name().to_string(), json!(t))).collect::<serde_json::Map<_, _>>(),
                        "avx512vnni_share_of_vpdpbusd_peak": share.map(|s| s / 100.0)}));
                } else {
                    print!("{:<6} {scaling:<9} {:>10} {n:>2}", format!("{format:?}"), format!("{rows}x{cols}"));
                    for t in &times {
                        print!(" {:>8.3} ({:>4.1}x)", t, times[0] / t);
                    }
                    if let Some(s) = share {
                        print!(" {s:>8.0}%");
                    }
                    println!();
                }
            }
        }
    }
    if as_json {
        println!("{}", serde_json::Value::Array(rows_out));
    }
    Ok(())
}

/// The summed `vpdpbusd` peak of the pool's threads, each measuring at the same time (the
/// same contention as the kernels' parallel passes); `None` without AVX-512 VNNI.
fn peak_vpdpbusd() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use shard_oracle::engine::kernels::x86::Avx512Vnni;
        rayon::broadcast(|_| Avx512Vnni::vpdpbusd_peak(0.3)).into_iter().sum()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

fn bench_dense(tokens: &[usize], reps: usize, threads: usize, as_json: bool) -> anyhow::Result<()> {
    use rayon::prelude::*;
    use shard_oracle::engine::kernels::dense::{dot_f16, DenseMatrix, DenseType, F16Path};
    // The default pair's tied output layer and draft FFN, 2B-4T's attention and FFN, then
    // output layers too big for any cache: SmolLM2's 49k vocabulary (the bench file's) and
    // Llama 3's 128k (bitnet-b1.58-2B-4T's tied embedding), where memory is the limit.
    let shapes = [(6144usize, 256usize), (640, 256), (2560, 2560), (6912, 2560), (49152, 2560), (128256, 2560)];
    let bandwidth = read_bandwidth();
    let mut rows_out = vec![];
    if !as_json {
        println!(
            "{:>11} {:>2} {:>12} {:>14} {:>10} {:>8} {:>18}   ({threads} threads, median of {reps}; read bandwidth {:.1} GB/s; tiles {:?})",
            "shape",
            "n",
            "row dots ms",
            "avx2 tiles ms",
            "tiled ms",
            "ratio",
            "tiled GB/s (share)",
            bandwidth / 1e9,
            F16Path::best()
        );
    }
    for &(rows, cols) in &shapes {
        let mut next = xorshift(0x2545f4914f6cdd1du64);
        let bytes: Vec<u8> =
            (0..rows * cols).flat_map(|_| half::f16::from_f32((next() % 2001) as f32 / 4000.0 - 0.25).to_le_bytes()).collect();
        let m = DenseMatrix::new(DenseType::F16, rows, cols, WeightBytes::Owned(Arc::new(bytes)))
            .map_err(|e| anyhow::anyhow!(e.0))?;
        for &n in tokens {
            let x: Vec<f32> = (0..n * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let mut out = vec![0f32; rows * n];
            // The reference: one dot product per row and token, rows split across threads.
            let row_dots = |out: &mut [f32]| {
                out[..rows].par_chunks_mut(rows.div_ceil(threads * 4)).enumerate().for_each(|(i, chunk)| {
                    let first = i * rows.div_ceil(threads * 4);
                    for (k, o) in chunk.iter_mut().enumerate() {
                        let r = first + k;
                        *o = dot_f16(m.row_bytes(r), &x[..cols]);
                    }
                });
                for t in 1..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    out[t * rows..(t + 1) * rows].par_iter_mut().enumerate().for_each(|(r, o)| {
                        *o = dot_f16(m.row_bytes(r), xt);
                    });
                }
            };
            let mut time = |f: &mut dyn FnMut(&mut [f32])| median_time(reps, || f(&mut out)).as_secs_f64() * 1e3;
            let reference = time(&mut |o| row_dots(o));
            // The AVX2 tiles beside the best path (the same bits), then the best path.
            let avx2 = time(&mut |o| m.matmul_on(F16Path::Avx2, &x, n, o));
            let tiled = time(&mut |o| m.matmul(&x, n, o));
            let gb_s = (rows * cols * 2) as f64 / (tiled / 1e3);
            if as_json {
                rows_out.push(json!({"rows": rows, "cols": cols, "tokens": n, "row_dots_ms": reference, "avx2_tiles_ms": avx2,
                    "tiled_ms": tiled, "tiled_path": format!("{:?}", F16Path::best()),
                    "tiled_gb_s": gb_s / 1e9, "read_bandwidth_gb_s": bandwidth / 1e9}));
            } else {
                println!(
                    "{:>11} {n:>2} {reference:>12.3} {avx2:>14.3} {tiled:>10.3} {:>7.2}x {:>10.1} ({:>4.0}%)",
                    format!("{rows}x{cols}"),
                    reference / tiled,
                    gb_s / 1e9,
                    100.0 * gb_s / bandwidth
                );
            }
        }
    }
    if as_json {
        println!("{}", serde_json::Value::Array(rows_out));
    }
    Ok(())
}
