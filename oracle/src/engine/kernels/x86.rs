//! AVX2 ternary kernel, chosen at run time on x86-64 CPUs that have AVX2 and FMA.
//!
//! The stored codes 0, 1, 2 are unsigned bytes, so `vpmaddubsw` multiplies them by the signed
//! int8 activations directly: sum(code * y) over a block, then minus sum(y) (kept with the
//! quantized activations) gives sum(w * y) with w = code - 1. Partial sums stay in 16 bits for
//! 128 values (at most 4 * 2 * 2 * 128 per lane), then widen to 32 bits; each 256-value
//! activation block is scaled once into f32 accumulators. Each row's weight bytes are decoded
//! once per tile of tokens.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{QuantizedActivations, TernaryFormat, TernaryKernel, TernaryMatrix, ACT_BLOCK};

/// Tokens that share one decoding of a weight block.
const TILE: usize = 4;

pub struct Avx2;

impl Avx2 {
    pub fn detected() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
}

impl TernaryKernel for Avx2 {
    fn name(&self) -> &'static str {
        "avx2"
    }

    fn gemm(&self, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
        assert!(Self::detected(), "AVX2 kernel called on a CPU without AVX2/FMA");
        assert_eq!(out.len(), rows.len() * x.n_tokens);
        // SAFETY: the CPU supports AVX2 and FMA (checked above); all slices are bounds-checked
        // against the matrix and activation shapes before raw loads.
        unsafe { gemm(w, rows, x, out) }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gemm(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    let n = x.n_tokens;
    for (ri, r) in rows.enumerate() {
        let row = w.row_bytes(r);
        let mut t0 = 0;
        while t0 < n {
            let tile = TILE.min(n - t0);
            let mut res = [0f32; TILE];
            match w.format {
                TernaryFormat::TQ2_0 => tq2_row(row, w.cols, x, t0, tile, &mut res),
                TernaryFormat::I2S => i2s_row(row, w.cols, x, t0, tile, &mut res),
                TernaryFormat::TQ1_0 => tq1_row(row, w.cols, x, t0, tile, &mut res),
            }
            out[ri * n + t0..ri * n + t0 + tile].copy_from_slice(&res[..tile]);
            t0 += tile;
        }
    }
}

/// Per-token accumulators for one tile.
struct Acc {
    vec: [__m256; TILE],
    /// The sum(y) corrections, already scaled.
    corr: [f32; TILE],
}

impl Acc {
    #[inline(always)]
    unsafe fn new() -> Self {
        Acc { vec: [_mm256_setzero_ps(); TILE], corr: [0.0; TILE] }
    }

    /// Adds one block's integer sums for token slot `k`: `scale * (isum - ysum)`.
    #[inline(always)]
    unsafe fn add(&mut self, k: usize, isum: __m256i, scale: f32, ysum: i32) {
        self.vec[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(scale), self.vec[k]);
        self.corr[k] += scale * ysum as f32;
    }

    #[inline(always)]
    unsafe fn finish(&self, tile: usize, res: &mut [f32; TILE]) {
        for k in 0..tile {
            res[k] = hsum(self.vec[k]) - self.corr[k];
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
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
unsafe fn tq2_row(row: &[u8], cols: usize, x: &QuantizedActivations, t0: usize, tile: usize, res: &mut [f32; TILE]) {
    let mut acc = Acc::new();
    for b in 0..cols / 256 {
        let block = &row[b * 66..(b + 1) * 66];
        let d = half::f16::from_le_bytes([block[64], block[65]]).to_f32();
        let lo = unpack2(block.as_ptr());
        let hi = unpack2(block.as_ptr().add(32));
        for k in 0..tile {
            let t = t0 + k;
            let y = x.token(t)[b * ACT_BLOCK..].as_ptr();
            let isum = _mm256_add_epi32(dot128(&lo, y), dot128(&hi, y.add(128)));
            acc.add(k, isum, d * x.token_scales(t)[b], x.token_sums(t)[b]);
        }
    }
    acc.finish(tile, res);
}

#[inline(always)]
unsafe fn i2s_row(row: &[u8], cols: usize, x: &QuantizedActivations, t0: usize, tile: usize, res: &mut [f32; TILE]) {
    let mut acc = Acc::new();
    // Two 128-weight I2_S blocks per 256-value activation block.
    for b in 0..cols / 256 {
        let [c0, c1, c2, c3] = unpack2(row[b * 64..b * 64 + 32].as_ptr());
        let [d0, d1, d2, d3] = unpack2(row[b * 64 + 32..(b + 1) * 64].as_ptr());
        // I2_S puts the first 32 weights of a block in the highest bits.
        let (lo, hi) = ([c3, c2, c1, c0], [d3, d2, d1, d0]);
        for k in 0..tile {
            let t = t0 + k;
            let y = x.token(t)[b * ACT_BLOCK..].as_ptr();
            let isum = _mm256_add_epi32(dot128(&lo, y), dot128(&hi, y.add(128)));
            acc.add(k, isum, x.token_scales(t)[b], x.token_sums(t)[b]);
        }
    }
    acc.finish(tile, res);
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

#[inline(always)]
unsafe fn tq1_row(row: &[u8], cols: usize, x: &QuantizedActivations, t0: usize, tile: usize, res: &mut [f32; TILE]) {
    let mut acc = Acc::new();
    let mut tail = [0u8; 96];
    for b in 0..cols / 256 {
        let block = &row[b * 54..(b + 1) * 54];
        let d = half::f16::from_le_bytes([block[52], block[53]]).to_f32();
        // Weights 0..160 from qs[0..32].
        let mut q = _mm256_loadu_si256(block.as_ptr() as *const __m256i);
        let first = [next_trit(&mut q), next_trit(&mut q), next_trit(&mut q), next_trit(&mut q)];
        let fifth = next_trit(&mut q);
        // Weights 160..256 from qs[32..48] and qh, decoded into a small buffer.
        let mut q16 = _mm_loadu_si128(block.as_ptr().add(32) as *const __m128i);
        for n in 0..5 {
            let ge86 = _mm_cmpeq_epi8(_mm_max_epu8(q16, _mm_set1_epi8(86)), q16);
            let ge171 = _mm_cmpeq_epi8(_mm_max_epu8(q16, _mm_set1_epi8(171u8 as i8)), q16);
            let digit = _mm_sub_epi8(_mm_sub_epi8(_mm_setzero_si128(), ge86), ge171);
            _mm_storeu_si128(tail.as_mut_ptr().add(16 * n) as *mut __m128i, digit);
            q16 = _mm_add_epi8(q16, _mm_add_epi8(q16, q16));
        }
        for n in 0..4 {
            for j in 0..4 {
                tail[80 + 4 * n + j] = (super::formats::trit(block[48 + j], n) + 1) as u8;
            }
        }
        let second = [
            fifth,
            _mm256_loadu_si256(tail.as_ptr() as *const __m256i),
            _mm256_loadu_si256(tail.as_ptr().add(32) as *const __m256i),
            _mm256_loadu_si256(tail.as_ptr().add(64) as *const __m256i),
        ];
        for k in 0..tile {
            let t = t0 + k;
            let y = x.token(t)[b * ACT_BLOCK..].as_ptr();
            let isum = _mm256_add_epi32(dot128(&first, y), dot128(&second, y.add(128)));
            acc.add(k, isum, d * x.token_scales(t)[b], x.token_sums(t)[b]);
        }
    }
    acc.finish(tile, res);
}
