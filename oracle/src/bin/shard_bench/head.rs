//! `shard-bench head`: the output layer three ways on output layers of real vocabulary sizes.
//!
//! The exact F16 product (the default), the opt-in int8 copy (`--head int8`, logits a little
//! off) and the int8 screen (`--head screened`), which gives the exact product's argmax and
//! so serves greedy rows: its cost depends on how many rows it cannot rule out, so this
//! prints that too. Two kinds of token: random activations (many logits crowd the top, the
//! screen's worst case) and activations that lean towards one row, as a trained model's
//! final hidden state leans towards the token it predicts.

use std::sync::Arc;

use super::median_time;
use shard_oracle::engine::kernels::dense::{DenseMatrix, DenseType};
use shard_oracle::engine::kernels::int8_rows::Int8Rows;
use shard_oracle::engine::kernels::screen::ArgmaxScreen;
use shard_oracle::engine::kernels::WeightBytes;

pub fn run(tokens: &[usize], reps: usize, threads: usize) -> anyhow::Result<()> {
    println!("| shape | tokens | activations | exact F16 ms | int8 ms | screened ms | exact / screened | exact rows a token |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for (rows, cols) in [(49152usize, 2560usize), (128256, 2560)] {
        let mut next = super::xorshift(0x2545f4914f6cdd1d ^ rows as u64);
        let mut uniform = move || (next() % 2_000_001) as f32 / 1e6 - 1.0;
        let values: Vec<f32> = (0..rows * cols).map(|_| uniform() * 0.05).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let m = DenseMatrix::new(DenseType::F16, rows, cols, WeightBytes::Owned(Arc::new(bytes)))
            .map_err(|e| anyhow::anyhow!(e.0))?;
        let int8 = Int8Rows::from_dense(&m);
        let screen = ArgmaxScreen::from_dense(&m);
        for &n in tokens {
            for leaning in [false, true] {
                // F16-rounded, as the model hands them to an F16 layer.
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| {
                        let toward = if leaning { 40.0 * values[(i / cols * 7919 % rows) * cols + i % cols] } else { 0.0 };
                        half::f16::from_f32(uniform() + toward).to_f32()
                    })
                    .collect();
                let mut out = vec![0f32; rows * n];
                let exact = median_time(reps, || m.matmul(&x, n, &mut out)).as_secs_f64() * 1e3;
                let q = median_time(reps, || int8.matmul(&x, n, &mut out)).as_secs_f64() * 1e3;
                let mut stats = Default::default();
                let screened = median_time(reps, || stats = screen.argmax_logits(&m, &x, n, &mut out)).as_secs_f64() * 1e3;
                println!(
                    "| {rows}x{cols} | {n} | {} | {exact:.2} | {q:.2} | {screened:.2} | {:.2}x | {:.0} |",
                    if leaning { "leaning to one row" } else { "random" },
                    exact / screened,
                    stats.candidates as f64 / n as f64
                );
            }
        }
    }
    println!("({threads} threads, median of {reps})");
    Ok(())
}
