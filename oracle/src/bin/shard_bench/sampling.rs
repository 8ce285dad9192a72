//! `shard-bench sampling`: what a sampled token costs the Oracle besides its forward pass.
//!
//! Without top-k, every sampled token sorts the whole vocabulary into the order its
//! distribution is drawn in, and a sampled verification does so for every row it checks. This
//! times that sort both ways in one run (the comparison sort it replaced, and the radix sort
//! `Sampler::distribution` now uses, which give the same order), the whole distribution, and
//! a verification's nine rows built one at a time against `accept::target_distributions`,
//! which builds them on the kernels' threads.

use std::time::Duration;

use super::median_time as time;
use shard_oracle::spec::accept::target_distributions;
use shard_shared::sampling::{most_likely_first, sort_most_likely_first, Sampler, SamplingParams};

/// Logits shaped like a language model's: most near the bottom, a few far above.
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut next = super::xorshift(seed);
    (0..n)
        .map(|_| {
            let u: f32 = (0..4).map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32).sum();
            (u - 2.0) * 4.0 + if next() % 1000 == 0 { 12.0 } else { 0.0 }
        })
        .collect()
}

pub fn run(vocabs: &[usize], reps: usize) {
    println!(
        "| vocabulary | comparison sort ms | radix sort ms | speed-up | distribution ms (T 0.8) | with top_p 0.95 | \
         9 rows one at a time ms | 9 rows in parallel ms | speed-up |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in vocabs {
        let l = logits(n, 0x5eed ^ n as u64);
        let cand: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &v)| (i as u32, v / 0.8)).collect();
        let (mut a, mut b) = (cand.clone(), cand.clone());
        let comparison = time(reps, || {
            a.copy_from_slice(&cand);
            a.sort_unstable_by(most_likely_first);
        });
        let radix = time(reps, || {
            b.copy_from_slice(&cand);
            sort_most_likely_first(&mut b);
        });
        assert!(a.iter().zip(&b).all(|(x, y)| x.0 == y.0), "the two sorts disagree");
        let sampler = |top_p| Sampler::new(SamplingParams { temperature: 0.8, top_p, ..SamplingParams::default() }, 1);
        let (all, nucleus) = (sampler(1.0), sampler(0.95));
        let whole = time(reps, || {
            std::hint::black_box(all.distribution(&l, &[]));
        });
        let cut = time(reps, || {
            std::hint::black_box(nucleus.distribution(&l, &[]));
        });
        // A sampled verification of eight drafted tokens: nine rows, each after one more
        // drafted token.
        let rows: Vec<f32> = (0..9).flat_map(|r| logits(n, 0xa11 + r)).collect();
        let draft: Vec<u32> = (0..8).map(|i| i * 101 % n as u32).collect();
        let serial = time(reps, || {
            let mut history = vec![];
            for (i, row) in rows.chunks_exact(n).enumerate() {
                std::hint::black_box(all.distribution(row, &history));
                if let Some(&d) = draft.get(i) {
                    history.push(d);
                }
            }
        });
        let parallel = time(reps, || {
            std::hint::black_box(target_distributions(&all, &rows, n, &[], &draft));
        });
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {n} | {:.3} | {:.3} | {:.2}× | {:.3} | {:.3} | {:.3} | {:.3} | {:.2}× |",
            ms(comparison),
            ms(radix),
            comparison.as_secs_f64() / radix.as_secs_f64(),
            ms(whole),
            ms(cut),
            ms(serial),
            ms(parallel),
            serial.as_secs_f64() / parallel.as_secs_f64()
        );
    }
}
