//! The draft length, adapted to the observed acceptance.
//!
//! With per-token acceptance rate α, the i-th drafted token is kept with probability about
//! α^i, while each extra drafted token adds a roughly fixed cost (drafting it and carrying it
//! through verification). So the draft is as long as α^k stays above that cost.

#[derive(Debug, Clone)]
pub struct DraftLength {
    k_max: usize,
    /// Cost of one extra drafted token relative to a plain decoding step.
    marginal_cost: f64,
    /// Moving average of the share of drafted tokens accepted.
    alpha: f64,
}

impl DraftLength {
    pub fn new(k_max: usize, marginal_cost: f64) -> Self {
        Self { k_max: k_max.max(1), marginal_cost, alpha: 0.6 }
    }

    /// Tokens to draft next.
    pub fn k(&self) -> usize {
        let mut k = 1;
        while k < self.k_max && self.alpha.powi(k as i32 + 1) > self.marginal_cost {
            k += 1;
        }
        k
    }

    pub fn acceptance(&self) -> f64 {
        self.alpha
    }

    /// Records one verification.
    pub fn update(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        // A run of `accepted` followed by a rejection (or the end) estimates α per token.
        let observed = accepted as f64 / proposed as f64;
        self.alpha = 0.7 * self.alpha + 0.3 * observed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for _ in 0..40 {
            d.update(10, 6);
        }
        assert!((3..=5).contains(&d.k()), "{}", d.k());
    }
}
