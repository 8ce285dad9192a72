//! `shard-bench`: timings of Shard's engine, printed as a table (and JSON for scripts).
//!
//! * `shard-bench model FILE`: decode tokens/s, and the time of one forward pass of
//!   k = 1, 2, 4, 8 new tokens after a context (what speculative verification costs).
//! * `shard-bench kernels`: every available ternary kernel against the scalar reference on
//!   bitnet-b1.58-2B-4T's matrix shapes, as a ratio.
//!
//! `scripts/bench.sh` runs the model benchmark side by side with llama.cpp on the same file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use shard_oracle::engine::kernels::{
    self, formats, KernelChoice, QuantizedActivations, TernaryFormat, TernaryMatrix, WeightBytes,
};
use shard_oracle::engine::model::Logits;
use shard_oracle::engine::{Engine, LoadOptions};
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
        /// Tokens of context before the timed passes.
        #[arg(long, default_value_t = 64)]
        context: usize,
        /// Tokens to decode for the tokens/s figure.
        #[arg(long, default_value_t = 32)]
        decode: usize,
        /// Repetitions of each k-token pass (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Every kernel against the scalar reference.
    Kernels {
        /// Tokens per product (1 = decoding; more = batched verification).
        #[arg(long, default_values_t = [1usize, 8])]
        tokens: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
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
        Cmd::Model { model, kernel, context, decode, reps } => {
            bench_model(model, kernel, context, decode, reps, threads, args.json)
        }
        Cmd::Kernels { tokens, reps } => bench_kernels(&tokens, reps, threads, args.json),
    }
}

fn bench_model(
    path: PathBuf,
    kernel: KernelChoice,
    context: usize,
    decode: usize,
    reps: usize,
    threads: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let kernel = kernels::select(kernel).map_err(anyhow::Error::msg)?;
    let t0 = Instant::now();
    let engine = Engine::load(&path, &LoadOptions { kernel, n_ctx: context + decode + 16, alias: None }, |_, _| {})?;
    let load = t0.elapsed();
    let m = &engine.model;
    let n_vocab = m.config.n_vocab as u32;
    let prompt: Vec<u32> = (0..context as u32).map(|i| (i * 7919 + 13) % n_vocab).collect();
    let mut cache = m.new_cache(engine.n_ctx);

    let t = Instant::now();
    let mut logits = m.forward(kernel, &prompt, &mut cache, Logits::Last);
    let prompt_time = t.elapsed();

    // k-token passes after the context, rolled back each time (as verification does).
    let mut k_times = vec![];
    for k in [1usize, 2, 4, 8] {
        let toks: Vec<u32> = (0..k as u32).map(|i| (i * 31 + 5) % n_vocab).collect();
        let mut times = vec![];
        for _ in 0..reps.max(1) + 1 {
            let t = Instant::now();
            std::hint::black_box(m.forward(kernel, &toks, &mut cache, Logits::All));
            times.push(t.elapsed());
            cache.truncate(context);
        }
        times.remove(0); // warm-up
        k_times.push((k, median(times)));
    }

    let t = Instant::now();
    for _ in 0..decode {
        let next = argmax(&logits);
        logits = m.forward(kernel, &[next], &mut cache, Logits::Last);
    }
    let decode_time = t.elapsed();
    let tok_s = decode as f64 / decode_time.as_secs_f64();
    let pp_tok_s = context as f64 / prompt_time.as_secs_f64();

    if as_json {
        println!(
            "{}",
            json!({
                "engine": "shard", "kernel": kernel.name(), "threads": threads, "load_s": load.as_secs_f64(),
                "prompt_tok_s": pp_tok_s, "decode_tok_s": tok_s,
                "forward_ms": k_times.iter().map(|(k, d)| (k.to_string(), json!(d.as_secs_f64() * 1e3))).collect::<serde_json::Map<_, _>>(),
            })
        );
    } else {
        println!(
            "model {} ({} layers, {} embd), kernel {}, {threads} threads",
            path.display(),
            m.config.n_layer,
            m.config.n_embd,
            kernel.name()
        );
        println!("load            {:>10.2} s", load.as_secs_f64());
        println!("prompt ({context:>3} tok) {:>8.1} tok/s", pp_tok_s);
        println!("decode          {:>10.2} tok/s", tok_s);
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

fn bench_kernels(tokens: &[usize], reps: usize, threads: usize, as_json: bool) -> anyhow::Result<()> {
    // bitnet-b1.58-2B-4T: attention 2560x2560, FFN up/gate 6912x2560, FFN down 2560x6912.
    let shapes = [(2560usize, 2560usize), (6912, 2560), (2560, 6912)];
    let all = kernels::available();
    let mut rows_out = vec![];
    if !as_json {
        print!("{:<6} {:>10} {:>2}", "format", "shape", "n");
        for k in &all {
            print!(" {:>16}", format!("{} ms", k.name()));
        }
        println!("   (speed-up over scalar; {threads} threads, median of {reps})");
    }
    for format in [TernaryFormat::TQ2_0, TernaryFormat::TQ1_0, TernaryFormat::I2S] {
        for &(rows, cols) in &shapes {
            let mut s = 0x9e3779b97f4a7c15u64;
            let mut next = move || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let values: Vec<i8> = (0..rows * cols).map(|_| (next() % 3) as i8 - 1).collect();
            let scales = vec![0.5f32; rows * cols / format.block_len()];
            let bytes = formats::encode_matrix(format, rows, cols, &values, &scales);
            let m =
                TernaryMatrix::new(format, rows, cols, WeightBytes::Owned(Arc::new(bytes))).map_err(|e| anyhow::anyhow!(e.0))?;
            for &n in tokens {
                let x: Vec<f32> = (0..n * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
                let q = QuantizedActivations::quantize(&x, n, cols);
                let mut out = vec![0f32; rows * n];
                let mut time = |k: &dyn kernels::TernaryKernel| {
                    let mut v = vec![];
                    for _ in 0..reps.max(1) + 1 {
                        let t = Instant::now();
                        m.matmul(k, &q, &mut out);
                        v.push(t.elapsed());
                    }
                    v.remove(0);
                    median(v).as_secs_f64() * 1e3
                };
                let times: Vec<f64> = all.iter().map(|k| time(*k)).collect();
                if as_json {
                    rows_out.push(json!({"format": format!("{format:?}"), "rows": rows, "cols": cols, "tokens": n,
                        "ms": all.iter().zip(&times).map(|(k, t)| (k.name().to_string(), json!(t))).collect::<serde_json::Map<_, _>>()}));
                } else {
                    print!("{:<6} {:>10} {n:>2}", format!("{format:?}"), format!("{rows}x{cols}"));
                    for t in &times {
                        print!(" {:>8.3} ({:>4.1}x)", t, times[0] / t);
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
