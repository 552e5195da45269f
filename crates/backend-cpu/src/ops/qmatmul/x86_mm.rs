//! AVX2 (+FMA) kernels for metal-marlin formats, over the repacked blocks
//! of [`MmPrepared`] (layout in `mm.rs`), for the formats without a
//! row-interleaved form (`il.rs`: nf4, fp8, int2, int3): the integer path
//! on AVX2 and AVX-512 CPUs alike, the float path on AVX2 CPUs; AVX-512
//! CPUs run the float path in 16 lanes ([`float_panel_avx512`]).
//!
//! Integer path: a block decodes to 32 signed bytes `c` — 8-bit codes are
//! stored as `u − 128` already; 2/3/4-bit codes are spread to one byte each
//! (shifts and masks; the 3-bit high plane through a bit→byte shuffle) and
//! mapped through the format's 16-entry table with `vpshufb` (`u − 2^(b−1)`,
//! or `2·e2m1(u)` for fp4/mxfp4). The dot with the Q8_0 activation bytes
//! uses `maddubs(|c|, sign(q, c))` (as the Q8_0 kernel does; no i16
//! saturation since `|c| ≤ 128`, `|q| ≤ 127`), the asymmetric offset
//! `o_g·isum` is added to lane 0 of the i32 sums, and each block's sums are
//! converted and FMA'd with `d_g·d_x` into an f32 accumulator per row.
//!
//! Float path: 8 codes at a time become f32 lanes — nf4 through two
//! `vpermps` tables blended on bit 3; fp8 by shifting the 7 magnitude bits
//! into an f32's exponent/mantissa, scaling by 2^120 (E4M3) or 2^112 (E5M2)
//! — exact, subnormals included — fixing NaN/∞ codes with a compare and
//! adding the sign bit; then FMA with the f32 activations into two
//! accumulators per row, scaled by `d_g` per group.
//!
//! Rows are processed 1 to 4 activation rows at a time (const generic
//! `NR`), so a decoded block feeds every activation row of the panel; the
//! integer kernels also take 4 (one activation row), 2 (two) or 1 weight
//! rows per tile, so the
//! FMA chains are independent and each activation block is loaded once per
//! tile (as the GGML kernels' `mk32`).

use std::arch::x86_64::*;

use super::mm::{block_bytes, MmPrepared, MmRows, Path, BLOCK};
use super::q8::ActRow;
use super::x86::{bit_bytes, hsum_ps, loadu, nibbles};

/// `out[r·(j1−j0) + j−j0] = w[j] · xs[r]`.
///
/// # Safety
/// AVX2 and FMA must be available; `xs` rows must match `p` (checked by
/// `mm::panel`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn panel_avx2(p: &MmPrepared, j0: usize, j1: usize, xs: MmRows, out: &mut [f32]) {
    match xs {
        MmRows::Q8(x) => match (p.bits, x.len()) {
            (8, n) => int_rows::<8>(p, j0, j1, x, n, out),
            (4, n) => int_rows::<4>(p, j0, j1, x, n, out),
            (3, n) => int_rows::<3>(p, j0, j1, x, n, out),
            (_, n) => int_rows::<2>(p, j0, j1, x, n, out),
        },
        MmRows::F32(x) => match p.path {
            Path::Nf4 => float_rows::<0>(p, j0, j1, x, out),
            Path::E4M3 => float_rows::<1>(p, j0, j1, x, out),
            _ => float_rows::<2>(p, j0, j1, x, out),
        },
    }
}

#[inline(always)]
unsafe fn int_rows<const B: u32>(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[ActRow],
    n: usize,
    out: &mut [f32],
) {
    match n {
        1 => int_kernel::<B, 1>(p, j0, j1, x, out),
        2 => int_kernel::<B, 2>(p, j0, j1, x, out),
        3 => int_kernel::<B, 3>(p, j0, j1, x, out),
        _ => int_kernel::<B, 4>(p, j0, j1, x, out),
    }
}

/// Unsigned 2-bit fields of a 2-bit-plane block (8 bytes) → one byte each.
#[inline(always)]
unsafe fn crumbs(b: *const u8) -> __m256i {
    let v = (b as *const i64).read_unaligned();
    let s = _mm256_srlv_epi64(_mm256_set1_epi64x(v), _mm256_set_epi64x(6, 4, 2, 0));
    _mm256_and_si256(s, _mm256_set1_epi8(3))
}

/// The 32 signed bytes of one repacked block of `B`-bit codes.
#[inline(always)]
unsafe fn decode_i8<const B: u32>(b: *const u8, lut: __m256i) -> __m256i {
    match B {
        8 => loadu(b),
        4 => _mm256_shuffle_epi8(lut, nibbles(b)),
        3 => {
            let hi = bit_bytes((b.add(8) as *const u32).read_unaligned() as i32, 4);
            _mm256_shuffle_epi8(lut, _mm256_or_si256(crumbs(b), hi))
        }
        _ => _mm256_shuffle_epi8(lut, crumbs(b)),
    }
}

/// `C` weight rows from `j` × `NR` activation rows: independent
/// accumulators for instruction-level parallelism, and every activation
/// block loaded once for `C` weight rows.
#[inline(always)]
unsafe fn int_tile<const B: u32, const NR: usize, const C: usize, const ASYM: bool>(
    p: &MmPrepared,
    j: usize,
    x: &[ActRow],
    lut: __m256i,
) -> [[f32; NR]; C] {
    let bb = block_bytes(B);
    let ones = _mm256_set1_epi16(1);
    let xq: [*const i8; NR] = std::array::from_fn(|r| x[r].qs.as_ptr());
    let xd: [*const f32; NR] = std::array::from_fn(|r| x[r].d.as_ptr());
    let xi: [*const i32; NR] = std::array::from_fn(|r| x[r].isum.as_ptr());
    let w: [*const u8; C] = std::array::from_fn(|c| p.row(j + c).as_ptr());
    let mut acc = [[_mm256_setzero_ps(); NR]; C];
    for g in 0..p.groups {
        let d: [f32; C] = std::array::from_fn(|c| p.scales[(j + c) * p.groups + g]);
        let off: [i32; C] = std::array::from_fn(|c| p.offset(j + c, g));
        for b in g * p.group_blocks..(g + 1) * p.group_blocks {
            let mut q = [_mm256_setzero_si256(); NR];
            let mut dx = [0.0f32; NR];
            let mut isum = [0i32; NR];
            for r in 0..NR {
                q[r] = loadu(xq[r].add(b * BLOCK) as *const u8);
                dx[r] = *xd[r].add(b);
                if ASYM {
                    isum[r] = *xi[r].add(b);
                }
            }
            for c in 0..C {
                let cw = decode_i8::<B>(w[c].add(b * bb), lut);
                let ac = _mm256_abs_epi8(cw);
                for r in 0..NR {
                    let init = if ASYM {
                        _mm256_zextsi128_si256(_mm_cvtsi32_si128(off[c] * isum[r]))
                    } else {
                        _mm256_setzero_si256()
                    };
                    let prod = _mm256_maddubs_epi16(ac, _mm256_sign_epi8(q[r], cw));
                    let s = _mm256_add_epi32(init, _mm256_madd_epi16(prod, ones));
                    let sc = _mm256_set1_ps(d[c] * dx[r]);
                    acc[c][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), sc, acc[c][r]);
                }
            }
        }
    }
    let mut out = [[0.0f32; NR]; C];
    for c in 0..C {
        for r in 0..NR {
            out[c][r] = hsum_ps(acc[c][r]);
        }
    }
    out
}

/// Weight rows per tile: 4 for one activation row (decode), 2 for two,
/// else 1 (the accumulators must stay in the 16 ymm registers).
const fn tile(nr: usize) -> usize {
    match nr {
        1 => 4,
        2 => 2,
        _ => 1,
    }
}

#[inline(always)]
unsafe fn int_kernel<const B: u32, const NR: usize>(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[ActRow],
    out: &mut [f32],
) {
    if p.zeros.is_empty() {
        int_tiles::<B, NR, false>(p, j0, j1, x, out)
    } else {
        int_tiles::<B, NR, true>(p, j0, j1, x, out)
    }
}

#[inline(always)]
unsafe fn int_tiles<const B: u32, const NR: usize, const ASYM: bool>(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[ActRow],
    out: &mut [f32],
) {
    let rows = j1 - j0;
    let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.lut.as_ptr() as *const __m128i));
    let mut j = j0;
    let mut put = |j: usize, v: &[[f32; NR]]| {
        for (c, vc) in v.iter().enumerate() {
            for r in 0..NR {
                out[r * rows + j + c - j0] = vc[r];
            }
        }
    };
    if tile(NR) == 4 {
        while j + 4 <= j1 {
            put(j, &int_tile::<B, NR, 4, ASYM>(p, j, x, lut));
            j += 4;
        }
    }
    while tile(NR) >= 2 && j + 2 <= j1 {
        put(j, &int_tile::<B, NR, 2, ASYM>(p, j, x, lut));
        j += 2;
    }
    while j < j1 {
        put(j, &int_tile::<B, NR, 1, ASYM>(p, j, x, lut));
        j += 1;
    }
}

#[inline(always)]
unsafe fn float_rows<const K: u8>(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[&[f32]],
    out: &mut [f32],
) {
    match x.len() {
        1 => float_kernel::<K, 1>(p, j0, j1, x, out),
        2 => float_kernel::<K, 2>(p, j0, j1, x, out),
        3 => float_kernel::<K, 3>(p, j0, j1, x, out),
        _ => float_kernel::<K, 4>(p, j0, j1, x, out),
    }
}

/// 8 FP8 codes (low 8 bytes of `v`) → f32: E4M3 (`K == 1`) or E5M2.
#[inline(always)]
unsafe fn fp8x8<const K: u8>(v: __m128i) -> __m256 {
    let b = _mm256_cvtepu8_epi32(v);
    let mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7f));
    let sign = _mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24);
    let f = if K == 1 {
        let f = _mm256_mul_ps(
            _mm256_castsi256_ps(_mm256_slli_epi32(mag, 20)),
            _mm256_set1_ps(f32::from_bits((127 + 120) << 23)),
        );
        // S.1111.111 is NaN.
        let nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7f));
        _mm256_or_ps(f, _mm256_castsi256_ps(nan))
    } else {
        let bits = _mm256_slli_epi32(mag, 21);
        let f = _mm256_mul_ps(
            _mm256_castsi256_ps(bits),
            _mm256_set1_ps(f32::from_bits((127 + 112) << 23)),
        );
        // Exponent 31: ∞ (mantissa 0) or NaN.
        let e = _mm256_set1_epi32(0x7c);
        let special = _mm256_cmpeq_epi32(_mm256_and_si256(mag, e), e);
        let inf_nan = _mm256_or_si256(bits, _mm256_set1_epi32(0x7f80_0000));
        _mm256_blendv_ps(
            f,
            _mm256_castsi256_ps(inf_nan),
            _mm256_castsi256_ps(special),
        )
    };
    _mm256_or_ps(f, _mm256_castsi256_ps(sign))
}

/// 8 NF4 codes (low 8 bytes of `v`, one per byte) → f32 levels.
#[inline(always)]
unsafe fn nf4x8(v: __m128i, t0: __m256, t1: __m256) -> __m256 {
    let idx = _mm256_cvtepu8_epi32(v);
    let lo = _mm256_permutevar8x32_ps(t0, idx);
    let hi = _mm256_permutevar8x32_ps(t1, idx);
    _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)))
}

/// The 32 values (before the group scale) of one float-path block.
#[inline(always)]
unsafe fn decode_f32<const K: u8>(b: *const u8, t0: __m256, t1: __m256) -> [__m256; 4] {
    if K == 0 {
        let q = _mm_loadu_si128(b as *const __m128i);
        let m = _mm_set1_epi8(0xF);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
        [
            nf4x8(lo, t0, t1),
            nf4x8(_mm_srli_si128(lo, 8), t0, t1),
            nf4x8(hi, t0, t1),
            nf4x8(_mm_srli_si128(hi, 8), t0, t1),
        ]
    } else {
        let a = _mm_loadu_si128(b as *const __m128i);
        let c = _mm_loadu_si128(b.add(16) as *const __m128i);
        [
            fp8x8::<K>(a),
            fp8x8::<K>(_mm_srli_si128(a, 8)),
            fp8x8::<K>(c),
            fp8x8::<K>(_mm_srli_si128(c, 8)),
        ]
    }
}

#[inline(always)]
unsafe fn float_kernel<const K: u8, const NR: usize>(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[&[f32]],
    out: &mut [f32],
) {
    let rows = j1 - j0;
    let bb = block_bytes(p.bits);
    let levels = mm_quant::mm::codec::NF4_LEVELS;
    let t0 = _mm256_loadu_ps(levels.as_ptr());
    let t1 = _mm256_loadu_ps(levels.as_ptr().add(8));
    for j in j0..j1 {
        let w = p.row(j).as_ptr();
        let mut acc = [_mm256_setzero_ps(); NR];
        for g in 0..p.groups {
            let mut ga = [_mm256_setzero_ps(); NR];
            let mut gb = [_mm256_setzero_ps(); NR];
            for b in g * p.group_blocks..(g + 1) * p.group_blocks {
                let v = decode_f32::<K>(w.add(b * bb), t0, t1);
                for r in 0..NR {
                    let xp = x[r].as_ptr().add(b * BLOCK);
                    ga[r] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(xp), ga[r]);
                    gb[r] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xp.add(8)), gb[r]);
                    ga[r] = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xp.add(16)), ga[r]);
                    gb[r] = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xp.add(24)), gb[r]);
                }
            }
            let d = _mm256_set1_ps(p.scales[j * p.groups + g]);
            for r in 0..NR {
                acc[r] = _mm256_fmadd_ps(_mm256_add_ps(ga[r], gb[r]), d, acc[r]);
            }
        }
        for r in 0..NR {
            out[r * rows + j - j0] = hsum_ps(acc[r]);
        }
    }
}

/// The float path (nf4, fp8) with 512-bit registers: `out[r·(j1−j0) + j−j0]
/// = w[j] · x[r]` for f32 activation rows.
///
/// A block's 32 codes become two `__m512` of 16 lanes: nf4 with one
/// `vpermps` over the 16 levels (`_mm512_permutexvar_ps`), fp8 with the
/// AVX2 kernel's bit trick on 16 lanes (NaN/∞ through a compare mask).
/// Same arithmetic as [`panel_avx2`]'s float path, in 16 lanes instead of
/// 8 (so the f32 sums are added in another order).
///
/// # Safety
/// AVX-512F, AVX2 and FMA must be available; `x` rows must match `p`
/// (checked by `mm::panel`).
#[target_feature(enable = "avx2,fma,avx512f")]
pub(super) unsafe fn float_panel_avx512(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[&[f32]],
    out: &mut [f32],
) {
    match (p.path, x.len()) {
        (Path::Nf4, 1) => float512::<0, 1>(p, j0, j1, x, out),
        (Path::Nf4, 2) => float512::<0, 2>(p, j0, j1, x, out),
        (Path::Nf4, 3) => float512::<0, 3>(p, j0, j1, x, out),
        (Path::Nf4, _) => float512::<0, 4>(p, j0, j1, x, out),
        (Path::E4M3, 1) => float512::<1, 1>(p, j0, j1, x, out),
        (Path::E4M3, 2) => float512::<1, 2>(p, j0, j1, x, out),
        (Path::E4M3, 3) => float512::<1, 3>(p, j0, j1, x, out),
        (Path::E4M3, _) => float512::<1, 4>(p, j0, j1, x, out),
        (_, 1) => float512::<2, 1>(p, j0, j1, x, out),
        (_, 2) => float512::<2, 2>(p, j0, j1, x, out),
        (_, 3) => float512::<2, 3>(p, j0, j1, x, out),
        (_, _) => float512::<2, 4>(p, j0, j1, x, out),
    }
}

/// 16 FP8 codes → f32: E4M3 (`K == 1`) or E5M2, as [`fp8x8`].
#[inline(always)]
unsafe fn fp8x16<const K: u8>(v: __m128i) -> __m512 {
    let b = _mm512_cvtepu8_epi32(v);
    let mag = _mm512_and_si512(b, _mm512_set1_epi32(0x7f));
    let sign = _mm512_slli_epi32::<24>(_mm512_and_si512(b, _mm512_set1_epi32(0x80)));
    let f = if K == 1 {
        let f = _mm512_mul_ps(
            _mm512_castsi512_ps(_mm512_slli_epi32::<20>(mag)),
            _mm512_set1_ps(f32::from_bits((127 + 120) << 23)),
        );
        // S.1111.111 is NaN: all ones (as the AVX2 kernel's OR).
        let nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f));
        _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(_mm512_set1_epi32(-1)))
    } else {
        let bits = _mm512_slli_epi32::<21>(mag);
        let f = _mm512_mul_ps(
            _mm512_castsi512_ps(bits),
            _mm512_set1_ps(f32::from_bits((127 + 112) << 23)),
        );
        // Exponent 31: ∞ (mantissa 0) or NaN.
        let e = _mm512_set1_epi32(0x7c);
        let special = _mm512_cmpeq_epi32_mask(_mm512_and_si512(mag, e), e);
        let inf_nan = _mm512_or_si512(bits, _mm512_set1_epi32(0x7f80_0000));
        _mm512_mask_mov_ps(f, special, _mm512_castsi512_ps(inf_nan))
    };
    _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), sign))
}

/// The 32 values (before the group scale) of one float-path block:
/// elements 0..16 and 16..32.
#[inline(always)]
unsafe fn decode_f32x16<const K: u8>(b: *const u8, table: __m512) -> [__m512; 2] {
    if K == 0 {
        let q = _mm_loadu_si128(b as *const __m128i);
        let m = _mm_set1_epi8(0xF);
        let lo = _mm512_cvtepu8_epi32(_mm_and_si128(q, m));
        let hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m));
        [
            _mm512_permutexvar_ps(lo, table),
            _mm512_permutexvar_ps(hi, table),
        ]
    } else {
        [
            fp8x16::<K>(_mm_loadu_si128(b as *const __m128i)),
            fp8x16::<K>(_mm_loadu_si128(b.add(16) as *const __m128i)),
        ]
    }
}

#[inline(always)]
unsafe fn float512<const K: u8, const NR: usize>(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[&[f32]],
    out: &mut [f32],
) {
    let rows = j1 - j0;
    let bb = block_bytes(p.bits);
    let table = _mm512_loadu_ps(mm_quant::mm::codec::NF4_LEVELS.as_ptr());
    for j in j0..j1 {
        let w = p.row(j).as_ptr();
        let mut acc = [_mm512_setzero_ps(); NR];
        for g in 0..p.groups {
            let mut ga = [_mm512_setzero_ps(); NR];
            let mut gb = [_mm512_setzero_ps(); NR];
            for b in g * p.group_blocks..(g + 1) * p.group_blocks {
                let v = decode_f32x16::<K>(w.add(b * bb), table);
                for r in 0..NR {
                    let xp = x[r].as_ptr().add(b * BLOCK);
                    ga[r] = _mm512_fmadd_ps(v[0], _mm512_loadu_ps(xp), ga[r]);
                    gb[r] = _mm512_fmadd_ps(v[1], _mm512_loadu_ps(xp.add(16)), gb[r]);
                }
            }
            let d = _mm512_set1_ps(p.scales[j * p.groups + g]);
            for r in 0..NR {
                acc[r] = _mm512_fmadd_ps(_mm512_add_ps(ga[r], gb[r]), d, acc[r]);
            }
        }
        for r in 0..NR {
            out[r * rows + j - j0] = _mm512_reduce_add_ps(acc[r]);
        }
    }
}
