//! Checks of the column ops that take heads apart and put them back
//! together on the device ([`check_slice_cols`], [`check_concat_cols`]).
//! Both are copies: every backend must give exactly the reference's values
//! (the tolerance is not used).

use mm_backend_cpu::ops::{concat_cols, slice_cols};
use mm_core::{Backend, Error, Result, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{randv, up, Tolerance};

/// `out` has `shape` and exactly the values of `want`.
fn exact(name: &str, out: &Tensor, shape: [usize; 2], want: &[f32]) -> Result<()> {
    if out.shape() != shape {
        return Err(Error::Other(format!(
            "{name}: shape {:?}, expected {shape:?}",
            out.shape()
        )));
    }
    let got = out.to_vec()?;
    match got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        Some(i) => Err(Error::Other(format!(
            "{name}: value {i} is {}, expected {} (a copy must be exact)",
            got[i], want[i]
        ))),
        None => Ok(()),
    }
}

/// `slice_cols` over the windows multi-head latent attention and partial
/// RoPE take (a head's first part, its rotated part with and without
/// interleaved pairs, one group), windows padded past a group's end, one
/// starting at the end (all padding), groups of no columns, and enough
/// rows to split across threads; bad windows are errors.
pub fn check_slice_cols(b: &dyn Backend, seed: u64, _tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for (n, groups, gw, offset, len, pairs) in [
        (1, 4, 24, 0, 16, false),
        (3, 4, 24, 16, 8, true),
        (5, 1, 40, 32, 8, false),
        (2, 3, 20, 4, 26, false),
        (7, 2, 10, 10, 4, true),
        (33, 5, 13, 3, 6, true),
        (4, 2, 0, 0, 3, false),
        (300, 8, 40, 8, 24, true),
    ] {
        let x = randv(&mut rng, n * groups * gw);
        let out = b.slice_cols(
            &up(b, vec![n, groups * gw], x.clone())?,
            groups,
            offset,
            len,
            pairs,
        )?;
        let want = slice_cols::slice_cols_ref(&x, n, groups, offset, len, pairs);
        let name = format!("slice_cols {n}×{groups}×{gw} [{offset}; {len}] pairs {pairs}");
        exact(&name, &out, [n, groups * len], &want)?;
    }
    let x = up(b, vec![2, 12], randv(&mut rng, 24))?;
    for (groups, offset, len, pairs) in [
        (0, 0, 2, false),
        (5, 0, 2, false),
        (3, 5, 1, false),
        (2, 0, 3, true),
    ] {
        if b.slice_cols(&x, groups, offset, len, pairs).is_ok() {
            return Err(Error::Other(format!(
                "slice_cols of x [2, 12] in {groups} groups, [{offset}; {len}] pairs {pairs} must fail"
            )));
        }
    }
    Ok(())
}

/// `concat_cols` with a part of `b` per group and one shared part (the
/// cache row `[c | k_pe]`, the absorbed query `[q_lat | q_pe]` per head,
/// expanded keys `[k_nope | k_pe]`), empty parts on either side, and
/// enough rows to split across threads; mismatched inputs are errors.
pub fn check_concat_cols(b: &dyn Backend, seed: u64, _tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for (n, groups, b_groups, la, lb) in [
        (1, 1, 1, 32, 8),
        (3, 4, 4, 32, 8),
        (5, 4, 1, 16, 8),
        (9, 3, 3, 0, 5),
        (4, 3, 1, 0, 5),
        (6, 2, 2, 7, 0),
        (17, 5, 1, 3, 11),
        (300, 8, 8, 32, 16),
    ] {
        let a = randv(&mut rng, n * groups * la);
        let bv = randv(&mut rng, n * b_groups * lb);
        let out = b.concat_cols(
            &up(b, vec![n, groups * la], a.clone())?,
            &up(b, vec![n, b_groups * lb], bv.clone())?,
            groups,
            b_groups,
        )?;
        let want = concat_cols::concat_cols_ref(&a, &bv, n, groups, b_groups);
        let name = format!("concat_cols {n}×{groups}×{la} | {b_groups}×{lb}");
        exact(&name, &out, [n, groups * (la + lb)], &want)?;
    }
    let a = up(b, vec![2, 12], randv(&mut rng, 24))?;
    for (rows, width, groups, b_groups) in [(3, 4, 4, 1), (2, 4, 4, 2), (2, 5, 4, 4), (2, 4, 0, 1)]
    {
        let bt = up(b, vec![rows, width], randv(&mut rng, rows * width))?;
        if b.concat_cols(&a, &bt, groups, b_groups).is_ok() {
            return Err(Error::Other(format!(
                "concat_cols of a [2, 12] and b [{rows}, {width}] in {groups} and {b_groups} groups must fail"
            )));
        }
    }
    Ok(())
}
