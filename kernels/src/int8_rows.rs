//! An int8 copy of a float matrix, one scale per row: the opt-in faster output layer.
//!
//! A model's output layer (or its tied token embedding) is read whole for every token, and in
//! F16 it is the largest single read of a decoding step: bitnet-b1.58-2B-4T's 128,256 × 2560
//! embedding is 656 MB, more than all its ternary weights. Made at load, an int8 copy with a
//! per-row absmax scale halves that read. The logits move (each weight is rounded to 1/254 of
//! its row's largest magnitude, and the activations to 1/254 of theirs), so the exact F16
//! product stays the default and this one is chosen by hand (`--head int8`); its distance
//! is measured in `tests/tests/conformance.rs`.

use rayon::prelude::*;

use super::dense::DenseMatrix;

/// Rows of int8 values with one f32 scale each: `W[r] ≈ scale[r] · q[r]`.
#[derive(Debug, Clone)]
pub struct Int8Rows {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
}

impl Int8Rows {
    /// Quantizes every row of `m` with its absmax, in parallel.
    pub fn from_dense(m: &DenseMatrix) -> Self {
        let (rows, cols) = (m.rows(), m.cols());
        let mut q = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows];
        q.par_chunks_mut(cols).zip(scales.par_iter_mut()).enumerate().for_each(|(r, (qr, s))| {
            let mut row = vec![0f32; cols];
            m.row_into(r, &mut row);
            *s = quantize_row(&row, qr);
        });
        Self { rows, cols, q, scales }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes one product reads.
    pub fn weight_bytes(&self) -> usize {
        self.q.len() + 4 * self.scales.len()
    }

    /// `out[t * rows + r] ≈ W[r] · x_t` for `n_tokens` rows of `x`, in parallel over rows.
    /// Each token is quantized to int8 with its own absmax first. A token's result does not
    /// depend on the other tokens of the call.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        assert_eq!(x.len(), n_tokens * self.cols, "activation length does not match the matrix");
        assert_eq!(out.len(), n_tokens * self.rows, "output length does not match rows x tokens");
        let cols = self.cols;
        let mut xq = vec![0i8; x.len()];
        let xs: Vec<f32> = x.chunks(cols).zip(xq.chunks_mut(cols)).map(|(v, q)| quantize_row(v, q)).collect();
        let per_task = super::rows_per_task(self.rows, cols * n_tokens);
        let mut by_row = vec![0f32; self.rows * n_tokens];
        by_row.par_chunks_mut(per_task * n_tokens).enumerate().for_each(|(i, chunk)| {
            for (k, dst) in chunk.chunks_mut(n_tokens).enumerate() {
                let r = i * per_task + k;
                let w = &self.q[r * cols..(r + 1) * cols];
                for (t, d) in dst.iter_mut().enumerate() {
                    *d = dot_i8(w, &xq[t * cols..(t + 1) * cols]) as f32 * self.scales[r] * xs[t];
                }
            }
        });
        for r in 0..self.rows {
            for t in 0..n_tokens {
                out[t * self.rows + r] = by_row[r * n_tokens + t];
            }
        }
    }
}

/// Writes `round(v / scale)` into `q` with `scale = max|v| / 127`, and returns the scale.
fn quantize_row(v: &[f32], q: &mut [i8]) -> f32 {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return 0.0;
    }
    let inv = 127.0 / amax;
    for (o, &x) in q.iter_mut().zip(v) {
        *o = (x * inv).round().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// `Σ a·b` in integers: exact, whatever the instruction set.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected; both slices have the same length.
        return unsafe { dot_i8_avx2(a, b) };
    }
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// 32 products a step: `vpmaddubsw` multiplies |a| (unsigned) by b with a's sign moved onto
/// it; no pair of products reaches the 16-bit limit, since no value is -128.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len() / 32 * 32;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    for i in (0..n).step_by(32) {
        let va = _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i);
        let vb = _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i);
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    let s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s) + a[n..].iter().zip(&b[n..]).map(|(&x, &y)| x as i32 * y as i32).sum::<i32>()
}

/// f32 values of a dense row, for tests.
#[cfg(test)]
fn row_f32(m: &DenseMatrix, r: usize) -> Vec<f32> {
    let mut v = vec![0f32; m.cols()];
    m.row_into(r, &mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::DenseType;
    use crate::WeightBytes;
    use half::f16;
    use std::sync::Arc;

    fn f16_matrix(rows: usize, cols: usize, seed: u64) -> DenseMatrix {
        let mut s = seed | 1;
        let bytes: Vec<u8> = (0..rows * cols)
            .flat_map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                f16::from_f32((s % 2001) as f32 / 1000.0 - 1.0).to_le_bytes()
            })
            .collect();
        DenseMatrix::new(DenseType::F16, rows, cols, WeightBytes::Owned(Arc::new(bytes))).unwrap()
    }

    #[test]
    fn integer_dot_is_exact() {
        let a: Vec<i8> = (0..517).map(|i| ((i * 37) % 255 - 127) as i8).collect();
        let b: Vec<i8> = (0..517).map(|i| ((i * 91 + 5) % 255 - 127) as i8).collect();
        let want: i32 = a.iter().zip(&b).map(|(&x, &y)| x as i32 * y as i32).sum();
        assert_eq!(dot_i8(&a, &b), want);
    }

    #[test]
    fn close_to_the_float_product_and_independent_of_the_batch() {
        let (rows, cols, n) = (37, 320, 5);
        let m = f16_matrix(rows, cols, 9);
        let q = Int8Rows::from_dense(&m);
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut got = vec![0f32; rows * n];
        q.matmul(&x, n, &mut got);
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let mut alone = vec![0f32; rows];
            q.matmul(xt, 1, &mut alone);
            for r in 0..rows {
                let exact: f32 = row_f32(&m, r).iter().zip(xt).map(|(a, b)| a * b).sum();
                let mag: f32 = row_f32(&m, r).iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                assert!((got[t * rows + r] - exact).abs() <= 0.02 * mag, "{} vs {exact}", got[t * rows + r]);
                assert_eq!(alone[r].to_bits(), got[t * rows + r].to_bits());
            }
        }
    }
}
