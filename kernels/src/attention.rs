//! The f16 products of attention over a KV cache: several query heads' scores against the
//! cached keys, and their softmax-weighted sums of the cached values.
//!
//! With grouped-query attention a few query heads share each cached key and value head (four
//! in bitnet-b1.58-2B-4T). Taken one head at a time, as a row dot and an `axpy` per position,
//! each shared key and value is converted from f16 again for every head, and every `axpy`
//! reads and writes its head's output back to memory. Here the heads of a group go together:
//! each cached vector is converted once for all of them, and the weighted sums stay in
//! registers across positions.
//!
//! Every result is the same bits as [`dense::dot_f16`] and a run of [`dense::axpy_f16`] calls
//! give (the same multiply-adds in the same order per value), so the attention's output does
//! not depend on how heads are grouped or on which path a CPU takes.

use half::f16;

use crate::dense;

/// Query heads a SIMD pass takes together; a larger group goes in several passes.
#[cfg(target_arch = "x86_64")]
const HEADS_PER_PASS: usize = 4;

/// Calls `$f::<G>(args)` with `G` the heads of this pass, 1 to [`HEADS_PER_PASS`].
#[cfg(target_arch = "x86_64")]
macro_rules! for_heads {
    ($heads:expr, $($f:ident)::+, $($arg:expr),*) => {
        match $heads {
            1 => $($f)::+::<1>($($arg),*),
            2 => $($f)::+::<2>($($arg),*),
            3 => $($f)::+::<3>($($arg),*),
            _ => $($f)::+::<4>($($arg),*),
        }
    };
}

/// `n` cached vectors of `width` values, vector `p` at `data[p * stride..]`: one head's keys or
/// values in a page of the KV cache, where each position holds every head side by side.
#[derive(Clone, Copy, Debug)]
pub struct CachedHead<'a> {
    data: &'a [f16],
    stride: usize,
    n: usize,
    width: usize,
    /// Memory the caller reads next (the next page's vectors), prefetched while these are
    /// multiplied: each page starts cold for the hardware prefetchers. (Only the x86 passes
    /// prefetch.)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    next: &'a [f16],
}

impl<'a> CachedHead<'a> {
    /// Panics if the last vector runs past `data`.
    pub fn new(data: &'a [f16], stride: usize, n: usize, width: usize) -> Self {
        assert!(
            n == 0 || (n - 1) * stride + width <= data.len(),
            "{n} vectors of {width} values {stride} apart overrun {}",
            data.len()
        );
        Self { data, stride, n, width, next: &[] }
    }

    /// The same vectors, with `next` fetched into the cache during the pass over them.
    pub fn then(self, next: &'a [f16]) -> Self {
        Self { next, ..self }
    }

    fn vector(&self, p: usize) -> &'a [f16] {
        &self.data[p * self.stride..p * self.stride + self.width]
    }
}

/// `out[g * out_stride + p] = scale * (key p · query g)` for every cached key `p` and every
/// query `g`, `queries[g * width..(g + 1) * width]`.
///
/// Panics if the queries are not whole heads or a score lies outside `out`.
pub fn key_scores(keys: CachedHead, queries: &[f32], scale: f32, out: &mut [f32], out_stride: usize) {
    let (n, width) = (keys.n, keys.width);
    let heads = queries.len() / width;
    assert_eq!(heads * width, queries.len(), "queries are whole heads");
    assert!(heads == 0 || n == 0 || (heads - 1) * out_stride + n <= out.len(), "scores past the output");
    #[cfg(target_arch = "x86_64")]
    if dense::f16_simd_available() {
        for g0 in (0..heads).step_by(HEADS_PER_PASS) {
            let q = &queries[g0 * width..];
            let o = &mut out[g0 * out_stride..];
            // SAFETY: AVX2, FMA and F16C are present; the bounds were checked above for every
            // head, key and score the pass touches.
            unsafe { for_heads!((heads - g0).min(HEADS_PER_PASS), x86::key_scores, &keys, q, scale, o, out_stride) }
        }
        return;
    }
    for p in 0..n {
        let key: &[u8] = bytemuck::cast_slice(keys.vector(p));
        for (g, q) in queries.chunks_exact(width).enumerate() {
            out[g * out_stride + p] = dense::dot_f16(key, q) * scale;
        }
    }
}

/// `out[g * width + d] += weights[g * w_stride + p] * value_p[d]` for every cached value `p`
/// in order: what [`dense::axpy_f16`] over the positions gives.
///
/// Panics if the outputs are not whole heads or a weight lies outside `weights`.
pub fn weighted_values(values: CachedHead, weights: &[f32], w_stride: usize, out: &mut [f32]) {
    let (n, width) = (values.n, values.width);
    let heads = out.len() / width;
    assert_eq!(heads * width, out.len(), "outputs are whole heads");
    assert!(heads == 0 || n == 0 || (heads - 1) * w_stride + n <= weights.len(), "weights past their slice");
    #[cfg(target_arch = "x86_64")]
    if dense::f16_simd_available() {
        for g0 in (0..heads).step_by(HEADS_PER_PASS) {
            let w = &weights[g0 * w_stride..];
            let o = &mut out[g0 * width..];
            // SAFETY: as in `key_scores`.
            unsafe { for_heads!((heads - g0).min(HEADS_PER_PASS), x86::weighted_values, &values, w, w_stride, o) }
        }
        return;
    }
    for p in 0..n {
        let value: &[u8] = bytemuck::cast_slice(values.vector(p));
        for (g, o) in out.chunks_exact_mut(width).enumerate() {
            dense::axpy_f16(weights[g * w_stride + p], value, o);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CachedHead;
    use crate::dense::f16_tail;
    use crate::x86::hsum;

    /// While vector `p` of `head` is multiplied, prefetches the `p`-th share of `head.next`
    /// (a hint: nothing outside the slice is touched), so that the next page has arrived
    /// when the pass over this one ends.
    #[inline(always)]
    unsafe fn prefetch_next(head: &CachedHead, p: usize) {
        let bytes = head.next.len() * 2;
        let share = (bytes.div_ceil(head.n.max(1)) + 63) & !63;
        let base = head.next.as_ptr() as *const i8;
        let mut at = p * share;
        while at < bytes.min((p + 1) * share) {
            _mm_prefetch::<_MM_HINT_T0>(base.add(at));
            at += 64;
        }
    }

    /// `G` heads of [`super::key_scores`], each sum in `dense::dot_f16_avx2`'s order: two
    /// running sums over alternate eight-value pieces of each 16, added and reduced, then the
    /// tail one value at a time.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; at least `G` queries of the keys' width, and `G` rows of scores
    /// for every key `out_stride` apart inside `out`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn key_scores<const G: usize>(
        keys: &CachedHead,
        queries: &[f32],
        scale: f32,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let width = keys.width;
        let body = width / 16 * 16;
        let q = queries.as_ptr();
        for p in 0..keys.n {
            let key = keys.data.as_ptr().add(p * keys.stride);
            prefetch_next(keys, p);
            let mut a0 = [_mm256_setzero_ps(); G];
            let mut a1 = [_mm256_setzero_ps(); G];
            for i in (0..body).step_by(16) {
                let h0 = _mm256_cvtph_ps(_mm_loadu_si128(key.add(i) as *const __m128i));
                let h1 = _mm256_cvtph_ps(_mm_loadu_si128(key.add(i + 8) as *const __m128i));
                for (g, (a0, a1)) in a0.iter_mut().zip(&mut a1).enumerate() {
                    *a0 = _mm256_fmadd_ps(h0, _mm256_loadu_ps(q.add(g * width + i)), *a0);
                    *a1 = _mm256_fmadd_ps(h1, _mm256_loadu_ps(q.add(g * width + i + 8)), *a1);
                }
            }
            let key_bytes: &[u8] = bytemuck::cast_slice(std::slice::from_raw_parts(key, width));
            for (g, (a0, a1)) in a0.iter().zip(&a1).enumerate() {
                let query = std::slice::from_raw_parts(q.add(g * width), width);
                let dot = f16_tail(hsum(_mm256_add_ps(*a0, *a1)), key_bytes, query, body);
                *out.get_unchecked_mut(g * out_stride + p) = dot * scale;
            }
        }
    }

    /// `G` heads of [`super::weighted_values`]: sixteen output values of each head at a time
    /// stay in registers while every position passes, each a fused multiply-add in position
    /// order as `dense::axpy_f16_avx2` does it, then eight, then the tail one value at a time
    /// (unfused, as its tail).
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `G` rows of a weight for every value `w_stride` apart inside
    /// `weights`, and at least `G` outputs of the values' width in `out`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_values<const G: usize>(values: &CachedHead, weights: &[f32], w_stride: usize, out: &mut [f32]) {
        let (n, stride, width) = (values.n, values.stride, values.width);
        let (v, w, o) = (values.data.as_ptr(), weights.as_ptr(), out.as_mut_ptr());
        let mut d = 0;
        while d + 16 <= width {
            let mut acc: [[__m256; 2]; G] =
                std::array::from_fn(|g| [_mm256_loadu_ps(o.add(g * width + d)), _mm256_loadu_ps(o.add(g * width + d + 8))]);
            for p in 0..n {
                if d == 0 {
                    prefetch_next(values, p);
                }
                let at = v.add(p * stride + d);
                let v0 = _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i));
                let v1 = _mm256_cvtph_ps(_mm_loadu_si128(at.add(8) as *const __m128i));
                for (g, [a0, a1]) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*w.add(g * w_stride + p));
                    *a0 = _mm256_fmadd_ps(a, v0, *a0);
                    *a1 = _mm256_fmadd_ps(a, v1, *a1);
                }
            }
            for (g, [a0, a1]) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(g * width + d), *a0);
                _mm256_storeu_ps(o.add(g * width + d + 8), *a1);
            }
            d += 16;
        }
        if d + 8 <= width {
            let mut acc: [__m256; G] = std::array::from_fn(|g| _mm256_loadu_ps(o.add(g * width + d)));
            for p in 0..n {
                let v0 = _mm256_cvtph_ps(_mm_loadu_si128(v.add(p * stride + d) as *const __m128i));
                for (g, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*w.add(g * w_stride + p)), v0, *a);
                }
            }
            for (g, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(g * width + d), *a);
            }
            d += 8;
        }
        for j in d..width {
            for g in 0..G {
                let o = o.add(g * width + j);
                for p in 0..n {
                    *o += *w.add(g * w_stride + p) * (*v.add(p * stride + j)).to_f32();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn halves(n: usize, seed: u64) -> Vec<f16> {
        (0..n)
            .map(|i| f16::from_f32((((i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 - 1000.0) / 250.0))
            .collect()
    }

    fn floats(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u64).wrapping_mul(40503).wrapping_add(seed.wrapping_mul(7)) % 1999) as f32 - 999.0) / 333.0)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Grouped scores and weighted sums are the bits that one row dot and one `axpy` per
        /// (head, position) give, for head widths with and without a tail and groups that
        /// take one pass or several.
        #[test]
        fn grouped_heads_give_the_per_head_bits(
            width in prop_oneof![Just(128usize), Just(64), Just(24), Just(13), 1usize..40],
            heads in 1usize..10,
            n in 0usize..20,
            pad in 0usize..20,
            seed in any::<u64>(),
        ) {
            let stride = width + pad;
            let cache = halves(n * stride + width, seed);
            let queries = floats(heads * width, seed);
            let scale = 0.125f32;
            let out_stride = n + 3;
            let mut scores = vec![0f32; heads * out_stride];
            key_scores(CachedHead::new(&cache, stride, n, width).then(&cache[n * stride..]), &queries, scale, &mut scores, out_stride);
            let mut out = floats(heads * width, seed ^ 1);
            let start = out.clone();
            weighted_values(CachedHead::new(&cache, stride, n, width), &scores, out_stride, &mut out);
            for g in 0..heads {
                let q = &queries[g * width..(g + 1) * width];
                let mut want = start[g * width..(g + 1) * width].to_vec();
                for p in 0..n {
                    let row: &[u8] = bytemuck::cast_slice(&cache[p * stride..p * stride + width]);
                    let s = dense::dot_f16(row, q) * scale;
                    prop_assert_eq!(s.to_bits(), scores[g * out_stride + p].to_bits(), "score head {} position {}", g, p);
                    dense::axpy_f16(s, row, &mut want);
                }
                for (d, (a, b)) in want.iter().zip(&out[g * width..(g + 1) * width]).enumerate() {
                    prop_assert_eq!(a.to_bits(), b.to_bits(), "value head {} dim {}", g, d);
                }
            }
        }
    }
}
