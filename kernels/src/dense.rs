//! Float matrices (F32, F16, BF16): the token embedding, which is also the tied output layer,
//! and any weight a file stores unquantized. Activations stay f32 here, since the logits are
//! what the API reports as logprobs.

use half::{bf16, f16};
use rayon::prelude::*;

use super::WeightBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseType {
    F32,
    F16,
    BF16,
}

impl DenseType {
    pub fn size(self) -> usize {
        match self {
            DenseType::F32 => 4,
            DenseType::F16 | DenseType::BF16 => 2,
        }
    }
}

/// A row-major float matrix: `rows` vectors of `cols`.
///
/// Built only by [`DenseMatrix::new`], which checks the byte length; the fields are private so
/// that the check holds for as long as the matrix lives (the AVX2 path reads rows through raw
/// pointers).
#[derive(Debug, Clone)]
pub struct DenseMatrix {
    dtype: DenseType,
    rows: usize,
    cols: usize,
    data: WeightBytes,
}

impl DenseMatrix {
    pub fn new(dtype: DenseType, rows: usize, cols: usize, data: WeightBytes) -> Result<Self, super::MatrixError> {
        let need = rows * cols * dtype.size();
        if data.len() != need {
            return Err(super::MatrixError(format!("{dtype:?} {rows}x{cols} needs {need} bytes, got {}", data.len())));
        }
        Ok(Self { dtype, rows, cols, data })
    }

    pub fn dtype(&self) -> DenseType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored bytes of row `r`.
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let n = self.cols * self.dtype.size();
        &self.data[r * n..(r + 1) * n]
    }

    /// Copies row `r` into `out` as f32 (an embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let bytes = self.row_bytes(r);
        match self.dtype {
            DenseType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DenseType::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DenseType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }

    /// `out[t * rows + r] = W[r] · x_t` for `n_tokens` rows of `x`, in parallel over rows.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        assert_eq!(x.len(), n_tokens * self.cols);
        assert_eq!(out.len(), n_tokens * self.rows);
        let rows_per_task = super::rows_per_task(self.rows, self.cols * n_tokens);
        let mut by_row = vec![0f32; self.rows * n_tokens];
        let f16_simd = f16_simd_available();
        let task = |i: usize, chunk: &mut [f32]| {
            let first = i * rows_per_task;
            if self.dtype == DenseType::F16 && f16_simd {
                #[cfg(target_arch = "x86_64")]
                {
                    let n_rows = chunk.len() / n_tokens;
                    let bytes = &self.data[first * self.cols * 2..(first + n_rows) * self.cols * 2];
                    // SAFETY: the CPU has AVX2, FMA and F16C; `bytes` holds the chunk's rows.
                    unsafe { f16_rows_avx2(bytes, x, self.cols, n_tokens, chunk) };
                }
                return;
            }
            let mut row = vec![0f32; self.cols];
            for (k, dst) in chunk.chunks_mut(n_tokens).enumerate() {
                self.row_into(first + k, &mut row);
                for (t, d) in dst.iter_mut().enumerate() {
                    *d = dot_f32(&row, &x[t * self.cols..(t + 1) * self.cols]);
                }
            }
        };
        if rows_per_task >= self.rows {
            task(0, &mut by_row);
        } else {
            by_row.par_chunks_mut(rows_per_task * n_tokens).enumerate().for_each(|(i, chunk)| task(i, chunk));
        }
        for r in 0..self.rows {
            for t in 0..n_tokens {
                out[t * self.rows + r] = by_row[r * n_tokens + t];
            }
        }
    }
}

/// A dot product written so that the compiler vectorizes it (eight independent sums).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn f16_simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// F16 rows against every token, `dst[r * n_tokens + t] = W[r] · x_t`.
///
/// One token (decoding) goes one row at a time through [`dot_f16_avx2`]: a single stream of
/// weight bytes per thread is what the memory system serves fastest. Several tokens go over
/// blocks of rows small enough to stay in L1/L2 while every token passes over them, so each
/// weight byte comes from memory once however many tokens there are; within a block, each
/// row meets up to four tokens at a time, each weight vector converted once for them.
/// Every (row, token) sum is taken in [`dot_f16_avx2`]'s order (two running sums over
/// alternate eight-column pieces, then the tail), so a token's logits are the same bits
/// alone or in a batch, which greedy speculative decoding needs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_rows_avx2(w: &[u8], x: &[f32], cols: usize, n_tokens: usize, dst: &mut [f32]) {
    let rows = dst.len() / n_tokens;
    assert!(w.len() >= rows * cols * 2 && x.len() >= n_tokens * cols);
    if n_tokens == 1 {
        for (r, d) in dst.iter_mut().enumerate() {
            *d = dot_f16_avx2(&w[2 * r * cols..2 * (r + 1) * cols], &x[..cols]);
        }
        return;
    }
    let block = (F16_BLOCK_BYTES / (2 * cols)).max(1);
    let mut b0 = 0;
    while b0 < rows {
        let b1 = (b0 + block).min(rows);
        let mut t0 = 0;
        while t0 < n_tokens {
            let n = match n_tokens - t0 {
                4 => 2,
                left => left.min(3),
            };
            let mut r = b0;
            while r < b1 {
                r += match (n, b1 - r >= 2) {
                    (1, _) => f16_tile::<1, 1>(w, r, x, cols, t0, n_tokens, dst),
                    (2, _) => f16_tile::<1, 2>(w, r, x, cols, t0, n_tokens, dst),
                    (_, true) => f16_tile::<2, 3>(w, r, x, cols, t0, n_tokens, dst),
                    (_, false) => f16_tile::<1, 3>(w, r, x, cols, t0, n_tokens, dst),
                };
            }
            t0 += n;
        }
        b0 = b1;
    }
}

/// Weight bytes per row block in [`f16_rows_avx2`]: well inside L2 next to the activations.
#[cfg(target_arch = "x86_64")]
const F16_BLOCK_BYTES: usize = 32 << 10;

/// Rows `r0..r0 + R` against tokens `t0..t0 + N`, each sum in [`dot_f16_avx2`]'s order.
/// Returns R.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn f16_tile<const R: usize, const N: usize>(
    w: &[u8],
    r0: usize,
    x: &[f32],
    cols: usize,
    t0: usize,
    n_tokens: usize,
    dst: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let mut acc = [[[_mm256_setzero_ps(); 2]; N]; R];
    let (wp, xp) = (w.as_ptr().add(2 * r0 * cols), x.as_ptr());
    let mut i = 0;
    while i + 16 <= cols {
        let mut h = [[_mm256_setzero_ps(); 2]; R];
        for (r, hr) in h.iter_mut().enumerate() {
            let p = wp.add(2 * (r * cols + i));
            *hr = [
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i)),
            ];
        }
        for k in 0..N {
            let xk = xp.add((t0 + k) * cols + i);
            let (x0, x1) = (_mm256_loadu_ps(xk), _mm256_loadu_ps(xk.add(8)));
            for r in 0..R {
                acc[r][k][0] = _mm256_fmadd_ps(h[r][0], x0, acc[r][k][0]);
                acc[r][k][1] = _mm256_fmadd_ps(h[r][1], x1, acc[r][k][1]);
            }
        }
        i += 16;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &w[2 * (r0 + r) * cols..2 * (r0 + r + 1) * cols];
        for (k, [a0, a1]) in acc_r.iter().enumerate() {
            let mut sum = super::x86::hsum(_mm256_add_ps(*a0, *a1));
            let xt = &x[(t0 + k) * cols..(t0 + k + 1) * cols];
            for j in i..cols {
                sum += f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32() * xt[j];
            }
            dst[(r0 + r) * n_tokens + t0 + k] = sum;
        }
    }
    R
}

/// `out += alpha * v` for little-endian f16 `v` (AVX2 + F16C where available).
pub fn axpy_f16(alpha: f32, v: &[u8], out: &mut [f32]) {
    assert_eq!(v.len(), out.len() * 2);
    #[cfg(target_arch = "x86_64")]
    if f16_simd_available() {
        // SAFETY: the CPU has AVX2, FMA and F16C; lengths checked above.
        unsafe { axpy_f16_avx2(alpha, v, out) };
        return;
    }
    for (o, c) in out.iter_mut().zip(v.chunks_exact(2)) {
        *o += alpha * f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx2(alpha: f32, v: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(alpha);
    let n = out.len();
    let mut i = 0;
    while i + 8 <= n {
        let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(2 * i) as *const __m128i));
        let o = _mm256_loadu_ps(out.as_ptr().add(i));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(a, vv, o));
        i += 8;
    }
    for j in i..n {
        out[j] += alpha * f16::from_le_bytes([v[2 * j], v[2 * j + 1]]).to_f32();
    }
}

/// Dot product of little-endian f16 bytes with f32 values (AVX2 + F16C where available).
pub fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len() * 2);
    #[cfg(target_arch = "x86_64")]
    if f16_simd_available() {
        // SAFETY: the CPU has AVX2, FMA and F16C; lengths checked above.
        return unsafe { dot_f16_avx2(w, x) };
    }
    w.chunks_exact(2).zip(x).map(|(c, &v)| f16::from_le_bytes([c[0], c[1]]).to_f32() * v).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(w: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let h0 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(2 * i) as *const __m128i));
        let h1 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(2 * i + 16) as *const __m128i));
        a0 = _mm256_fmadd_ps(h0, _mm256_loadu_ps(x.as_ptr().add(i)), a0);
        a1 = _mm256_fmadd_ps(h1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
        i += 16;
    }
    let mut sum = super::x86::hsum(_mm256_add_ps(a0, a1));
    while i < n {
        sum += f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32() * x[i];
        i += 1;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn f16_matmul_matches_f32_for_every_tile_shape() {
        // 37 rows leave remainders after every row tile; 100 columns leave a tail after
        // the 8-wide vectors; 1..=11 tokens reach every token tile and their mixes.
        let (rows, cols) = (37, 100);
        let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let m = DenseMatrix::new(DenseType::F16, rows, cols, WeightBytes::Owned(Arc::new(bytes))).unwrap();
        for n in 1..=11 {
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
            let mut out = vec![0f32; n * rows];
            m.matmul(&x, n, &mut out);
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                let mut alone = vec![0f32; rows];
                m.matmul(xt, 1, &mut alone);
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|k| vals[r * cols + k] * x[t * cols + k]).sum();
                    assert!((out[t * rows + r] - want).abs() < 1e-3, "n={n} t={t} r={r}");
                    // A token's result is the same bits alone and in a batch, and (on the F16
                    // SIMD path, whose one-token product is the row dot) as a row dot.
                    assert_eq!(out[t * rows + r].to_bits(), alone[r].to_bits(), "n={n} t={t} r={r}");
                    if f16_simd_available() {
                        assert_eq!(alone[r].to_bits(), dot_f16(m.row_bytes(r), xt).to_bits(), "row dot, r={r}");
                    }
                }
            }
        }
    }
}
