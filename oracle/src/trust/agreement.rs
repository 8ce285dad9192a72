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
//! * sampled jobs: the Scout's token lies in the reference's sampling set (temperature, top-k,
//!   top-p, with the last `tail` of the probability cut even at top-p 1), or within
//!   `tie_margin` of that set's edge. A position whose set spans half the vocabulary or more
//!   says nothing about a liar and does not count.

use shard_shared::wire::WireSampling;

/// How positions are judged. The defaults come from measurements, in
/// `docs/security/golden-tickets.md`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgreementRule {
    /// Logit gap below which two tokens are a tie that float noise may flip.
    pub tie_margin: f32,
    /// Probability mass cut from the tail of a sampled position's set.
    pub tail: f32,
}

impl Default for AgreementRule {
    fn default() -> Self {
        Self { tie_margin: 0.25, tail: 1e-3 }
    }
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
}

impl Agreement {
    pub fn disagreed(&self) -> u32 {
        self.counted - self.agreed
    }
}

/// Scores `proposal` against `rows` (one row of logits per proposed token, see the module
/// docs). Rows past the proposal, or a proposal longer than the rows, are not judged.
pub fn score<'a>(
    rows: impl IntoIterator<Item = &'a [f32]>,
    proposal: &[u32],
    sampling: &WireSampling,
    rule: &AgreementRule,
) -> Agreement {
    let mut a = Agreement { positions: proposal.len() as u32, ..Agreement::default() };
    for (row, &token) in rows.into_iter().zip(proposal) {
        let judged =
            if sampling.temperature <= 0.0 { judge_greedy(row, token, rule) } else { judge_sampled(row, token, sampling, rule) };
        if let Some(agreed) = judged {
            a.counted += 1;
            a.agreed += agreed as u32;
        }
    }
    a
}

/// `None` when the position is a tie; otherwise whether `token` is the reference's choice.
fn judge_greedy(row: &[f32], token: u32, rule: &AgreementRule) -> Option<bool> {
    if row.is_empty() {
        return Some(false);
    }
    let best = shard_shared::sampling::argmax(row) as usize;
    let second = row.iter().enumerate().filter(|&(i, _)| i != best).map(|(_, &v)| v).fold(f32::NEG_INFINITY, f32::max);
    // NaN gaps are ties too: nothing can be told from them.
    if !(row[best] - second >= rule.tie_margin) {
        return None;
    }
    Some(token as usize == best)
}

/// `None` when the reference's set is too wide to tell anything; otherwise whether `token`
/// lies in it (or at its edge, within the tie margin).
fn judge_sampled(row: &[f32], token: u32, s: &WireSampling, rule: &AgreementRule) -> Option<bool> {
    let token = token as usize;
    if token >= row.len() || row.is_empty() {
        return Some(false);
    }
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let mut keep = order.len();
    if s.top_k > 0 {
        keep = keep.min(s.top_k as usize);
    }
    let t = s.temperature;
    let max = row[order[0]];
    let weights: Vec<f64> = order[..keep].iter().map(|&i| (((row[i] - max) / t) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mass = (s.top_p.clamp(0.0, 1.0)).min(1.0 - rule.tail) as f64;
    let mut acc = 0.0;
    for (n, w) in weights.iter().enumerate() {
        acc += w / total;
        if acc >= mass {
            keep = n + 1;
            break;
        }
    }
    if keep * 2 >= row.len() {
        return None;
    }
    let edge = row[order[keep - 1]];
    Some(order[..keep].contains(&token) || row[token] >= edge - rule.tie_margin)
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
        assert_eq!(score(r(), &[1, 0, 3], &greedy(), &rule), Agreement { positions: 3, counted: 2, agreed: 2 });
        assert_eq!(score(r(), &[2, 1, 0], &greedy(), &rule), Agreement { positions: 3, counted: 2, agreed: 0 });
        // A proposal shorter than the rows is judged on what it has.
        assert_eq!(score(r(), &[1], &greedy(), &rule), Agreement { positions: 1, counted: 1, agreed: 1 });
    }

    #[test]
    fn sampled_positions_accept_the_set_and_refuse_the_tail() {
        let rule = AgreementRule::default();
        let s = WireSampling { temperature: 1.0, top_k: 0, top_p: 0.9 };
        // Two likely tokens and a long, unlikely tail.
        let mut row = vec![-10.0f32; 64];
        row[3] = 4.0;
        row[7] = 3.5;
        assert_eq!(score([row.as_slice()], &[7], &s, &rule).agreed, 1);
        assert_eq!(score([row.as_slice()], &[3], &s, &rule).agreed, 1);
        let tail = score([row.as_slice()], &[20], &s, &rule);
        assert_eq!((tail.counted, tail.agreed), (1, 0));
        // A flat row says nothing: any token is plausible.
        let flat = vec![0.0f32; 64];
        assert_eq!(score([flat.as_slice()], &[20], &s, &rule).counted, 0);
        // Out-of-vocabulary tokens disagree.
        assert_eq!(score([row.as_slice()], &[640], &s, &rule), Agreement { positions: 1, counted: 1, agreed: 0 });
    }
}
