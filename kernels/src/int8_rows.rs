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
    /// `Σ q[r]` per row: `vpdpbusd` multiplies unsigned bytes, so the activations go in offset
    /// by 128 and `128 · Σ q[r]` comes off each sum (x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    row_sums: Vec<i32>,
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
        let row_sums = q.par_chunks(cols.max(1)).map(|r| r.iter().map(|&v| v as i32).sum()).collect();
        Self { rows, cols, q, scales, row_sums }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`'s int8 values and scale.
    pub fn row(&self, r: usize) -> (&[i8], f32) {
        (&self.q[r * self.cols..(r + 1) * self.cols], self.scales[r])
    }

    /// Bytes one product reads.
    pub fn weight_bytes(&self) -> usize {
        self.q.len() + 4 * self.scales.len()
    }

    /// `out[t * rows + r] ≈ W[r] · x_t` for `n_tokens` rows of `x`, in parallel over rows.
    /// Each token is quantized to int8 with its own absmax first. A token's result does not
    /// depend on the other tokens of the call.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        self.matmul_quantized(&self.quantize(x, n_tokens), out);
    }

    /// `n_tokens` rows of `x`, each quantized with its own absmax, as [`Int8Rows::matmul`]
    /// takes them.
    pub(crate) fn quantize(&self, x: &[f32], n_tokens: usize) -> QuantizedTokens {
        assert_eq!(x.len(), n_tokens * self.cols, "activation length does not match the matrix");
        let mut values = vec![0i8; x.len()];
        let scales =
            x.chunks(self.cols.max(1)).zip(values.chunks_mut(self.cols.max(1))).map(|(v, q)| quantize_row(v, q)).collect();
        QuantizedTokens { cols: self.cols, values, scales }
    }

    /// [`Int8Rows::matmul`] of tokens already quantized.
    pub(crate) fn matmul_quantized(&self, x: &QuantizedTokens, out: &mut [f32]) {
        let (cols, n_tokens) = (self.cols, x.scales.len());
        assert_eq!(x.cols, cols, "tokens quantized for another width");
        assert_eq!(out.len(), n_tokens * self.rows, "output length does not match rows x tokens");
        let (xq, xs) = (&x.values, &x.scales);
        let xu: Vec<u8> = xq.iter().map(|&v| (v as u8) ^ 0x80).collect();
        let per_task = super::rows_per_task(self.rows, cols * n_tokens);
        let task = |block: super::RowBlock| {
            let first = block.rows.start;
            block.fill(1.0, |chunk| {
                let mut isum = vec![0i32; chunk.len()];
                self.integer_sums(first, xq, &xu, n_tokens, &mut isum);
                for (k, (dst, sums)) in chunk.chunks_mut(n_tokens).zip(isum.chunks(n_tokens)).enumerate() {
                    for (t, (d, &sum)) in dst.iter_mut().zip(sums).enumerate() {
                        *d = sum as f32 * self.scales[first + k] * xs[t];
                    }
                }
            })
        };
        // One block a steal, as in `matmul_group`.
        super::RowBlock::split(out, self.rows, n_tokens, per_task).into_par_iter().with_max_len(1).for_each(task);
    }
}

/// Tokens quantized to int8 with one scale each ([`Int8Rows::quantize`]); the lengths agree
/// by construction.
pub(crate) struct QuantizedTokens {
    cols: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl QuantizedTokens {
    /// Token `t`'s int8 values and scale.
    pub(crate) fn token(&self, t: usize) -> (&[i8], f32) {
        (&self.values[t * self.cols..(t + 1) * self.cols], self.scales[t])
    }
}

impl Int8Rows {
    /// `isum[k * n_tokens + t] = q[first + k] · p_t` (exact integers) for the rows `isum`
    /// covers; `xu` is `p` offset by 128 as unsigned bytes.
    fn integer_sums(&self, first: usize, p: &[i8], xu: &[u8], n_tokens: usize, isum: &mut [i32]) {
        let (cols, n_rows) = (self.cols, isum.len() / n_tokens.max(1));
        assert!(first + n_rows <= self.rows && p.len() == n_tokens * cols && xu.len() == p.len());
        #[cfg(target_arch = "x86_64")]
        if super::x86::Avx512Vnni::detected() {
            // SAFETY: the CPU has AVX-512F/BW and VNNI; the rows and tokens read are in
            // bounds (asserted above).
            unsafe { vnni::sums(&self.q[first * cols..], &self.row_sums[first..], xu, cols, n_tokens, isum) };
            return;
        }
        let _ = xu;
        for (k, sums) in isum.chunks_mut(n_tokens).enumerate() {
            let w = &self.q[(first + k) * cols..(first + k + 1) * cols];
            for (t, d) in sums.iter_mut().enumerate() {
                *d = dot_i8(w, &p[t * cols..(t + 1) * cols]);
            }
        }
    }
}

/// Int8 rows times int8 tokens with 512-bit `vpdpbusd`, in register tiles of up to 4 rows by
/// 4 tokens: each loaded weight vector serves every token of the tile and each activation
/// vector every row, so several tokens cost little more than one. A product that gives each
/// (row, token) its own exact integer sum gives the same bits on any path.
#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    /// `isum[k * n + t] = Σ_j q[k][j] · (xu[t][j] − 128)` for the rows of `q` that `isum`
    /// covers; `row_sums[k] = Σ_j q[k][j]`.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX-512 VNNI; `q` holds `isum.len() / n` rows of
    /// `cols`, `row_sums` as many sums, and `xu` `n` tokens of `cols`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn sums(q: &[i8], row_sums: &[i32], xu: &[u8], cols: usize, n: usize, isum: &mut [i32]) {
        let rows = isum.len() / n;
        assert!(q.len() >= rows * cols && row_sums.len() >= rows && xu.len() >= n * cols);
        let tile = Tile { q: q.as_ptr(), row_sums, xu: xu.as_ptr(), cols, n };
        let mut r = 0;
        while r < rows {
            // One token goes row by row: one stream of weight bytes per thread is read faster
            // than four side by side (128k × 2560, two threads, alternating four times: 9.9–11.3
            // against 14.9–15.3 ms). At nine tokens four rows a tile are faster (20–24 against
            // 30–39 ms).
            let rr = (rows - r).min(if n == 1 { 1 } else { 4 });
            for (t0, len) in crate::token_groups(n, 4) {
                let dst = &mut *isum;
                match (rr, len) {
                    (4, 1) => tile.run::<4, 1>(r, t0, dst),
                    (4, 2) => tile.run::<4, 2>(r, t0, dst),
                    (4, 3) => tile.run::<4, 3>(r, t0, dst),
                    (4, _) => tile.run::<4, 4>(r, t0, dst),
                    (3, 1) => tile.run::<3, 1>(r, t0, dst),
                    (3, 2) => tile.run::<3, 2>(r, t0, dst),
                    (3, 3) => tile.run::<3, 3>(r, t0, dst),
                    (3, _) => tile.run::<3, 4>(r, t0, dst),
                    (2, 1) => tile.run::<2, 1>(r, t0, dst),
                    (2, 2) => tile.run::<2, 2>(r, t0, dst),
                    (2, 3) => tile.run::<2, 3>(r, t0, dst),
                    (2, _) => tile.run::<2, 4>(r, t0, dst),
                    (_, 1) => tile.run::<1, 1>(r, t0, dst),
                    (_, 2) => tile.run::<1, 2>(r, t0, dst),
                    (_, 3) => tile.run::<1, 3>(r, t0, dst),
                    (_, _) => tile.run::<1, 4>(r, t0, dst),
                }
            }
            r += rr;
        }
    }

    struct Tile<'a> {
        q: *const i8,
        row_sums: &'a [i32],
        xu: *const u8,
        cols: usize,
        n: usize,
    }

    impl Tile<'_> {
        /// Rows `r..r + R` by tokens `t0..t0 + N`.
        #[inline(always)]
        unsafe fn run<const R: usize, const N: usize>(&self, r: usize, t0: usize, isum: &mut [i32]) {
            let cols = self.cols;
            let rows: [*const i8; R] = std::array::from_fn(|i| self.q.add((r + i) * cols));
            let toks: [*const u8; N] = std::array::from_fn(|k| self.xu.add((t0 + k) * cols));
            let mut acc = [[_mm512_setzero_si512(); N]; R];
            let whole = cols / 64 * 64;
            let mut j = 0;
            while j < whole {
                let mut w = [_mm512_setzero_si512(); R];
                for i in 0..R {
                    w[i] = _mm512_loadu_si512(rows[i].add(j) as *const __m512i);
                }
                for k in 0..N {
                    let u = _mm512_loadu_si512(toks[k].add(j) as *const __m512i);
                    for i in 0..R {
                        acc[i][k] = _mm512_dpbusd_epi32(acc[i][k], u, w[i]);
                    }
                }
                j += 64;
            }
            for i in 0..R {
                for k in 0..N {
                    let mut s = _mm512_reduce_add_epi32(acc[i][k]);
                    for c in whole..cols {
                        s += *rows[i].add(c) as i32 * *toks[k].add(c) as i32;
                    }
                    isum[(r + i) * self.n + t0 + k] = s - 128 * self.row_sums[r + i];
                }
            }
        }
    }
}

/// Writes `round(v / scale)` into `q` with `scale = max|v| / 127`, and returns the scale.
pub(crate) fn quantize_row(v: &[f32], q: &mut [i8]) -> f32 {
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
    fn every_path_gives_the_integer_sums_bit_for_bit() {
        // Widths with and without a tail past the 64-byte vectors; row and token counts that
        // take every tile shape.
        for (rows, cols) in [(1, 64), (7, 100), (9, 320), (13, 131)] {
            let m = f16_matrix(rows, cols, rows as u64 * 31 + cols as u64);
            let q = Int8Rows::from_dense(&m);
            for n in [1, 2, 3, 4, 5, 9] {
                let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919 + n) % 1000) as f32 / 250.0 - 2.0).collect();
                let mut got = vec![0f32; rows * n];
                q.matmul(&x, n, &mut got);
                for t in 0..n {
                    let mut p = vec![0i8; cols];
                    let s = quantize_row(&x[t * cols..(t + 1) * cols], &mut p);
                    for r in 0..rows {
                        let (w, d) = q.row(r);
                        let want = dot_i8(w, &p) as f32 * d * s;
                        assert_eq!(got[t * rows + r].to_bits(), want.to_bits(), "{rows}x{cols}, {n} tokens, ({r}, {t})");
                    }
                }
            }
        }
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
        // The second shape splits into several row tasks.
        for (rows, cols, n) in [(37, 320, 5), (700, 512, 5)] {
            close_and_independent(rows, cols, n);
        }
    }

    fn close_and_independent(rows: usize, cols: usize, n: usize) {
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
