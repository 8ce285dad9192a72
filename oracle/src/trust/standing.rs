//! A Scout's standing: what its golden tickets say about it, and what follows.
//!
//! * **The sequential test.** Each counted position of a ticket is one Bernoulli trial: did the
//!   Scout follow the reference? An honest Scout disagrees at a rate at most
//!   `honest_disagreement` (float noise on near-ties that the tie margin did not catch), a
//!   liar worth banning at `liar_disagreement` or more. The log-likelihood ratio of the two
//!   is summed as a CUSUM (never below zero), so good history cannot be banked against later
//!   lies, and a ban needs its threshold crossed *and* at least `min_failed_tickets` failed
//!   tickets: one bad ticket never bans.
//! * **Bans** grow with repeat offences (1 h, 6 h, 24 h, 7 d by default). A ban forfeits the
//!   Scout's credits, held or not, and the Scout comes back on probation.
//! * **Probation.** A new identity is checked on every job it answers, gets no Scout tier, and
//!   its credits are held until it has passed `probation_passes` tickets in a row (BOINC's
//!   rule). After that the ticket rate is `max(min_rate, 1 / consecutive passes)`, doubled while
//!   its acceptance is low (low acceptance alone never bans: it depends on the content).
//! * **Reputation** in [0, 1] blends ticket results, acceptance, latency and uptime, each a
//!   moving average that decays towards the prior with a half-life, and so recovers with good
//!   work.

use serde::{Deserialize, Serialize};

use super::agreement::Agreement;

/// The parameters (`docs/security/golden-tickets.md` has the measurements behind them).
#[derive(Debug, Clone, PartialEq)]
pub struct StandingRules {
    pub honest_disagreement: f64,
    /// The honest rate of decisive disagreements (see `agreement`), far below the rate of all
    /// disagreements, so that each weighs more.
    pub honest_decisive_disagreement: f64,
    pub liar_disagreement: f64,
    /// The CUSUM level that bans.
    pub ban_threshold: f64,
    pub min_failed_tickets: u32,
    /// Ban lengths in seconds, by offence; the last repeats.
    pub bans: Vec<u64>,
    pub probation_passes: u32,
    /// Share of answered jobs checked on probation.
    pub probation_rate: f64,
    /// Least share checked once trusted.
    pub min_rate: f64,
    /// Below this acceptance rate the ticket rate doubles.
    pub low_acceptance: f64,
    /// Half-life of reputation's pull towards the prior, in seconds.
    pub half_life_secs: f64,
    pub prior: f64,
    /// Least reputation for the Scout tier.
    pub tier_reputation: f64,
}

impl Default for StandingRules {
    fn default() -> Self {
        Self {
            honest_disagreement: 0.005,
            honest_decisive_disagreement: 0.0005,
            liar_disagreement: 0.06,
            ban_threshold: 10.0,
            min_failed_tickets: 2,
            bans: vec![3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600],
            probation_passes: 10,
            probation_rate: 1.0,
            min_rate: 0.02,
            low_acceptance: 0.1,
            half_life_secs: 3.0 * 24.0 * 3600.0,
            prior: 0.5,
            tier_reputation: 0.4,
        }
    }
}

impl StandingRules {
    /// The evidence one ticket adds for "liar" over "honest" (negative: for honest). A liar
    /// disagrees at `e1` whatever the margin; an honest Scout at `e0`, and decisively at
    /// `e0d` only.
    pub fn log_likelihood_ratio(&self, a: &Agreement) -> f64 {
        let (e0, e0d, e1) = (self.honest_disagreement, self.honest_decisive_disagreement, self.liar_disagreement);
        let decisive = a.decisive.min(a.disagreed());
        (a.disagreed() - decisive) as f64 * (e1 / e0).ln()
            + decisive as f64 * (e1 / e0d).ln()
            + a.agreed as f64 * ((1.0 - e1) / (1.0 - e0)).ln()
    }

    /// The disagreement rate at which the test's drift is zero: a Scout below it drifts away
    /// from a ban, one above it towards one, however long it takes.
    pub fn crossover(&self) -> f64 {
        let (e0, e1) = (self.honest_disagreement, self.liar_disagreement);
        let down = ((1.0 - e0) / (1.0 - e1)).ln();
        down / ((e1 / e0).ln() + down)
    }

    /// A ticket fails when its own evidence points to a liar; it is void when nothing in it
    /// could be judged.
    pub fn verdict(&self, a: &Agreement) -> Verdict {
        if a.counted == 0 {
            Verdict::Void
        } else if self.log_likelihood_ratio(a) > 0.0 {
            Verdict::Fail
        } else {
            Verdict::Pass
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Every position was a near-tie (or the proposal was empty): no evidence either way.
    Void,
}

/// What the scheduler measured of the Scout when the ticket was taken.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    /// Share of its proposed tokens the verifier accepted, if it proposed any.
    pub acceptance: Option<f64>,
    pub latency_ms: f64,
    pub connected_secs: u64,
}

/// Moving averages in [0, 1] and when they were last brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub tickets: f64,
    pub acceptance: f64,
    pub latency: f64,
    pub uptime: f64,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    pub cusum: f64,
    pub consecutive_passes: u32,
    /// Failed tickets since the CUSUM last stood at zero.
    pub recent_failures: u32,
    pub offences: u32,
    pub probation: bool,
    pub tickets_passed: u64,
    pub tickets_failed: u64,
    pub tickets_void: u64,
    pub scores: Scores,
}

/// What a ticket changed beyond the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The Scout is trusted now: its held credits are released.
    ProbationEnded,
    /// Banned until this unix second (its `offence`, from 0); its credits are forfeited.
    Banned {
        until: u64,
        offence: u32,
    },
}

impl Default for Standing {
    /// A new identity: on probation, its scores at the default prior.
    fn default() -> Self {
        Self::new(0, &StandingRules::default())
    }
}

impl Standing {
    pub fn new(now: u64, rules: &StandingRules) -> Self {
        let p = rules.prior;
        Self {
            cusum: 0.0,
            consecutive_passes: 0,
            recent_failures: 0,
            offences: 0,
            probation: true,
            tickets_passed: 0,
            tickets_failed: 0,
            tickets_void: 0,
            scores: Scores { tickets: p, acceptance: p, latency: p, uptime: p, at: now },
        }
    }

    /// The scores as of `now`: each pulled towards the prior by the time since their update.
    pub fn scores_at(&self, now: u64, rules: &StandingRules) -> Scores {
        let dt = now.saturating_sub(self.scores.at) as f64;
        let keep = 0.5f64.powf(dt / rules.half_life_secs);
        let pull = |x: f64| rules.prior + (x - rules.prior) * keep;
        let s = &self.scores;
        Scores {
            tickets: pull(s.tickets),
            acceptance: pull(s.acceptance),
            latency: pull(s.latency),
            uptime: pull(s.uptime),
            at: now,
        }
    }

    pub fn reputation(&self, now: u64, rules: &StandingRules) -> f64 {
        let s = self.scores_at(now, rules);
        (0.6 * s.tickets + 0.2 * s.acceptance + 0.1 * s.latency + 0.1 * s.uptime).clamp(0.0, 1.0)
    }

    /// The share of this Scout's answered jobs to check.
    pub fn ticket_rate(&self, acceptance: Option<f64>, rules: &StandingRules) -> f64 {
        let base =
            if self.probation { rules.probation_rate } else { (1.0 / self.consecutive_passes.max(1) as f64).max(rules.min_rate) };
        let factor = if acceptance.is_some_and(|a| a < rules.low_acceptance) { 2.0 } else { 1.0 };
        (base * factor).clamp(0.0, 1.0)
    }

    /// Takes one ticket's result into account.
    pub fn record(&mut self, a: &Agreement, observed: &Observed, now: u64, rules: &StandingRules) -> (Verdict, Change) {
        let verdict = rules.verdict(a);
        let mut s = self.scores_at(now, rules);
        let ema = |x: &mut f64, v: f64, w: f64| *x += w * (v - *x);
        if let Some(acc) = observed.acceptance {
            ema(&mut s.acceptance, acc.clamp(0.0, 1.0), 0.2);
        }
        ema(&mut s.latency, 1.0 / (1.0 + observed.latency_ms.max(0.0) / 500.0), 0.2);
        ema(&mut s.uptime, (observed.connected_secs as f64 / 3600.0).min(1.0), 0.2);
        match verdict {
            Verdict::Void => self.tickets_void += 1,
            Verdict::Pass => {
                self.tickets_passed += 1;
                self.consecutive_passes += 1;
                ema(&mut s.tickets, 1.0, 0.2);
            }
            Verdict::Fail => {
                self.tickets_failed += 1;
                self.consecutive_passes = 0;
                self.recent_failures += 1;
                s.tickets *= 0.5;
            }
        }
        self.scores = s;
        if verdict == Verdict::Void {
            return (verdict, Change::None);
        }
        self.cusum = (self.cusum + rules.log_likelihood_ratio(a)).max(0.0);
        if self.cusum == 0.0 {
            self.recent_failures = 0;
        }
        if self.cusum >= rules.ban_threshold && self.recent_failures >= rules.min_failed_tickets {
            let offence = self.offences;
            let secs = rules.bans.get(offence as usize).or(rules.bans.last()).copied().unwrap_or(3600);
            self.offences += 1;
            self.cusum = 0.0;
            self.recent_failures = 0;
            self.consecutive_passes = 0;
            self.probation = true;
            return (verdict, Change::Banned { until: now + secs, offence });
        }
        if self.probation && self.consecutive_passes >= rules.probation_passes {
            self.probation = false;
            return (verdict, Change::ProbationEnded);
        }
        (verdict, Change::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticket whose disagreements are all plain (within the decisive margin).
    fn ticket(counted: u32, agreed: u32) -> Agreement {
        Agreement { positions: counted, counted, agreed, decisive: 0 }
    }

    #[test]
    fn one_bad_ticket_never_bans_but_a_run_of_them_does() {
        let rules = StandingRules::default();
        let mut st = Standing::new(0, &rules);
        let obs = Observed::default();
        // Random tokens: every position disagrees.
        let (v, c) = st.record(&ticket(8, 0), &obs, 10, &rules);
        assert_eq!((v, c), (Verdict::Fail, Change::None), "one ticket, however bad, does not ban");
        let (_, c) = st.record(&ticket(8, 0), &obs, 20, &rules);
        assert_eq!(c, Change::Banned { until: 20 + 3600, offence: 0 });
        assert!(st.probation);
        // Repeat offences ban for longer.
        st.record(&ticket(8, 0), &obs, 30, &rules);
        let (_, c) = st.record(&ticket(8, 0), &obs, 40, &rules);
        assert_eq!(c, Change::Banned { until: 40 + 6 * 3600, offence: 1 });
    }

    #[test]
    fn decisive_disagreements_weigh_more() {
        let rules = StandingRules::default();
        let obs = Observed::default();
        // Two tickets with two disagreements in six positions each: plain ones stay below the
        // ban threshold, decisive ones (which no float noise explains) cross it.
        let plain = ticket(6, 4);
        let decisive = Agreement { decisive: 2, ..plain };
        assert!(rules.log_likelihood_ratio(&decisive) > rules.log_likelihood_ratio(&plain));
        let mut a = Standing::new(0, &rules);
        let mut b = Standing::new(0, &rules);
        for n in 0..2 {
            assert_eq!(a.record(&plain, &obs, n, &rules).1, Change::None);
            b.record(&decisive, &obs, n, &rules);
        }
        assert!(matches!(b.record(&ticket(6, 6), &obs, 2, &rules).1, Change::None));
        assert_eq!(b.offences, 1, "two decisive tickets ban");
        assert_eq!(a.offences, 0);
    }

    #[test]
    fn honest_scouts_leave_probation_and_rare_noise_does_not_accumulate() {
        let rules = StandingRules::default();
        let mut st = Standing::new(0, &rules);
        let obs = Observed { acceptance: Some(0.7), latency_ms: 100.0, connected_secs: 600 };
        let r0 = st.reputation(0, &rules);
        for n in 0..rules.probation_passes {
            let (v, c) = st.record(&ticket(8, 8), &obs, n as u64, &rules);
            assert_eq!(v, Verdict::Pass);
            assert_eq!(c == Change::ProbationEnded, n + 1 == rules.probation_passes);
        }
        assert!(!st.probation && st.reputation(10, &rules) > r0);
        assert!(st.ticket_rate(Some(0.7), &rules) <= 0.1);
        // A noisy position now and then, among good ones, never reaches a ban.
        for n in 0..10_000u64 {
            let a = if n % 50 == 0 { ticket(8, 7) } else { ticket(8, 8) };
            assert!(!matches!(st.record(&a, &obs, 100 + n, &rules).1, Change::Banned { .. }));
        }
        // Low acceptance raises the rate, never the verdict.
        assert!(st.ticket_rate(Some(0.01), &rules) > st.ticket_rate(Some(0.7), &rules));
    }

    #[test]
    fn reputation_decays_towards_the_prior() {
        let rules = StandingRules::default();
        let mut st = Standing::new(0, &rules);
        for n in 0..30 {
            st.record(&ticket(8, 8), &Observed { acceptance: Some(1.0), latency_ms: 0.0, connected_secs: 7200 }, n, &rules);
        }
        let high = st.reputation(30, &rules);
        let later = st.reputation(30 + rules.half_life_secs as u64, &rules);
        assert!(high > 0.9, "{high}");
        assert!((later - (rules.prior + (high - rules.prior) / 2.0)).abs() < 1e-6, "{high} {later}");
    }

    #[test]
    fn void_tickets_say_nothing() {
        let rules = StandingRules::default();
        let mut st = Standing::new(0, &rules);
        for n in 0..100 {
            assert_eq!(st.record(&ticket(0, 0), &Observed::default(), n, &rules), (Verdict::Void, Change::None));
        }
        assert_eq!((st.tickets_void, st.cusum, st.probation), (100, 0.0, true));
    }
}
