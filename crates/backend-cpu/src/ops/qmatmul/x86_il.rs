//! x86 kernels over the row-interleaved form (layout and arithmetic in
//! `il.rs`; scalar twin `il::panel_ref`, matched bit for bit): 512-bit VNNI
//! for every format of the form, and AVX2 for its 4-bit formats.
//!
//! **VNNI** ([`panel`]):
//! Per 16-row group and scale group the 16 scales are loaded once (f16
//! widened, or f32) with the zero-points; per 32-block the codes are
//! loaded once (4-bit: 4 vectors split into low and high nibbles, looked
//! up in a 16-byte table for fp4; 8-bit: 8 vectors); then for each of up to 4 activation rows, 8
//! `vpdpbusd` with the activation's 4-byte groups broadcast give the 16
//! rows' exact block dot products, which one FMA scales into the f32
//! accumulators. Results are stored as 16 contiguous outputs per row (a
//! masked store for a last partial group).
//!
//! **AVX2** ([`panel_avx2`]): each 64-byte code vector is two 256-bit
//! halves, rows 0–7 and 8–15, handled one after the other. 4-bit codes:
//! `vpmaddubsw` multiplies the unsigned codes with the broadcast signed
//! activations into i16 pairs; four of them are summed in i16 (at most
//! 4·2·24·127 = 24 384 for fp4's largest code, so nothing saturates) and
//! widened with `vpmaddwd` by ones. 8-bit codes `u` would saturate
//! `vpmaddubsw` (255·127·2 > 2¹⁵), so they are taken as the signed weight
//! `w = u − 128` and multiplied as `|w| · sign(x, w)` (at most 2·128·127 =
//! 32 512 per pair), which folds the offset 128 into the product: the
//! correction becomes `(128 − z)·isum`. Either way the i32 block sums are
//! the exact integers `vpdpbusd` gives.

use std::arch::x86_64::*;

use super::il::{IlPrepared, IlScales, LANES};
use super::q8::ActRow;

/// Calls `$run::<R, B8, F16, MIN, ZP, LUT>` for the row count and the
/// form's variant (8-bit, f16 scales, min, zero-points, table).
macro_rules! dispatch {
    ($run:ident, $p:expr, $j0:expr, $j1:expr, $xs:expr, $out:expr) => {{
        let (p, j0, j1, xs, out) = ($p, $j0, $j1, $xs, $out);
        let f16 = matches!(p.scales, IlScales::F16(_));
        let v = (
            p.bits == 8,
            f16,
            p.min,
            !p.zeros.is_empty(),
            p.lut.is_some(),
        );
        macro_rules! go {
            ($r:literal) => {
                match v {
                    (false, true, false, _, _) => {
                        $run::<$r, false, true, false, false, false>(p, j0, j1, xs, out)
                    }
                    (false, true, true, _, _) => {
                        $run::<$r, false, true, true, false, false>(p, j0, j1, xs, out)
                    }
                    (true, true, _, _, _) => {
                        $run::<$r, true, true, false, false, false>(p, j0, j1, xs, out)
                    }
                    (false, false, _, false, false) => {
                        $run::<$r, false, false, false, false, false>(p, j0, j1, xs, out)
                    }
                    (false, false, _, true, _) => {
                        $run::<$r, false, false, false, true, false>(p, j0, j1, xs, out)
                    }
                    (false, false, _, false, true) => {
                        $run::<$r, false, false, false, false, true>(p, j0, j1, xs, out)
                    }
                    (true, false, _, false, _) => {
                        $run::<$r, true, false, false, false, false>(p, j0, j1, xs, out)
                    }
                    (true, false, _, true, _) => {
                        $run::<$r, true, false, false, true, false>(p, j0, j1, xs, out)
                    }
                }
            };
        }
        match xs.len() {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            _ => go!(4),
        }
    }};
}

/// Raw pointers of a form's scales and zero-points and of `R` activation
/// rows, shared by both kernels.
struct Ptrs<const R: usize> {
    s16: *const u16,
    s32: *const f32,
    zeros: *const u8,
    q: [*const i8; R],
    dx: [*const f32; R],
    isum: [*const i32; R],
    sx: [*const f32; R],
}

impl<const R: usize> Ptrs<R> {
    #[inline(always)]
    fn new(p: &IlPrepared, xs: &[ActRow]) -> Self {
        let (s16, s32) = match &p.scales {
            IlScales::F16(v) => (v.as_ptr(), std::ptr::null()),
            IlScales::F32(v) => (std::ptr::null(), v.as_ptr()),
        };
        Ptrs {
            s16,
            s32,
            zeros: p.zeros.as_ptr(),
            q: std::array::from_fn(|r| xs[r].qs.as_ptr()),
            dx: std::array::from_fn(|r| xs[r].d.as_ptr()),
            isum: std::array::from_fn(|r| xs[r].isum.as_ptr()),
            sx: std::array::from_fn(|r| xs[r].s.as_ptr()),
        }
    }
}

/// `out[r·(j1−j0) + j − j0] = w[j] · xs[r]` (see `il::panel`).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL, VNNI, AVX2, FMA and F16C; `j0` is a
/// multiple of 16, `j0 < j1 ≤ rows`, 1 to 4 activation rows of `p.cols`
/// values, and `out` holds `(j1 − j0)·xs.len()` floats.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn panel(p: &IlPrepared, j0: usize, j1: usize, xs: &[ActRow], out: *mut f32) {
    dispatch!(run, p, j0, j1, xs, out)
}

#[inline(always)]
unsafe fn run<
    const R: usize,
    const B8: bool,
    const F16: bool,
    const MIN: bool,
    const ZP: bool,
    const LUT: bool,
>(
    p: &IlPrepared,
    j0: usize,
    j1: usize,
    xs: &[ActRow],
    out: *mut f32,
) {
    let ld = j1 - j0;
    let (nb, ns, gb, sl, cb) = (p.nb, p.ns, p.gb, p.scale_len(), p.code_bytes());
    let noff = -p.off;
    let mask4 = _mm512_set1_epi8(15);
    let lut = match p.lut {
        Some(l) if LUT => _mm512_broadcast_i32x4(_mm_loadu_si128(l.as_ptr() as *const _)),
        _ => _mm512_setzero_si512(),
    };
    let Ptrs {
        s16,
        s32,
        zeros,
        q,
        dx,
        isum,
        sx,
    } = Ptrs::<R>::new(p, xs);
    debug_assert!(nb == ns * gb);
    for g in j0 / LANES..j1.div_ceil(LANES) {
        let gc = p.group_codes(g).as_ptr();
        let mut acc = [_mm512_setzero_ps(); R];
        for s in 0..ns {
            let at = (g * ns + s) * sl;
            let dw = if F16 {
                _mm512_cvtph_ps(_mm256_loadu_si256(s16.add(at) as *const _))
            } else {
                _mm512_loadu_ps(s32.add(at))
            };
            let mw = if MIN {
                _mm512_cvtph_ps(_mm256_loadu_si256(s16.add(at + LANES) as *const _))
            } else {
                _mm512_setzero_ps()
            };
            let zv = if ZP {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(zeros.add((g * ns + s) * LANES) as *const _))
            } else {
                _mm512_setzero_si512()
            };
            for b in s * gb..(s + 1) * gb {
                let wp = gc.add(b * cb);
                let mut w = [_mm512_setzero_si512(); 8];
                if B8 {
                    for (c, wc) in w.iter_mut().enumerate() {
                        *wc = _mm512_loadu_si512(wp.add(64 * c) as *const _);
                    }
                } else {
                    for pv in 0..4 {
                        let v = _mm512_loadu_si512(wp.add(64 * pv) as *const _);
                        w[pv] = _mm512_and_si512(v, mask4);
                        w[pv + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask4);
                    }
                    if LUT {
                        for wc in w.iter_mut() {
                            *wc = _mm512_shuffle_epi8(lut, *wc);
                        }
                    }
                }
                for r in 0..R {
                    let xq = q[r].add(32 * b) as *const i32;
                    let is = *isum[r].add(b);
                    // Two independent chains of 4, joined once.
                    let mut a0 = if ZP {
                        _mm512_mullo_epi32(zv, _mm512_set1_epi32(-is))
                    } else if noff != 0 {
                        _mm512_set1_epi32(noff * is)
                    } else {
                        _mm512_setzero_si512()
                    };
                    let mut a1 = _mm512_setzero_si512();
                    for c in 0..4 {
                        a0 = _mm512_dpbusd_epi32(
                            a0,
                            w[c],
                            _mm512_set1_epi32(xq.add(c).read_unaligned()),
                        );
                        a1 = _mm512_dpbusd_epi32(
                            a1,
                            w[c + 4],
                            _mm512_set1_epi32(xq.add(c + 4).read_unaligned()),
                        );
                    }
                    let dot = _mm512_add_epi32(a0, a1);
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*dx[r].add(b)));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r]);
                    if MIN {
                        acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*sx[r].add(b)), acc[r]);
                    }
                }
            }
        }
        let jg = g * LANES;
        let valid = (j1 - jg).min(LANES);
        let mask: __mmask16 = if valid == LANES {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        };
        for (r, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * ld + jg - j0), mask, *a);
        }
    }
}

/// `out[r·(j1−j0) + j − j0] = w[j] · xs[r]` (see `il::panel`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; the shapes as for [`panel`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn panel_avx2(
    p: &IlPrepared,
    j0: usize,
    j1: usize,
    xs: &[ActRow],
    out: *mut f32,
) {
    dispatch!(run2, p, j0, j1, xs, out)
}

#[inline(always)]
unsafe fn run2<
    const R: usize,
    const B8: bool,
    const F16: bool,
    const MIN: bool,
    const ZP: bool,
    const LUT: bool,
>(
    p: &IlPrepared,
    j0: usize,
    j1: usize,
    xs: &[ActRow],
    out: *mut f32,
) {
    let ld = j1 - j0;
    let (ns, gb, sl, cb) = (p.ns, p.gb, p.scale_len(), p.code_bytes());
    // 8-bit: the products already hold the offset 128 (see the module docs).
    let noff = if B8 { 128 - p.off } else { -p.off };
    let mask4 = _mm256_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    let x80 = _mm256_set1_epi8(-128);
    let lut = match p.lut {
        Some(l) if LUT => _mm256_broadcastsi128_si256(_mm_loadu_si128(l.as_ptr() as *const _)),
        _ => _mm256_setzero_si256(),
    };
    let Ptrs {
        s16,
        s32,
        zeros,
        q,
        dx,
        isum,
        sx,
    } = Ptrs::<R>::new(p, xs);
    for g in j0 / LANES..j1.div_ceil(LANES) {
        let gc = p.group_codes(g).as_ptr();
        let jg = g * LANES;
        for h in 0..2 {
            // Rows jg + 8h .. jg + 8h + 8.
            let j8 = jg + 8 * h;
            if j8 >= j1 {
                break;
            }
            let mut acc = [_mm256_setzero_ps(); R];
            for s in 0..ns {
                let at = (g * ns + s) * sl + 8 * h;
                let dw = if F16 {
                    _mm256_cvtph_ps(_mm_loadu_si128(s16.add(at) as *const _))
                } else {
                    _mm256_loadu_ps(s32.add(at))
                };
                let mw = if MIN {
                    _mm256_cvtph_ps(_mm_loadu_si128(s16.add(at + LANES) as *const _))
                } else {
                    _mm256_setzero_ps()
                };
                let zv = if ZP {
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        zeros.add((g * ns + s) * LANES + 8 * h) as *const _
                    ))
                } else {
                    _mm256_setzero_si256()
                };
                for b in s * gb..(s + 1) * gb {
                    let wp = gc.add(b * cb + 32 * h);
                    let mut lo16 = [_mm256_setzero_si256(); R];
                    let mut hi16 = [_mm256_setzero_si256(); R];
                    let mut d32 = [_mm256_setzero_si256(); R];
                    if B8 {
                        for c in 0..8 {
                            let w = _mm256_xor_si256(
                                _mm256_loadu_si256(wp.add(64 * c) as *const _),
                                x80,
                            );
                            let aw = _mm256_abs_epi8(w);
                            for r in 0..R {
                                let xq = q[r].add(32 * b) as *const i32;
                                let x = _mm256_set1_epi32(xq.add(c).read_unaligned());
                                let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
                                d32[r] = _mm256_add_epi32(d32[r], _mm256_madd_epi16(p16, ones));
                            }
                        }
                    } else {
                        for pv in 0..4 {
                            let v = _mm256_loadu_si256(wp.add(64 * pv) as *const _);
                            let mut lo = _mm256_and_si256(v, mask4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask4);
                            if LUT {
                                lo = _mm256_shuffle_epi8(lut, lo);
                                hi = _mm256_shuffle_epi8(lut, hi);
                            }
                            for r in 0..R {
                                let xq = q[r].add(32 * b) as *const i32;
                                let xl = _mm256_set1_epi32(xq.add(pv).read_unaligned());
                                let xh = _mm256_set1_epi32(xq.add(pv + 4).read_unaligned());
                                lo16[r] = _mm256_add_epi16(lo16[r], _mm256_maddubs_epi16(lo, xl));
                                hi16[r] = _mm256_add_epi16(hi16[r], _mm256_maddubs_epi16(hi, xh));
                            }
                        }
                        for r in 0..R {
                            d32[r] = _mm256_add_epi32(
                                _mm256_madd_epi16(lo16[r], ones),
                                _mm256_madd_epi16(hi16[r], ones),
                            );
                        }
                    }
                    for r in 0..R {
                        let is = *isum[r].add(b);
                        let corr = if ZP && B8 {
                            _mm256_mullo_epi32(
                                _mm256_sub_epi32(zv, _mm256_set1_epi32(128)),
                                _mm256_set1_epi32(-is),
                            )
                        } else if ZP {
                            _mm256_mullo_epi32(zv, _mm256_set1_epi32(-is))
                        } else {
                            _mm256_set1_epi32(noff * is)
                        };
                        let dot = _mm256_add_epi32(d32[r], corr);
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*dx[r].add(b)));
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
                        if MIN {
                            acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*sx[r].add(b)), acc[r]);
                        }
                    }
                }
            }
            let valid = (j1 - j8).min(8);
            for (r, a) in acc.iter().enumerate() {
                let o = out.add(r * ld + j8 - j0);
                if valid == 8 {
                    _mm256_storeu_ps(o, *a);
                } else {
                    let mut t = [0.0f32; 8];
                    _mm256_storeu_ps(t.as_mut_ptr(), *a);
                    std::ptr::copy_nonoverlapping(t.as_ptr(), o, valid);
                }
            }
        }
    }
}
