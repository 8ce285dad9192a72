//! What the step scheduler measures: active slots, tokens per step, step time, time to first
//! token and inter-token latency (p50 and p99 over a recent window), for `/metrics` and
//! `/api/swarm`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use crate::engine::kv_cache::{KvPool, PAGE};

/// Latency samples kept for the percentiles.
const WINDOW: usize = 4096;

/// The most recent [`WINDOW`] samples of one latency, in microseconds.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: Mutex<VecDeque<u64>>,
}

impl LatencyWindow {
    pub fn record(&self, micros: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == WINDOW {
            s.pop_front();
        }
        s.push_back(micros);
    }

    /// The `q` quantile (0..=1) in milliseconds, by the nearest-rank method; `None` before
    /// any sample.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut v: Vec<u64> = self.samples.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1] as f64 / 1e3)
    }
}

/// Process-wide figures of the step loop.
#[derive(Debug, Default)]
pub struct StepMetrics {
    /// Slots (sequences decoded together at most: `--parallel`).
    pub slots: AtomicUsize,
    /// Sequences in the last pass.
    pub active: AtomicUsize,
    pub steps: AtomicU64,
    /// Tokens run through the model over all steps.
    pub step_tokens: AtomicU64,
    /// Time spent in passes, in microseconds.
    pub step_micros: AtomicU64,
    /// From submission to the first generated token.
    pub ttft: LatencyWindow,
    /// Between consecutive tokens of one request (tokens accepted together count 0).
    pub itl: LatencyWindow,
    /// The scheduler's KV page pool, read for its figures (set when the scheduler starts).
    pub kv_pool: OnceLock<Arc<KvPool>>,
}

/// What continuous batching is doing (`/api/swarm`'s `oracle.batch`).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StepSummary {
    /// Requests that may run at once (`--parallel`).
    pub slots: usize,
    /// Sequences in the last forward pass.
    pub active: usize,
    pub steps: u64,
    /// Mean tokens per pass.
    pub tokens_per_step: f64,
    /// Mean pass time, in milliseconds.
    pub step_ms: f64,
    /// Time to first token, from submission, over a recent window (null before any).
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    /// Inter-token latency over a recent window.
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    /// KV cache pages (of `kv_page_positions` positions each) held by requests now, the most
    /// held at once, and the cap (`--kv-cache-tokens`).
    pub kv_pages: usize,
    pub kv_pages_peak: usize,
    pub kv_pages_cap: usize,
    pub kv_page_positions: usize,
    /// Bytes of KV memory held now.
    pub kv_bytes: u64,
}

impl StepMetrics {
    pub fn record_step(&self, sequences: usize, tokens: usize, micros: u64) {
        self.active.store(sequences, Ordering::Relaxed);
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.step_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn summary(&self) -> StepSummary {
        let steps = self.steps.load(Ordering::Relaxed);
        let pool = self.kv_pool.get();
        let kv_pages = pool.map_or(0, |p| p.pages_out());
        let per_step = |v: u64| if steps == 0 { 0.0 } else { v as f64 / steps as f64 };
        StepSummary {
            slots: self.slots.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            steps,
            tokens_per_step: per_step(self.step_tokens.load(Ordering::Relaxed)),
            step_ms: per_step(self.step_micros.load(Ordering::Relaxed)) / 1e3,
            ttft_p50_ms: self.ttft.quantile_ms(0.5),
            ttft_p99_ms: self.ttft.quantile_ms(0.99),
            itl_p50_ms: self.itl.quantile_ms(0.5),
            itl_p99_ms: self.itl.quantile_ms(0.99),
            kv_pages,
            kv_pages_peak: pool.map_or(0, |p| p.peak_pages()),
            kv_pages_cap: pool.and_then(|p| p.cap_pages()).unwrap_or(0),
            kv_page_positions: PAGE,
            kv_bytes: (kv_pages * pool.map_or(0, |p| p.page_bytes())) as u64,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.summary();
        let gauges = [
            ("shard_slots", "Sequences decoded together at most (--parallel).", s.slots as f64),
            ("shard_active_slots", "Sequences in the last forward pass.", s.active as f64),
            ("shard_tokens_per_step", "Mean tokens per forward pass.", s.tokens_per_step),
            ("shard_step_seconds", "Mean forward pass time.", s.step_ms / 1e3),
            ("shard_kv_pages", "KV cache pages held by requests.", s.kv_pages as f64),
            ("shard_kv_pages_peak", "The most KV cache pages held at once.", s.kv_pages_peak as f64),
            ("shard_kv_pages_cap", "KV cache pages at most (--kv-cache-tokens).", s.kv_pages_cap as f64),
            ("shard_kv_bytes", "Bytes of KV cache held by requests.", s.kv_bytes as f64),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP shard_steps_total Forward passes of the step loop.\n# TYPE shard_steps_total counter\nshard_steps_total {}",
            s.steps
        );
        for (name, help, w) in [
            ("shard_time_to_first_token_seconds", "From submission to the first token (recent window).", &self.ttft),
            ("shard_inter_token_seconds", "Between consecutive tokens of a request (recent window).", &self.itl),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
            for q in [0.5, 0.99] {
                if let Some(ms) = w.quantile_ms(q) {
                    let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {}", ms / 1e3);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let w = LatencyWindow::default();
        assert_eq!(w.quantile_ms(0.5), None);
        for us in (1..=100).map(|i| i * 1000) {
            w.record(us);
        }
        assert_eq!(w.quantile_ms(0.5), Some(50.0));
        assert_eq!(w.quantile_ms(0.99), Some(99.0));
        for _ in 0..WINDOW {
            w.record(7000);
        }
        assert_eq!(w.quantile_ms(0.99), Some(7.0), "old samples leave the window");
    }
}
