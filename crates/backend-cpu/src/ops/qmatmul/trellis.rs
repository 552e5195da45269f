//! `y[n, m] = x[n, k] · w[m, k]ᵀ` for the trellis formats (docs/FORMAT.md
//! §4.8, `mm_quant::trellis`), straight from the stored tiles.
//!
//! `W = diag(sv)·H·C·H·diag(su)`, so `y = sv ⊙ H(C · H(su ⊙ x))`: each
//! activation row is signed and Hadamard-transformed once (f32), multiplied
//! by the code matrix `C`, and the result transformed back and scaled. The
//! product with `C` runs band by band (16 weight rows, tasks of the CPU
//! pool): each 16×16 tile is decoded once into 256 f32 codes — window of
//! 16 stream bits, one multiply, a byte sum — and fed to every activation
//! row; each row keeps 256 running products per band (one per tile
//! position) and sums each weight row's 16 at the end of the band in a
//! fixed order, so a row's result does not depend on the batch.
//!
//! Decode: AVX2 (8 codes per step: a gather of the 32-bit words holding
//! each window, variable shifts, `vpmulld`, byte sums by `vpmaddubsw` +
//! `vpmaddwd`), or the portable loop ([`mm_quant::trellis::decode_tile`]
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

/// `x[n, cols] · wᵀ` → `[n, rows]`.
pub fn matmul_trellis(w: &WeightData, x: &[f32], n: usize) -> Result<Vec<f32>> {
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
    let k = k as u32;
    let (rows, cols) = w.dims2()?;
    let sizes = f.part_sizes(rows, cols)?;
    let scales = w.scales.as_deref().unwrap_or(&[]);
    if w.bytes.len() != sizes.codes || x.len() != n * cols {
        return Err(Error::Invalid(format!(
            "{} [{rows}, {cols}]: {} code bytes (need {}), {} activations for {n} rows",
            f.name(),
            w.bytes.len(),
            sizes.codes,
            x.len()
        )));
    }
    let (sv, su) = split_scales(scales, rows, cols)?;
    let mut xr = x.to_vec();
    for row in xr.chunks_exact_mut(cols) {
        row.iter_mut().zip(&su).for_each(|(v, s)| *v *= s);
        fwht(row);
    }
    let (bands, tcols, tb) = (rows / TILE, cols / TILE, tile_bytes(k));
    let avx2 = has_avx2();
    let codes: &[u8] = &w.bytes;
    // Band-major results: band b holds [n][16].
    let mut yb = vec![0f32; rows * n];
    pool::for_each_chunk_mut(&mut yb, n * TILE, |b, out| {
        let mut acc = vec![0f32; n * TILE_LEN];
        let mut tile = [0u8; 128 + PAD];
        let mut c = [0f32; TILE_LEN];
        for tc in 0..tcols {
            let src = &codes[(b * tcols + tc) * tb..][..tb];
            tile[..tb].copy_from_slice(src);
            tile[tb..tb + PAD].copy_from_slice(&src[..PAD]);
            decode(avx2, &tile[..tb + PAD], k, &mut c);
            for (a, xrow) in acc.chunks_exact_mut(TILE_LEN).zip(xr.chunks_exact(cols)) {
                fma_tile(avx2, a, &c, &xrow[tc * TILE..(tc + 1) * TILE]);
            }
        }
        for (o, a) in out.chunks_exact_mut(TILE).zip(acc.chunks_exact(TILE_LEN)) {
            for (r, v) in o.iter_mut().enumerate() {
                *v = a[r * TILE..(r + 1) * TILE].iter().sum();
            }
        }
    });
    let mut y = vec![0f32; n * rows];
    for (i, yrow) in y.chunks_exact_mut(rows).enumerate() {
        for b in 0..bands {
            yrow[b * TILE..(b + 1) * TILE].copy_from_slice(&yb[(b * n + i) * TILE..][..TILE]);
        }
        fwht(yrow);
        yrow.iter_mut().zip(&sv).for_each(|(v, s)| *v *= s);
    }
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
    let kk = k as i32;
    // Element l of a group of 8: byte offset l·k/8, shift l·k % 8 (8·k bits
    // per group, a whole number of bytes).
    let off = _mm256_setr_epi32(
        0,
        kk / 8,
        2 * kk / 8,
        3 * kk / 8,
        4 * kk / 8,
        5 * kk / 8,
        6 * kk / 8,
        7 * kk / 8,
    );
    let sh = _mm256_setr_epi32(
        0,
        kk % 8,
        2 * kk % 8,
        3 * kk % 8,
        4 * kk % 8,
        5 * kk % 8,
        6 * kk % 8,
        7 * kk % 8,
    );
    let mask = _mm256_set1_epi32(0xFFFF);
    let mul = _mm256_set1_epi32(codebook::MUL as i32);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let bias = _mm256_set1_epi32(codebook::OFFSET);
    let base = tile.as_ptr() as *const i32;
    for g in 0..TILE_LEN / 8 {
        let idx = _mm256_add_epi32(off, _mm256_set1_epi32(g as i32 * kk));
        let v = _mm256_i32gather_epi32::<1>(base, idx);
        let s = _mm256_and_si256(_mm256_srlv_epi32(v, sh), mask);
        let x = _mm256_mullo_epi32(s, mul);
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
            let q = quantize_trellis(&w, rows, cols, k, 1).unwrap();
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
        }
    }
}
