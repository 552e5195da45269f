//! The trellis quantizer: signs and scales, the rotation, and a Viterbi
//! search per 16×16 tile (tiles in parallel, one workspace per thread).
//!
//! For `W[rows, cols]`: random signs `su` (columns) and `g` (rows), seeded;
//! `sv[n] = g[n] · rms(W[n]) / (CODE_STD · gain)` rounded to F16; targets
//! `T = H · diag(1/sv) · W · diag(su) · H` (unit-variance rows times
//! `CODE_STD · gain`); each tile of `T` is encoded by [`encode_tile`]. The
//! `gain` (< 1: a quantizer's reconstructions shrink towards the mean) is
//! searched per weight on a sample of tiles.

use rayon::prelude::*;

use super::codebook::CODE_STD;
use super::hadamard::{self, fwht};
use super::viterbi::{encode_tile, Codebook, Workspace};
use super::{check_dims, tile_bytes, TILE, TILE_LEN};
use mm_core::{Error, Result};

/// Gains tried per weight (the best measured on Gaussian data are 0.85–0.95).
pub const GAINS: [f32; 5] = [0.85, 0.9, 0.95, 1.0, 1.05];

/// Tiles sampled for the gain search.
const GAIN_SAMPLE: usize = 12;

/// A quantized trellis weight: its two stored parts.
#[derive(Clone, Debug)]
pub struct TrellisWeight {
    pub k: u32,
    pub rows: usize,
    pub cols: usize,
    /// Tiles, band by band (docs/FORMAT.md §7.2).
    pub codes: Vec<u8>,
    /// `sv` (rows) then `su` (cols), F16 little-endian.
    pub scales: Vec<u8>,
    /// The gain chosen.
    pub gain: f32,
}

impl TrellisWeight {
    /// The weight as the stored parts of format `fmt` (its trellis kind).
    pub fn into_quantized(self, fmt: mm_core::weight::MmFormat) -> crate::mm::QuantizedTensor {
        crate::mm::QuantizedTensor {
            format: fmt,
            rows: self.rows,
            cols: self.cols,
            qweight: self.codes,
            scales: self.scales,
            zeros: None,
        }
    }
}

/// splitmix64: a seeded stream for the sign vectors.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` random signs from `seed`.
pub fn signs(seed: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            if mix(seed ^ mix(i)) & 1 == 0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

pub(crate) fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Unit-gain row scales (`g[n] · rms(W[n]) / CODE_STD`) and column signs.
pub(crate) fn signs_and_scales(
    w: &[f32],
    rows: usize,
    cols: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let su = signs(seed, cols);
    let g = signs(mix(seed ^ 0x5256), rows);
    let sv = w
        .chunks_exact(cols)
        .zip(&g)
        .map(|(row, &g)| {
            let rms = (row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64).sqrt();
            g * rms as f32 / CODE_STD
        })
        .collect();
    (sv, su)
}

/// The targets `H · diag(1/sv) · W · diag(su) · H` (rows with `sv = 0` give 0).
pub(crate) fn rotate(w: &[f32], rows: usize, cols: usize, sv: &[f32], su: &[f32]) -> Vec<f32> {
    let mut t = w.to_vec();
    for (n, row) in t.chunks_exact_mut(cols).enumerate() {
        let inv = if sv[n] == 0.0 { 0.0 } else { 1.0 / sv[n] };
        row.iter_mut().zip(su).for_each(|(v, s)| *v *= s * inv);
        fwht(row);
    }
    let mut out = vec![0f32; rows * cols];
    hadamard::fwht_cols(&t, rows, cols, |i, j, v| out[i * cols + j] = v);
    out
}

/// The 256 targets of tile (band, tc), element order `16·r + c`, times `scale`.
pub(crate) fn tile_targets(
    t: &[f32],
    cols: usize,
    band: usize,
    tc: usize,
    scale: f32,
    out: &mut [f32],
) {
    for r in 0..TILE {
        let src = &t[(band * TILE + r) * cols + tc * TILE..][..TILE];
        for (o, &v) in out[r * TILE..(r + 1) * TILE].iter_mut().zip(src) {
            *o = v * scale;
        }
    }
}

/// Encodes one tile's targets into its stored bytes `out` (`words`: scratch).
pub(crate) fn encode_into(
    tt: &[f32],
    cb: &Codebook,
    ws: &mut Workspace,
    words: &mut [u32],
    out: &mut [u8],
) {
    encode_tile(tt, cb, ws, words);
    for (o, w) in out.chunks_exact_mut(4).zip(words.iter()) {
        o.copy_from_slice(&w.to_le_bytes());
    }
}

/// The stored scales part: `sv` then `su`, F16.
pub(crate) fn scale_bytes(sv: &[f32], su: &[f32]) -> Vec<u8> {
    sv.iter()
        .chain(su)
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Checks a weight's dimensions and values.
pub(crate) fn check_input(w: &[f32], rows: usize, cols: usize, k: u32) -> Result<()> {
    check_dims(k, rows, cols)?;
    if w.len() != rows * cols {
        return Err(Error::Invalid(format!(
            "trellis{k}: {} values for a [{rows}, {cols}] weight",
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "trellis{k}: element {i} ({}, {}) is {}",
            i / cols,
            i % cols,
            w[i]
        )));
    }
    Ok(())
}

/// Quantizes `w[rows, cols]` (row-major) at `k` bits per weight with plain
/// squared error in the rotated basis (no Hessian).
pub fn quantize_trellis(
    w: &[f32],
    rows: usize,
    cols: usize,
    k: u32,
    seed: u64,
) -> Result<TrellisWeight> {
    check_input(w, rows, cols, k)?;
    let (sv1, su) = signs_and_scales(w, rows, cols, seed);
    let cb = Codebook::new();
    let gain = search_gain(&rotate(w, rows, cols, &sv1, &su), rows, cols, k, &cb);
    // The stored (F16) sv for the chosen gain; the targets follow it exactly.
    let sv: Vec<f32> = sv1.iter().map(|&s| f16_round(s / gain)).collect();
    let t = rotate(w, rows, cols, &sv, &su);
    let tb = tile_bytes(k);
    let tiles_per_band = cols / TILE;
    let mut codes = vec![0u8; rows * cols * k as usize / 8];
    codes.par_chunks_mut(tb).enumerate().for_each_init(
        || {
            (
                Workspace::new(k, &cb),
                vec![0f32; TILE_LEN],
                vec![0u32; 8 * k as usize],
            )
        },
        |(ws, tt, words), (n, out)| {
            tile_targets(&t, cols, n / tiles_per_band, n % tiles_per_band, 1.0, tt);
            encode_into(tt, &cb, ws, words, out);
        },
    );
    Ok(TrellisWeight {
        k,
        rows,
        cols,
        codes,
        scales: scale_bytes(&sv, &su),
        gain,
    })
}

/// The gain of [`GAINS`] with the least error (in weight units) over a
/// sample of tiles spread over the weight.
pub(crate) fn search_gain(t: &[f32], rows: usize, cols: usize, k: u32, cb: &Codebook) -> f32 {
    let tiles = rows / TILE * (cols / TILE);
    let step = (tiles / GAIN_SAMPLE).max(1);
    let sample: Vec<usize> = (0..tiles).step_by(step).take(GAIN_SAMPLE).collect();
    let errs: Vec<f64> = GAINS
        .par_iter()
        .map_init(
            || {
                (
                    Workspace::new(k, cb),
                    vec![0f32; TILE_LEN],
                    vec![0u32; 8 * k as usize],
                )
            },
            |(ws, tt, words), &g| {
                sample
                    .iter()
                    .map(|&n| {
                        tile_targets(t, cols, n / (cols / TILE), n % (cols / TILE), g, tt);
                        encode_tile(tt, cb, ws, words) as f64 / (g as f64 * g as f64)
                    })
                    .sum::<f64>()
            },
        )
        .collect();
    let best = errs
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    GAINS[best]
}
