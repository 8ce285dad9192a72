//! NEON ternary kernels for aarch64, in two variants chosen at run time:
//!
//! * [`NeonDotprod`] uses `sdot` (the Armv8.2 dot-product extension, on every core since
//!   Cortex-A55/A76 and Apple M1): sixteen int8 products summed four at a time into 32-bit
//!   lanes, in one instruction.
//! * [`Neon`] uses only what every aarch64 core has: widening multiply-adds (`smlal`, `smlal2`)
//!   into 16-bit lanes, widened to 32 bits once per 256-weight block.
//!
//! As in the x86 kernels, the stored codes 0, 1, 2 are multiplied as they are and the block's
//! activation sum is subtracted once, which turns them into -1, 0, +1. A block is decoded into
//! sixteen 16-code vectors in weight order, once per tile of tokens.
//!
//! `sdot` is written as inline assembly because its intrinsic (`vdotq_s32`) is not stable in
//! Rust 1.95; the instruction is only reached from functions compiled with `dotprod` enabled,
//! after run-time detection.

use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

use half::f16;

use super::formats::{BlockI2s, BlockTq1_0, BlockTq2_0};
use super::{QuantizedActivations, TernaryFormat, TernaryKernel, TernaryMatrix, ACT_BLOCK};

/// Tokens that share one decoding of a weight block.
const TILE: usize = 4;

/// The codes (0, 1, 2) of 256 weights in weight order, sixteen per vector.
type Codes = [uint8x16_t; 16];

/// The baseline NEON kernel.
pub struct Neon;

impl Neon {
    pub fn detected() -> bool {
        std::arch::is_aarch64_feature_detected!("neon")
    }
}

/// The NEON kernel with the dot-product extension.
pub struct NeonDotprod;

impl NeonDotprod {
    pub fn detected() -> bool {
        Neon::detected() && std::arch::is_aarch64_feature_detected!("dotprod")
    }
}

impl TernaryKernel for Neon {
    fn name(&self) -> &'static str {
        "neon"
    }

    unsafe fn gemm_unchecked(&self, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
        assert!(Self::detected(), "NEON kernel called on a CPU without NEON");
        // SAFETY: the CPU has NEON (checked above). The caller upholds the shape contract of
        // `gemm_unchecked`, and the types' invariants bound every raw load: rows have the
        // layout's length, each token `cols` values and `cols / 256` scales and sums.
        unsafe { gemm_plain(w, rows, x, out) }
    }
}

impl TernaryKernel for NeonDotprod {
    fn name(&self) -> &'static str {
        "neon-dotprod"
    }

    unsafe fn gemm_unchecked(&self, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
        assert!(Self::detected(), "NEON dotprod kernel called on a CPU without the dot-product extension");
        // SAFETY: as for `Neon`, with `dotprod` checked too.
        unsafe { gemm_dotprod(w, rows, x, out) }
    }
}

#[target_feature(enable = "neon")]
unsafe fn gemm_plain(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    match w.format() {
        TernaryFormat::TQ2_0 => gemm_with::<Tq2, Widening>(w, rows, x, out),
        TernaryFormat::TQ1_0 => gemm_with::<Tq1, Widening>(w, rows, x, out),
        TernaryFormat::I2S => gemm_with::<I2s, Widening>(w, rows, x, out),
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn gemm_dotprod(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    match w.format() {
        TernaryFormat::TQ2_0 => gemm_with::<Tq2, Sdot>(w, rows, x, out),
        TernaryFormat::TQ1_0 => gemm_with::<Tq1, Sdot>(w, rows, x, out),
        TernaryFormat::I2S => gemm_with::<I2s, Sdot>(w, rows, x, out),
    }
}

/// How one layout's 256-weight chunk `b` of a row is decoded: its codes and its scale.
trait Layout {
    unsafe fn decode(row: *const u8, b: usize) -> (Codes, f32);
}

/// How 256 codes meet 256 int8 activations: the four 32-bit lanes of sum(code * y).
trait Dot {
    unsafe fn dot256(codes: &Codes, y: *const i8) -> int32x4_t;
}

#[inline(always)]
unsafe fn gemm_with<L: Layout, D: Dot>(w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
    let n = x.n_tokens();
    for (ri, r) in rows.enumerate() {
        let row = w.row_bytes(r).as_ptr();
        for (t0, len) in super::token_groups(n, TILE) {
            let dst = &mut out[ri * n + t0..];
            match len {
                1 => row_tile::<1, L, D>(row, w.cols(), x, t0, dst),
                2 => row_tile::<2, L, D>(row, w.cols(), x, t0, dst),
                3 => row_tile::<3, L, D>(row, w.cols(), x, t0, dst),
                _ => row_tile::<TILE, L, D>(row, w.cols(), x, t0, dst),
            };
        }
    }
}

/// One row against `N` tokens from `t0`; the accumulators stay in registers.
#[inline(always)]
unsafe fn row_tile<const N: usize, L: Layout, D: Dot>(
    row: *const u8,
    cols: usize,
    x: &QuantizedActivations,
    t0: usize,
    dst: &mut [f32],
) -> usize {
    let nb = cols / ACT_BLOCK;
    debug_assert!(t0 + N <= x.n_tokens() && x.cols() == cols);
    let ys: [*const i8; N] = std::array::from_fn(|k| x.values().as_ptr().add((t0 + k) * cols));
    let ds: [*const f32; N] = std::array::from_fn(|k| x.scales().as_ptr().add((t0 + k) * nb));
    let ss: [*const i32; N] = std::array::from_fn(|k| x.sums().as_ptr().add((t0 + k) * nb));
    let mut acc = [vdupq_n_f32(0.0); N];
    let mut corr = [0f32; N];
    for b in 0..nb {
        let (codes, d) = L::decode(row, b);
        for k in 0..N {
            let isum = D::dot256(&codes, ys[k].add(b * ACT_BLOCK));
            let scale = d * *ds[k].add(b);
            acc[k] = vfmaq_n_f32(acc[k], vcvtq_f32_s32(isum), scale);
            corr[k] += scale * *ss[k].add(b) as f32;
        }
    }
    for k in 0..N {
        dst[k] = vaddvq_f32(acc[k]) - corr[k];
    }
    N
}

/// `sdot`: two accumulators, so that consecutive dot products do not wait on each other.
struct Sdot;

impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot256(codes: &Codes, y: *const i8) -> int32x4_t {
        let (mut a, mut b) = (vdupq_n_s32(0), vdupq_n_s32(0));
        for i in (0..16).step_by(2) {
            a = sdot(a, vreinterpretq_s8_u8(codes[i]), vld1q_s8(y.add(16 * i)));
            b = sdot(b, vreinterpretq_s8_u8(codes[i + 1]), vld1q_s8(y.add(16 * i + 16)));
        }
        vaddq_s32(a, b)
    }
}

/// `acc += sdot(a, b)`: each 32-bit lane gains the sum of four int8 products.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Widening multiply-adds into 16-bit lanes. A lane gathers 32 products of a code (at most 2)
/// and an activation (|y| <= 127): at most 8128, inside i16. Two accumulators for the same
/// reason as [`Sdot`]'s.
struct Widening;

impl Dot for Widening {
    #[inline(always)]
    unsafe fn dot256(codes: &Codes, y: *const i8) -> int32x4_t {
        let (mut a, mut b) = (vdupq_n_s16(0), vdupq_n_s16(0));
        for i in (0..16).step_by(2) {
            let (c0, y0) = (vreinterpretq_s8_u8(codes[i]), vld1q_s8(y.add(16 * i)));
            let (c1, y1) = (vreinterpretq_s8_u8(codes[i + 1]), vld1q_s8(y.add(16 * i + 16)));
            a = vmlal_high_s8(vmlal_s8(a, vget_low_s8(c0), vget_low_s8(y0)), c0, y0);
            b = vmlal_high_s8(vmlal_s8(b, vget_low_s8(c1), vget_low_s8(y1)), c1, y1);
        }
        vpadalq_s16(vpaddlq_s16(a), b)
    }
}

/// The four 2-bit codes of 16 bytes, lowest bits first.
#[inline(always)]
unsafe fn unpack2(v: uint8x16_t) -> [uint8x16_t; 4] {
    let m = vdupq_n_u8(3);
    [vandq_u8(v, m), vandq_u8(vshrq_n_u8::<2>(v), m), vandq_u8(vshrq_n_u8::<4>(v), m), vshrq_n_u8::<6>(v)]
}

/// TQ2_0: 66-byte blocks; byte `32h + m` holds weights `128h + 32l + m` at shift `2l`.
struct Tq2;

impl Layout for Tq2 {
    #[inline(always)]
    unsafe fn decode(row: *const u8, b: usize) -> (Codes, f32) {
        let blk = &*(row as *const BlockTq2_0).add(b);
        let p = blk.qs.as_ptr();
        let mut c = [vdupq_n_u8(0); 16];
        for h in 0..2 {
            let lo = unpack2(vld1q_u8(p.add(32 * h)));
            let hi = unpack2(vld1q_u8(p.add(32 * h + 16)));
            for l in 0..4 {
                c[8 * h + 2 * l] = lo[l];
                c[8 * h + 2 * l + 1] = hi[l];
            }
        }
        (c, f16::from_le_bytes(blk.d).to_f32())
    }
}

/// I2_S: two 32-byte blocks per 256 weights; byte `m` holds weights `32g + m` at shift `6 - 2g`.
struct I2s;

impl Layout for I2s {
    #[inline(always)]
    unsafe fn decode(row: *const u8, b: usize) -> (Codes, f32) {
        let blk = (row as *const BlockI2s).add(2 * b);
        let mut c = [vdupq_n_u8(0); 16];
        for s in 0..2 {
            let p = (*blk.add(s)).qs.as_ptr();
            let lo = unpack2(vld1q_u8(p));
            let hi = unpack2(vld1q_u8(p.add(16)));
            for g in 0..4 {
                c[8 * s + 2 * g] = lo[3 - g];
                c[8 * s + 2 * g + 1] = hi[3 - g];
            }
        }
        (c, 1.0)
    }
}

/// The leading base-3 digit of each byte, then the byte times 3 (mod 256), which brings the
/// next digit to the front: digit = [q >= 86] + [q >= 171] (llama.cpp's `(q * 3) >> 8`).
#[inline(always)]
unsafe fn next_trit(q: &mut uint8x16_t) -> uint8x16_t {
    let d = vaddq_u8(vshrq_n_u8::<7>(vcgeq_u8(*q, vdupq_n_u8(86))), vshrq_n_u8::<7>(vcgeq_u8(*q, vdupq_n_u8(171))));
    *q = vaddq_u8(*q, vaddq_u8(*q, *q));
    d
}

/// TQ1_0: 54-byte blocks. Bytes 0..32 hold five digits of weights `32n + m`, bytes 32..48 five
/// digits of weights `160 + 16n + m`, and the four `qh` bytes four digits of `240 + 4n + j`.
struct Tq1;

impl Layout for Tq1 {
    #[inline(always)]
    unsafe fn decode(row: *const u8, b: usize) -> (Codes, f32) {
        let blk = &*(row as *const BlockTq1_0).add(b);
        let p = blk.qs.as_ptr();
        let mut c = [vdupq_n_u8(0); 16];
        let (mut q0, mut q1, mut q2) = (vld1q_u8(p), vld1q_u8(p.add(16)), vld1q_u8(p.add(32)));
        for n in 0..5 {
            c[2 * n] = next_trit(&mut q0);
            c[2 * n + 1] = next_trit(&mut q1);
            c[10 + n] = next_trit(&mut q2);
        }
        // Lane 4n + j is qh byte j times 3^n: its leading digit is digit n of that byte.
        let qh = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(blk.qh)));
        const POW3: [u8; 16] = [1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27];
        let mut q3 = vmulq_u8(qh, vld1q_u8(POW3.as_ptr()));
        c[15] = next_trit(&mut q3);
        (c, f16::from_le_bytes(blk.d).to_f32())
    }
}
