//! Float and block-quantized GGUF tensors to f32, for models that compute in floats (the
//! draft model on burn). Formats: F32, F16, BF16, Q8_0, Q4_0, Q4_1, as ggml defines them.

use half::{bf16, f16};

use crate::gguf::GgmlType;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DequantError {
    #[error("tensor type {0} cannot be dequantized here (F32, F16, BF16, Q8_0, Q4_0 and Q4_1 can)")]
    Unsupported(GgmlType),
    #[error("{ty} data of {bytes} bytes does not hold {n} values")]
    Size { ty: GgmlType, bytes: usize, n: usize },
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decodes `n` values of type `ty` from `data`.
pub fn to_f32(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>, DequantError> {
    let need = ty.byte_size(n as u64).ok_or(DequantError::Size { ty, bytes: data.len(), n })?;
    if need as usize != data.len() {
        return Err(DequantError::Size { ty, bytes: data.len(), n });
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        // Q8_0: f16 scale, 32 int8 values.
        GgmlType::Q8_0 => {
            for b in data.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        // Q4_0: f16 scale, 16 bytes; low nibbles are values 0..16, high nibbles 16..32; q - 8.
        GgmlType::Q4_0 => {
            for b in data.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        // Q4_1: f16 scale and minimum, 16 bytes, same nibble order; q * d + m.
        GgmlType::Q4_1 => {
            for b in data.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        other => return Err(DequantError::Unsupported(other)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_formats_follow_ggml() {
        // Q8_0: scale 0.5, values -2, 0, 4, ...
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = to_f32(GgmlType::Q8_0, &q8, 32).unwrap();
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);

        // Q4_1: scale 2, min -1; byte 0x21 gives 1 (low) and 2 (high).
        let mut q41 = f16::from_f32(2.0).to_le_bytes().to_vec();
        q41.extend(f16::from_f32(-1.0).to_le_bytes());
        q41.extend([0x21u8; 16]);
        let v = to_f32(GgmlType::Q4_1, &q41, 32).unwrap();
        assert_eq!((v[0], v[16]), (1.0, 3.0));

        // Q4_0: scale 1; nibble 8 is zero.
        let mut q40 = f16::from_f32(1.0).to_le_bytes().to_vec();
        q40.extend([0x98u8; 16]);
        let v = to_f32(GgmlType::Q4_0, &q40, 32).unwrap();
        assert_eq!((v[0], v[16]), (0.0, 1.0));
    }

    #[test]
    fn sizes_are_checked() {
        assert!(to_f32(GgmlType::Q8_0, &[0; 33], 32).is_err());
        assert!(to_f32(GgmlType::TQ2_0, &[0; 66], 256).is_err());
    }
}
