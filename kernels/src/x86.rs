//! AVX2 ternary kernel, chosen at run time on x86-64 CPUs that have AVX2, FMA and F16C.
//!
//! The stored codes 0, 1, 2 are unsigned bytes, so `vpmaddubsw` multiplies them by the signed
//! int8 activations directly: sum(code * y) over a block, then minus sum(y) (kept with the
//! quantized activations) gives sum(w * y) with w = code - 1. Partial sums stay in 16 bits for
//! 128 values (at most 4 * 2 * 2 * 128 per lane), then widen to 32 bits; each 256-value
//! activation block is scaled once into f32 accumulators. Each row's weight bytes are decoded
//! once per tile of tokens.
//!
//! Where every block of a row carries the same scale ([`TernaryMatrix::row_scales`]), both
//! kernels factor it out of the row and subtract the code offset once per token, so a block
//! costs only its integer dot products, one convert and one multiply-add per token.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::mem::size_of;
use std::ops::Range;

use super::formats::{BlockI2s, BlockTq1_0, BlockTq2_0};
use super::{
    ActScales, QuantizedActivations, TernaryFormat, TernaryKernel, TernaryMatrix, ACT_BLOCK, PAIR_GROUPS_FROM, PAIR_TOKENS,
};

/// Tokens that share one decoding of a weight block.
const TILE: usize = 4;

pub struct Avx2;

impl Avx2 {
    pub fn detected() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
}

impl TernaryKernel for Avx2 {
    fn name(&self) -> &'static str {
        "avx2"
    }

    unsafe fn gemm_unchecked(&self, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
        assert!(Self::detected(), "AVX2 kernel called on a CPU without AVX2/FMA/F16C");
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked above). The caller upholds the
        // shape contract of `gemm_unchecked`, and the types' invariants bound every raw load:
        // rows have the layout's length, each token `cols` values and `cols / 256` scales.
        unsafe { gemm(w, rows, x, out) }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    // Each arm passes its decoder as a constant, so that it is inlined into the loops.
    let per_token = x.mode() == ActScales::Token;
    match (w.format(), w.row_scales()) {
        (TernaryFormat::TQ2_0, Some(d)) if per_token => by_rows(w, rows, x, out, Integer { d, decode: tq2_block }),
        (TernaryFormat::TQ1_0, Some(d)) if per_token => by_rows(w, rows, x, out, Integer { d, decode: tq1_block }),
        (TernaryFormat::I2S, Some(d)) if per_token => by_rows(w, rows, x, out, Integer { d, decode: i2s_block }),
        (TernaryFormat::TQ2_0, Some(d)) => by_rows(w, rows, x, out, Uniform { d, decode: tq2_block }),
        (TernaryFormat::TQ1_0, Some(d)) => by_rows(w, rows, x, out, Uniform { d, decode: tq1_block }),
        (TernaryFormat::I2S, Some(d)) => by_rows(w, rows, x, out, Uniform { d, decode: i2s_block }),
        (TernaryFormat::TQ2_0, None) => by_rows(w, rows, x, out, PerBlock { decode: tq2_block }),
        (TernaryFormat::TQ1_0, None) => by_rows(w, rows, x, out, PerBlock { decode: tq1_block }),
        (TernaryFormat::I2S, None) => by_rows(w, rows, x, out, PerBlock { decode: i2s_block }),
    }
}

/// One row's product against `N` tokens, one way of scaling it.
trait RowTile {
    /// Multiplies row `r` (bytes at `row`, `cols` weights) by tokens `t0..t0 + N` into
    /// `dst[..N]`; returns `N`.
    unsafe fn run<const N: usize>(
        &self,
        row: *const u8,
        r: usize,
        cols: usize,
        x: &QuantizedActivations,
        t0: usize,
        dst: &mut [f32],
    ) -> usize;
}

/// Each row of `rows` against every token, in tiles of up to [`TILE`] tokens that share each
/// decoded weight block; the accumulators stay in registers. Tokens are split evenly
/// ([`super::token_groups`]: 9 = 3 + 3 + 3, not 4 + 4 + 1), which made a 9-token product
/// 11% faster (6912×2560, two threads: 0.95 → 0.84 ms).
#[inline(always)]
unsafe fn by_rows<T: RowTile>(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32], tile: T) {
    let (n, cols) = (x.n_tokens(), w.cols());
    debug_assert!(x.cols() == cols);
    for (ri, r) in rows.enumerate() {
        let row = w.row_bytes(r).as_ptr();
        for (t0, len) in super::token_groups(n, TILE) {
            let dst = &mut out[ri * n + t0..];
            match len {
                1 => tile.run::<1>(row, r, cols, x, t0, dst),
                2 => tile.run::<2>(row, r, cols, x, t0, dst),
                3 => tile.run::<3>(row, r, cols, x, t0, dst),
                _ => tile.run::<TILE>(row, r, cols, x, t0, dst),
            };
        }
    }
}

/// Rows whose blocks share one scale `d_r` (see [`TernaryMatrix::row_scales`]):
/// `out = d_r · (Σ_b s_b · Σ code·y − Σ_b s_b · Σ y)`, where the second sum is the same for
/// every row ([`QuantizedActivations::scaled_sums`]), so a block costs its integer dot
/// products, one convert and one multiply-add.
struct Uniform<'a> {
    d: &'a [f32],
    decode: BlockDecoder,
}

impl RowTile for Uniform<'_> {
    #[inline(always)]
    unsafe fn run<const N: usize>(
        &self,
        row: *const u8,
        r: usize,
        cols: usize,
        x: &QuantizedActivations,
        t0: usize,
        dst: &mut [f32],
    ) -> usize {
        let nb = cols / ACT_BLOCK;
        let ys: [*const i8; N] = std::array::from_fn(|k| x.values().as_ptr().add((t0 + k) * cols));
        let ds: [*const f32; N] = std::array::from_fn(|k| x.scales().as_ptr().add((t0 + k) * nb));
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let (lo, hi, _) = (self.decode)(row, b);
            for k in 0..N {
                let y = ys[k].add(b * ACT_BLOCK);
                let isum = _mm256_add_epi32(dot128(&lo, y), dot128(&hi, y.add(128)));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_broadcast_ss(&*ds[k].add(b)), acc[k]);
            }
        }
        for k in 0..N {
            dst[k] = self.d[r] * (hsum(acc[k]) - x.scaled_sums()[t0 + k]);
        }
        N
    }
}

/// Rows whose blocks share one scale `d_r`, times activations with one scale `s_t` per token
/// ([`ActScales::Token`]): `out = d_r · s_t · (Σ code·y − Σ y)`, both sums over the whole row
/// in integers, so a block costs only its integer dot products, and the result is the same
/// whatever order or grouping the sums take.
struct Integer<'a> {
    d: &'a [f32],
    decode: BlockDecoder,
}

impl RowTile for Integer<'_> {
    #[inline(always)]
    unsafe fn run<const N: usize>(
        &self,
        row: *const u8,
        r: usize,
        cols: usize,
        x: &QuantizedActivations,
        t0: usize,
        dst: &mut [f32],
    ) -> usize {
        let nb = cols / ACT_BLOCK;
        let ys: [*const i8; N] = std::array::from_fn(|k| x.values().as_ptr().add((t0 + k) * cols));
        let mut acc = [_mm256_setzero_si256(); N];
        for b in 0..nb {
            let (lo, hi, _) = (self.decode)(row, b);
            for k in 0..N {
                let y = ys[k].add(b * ACT_BLOCK);
                acc[k] = _mm256_add_epi32(acc[k], _mm256_add_epi32(dot128(&lo, y), dot128(&hi, y.add(128))));
            }
        }
        for k in 0..N {
            dst[k] = token_scaled(self.d[r], x, t0 + k, hsum_i32(acc[k]));
        }
        N
    }
}

/// Rows whose blocks carry scales of their own: each block's dot products are scaled by the
/// block's scale times the activation block's, and the code offset is subtracted per block.
struct PerBlock {
    decode: BlockDecoder,
}

impl RowTile for PerBlock {
    #[inline(always)]
    unsafe fn run<const N: usize>(
        &self,
        row: *const u8,
        _: usize,
        cols: usize,
        x: &QuantizedActivations,
        t0: usize,
        dst: &mut [f32],
    ) -> usize {
        let nb = cols / ACT_BLOCK;
        debug_assert!(t0 + N <= x.n_tokens());
        let ys: [*const i8; N] = std::array::from_fn(|k| x.values().as_ptr().add((t0 + k) * cols));
        let ds: [*const f32; N] = std::array::from_fn(|k| x.scales().as_ptr().add((t0 + k) * nb));
        let ss: [*const i32; N] = std::array::from_fn(|k| x.sums().as_ptr().add((t0 + k) * nb));
        let mut acc = [_mm256_setzero_ps(); N];
        let mut corr = [0f32; N];
        for b in 0..nb {
            let (lo, hi, d) = (self.decode)(row, b);
            for k in 0..N {
                let y = ys[k].add(b * ACT_BLOCK);
                let isum = _mm256_add_epi32(dot128(&lo, y), dot128(&hi, y.add(128)));
                let scale = d * *ds[k].add(b);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(scale), acc[k]);
                corr[k] += scale * *ss[k].add(b) as f32;
            }
        }
        for k in 0..N {
            dst[k] = hsum(acc[k]) - corr[k];
        }
        N
    }
}

/// `d_r · s_t · (isum − Σ y_t)`: a row's integer dot product with token `t`, scaled. The same
/// expression in every kernel's per-token path, so that a token's result does not depend on
/// which path or batch computed its integer sum.
#[inline(always)]
fn token_scaled(d: f32, x: &QuantizedActivations, t: usize, isum: i32) -> f32 {
    d * (x.scales()[t * x.blocks_per_token()] * (isum - x.totals()[t]) as f32)
}

/// The sum of a vector's eight 32-bit integer lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Decodes weight block `b` of a row (256 weights) into two sets of four 32-code vectors and
/// the block's scale.
type BlockDecoder = unsafe fn(*const u8, usize) -> ([__m256i; 4], [__m256i; 4], f32);

/// The sum of a vector's eight lanes.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// sum(code * y) over 128 values: four vectors of 32 codes against `y[0..128]`.
#[inline(always)]
unsafe fn dot128(c: &[__m256i; 4], y: *const i8) -> __m256i {
    let p0 = _mm256_maddubs_epi16(c[0], _mm256_loadu_si256(y as *const __m256i));
    let p1 = _mm256_maddubs_epi16(c[1], _mm256_loadu_si256(y.add(32) as *const __m256i));
    let p2 = _mm256_maddubs_epi16(c[2], _mm256_loadu_si256(y.add(64) as *const __m256i));
    let p3 = _mm256_maddubs_epi16(c[3], _mm256_loadu_si256(y.add(96) as *const __m256i));
    let s = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
    _mm256_madd_epi16(s, _mm256_set1_epi16(1))
}

/// Splits 32 packed bytes into their four 2-bit code vectors, lowest bits first.
#[inline(always)]
unsafe fn unpack2(bytes: *const u8) -> [__m256i; 4] {
    let b = _mm256_loadu_si256(bytes as *const __m256i);
    let m = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(b, m),
        _mm256_and_si256(_mm256_srli_epi16(b, 2), m),
        _mm256_and_si256(_mm256_srli_epi16(b, 4), m),
        _mm256_and_si256(_mm256_srli_epi16(b, 6), m),
    ]
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([*p, *p.add(1)]) as i32)))
}

/// TQ2_0: 66-byte blocks, weights 0..128 in bytes 0..32, 128..256 in bytes 32..64.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tq2_block(row: *const u8, b: usize) -> ([__m256i; 4], [__m256i; 4], f32) {
    let blk = &*(row as *const BlockTq2_0).add(b);
    (unpack2(blk.qs.as_ptr()), unpack2(blk.qs.as_ptr().add(32)), f16_at(blk.d.as_ptr()))
}

/// I2_S: two 32-byte blocks per 256 weights; the first 32 weights sit in the highest bits.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i2s_block(row: *const u8, b: usize) -> ([__m256i; 4], [__m256i; 4], f32) {
    let blk = (row as *const BlockI2s).add(2 * b);
    let [c0, c1, c2, c3] = unpack2((*blk).qs.as_ptr());
    let [e0, e1, e2, e3] = unpack2((*blk.add(1)).qs.as_ptr());
    ([c3, c2, c1, c0], [e3, e2, e1, e0], 1.0)
}

/// Base-3 digits of 32 bytes: digit = [q >= 86] + [q >= 171], then q *= 3 (mod 256).
#[inline(always)]
unsafe fn next_trit(q: &mut __m256i) -> __m256i {
    let ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(*q, _mm256_set1_epi8(86)), *q);
    let ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(*q, _mm256_set1_epi8(171u8 as i8)), *q);
    let digit = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge86), ge171);
    *q = _mm256_add_epi8(*q, _mm256_add_epi8(*q, *q));
    digit
}

/// The top base-3 digit of each byte: `[q >= 86] + [q >= 171]`, which is `(3q) >> 8`.
#[inline(always)]
unsafe fn top_trit128(q: __m128i) -> __m128i {
    let ge86 = _mm_cmpeq_epi8(_mm_max_epu8(q, _mm_set1_epi8(86)), q);
    let ge171 = _mm_cmpeq_epi8(_mm_max_epu8(q, _mm_set1_epi8(171u8 as i8)), q);
    _mm_sub_epi8(_mm_sub_epi8(_mm_setzero_si128(), ge86), ge171)
}

/// `q * 3` in every byte (mod 256).
#[inline(always)]
unsafe fn times3_128(q: __m128i) -> __m128i {
    _mm_add_epi8(q, _mm_add_epi8(q, q))
}

/// TQ1_0: 54-byte blocks. Weights 0..160 are five digits of bytes 0..32; 160..240 five digits
/// of bytes 32..48; 240..256 four digits of the `qh` bytes 48..52 (digit `n` of byte `j` is
/// weight `240 + 4n + j`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tq1_block(row: *const u8, b: usize) -> ([__m256i; 4], [__m256i; 4], f32) {
    let blk = &*(row as *const BlockTq1_0).add(b);
    let p = blk.qs.as_ptr();
    let mut q = _mm256_loadu_si256(p as *const __m256i);
    let first = [next_trit(&mut q), next_trit(&mut q), next_trit(&mut q), next_trit(&mut q)];
    let fifth = next_trit(&mut q);
    // Weights 160..240: the five digits of 16 bytes, one 16-weight vector each.
    let mut q16 = _mm_loadu_si128(p.add(32) as *const __m128i);
    let mut d = [_mm_setzero_si128(); 5];
    for digit in d.iter_mut() {
        *digit = top_trit128(q16);
        q16 = times3_128(q16);
    }
    // Weights 240..256: the four `qh` bytes four times over, times 1, 3, 9 and 27, so that
    // each group's top digit is the next digit of every byte.
    let h1 = _mm_set1_epi32(i32::from_le_bytes(blk.qh));
    let h3 = times3_128(h1);
    let h9 = times3_128(h3);
    let h27 = times3_128(h9);
    let h = _mm_blend_epi32::<0b1100>(_mm_blend_epi32::<0b0010>(h1, h3), _mm_blend_epi32::<0b1000>(h9, h27));
    let dh = top_trit128(h);
    // (Not a closure: it would not carry the target features.)
    let second = [fifth, _mm256_set_m128i(d[1], d[0]), _mm256_set_m128i(d[3], d[2]), _mm256_set_m128i(dh, d[4])];
    (first, second, f16_at(blk.d.as_ptr()))
}

/// AVX-512 VNNI kernel: `vpdpbusd` multiplies 64 unsigned codes by 64 int8 activations and
/// accumulates in 32 bits in one instruction. A 512-bit code vector holds weights
/// `32l..32l+32` and `128+32l..128+32l+32` of a 256-weight block (that is how TQ2_0 and I2_S
/// store them), so it reads the activations in the matching interleaved order
/// ([`QuantizedActivations::interleaved`]).
pub struct Avx512Vnni;

impl Avx512Vnni {
    pub fn detected() -> bool {
        Avx2::detected()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
    }

    /// Multiply-adds per second that this thread gets from 512-bit `vpdpbusd` alone (twelve
    /// independent sums, no loads, for about `seconds`): the ceiling that a batched ternary
    /// product, which is four `vpdpbusd` per 256 weights and token, is measured against.
    /// `None` on a CPU without AVX-512 VNNI.
    pub fn vpdpbusd_peak(seconds: f64) -> Option<f64> {
        if !Self::detected() {
            return None;
        }
        // SAFETY: the CPU has AVX-512F and AVX-512 VNNI (checked above).
        Some(unsafe { vpdpbusd_rate(seconds) })
    }
}

#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vpdpbusd_rate(seconds: f64) -> f64 {
    use std::hint::black_box;
    use std::time::Instant;
    const CHUNK: usize = 1 << 16;
    let (w, y) = (black_box(_mm512_set1_epi8(1)), black_box(_mm512_set1_epi8(-1)));
    let mut acc = [_mm512_setzero_si512(); 12];
    let (start, mut done) = (Instant::now(), 0usize);
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..CHUNK {
            for a in acc.iter_mut() {
                *a = _mm512_dpbusd_epi32(*a, w, y);
            }
        }
        done += CHUNK;
    }
    black_box(acc);
    (done * acc.len() * 64) as f64 / start.elapsed().as_secs_f64()
}

impl TernaryKernel for Avx512Vnni {
    fn name(&self) -> &'static str {
        "avx512vnni"
    }

    unsafe fn gemm_unchecked(&self, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
        assert!(Self::detected(), "AVX-512 VNNI kernel called on a CPU without it");
        // SAFETY: as for the AVX2 kernel; the interleaved activations have the same length
        // as the plain ones (both are written by `requantize`).
        unsafe { gemm512(w, rows, x, out) }
    }
}

/// A weight layout as the AVX-512 kernel reads it: 256-weight blocks decoded into four
/// 64-code vectors. A type per layout, so that each product is compiled for its layout with
/// the decoder inlined.
trait Layout512 {
    /// Bytes of 256 weights.
    const BLOCK_BYTES: usize;
    /// Block `b` of a row: weights `32l..32l+32` and `128+32l..128+32l+32` in vector `l`.
    unsafe fn codes(row: *const u8, b: usize) -> [__m512i; 4];
}

struct Tq2;
struct Tq1;
struct I2s;

impl Layout512 for Tq2 {
    const BLOCK_BYTES: usize = size_of::<BlockTq2_0>();
    #[inline(always)]
    unsafe fn codes(row: *const u8, b: usize) -> [__m512i; 4] {
        unpack2_512((*(row as *const BlockTq2_0).add(b)).qs.as_ptr())
    }
}

impl Layout512 for I2s {
    /// Two 128-weight blocks.
    const BLOCK_BYTES: usize = 2 * size_of::<BlockI2s>();
    #[inline(always)]
    unsafe fn codes(row: *const u8, b: usize) -> [__m512i; 4] {
        // The first 32 weights of each 128 sit in the highest bits.
        let [c0, c1, c2, c3] = unpack2_512((*(row as *const BlockI2s).add(2 * b)).qs.as_ptr());
        [c3, c2, c1, c0]
    }
}

impl Layout512 for Tq1 {
    const BLOCK_BYTES: usize = size_of::<BlockTq1_0>();
    #[inline(always)]
    unsafe fn codes(row: *const u8, b: usize) -> [__m512i; 4] {
        // Decode with the AVX2 routine, then pair weights 32l.. with 128+32l.. per vector.
        let ([f0, f1, f2, f3], [s0, s1, s2, s3], _) = tq1_block(row, b);
        let pair = |lo: __m256i, hi: __m256i| _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        [pair(f0, s0), pair(f1, s1), pair(f2, s2), pair(f3, s3)]
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemm512(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    let per_token = x.mode() == ActScales::Token;
    match (w.format(), w.row_scales()) {
        (TernaryFormat::TQ2_0, Some(d)) if per_token && x.n_tokens() == 1 => integer_one256(w, rows, x, out, d, tq2_block),
        (TernaryFormat::TQ1_0, Some(d)) if per_token && x.n_tokens() == 1 => integer_one256(w, rows, x, out, d, tq1_block),
        (TernaryFormat::I2S, Some(d)) if per_token && x.n_tokens() == 1 => integer_one256(w, rows, x, out, d, i2s_block),
        // One token: 256-bit vectors, which measured faster for it (2B-4T shapes, one and two
        // threads on Zen 4, whose 512-bit operations take two passes through 256-bit units);
        // the 512-bit tiles pay where a decoded block serves several tokens. Both sum into the
        // same eight float lanes in the same order, so a token's result does not depend on how
        // many tokens share the pass (greedy speculative decoding relies on that).
        (TernaryFormat::TQ2_0, Some(d)) if x.n_tokens() == 1 => uniform_one256(w, rows, x, out, d, tq2_block),
        (TernaryFormat::TQ1_0, Some(d)) if x.n_tokens() == 1 => uniform_one256(w, rows, x, out, d, tq1_block),
        (TernaryFormat::I2S, Some(d)) if x.n_tokens() == 1 => uniform_one256(w, rows, x, out, d, i2s_block),
        (TernaryFormat::TQ2_0, Some(d)) => uniform512::<Tq2>(w, rows, x, out, d),
        (TernaryFormat::TQ1_0, Some(d)) => uniform512::<Tq1>(w, rows, x, out, d),
        (TernaryFormat::I2S, Some(d)) => uniform512::<I2s>(w, rows, x, out, d),
        (TernaryFormat::TQ2_0, None) => per_block512::<Tq2>(w, rows, x, out),
        (TernaryFormat::TQ1_0, None) => per_block512::<Tq1>(w, rows, x, out),
        (TernaryFormat::I2S, None) => per_block512::<I2s>(w, rows, x, out),
    }
}

/// Rows whose blocks share one scale `d_r` (see [`TernaryMatrix::row_scales`]):
/// `out = d_r · (Σ_b s_b · Σ code·y − Σ_b s_b · Σ y)`, where the second sum is the same for
/// every row ([`QuantizedActivations::scaled_sums`]); with activations scaled per token, the
/// whole row's integer sum instead ([`Tile::run_integer`]). When verifying, tiles of two rows
/// by up to eight tokens share each activation load and each decoded block. For one token
/// and small batches ([`TWO_ROWS_FROM`]) a tile is one row: one stream of weight bytes per
/// thread measured faster (2B-4T shapes, out of cache) than two or four rows read side by side.
#[inline(always)]
unsafe fn uniform512<L: Layout512>(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32], d: &[f32]) {
    let n = x.n_tokens();
    let pair = n >= TWO_ROWS_FROM;
    // Tiles of eight tokens first and the rest last (9 = 8 + 1): unlike the AVX2 tiles,
    // these measured no faster split evenly (9 = 5 + 4: 0.65–0.66 → 0.70–0.82 ms on
    // 6912×2560, two threads), since an eight-token tile spreads its decoding and its
    // activation loads the furthest.
    //
    // Token tiles are the outer loop: each tile's activations (8 × 2560 bytes for most of a
    // layer's matrices) stay in L1 while every row of the range passes under them, and the
    // rows come back from L2 for the next tile. The other way round, each row pair cycles
    // through all the tokens' activations, which for 32 tokens do not fit in L1. In cache, 32
    // tokens, one thread, three alternations (`shard-bench kernels --only tq2_0:row`):
    // 6912×2560 4.54, 6.19, 4.88 → 4.33, 4.41, 4.69 ms; 2560×6912 4.31, 4.25, 6.05 → 4.25,
    // 4.15, 4.14 ms.
    let mut t0 = match x.mode() {
        ActScales::Block => by_pairs::<L>(w, rows.clone(), x, out, d),
        ActScales::Token => 0,
    };
    while t0 < n {
        let len = (n - t0).min(8);
        let mut r = rows.start;
        while r < rows.end {
            let step = if pair && rows.end - r >= 2 { 2 } else { 1 };
            let tile = Tile::<L> { w, r, first: rows.start, x, t0, out: &mut *out, d, layout: PhantomData };
            match (step, len) {
                (2, 1) => tile.run_scaled::<2, 1>(),
                (2, 2) => tile.run_scaled::<2, 2>(),
                (2, 3) => tile.run_scaled::<2, 3>(),
                (2, 4) => tile.run_scaled::<2, 4>(),
                (2, 5) => tile.run_scaled::<2, 5>(),
                (2, 6) => tile.run_scaled::<2, 6>(),
                (2, 7) => tile.run_scaled::<2, 7>(),
                (2, _) => tile.run_scaled::<2, 8>(),
                (_, 1) => tile.run_scaled::<1, 1>(),
                (_, 2) => tile.run_scaled::<1, 2>(),
                (_, 3) => tile.run_scaled::<1, 3>(),
                (_, 4) => tile.run_scaled::<1, 4>(),
                (_, 5) => tile.run_scaled::<1, 5>(),
                (_, 6) => tile.run_scaled::<1, 6>(),
                (_, 7) => tile.run_scaled::<1, 7>(),
                (_, _) => tile.run_scaled::<1, 8>(),
            };
            r += step;
        }
        t0 += len;
    }
}

/// The first `n / PAIR_TOKENS` groups of eight tokens of a [`uniform512`] product, two 32-bit
/// lanes per token ([`QuantizedActivations::by_pairs`]). Returns the tokens done.
///
/// The row tiles below give each (row, token) pair a vector of sums and fold it into eight
/// float lanes every block, and that float work runs beside the `vpdpbusd`s on the same
/// units. Here a `vpdpbusd` multiplies two 4-code pieces of one row, broadcast, by the same
/// two pieces of eight tokens, so a block's sums come out in lanes per (token, piece class),
/// and its float work is four converts and four multiply-adds for eight tokens. The sums are
/// the eight lanes [`uniform_one256`] keeps (lane `j` takes the pieces `p ≡ j (mod 8)` of the
/// interleaved order), scaled and added in the same order, so a token's result is the same
/// bits as alone.
#[inline(always)]
unsafe fn by_pairs<L: Layout512>(
    w: &TernaryMatrix,
    rows: Range<usize>,
    x: &QuantizedActivations,
    out: &mut [f32],
    d: &[f32],
) -> usize {
    let groups = x.n_tokens() / PAIR_TOKENS;
    // With one group the rows' decoding is not shared, and out of cache the row tiles below,
    // which decode as they go, measured faster (2B-4T shape, two threads, alternating: a
    // 9-token pass 98–105 ms with them against 108–113 ms this way).
    if groups < PAIR_GROUPS_FROM {
        return 0;
    }
    let cols = w.cols();
    // The tile reads the pairs through raw pointers.
    assert_eq!(x.by_pairs().len(), groups * PAIR_TOKENS * cols, "activations without their pairs");
    thread_local!(static CODES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
    // Taken out and put back rather than used in `with`: a closure would not carry this
    // function's target features, and the intrinsics in it would become calls.
    let mut codes = CODES.take();
    codes.resize(PAIR_ROWS * cols, 0);
    let mut r = rows.start;
    while r < rows.end {
        let step = (rows.end - r).min(PAIR_ROWS);
        // The rows' codes once, in the interleaved order, for every group.
        for i in 0..step {
            let row = w.row_bytes(r + i).as_ptr();
            for b in 0..cols / ACT_BLOCK {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * L::BLOCK_BYTES + PREFETCH_BYTES) as *const i8);
                let c = L::codes(row, b);
                let dst = codes.as_mut_ptr().add(i * cols + b * ACT_BLOCK);
                for (l, v) in c.iter().enumerate() {
                    _mm512_storeu_si512(dst.add(64 * l) as *mut __m512i, *v);
                }
            }
        }
        let tile = PairTile { codes: codes.as_ptr(), cols, x, r, first: rows.start, d };
        for g in 0..groups {
            match step {
                4 => tile.run::<4>(g, out),
                3 => tile.run::<3>(g, out),
                2 => tile.run::<2>(g, out),
                _ => tile.run::<1>(g, out),
            }
        }
        r += step;
    }
    CODES.set(codes);
    groups * PAIR_TOKENS
}

/// Rows a [`PairTile`] takes: four sums each, sixteen registers.
const PAIR_ROWS: usize = 4;

/// Rows `r..r + R` (their codes decoded in `codes`, `cols` apart) of a [`by_pairs`] product.
struct PairTile<'a> {
    codes: *const u8,
    cols: usize,
    x: &'a QuantizedActivations,
    r: usize,
    /// The first row of the caller's range (row `first` is `out`'s row 0).
    first: usize,
    d: &'a [f32],
}

impl PairTile<'_> {
    /// Group `g` of eight tokens.
    #[inline(always)]
    unsafe fn run<const R: usize>(&self, g: usize, out: &mut [f32]) {
        let (x, cols) = (self.x, self.cols);
        let nb = cols / ACT_BLOCK;
        let xs = x.by_pairs().as_ptr().add(g * PAIR_TOKENS * cols);
        let ds = x.pair_scales().as_ptr().add(g * nb * PAIR_TOKENS * 2);
        // Sum `a` holds the piece classes 2a (even lanes) and 2a + 1 (odd lanes).
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for b in 0..nb {
            let mut isum = [[_mm512_setzero_si512(); 4]; R];
            // Pair q (pieces 2q, 2q + 1) goes to sum q % 4: four pairs a step, so every index
            // is a constant and the sums stay in registers.
            for q4 in 0..ACT_BLOCK / 32 {
                for a in 0..4 {
                    let q = 4 * q4 + a;
                    let xv = _mm512_loadu_si512(xs.add((b * ACT_BLOCK / 8 + q) * 8 * PAIR_TOKENS) as *const __m512i);
                    for i in 0..R {
                        let eight = (self.codes.add(i * cols + b * ACT_BLOCK + 8 * q) as *const i64).read_unaligned();
                        isum[i][a] = _mm512_dpbusd_epi32(isum[i][a], _mm512_set1_epi64(eight), xv);
                    }
                }
            }
            let dv = _mm512_loadu_ps(ds.add(b * PAIR_TOKENS * 2));
            for i in 0..R {
                for a in 0..4 {
                    acc[i][a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i][a]), dv, acc[i][a]);
                }
            }
        }
        let n = x.n_tokens();
        let t0 = g * PAIR_TOKENS;
        let offsets = _mm256_loadu_ps(x.scaled_sums().as_ptr().add(t0));
        // Even lanes to the low half: token k's (even, odd) pair becomes lane k.
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        for i in 0..R {
            let a = &acc[i];
            // `hsum`'s order: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)), classes 2a in the
            // even lanes and 2a + 1 in the odd ones.
            let s = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
            let s = _mm512_permutexvar_ps(evens, s);
            let sum =
                _mm256_add_ps(_mm512_castps512_ps256(s), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))));
            let v = _mm256_mul_ps(_mm256_set1_ps(self.d[self.r + i]), _mm256_sub_ps(sum, offsets));
            let at = (self.r + i - self.first) * n + t0;
            _mm256_storeu_ps(out[at..at + PAIR_TOKENS].as_mut_ptr(), v);
        }
    }
}

/// Tokens from which a [`uniform512`] tile takes two rows at a time. Below it, the weights
/// of a pass are still read faster as one stream per thread than the shared activation loads
/// of two rows save. On the 2B-4T shape (out of cache, two threads, alternating runs of
/// `shard-bench model`), one row a time: a 2-token pass 56–61 → 49–51 ms, a 4-token pass
/// 77–84 → 69–77 ms; two rows a time: an 8-token pass 109–116 against 117–141 ms.
const TWO_ROWS_FROM: usize = 6;

/// Eight lanes of a 16-lane integer sum: lane `j` plus lane `j + 8`. A 512-bit code vector
/// holds weights `32l..` in its low half and `128+32l..` in its high half, so lane `j` then
/// sums the products that lane `j` of [`uniform_one256`]'s sum does, exactly (integers).
#[inline(always)]
unsafe fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// One token, one row at a time, with 256-bit `vpdpbusd`: the AVX2 decoders' code vectors
/// (weights `32l..` and `128+32l..`) against the interleaved activations' halves.
#[inline(always)]
unsafe fn uniform_one256(
    w: &TernaryMatrix,
    rows: Range<usize>,
    x: &QuantizedActivations,
    out: &mut [f32],
    d: &[f32],
    decode: BlockDecoder,
) {
    let nb = w.cols() / ACT_BLOCK;
    let (y0, ds) = (x.interleaved().as_ptr(), x.scales().as_ptr());
    for (ri, r) in rows.enumerate() {
        let row = w.row_bytes(r).as_ptr();
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * w.format().row_bytes(ACT_BLOCK) + PREFETCH_BYTES) as *const i8);
            let (lo, hi, _) = decode(row, b);
            let y = y0.add(b * ACT_BLOCK) as *const __m256i;
            let mut isum = _mm256_setzero_si256();
            for l in 0..4 {
                isum = _mm256_dpbusd_epi32(isum, lo[l], _mm256_loadu_si256(y.add(2 * l)));
                isum = _mm256_dpbusd_epi32(isum, hi[l], _mm256_loadu_si256(y.add(2 * l + 1)));
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(*ds.add(b)), acc);
        }
        out[ri] = d[r] * (hsum(acc) - x.scaled_sums()[0]);
    }
}

/// One token, one row at a time, per-token activation scales: [`uniform_one256`] with the
/// integer sum carried across the whole row.
#[inline(always)]
unsafe fn integer_one256(
    w: &TernaryMatrix,
    rows: Range<usize>,
    x: &QuantizedActivations,
    out: &mut [f32],
    d: &[f32],
    decode: BlockDecoder,
) {
    let nb = w.cols() / ACT_BLOCK;
    let y0 = x.interleaved().as_ptr();
    for (ri, r) in rows.enumerate() {
        let row = w.row_bytes(r).as_ptr();
        // Eight sums, so that no `vpdpbusd` waits for the one before it.
        let mut isum = [_mm256_setzero_si256(); 8];
        for b in 0..nb {
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * w.format().row_bytes(ACT_BLOCK) + PREFETCH_BYTES) as *const i8);
            let (lo, hi, _) = decode(row, b);
            let y = y0.add(b * ACT_BLOCK) as *const __m256i;
            for l in 0..4 {
                isum[2 * l] = _mm256_dpbusd_epi32(isum[2 * l], lo[l], _mm256_loadu_si256(y.add(2 * l)));
                isum[2 * l + 1] = _mm256_dpbusd_epi32(isum[2 * l + 1], hi[l], _mm256_loadu_si256(y.add(2 * l + 1)));
            }
        }
        let s = |a: __m256i, b: __m256i| _mm256_add_epi32(a, b);
        let total = s(s(s(isum[0], isum[1]), s(isum[2], isum[3])), s(s(isum[4], isum[5]), s(isum[6], isum[7])));
        out[ri] = token_scaled(d[r], x, 0, hsum_i32(total));
    }
}

/// How far ahead of the block being multiplied each row's bytes are prefetched.
const PREFETCH_BYTES: usize = 1024;

/// `R` rows from `r` by `N` tokens from `t0` of a [`uniform512`] product.
struct Tile<'a, L> {
    w: &'a TernaryMatrix,
    r: usize,
    /// The first row of the caller's range (row `first` is `out`'s row 0).
    first: usize,
    x: &'a QuantizedActivations,
    t0: usize,
    out: &'a mut [f32],
    d: &'a [f32],
    layout: PhantomData<L>,
}

impl<L: Layout512> Tile<'_, L> {
    /// Returns `N`, the tokens done.
    #[inline(always)]
    unsafe fn run<const R: usize, const N: usize>(self) -> usize {
        let (x, cols) = (self.x, self.w.cols());
        let nb = cols / ACT_BLOCK;
        let rows: [*const u8; R] = std::array::from_fn(|i| self.w.row_bytes(self.r + i).as_ptr());
        let ys: [*const i8; N] = std::array::from_fn(|k| x.interleaved().as_ptr().add((self.t0 + k) * cols));
        let ds: [*const f32; N] = std::array::from_fn(|k| x.scales().as_ptr().add((self.t0 + k) * nb));
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..nb {
            for row in rows {
                // A hint only: an address past the matrix is never read.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * L::BLOCK_BYTES + PREFETCH_BYTES) as *const i8);
            }
            // (A loop, not `array::from_fn`: a closure would not carry the target features,
            // and the intrinsics in it would become calls.)
            let mut c = [[_mm512_setzero_si512(); 4]; R];
            for i in 0..R {
                c[i] = L::codes(rows[i], b);
            }
            for k in 0..N {
                let y = ys[k].add(b * ACT_BLOCK) as *const __m512i;
                let y = [
                    _mm512_loadu_si512(y),
                    _mm512_loadu_si512(y.add(1)),
                    _mm512_loadu_si512(y.add(2)),
                    _mm512_loadu_si512(y.add(3)),
                ];
                let s = _mm256_set1_ps(*ds[k].add(b));
                for i in 0..R {
                    let mut isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[i][0], y[0]);
                    isum = _mm512_dpbusd_epi32(isum, c[i][1], y[1]);
                    isum = _mm512_dpbusd_epi32(isum, c[i][2], y[2]);
                    isum = _mm512_dpbusd_epi32(isum, c[i][3], y[3]);
                    acc[i][k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold(isum)), s, acc[i][k]);
                }
            }
        }
        let n = x.n_tokens();
        for i in 0..R {
            let d = self.d[self.r + i];
            for k in 0..N {
                let t = self.t0 + k;
                self.out[(self.r + i - self.first) * n + t] = d * (hsum(acc[i][k]) - x.scaled_sums()[t]);
            }
        }
        N
    }
}

impl<L: Layout512> Tile<'_, L> {
    /// [`Tile::run_integer`] for activations scaled per token, else [`Tile::run`].
    #[inline(always)]
    unsafe fn run_scaled<const R: usize, const N: usize>(self) -> usize {
        match self.x.mode() {
            ActScales::Token => self.run_integer::<R, N>(),
            ActScales::Block => self.run::<R, N>(),
        }
    }

    /// [`Tile::run`] for per-token activation scales: the `vpdpbusd` sums accumulate across
    /// every block of the row, and each is scaled once at the end. Returns `N`.
    #[inline(always)]
    unsafe fn run_integer<const R: usize, const N: usize>(self) -> usize {
        let (x, cols) = (self.x, self.w.cols());
        let nb = cols / ACT_BLOCK;
        let rows: [*const u8; R] = std::array::from_fn(|i| self.w.row_bytes(self.r + i).as_ptr());
        let ys: [*const i8; N] = std::array::from_fn(|k| x.interleaved().as_ptr().add((self.t0 + k) * cols));
        let mut acc = [[_mm512_setzero_si512(); N]; R];
        for b in 0..nb {
            for row in rows {
                // A hint only: an address past the matrix is never read.
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b * L::BLOCK_BYTES + PREFETCH_BYTES) as *const i8);
            }
            let mut c = [[_mm512_setzero_si512(); 4]; R];
            for i in 0..R {
                c[i] = L::codes(rows[i], b);
            }
            for k in 0..N {
                let y = ys[k].add(b * ACT_BLOCK) as *const __m512i;
                for l in 0..4 {
                    let yl = _mm512_loadu_si512(y.add(l));
                    for i in 0..R {
                        acc[i][k] = _mm512_dpbusd_epi32(acc[i][k], c[i][l], yl);
                    }
                }
            }
        }
        let n = x.n_tokens();
        for i in 0..R {
            let d = self.d[self.r + i];
            for k in 0..N {
                let t = self.t0 + k;
                self.out[(self.r + i - self.first) * n + t] = token_scaled(d, x, t, _mm512_reduce_add_epi32(acc[i][k]));
            }
        }
        N
    }
}

/// Rows whose blocks carry scales of their own: each block's dot products are scaled by the
/// block's scale times the activation block's, and the code offset is subtracted per block.
#[inline(always)]
unsafe fn per_block512<L: Layout512>(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    let n = x.n_tokens();
    for (ri, r) in rows.enumerate() {
        let row = w.row_bytes(r);
        let mut t0 = 0;
        while t0 < n {
            let dst = &mut out[ri * n + t0..];
            t0 += match n - t0 {
                1 => row_tile512::<L, 1>(w, row, x, t0, dst),
                2 => row_tile512::<L, 2>(w, row, x, t0, dst),
                3 => row_tile512::<L, 3>(w, row, x, t0, dst),
                4 => row_tile512::<L, 4>(w, row, x, t0, dst),
                5 => row_tile512::<L, 5>(w, row, x, t0, dst),
                6 => row_tile512::<L, 6>(w, row, x, t0, dst),
                7 => row_tile512::<L, 7>(w, row, x, t0, dst),
                _ => row_tile512::<L, 8>(w, row, x, t0, dst),
            };
        }
    }
}

#[inline(always)]
unsafe fn row_tile512<L: Layout512, const N: usize>(
    w: &TernaryMatrix,
    row: &[u8],
    x: &QuantizedActivations,
    t0: usize,
    dst: &mut [f32],
) -> usize {
    let (format, cols) = (w.format(), w.cols());
    let nb = cols / ACT_BLOCK;
    // Where each 256-weight block keeps its scale (I2_S has none, and is always uniform).
    let scale_at = format.scale_offset().map(|at| (format.block_bytes(), at));
    let ys: [*const i8; N] = std::array::from_fn(|k| x.interleaved().as_ptr().add((t0 + k) * cols));
    let ds: [*const f32; N] = std::array::from_fn(|k| x.scales().as_ptr().add((t0 + k) * nb));
    let ss: [*const i32; N] = std::array::from_fn(|k| x.sums().as_ptr().add((t0 + k) * nb));
    let mut acc = [_mm512_setzero_ps(); N];
    let mut corr = [0f32; N];
    for b in 0..nb {
        let c = L::codes(row.as_ptr(), b);
        let d = scale_at.map_or(1.0, |(bb, at)| f16_at(row.as_ptr().add(b * bb + at)));
        for k in 0..N {
            let y = ys[k].add(b * ACT_BLOCK) as *const __m512i;
            let mut isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[0], _mm512_loadu_si512(y));
            isum = _mm512_dpbusd_epi32(isum, c[1], _mm512_loadu_si512(y.add(1)));
            isum = _mm512_dpbusd_epi32(isum, c[2], _mm512_loadu_si512(y.add(2)));
            isum = _mm512_dpbusd_epi32(isum, c[3], _mm512_loadu_si512(y.add(3)));
            let scale = d * *ds[k].add(b);
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(scale), acc[k]);
            corr[k] += scale * *ss[k].add(b) as f32;
        }
    }
    for k in 0..N {
        dst[k] = _mm512_reduce_add_ps(acc[k]) - corr[k];
    }
    N
}

/// Splits 64 packed bytes into four 2-bit code vectors, lowest bits first.
#[inline(always)]
unsafe fn unpack2_512(bytes: *const u8) -> [__m512i; 4] {
    let b = _mm512_loadu_si512(bytes as *const __m512i);
    let m = _mm512_set1_epi8(3);
    [
        _mm512_and_si512(b, m),
        _mm512_and_si512(_mm512_srli_epi16(b, 2), m),
        _mm512_and_si512(_mm512_srli_epi16(b, 4), m),
        _mm512_and_si512(_mm512_srli_epi16(b, 6), m),
    ]
}
