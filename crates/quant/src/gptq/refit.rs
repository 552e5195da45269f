//! Scale refit after GPTQ: with every code fixed, each row's group scales
//! are re-solved to minimize the row's output error `(w − ŵ)ᵀ·H·(w − ŵ)`.
//!
//! Why: GPTQ picks codes against scales fixed before (static groups) or as
//! it enters a group, from the weights alone. Once the codes are known, the
//! row's quantized value is linear in its `G` group scales,
//! `ŵ = Σ_g s_g·c_g` (`c_g` the group's unscaled code values, zero-points
//! kept), so the best scales for those codes are one `G × G` least-squares
//! solve per row: `A·s = b` with `A = CᵀHC`, `b = CᵀHw`.
//!
//! Strategy: per row (rows in parallel), `T = H·C` and `H·w` in one pass
//! over `H` (`2·cols²` multiply-adds), `A` and `b` from them, a Cholesky
//! solve, the scales rounded to F16 as stored; the new scales replace the
//! old only if the rounded ones lower the row's error. Groups whose codes
//! are all zero keep their scale. MXFP4 (power-of-two scales) is left as is.

use half::f16;
use rayon::prelude::*;

use super::cholesky::{cholesky_lower, dot};
use crate::mm::{decode, GroupQuantizer, MmFormat, MmKind};

/// Refits the scales `params` (`rows × groups`) of the codes `codes`
/// (`rows × cols`, natural order) of the weight `w` against the Hessian `h`
/// (`cols × cols`, natural order), solved with `damp` added to its
/// diagonal and accepted, row by row, only where the undamped error falls.
pub(crate) fn refit_scales(
    w: &[f32],
    codes: &[u8],
    params: &mut [GroupQuantizer],
    h: &[f64],
    damp: f64,
    fmt: MmFormat,
    cols: usize,
) {
    if fmt.kind == MmKind::Mxfp4 {
        return;
    }
    let (gl, groups) = (fmt.group_len(cols), fmt.groups_per_row(cols));
    params
        .par_chunks_mut(groups)
        .zip(w.par_chunks(cols).zip(codes.par_chunks(cols)))
        .for_each(|(p, (w, c))| refit_row(w, c, p, h, damp, fmt.kind, gl));
}

fn refit_row(
    w: &[f32],
    codes: &[u8],
    p: &mut [GroupQuantizer],
    h: &[f64],
    damp: f64,
    kind: MmKind,
    gl: usize,
) {
    let (cols, groups) = (w.len(), p.len());
    let c: Vec<f64> = (0..cols)
        .map(|j| decode(kind, codes[j], p[j / gl].zero()) as f64)
        .collect();
    let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    // T = (H + damp·I)·C (cols × groups) and (H + damp·I)·w.
    let mut t = vec![0f64; cols * groups];
    let mut hw = vec![0f64; cols];
    for j in 0..cols {
        let hr = &h[j * cols..(j + 1) * cols];
        let tr = &mut t[j * groups..(j + 1) * groups];
        for (g, tg) in tr.iter_mut().enumerate() {
            let r = g * gl..(g + 1) * gl;
            *tg = dot(&hr[r.clone()], &c[r]);
        }
        tr[j / gl] += damp * c[j];
        hw[j] = dot(hr, &w64) + damp * w64[j];
    }
    // A = Cᵀ·T, b = Cᵀ·Hw.
    let mut a = vec![0f64; groups * groups];
    let mut b = vec![0f64; groups];
    for j in 0..cols {
        let g = j / gl;
        for (k, v) in a[g * groups..(g + 1) * groups].iter_mut().enumerate() {
            *v += c[j] * t[j * groups + k];
        }
        b[g] += c[j] * hw[j];
    }
    let old: Vec<f64> = p.iter().map(|q| q.scale() as f64).collect();
    // The undamped error (the damping only steadies the solve), up to the
    // constant wᵀHw: sᵀ(A − damp·diag(cᵀc))s − 2(b − damp·cᵀw)ᵀs.
    let (mut cc, mut cw) = (vec![0f64; groups], vec![0f64; groups]);
    for j in 0..cols {
        cc[j / gl] += c[j] * c[j];
        cw[j / gl] += c[j] * w64[j];
    }
    let objective = |s: &[f64]| -> f64 {
        let mut f = 0.0;
        for g in 0..groups {
            let row: f64 = (0..groups).map(|k| a[g * groups + k] * s[k]).sum();
            f += s[g] * (row - damp * cc[g] * s[g]) - 2.0 * (b[g] - damp * cw[g]) * s[g];
        }
        f
    };
    // A group whose codes are all zero has a zero row and column in A and
    // a zero b: pin its scale (`s_g = old_g`) to keep the system definite.
    let (mut sys, mut rhs) = (a.clone(), b.clone());
    for g in (0..groups).filter(|&g| cc[g] == 0.0) {
        sys[g * groups + g] = 1.0;
        rhs[g] = old[g];
    }
    let Some(s) = solve_spd(&sys, &rhs, groups) else {
        return;
    };
    let mut bits = Vec::with_capacity(groups);
    let mut new = Vec::with_capacity(groups);
    for (g, &v) in s.iter().enumerate() {
        if cc[g] == 0.0 {
            bits.push(p[g].scale_bits());
            new.push(old[g]);
            continue;
        }
        let h16 = f16::from_f64(v);
        if !(h16.is_finite() && h16.to_f32() > 0.0) {
            return;
        }
        bits.push(h16.to_bits());
        new.push(h16.to_f64());
    }
    if objective(&new) >= objective(&old) {
        return;
    }
    for (q, &sb) in p.iter_mut().zip(&bits) {
        *q = GroupQuantizer::from_parts(kind, sb, q.zero());
    }
}

/// Solves `A·x = b` for a symmetric positive definite `A` (`n × n`, row
/// major) through its Cholesky factor. `None` if it is not.
fn solve_spd(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let l = cholesky_lower(a, n).ok()?;
    let mut x = b.to_vec();
    for i in 0..n {
        x[i] = (x[i] - dot(&l[i * n..i * n + i], &x[..i])) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let v: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (x[i] - v) / l[i * n + i];
    }
    Some(x)
}
