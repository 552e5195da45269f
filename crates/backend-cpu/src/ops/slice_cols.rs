//! A window of columns of every group of a row (multi-head latent
//! attention's and partial RoPE's head parts, without a trip through the
//! model's code).
//!
//! Layout: `x[n, groups*gw]` row-major, each row `groups` groups of `gw`
//! columns (a head each); the output `[n, groups*len]` holds, per group,
//! columns `offset..offset + len` of it, zero past the group's end
//! (padding). With `pairs` the window's interleaved pairs become evens
//! then odds (transformers' layout of interleaved RoPE pairs).
//!
//! Strategy: a copy, rows split across threads for large tensors; exact.

use mm_core::backend::slice_cols_dims as check;
use mm_core::{Result, Tensor};

/// Fast CPU [`mm_core::Backend::slice_cols`].
pub fn slice_cols(
    x: &Tensor,
    groups: usize,
    offset: usize,
    len: usize,
    pairs: bool,
) -> Result<Tensor> {
    let (n, gw) = check(x, groups, offset, len, pairs)?;
    let xs = x.as_slice()?;
    let row = groups * len;
    let mut out = mm_core::host_pool::zeroed(n * row);
    let (src, take) = (
        source(offset, len, pairs),
        gw.saturating_sub(offset).min(len),
    );
    // Groups of no columns read as zeros only.
    if gw > 0 {
        super::for_each_row(&mut out, row, |r, o| {
            let xr = &xs[r * groups * gw..][..groups * gw];
            for (o, g) in o.chunks_exact_mut(len).zip(xr.chunks_exact(gw)) {
                match &src {
                    None => o[..take].copy_from_slice(&g[offset..offset + take]),
                    Some(s) => o
                        .iter_mut()
                        .zip(s)
                        .for_each(|(o, &j)| *o = g.get(j).copied().unwrap_or(0.0)),
                }
            }
        });
    }
    Tensor::from_vec(vec![n, row], out)
}

/// The group column each output column reads with `pairs` (None without:
/// a straight copy of the window).
fn source(offset: usize, len: usize, pairs: bool) -> Option<Vec<usize>> {
    pairs.then(|| (0..len).map(|j| offset + window(j, len, true)).collect())
}

/// The window column output column `j` of `len` reads.
fn window(j: usize, len: usize, pairs: bool) -> usize {
    let half = len / 2;
    match pairs {
        false => j,
        true if j < half => 2 * j,
        true => 2 * (j - half) + 1,
    }
}

/// Scalar reference over `x[n, groups*gw]`.
pub fn slice_cols_ref(
    x: &[f32],
    n: usize,
    groups: usize,
    offset: usize,
    len: usize,
    pairs: bool,
) -> Vec<f32> {
    let gw = x.len() / (n * groups).max(1);
    let mut out = Vec::with_capacity(n * groups * len);
    for r in 0..n {
        for g in 0..groups {
            for j in 0..len {
                let c = offset + window(j, len, pairs);
                out.push(if c < gw {
                    x[(r * groups + g) * gw + c]
                } else {
                    0.0
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interleaved pairs become transformers' layout (evens, then odds);
    /// without `pairs` the window is copied as it is.
    #[test]
    fn interleaved_pairs_become_evens_then_odds() {
        let x = Tensor::from_vec(vec![1, 8], (0..8).map(|v| v as f32).collect()).unwrap();
        let y = slice_cols(&x, 1, 2, 6, true).unwrap();
        assert_eq!(y.as_slice().unwrap(), [2.0, 4.0, 6.0, 3.0, 5.0, 7.0]);
        let y = slice_cols(&x, 2, 1, 2, false).unwrap();
        assert_eq!(y.as_slice().unwrap(), [1.0, 2.0, 5.0, 6.0]);
    }
}
