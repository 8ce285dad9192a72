//! The draft length, adapted to the observed acceptance and, where drafting runs on the
//! Oracle's own cores, to what drafting and verifying measurably cost.
//!
//! With per-token acceptance rate α, the i-th drafted token is kept with probability about
//! α^i, while each extra drafted token adds a roughly fixed cost (drafting it and carrying it
//! through verification). So the draft is as long as α^k stays above that cost.
//!
//! [`Pace`] measures those costs instead of assuming them: a plain decoding step, the extra
//! time a verification pass takes per drafted token, and the time a drafted token takes to
//! make. [`DraftLength::choose`] then picks the k (0, plain decoding, included) with the most
//! expected tokens per millisecond. An in-process draft that is no cheaper than the target
//! (the default pair on a small CPU) is then mostly left idle instead of halving the speed.

#[derive(Debug, Clone)]
pub struct DraftLength {
    k_max: usize,
    /// Cost of one extra drafted token relative to a plain decoding step.
    marginal_cost: f64,
    /// Per-token acceptance α is `accepted / examined`: accepted drafted tokens over drafted
    /// tokens *examined*, both counts decayed so that the estimate follows the text.
    accepted: f64,
    examined: f64,
}

/// α assumed before any verification, held with the weight of this many examined tokens.
const ALPHA_PRIOR: f64 = 0.6;
const ALPHA_PRIOR_WEIGHT: f64 = 2.0;

/// Weight kept by the counts behind α at each verification.
const ALPHA_DECAY: f64 = 0.8;

impl DraftLength {
    pub fn new(k_max: usize, marginal_cost: f64) -> Self {
        Self { k_max: k_max.max(1), marginal_cost, accepted: ALPHA_PRIOR * ALPHA_PRIOR_WEIGHT, examined: ALPHA_PRIOR_WEIGHT }
    }

    /// The current estimate of the per-token acceptance rate.
    pub fn alpha(&self) -> f64 {
        self.accepted / self.examined
    }

    /// Tokens to draft next.
    pub fn k(&self) -> usize {
        let mut k = 1;
        let alpha = self.alpha();
        while k < self.k_max && alpha.powi(k as i32 + 1) > self.marginal_cost {
            k += 1;
        }
        k
    }

    /// The draft length with the most expected tokens per millisecond under `costs`: a pass
    /// with k drafted tokens yields 1 + α + … + α^k tokens and takes
    /// `step + k · (extra_per_token + draft_per_token)`. 0 means a plain decoding step.
    pub fn choose(&self, costs: &Costs) -> usize {
        let a = self.alpha().clamp(0.0, 0.999);
        let rate = |k: usize| {
            let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            tokens / (costs.step_ms + k as f64 * (costs.extra_per_token_ms + costs.draft_per_token_ms))
        };
        (0..=self.k_max).max_by(|&x, &y| rate(x).total_cmp(&rate(y)).then(y.cmp(&x))).unwrap_or(0)
    }

    /// Records one verification: `accepted` of `proposed` drafted tokens were kept.
    ///
    /// Verification stops at the first rejection, so the tokens after it were never
    /// examined: `accepted` successes in `accepted + 1` trials (or `accepted` trials when all
    /// were kept) is what a pass says about α. Dividing by `proposed` instead counts the
    /// unexamined tail as failures: at α = 0.8 and k = 8 it reads 0.42, which then picks
    /// drafts far too short.
    pub fn update(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        let accepted = accepted.min(proposed);
        let examined = accepted + usize::from(accepted < proposed);
        self.accepted = ALPHA_DECAY * self.accepted + accepted as f64;
        self.examined = ALPHA_DECAY * self.examined + examined as f64;
    }
}

/// Measured costs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// One plain decoding step of the target.
    pub step_ms: f64,
    /// What a verification pass takes beyond a step, per drafted token.
    pub extra_per_token_ms: f64,
    /// What one drafted token takes to make (zero where others draft).
    pub draft_per_token_ms: f64,
}

impl Costs {
    /// Whether any draft length beats plain decoding even if every drafted token is
    /// accepted: a pass of k drafts then yields k + 1 tokens, which beats k + 1 steps only
    /// when a drafted token costs less than a step.
    pub fn could_pay(&self) -> bool {
        self.extra_per_token_ms + self.draft_per_token_ms < self.step_ms
    }
}

/// A forward pass's time as a linear function of its tokens, `ms ≈ base + per_token · tokens`,
/// fitted by exponentially weighted least squares over recent decoding passes (plain steps
/// and verifications; a prompt chunk needs no logits for most of its tokens, so it would
/// price a drafted token too low). It prices a drafted token in a shared pass: it costs
/// `per_token` for everyone, while a plain step's share of the pass is `base / sequences +
/// per_token`.
#[derive(Debug, Clone, Default)]
pub struct PassCost {
    w: f64,
    t: f64,
    y: f64,
    tt: f64,
    ty: f64,
    /// The last fit the passes could tell: kept while every recent pass has had one size
    /// (steady plain decoding), which says nothing new about the per-token cost.
    last: Option<(f64, f64)>,
}

/// Weight kept by older passes at each new one (a memory of about 50 passes).
const PASS_COST_DECAY: f64 = 0.98;

impl PassCost {
    /// A fit started from timed passes (`Engine::pass_timings`), so that the first requests'
    /// drafts are priced by this machine too.
    pub fn from_timings(timings: &[(usize, f64)]) -> Self {
        let mut c = Self::default();
        for &(tokens, ms) in timings {
            c.record(tokens, ms);
        }
        c
    }

    pub fn record(&mut self, tokens: usize, ms: f64) {
        let t = tokens as f64;
        for v in [&mut self.w, &mut self.t, &mut self.y, &mut self.tt, &mut self.ty] {
            *v *= PASS_COST_DECAY;
        }
        self.w += 1.0;
        self.t += t;
        self.y += ms;
        self.tt += t * t;
        self.ty += t * ms;
        if let Some(fit) = self.fit() {
            self.last = Some(fit);
        }
    }

    /// The least-squares line through the recent passes, when they differ enough in size to
    /// tell base from per-token cost.
    fn fit(&self) -> Option<(f64, f64)> {
        if self.w < 8.0 {
            return None;
        }
        let (mt, my) = (self.t / self.w, self.y / self.w);
        let var = self.tt / self.w - mt * mt;
        if var < 0.5 {
            return None;
        }
        let per_token = ((self.ty / self.w - mt * my) / var).max(0.0);
        Some(((my - per_token * mt).max(0.0), per_token))
    }

    /// `(base_ms, per_token_ms)`: the current fit, or the last one while recent passes have
    /// all had one size; `None` until passes of different sizes have been seen.
    pub fn model(&self) -> Option<(f64, f64)> {
        self.last
    }

    /// What a drafted token costs a sequence decoding alone, as a share of its plain step:
    /// `per_token / (base + per_token)`. It is the cost [`DraftLength::k`] weighs where timing
    /// must not move the draft length (sampled requests, whose seed alone should decide their
    /// output whatever else runs; and passes before any fit): measured once per engine, so it
    /// does not change with the batch. Without a fit, 0.1, a cheap verification's cost.
    pub fn marginal_alone(&self) -> f64 {
        match self.model() {
            Some((base, per_token)) if base + per_token > 0.0 => per_token / (base + per_token),
            _ => 0.1,
        }
    }

    /// The costs as one of `sequences` in a pass sees them, for a source whose drafts cost
    /// the Oracle nothing to make (Scouts).
    pub fn costs_for(&self, sequences: usize) -> Option<Costs> {
        let (base, per_token) = self.model()?;
        Some(Costs {
            step_ms: base / sequences.max(1) as f64 + per_token,
            extra_per_token_ms: per_token,
            draft_per_token_ms: 0.0,
        })
    }
}

/// Running measurements of [`Costs`], shared by the requests one decoding worker serves.
#[derive(Debug, Default)]
pub struct Pace {
    inner: std::sync::Mutex<PaceInner>,
}

#[derive(Debug, Default)]
struct PaceInner {
    step_ms: Option<f64>,
    extra_per_token_ms: Option<f64>,
    draft_per_token_ms: Option<f64>,
    requests: u64,
}

impl PaceInner {
    fn costs(&self) -> Option<Costs> {
        Some(Costs {
            step_ms: self.step_ms?,
            extra_per_token_ms: self.extra_per_token_ms?,
            draft_per_token_ms: self.draft_per_token_ms?,
        })
    }
}

/// While drafting cannot pay, one request in this many still probes it (costs move with load).
const REPROBE_EVERY: u64 = 16;

/// Weight of a new measurement in the moving averages.
const PACE_WEIGHT: f64 = 0.2;

fn blend(avg: &mut Option<f64>, sample: f64) {
    *avg = Some(avg.map_or(sample, |a| a + PACE_WEIGHT * (sample - a)));
}

impl Pace {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PaceInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A plain decoding step took `ms`.
    pub fn record_step(&self, ms: f64) {
        blend(&mut self.lock().step_ms, ms);
    }

    /// A pass with `k` drafted tokens took `verify_ms` to verify and, where it is a fair
    /// sample of steady drafting, `draft_ms` to draft.
    pub fn record_pass(&self, k: usize, draft_ms: Option<f64>, verify_ms: f64) {
        if k == 0 {
            return;
        }
        let mut p = self.lock();
        if let Some(ms) = draft_ms {
            blend(&mut p.draft_per_token_ms, ms / k as f64);
        }
        if let Some(step) = p.step_ms {
            blend(&mut p.extra_per_token_ms, ((verify_ms - step) / k as f64).max(0.0));
        }
    }

    /// The costs, once a step and a pass have both been measured.
    pub fn costs(&self) -> Option<Costs> {
        self.lock().costs()
    }

    /// A request starts: whether it should try drafting at all (its first passes draft, to
    /// measure its acceptance). Not while the costs show that no draft could pay, except now
    /// and then, to notice when that changes.
    pub fn start_request(&self) -> bool {
        let mut p = self.lock();
        p.requests += 1;
        p.costs().is_none_or(|c| c.could_pay()) || p.requests % REPROBE_EVERY == 0
    }

    /// Whether a plain step has been measured yet.
    pub fn knows_step(&self) -> bool {
        self.lock().step_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_cost_recovers_a_linear_model() {
        let mut c = PassCost::default();
        assert_eq!(c.model(), None);
        for i in 0..200 {
            let tokens = 1 + i % 9;
            c.record(tokens, 23.0 + 14.0 * tokens as f64);
        }
        let (base, per_token) = c.model().unwrap();
        assert!((base - 23.0).abs() < 1e-6 && (per_token - 14.0).abs() < 1e-6, "{base} {per_token}");
        assert!((c.marginal_alone() - 14.0 / 37.0).abs() < 1e-9);
        assert_eq!(PassCost::default().marginal_alone(), 0.1);
        // At α = 0.8, a drafted token costing 14/37 of a step: drafts of 4 (a fifth would be
        // kept with 0.8^5 < 0.378), not the 8 that a cost of 0.1 allows.
        let mut d = DraftLength::new(8, c.marginal_alone());
        for _ in 0..60 {
            d.update(8, 4);
        }
        assert_eq!(d.k(), 4);
        // A 2B-like target: drafting pays alone, not among eight sequences.
        let d = trained(3);
        assert!(d.choose(&c.costs_for(1).unwrap()) >= 2);
        assert_eq!(d.choose(&c.costs_for(8).unwrap()), 0);
        // Passes all of one size say nothing about the per-token cost...
        let mut same = PassCost::default();
        for _ in 0..50 {
            same.record(8, 100.0);
        }
        assert_eq!(same.model(), None);
        // ...so after a fit, a long run of them leaves it standing.
        let mut steady = PassCost::from_timings(&[
            (1, 37.0),
            (5, 93.0),
            (9, 149.0),
            (1, 37.0),
            (5, 93.0),
            (9, 149.0),
            (1, 37.0),
            (5, 93.0),
            (9, 149.0),
        ]);
        let fitted = steady.model().unwrap();
        assert!((fitted.0 - 23.0).abs() < 1e-6 && (fitted.1 - 14.0).abs() < 1e-6, "{fitted:?}");
        for _ in 0..500 {
            steady.record(1, 37.0);
        }
        let kept = steady.model().unwrap();
        assert!((kept.1 - 14.0).abs() < 1.0, "{kept:?}");
    }

    #[test]
    fn length_follows_acceptance() {
        let mut d = DraftLength::new(8, 0.1);
        for _ in 0..20 {
            d.update(4, 4);
        }
        assert_eq!(d.k(), 8);
        for _ in 0..20 {
            d.update(4, 0);
        }
        assert_eq!(d.k(), 1);
        // Six kept, then a rejection: 6 of 7 examined, whatever was drafted after it.
        for _ in 0..40 {
            d.update(10, 6);
        }
        assert!((d.alpha() - 6.0 / 7.0).abs() < 1e-3, "{}", d.alpha());
        assert_eq!(d.k(), 8);
        for _ in 0..40 {
            d.update(10, 1);
        }
        assert!((d.alpha() - 0.5).abs() < 1e-3, "{}", d.alpha());
        assert_eq!(d.k(), 3, "a fourth drafted token would be kept with 0.5^4 < 0.1");
    }

    /// Drafts of eight, each token kept with probability α until the first miss: the
    /// estimate comes out at α (dividing by the tokens drafted gave about 0.42 at α = 0.8).
    #[test]
    fn alpha_is_estimated_from_examined_tokens() {
        use rand08::{Rng, SeedableRng};
        for alpha in [0.3, 0.6, 0.8, 0.9] {
            let mut rng = rand08::rngs::StdRng::seed_from_u64(7);
            let (mut sum, mut n) = (0.0, 0);
            let mut d = DraftLength::new(8, 0.1);
            for i in 0..4000 {
                let accepted = (0..8).take_while(|_| rng.gen_bool(alpha)).count();
                d.update(8, accepted);
                if i >= 100 {
                    sum += d.alpha();
                    n += 1;
                }
            }
            let mean = sum / n as f64;
            assert!((mean - alpha).abs() < 0.03, "α {alpha}: estimated {mean}");
        }
    }

    fn trained(accepted_of_4: usize) -> DraftLength {
        let mut d = DraftLength::new(8, 0.1);
        for _ in 0..40 {
            d.update(4, accepted_of_4);
        }
        d
    }

    #[test]
    fn choice_follows_costs() {
        let good = trained(4);
        // Free drafts and cheap verification: draft as far as allowed.
        let cheap = Costs { step_ms: 70.0, extra_per_token_ms: 5.0, draft_per_token_ms: 0.0 };
        assert_eq!(good.choose(&cheap), 8);
        // A draft as slow as the target: not worth running, however good it is.
        let slow_draft = Costs { step_ms: 0.6, extra_per_token_ms: 0.3, draft_per_token_ms: 0.6 };
        assert_eq!(good.choose(&slow_draft), 0);
        // A useless draft is not run even when it is free.
        assert_eq!(trained(0).choose(&cheap), 0);
        // Somewhere between, a short draft.
        let middling = Costs { step_ms: 1.0, extra_per_token_ms: 0.5, draft_per_token_ms: 0.1 };
        let k = trained(3).choose(&middling);
        assert!((1..8).contains(&k), "{k}");
    }

    #[test]
    fn hopeless_drafts_are_probed_only_now_and_then() {
        let pace = Pace::new();
        assert!(pace.start_request(), "nothing measured yet");
        pace.record_step(1.0);
        pace.record_pass(4, Some(4.0), 3.0);
        // A drafted token costs 1.0 + 0.5 against a 1.0 step: no draft can pay.
        let probes = (0..64).filter(|_| pace.start_request()).count();
        assert_eq!(probes, 4);
        // Cheap drafts are probed by every request.
        pace.record_pass(4, Some(0.0), 3.0);
        for _ in 0..20 {
            pace.record_pass(4, Some(0.0), 3.0);
        }
        assert!((0..8).all(|_| pace.start_request()));
    }

    #[test]
    fn pace_measures_before_it_answers() {
        let pace = Pace::new();
        assert_eq!(pace.costs(), None);
        pace.record_pass(4, Some(2.0), 3.0);
        assert_eq!(pace.costs(), None, "no step yet, so no verification overhead either");
        pace.record_step(1.0);
        pace.record_pass(4, None, 3.0);
        assert_eq!(pace.costs().unwrap().draft_per_token_ms, 0.5, "the first draft sample stays");
        pace.record_pass(4, Some(2.0), 3.0);
        let c = pace.costs().unwrap();
        assert_eq!(c.step_ms, 1.0);
        assert!((c.extra_per_token_ms - 0.5).abs() < 1e-9 && (c.draft_per_token_ms - 0.5).abs() < 1e-9, "{c:?}");
        pace.record_step(2.0);
        assert!((pace.costs().unwrap().step_ms - 1.2).abs() < 1e-9);
    }
}
