//! Two tensors' columns side by side per group (multi-head latent
//! attention's cache rows `[c | k_pe]` and absorbed queries
//! `[q_lat | q_pe]` per head, partial RoPE's heads put back together).
//!
//! Layout: `a[n, groups*la]` and `b[n, b_groups*lb]` row-major, with
//! `b_groups` either `groups` (a part of `b` per group) or 1 (one part
//! every group repeats); the output `[n, groups*(la + lb)]` holds, per
//! group, `a`'s part then `b`'s.
//!
//! Strategy: a copy, rows split across threads for large tensors; exact.

use mm_core::backend::concat_cols_dims as check;
use mm_core::{Result, Tensor};

/// Fast CPU [`mm_core::Backend::concat_cols`].
pub fn concat_cols(a: &Tensor, b: &Tensor, groups: usize, b_groups: usize) -> Result<Tensor> {
    let (n, la, lb) = check(a, b, groups, b_groups)?;
    let (xa, xb) = (a.as_slice()?, b.as_slice()?);
    let (gw, row) = (la + lb, groups * (la + lb));
    let mut out = mm_core::host_pool::zeroed(n * row);
    super::for_each_row(&mut out, row, |r, o| {
        for (g, o) in o.chunks_exact_mut(gw).enumerate() {
            let gb = if b_groups == 1 { 0 } else { g };
            o[..la].copy_from_slice(&xa[(r * groups + g) * la..][..la]);
            o[la..].copy_from_slice(&xb[(r * b_groups + gb) * lb..][..lb]);
        }
    });
    Tensor::from_vec(vec![n, row], out)
}

/// Scalar reference over `a[n, groups*la]` and `b[n, b_groups*lb]`.
pub fn concat_cols_ref(a: &[f32], b: &[f32], n: usize, groups: usize, b_groups: usize) -> Vec<f32> {
    let la = a.len() / (n * groups).max(1);
    let lb = b.len() / (n * b_groups).max(1);
    let mut out = Vec::with_capacity(n * groups * (la + lb));
    for r in 0..n {
        for g in 0..groups {
            out.extend_from_slice(&a[(r * groups + g) * la..][..la]);
            let gb = if b_groups == 1 { 0 } else { g };
            out.extend_from_slice(&b[(r * b_groups + gb) * lb..][..lb]);
        }
    }
    out
}
