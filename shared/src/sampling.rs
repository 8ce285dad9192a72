//! Turning logits into tokens: temperature, top-k, top-p, penalties, logit bias and seeded
//! randomness, plus the log-probabilities the API reports.
//!
//! The sampler first builds the whole target distribution ([`Distribution`]) and only then
//! draws from it. Speculative decoding needs that split: it must know p(x) exactly to accept
//! or reject a drafted token without changing what the user would have got.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How to pick the next token. `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Added to the logits of the given tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: 0, top_p: 1.0, frequency_penalty: 0.0, presence_penalty: 0.0, logit_bias: vec![] }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// The distribution a token is drawn from: candidate ids with probabilities summing to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    pub ids: Vec<u32>,
    pub probs: Vec<f32>,
}

impl Distribution {
    /// Probability of `id` (0 if it was cut).
    pub fn prob(&self, id: u32) -> f32 {
        self.ids.iter().position(|&i| i == id).map_or(0.0, |k| self.probs[k])
    }

    /// The token a uniform number `u` in [0, 1) picks: the first whose cumulative
    /// probability, in the distribution's order (most likely first), exceeds `u`.
    pub fn pick(&self, u: f32) -> u32 {
        let mut acc = 0.0;
        for (k, &q) in self.probs.iter().enumerate() {
            acc += q;
            if u < acc {
                return self.ids[k];
            }
        }
        *self.ids.last().expect("non-empty distribution")
    }

    /// The single most likely token.
    pub fn argmax(&self) -> u32 {
        let mut best = 0;
        for k in 1..self.ids.len() {
            if self.probs[k] > self.probs[best] || (self.probs[k] == self.probs[best] && self.ids[k] < self.ids[best]) {
                best = k;
            }
        }
        self.ids[best]
    }
}

/// Draws tokens with a seeded generator, so a request with a seed is reproducible.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self { params, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// Applies logit bias and repetition penalties in place (OpenAI's definitions).
    pub fn adjust_logits(&self, logits: &mut [f32], history: &[u32]) {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        let (fp, pp) = (self.params.frequency_penalty, self.params.presence_penalty);
        if fp != 0.0 || pp != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in history {
                *counts.entry(t).or_default() += 1;
            }
            for (id, c) in counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= c as f32 * fp + pp;
                }
            }
        }
    }

    /// The distribution the next token is drawn from, after every filter.
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Distribution {
        let mut adjusted = logits.to_vec();
        self.adjust_logits(&mut adjusted, history);
        let p = &self.params;
        if p.is_greedy() {
            let id = argmax(&adjusted);
            return Distribution { ids: vec![id], probs: vec![1.0] };
        }
        let mut cand: Vec<(u32, f32)> = adjusted.iter().enumerate().map(|(i, &l)| (i as u32, l / p.temperature)).collect();
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, most_likely_first);
            cand.truncate(p.top_k);
            cand.sort_unstable_by(most_likely_first);
        } else {
            sort_most_likely_first(&mut cand);
        }
        let max = cand.first().map_or(0.0, |c| c.1);
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (k, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = k + 1;
                    break;
                }
            }
            cand.truncate(keep);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= total);
        }
        Distribution { ids: cand.into_iter().map(|c| c.0).collect(), probs: probs.into_iter().map(|q| q as f32).collect() }
    }

    /// Draws one token from a distribution (a one-token distribution uses no randomness).
    pub fn draw(&mut self, dist: &Distribution) -> u32 {
        if dist.ids.len() == 1 {
            return dist.ids[0];
        }
        dist.pick(self.rng.random())
    }

    /// Draws one token with exactly one uniform, whatever the distribution, so that the `i`-th
    /// draw of a sampler seeded with `s` is `distribution.pick(i-th uniform of s)`. Scouts draft
    /// this way: a golden ticket then replays their draws from the job's seed alone
    /// (`docs/protocol.md`, "Seed").
    pub fn draw_replayable(&mut self, dist: &Distribution) -> u32 {
        dist.pick(self.rng.random())
    }

    /// The first `n` uniforms a sampler seeded with `seed` would draw.
    pub fn uniforms(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random()).collect()
    }

    /// A uniform number in [0, 1), for accept/reject decisions.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random()
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let d = self.distribution(logits, history);
        self.draw(&d)
    }
}

/// The candidates' order: most likely first, the lower id first among equal values.
pub fn most_likely_first(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Sorts candidates listed in id order into [`most_likely_first`] order.
///
/// A whole vocabulary is sorted for every sampled token without top-k, and for every row a
/// sampled verification checks: a comparison sort of 128k candidates costs milliseconds, as
/// much as a tenth of a decoding step (`shard-bench sampling`). A stable radix sort on a key
/// that orders values as [`f32::total_cmp`] does, descending, keeps equal values in id order,
/// so the result is the comparison sort's, element for element.
pub fn sort_most_likely_first(cand: &mut [(u32, f32)]) {
    debug_assert!(cand.windows(2).all(|w| w[0].0 < w[1].0), "candidates in id order");
    if cand.len() < RADIX_FROM {
        cand.sort_unstable_by(most_likely_first);
    } else {
        radsort::sort_by_key(cand, |c| descending_key(c.1));
    }
}

/// Fewer candidates than this are sorted by comparison (radix passes cost more on few).
const RADIX_FROM: usize = 512;

/// An unsigned key whose ascending order is `v`'s descending [`f32::total_cmp`] order:
/// negative values with every bit flipped, others with the sign bit set, then inverted.
fn descending_key(v: f32) -> u32 {
    let bits = v.to_bits();
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 };
    !ascending
}

/// Index of the largest value; the lowest index wins a tie, as in llama.cpp.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural-log softmax, computed in f64 so that small probabilities keep their digits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

/// The `n` most likely tokens, most likely first.
pub fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f32)> = logprobs.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return vec![];
    }
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        idx.truncate(n);
    }
    idx.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The radix sort gives the comparison sort's order exactly: ties (many, from a few
        /// distinct values), both zeros, infinities and NaNs included, short and long lists.
        #[test]
        fn radix_order_is_the_comparison_order(
            picks in proptest::collection::vec(0usize..12, 0..3000),
            spread in proptest::collection::vec(-1e4f32..1e4, 0..3000),
        ) {
            let specials = [0.0, -0.0, 1.5, -1.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 1e-42, 7.0];
            let values = picks.iter().map(|&i| specials[i]).chain(spread);
            let cand: Vec<(u32, f32)> = values.enumerate().map(|(i, v)| (i as u32, v)).collect();
            let mut radix = cand.clone();
            sort_most_likely_first(&mut radix);
            let mut reference = cand;
            reference.sort_unstable_by(most_likely_first);
            let bits = |v: &[(u32, f32)]| v.iter().map(|&(i, f)| (i, f.to_bits())).collect::<Vec<_>>();
            prop_assert_eq!(bits(&radix), bits(&reference));
        }
    }

    #[test]
    fn greedy_takes_argmax() {
        let s = Sampler::new(SamplingParams::greedy(), 1);
        let d = s.distribution(&[0.1, 3.0, 3.0, -1.0], &[]);
        assert_eq!(d.ids, vec![1]);
    }

    #[test]
    fn top_k_and_top_p_cut() {
        let params = SamplingParams { top_k: 2, ..SamplingParams::default() };
        let d = Sampler::new(params, 1).distribution(&[0.0, 1.0, 2.0, 3.0], &[]);
        assert_eq!(d.ids, vec![3, 2]);
        assert!((d.probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);

        let params = SamplingParams { top_p: 0.5, ..SamplingParams::default() };
        let d = Sampler::new(params, 1).distribution(&[0.0, 0.0, 5.0, 0.0], &[]);
        assert_eq!(d.ids, vec![2]);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_probabilities() {
        let logits = [0.0f32, (3.0f32).ln(), 0.0, f32::NEG_INFINITY];
        let mut a = Sampler::new(SamplingParams::default(), 42);
        let mut b = Sampler::new(SamplingParams::default(), 42);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            let x = a.sample(&logits, &[]);
            assert_eq!(x, b.sample(&logits, &[]));
            counts[x as usize] += 1;
        }
        // p = [0.2, 0.6, 0.2, 0]
        assert_eq!(counts[3], 0);
        assert!((counts[1] as f64 / 20_000.0 - 0.6).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn replayable_draws_use_one_uniform_per_position() {
        let spread = [0.0f32, 1.0, 0.5, -1.0];
        let peaked = [0.0f32, 50.0, 0.0, 0.0];
        let params = SamplingParams { top_p: 0.9, ..SamplingParams::default() };
        let mut s = Sampler::new(params.clone(), 9);
        let rows = [&spread, &peaked, &spread, &spread];
        let drawn: Vec<u32> = rows.iter().map(|r| s.draw_replayable(&s.distribution(&r[..], &[]))).collect();
        // The peaked row is a one-token distribution, and still takes its uniform.
        let u = Sampler::uniforms(9, 4);
        let replayed: Vec<u32> = rows.iter().zip(&u).map(|(r, &u)| s.distribution(&r[..], &[]).pick(u)).collect();
        assert_eq!(drawn, replayed);
        assert_eq!(drawn[1], 1);
    }

    #[test]
    fn penalties_and_bias() {
        let params = SamplingParams { presence_penalty: 10.0, logit_bias: vec![(0, -100.0)], ..SamplingParams::greedy() };
        let s = Sampler::new(params, 1);
        assert_eq!(s.distribution(&[5.0, 4.0, 3.0], &[1]).ids, vec![2]);
    }

    #[test]
    fn log_softmax_and_top_n() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(top_n(&lp, 2).iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
    }
}
