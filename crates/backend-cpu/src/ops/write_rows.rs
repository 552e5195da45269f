//! Copies rows into a preallocated buffer (the KV cache append).

use mm_core::{Error, Result, Tensor};

/// Copies `src[r, c]` into `dst[cap, c]` at rows `row..row + r`.
pub fn write_rows(dst: &mut Tensor, row: usize, src: &Tensor) -> Result<()> {
    let (cap, c) = dst.dims2()?;
    let (r, c2) = src.dims2()?;
    if c != c2 || row + r > cap {
        return Err(Error::Invalid(format!(
            "write_rows: {r}x{c2} rows at row {row} do not fit a {cap}x{c} buffer"
        )));
    }
    let s = src.as_slice()?;
    dst.as_mut_slice()?[row * c..(row + r) * c].copy_from_slice(s);
    Ok(())
}

/// Scalar reference of [`write_rows`].
pub fn write_rows_ref(dst: &mut [f32], cols: usize, row: usize, src: &[f32]) {
    for (i, v) in src.iter().enumerate() {
        dst[row * cols + i] = *v;
    }
}
