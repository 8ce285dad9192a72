//! The reference kernel: decode each weight block to -1/0/+1, then plain integer dot products.
//! Slow and obviously right; every SIMD kernel is tested against it.

use std::ops::Range;

use super::{QuantizedActivations, TernaryKernel, TernaryMatrix, ACT_BLOCK};

pub struct Scalar;

impl TernaryKernel for Scalar {
    fn name(&self) -> &'static str {
        "scalar"
    }

    /// Safe in itself (every access is bounds-checked); `unsafe` only by the trait's contract.
    unsafe fn gemm_unchecked(&self, w: &TernaryMatrix, rows: Range<usize>, x: &QuantizedActivations, out: &mut [f32]) {
        let f = w.format();
        let (bl, bb) = (f.block_len(), f.block_bytes());
        let n = x.n_tokens();
        let mut decoded = vec![0i8; bl];
        for (ri, r) in rows.enumerate() {
            let row = w.row_bytes(r);
            let mut acc = vec![0f32; n];
            for b in 0..w.cols() / bl {
                f.decode_block(&row[b * bb..(b + 1) * bb], &mut decoded);
                let d_w = f.block_scale(row, b);
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    let qs = x.token(t);
                    let scales = x.token_scales(t);
                    // Sum each stretch of the block that shares one activation scale.
                    let mut start = b * bl;
                    while start < (b + 1) * bl {
                        let end = ((start / ACT_BLOCK + 1) * ACT_BLOCK).min((b + 1) * bl);
                        let isum: i32 = decoded[start - b * bl..end - b * bl]
                            .iter()
                            .zip(&qs[start..end])
                            .map(|(&wv, &xv)| wv as i32 * xv as i32)
                            .sum();
                        *acc_t += d_w * scales[start / ACT_BLOCK] * isum as f32;
                        start = end;
                    }
                }
            }
            out[ri * n..(ri + 1) * n].copy_from_slice(&acc);
        }
    }
}
