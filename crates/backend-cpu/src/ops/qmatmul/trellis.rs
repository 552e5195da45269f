//! `y[n, m] = x[n, k] · w[m, k]ᵀ` for the trellis formats (docs/FORMAT.md
//! §4.8, `mm_quant::trellis`), straight from the stored tiles.
//!
//! `W = diag(sv)·H·C·H·diag(su)`, so `y = sv ⊙ H(C · H(su ⊙ x))`: each
//! activation row is signed and Hadamard-transformed once (f32), multiplied
//! by the code matrix `C`, and the result transformed back and scaled.
//! Prompt rows multiply `C` through the dense f32 panel tiles
//! ([`matmul_trellis_panels`]: codes decoded into panels once per task);
//! decode rows ([`matmul_trellis`]) run band by band (16 weight rows, tasks of the CPU
//! pool): each 16×16 tile is decoded once into 256 f32 codes — window of
//! 16 stream bits, one multiply, a byte sum — and fed to every activation
//! row; each row keeps 256 running products per band (one per tile
//! position) and sums each weight row's 16 at the end of the band in a
//! fixed order, so a row's result does not depend on the batch.
//!
//! Decode: AVX2 (8 codes per step: one 64-bit load holds their windows,
//! cut by 64-bit variable shifts and gathered into eight dwords, then
//! `vpmulld` and byte sums by `vpmaddubsw` + `vpmaddwd`; `vpgatherdd` was
//! slower on AMD), or the portable loop ([`mm_quant::trellis::decode_tile`]
//! semantics), chosen at run time; both give the same integers.

use mm_core::weight::MmKind;
use mm_core::{Error, Result, WeightData, WeightFormat};
use mm_quant::trellis::{codebook, hadamard::fwht, split_scales, tile_bytes, TILE, TILE_LEN};

use crate::pool;

/// Whether this kernel runs `w`: a 2-D trellis weight.
pub fn supports(w: &WeightData) -> bool {
    matches!(w.format, WeightFormat::Mm(f) if f.kind.is_trellis()) && w.shape.len() == 2
}

/// Bytes past a tile's end that a window read may touch (copied from its
/// start: the stream is circular).
const PAD: usize = 4;

/// A trellis weight's parts, checked.
struct Parts<'a> {
    k: u32,
    rows: usize,
    cols: usize,
    codes: &'a [u8],
    sv: Vec<f32>,
    su: Vec<f32>,
}

fn parts<'a>(w: &'a WeightData, x: &[f32], n: usize) -> Result<Parts<'a>> {
    let WeightFormat::Mm(f) = w.format else {
        return Err(Error::Invalid(format!(
            "{} is not a trellis format",
            w.format.name()
        )));
    };
    let MmKind::Trellis(k) = f.kind else {
        return Err(Error::Invalid(format!(
            "{} is not a trellis format",
            f.name()
        )));
    };
    let (rows, cols) = w.dims2()?;
    let sizes = f.part_sizes(rows, cols)?;
    if w.bytes.len() != sizes.codes || x.len() != n * cols {
        return Err(Error::Invalid(format!(
            "{} [{rows}, {cols}]: {} code bytes (need {}), {} activations for {n} rows",
            f.name(),
            w.bytes.len(),
            sizes.codes,
            x.len()
        )));
    }
    let (sv, su) = split_scales(w.scales.as_deref().unwrap_or(&[]), rows, cols)?;
    Ok(Parts {
        k: k as u32,
        rows,
        cols,
        codes: &w.bytes,
        sv,
        su,
    })
}

/// `H(su ⊙ x)` per row.
fn transform_in(p: &Parts<'_>, x: &[f32]) -> Vec<f32> {
    let mut xr = mm_core::host_pool::copied(x);
    for row in xr.chunks_exact_mut(p.cols) {
        row.iter_mut().zip(&p.su).for_each(|(v, s)| *v *= s);
        fwht(row);
    }
    xr
}

/// `sv ⊙ H(y')` per row, in place.
fn transform_out(p: &Parts<'_>, y: &mut [f32]) {
    for yrow in y.chunks_exact_mut(p.rows) {
        fwht(yrow);
        yrow.iter_mut().zip(&p.sv).for_each(|(v, s)| *v *= s);
    }
}

/// Copies tile `(b, tc)` with its wrapped bytes into `tile` and decodes it.
#[inline]
fn tile_codes(
    p: &Parts<'_>,
    avx2: bool,
    b: usize,
    tc: usize,
    tile: &mut [u8; 128 + PAD],
    c: &mut [f32; TILE_LEN],
) {
    let tb = tile_bytes(p.k);
    let src = &p.codes[(b * (p.cols / TILE) + tc) * tb..][..tb];
    tile[..tb].copy_from_slice(src);
    tile[tb..tb + PAD].copy_from_slice(&src[..PAD]);
    decode(avx2, &tile[..tb + PAD], p.k, c);
}

/// `x[n, cols] · wᵀ` → `[n, rows]`: the tile kernel (decode rows).
pub fn matmul_trellis(w: &WeightData, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let p = parts(w, x, n)?;
    let (rows, cols) = (p.rows, p.cols);
    let xr = transform_in(&p, x);
    let avx2 = has_avx2();
    // Band-major results: band b holds [n][16].
    let mut yb = mm_core::host_pool::zeroed(rows * n);
    pool::for_each_chunk_mut(&mut yb, n * TILE, |b, out| {
        // One row (a decode step): the running products on the stack.
        let mut one = [0f32; TILE_LEN];
        let mut many = Vec::new();
        let acc: &mut [f32] = if n == 1 {
            &mut one
        } else {
            many = mm_core::host_pool::zeroed(n * TILE_LEN);
            &mut many
        };
        let mut tile = [0u8; 128 + PAD];
        let mut c = [0f32; TILE_LEN];
        for tc in 0..cols / TILE {
            tile_codes(&p, avx2, b, tc, &mut tile, &mut c);
            for (a, xrow) in acc.chunks_exact_mut(TILE_LEN).zip(xr.chunks_exact(cols)) {
                fma_tile(avx2, a, &c, &xrow[tc * TILE..(tc + 1) * TILE]);
            }
        }
        for (o, a) in out.chunks_exact_mut(TILE).zip(acc.chunks_exact(TILE_LEN)) {
            for (r, v) in o.iter_mut().enumerate() {
                *v = a[r * TILE..(r + 1) * TILE].iter().sum();
            }
        }
        mm_core::host_pool::recycle(many);
    });
    mm_core::host_pool::recycle(xr);
    let mut y = mm_core::host_pool::zeroed(n * rows);
    for (i, yrow) in y.chunks_exact_mut(rows).enumerate() {
        for b in 0..rows / TILE {
            yrow[b * TILE..(b + 1) * TILE].copy_from_slice(&yb[(b * n + i) * TILE..][..TILE]);
        }
    }
    mm_core::host_pool::recycle(yb);
    transform_out(&p, &mut y);
    Ok(y)
}

/// `x[n, cols] · wᵀ` → `[n, rows]` for prompt rows: the code matrix's rows
/// decoded into panels for the dense f32 tiles (`dense::matmul_panels_with`),
/// so each tile is decoded once per task, not once per activation row.
pub fn matmul_trellis_panels(w: &WeightData, x: &[f32], n: usize) -> Result<Vec<f32>> {
    use crate::ops::matmul::dense::{matmul_panels_with, Simd};
    let p = parts(w, x, n)?;
    let cols = p.cols;
    let xr = transform_in(&p, x);
    let avx2 = has_avx2();
    let mut y = matmul_panels_with(Simd::detect(), &xr, n, cols, p.rows, |j0, j1, panel| {
        let mut tile = [0u8; 128 + PAD];
        let mut c = [0f32; TILE_LEN];
        for b in j0 / TILE..j1.div_ceil(TILE) {
            for tc in 0..cols / TILE {
                tile_codes(&p, avx2, b, tc, &mut tile, &mut c);
                for r in (b * TILE).max(j0)..(b * TILE + TILE).min(j1) {
                    let at = (r - j0) * cols + tc * TILE;
                    panel[at..at + TILE].copy_from_slice(&c[(r - b * TILE) * TILE..][..TILE]);
                }
            }
        }
    })?;
    mm_core::host_pool::recycle(xr);
    transform_out(&p, &mut y);
    Ok(y)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The 256 codes of a tile (`tile` = its bytes then [`PAD`] wrapped bytes).
fn decode(avx2: bool, tile: &[u8], k: u32, out: &mut [f32; TILE_LEN]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 was detected; `tile` holds PAD bytes past every window.
        return unsafe { decode_avx2(tile, k, out) };
    }
    let _ = avx2;
    decode_portable(tile, k, out);
}

/// The portable decoder (the reference semantics, unaligned 32-bit reads).
pub fn decode_portable(tile: &[u8], k: u32, out: &mut [f32; TILE_LEN]) {
    for (i, o) in out.iter_mut().enumerate() {
        let p = i * k as usize;
        let b = p / 8;
        let v = u32::from_le_bytes([tile[b], tile[b + 1], tile[b + 2], tile[b + 3]]);
        *o = codebook::code((v >> (p % 8)) & 0xFFFF) as f32;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn decode_avx2(tile: &[u8], k: u32, out: &mut [f32; TILE_LEN]) {
    use std::arch::x86_64::*;
    assert!(tile.len() >= TILE_LEN * k as usize / 8 + PAD);
    let kk = k as i64;
    // A group of 8 elements spans its first byte's 7k + 16 ≤ 44 bits: one
    // 64-bit load, shifted per element in two sets of four 64-bit lanes,
    // the low dwords gathered into eight lanes.
    let s0 = _mm256_setr_epi64x(0, kk, 2 * kk, 3 * kk);
    let s1 = _mm256_setr_epi64x(4 * kk, 5 * kk, 6 * kk, 7 * kk);
    let order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mask = _mm256_set1_epi32(0xFFFF);
    let mul = _mm256_set1_epi32(codebook::MUL as i32);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let bias = _mm256_set1_epi32(codebook::OFFSET);
    for g in 0..TILE_LEN / 8 {
        let v = (tile.as_ptr().add(g * k as usize) as *const i64).read_unaligned();
        let b = _mm256_set1_epi64x(v);
        let lo = _mm256_srlv_epi64(b, s0);
        let hi = _mm256_slli_epi64(_mm256_srlv_epi64(b, s1), 32);
        // Dwords w0 w4 w1 w5 w2 w6 w3 w7, then in order.
        let w = _mm256_permutevar8x32_epi32(_mm256_blend_epi32(lo, hi, 0b1010_1010), order);
        let x = _mm256_mullo_epi32(_mm256_and_si256(w, mask), mul);
        let sum = _mm256_madd_epi16(_mm256_maddubs_epi16(x, ones8), ones16);
        let c = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, bias));
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * g), c);
    }
}

/// `acc[i] += c[i] · x[i % 16]` over a tile.
#[inline]
fn fma_tile(avx2: bool, acc: &mut [f32], c: &[f32; TILE_LEN], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { fma_tile_avx2(acc, c, x) };
    }
    let _ = avx2;
    fma_tile_body(acc, c, x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_tile_avx2(acc: &mut [f32], c: &[f32; TILE_LEN], x: &[f32]) {
    fma_tile_body(acc, c, x)
}

#[inline(always)]
fn fma_tile_body(acc: &mut [f32], c: &[f32; TILE_LEN], x: &[f32]) {
    let x: &[f32; TILE] = x.try_into().expect("a tile row of activations");
    for (a, cr) in acc.chunks_exact_mut(TILE).zip(c.chunks_exact(TILE)) {
        for ((a, &cv), &xv) in a.iter_mut().zip(cr).zip(x) {
            *a = cv.mul_add(xv, *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_quant::trellis::{decode_tile, quantize::quantize_trellis, BITS};

    #[test]
    fn both_decoders_give_the_reference_codes() {
        for k in BITS {
            let tb = tile_bytes(k);
            let bytes: Vec<u8> = (0..tb)
                .map(|i| (i * 193 + 71) as u8 ^ (i >> 3) as u8)
                .collect();
            let mut want = [0i32; TILE_LEN];
            decode_tile(&bytes, k, &mut want);
            let mut padded = bytes.clone();
            padded.extend_from_slice(&bytes[..PAD]);
            for avx2 in [false, has_avx2()] {
                let mut got = [0f32; TILE_LEN];
                decode(avx2, &padded, k, &mut got);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w as f32, "k {k} avx2 {avx2}: element {i}");
                }
            }
        }
    }

    #[test]
    fn matmul_matches_the_dequantized_reference_and_is_batch_invariant() {
        let (rows, cols) = (48, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 7919) % 1013) as f32 / 1013.0 - 0.5) * 0.1)
            .collect();
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        for k in BITS {
            // A real quantization on x86; elsewhere (the aarch64 tests run
            // under emulation, where the portable search is slow) a random
            // stream, which is as valid a weight.
            let q = if cfg!(target_arch = "x86_64") {
                quantize_trellis(&w, rows, cols, k, 1).unwrap()
            } else {
                let codes: Vec<u8> = (0..rows * cols * k as usize / 8)
                    .map(|i| (i * 193 + 71) as u8 ^ (i >> 5) as u8)
                    .collect();
                let scales: Vec<u8> = (0..rows + cols)
                    .map(|i| match i {
                        i if i < rows => 1e-4 * (1 + i % 3) as f32,
                        i if i % 2 == 0 => 1.0,
                        _ => -1.0,
                    })
                    .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                    .collect();
                let gain = 1.0;
                mm_quant::trellis::quantize::TrellisWeight {
                    k,
                    rows,
                    cols,
                    codes,
                    scales,
                    gain,
                }
            };
            let fmt = mm_core::weight::MmFormat::new(MmKind::Trellis(k as u8), 0).unwrap();
            let wd = WeightData::new_mm(
                fmt,
                vec![rows, cols],
                mm_core::HostBytes::owned(q.codes.clone()),
                mm_core::HostBytes::owned(q.scales.clone()),
                None,
            )
            .unwrap();
            let wr = mm_quant::trellis::dequantize_trellis_ref(k, rows, cols, &q.codes, &q.scales)
                .unwrap();
            let want = crate::ops::matmul::matmul_ref(&x, &wr, None, 3, cols, rows);
            let got = matmul_trellis(&wd, &x, 3).unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * scale, "trellis{k}: {g} vs {w}");
            }
            for i in 0..3 {
                let one = matmul_trellis(&wd, &x[i * cols..(i + 1) * cols], 1).unwrap();
                assert_eq!(
                    one,
                    got[i * rows..(i + 1) * rows],
                    "trellis{k}: row {i} alone differs"
                );
            }
            let panels = matmul_trellis_panels(&wd, &x, 3).unwrap();
            for (g, w) in panels.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * scale,
                    "trellis{k} panels: {g} vs {w}"
                );
            }
            let one = matmul_trellis_panels(&wd, &x[cols..2 * cols], 1).unwrap();
            assert_eq!(
                one,
                panels[rows..2 * rows],
                "trellis{k}: a panel row alone differs"
            );
        }
    }
}
