//! The output layer for rows that feed only an argmax (greedy decoding and greedy
//! verification): an int8 screen, then the exact product for the few tokens that can still be
//! the largest.
//!
//! Every logit of the int8 copy ([`Int8Rows`]) lies within a bound of the exact product's,
//! and the bound is proven, not estimated. So a token whose screened logit plus its bound
//! falls below some other token's screened logit minus that one's bound cannot be the exact
//! argmax. Only the rest, the candidates, are multiplied exactly, with the same code as the
//! full product ([`DenseMatrix::row_dot`]), so the argmax, ties included, is the exact
//! product's. The read per token is the int8 copy (half of F16) plus a few exact rows.
//!
//! The bound, for row `W` with int8 copy `d·q` (error `ε = W − d·q`, known at load) and a
//! token `x` with int8 copy `s·p` (error `δ = x − s·p`, known per token):
//! `W·x − d·s·(q·p) = ε·x + (d·q)·δ`, so by Cauchy–Schwarz it is at most
//! `‖ε‖‖x‖ + ‖d·q‖‖δ‖`. Add the exact product's own float rounding (at most
//! `γ_n ‖W‖‖x‖` for sums of `n` terms, `γ_n = n·u / (1 − n·u)`) and the screen's (its integer
//! sum times two scales, at most `4u` of its value).

use rayon::prelude::*;

use super::dense::DenseMatrix;
use super::int8_rows::{Int8Rows, QuantizedTokens};

/// f32's unit roundoff.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// An int8 copy of an output layer with each row's error bounds, made at load.
#[derive(Debug, Clone)]
pub struct ArgmaxScreen {
    int8: Int8Rows,
    /// Per row: `‖ε‖ + γ_n ‖W‖`, rounded up (multiplies `‖x‖`).
    per_x: Vec<f32>,
    /// Per row: `‖d·q‖`, rounded up (multiplies `‖δ‖`).
    per_delta: Vec<f32>,
    /// Whether every bound is finite: a layer with an infinite or NaN weight has no bound, and
    /// takes the exact product.
    bounded: bool,
}

/// What one screened product did: for the benchmarks and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScreenStats {
    /// Rows multiplied exactly, over all tokens.
    pub candidates: usize,
    /// Tokens whose candidates were so many that every row was multiplied exactly.
    pub full_rows: usize,
    /// Tokens screened.
    pub tokens: usize,
}

impl std::ops::Add for ScreenStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            candidates: self.candidates + o.candidates,
            full_rows: self.full_rows + o.full_rows,
            tokens: self.tokens + o.tokens,
        }
    }
}

/// A token whose candidates exceed this share of the rows gets the full exact product.
const FULL_FROM: usize = 8;
/// Far above what f32 underflow can add to a dot product of any width this runs on.
const UNDERFLOW: f64 = 1e-30;
/// Rows per task in the sweeps over a token's screened logits.
const SWEEP_CHUNK: usize = 8192;

impl ArgmaxScreen {
    /// Quantizes `m` to int8 rows and measures each row's error, in parallel.
    pub fn from_dense(m: &DenseMatrix) -> Self {
        let int8 = Int8Rows::from_dense(m);
        let cols = m.cols();
        let gamma = gamma(cols);
        let (per_x, per_delta): (Vec<f32>, Vec<f32>) = (0..m.rows())
            .into_par_iter()
            .map_init(
                || vec![0f32; cols],
                |row, r| {
                    m.row_into(r, row);
                    let (q, d) = int8.row(r);
                    let (mut err, mut dq, mut w) = (0f64, 0f64, 0f64);
                    for (&v, &qi) in row.iter().zip(q) {
                        let approx = d as f64 * qi as f64;
                        err += (v as f64 - approx).powi(2);
                        dq += approx * approx;
                        w += (v as f64).powi(2);
                    }
                    (round_up(err.sqrt() + gamma * w.sqrt()), round_up(dq.sqrt()))
                },
            )
            .unzip();
        let bounded = per_x.iter().chain(&per_delta).all(|b| b.is_finite());
        Self { int8, per_x, per_delta, bounded }
    }

    /// Bytes one product reads (the int8 rows, their scales and bounds).
    pub fn weight_bytes(&self) -> usize {
        self.int8.weight_bytes() + 4 * (self.per_x.len() + self.per_delta.len())
    }

    /// For `n_tokens` rows of `x`, each `m.cols()` values as the exact product takes them
    /// (F16-rounded for an F16 layer), writes rows of `out` (`out[t * rows + r]`) that hold
    /// the exact product [`DenseMatrix::matmul`] gives wherever a row could be the largest,
    /// and −∞ elsewhere. So each row's argmax, with the lowest index winning a tie, is the
    /// exact product's; no other use of these rows is sound. `m` is the matrix this screen was
    /// made from.
    pub fn argmax_logits(&self, m: &DenseMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) -> ScreenStats {
        let (rows, cols) = (m.rows(), m.cols());
        assert!(rows == self.int8.rows() && cols == self.int8.cols(), "a screen used with another matrix");
        assert_eq!(x.len(), n_tokens * cols, "activation length does not match the matrix");
        assert_eq!(out.len(), n_tokens * rows, "output length does not match rows x tokens");
        if !self.bounded || !x.iter().all(|v| v.is_finite()) {
            // No bound holds for infinite or NaN weights or activations: the exact product
            // says what they give.
            m.matmul(x, n_tokens, out);
            return ScreenStats { candidates: rows * n_tokens, full_rows: n_tokens, tokens: n_tokens };
        }
        let xq = self.int8.quantize(x, n_tokens);
        self.int8.matmul_quantized(&xq, out);
        if n_tokens == 1 {
            return self.screen_token(m, x, &xq, 0, out, SWEEP_CHUNK);
        }
        // Several tokens: one task each, each sweeping its rows alone.
        x.par_chunks_exact(cols)
            .zip(out.par_chunks_exact_mut(rows))
            .enumerate()
            .map(|(t, (xt, logits))| self.screen_token(m, xt, &xq, t, logits, rows))
            .reduce(ScreenStats::default, |a, b| a + b)
    }

    /// Turns one token's screened logits into its [`ArgmaxScreen::argmax_logits`] row, in
    /// parallel tasks of `min_len` rows.
    fn screen_token(
        &self,
        m: &DenseMatrix,
        xt: &[f32],
        xq: &QuantizedTokens,
        t: usize,
        logits: &mut [f32],
        min_len: usize,
    ) -> ScreenStats {
        let rows = logits.len();
        let (p, s) = xq.token(t);
        let (x_norm, delta_norm) = norms(xt, p, s);
        let bound = |r: usize, a: f32| {
            let b = self.per_x[r] as f64 * x_norm + self.per_delta[r] as f64 * delta_norm + 4.0 * U * a.abs() as f64;
            // Slack for the rounding of this sum itself, and for f32 underflow (each of the
            // products' few thousand roundings is off by at most 2^-150 where they reach
            // subnormals, which no relative bound covers).
            b * (1.0 + 1e-6) + UNDERFLOW
        };
        // One sweep: each chunk of rows keeps its running highest lower bound, and the rows
        // whose upper bound reaches it when they are read (a row left out falls below a
        // floor that only rises). The kept rows are then held to the highest floor of all.
        let upper = |r: usize| logits[r] as f64 + bound(r, logits[r]);
        let parts: Vec<(f64, Vec<usize>)> = logits
            .par_chunks(min_len.max(1))
            .enumerate()
            .map(|(i, chunk)| {
                let (mut floor, mut kept) = (f64::NEG_INFINITY, vec![]);
                for (j, &a) in chunk.iter().enumerate() {
                    let r = i * min_len.max(1) + j;
                    let b = bound(r, a);
                    floor = floor.max(a as f64 - b);
                    if a as f64 + b >= floor {
                        kept.push(r);
                    }
                }
                (floor, kept)
            })
            .collect();
        let floor = parts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let candidates: Vec<usize> = parts.into_iter().flat_map(|p| p.1).filter(|&r| upper(r) >= floor).collect();
        if candidates.len() * FULL_FROM > rows {
            m.matmul(xt, 1, logits);
            return ScreenStats { candidates: rows, full_rows: 1, tokens: 1 };
        }
        let exact: Vec<f32> = candidates.par_iter().with_min_len(min_len / 64).map(|&r| m.row_dot(r, xt)).collect();
        logits.fill(f32::NEG_INFINITY);
        for (&r, e) in candidates.iter().zip(exact) {
            logits[r] = e;
        }
        ScreenStats { candidates: candidates.len(), full_rows: 0, tokens: 1 }
    }
}

/// `γ_n` for a dot product of `cols` terms, with room for the reduction of its partial sums.
fn gamma(cols: usize) -> f64 {
    let n = (cols + 64) as f64;
    n * U / (1.0 - n * U)
}

/// A bound as f32, never below the f64 value.
fn round_up(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v {
        f.next_up()
    } else {
        f
    }
}

/// `‖x‖` and `‖x − s·p‖`, where `s·p` is the int8 copy [`Int8Rows::quantize`] made of `x`.
fn norms(x: &[f32], p: &[i8], s: f32) -> (f64, f64) {
    let s = s as f64;
    let (mut xx, mut dd) = (0f64, 0f64);
    for (&v, &pi) in x.iter().zip(p) {
        xx += (v as f64).powi(2);
        dd += (v as f64 - s * pi as f64).powi(2);
    }
    // The f64 sums are far closer than the slack `argmax_logits` adds.
    (xx.sqrt(), dd.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::DenseType;
    use crate::WeightBytes;
    use half::f16;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn argmax(v: &[f32]) -> usize {
        let mut best = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best
    }

    fn matrix(dtype: DenseType, values: &[f32], rows: usize, cols: usize) -> DenseMatrix {
        let bytes: Vec<u8> = match dtype {
            DenseType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            DenseType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            DenseType::F32 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        };
        DenseMatrix::new(dtype, rows, cols, WeightBytes::Owned(Arc::new(bytes))).unwrap()
    }

    /// Rows built to crowd the top: many near-copies of one row, so that the screened
    /// logits of the leaders lie within each other's bounds and the exact products decide.
    fn crowded(seed: u64, rows: usize, cols: usize, copies: usize, spread: f32) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 20001) as f32 / 10000.0 - 1.0
        };
        let base: Vec<f32> = (0..cols).map(|_| next() * 0.05).collect();
        (0..rows)
            .flat_map(|r| {
                let near = r % (rows / copies.max(1)).max(1) == 0;
                (0..cols).map(|c| if near { base[c] + spread * next() } else { next() * 0.05 }).collect::<Vec<_>>()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The screened rows' argmax is the exact product's, and every candidate holds the
        /// exact product's bits, for each float type, one token or several, including
        /// matrices whose leading rows are near-ties.
        #[test]
        fn screened_argmax_is_the_exact_argmax(
            seed in any::<u64>(),
            rows in 9usize..300,
            cols in 1usize..300,
            n in 1usize..5,
            copies in 1usize..40,
            spread in prop_oneof![Just(0.0f32), Just(1e-5), Just(1e-3), Just(0.05)],
            dtype in prop_oneof![Just(DenseType::F16), Just(DenseType::F32), Just(DenseType::BF16)],
        ) {
            let w = crowded(seed, rows, cols, copies, spread);
            let m = matrix(dtype, &w, rows, cols);
            let screen = ArgmaxScreen::from_dense(&m);
            let mut s = seed.rotate_left(17) | 1;
            let mut x: Vec<f32> = (0..n * cols).map(|_| {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                (s % 4001) as f32 / 1000.0 - 2.0
            }).collect();
            if dtype == DenseType::F16 {
                x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
            }
            let mut exact = vec![0f32; rows * n];
            m.matmul(&x, n, &mut exact);
            let mut screened = vec![0f32; rows * n];
            screen.argmax_logits(&m, &x, n, &mut screened);
            for t in 0..n {
                let (e, g) = (&exact[t * rows..(t + 1) * rows], &screened[t * rows..(t + 1) * rows]);
                prop_assert_eq!(argmax(g), argmax(e));
                for r in 0..rows {
                    prop_assert!(g[r] == f32::NEG_INFINITY || g[r].to_bits() == e[r].to_bits());
                }
            }
        }
    }

    #[test]
    fn row_dot_is_the_products_entry() {
        for dtype in [DenseType::F16, DenseType::F32, DenseType::BF16] {
            let (rows, cols, n) = (13, 517, 9);
            let m = matrix(dtype, &crowded(3, rows, cols, 2, 0.01), rows, cols);
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let mut all = vec![0f32; rows * n];
            m.matmul(&x, n, &mut all);
            for t in 0..n {
                for r in 0..rows {
                    assert_eq!(m.row_dot(r, &x[t * cols..(t + 1) * cols]).to_bits(), all[t * rows + r].to_bits(), "{dtype:?}");
                }
            }
        }
    }

    #[test]
    fn few_candidates_on_a_spread_layer_and_the_exact_product_for_non_finite_values() {
        let (rows, cols) = (4096, 256);
        let m = matrix(DenseType::F16, &crowded(11, rows, cols, 1, 0.05), rows, cols);
        let screen = ArgmaxScreen::from_dense(&m);
        let x: Vec<f32> = (0..cols).map(|i| f16::from_f32(((i * 31) % 97) as f32 / 24.0 - 2.0).to_f32()).collect();
        let mut out = vec![0f32; rows];
        let stats = screen.argmax_logits(&m, &x, 1, &mut out);
        assert!(stats.candidates < rows / 8 && stats.full_rows == 0, "{stats:?}");
        let mut bad = x.clone();
        bad[3] = f32::NAN;
        let stats = screen.argmax_logits(&m, &bad, 1, &mut out);
        assert_eq!(stats, ScreenStats { candidates: rows, full_rows: 1, tokens: 1 });
        // A NaN weight: no bound, so the exact product, bit for bit.
        let mut w = crowded(11, rows, cols, 1, 0.05);
        w[5 * cols + 7] = f32::NAN;
        let m = matrix(DenseType::F16, &w, rows, cols);
        let mut exact = vec![0f32; rows];
        m.matmul(&x, 1, &mut exact);
        let stats = ArgmaxScreen::from_dense(&m).argmax_logits(&m, &x, 1, &mut out);
        assert_eq!(stats.full_rows, 1);
        assert!(out.iter().zip(&exact).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
