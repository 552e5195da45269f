//! The trellis formats `trellis2`, `trellis3`, `trellis4` (docs/FORMAT.md §7):
//! a bitshift trellis with 16-bit states, K bits per weight, 16×16 tiles,
//! a computed integer codebook ([`codebook`]) and block Hadamard transforms
//! with sign and scale vectors on both sides ([`hadamard`]).
//!
//! A weight `W[rows, cols]` (both multiples of 16) is stored as
//!
//! `W = diag(sv) · H_rows · C · H_cols · diag(su)`
//!
//! where `C[rows, cols]` holds integer codes decoded from the tiles, `H_d` is
//! the block Hadamard transform of dimension `d`, `sv` (rows) carries each
//! output row's sign and scale and `su` (cols) each input column's sign.
//! `y = W·x` is computed as `sv ⊙ H(C · H(su ⊙ x))`: two fast transforms of
//! vectors and a product with the codes, never the dense `W`.
//!
//! Tiles: band `b` (rows `16b..16b+16`) holds its `cols/16` tiles in column
//! order, each `32·K` bytes = `8·K` little-endian u32 words of one circular
//! bit stream; tile element `i = 16·r + c` (row `r`, column `c` of the tile)
//! decodes from the 16 stream bits starting at bit `i·K` ([`state`]).
//!
//! * [`decode_tile`], [`dequantize_trellis_ref`] (f64, by definition),
//!   [`dequantize_trellis`] (fast, f32): decoders.
//! * [`quantize`](mod@quantize): the quantizer (scales, rotation, Viterbi
//!   search per tile, optionally Hessian-aware).

pub mod codebook;
pub mod hadamard;
pub mod ldlq;
pub mod quantize;
pub mod viterbi;

use mm_core::{Error, Result};

/// Tile side: tiles are 16 × 16 weights.
pub const TILE: usize = 16;
/// Weights per tile.
pub const TILE_LEN: usize = TILE * TILE;
/// Bits per weight the formats support.
pub const BITS: [u32; 3] = [2, 3, 4];

/// Bytes of one tile at `k` bits per weight.
pub const fn tile_bytes(k: u32) -> usize {
    TILE_LEN * k as usize / 8
}

/// Checks a trellis weight's dimensions and bit width.
pub fn check_dims(k: u32, rows: usize, cols: usize) -> Result<()> {
    if !BITS.contains(&k) {
        return Err(Error::Invalid(format!(
            "trellis formats have 2, 3 or 4 bits per weight, not {k}"
        )));
    }
    if rows == 0 || cols == 0 || rows % TILE != 0 || cols % TILE != 0 {
        return Err(Error::Invalid(format!(
            "trellis{k}: a [{rows}, {cols}] weight does not divide into 16x16 tiles (both dimensions must be non-zero multiples of 16)"
        )));
    }
    Ok(())
}

/// The 16-bit state of element `i` of a tile: stream bits `[i·k, i·k + 16)`,
/// wrapping around the tile's `256·k` bits.
#[inline(always)]
pub fn state(tile: &[u8], k: u32, i: usize) -> u32 {
    let nbits = TILE_LEN * k as usize;
    let p = i * k as usize;
    let word = |w: usize| {
        let w = w % (nbits / 32);
        u32::from_le_bytes([
            tile[4 * w],
            tile[4 * w + 1],
            tile[4 * w + 2],
            tile[4 * w + 3],
        ]) as u64
    };
    let v = word(p / 32) | word(p / 32 + 1) << 32;
    ((v >> (p % 32)) & 0xFFFF) as u32
}

/// The 256 integer codes of one tile, in element order (`16·r + c`).
pub fn decode_tile(tile: &[u8], k: u32, out: &mut [i32]) {
    for (i, o) in out[..TILE_LEN].iter_mut().enumerate() {
        *o = codebook::code(state(tile, k, i));
    }
}

/// The scale vectors of a stored weight: `sv` (rows) then `su` (cols), F16.
pub fn split_scales(scales: &[u8], rows: usize, cols: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if scales.len() != 2 * (rows + cols) {
        return Err(Error::Invalid(format!(
            "trellis weight [{rows}, {cols}]: scales need {} bytes (sv then su, F16), found {}",
            2 * (rows + cols),
            scales.len()
        )));
    }
    let f = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    };
    Ok((f(&scales[..2 * rows]), f(&scales[2 * rows..])))
}

fn check_parts(k: u32, rows: usize, cols: usize, codes: &[u8]) -> Result<()> {
    check_dims(k, rows, cols)?;
    let need = rows * cols * k as usize / 8;
    if codes.len() != need {
        return Err(Error::Invalid(format!(
            "trellis{k} weight [{rows}, {cols}]: codes need {need} bytes, found {}",
            codes.len()
        )));
    }
    Ok(())
}

/// The code matrix `C[rows, cols]` (row-major) of a stored weight.
pub fn decode_codes(k: u32, rows: usize, cols: usize, codes: &[u8]) -> Result<Vec<i32>> {
    check_parts(k, rows, cols, codes)?;
    let tb = tile_bytes(k);
    let mut c = vec![0i32; rows * cols];
    let mut t = [0i32; TILE_LEN];
    for (n, tile) in codes.chunks_exact(tb).enumerate() {
        let (band, tc) = (n / (cols / TILE), n % (cols / TILE));
        decode_tile(tile, k, &mut t);
        for r in 0..TILE {
            let dst = (band * TILE + r) * cols + tc * TILE;
            c[dst..dst + TILE].copy_from_slice(&t[r * TILE..(r + 1) * TILE]);
        }
    }
    Ok(c)
}

/// The scalar reference decoder: `W = diag(sv)·H·C·H·diag(su)` evaluated
/// from the definition in f64 (O(rows·cols·128)), rounded to f32 once.
pub fn dequantize_trellis_ref(
    k: u32,
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[u8],
) -> Result<Vec<f32>> {
    let c = decode_codes(k, rows, cols, codes)?;
    let (sv, su) = split_scales(scales, rows, cols)?;
    // C·H_cols, row by row.
    let mut m: Vec<f64> = Vec::with_capacity(rows * cols);
    for row in c.chunks_exact(cols) {
        m.extend(hadamard::hadamard_ref(
            &row.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        ));
    }
    // H_rows·(C·H_cols), column by column, then the scales.
    let mut w = vec![0f32; rows * cols];
    let mut col = vec![0f64; rows];
    for j in 0..cols {
        for (i, v) in col.iter_mut().enumerate() {
            *v = m[i * cols + j];
        }
        for (i, v) in hadamard::hadamard_ref(&col).into_iter().enumerate() {
            w[i * cols + j] = (sv[i] as f64 * v * su[j] as f64) as f32;
        }
    }
    Ok(w)
}

/// The dense f32 weight, by fast transforms (equal to the reference within
/// f32 rounding).
pub fn dequantize_trellis(
    k: u32,
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[u8],
) -> Result<Vec<f32>> {
    let c = decode_codes(k, rows, cols, codes)?;
    let (sv, su) = split_scales(scales, rows, cols)?;
    let mut w: Vec<f32> = c.iter().map(|&v| v as f32).collect();
    for row in w.chunks_exact_mut(cols) {
        hadamard::fwht(row);
    }
    let mut out = vec![0f32; rows * cols];
    hadamard::fwht_cols(&w, rows, cols, |i, j, v| {
        out[i * cols + j] = sv[i] * v * su[j]
    });
    Ok(out)
}

/// Rows `range` of the dense weight into `out` (`range.len() × cols`):
/// only the Hadamard blocks of rows that hold them are decoded (an
/// embedding lookup decodes at most 128 rows per id).
pub fn dequantize_trellis_rows(
    k: u32,
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[u8],
    range: std::ops::Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    check_parts(k, rows, cols, codes)?;
    let (sv, su) = split_scales(scales, rows, cols)?;
    if range.end > rows || range.start > range.end || out.len() != range.len() * cols {
        return Err(Error::Invalid(format!(
            "trellis{k} [{rows}, {cols}]: rows {range:?} into {} values",
            out.len()
        )));
    }
    let hb = hadamard::block_size(rows);
    let (tb, tcols) = (tile_bytes(k), cols / TILE);
    let mut blk = vec![0f32; hb * cols];
    let mut col = vec![0f32; hb];
    let mut t = [0i32; TILE_LEN];
    let mut b0 = range.start / hb * hb;
    while b0 < range.end {
        // Codes of rows b0..b0+hb, each row through H_cols.
        for band in b0 / TILE..(b0 + hb) / TILE {
            for tc in 0..tcols {
                decode_tile(&codes[(band * tcols + tc) * tb..][..tb], k, &mut t);
                for r in 0..TILE {
                    let dst = &mut blk[(band * TILE + r - b0) * cols + tc * TILE..][..TILE];
                    dst.iter_mut()
                        .zip(&t[r * TILE..])
                        .for_each(|(d, &c)| *d = c as f32);
                }
            }
        }
        for row in blk.chunks_exact_mut(cols) {
            hadamard::fwht(row);
        }
        // H_rows over the block, column by column; keep the asked rows.
        for j in 0..cols {
            for (i, c) in col.iter_mut().enumerate() {
                *c = blk[i * cols + j];
            }
            hadamard::fwht(&mut col);
            for (i, &v) in col.iter().enumerate() {
                let r = b0 + i;
                if range.contains(&r) {
                    out[(r - range.start) * cols + j] = sv[r] * v * su[j];
                }
            }
        }
        b0 += hb;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
