//! AVX2 kernels of the 16-bit-activation prefill path (layout and
//! arithmetic in `il16.rs`; scalar twins `il16::tile_ref` and
//! `il16::quantize_row_ref`, matched bit for bit).
//!
//! **Tile** ([`tile`]): up to 6 activation rows × 16 weight rows. Per
//! 32-block and pair of columns, the two 256-bit code vectors (8 rows × 2
//! codes each) are loaded once and each activation row's two i16 values
//! are broadcast as one i32: one `vpmaddwd` + `vpaddd` per (row, half)
//! adds 16 products into 12 i32 accumulators that stay in registers (with
//! the 2 code vectors and the broadcast: 15 of the 16 ymm registers). At
//! the block's end each accumulator is converted and scaled into its f32
//! sum by one FMA with `d · d_x` (plus `m · s` for Q4_1).

use std::arch::x86_64::*;

use super::il::IlPrepared;
use mm_core::WeightFormat;

use super::dense16::WMAX;
use super::il16::{scales, zeros_of, Act16, Panel16, TILE};

/// `il16::quantize_row_ref` with 8 lanes: the same scale, codes (`vcvtps2dq`
/// rounds to nearest even, as `round_ties_even`) and sums.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x` and `q` hold 32 values per block of
/// `d` and `s`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row(
    x: &[f32],
    q: &mut [i16],
    d: &mut [f32],
    s: &mut [f32],
    qmax: f32,
) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let ones = _mm256_set1_epi16(1);
    for (b, (xb, qb)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
        // x·0 is NaN exactly for NaN and ±∞.
        let zero = _mm256_setzero_ps();
        let bad = v.iter().fold(_mm256_setzero_ps(), |a, &x| {
            let z = _mm256_mul_ps(x, zero);
            _mm256_or_ps(a, _mm256_cmp_ps::<_CMP_UNORD_Q>(z, z))
        });
        if _mm256_movemask_ps(bad) != 0 {
            qb.fill(0);
            (d[b], s[b]) = (f32::NAN, f32::NAN);
            continue;
        }
        let m = v.iter().fold(_mm256_setzero_ps(), |a, &x| {
            _mm256_max_ps(a, _mm256_and_ps(x, abs))
        });
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
        let (db, id) = scales(amax, qmax);
        let idv = _mm256_set1_ps(id);
        let c: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], idv)));
        // packs interleaves the 128-bit halves; put them back in order.
        let lo = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(c[0], c[1]));
        let hi = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(c[2], c[3]));
        _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, lo);
        _mm256_storeu_si256(qb.as_mut_ptr().add(16) as *mut __m256i, hi);
        let sum = _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_madd_epi16(hi, ones));
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0x4E>(sum));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32::<0xB1>(sum)));
        d[b] = db;
        s[b] = db * sum as f32;
    }
}

/// `il16::fill_codes_ref` with AVX2: per 32-byte half of an interleaved
/// code vector (8 rows × 4 consecutive codes), nibbles split (and looked
/// up for fp4), one byte shuffle gathers codes 0–1 and 2–3 of each row into
/// the two 128-bit halves, each widened to 16 i16 minus the rows' zeros.
///
/// # Safety
/// The CPU must have AVX2; `codes` holds `2 · p.nb · 256` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn fill_codes(p: &IlPrepared, g: usize, codes: &mut [i16]) {
    let (nb, cb) = (p.nb, p.code_bytes());
    let gc = p.group_codes(g);
    let pairs = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7,
        10, 11, 14, 15,
    );
    let lut = p
        .lut
        .map(|l| _mm256_broadcastsi128_si256(_mm_loadu_si128(l.as_ptr() as *const __m128i)));
    let nib = _mm256_set1_epi8(15);
    let out = codes.as_mut_ptr() as *mut __m256i;
    for b in 0..nb {
        let blk = gc.as_ptr().add(b * cb);
        let z = zeros_of(p, g, b / p.gb);
        for h in 0..2 {
            let zv: [i16; 16] = std::array::from_fn(|i| z[8 * h + i / 2]);
            let zv = _mm256_loadu_si256(zv.as_ptr() as *const __m256i);
            let dst = out.add((h * nb + b) * 16);
            // `v` holds 4 consecutive codes of each of 8 rows, the first
            // being code `4·c` of the block: pairs 2c and 2c + 1.
            let put = |v: __m256i, c: usize| {
                let v = match lut {
                    Some(l) => _mm256_shuffle_epi8(l, v),
                    None => v,
                };
                let v = _mm256_permute4x64_epi64::<0xD8>(_mm256_shuffle_epi8(v, pairs));
                let even = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v));
                let odd = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v));
                _mm256_storeu_si256(dst.add(2 * c), _mm256_sub_epi16(even, zv));
                _mm256_storeu_si256(dst.add(2 * c + 1), _mm256_sub_epi16(odd, zv));
            };
            if p.bits == 8 {
                for c in 0..8 {
                    put(
                        _mm256_loadu_si256(blk.add(64 * c + 32 * h) as *const __m256i),
                        c,
                    );
                }
            } else {
                for pv in 0..4 {
                    let v = _mm256_loadu_si256(blk.add(64 * pv + 32 * h) as *const __m256i);
                    put(_mm256_and_si256(v, nib), pv);
                    put(_mm256_and_si256(_mm256_srli_epi16::<4>(v), nib), 4 + pv);
                }
            }
        }
    }
}

/// `out[r·ld + j] = w[j] · x[i0 + r]` (see `il16::tile_ref`).
///
/// # Safety
/// The CPU must have AVX2 and FMA; `rows ≤ 16`, `i0 + nr ≤ x.n`, `x.k =
/// 32·panel.nb` and `out` holds `(nr − 1)·ld + rows` floats.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile(
    panel: &Panel16,
    rows: usize,
    x: &Act16,
    i0: usize,
    nr: usize,
    out: &mut [f32],
    ld: usize,
) {
    debug_assert!(nr <= TILE);
    macro_rules! go {
        ($r:literal) => {
            match (panel.min, panel.split) {
                (true, _) => run::<$r, true, false>(panel, rows, x, i0, out, ld),
                (false, false) => run::<$r, false, false>(panel, rows, x, i0, out, ld),
                (false, true) => run::<$r, false, true>(panel, rows, x, i0, out, ld),
            }
        };
    }
    match nr {
        0 => {}
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        5 => go!(5),
        _ => go!(6),
    }
}

/// `fa[r][h] += f32(acc[r][h]) · (d[h] · dx[r])`, with `d[h]` the 8 weight
/// scales of half `h`. (A function, not a closure: closures do not
/// inherit `target_feature`, and an outlined one runs without AVX2.)
#[inline(always)]
unsafe fn flush<const R: usize>(
    acc: [[__m256i; 2]; R],
    d: [*const f32; 2],
    dx: [f32; R],
    fa: &mut [[__m256; 2]; R],
) {
    let d = [_mm256_loadu_ps(d[0]), _mm256_loadu_ps(d[1])];
    for r in 0..R {
        let dxr = _mm256_set1_ps(dx[r]);
        for h in 0..2 {
            let scale = _mm256_mul_ps(d[h], dxr);
            fa[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][h]), scale, fa[r][h]);
        }
    }
}

/// The exact i32 sums of `P` pairs of columns: codes from `w0` and `w1`
/// (the two halves of 8 weight rows), activations from `q[r]`.
#[inline(always)]
unsafe fn sums<const R: usize, const P: usize>(
    w0: *const __m256i,
    w1: *const __m256i,
    q: [*const i16; R],
) -> [[__m256i; 2]; R] {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for p in 0..P {
        let c0 = _mm256_loadu_si256(w0.add(p));
        let c1 = _mm256_loadu_si256(w1.add(p));
        for r in 0..R {
            let xb = _mm256_set1_epi32((q[r].add(2 * p) as *const i32).read_unaligned());
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(c0, xb));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(c1, xb));
        }
    }
    acc
}

#[inline(always)]
unsafe fn run<const R: usize, const MIN: bool, const SPLIT: bool>(
    panel: &Panel16,
    rows: usize,
    x: &Act16,
    i0: usize,
    out: &mut [f32],
    ld: usize,
) {
    let nb = panel.nb;
    let codes = panel.codes.as_ptr() as *const __m256i;
    let xq: [*const i16; R] = std::array::from_fn(|r| x.q.as_ptr().add((i0 + r) * x.k));
    let dx: [*const f32; R] = std::array::from_fn(|r| x.d.as_ptr().add((i0 + r) * nb));
    let sx: [*const f32; R] = std::array::from_fn(|r| x.s.as_ptr().add((i0 + r) * nb));
    let mut fa = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        let w0 = codes.add(b * 16);
        let w1 = codes.add((nb + b) * 16);
        // One integer sum of 16 pairs, or two of 8 (SPLIT), each added to
        // the f32 sums by one FMA with the scale.
        let d = [
            panel.d.as_ptr().add(b * 8),
            panel.d.as_ptr().add((nb + b) * 8),
        ];
        let dxb: [f32; R] = std::array::from_fn(|r| *dx[r].add(b));
        let q: [*const i16; R] = std::array::from_fn(|r| xq[r].add(32 * b));
        if SPLIT {
            let q2: [*const i16; R] = std::array::from_fn(|r| q[r].add(16));
            flush(sums::<R, 8>(w0, w1, q), d, dxb, &mut fa);
            flush(sums::<R, 8>(w0.add(8), w1.add(8), q2), d, dxb, &mut fa);
        } else {
            flush(sums::<R, 16>(w0, w1, q), d, dxb, &mut fa);
        }
        if MIN {
            let m = [
                _mm256_loadu_ps(panel.m.as_ptr().add(b * 8)),
                _mm256_loadu_ps(panel.m.as_ptr().add((nb + b) * 8)),
            ];
            for r in 0..R {
                let s = _mm256_set1_ps(*sx[r].add(b));
                for h in 0..2 {
                    fa[r][h] = _mm256_fmadd_ps(m[h], s, fa[r][h]);
                }
            }
        }
    }
    for (r, f) in fa.iter().enumerate() {
        let o = out.as_mut_ptr().add(r * ld);
        if rows == 16 {
            _mm256_storeu_ps(o, f[0]);
            _mm256_storeu_ps(o.add(8), f[1]);
        } else {
            let mut tmp = [0.0f32; 16];
            _mm256_storeu_ps(tmp.as_mut_ptr(), f[0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), f[1]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, rows);
        }
    }
}

/// `dense16::fill_ref` with AVX2, in two passes. First each row in turn
/// (one sequential stream, as the weight is stored): per 32-block the
/// values widened (F16 by `vcvtph2ps`, BF16 by a shift), the scale and the
/// 14-bit codes (`vcvtps2dq` rounds to nearest even, as
/// `round_ties_even`), packed into the row-major scratch. Then per (half,
/// block) the 8 rows' 16 pairs are transposed (two 8×8 transposes of
/// i32) into the panel's pair-major vectors. (Decoding the 8 rows of a
/// half block by block instead reads 8 interleaved streams and ran about
/// 3× slower.)
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` holds `rows` (≤ 16) rows of
/// `k` values of `format` (a dense format) and `panel` is sized for `k`
/// with zeroed codes and scales.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fill_dense(
    format: WeightFormat,
    w: &[u8],
    rows: usize,
    k: usize,
    panel: &mut Panel16,
) {
    let nb = k / 32;
    let eb = if format == WeightFormat::F32 { 4 } else { 2 };
    let load = |p: *const u8| -> __m256 {
        match format {
            WeightFormat::F32 => _mm256_loadu_ps(p as *const f32),
            WeightFormat::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p as *const __m128i),
            ))),
        }
    };
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    // Rows past `rows` must read as zeros in the transpose.
    panel.scratch.resize(16 * k, 0);
    if rows < 16 {
        panel.scratch[rows * k..].fill(0);
    }
    let tmp = panel.scratch.as_mut_ptr() as *mut __m256i;
    for j in 0..rows {
        let (h, jj) = (j / 8, j % 8);
        for b in 0..nb {
            let src = w.as_ptr().add((j * k + 32 * b) * eb);
            let v: [__m256; 4] = std::array::from_fn(|i| load(src.add(8 * i * eb)));
            // |x| as integers orders as the floats do, and NaN and ±∞ sit
            // above every finite value: one integer max finds both the
            // block's largest magnitude and whether it holds either.
            let m = v.iter().fold(_mm256_setzero_si256(), |a, &x| {
                _mm256_max_epi32(a, _mm256_and_si256(_mm256_castps_si256(x), abs))
            });
            let m = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
            let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0x4E>(m));
            let bits = _mm_cvtsi128_si32(_mm_max_epi32(m, _mm_shuffle_epi32::<0xB1>(m)));
            let at = (h * nb + b) * 8 + jj;
            let dst = tmp.add((j * k + 32 * b) / 16);
            if bits >= 0x7f80_0000 {
                panel.d[at] = f32::NAN;
                _mm256_storeu_si256(dst, _mm256_setzero_si256());
                _mm256_storeu_si256(dst.add(1), _mm256_setzero_si256());
                continue;
            }
            let (d, inv) = scales(f32::from_bits(bits as u32), WMAX);
            panel.d[at] = d;
            let iv = _mm256_set1_ps(inv);
            let c: [__m256i; 4] =
                std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], iv)));
            _mm256_storeu_si256(
                dst,
                _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(c[0], c[1])),
            );
            _mm256_storeu_si256(
                dst.add(1),
                _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(c[2], c[3])),
            );
        }
    }
    let out = panel.codes.as_mut_ptr() as *mut __m256i;
    for h in 0..2 {
        if 8 * h >= rows {
            break;
        }
        for b in 0..nb {
            // Pairs 0..8 and 8..16 of each of the 8 rows (scratch rows past
            // `rows` are zero).
            let row = |jj: usize, half: usize| {
                _mm256_loadu_si256(tmp.add(((8 * h + jj) * k + 32 * b) / 16 + half))
            };
            let dst = out.add((h * nb + b) * 16);
            for half in 0..2 {
                let t = transpose8(&std::array::from_fn(|jj| row(jj, half)));
                for (p, v) in t.iter().enumerate() {
                    _mm256_storeu_si256(dst.add(8 * half + p), *v);
                }
            }
        }
    }
}

/// 8×8 transpose of i32: `out[c]` lane `r` = `r[r]` lane `c`.
#[inline(always)]
unsafe fn transpose8(r: &[__m256i; 8]) -> [__m256i; 8] {
    let t: [__m256i; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // u[4q + c] holds column c (and c + 4) of rows 4q..4q + 4.
    let u: [__m256i; 8] = std::array::from_fn(|i| {
        let (q, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * q + c / 2], t[4 * q + 2 + c / 2]);
        if c % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    std::array::from_fn(|c| {
        if c < 4 {
            _mm256_permute2x128_si256::<0x20>(u[c], u[4 + c])
        } else {
            _mm256_permute2x128_si256::<0x31>(u[c - 4], u[c])
        }
    })
}
