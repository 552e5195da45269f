//! Any stored format to f32: the scalar reference.

use mm_core::{Result, WeightData};

/// Dequantizes a whole weight to f32 values, row-major. Handles every
/// [`mm_core::WeightFormat`]; rows of block formats are whole blocks, so the
/// weight's bytes are one run of blocks.
pub fn dequantize_ref(w: &WeightData) -> Result<Vec<f32>> {
    crate::ggml::dequantize(w.format, &w.bytes, w.numel())
}

/// Dequantizes rows `rows.start..rows.end` of a weight whose last dimension
/// is the row (`[.., cols]`), e.g. a few rows of an embedding table.
pub fn dequantize_rows_ref(w: &WeightData, rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
    let cols = w.shape.last().copied().unwrap_or(1);
    let n_rows = w.numel().checked_div(cols).unwrap_or(0);
    if rows.start > rows.end || rows.end > n_rows {
        return Err(mm_core::Error::Invalid(format!(
            "rows {rows:?} out of range for a weight of shape {:?}",
            w.shape
        )));
    }
    let row_bytes = w.format.bytes_for(cols)?;
    let bytes = &w.bytes[rows.start * row_bytes..rows.end * row_bytes];
    crate::ggml::dequantize(w.format, bytes, (rows.end - rows.start) * cols)
}
