//! The ternary weight layouts, described once, with the element decoding the reference kernel
//! and the tests use.
//!
//! * **TQ2_0** (llama.cpp): blocks of 256 weights in 66 bytes, `qs[64]` then an f16 scale.
//!   Byte `32h + m` holds weights `128h + 32l + m` at bit shift `2l`, for `l` in 0..4.
//! * **TQ1_0** (llama.cpp): blocks of 256 weights in 54 bytes, `qs[48]`, `qh[4]`, f16 scale.
//!   A byte holds five (or four) base-3 digits as a fixed-point fraction: digit `n` is
//!   `((byte * 3^n) mod 256) * 3 >> 8`. Bytes 0..32 give weights `32n + m`, bytes 32..48 give
//!   weights `160 + 16n + m`, and `qh` gives weights `240 + 4n + j`.
//! * **I2_S** (microsoft/BitNet, x86): blocks of 128 weights in 32 bytes with no per-block
//!   scale. Byte `m` holds weights `32g + m` at bit shift `6 - 2g`. One f32 scale for the whole
//!   tensor follows the packed bytes, padded to 32 bytes.
//!
//! In all three, a stored code 0, 1, 2 means -1, 0, +1.

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};
use half::f16;

/// llama.cpp's `block_tq2_0`: 256 weights as 2-bit codes, then the block's f16 scale.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockTq2_0 {
    pub qs: [u8; 64],
    /// f16, little-endian (bytes, so that a block has alignment 1 and any row can be viewed
    /// as blocks).
    pub d: [u8; 2],
}

/// llama.cpp's `block_tq1_0`: 240 weights as base-3 digits, five per byte, 16 more four per
/// byte in `qh`, then the block's f16 scale.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockTq1_0 {
    pub qs: [u8; 48],
    pub qh: [u8; 4],
    pub d: [u8; 2],
}

/// microsoft/BitNet's I2_S block (x86 layout): 128 weights as 2-bit codes, no scale.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockI2s {
    pub qs: [u8; 32],
}

// The layouts the files use; the SIMD kernels take their strides and offsets from these types.
const _: () = assert!(size_of::<BlockTq2_0>() == 66 && offset_of!(BlockTq2_0, d) == 64);
const _: () = assert!(size_of::<BlockTq1_0>() == 54 && offset_of!(BlockTq1_0, qh) == 48 && offset_of!(BlockTq1_0, d) == 52);
const _: () = assert!(size_of::<BlockI2s>() == 32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TernaryFormat {
    TQ2_0,
    TQ1_0,
    I2S,
}

impl TernaryFormat {
    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            TernaryFormat::TQ2_0 | TernaryFormat::TQ1_0 => 256,
            TernaryFormat::I2S => 128,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            TernaryFormat::TQ2_0 => size_of::<BlockTq2_0>(),
            TernaryFormat::TQ1_0 => size_of::<BlockTq1_0>(),
            TernaryFormat::I2S => size_of::<BlockI2s>(),
        }
    }

    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// Bytes of a whole `rows x cols` tensor, with I2_S's trailing scale record.
    pub fn tensor_bytes(self, rows: usize, cols: usize) -> usize {
        rows * self.row_bytes(cols) + if self == TernaryFormat::I2S { 32 } else { 0 }
    }

    /// Where a block keeps its f16 scale (I2_S blocks have none).
    pub fn scale_offset(self) -> Option<usize> {
        match self {
            TernaryFormat::TQ2_0 => Some(offset_of!(BlockTq2_0, d)),
            TernaryFormat::TQ1_0 => Some(offset_of!(BlockTq1_0, d)),
            TernaryFormat::I2S => None,
        }
    }

    /// The scale of block `b` of a row (I2_S blocks have none: 1).
    pub fn block_scale(self, row: &[u8], b: usize) -> f32 {
        let block = &row[b * self.block_bytes()..(b + 1) * self.block_bytes()];
        match self {
            TernaryFormat::TQ2_0 => f16::from_le_bytes(bytemuck::from_bytes::<BlockTq2_0>(block).d).to_f32(),
            TernaryFormat::TQ1_0 => f16::from_le_bytes(bytemuck::from_bytes::<BlockTq1_0>(block).d).to_f32(),
            TernaryFormat::I2S => 1.0,
        }
    }

    /// Decodes one block (exactly [`TernaryFormat::block_bytes`] long) to -1/0/+1 values, in
    /// weight order.
    pub fn decode_block(self, block: &[u8], out: &mut [i8]) {
        match self {
            TernaryFormat::TQ2_0 => {
                let qs = &bytemuck::from_bytes::<BlockTq2_0>(block).qs;
                for h in 0..2 {
                    for l in 0..4 {
                        for m in 0..32 {
                            out[128 * h + 32 * l + m] = ((qs[32 * h + m] >> (2 * l)) & 3) as i8 - 1;
                        }
                    }
                }
            }
            TernaryFormat::TQ1_0 => {
                let b = bytemuck::from_bytes::<BlockTq1_0>(block);
                for n in 0..5 {
                    for m in 0..32 {
                        out[32 * n + m] = trit(b.qs[m], n);
                    }
                    for m in 0..16 {
                        out[160 + 16 * n + m] = trit(b.qs[32 + m], n);
                    }
                }
                for n in 0..4 {
                    for j in 0..4 {
                        out[240 + 4 * n + j] = trit(b.qh[j], n);
                    }
                }
            }
            TernaryFormat::I2S => {
                let qs = &bytemuck::from_bytes::<BlockI2s>(block).qs;
                for g in 0..4 {
                    for m in 0..32 {
                        out[32 * g + m] = ((qs[m] >> (6 - 2 * g)) & 3) as i8 - 1;
                    }
                }
            }
        }
    }

    /// Encodes -1/0/+1 values (one block) and a scale; used by tests and benchmarks.
    pub fn encode_block(self, values: &[i8], scale: f32, out: &mut [u8]) {
        let code = |v: i8| (v + 1) as u8;
        out.fill(0);
        match self {
            TernaryFormat::TQ2_0 => {
                for (i, &v) in values.iter().enumerate() {
                    let (h, l, m) = (i / 128, (i % 128) / 32, i % 32);
                    out[32 * h + m] |= code(v) << (2 * l);
                }
                out[64..66].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
            }
            TernaryFormat::TQ1_0 => {
                // A byte stores digits d0..d4 as ceil(sum(d_i * 3^(4-i)) * 256 / 243).
                let pack = |digits: &[u8]| -> u8 {
                    let mut v: u32 = 0;
                    for &d in digits {
                        v = v * 3 + d as u32;
                    }
                    for _ in digits.len()..5 {
                        v *= 3;
                    }
                    ((v * 256).div_ceil(243)) as u8
                };
                for m in 0..32 {
                    let d: Vec<u8> = (0..5).map(|n| code(values[32 * n + m])).collect();
                    out[m] = pack(&d);
                }
                for m in 0..16 {
                    let d: Vec<u8> = (0..5).map(|n| code(values[160 + 16 * n + m])).collect();
                    out[32 + m] = pack(&d);
                }
                for j in 0..4 {
                    let d: Vec<u8> = (0..4).map(|n| code(values[240 + 4 * n + j])).collect();
                    out[48 + j] = pack(&d);
                }
                out[52..54].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
            }
            TernaryFormat::I2S => {
                for (i, &v) in values.iter().enumerate() {
                    let (g, m) = (i / 32, i % 32);
                    out[m] |= code(v) << (6 - 2 * g);
                }
            }
        }
    }
}

/// Base-3 digit `n` of a TQ1_0 byte.
#[inline]
pub fn trit(byte: u8, n: usize) -> i8 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let q = byte.wrapping_mul(POW3[n]);
    (((q as u16) * 3) >> 8) as i8 - 1
}

/// I2_S's tensor scale, stored after `n` packed weights.
pub fn i2s_tensor_scale(data: &[u8], n: usize) -> f32 {
    let at = n / 4;
    f32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Builds a whole tensor from -1/0/+1 values (row-major) with one scale per row block;
/// for tests and benchmarks.
pub fn encode_matrix(format: TernaryFormat, rows: usize, cols: usize, values: &[i8], block_scales: &[f32]) -> Vec<u8> {
    let bl = format.block_len();
    let bb = format.block_bytes();
    let mut out = vec![0u8; format.tensor_bytes(rows, cols)];
    for (b, chunk) in values.chunks_exact(bl).enumerate() {
        format.encode_block(chunk, block_scales[b], &mut out[b * bb..(b + 1) * bb]);
    }
    if format == TernaryFormat::I2S {
        let at = rows * cols / 4;
        out[at..at + 4].copy_from_slice(&block_scales[0].to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips() {
        let values: Vec<i8> = (0..256).map(|i| ((i * 7 + i / 5) % 3) as i8 - 1).collect();
        for f in [TernaryFormat::TQ2_0, TernaryFormat::TQ1_0, TernaryFormat::I2S] {
            let n = f.block_len();
            let mut block = vec![0u8; f.block_bytes()];
            f.encode_block(&values[..n], 0.5, &mut block);
            let mut back = vec![0i8; n];
            f.decode_block(&block, &mut back);
            assert_eq!(back, values[..n], "{f:?}");
            if f != TernaryFormat::I2S {
                assert_eq!(f.block_scale(&block, 0), 0.5);
            }
        }
    }

    #[test]
    fn trits_match_llama_cpp_formula() {
        // Every byte decodes to digits in {-1, 0, 1}; 0 and 255 are the extremes.
        for b in 0..=255u8 {
            for n in 0..5 {
                assert!((-1..=1).contains(&trit(b, n)));
            }
        }
        assert_eq!(trit(0, 0), -1);
        assert_eq!(trit(255, 0), 1);
    }
}
