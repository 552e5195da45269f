//! Hessian-aware trellis quantization: QTIP's BlockLDLQ.
//!
//! The proxy loss is GPTQ's, `tr(ΔW·H·ΔWᵀ)` with `H` the inputs' Hessian.
//! In the rotated basis the weight is `T = H_rows·diag(1/sv)·W·diag(su)·H_cols`
//! and its Hessian `H' = H_cols·diag(su)·H·diag(su)·H_cols` (the row scales
//! are treated as equal, as QTIP does; `H_rows` is orthogonal). Columns of
//! `T` are quantized 16 at a time — a column of tiles, every band in
//! parallel, each tile by the Viterbi search — and the block's error `δ`
//! is fed forward to the columns after it as `δ · U_BB⁻¹ · U_BR`, where
//! `U` is the upper Cholesky factor of `H'⁻¹` (`H'⁻¹ = Uᵀ·U`): the exact
//! compensation of the block's error by the remaining columns, which is
//! what BlockLDLQ's block-LDL factor computes (GPTQ is the case of blocks of
//! one column). With `H = c·I` there is no feedback and the result equals
//! [`quantize_trellis`](super::quantize::quantize_trellis).

use rayon::prelude::*;

use super::codebook;
use super::hadamard::fwht_f64;
use super::quantize::{
    check_input, encode_into, f16_round, rotate, scale_bytes, search_gain, signs_and_scales,
    tile_targets, TrellisWeight,
};
use super::viterbi::{Codebook, Workspace};
use super::{state, tile_bytes, TILE, TILE_LEN};
use crate::gptq::cholesky::inverse_cholesky_upper;
use crate::gptq::quantize::drop_dead_columns;
use crate::gptq::Hessian;
use mm_core::{Error, Result};

/// Dampening retries (×10 each) before a Hessian is rejected, as GPTQ.
const DAMP_RETRIES: u32 = 3;

/// Quantizes `w[rows, cols]` at `k` bits against the Hessian `h` of its
/// inputs (`cols × cols`); `damp_percent` as GPTQ's (0.01).
pub fn quantize_trellis_ldlq(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    k: u32,
    damp_percent: f64,
    seed: u64,
) -> Result<TrellisWeight> {
    check_input(w, rows, cols, k)?;
    let bad = |e: String| Error::Invalid(format!("trellis{k} LDLQ: {e}"));
    if h.cols() != cols {
        return Err(bad(format!(
            "the Hessian is {0}x{0}, the weight has {cols} columns",
            h.cols()
        )));
    }
    if !(damp_percent >= 0.0 && damp_percent.is_finite()) {
        return Err(bad(format!(
            "damp_percent must be finite and non-negative, not {damp_percent}"
        )));
    }
    // Dead columns (never activated): H_ii = 1, weights 0, as GPTQ.
    let (hm, w, _) = drop_dead_columns(h, w, cols).map_err(bad)?;
    let (sv1, su) = signs_and_scales(&w, rows, cols, seed);
    let hr = rotate_hessian(&hm, cols, &su);
    let u = damped_factor(&hr, cols, damp_percent).map_err(bad)?;

    let cb = Codebook::new();
    let gain = search_gain(&rotate(&w, rows, cols, &sv1, &su), rows, cols, k, &cb);
    let sv: Vec<f32> = sv1.iter().map(|&s| f16_round(s / gain)).collect();
    let mut t = rotate(&w, rows, cols, &sv, &su);

    let (bands, tcols, tb) = (rows / TILE, cols / TILE, tile_bytes(k));
    let mut codes = vec![0u8; rows * cols * k as usize / 8];
    let mut tiles = vec![0u8; bands * tb];
    let mut delta = vec![0f32; rows * TILE];
    for tc in 0..tcols {
        // Every band's tile of this column block, in parallel.
        tiles
            .par_chunks_mut(tb)
            .zip(delta.par_chunks_mut(TILE * TILE))
            .enumerate()
            .for_each_init(
                || {
                    (
                        Workspace::new(k, &cb),
                        vec![0f32; TILE_LEN],
                        vec![0u32; 8 * k as usize],
                    )
                },
                |(ws, tt, words), (band, (out, d))| {
                    tile_targets(&t, cols, band, tc, 1.0, tt);
                    encode_into(tt, &cb, ws, words, out);
                    for (i, d) in d.iter_mut().enumerate() {
                        *d = tt[i] - codebook::code(state(out, k, i)) as f32;
                    }
                },
            );
        for (band, tile) in tiles.chunks_exact(tb).enumerate() {
            let at = (band * tcols + tc) * tb;
            codes[at..at + tb].copy_from_slice(tile);
        }
        let c0 = (tc + 1) * TILE;
        if c0 < cols {
            let m = feedback(&u, cols, tc * TILE);
            // T[:, c0..] -= δ · M, rows in parallel; δ row r = delta[band][16·(r%16)..].
            t.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
                let d = &delta[(r / TILE) * TILE_LEN + (r % TILE) * TILE..][..TILE];
                for (i, &di) in d.iter().enumerate() {
                    if di != 0.0 {
                        let mi = &m[i * (cols - c0)..(i + 1) * (cols - c0)];
                        row[c0..]
                            .iter_mut()
                            .zip(mi)
                            .for_each(|(v, &mv)| *v -= di * mv);
                    }
                }
            });
        }
    }
    Ok(TrellisWeight {
        k,
        rows,
        cols,
        codes,
        scales: scale_bytes(&sv, &su),
        gain,
    })
}

/// `H' = H_cols·diag(su)·H·diag(su)·H_cols` (f64).
fn rotate_hessian(h: &[f64], n: usize, su: &[f32]) -> Vec<f64> {
    let mut r: Vec<f64> = h.to_vec();
    r.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        row.iter_mut()
            .zip(su)
            .for_each(|(v, &s)| *v *= s as f64 * su[i] as f64);
        fwht_f64(row);
    });
    // Columns: H is symmetric, so transform rows of the transpose.
    let mut t = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = r[i * n + j];
        }
    }
    t.par_chunks_mut(n).for_each(fwht_f64);
    t
}

/// `U` of the dampened `H'` (`H'⁻¹ = Uᵀ·U`), retrying larger dampening.
fn damped_factor(h: &[f64], n: usize, damp_percent: f64) -> std::result::Result<Vec<f64>, String> {
    let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let mut damp = damp_percent;
    for attempt in 0..=DAMP_RETRIES {
        let mut hd = h.to_vec();
        (0..n).for_each(|i| hd[i * n + i] += damp * mean);
        match inverse_cholesky_upper(&hd, n) {
            Ok(u) => return Ok(u),
            Err(e) if attempt == DAMP_RETRIES => {
                return Err(format!(
                    "the rotated Hessian is not positive definite even dampened by {damp}: {e}"
                ))
            }
            Err(_) => damp = (damp * 10.0).max(1e-4),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// `M = U_BB⁻¹ · U_BR` (16 × (n − c0 − 16), f32) for the block at column `c0`:
/// back-substitution through the upper-triangular 16×16 `U_BB`.
fn feedback(u: &[f64], n: usize, c0: usize) -> Vec<f32> {
    let r0 = c0 + TILE;
    let w = n - r0;
    let mut m = vec![0f64; TILE * w];
    for i in (0..TILE).rev() {
        let ui = &u[(c0 + i) * n..(c0 + i + 1) * n];
        for j in 0..w {
            let mut s = ui[r0 + j];
            for l in i + 1..TILE {
                s -= ui[c0 + l] * m[l * w + j];
            }
            m[i * w + j] = s / ui[c0 + i];
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}
