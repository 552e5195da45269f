//! Token sampling over rows of logits ([`mm_core::Backend::sample`]).
//!
//! Layout: `logits[n, vocab]` row-major on the host; each
//! [`SampleRow`] names its row and carries its parameters, penalty lists
//! and random number.
//!
//! Strategy: the one definition of the arithmetic lives in
//! [`mm_core::sample`] (the engine's host sampler runs it too); this op
//! runs the rows in parallel, the reference one after another.

use mm_core::sample::{check_rows, sample_row, sample_rows};
use mm_core::{Result, SampleRow, Tensor};

/// Fast CPU [`mm_core::Backend::sample`]: rows in parallel.
pub fn sample(logits: &Tensor, rows: &[SampleRow]) -> Result<Vec<u32>> {
    let (_, vocab) = logits.dims2()?;
    let l = logits.as_slice()?;
    check_rows(l.len(), vocab, rows)?;
    let mut out: Vec<Result<u32>> = rows.iter().map(|_| Ok(0)).collect();
    crate::pool::for_each_chunk_mut(&mut out, 1, |i, o| {
        let r = &rows[i];
        o[0] = sample_row(&l[r.row * vocab..(r.row + 1) * vocab], r);
    });
    out.into_iter().collect()
}

/// Scalar reference of [`sample`]: `logits[n, vocab]`, rows one after
/// another.
pub fn sample_ref(logits: &[f32], vocab: usize, rows: &[SampleRow]) -> Result<Vec<u32>> {
    sample_rows(logits, vocab, rows)
}
