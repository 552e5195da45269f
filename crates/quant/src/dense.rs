//! Any stored format to f32: the scalar reference.

use mm_core::{Result, WeightData};

/// Dequantizes a whole weight to f32 values, row-major. Handles every
/// [`mm_core::WeightFormat`]; rows of block formats are whole blocks, so the
/// weight's bytes are one run of blocks.
pub fn dequantize_ref(w: &WeightData) -> Result<Vec<f32>> {
    if let mm_core::WeightFormat::Mm(_) = w.format {
        return crate::mm::dequantize_mm_weight(w);
    }
    crate::ggml::dequantize(w.format, &w.bytes, w.numel())
}

/// Dequantizes rows `rows.start..rows.end` of a weight whose last dimension
/// is the row (`[.., cols]`), e.g. a few rows of an embedding table.
pub fn dequantize_rows_ref(w: &WeightData, rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
    let cols = w.shape.last().copied().unwrap_or(1);
    let mut out = vec![0f32; rows.end.saturating_sub(rows.start) * cols];
    dequantize_rows_into(w, rows, &mut out)?;
    Ok(out)
}

/// [`dequantize_rows_ref`] into `out`, which must hold exactly the rows'
/// values (no allocation: the CPU's prefill dequantizes weight panels with
/// it).
pub fn dequantize_rows_into(
    w: &WeightData,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    let cols = w.shape.last().copied().unwrap_or(1);
    let n_rows = w.numel().checked_div(cols).unwrap_or(0);
    if rows.start > rows.end || rows.end > n_rows {
        return Err(mm_core::Error::Invalid(format!(
            "rows {rows:?} out of range for a weight of shape {:?}",
            w.shape
        )));
    }
    if out.len() != (rows.end - rows.start) * cols {
        return Err(mm_core::Error::Invalid(format!(
            "dequantize rows {rows:?} of {:?}: output holds {} values, not {}",
            w.shape,
            out.len(),
            (rows.end - rows.start) * cols
        )));
    }
    if let mm_core::WeightFormat::Mm(fmt) = w.format {
        if let mm_core::weight::MmKind::Trellis(k) = fmt.kind {
            let scales = w.scales.as_deref().unwrap_or(&[]);
            return crate::trellis::dequantize_trellis_rows(
                k as u32, n_rows, cols, &w.bytes, scales, rows, out,
            );
        }
        let (scales, groups) = (w.scales.as_deref().unwrap_or(&[]), fmt.groups_per_row(cols));
        let (cb, sb) = (fmt.code_bytes(cols), groups * fmt.scale_bytes());
        let short = |what: &str| {
            mm_core::Error::Invalid(format!(
                "{} weight {:?}: its {what} are too short for row {}",
                fmt.name(),
                w.shape,
                rows.end - 1
            ))
        };
        for (i, r) in rows.clone().enumerate() {
            let zeros = match w.zeros.as_deref() {
                Some(z) => Some(
                    z.get(r * groups..(r + 1) * groups)
                        .ok_or_else(|| short("zero-points"))?,
                ),
                None => None,
            };
            crate::mm::dequantize_mm_row(
                fmt,
                w.bytes
                    .get(r * cb..(r + 1) * cb)
                    .ok_or_else(|| short("codes"))?,
                scales
                    .get(r * sb..(r + 1) * sb)
                    .ok_or_else(|| short("scales"))?,
                zeros,
                &mut out[i * cols..(i + 1) * cols],
            )?;
        }
        return Ok(());
    }
    let row_bytes = w.format.bytes_for(cols)?;
    let bytes = w
        .bytes
        .get(rows.start * row_bytes..rows.end * row_bytes)
        .ok_or_else(|| {
            mm_core::Error::Invalid(format!(
                "{} weight {:?}: {} bytes, too few for rows {rows:?}",
                w.format.name(),
                w.shape,
                w.bytes.len()
            ))
        })?;
    crate::ggml::dequantize_row(w.format, bytes, out)
}
