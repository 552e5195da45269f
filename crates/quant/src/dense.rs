//! Any stored format to f32: the scalar reference.

use mm_core::{Result, WeightData};

/// Dequantizes a whole weight to f32 values, row-major.
pub fn dequantize_ref(w: &WeightData) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; w.numel()];
    dequantize_row(w.format, &w.bytes, &mut out)?;
    Ok(out)
}

/// Dequantizes `out.len()` values stored in `format` from `bytes`.
pub fn dequantize_row(format: mm_core::WeightFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    use mm_core::WeightFormat as F;
    match format {
        F::F32 => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F::F16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        F::BF16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        f => {
            return Err(mm_core::Error::Other(format!(
                "{} dequantization pending",
                f.name()
            )))
        }
    }
    Ok(())
}
