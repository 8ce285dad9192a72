//! Drafting speed of the default draft model on burn's two CPU backends, side by side: greedy
//! drafting of 16 tokens after a 39-token context, after one warm-up round.
//! `cargo run --release -p shard-scout --example draft_speed [MODEL.gguf]`
use std::time::Instant;

use shard_scout::{cpu_device, flex_device, DraftModel, Drafter};
use shard_shared::sampling::SamplingParams;

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "models/shard-draft-llama-f16.gguf".into());
    let bytes = std::fs::read(&path).expect("read the model");
    let greedy = SamplingParams::greedy();
    let ctx: Vec<u32> = (1..40).collect();
    println!("| backend | ms / 16 tokens | tok/s |\n|---|---|---|");
    let mut results = vec![];
    for (name, device) in [("ndarray", cpu_device()), ("flex", flex_device())] {
        let mut d = Drafter::new(DraftModel::from_gguf(&bytes, &device).expect("load"));
        let mut best = f64::MAX;
        let mut tokens = vec![];
        for _ in 0..4 {
            let t = Instant::now();
            tokens = futures::executor::block_on(d.propose(&ctx, 16, &greedy, 0)).unwrap().tokens;
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("| {name} | {best:.1} | {:.0} |", 16e3 / best);
        results.push((best, tokens));
    }
    assert_eq!(results[0].1, results[1].1, "both backends draft the same tokens");
    println!("flex / ndarray speed: {:.2}x", results[0].0 / results[1].0);
}
