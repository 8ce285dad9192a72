//! Counters of the speculative decoder, for `/metrics` and per-request usage.

use std::sync::atomic::{AtomicU64, Ordering};

use super::adaptive::Costs;

/// Process-wide totals (Prometheus counters).
#[derive(Debug, Default)]
pub struct SpecMetrics {
    pub drafted_tokens: AtomicU64,
    pub accepted_tokens: AtomicU64,
    pub verifications: AtomicU64,
    /// Forward passes of the target while decoding (verifications and plain steps).
    pub target_passes: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Decoding time, in microseconds.
    pub decode_micros: AtomicU64,
    /// Time of one plain single-token step of the target, in microseconds (calibrated).
    pub single_step_micros: AtomicU64,
    /// What pacing measured for the in-process draft, in nanoseconds (0: not measured).
    pub pace_step_nanos: AtomicU64,
    pub pace_verify_extra_nanos: AtomicU64,
    pub pace_draft_nanos: AtomicU64,
}

/// One request's share.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpecStats {
    pub drafted: usize,
    pub accepted: usize,
    pub verifications: usize,
    pub target_passes: usize,
}

impl SpecStats {
    pub fn acceptance_rate(&self) -> Option<f64> {
        (self.drafted > 0).then(|| self.accepted as f64 / self.drafted as f64)
    }
}

impl SpecMetrics {
    pub fn record(&self, s: &SpecStats, generated: usize, decode_micros: u64) {
        self.drafted_tokens.fetch_add(s.drafted as u64, Ordering::Relaxed);
        self.accepted_tokens.fetch_add(s.accepted as u64, Ordering::Relaxed);
        self.verifications.fetch_add(s.verifications as u64, Ordering::Relaxed);
        self.target_passes.fetch_add(s.target_passes as u64, Ordering::Relaxed);
        self.generated_tokens.fetch_add(generated as u64, Ordering::Relaxed);
        self.decode_micros.fetch_add(decode_micros, Ordering::Relaxed);
    }

    /// Publishes what pacing has measured.
    pub fn set_pace(&self, c: &Costs) {
        let nanos = |ms: f64| (ms * 1e6).round() as u64;
        self.pace_step_nanos.store(nanos(c.step_ms), Ordering::Relaxed);
        self.pace_verify_extra_nanos.store(nanos(c.extra_per_token_ms), Ordering::Relaxed);
        self.pace_draft_nanos.store(nanos(c.draft_per_token_ms), Ordering::Relaxed);
    }

    /// Decoding speed over the speed of plain one-token steps (1 without speculation).
    pub fn speedup(&self) -> Option<f64> {
        let (tokens, micros, single) = (
            self.generated_tokens.load(Ordering::Relaxed),
            self.decode_micros.load(Ordering::Relaxed),
            self.single_step_micros.load(Ordering::Relaxed),
        );
        (tokens > 0 && micros > 0 && single > 0).then(|| tokens as f64 * single as f64 / micros as f64)
    }

    /// Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counters = [
            ("shard_spec_drafted_tokens_total", "Tokens proposed by drafts.", &self.drafted_tokens),
            ("shard_spec_accepted_tokens_total", "Drafted tokens the target accepted.", &self.accepted_tokens),
            ("shard_spec_verifications_total", "Forward passes that verified a draft.", &self.verifications),
            ("shard_target_passes_total", "Target forward passes while decoding.", &self.target_passes),
            ("shard_generated_tokens_total", "Tokens generated.", &self.generated_tokens),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        let drafted = self.drafted_tokens.load(Ordering::Relaxed);
        let accepted = self.accepted_tokens.load(Ordering::Relaxed);
        let verifications = self.verifications.load(Ordering::Relaxed);
        let passes = self.target_passes.load(Ordering::Relaxed);
        let generated = self.generated_tokens.load(Ordering::Relaxed);
        let gauges = [
            (
                "shard_spec_acceptance_rate",
                "Share of drafted tokens accepted.",
                (drafted > 0).then(|| accepted as f64 / drafted as f64),
            ),
            (
                "shard_spec_tokens_per_verification",
                "Tokens gained per verifying pass (accepted drafts plus the target's own).",
                (verifications > 0).then(|| (accepted + verifications) as f64 / verifications as f64),
            ),
            (
                "shard_tokens_per_target_pass",
                "Generated tokens per target forward pass.",
                (passes > 0).then(|| generated as f64 / passes as f64),
            ),
            ("shard_spec_speedup", "Decoding speed relative to plain one-token steps.", self.speedup()),
        ];
        let ms = |v: &AtomicU64| Some(v.load(Ordering::Relaxed) as f64 / 1e6);
        let pace = [
            (
                "shard_spec_pace_step_ms",
                "Paced in-process drafting: one plain target step, as measured.",
                ms(&self.pace_step_nanos),
            ),
            (
                "shard_spec_pace_verify_extra_ms",
                "Paced in-process drafting: verification time per drafted token beyond a step.",
                ms(&self.pace_verify_extra_nanos),
            ),
            ("shard_spec_pace_draft_ms", "Paced in-process drafting: time to draft one token.", ms(&self.pace_draft_nanos)),
        ];
        let gauges = gauges.into_iter().chain(pace);
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", v.unwrap_or(0.0));
        }
    }
}
