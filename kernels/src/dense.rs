//! Float matrices (F32, F16, BF16): the token embedding, which is also the tied output layer,
//! and any weight a file stores unquantized. Activations stay f32 here, since the logits are
//! what the API reports as logprobs.

#[cfg(target_arch = "x86_64")]
use std::ops::Range;

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

    /// `W[r] · x`, the same bits as entry `r` of [`DenseMatrix::matmul`] for token `x`, alone
    /// or in a batch (an output layer that screens recomputes its few candidates with it).
    pub fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        assert!(r < self.rows && x.len() == self.cols, "row {r} or a token of {} values outside the matrix", x.len());
        #[cfg(target_arch = "x86_64")]
        if self.dtype == DenseType::F16 && F16Path::best() > F16Path::Portable {
            // SAFETY: the CPU has AVX2, FMA and F16C (`F16Path::best`); the row holds `cols`
            // f16 values and `x` has `cols`.
            return unsafe { dot_f16_avx2(self.row_bytes(r), x) };
        }
        let mut row = vec![0f32; self.cols];
        self.row_into(r, &mut row);
        dot_f32(&row, x)
    }

    /// `out[t * rows + r] = W[r] · x_t` for `n_tokens` rows of `x`, in parallel over rows, on
    /// the fastest F16 path this CPU has.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        self.matmul_on(F16Path::best(), x, n_tokens, out)
    }

    /// [`DenseMatrix::matmul`] on a chosen F16 path (benchmarks compare them); a path the CPU
    /// lacks falls back to the next one down. Every path gives the same bits.
    pub fn matmul_on(&self, path: F16Path, x: &[f32], n_tokens: usize, out: &mut [f32]) {
        let path = path.min(F16Path::best());
        assert_eq!(x.len(), n_tokens * self.cols);
        assert_eq!(out.len(), n_tokens * self.rows);
        let rows_per_task = super::rows_per_task(self.rows, self.cols * n_tokens);
        let task = |block: super::RowBlock| {
            let rows = block.rows.clone();
            block.fill(1.0, |chunk| {
                // (Only x86-64 has a path above the portable one.)
                if self.dtype == DenseType::F16 && path > F16Path::Portable {
                    #[cfg(target_arch = "x86_64")]
                    {
                        let bytes = &self.data[rows.start * self.cols * 2..rows.end * self.cols * 2];
                        // SAFETY: `path` is at most `F16Path::best()`, so the CPU has its
                        // features; `bytes` holds the chunk's rows.
                        unsafe { f16_rows_simd(path, bytes, x, self.cols, n_tokens, chunk) };
                    }
                    return;
                }
                let mut row = vec![0f32; self.cols];
                for (k, dst) in chunk.chunks_mut(n_tokens).enumerate() {
                    self.row_into(rows.start + k, &mut row);
                    for (t, d) in dst.iter_mut().enumerate() {
                        *d = dot_f32(&row, &x[t * self.cols..(t + 1) * self.cols]);
                    }
                }
            })
        };
        let mut blocks = super::RowBlock::split(out, self.rows, n_tokens, rows_per_task);
        if blocks.len() == 1 {
            if let Some(block) = blocks.pop() {
                task(block);
            }
        } else {
            // One block a steal, as in `matmul_group`.
            blocks.into_par_iter().with_max_len(1).for_each(task);
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

/// The ways an F16 matrix can be multiplied, slowest first. They sum every (row, token) in
/// the same order, so they give the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum F16Path {
    /// Convert each row to f32, then [`dot_f32`] (any CPU).
    Portable,
    /// AVX2 + F16C: register tiles of up to 2 rows × 3 tokens.
    Avx2,
    /// AVX-512F: tiles of up to 3 rows × 9 tokens, each (row, token) sum in one 512-bit register.
    Avx512,
}

impl F16Path {
    /// The fastest path this CPU runs.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static BEST: OnceLock<F16Path> = OnceLock::new();
            *BEST.get_or_init(|| {
                let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
                if !(avx2 && is_x86_feature_detected!("f16c")) {
                    F16Path::Portable
                } else if is_x86_feature_detected!("avx512f") {
                    F16Path::Avx512
                } else {
                    F16Path::Avx2
                }
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            F16Path::Portable
        }
    }
}

/// AVX2, FMA and F16C: the row dot and `axpy` use them.
#[cfg(target_arch = "x86_64")]
pub(crate) fn f16_simd_available() -> bool {
    F16Path::best() >= F16Path::Avx2
}

/// F16 rows against every token, `dst[r * n_tokens + t] = W[r] · x_t`, on an x86 SIMD path.
///
/// One token (decoding) goes one row at a time through [`dot_f16_avx2`]: a single stream of
/// weight bytes per thread is what the memory system serves fastest. Several tokens go over
/// blocks of rows small enough to stay in L1/L2 while every token passes over them, so each
/// weight byte comes from memory once however many tokens there are; within a block, register
/// tiles of a few rows and tokens convert each weight vector once for their tokens.
/// Every (row, token) sum is taken in [`dot_f16_avx2`]'s order (two running sums over
/// alternate eight-column pieces, then the tail), so a token's logits are the same bits
/// alone or in a batch, and on either path, which greedy speculative decoding needs.
///
/// # Safety
/// The CPU has the features of `path` (AVX2, FMA and F16C; AVX-512F too for
/// [`F16Path::Avx512`]).
#[cfg(target_arch = "x86_64")]
unsafe fn f16_rows_simd(path: F16Path, w: &[u8], x: &[f32], cols: usize, n_tokens: usize, dst: &mut [f32]) {
    let rows = dst.len() / n_tokens;
    assert!(w.len() >= rows * cols * 2 && x.len() >= n_tokens * cols);
    if n_tokens == 1 {
        for (r, d) in dst.iter_mut().enumerate() {
            *d = dot_f16_avx2(&w[2 * r * cols..2 * (r + 1) * cols], &x[..cols]);
        }
        return;
    }
    let block = (F16_BLOCK_BYTES / (2 * cols)).max(1);
    let mut product = F16Product { w, x, cols, n_tokens, dst };
    for b0 in (0..rows).step_by(block) {
        let block = b0..(b0 + block).min(rows);
        match path {
            F16Path::Avx512 => product.block_avx512(block),
            _ => product.block_avx2(block),
        }
    }
}

/// A several-token F16 product being tiled: rows `w`, every token's `x` (`cols` values each),
/// and `dst[r * n_tokens + t]`.
#[cfg(target_arch = "x86_64")]
struct F16Product<'a> {
    w: &'a [u8],
    x: &'a [f32],
    cols: usize,
    n_tokens: usize,
    dst: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl F16Product<'_> {
    /// Stores row `r` · token `t`: `sum` (the vector part, up to column `from`) plus the
    /// columns left, added one by one as [`dot_f16_avx2`] adds them.
    fn store(&mut self, r: usize, t: usize, sum: f32, from: usize) {
        let cols = self.cols;
        let row = &self.w[2 * r * cols..2 * (r + 1) * cols];
        self.dst[r * self.n_tokens + t] = f16_tail(sum, row, &self.x[t * cols..(t + 1) * cols], from);
    }
}

/// `sum` plus `row[j] · x[j]` for the columns from `from` on, one at a time, in order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn f16_tail(mut sum: f32, row: &[u8], x: &[f32], from: usize) -> f32 {
    for j in from..x.len() {
        sum += f16::from_le_bytes([row[2 * j], row[2 * j + 1]]).to_f32() * x[j];
    }
    sum
}

#[cfg(target_arch = "x86_64")]
impl F16Product<'_> {
    /// Rows `block` against every token in 256-bit tiles of up to 2 rows × 3 tokens (two
    /// registers per sum).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_avx2(&mut self, block: Range<usize>) {
        let mut t0 = 0;
        while t0 < self.n_tokens {
            let n = match self.n_tokens - t0 {
                4 => 2,
                left => left.min(3),
            };
            let mut r = block.start;
            while r < block.end {
                r += match (n, block.end - r >= 2) {
                    (1, _) => self.tile256::<1, 1>(r, t0),
                    (2, _) => self.tile256::<1, 2>(r, t0),
                    (_, true) => self.tile256::<2, 3>(r, t0),
                    (_, false) => self.tile256::<1, 3>(r, t0),
                };
            }
            t0 += n;
        }
    }

    /// Rows `r0..r0 + R` against tokens `t0..t0 + N`, each sum in [`dot_f16_avx2`]'s order.
    /// Returns R.
    #[inline(always)]
    unsafe fn tile256<const R: usize, const N: usize>(&mut self, r0: usize, t0: usize) -> usize {
        use std::arch::x86_64::*;
        let cols = self.cols;
        let mut acc = [[[_mm256_setzero_ps(); 2]; N]; R];
        let (wp, xp) = (self.w.as_ptr().add(2 * r0 * cols), self.x.as_ptr());
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
            for (k, [a0, a1]) in acc_r.iter().enumerate() {
                self.store(r0 + r, t0 + k, super::x86::hsum(_mm256_add_ps(*a0, *a1)), i);
            }
        }
        R
    }
}

/// Weight bytes per row block in [`f16_rows_simd`]: well inside L2 next to the activations.
#[cfg(target_arch = "x86_64")]
const F16_BLOCK_BYTES: usize = 32 << 10;

#[cfg(target_arch = "x86_64")]
impl F16Product<'_> {
    /// Rows `block` against every token in 512-bit tiles of up to 3 rows × 9 tokens. One
    /// register holds both of a (row, token)'s running sums (lanes 0–7 the even eight-column
    /// pieces, lanes 8–15 the odd ones, as [`dot_f16_avx2`] keeps them in two), so the lanes
    /// see the same multiply-adds in the same order: the same bits as the row dot.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn block_avx512(&mut self, block: Range<usize>) {
        // Tokens in groups of at most nine (32 = 8 + 8 + 8 + 8, 10 = 5 + 5).
        for (t0, n) in super::token_groups(self.n_tokens, F16_GROUP) {
            let mut r = block.start;
            while r < block.end {
                r += match (block.end - r).min(F16_ROWS) {
                    1 => self.tile512_tokens::<1>(r, t0, n),
                    2 => self.tile512_tokens::<2>(r, t0, n),
                    _ => self.tile512_tokens::<3>(r, t0, n),
                };
            }
        }
    }

    /// [`F16Product::tile512`] for `n` (1..=9) tokens.
    #[inline(always)]
    unsafe fn tile512_tokens<const R: usize>(&mut self, r0: usize, t0: usize, n: usize) -> usize {
        match n {
            1 => self.tile512::<R, 1>(r0, t0),
            2 => self.tile512::<R, 2>(r0, t0),
            3 => self.tile512::<R, 3>(r0, t0),
            4 => self.tile512::<R, 4>(r0, t0),
            5 => self.tile512::<R, 5>(r0, t0),
            6 => self.tile512::<R, 6>(r0, t0),
            7 => self.tile512::<R, 7>(r0, t0),
            8 => self.tile512::<R, 8>(r0, t0),
            _ => self.tile512::<R, 9>(r0, t0),
        }
    }

    /// Rows `r0..r0 + R` against tokens `t0..t0 + N` in 512-bit registers, each sum in
    /// [`dot_f16_avx2`]'s order. Returns R.
    #[inline(always)]
    unsafe fn tile512<const R: usize, const N: usize>(&mut self, r0: usize, t0: usize) -> usize {
        use std::arch::x86_64::*;
        let cols = self.cols;
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let (wp, xp) = (self.w.as_ptr().add(2 * r0 * cols), self.x.as_ptr());
        let mut i = 0;
        while i + 16 <= cols {
            let mut h = [_mm512_setzero_ps(); R];
            for (r, hr) in h.iter_mut().enumerate() {
                *hr = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(2 * (r * cols + i)) as *const __m256i));
            }
            for k in 0..N {
                let xk = _mm512_loadu_ps(xp.add((t0 + k) * cols + i));
                for r in 0..R {
                    acc[r][k] = _mm512_fmadd_ps(h[r], xk, acc[r][k]);
                }
            }
            i += 16;
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (k, a) in acc_r.iter().enumerate() {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(*a), 1));
                self.store(r0 + r, t0 + k, super::x86::hsum(_mm256_add_ps(_mm512_castps512_ps256(*a), hi)), i);
            }
        }
        R
    }
}

/// Most tokens in one 512-bit tile: 3 rows × 9 tokens is 27 sums, 3 weight vectors and one
/// activation vector, 31 of the 32 registers (measured against 8, 9, 6 and 5 tokens × 3, 2,
/// 4 and 4 rows: `docs/performance.md`).
#[cfg(target_arch = "x86_64")]
const F16_GROUP: usize = 9;
/// Rows in one 512-bit tile.
#[cfg(target_arch = "x86_64")]
const F16_ROWS: usize = 3;

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
    f16_tail(super::x86::hsum(_mm256_add_ps(a0, a1)), w, x, i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A matrix big enough to split into several row tasks: each token's outputs are the bits
    /// of that token alone.
    #[test]
    fn f16_matmul_split_over_tasks_keeps_each_tokens_bits() {
        let (rows, cols, n) = (700, 512, 5);
        assert!(crate::rows_per_task(rows, cols * n) < rows, "the test needs several tasks");
        let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let m = DenseMatrix::new(DenseType::F16, rows, cols, WeightBytes::Owned(Arc::new(bytes))).unwrap();
        let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
        let mut out = vec![0f32; n * rows];
        m.matmul(&x, n, &mut out);
        for t in 0..n {
            let mut alone = vec![0f32; rows];
            m.matmul(&x[t * cols..(t + 1) * cols], 1, &mut alone);
            let got = &out[t * rows..(t + 1) * rows];
            assert!(alone.iter().zip(got).all(|(a, g)| a.to_bits() == g.to_bits()), "token {t}");
        }
    }

    #[test]
    fn f16_matmul_matches_f32_for_every_tile_shape() {
        // 37 and 38 rows leave one and two rows after the 3-row tiles (and one after the
        // 2-row ones); 100 columns leave a tail after the 16-wide vectors; 1..=11, 17 and 19
        // tokens reach every token tile and every split into groups.
        for rows in [37, 38] {
            let cols = 100;
            let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
            let bytes: Vec<u8> = vals.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
            let m = DenseMatrix::new(DenseType::F16, rows, cols, WeightBytes::Owned(Arc::new(bytes))).unwrap();
            for n in (1..=11).chain([17, 19]) {
                let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
                let mut out = vec![0f32; n * rows];
                m.matmul(&x, n, &mut out);
                // Every SIMD path this CPU has gives the same bits as the best one.
                for path in [F16Path::Avx2, F16Path::Avx512].into_iter().filter(|&p| p <= F16Path::best()) {
                    let mut on_path = vec![0f32; n * rows];
                    m.matmul_on(path, &x, n, &mut on_path);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&on_path), bits(&out), "{path:?}, rows={rows} n={n}");
                }
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    let mut alone = vec![0f32; rows];
                    m.matmul(xt, 1, &mut alone);
                    for r in 0..rows {
                        let want: f32 = (0..cols).map(|k| vals[r * cols + k] * x[t * cols + k]).sum();
                        assert!((out[t * rows + r] - want).abs() < 1e-3, "n={n} t={t} r={r}");
                        // A token's result is the same bits alone and in a batch, and (on the
                        // F16 SIMD paths, whose one-token product is the row dot) as a row dot.
                        assert_eq!(out[t * rows + r].to_bits(), alone[r].to_bits(), "n={n} t={t} r={r}");
                        if F16Path::best() >= F16Path::Avx2 {
                            assert_eq!(alone[r].to_bits(), dot_f16(m.row_bytes(r), xt).to_bits(), "row dot, r={r}");
                        }
                    }
                }
            }
        }
    }
}
