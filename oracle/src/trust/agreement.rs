//! Validation by agreement: does a Scout's proposal follow the reference draft model?
//!
//! The Oracle runs the reference (the very file the Scouts hold) with teacher forcing on the
//! Scout's own tokens: row `i` holds the reference's logits after the job's context and the
//! Scout's first `i` tokens, so every position is judged on the prefix the Scout itself drafted
//! from. Scouts compute in other floats (WebGPU, wasm, another CPU), so equal bytes are never
//! expected. A position counts only where the reference's choice is clear:
//!
//! * greedy jobs: the reference's top two logits are at least `tie_margin` apart; the Scout
//!   agrees when it chose the top one;
//! * sampled jobs: the Scout drew each token with the job's seed, one uniform per position
//!   (`Sampler::draw_replayable`), so the reference replays the same uniform on its own
//!   distribution. The Scout agrees when it drew the token the reference draws. The position
//!   counts only where that draw is stable: the uniform lies clear of the drawn token's
//!   interval edges by what a `sample_margin` of logit noise (and a changed top-k or top-p
//!   cut) could move them, and the drawn token is not within twice that margin of a
//!   neighbour in rank (the order of the cumulative sum would flip). Where the draw is not
//!   stable, a token outside the reference's top-k or top-p set by more than `tie_margin`
//!   still counts as a disagreement: no honest Scout draws outside its own set.
//!
//! A counted disagreement is *decisive* when the Scout's token lies `decisive_margin` or more
//! below the reference's greedy choice, or outside its sampling set by as much: no float path
//! moves a logit that far, so the sequential test weighs such a disagreement more.
//!
//! A wrong model's sampled tokens thus disagree as often as its greedy ones do, where a test
//! of mere membership in the reference's top-p set would pass most of them.

use shard_shared::sampling::{argmax, Distribution, Sampler, SamplingParams};
use shard_shared::wire::WireSampling;

/// How positions are judged. The defaults come from measurements, in
/// `docs/security/golden-tickets.md`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgreementRule {
    /// Greedy jobs: the logit gap below which two tokens are a tie that float noise may flip.
    pub tie_margin: f32,
    /// Sampled jobs: the logit noise, on every token at once, that a replayed draw must
    /// survive to count.
    pub sample_margin: f32,
    /// How far below the reference's choice (or its set's edge) a Scout's token must lie for
    /// the disagreement to be decisive.
    pub decisive_margin: f32,
}

impl Default for AgreementRule {
    fn default() -> Self {
        Self { tie_margin: 0.25, sample_margin: 0.1, decisive_margin: 1.0 }
    }
}

/// One judged position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    Agreed,
    Disagreed,
    /// A disagreement no float noise explains.
    Decisive,
}

/// A ticket's score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Agreement {
    /// Tokens the Scout proposed.
    pub positions: u32,
    /// Positions clear enough to judge.
    pub counted: u32,
    /// Counted positions where the Scout followed the reference.
    pub agreed: u32,
    /// Disagreements no float noise explains: the Scout's token lies at least the decisive
    /// margin below the reference's greedy choice, or outside its sampling set by as much.
    pub decisive: u32,
}

impl Agreement {
    pub fn disagreed(&self) -> u32 {
        self.counted - self.agreed
    }
}

/// Scores `proposal` against `rows` (one row of logits per proposed token, see the module
/// docs) for a job drafted with `sampling` and `seed`. Rows past the proposal, or a proposal
/// longer than the rows, are not judged.
pub fn score<'a>(
    rows: impl IntoIterator<Item = &'a [f32]>,
    proposal: &[u32],
    sampling: &WireSampling,
    seed: u64,
    rule: &AgreementRule,
) -> Agreement {
    let mut a = Agreement { positions: proposal.len() as u32, ..Agreement::default() };
    let uniforms = Sampler::uniforms(seed, proposal.len());
    for ((row, &token), &u) in rows.into_iter().zip(proposal).zip(&uniforms) {
        let judged = if sampling.temperature <= 0.0 {
            judge_greedy(row, token, rule)
        } else {
            judge_sampled(row, token, u, sampling, rule)
        };
        if let Some(j) = judged {
            a.counted += 1;
            a.agreed += (j == Judged::Agreed) as u32;
            a.decisive += (j == Judged::Decisive) as u32;
        }
    }
    a
}

/// What the reference itself drafts at each row: its greedy tokens, or its replayed draws.
pub fn reference_answer<'a>(rows: impl IntoIterator<Item = &'a [f32]>, sampling: &WireSampling, seed: u64) -> Vec<u32> {
    let rows: Vec<&[f32]> = rows.into_iter().collect();
    if sampling.temperature <= 0.0 {
        return rows.iter().map(|r| argmax(r)).collect();
    }
    let sampler = Sampler::new(SamplingParams::from(sampling), seed);
    rows.iter().zip(Sampler::uniforms(seed, rows.len())).map(|(r, u)| sampler.distribution(r, &[]).pick(u)).collect()
}

/// `None` when the position is a tie; otherwise whether `token` is the reference's choice,
/// and how far from it.
fn judge_greedy(row: &[f32], token: u32, rule: &AgreementRule) -> Option<Judged> {
    let Some(&logit) = row.get(token as usize) else { return Some(Judged::Decisive) };
    let best = argmax(row) as usize;
    let second = row.iter().enumerate().filter(|&(i, _)| i != best).map(|(_, &v)| v).fold(f32::NEG_INFINITY, f32::max);
    // NaN gaps are ties too: nothing can be told from them.
    if !(row[best] - second >= rule.tie_margin) {
        return None;
    }
    Some(if token as usize == best {
        Judged::Agreed
    } else if row[best] - logit >= rule.decisive_margin {
        Judged::Decisive
    } else {
        Judged::Disagreed
    })
}

/// Whether `token` is what the reference draws with the uniform `u` where noise within the
/// sample margin could not change that draw; else, where the reference's set is cut, whether
/// `token` is in it or within the tie margin of its edge (no honest Scout draws outside its
/// own set); `None` when neither can be told.
fn judge_sampled(row: &[f32], token: u32, u: f32, s: &WireSampling, rule: &AgreementRule) -> Option<Judged> {
    let Some(&logit) = row.get(token as usize) else { return Some(Judged::Decisive) };
    if row.iter().any(|l| l.is_nan()) {
        return None;
    }
    let dist = Sampler::new(SamplingParams::from(s), 0).distribution(row, &[]);
    let cut = dist.ids.len() < row.len();
    let edge = row[*dist.ids.last().expect("non-empty distribution") as usize];
    let outside = |margin: f32| cut && !dist.ids.contains(&token) && logit < edge - margin;
    let disagreed = || if outside(rule.decisive_margin) { Judged::Decisive } else { Judged::Disagreed };
    if stable_draw(row, &dist, u, s.temperature, rule.sample_margin, cut) {
        return Some(if token == dist.pick(u) { Judged::Agreed } else { disagreed() });
    }
    outside(rule.tie_margin).then(disagreed)
}

/// Whether logit noise of `margin` on every token at once leaves what `u` draws unchanged.
fn stable_draw(row: &[f32], dist: &Distribution, u: f32, temperature: f32, margin: f32, cut: bool) -> bool {
    let (k, lo, hi) = interval(dist, u);
    let logit = |i: usize| row[dist.ids[i] as usize];
    // A neighbour in rank that noise could swap with the drawn token moves its interval.
    let rank_gap = 2.0 * margin;
    if (k > 0 && logit(k - 1) - logit(k) < rank_gap) || (k + 1 < dist.ids.len() && logit(k) - logit(k + 1) < rank_gap) {
        return false;
    }
    // Noise of `margin` on every logit moves a cumulative sum `c` by at most a factor
    // e^(2 margin / T) on the odds c / (1 − c).
    let e = (2.0 * margin as f64 / temperature as f64).exp();
    let up = |c: f64| c * e / (c * e + 1.0 - c);
    let down = |c: f64| c / (c + (1.0 - c) * e);
    // A cut set (top-k, top-p) may lose its last token or gain the next, which rescales every
    // cumulative sum: by 1 / (1 − p_last) or 1 / (1 + p_next), at most.
    let (p_last, p_next) = if cut { edge_probabilities(row, dist, temperature) } else { (0.0, 0.0) };
    let window_lo = (up(lo) / (1.0 - p_last).max(1e-9)).min(1.0);
    let window_hi = down(hi) / (1.0 + p_next);
    window_lo < u as f64 && (u as f64) < window_hi
}

/// The index in `dist` that `u` draws, with its interval [lo, hi) of cumulative probability,
/// summed in the order and precision of [`Distribution::pick`].
fn interval(dist: &Distribution, u: f32) -> (usize, f64, f64) {
    let mut acc = 0.0f32;
    for (k, &q) in dist.probs.iter().enumerate() {
        let before = acc;
        acc += q;
        if u < acc {
            return (k, before as f64, acc as f64);
        }
    }
    let k = dist.ids.len() - 1;
    (k, (acc - dist.probs[k]) as f64, 1.0)
}

/// The probability of the set's last token, and the best token left out relative to the set.
fn edge_probabilities(row: &[f32], dist: &Distribution, temperature: f32) -> (f64, f64) {
    let p_last = *dist.probs.last().expect("non-empty distribution") as f64;
    let mut kept = vec![false; row.len()];
    dist.ids.iter().for_each(|&i| kept[i as usize] = true);
    let next = row.iter().zip(&kept).filter(|(_, &k)| !k).map(|(&l, _)| l).fold(f32::NEG_INFINITY, f32::max);
    let max = row[dist.ids[0] as usize];
    let weight = |l: f32| (((l - max) / temperature) as f64).exp();
    let total: f64 = dist.ids.iter().map(|&i| weight(row[i as usize])).sum();
    (p_last, weight(next) / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> WireSampling {
        WireSampling { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }

    #[test]
    fn greedy_positions_count_only_where_the_reference_is_clear() {
        let rule = AgreementRule::default();
        let rows: Vec<Vec<f32>> = vec![
            vec![0.0, 5.0, 1.0, 0.0], // clear: 1
            vec![2.0, 2.1, 0.0, 0.0], // a tie between 0 and 1
            vec![0.0, 0.0, 0.0, 9.0], // clear: 3
        ];
        let r = || rows.iter().map(Vec::as_slice);
        assert_eq!(score(r(), &[1, 0, 3], &greedy(), 0, &rule), Agreement { positions: 3, counted: 2, agreed: 2, decisive: 0 });
        // Both disagreements are far below the reference's choice (4 and 9 logits).
        assert_eq!(score(r(), &[2, 1, 0], &greedy(), 0, &rule), Agreement { positions: 3, counted: 2, agreed: 0, decisive: 2 });
        // Token 0 at the first position is 5 logits below 1, token 2 is 4 below: both decisive;
        // a token 0.5 below the choice is a plain disagreement.
        let close = [vec![0.0f32, 5.0, 4.5, 0.0]];
        assert_eq!(score(close.iter().map(Vec::as_slice), &[2], &greedy(), 0, &rule).decisive, 0);
        // A proposal shorter than the rows is judged on what it has.
        assert_eq!(score(r(), &[1], &greedy(), 0, &rule), Agreement { positions: 1, counted: 1, agreed: 1, decisive: 0 });
        assert_eq!(reference_answer(r(), &greedy(), 0), vec![1, 1, 3]);
    }

    /// A row with a few likely tokens well apart and a long unlikely tail.
    fn spread_row() -> Vec<f32> {
        let mut row = vec![-10.0f32; 64];
        row[3] = 3.0;
        row[7] = 2.0;
        row[9] = 1.0;
        row
    }

    #[test]
    fn sampled_positions_replay_the_scouts_draw() {
        let rule = AgreementRule::default();
        let s = WireSampling { temperature: 1.0, top_k: 0, top_p: 0.95 };
        let row = spread_row();
        let (mut counted, mut wrong_counted) = (0, 0);
        for seed in 0..200u64 {
            // What an honest Scout drafts: its own draw with the job's seed.
            let mut sampler = Sampler::new(SamplingParams::from(&s), seed);
            let honest = sampler.draw_replayable(&sampler.distribution(&row, &[]));
            let a = score([row.as_slice()], &[honest], &s, seed, &rule);
            assert_eq!(a.agreed, a.counted, "seed {seed}: an honest draw disagreed");
            counted += a.counted;
            // Another likely token, equally plausible by set membership, is not this draw.
            let other = if honest == 3 { 7 } else { 3 };
            let b = score([row.as_slice()], &[other], &s, seed, &rule);
            assert_eq!(b.agreed, 0);
            wrong_counted += b.counted;
            assert_eq!(reference_answer([row.as_slice()], &s, seed), vec![honest]);
        }
        // Most draws are clear of their interval's edges.
        assert!(counted > 100 && wrong_counted == counted, "{counted} {wrong_counted}");
    }

    #[test]
    fn sampled_draws_near_an_edge_or_a_rank_tie_do_not_count() {
        let rule = AgreementRule::default();
        let s = WireSampling { temperature: 1.0, top_k: 0, top_p: 1.0 };
        // Two tokens within the margin of each other: their order, and so every draw between
        // them, could flip.
        let mut tied = spread_row();
        tied[7] = 3.0 - rule.sample_margin;
        let mut d = SamplingParams::from(&s);
        d.top_p = 1.0;
        for seed in 0..50u64 {
            let u = Sampler::uniforms(seed, 1)[0];
            let dist = Sampler::new(d.clone(), 0).distribution(&tied, &[]);
            let drawn = dist.pick(u);
            let a = score([tied.as_slice()], &[drawn], &s, seed, &rule);
            if drawn == 3 || drawn == 7 {
                assert_eq!(a.counted, 0, "seed {seed}: a draw of a rank-tied token counted");
            }
        }
        // A uniform right at an interval's edge does not count.
        let row = spread_row();
        let dist = Sampler::new(d, 0).distribution(&row, &[]);
        let edge_u = dist.probs[0] - 1e-4;
        assert_eq!(judge_sampled(&row, dist.ids[0], edge_u, &s, &rule), None);
        assert_eq!(judge_sampled(&row, dist.ids[0], dist.probs[0] / 2.0, &s, &rule), Some(Judged::Agreed));
        // Out-of-vocabulary tokens disagree.
        assert_eq!(score([row.as_slice()], &[640], &s, 1, &rule), Agreement { positions: 1, counted: 1, agreed: 0, decisive: 1 });
    }

    #[test]
    fn a_token_outside_the_set_disagrees_even_where_the_draw_is_unstable() {
        let rule = AgreementRule::default();
        let s = WireSampling { temperature: 1.0, top_k: 0, top_p: 0.9 };
        let row = spread_row();
        let dist = Sampler::new(SamplingParams::from(&s), 0).distribution(&row, &[]);
        let unstable = dist.probs[0] - 1e-4;
        // Token 20 is deep in the tail, far outside the set.
        assert_eq!(judge_sampled(&row, 20, unstable, &s, &rule), Some(Judged::Decisive));
        // Tokens in the set say nothing there.
        assert_eq!(judge_sampled(&row, dist.ids[0], unstable, &s, &rule), None);
        assert_eq!(judge_sampled(&row, dist.ids[1], unstable, &s, &rule), None);
        // Without a cut (top-p 1), every token is in the set.
        let all = WireSampling { top_p: 1.0, ..s };
        let unstable = Sampler::new(SamplingParams::from(&all), 0).distribution(&row, &[]).probs[0] - 1e-4;
        assert_eq!(judge_sampled(&row, 20, unstable, &all, &rule), None);
    }
}
