//! Which drafted tokens the target accepts, without changing what it would have produced.
//!
//! `p[i]` is the target's distribution after the context plus the first `i` drafted tokens
//! (from one forward pass over all of them); there are `k + 1` of them for `k` drafted tokens.
//!
//! * Greedy requests accept the longest prefix equal to the target's argmax, then take the
//!   target's own next token: exactly plain greedy decoding.
//! * Sampled requests, with the draft's own distributions `q` (a trusted, in-process draft
//!   that sampled its tokens from `q`): accept x with probability min(1, p(x)/q(x)); on
//!   rejection draw from norm(max(0, p − q)) (Leviathan et al. 2023, Chen et al. 2023).
//! * Sampled requests without `q`, or from an untrusted Scout: treat x as a fixed proposal.
//!   Accept it with probability p(x); otherwise draw from p with x removed. For any x chosen
//!   without knowledge of our random numbers, the result is distributed exactly as p, so a
//!   lying Scout cannot bias the output; it can only waste a verification.
//!
//! When every drafted token is accepted, one more token is drawn from `p[k]`.

use rayon::prelude::*;
use shard_shared::sampling::{Distribution, Sampler};

/// The target's distribution `p[i]` at each verified row: `logits` holds `draft.len() + 1`
/// rows of `n_vocab`, and row `i` follows `generated` and the first `i` drafted tokens (which
/// repetition penalties count).
///
/// The rows are independent, so they are built in parallel: a sampled distribution sorts the
/// whole vocabulary, and a draft of eight has nine rows to check.
pub fn target_distributions(
    sampler: &Sampler,
    logits: &[f32],
    n_vocab: usize,
    generated: &[u32],
    draft: &[u32],
) -> Vec<Distribution> {
    assert_eq!(logits.len(), (draft.len() + 1) * n_vocab, "one row per drafted token, and one after them");
    let history: Vec<u32> = generated.iter().chain(draft).copied().collect();
    logits
        .par_chunks_exact(n_vocab)
        .enumerate()
        .map(|(i, row)| sampler.distribution(row, &history[..generated.len() + i]))
        .collect()
}

/// Drafted tokens kept, and the token that follows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptance {
    pub accepted: usize,
    pub next: u32,
}

/// Greedy: `argmax[i]` is the target's choice after `i` drafted tokens.
pub fn greedy(argmax: &[u32], draft: &[u32]) -> Acceptance {
    assert_eq!(argmax.len(), draft.len() + 1);
    let accepted = draft.iter().zip(argmax).take_while(|(d, t)| d == t).count();
    Acceptance { accepted, next: argmax[accepted] }
}

/// Sampled acceptance. `q`, when given, must be the distributions the draft really sampled
/// its tokens from; pass `None` for proposals from anyone not trusted.
pub fn sampled(p: &[Distribution], draft: &[u32], q: Option<&[Distribution]>, rng: &mut Sampler) -> Acceptance {
    assert_eq!(p.len(), draft.len() + 1);
    for (i, &x) in draft.iter().enumerate() {
        let px = p[i].prob(x) as f64;
        let u = rng.uniform() as f64;
        match q.and_then(|q| q.get(i)) {
            Some(qi) if qi.prob(x) > 0.0 => {
                let qx = qi.prob(x) as f64;
                if u < (px / qx).min(1.0) {
                    continue;
                }
                return Acceptance { accepted: i, next: rng.draw(&residual(&p[i], qi)) };
            }
            _ => {
                if u < px {
                    continue;
                }
                return Acceptance { accepted: i, next: rng.draw(&without(&p[i], x)) };
            }
        }
    }
    Acceptance { accepted: draft.len(), next: rng.draw(&p[draft.len()]) }
}

/// norm(max(0, p − q)). If p ≤ q everywhere (only possible when they are equal, up to
/// rounding), rejection had probability ~0; fall back to p.
fn residual(p: &Distribution, q: &Distribution) -> Distribution {
    let mut ids = vec![];
    let mut probs = vec![];
    for (&id, &pp) in p.ids.iter().zip(&p.probs) {
        let r = pp - q.prob(id);
        if r > 0.0 {
            ids.push(id);
            probs.push(r);
        }
    }
    normalized(ids, probs).unwrap_or_else(|| p.clone())
}

/// p with one token removed, renormalized (p itself if that token was all of it).
fn without(p: &Distribution, x: u32) -> Distribution {
    let (ids, probs): (Vec<u32>, Vec<f32>) = p.ids.iter().zip(&p.probs).filter(|(&id, _)| id != x).map(|(&i, &q)| (i, q)).unzip();
    normalized(ids, probs).unwrap_or_else(|| p.clone())
}

fn normalized(ids: Vec<u32>, mut probs: Vec<f32>) -> Option<Distribution> {
    let total: f64 = probs.iter().map(|&v| v as f64).sum();
    if ids.is_empty() || total <= 0.0 {
        return None;
    }
    probs.iter_mut().for_each(|v| *v = (*v as f64 / total) as f32);
    Some(Distribution { ids, probs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard_shared::sampling::SamplingParams;

    fn dist(probs: &[f32]) -> Distribution {
        Distribution { ids: (0..probs.len() as u32).collect(), probs: probs.to_vec() }
    }

    /// Each row's distribution counts the drafted tokens before it in its penalties, exactly
    /// as building the rows one at a time with a growing history does.
    #[test]
    fn target_distributions_are_the_rows_one_at_a_time() {
        let n_vocab = 700;
        let logits: Vec<f32> = (0..4 * n_vocab).map(|i| ((i * 7919) % 1009) as f32 / 97.0).collect();
        let params =
            SamplingParams { temperature: 0.7, frequency_penalty: 0.8, presence_penalty: 0.3, ..SamplingParams::default() };
        let sampler = Sampler::new(params, 3);
        let (generated, draft) = (vec![5u32, 9, 5], vec![9u32, 11, 5]);
        let mut history = generated.clone();
        let mut one_at_a_time = vec![];
        for (i, row) in logits.chunks_exact(n_vocab).enumerate() {
            one_at_a_time.push(sampler.distribution(row, &history));
            if let Some(&d) = draft.get(i) {
                history.push(d);
            }
        }
        assert_eq!(target_distributions(&sampler, &logits, n_vocab, &generated, &draft), one_at_a_time);
        // The penalties made the rows differ from what an empty history gives.
        assert_ne!(one_at_a_time[3], sampler.distribution(&logits[3 * n_vocab..], &[]));
    }

    #[test]
    fn greedy_takes_the_matching_prefix_then_the_target() {
        assert_eq!(greedy(&[5, 6, 7], &[5, 6]), Acceptance { accepted: 2, next: 7 });
        assert_eq!(greedy(&[5, 6, 7], &[5, 9]), Acceptance { accepted: 1, next: 6 });
        assert_eq!(greedy(&[5, 6, 7], &[1, 6]), Acceptance { accepted: 0, next: 5 });
    }

    /// Empirical distribution of the first output token over many trials.
    fn first_token_frequencies(p: &Distribution, q: Option<&Distribution>, proposal: impl Fn(&mut Sampler) -> u32) -> Vec<f64> {
        let n = 200_000;
        let mut rng = Sampler::new(SamplingParams::default(), 7);
        let mut draft_rng = Sampler::new(SamplingParams::default(), 8);
        let mut counts = vec![0usize; p.ids.len()];
        let ps = [p.clone(), p.clone()];
        for _ in 0..n {
            let x = proposal(&mut draft_rng);
            let qs = q.map(|q| vec![q.clone()]);
            let a = sampled(&ps, &[x], qs.as_deref(), &mut rng);
            let first = if a.accepted == 1 { x } else { a.next };
            counts[first as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn assert_close(got: &[f64], want: &[f32]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - *w as f64).abs() < 0.005, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn sampling_with_q_keeps_the_target_distribution() {
        let p = dist(&[0.5, 0.3, 0.15, 0.05]);
        let q = dist(&[0.1, 0.2, 0.3, 0.4]);
        let freq = first_token_frequencies(&p, Some(&q), |r| r.draw(&q));
        assert_close(&freq, &p.probs);
    }

    #[test]
    fn any_fixed_proposal_keeps_the_target_distribution() {
        let p = dist(&[0.5, 0.3, 0.15, 0.05]);
        for x in 0..4 {
            let freq = first_token_frequencies(&p, None, |_| x);
            assert_close(&freq, &p.probs);
        }
    }

    #[test]
    fn a_lying_q_cannot_bias_an_untrusted_proposal() {
        // A Scout that always proposes token 3 and claims q = p would be accepted every time
        // under the q rule; proposals without trusted q go through the fixed-proposal rule.
        let p = dist(&[0.5, 0.3, 0.15, 0.05]);
        let freq = first_token_frequencies(&p, None, |_| 3);
        assert_close(&freq, &p.probs);
    }
}
