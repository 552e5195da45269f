//! x86-64 kernels: AVX2 (+FMA, F16C) and AVX-512 VNNI (256-bit `vpdpbusd`
//! / `vpdpwssd` on AVX512VL), chosen at run time in `mod.rs`.
//!
//! The kernels are written once, generic over [`Isa`] (how u8×i8 products
//! are summed into i32 lanes), and instantiated inside `#[target_feature]`
//! entry points, which `#[inline(always)]` pulls the whole body into.
//!
//! Weight values are decoded to *unsigned* bytes (a nibble, 5 or 6 bits),
//! so `u8 × i8` instructions apply directly; each format's constant offset
//! (Q4_0: 8, Q5_0: 16, Q3_K: 4, Q6_K: 32) is subtracted exactly in integer
//! arithmetic with the activation block sums. Q8_0 weights are signed and
//! use the `abs(w) · sign(x, w)` identity. All loads are unaligned (GGUF
//! data is only 32-byte aligned and blocks are 18…210 bytes).

use std::arch::x86_64::*;

use mm_core::WeightFormat;

use super::q8::{scales, ActKind, ActRow, RowOut};

/// Raw pointers of one quantized activation row.
#[derive(Clone, Copy)]
struct X {
    qs: *const i8,
    d: *const f32,
    isum: *const i32,
    s: *const f32,
    bs: *const i16,
    qu: *const u8,
    dx8: *const f32,
}

impl X {
    fn new(r: &ActRow) -> Self {
        X {
            qs: r.qs.as_ptr(),
            d: r.d.as_ptr(),
            isum: r.isum.as_ptr(),
            s: r.s.as_ptr(),
            bs: r.bsums.as_ptr(),
            qu: r.qu.as_ptr(),
            dx8: r.dx8.as_ptr(),
        }
    }
}

/// How u8 × i8 products are summed into i32 lanes.
trait Isa {
    /// `acc + Σ₄ w·x` per i32 lane (w unsigned, x signed).
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
    /// `acc + Σ₂ sc·(Σ₂ w·x)` per i32 lane, `sc` i16 per i16 lane.
    unsafe fn dot_scaled(acc: __m256i, w: __m256i, x: __m256i, sc: __m256i) -> __m256i;
}

struct Avx2;
struct Vnni;

impl Isa for Avx2 {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(w, x);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn dot_scaled(acc: __m256i, w: __m256i, x: __m256i, sc: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(w, x);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc))
    }
}

impl Isa for Vnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, x)
    }
    #[inline(always)]
    unsafe fn dot_scaled(acc: __m256i, w: __m256i, x: __m256i, sc: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(w, x), sc)
    }
}

#[inline(always)]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    let h = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline(always)]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[inline(always)]
pub(super) unsafe fn loadu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 16 nibbles → 32 bytes: low nibbles in bytes 0..16, high in 16..32.
#[inline(always)]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(q, m);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// Bit j of the little-endian u32 at `p` → 0x10 in byte j.
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    bit_bytes((p as *const u32).read_unaligned() as i32, 0x10)
}

/// Bit j of `bits` → `val` in byte j (0 where the bit is clear).
#[inline(always)]
pub(super) unsafe fn bit_bytes(bits: i32, val: i8) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), shuf);
    let sel = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, sel), sel);
    _mm256_and_si256(set, _mm256_set1_epi8(val))
}

// ---------------------------------------------------------------------------
// 32-element block formats.

/// One decoded 32-element block: `x = d·(u − OFF) + m`.
struct W32 {
    u: __m256i,
    /// Signed weights (Q8_0 only; the sign source of `abs·sign`).
    w: __m256i,
    d: f32,
    m: f32,
}

trait Fmt32 {
    const BYTES: usize;
    const OFF: i32;
    const MIN: bool;
    unsafe fn decode(b: *const u8) -> W32;
    #[inline(always)]
    unsafe fn dot<I: Isa>(acc: __m256i, w: &W32, x: __m256i) -> __m256i {
        I::dot(acc, w.u, x)
    }
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

impl Fmt32 for Q4_0 {
    const BYTES: usize = 18;
    const OFF: i32 = 8;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> W32 {
        let u = nibbles(b.add(2));
        W32 {
            u,
            w: u,
            d: f16(b),
            m: 0.0,
        }
    }
}

impl Fmt32 for Q4_1 {
    const BYTES: usize = 20;
    const OFF: i32 = 0;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> W32 {
        let u = nibbles(b.add(4));
        W32 {
            u,
            w: u,
            d: f16(b),
            m: f16(b.add(2)),
        }
    }
}

impl Fmt32 for Q5_0 {
    const BYTES: usize = 22;
    const OFF: i32 = 16;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> W32 {
        let u = _mm256_or_si256(nibbles(b.add(6)), fifth_bits(b.add(2)));
        W32 {
            u,
            w: u,
            d: f16(b),
            m: 0.0,
        }
    }
}

impl Fmt32 for Q5_1 {
    const BYTES: usize = 24;
    const OFF: i32 = 0;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> W32 {
        let u = _mm256_or_si256(nibbles(b.add(8)), fifth_bits(b.add(4)));
        W32 {
            u,
            w: u,
            d: f16(b),
            m: f16(b.add(2)),
        }
    }
}

impl Fmt32 for Q8_0 {
    const BYTES: usize = 34;
    const OFF: i32 = 0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(b: *const u8) -> W32 {
        let w = loadu(b.add(2));
        W32 {
            u: _mm256_abs_epi8(w),
            w,
            d: f16(b),
            m: 0.0,
        }
    }
    #[inline(always)]
    unsafe fn dot<I: Isa>(acc: __m256i, w: &W32, x: __m256i) -> __m256i {
        I::dot(acc, w.u, _mm256_sign_epi8(x, w.w))
    }
}

/// Accumulates block `b` of `C` weight rows × `R` activation rows.
#[inline(always)]
unsafe fn blk32<I: Isa, F: Fmt32, const C: usize, const R: usize>(
    w: &[*const u8; C],
    b: usize,
    x: &[X; R],
    acc: &mut [[__m256; R]; C],
    accm: &mut [[f32; R]; C],
) {
    let mut xq = [_mm256_setzero_si256(); R];
    let mut dx = [0.0f32; R];
    for r in 0..R {
        xq[r] = loadu(x[r].qs.add(32 * b) as *const u8);
        dx[r] = *x[r].d.add(b);
    }
    for c in 0..C {
        let wb = F::decode(w[c].add(b * F::BYTES));
        for r in 0..R {
            let init = if F::OFF != 0 {
                _mm256_zextsi128_si256(_mm_cvtsi32_si128(-F::OFF * *x[r].isum.add(b)))
            } else {
                _mm256_setzero_si256()
            };
            let p = F::dot::<I>(init, &wb, xq[r]);
            acc[c][r] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(p),
                _mm256_set1_ps(wb.d * dx[r]),
                acc[c][r],
            );
            if F::MIN {
                accm[c][r] = wb.m.mul_add(*x[r].s.add(b), accm[c][r]);
            }
        }
    }
}

/// `C` weight rows × `R` activation rows of a 32-element format.
#[inline(always)]
unsafe fn mk32<I: Isa, F: Fmt32, const C: usize, const R: usize>(
    w: [*const u8; C],
    nb: usize,
    x: &[X; R],
) -> [[f32; R]; C] {
    let mut acc = [[_mm256_setzero_ps(); R]; C];
    let mut accm = [[0.0f32; R]; C];
    for b in 0..nb {
        blk32::<I, F, C, R>(&w, b, x, &mut acc, &mut accm);
    }
    let mut out = [[0.0f32; R]; C];
    for c in 0..C {
        for r in 0..R {
            out[c][r] = hsum_ps(acc[c][r]) + accm[c][r];
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 512-bit VNNI kernels for the 32-element formats: two blocks per register.
//
// Symmetric formats (Q4_0, Q5_0, Q8_0) decode to signed weights `w` and
// take the wide activations `q + 128` as the unsigned operand of
// `vpdpbusd`; the excess `128·Σw` is computed once per weight block (shared
// by every activation row) and preloaded, negated, into the accumulator, so
// each i32 lane holds the exact `Σ w·q`. Formats with a min (Q4_1, Q5_1)
// keep unsigned weights and signed activations.

/// Two decoded blocks.
struct W64 {
    w: __m512i,
    /// Signed formats: `−128·Σw` per i32 lane; otherwise zero.
    corr: __m512i,
    /// Weight scales, each repeated over its block's 8 lanes.
    d: __m512,
    /// Mins of the two blocks in lanes 0 and 1 (formats with a min).
    m: __m128,
}

trait Fmt32Z: Fmt32 {
    /// Signed weights (activations as `q + 128`).
    const SIGNED: bool;
    unsafe fn decode2(b: *const u8) -> W64;
}

/// Nibbles of the 16-byte runs at `p0` and `p1` → [lo0, hi0, lo1, hi1].
#[inline(always)]
unsafe fn nib2(p0: *const u8, p1: *const u8) -> __m512i {
    let t = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(p0 as *const __m128i)),
        _mm_loadu_si128(p1 as *const __m128i),
        1,
    );
    let z = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);
    let z = _mm512_and_si512(z, _mm512_set1_epi8(0xF));
    _mm512_shuffle_i64x2(z, z, 0b11_01_10_00)
}

/// Fifth bits of two blocks (u32 at `p0`, `p1`) → 0x10 per byte.
#[inline(always)]
unsafe fn fifth2(p0: *const u8, p1: *const u8) -> __m512i {
    let lo = (p0 as *const u32).read_unaligned() as u64;
    let hi = (p1 as *const u32).read_unaligned() as u64;
    _mm512_maskz_mov_epi8(_cvtu64_mask64(lo | (hi << 32)), _mm512_set1_epi8(0x10))
}

/// f16 values at `p0`, `p1` → lanes 0 and 1.
#[inline(always)]
unsafe fn pair_f16(p0: *const u8, p1: *const u8) -> __m128 {
    let h0 = (p0 as *const u16).read_unaligned() as i32;
    let h1 = (p1 as *const u16).read_unaligned() as i32;
    _mm_cvtph_ps(_mm_cvtsi32_si128(h0 | (h1 << 16)))
}

/// f16 scales at `p0`, `p1` → 8 lanes each.
#[inline(always)]
unsafe fn scales2(p0: *const u8, p1: *const u8) -> __m512 {
    let f = pair_f16(p0, p1);
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f))
}

/// `−128·Σw` per i32 lane.
#[inline(always)]
unsafe fn corr128(w: __m512i) -> __m512i {
    let z = _mm512_setzero_si512();
    _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, _mm512_set1_epi8(-128), w))
}

impl Fmt32Z for Q4_0 {
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn decode2(b: *const u8) -> W64 {
        let b1 = b.add(Self::BYTES);
        let w = _mm512_sub_epi8(nib2(b.add(2), b1.add(2)), _mm512_set1_epi8(8));
        W64 {
            w,
            corr: corr128(w),
            d: scales2(b, b1),
            m: _mm_setzero_ps(),
        }
    }
}

impl Fmt32Z for Q5_0 {
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn decode2(b: *const u8) -> W64 {
        let b1 = b.add(Self::BYTES);
        let u = _mm512_or_si512(nib2(b.add(6), b1.add(6)), fifth2(b.add(2), b1.add(2)));
        let w = _mm512_sub_epi8(u, _mm512_set1_epi8(16));
        W64 {
            w,
            corr: corr128(w),
            d: scales2(b, b1),
            m: _mm_setzero_ps(),
        }
    }
}

impl Fmt32Z for Q8_0 {
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn decode2(b: *const u8) -> W64 {
        let b1 = b.add(Self::BYTES);
        let w = _mm512_inserti64x4(_mm512_castsi256_si512(loadu(b.add(2))), loadu(b1.add(2)), 1);
        W64 {
            w,
            corr: corr128(w),
            d: scales2(b, b1),
            m: _mm_setzero_ps(),
        }
    }
}

impl Fmt32Z for Q4_1 {
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn decode2(b: *const u8) -> W64 {
        let b1 = b.add(Self::BYTES);
        W64 {
            w: nib2(b.add(4), b1.add(4)),
            corr: _mm512_setzero_si512(),
            d: scales2(b, b1),
            m: pair_f16(b.add(2), b1.add(2)),
        }
    }
}

impl Fmt32Z for Q5_1 {
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn decode2(b: *const u8) -> W64 {
        let b1 = b.add(Self::BYTES);
        W64 {
            w: _mm512_or_si512(nib2(b.add(8), b1.add(8)), fifth2(b.add(4), b1.add(4))),
            corr: _mm512_setzero_si512(),
            d: scales2(b, b1),
            m: pair_f16(b.add(2), b1.add(2)),
        }
    }
}

/// 512-bit `C` × `R` kernel (an odd last block goes through [`blk32`]).
#[inline(always)]
unsafe fn mk32z<F: Fmt32Z, const C: usize, const R: usize>(
    w: [*const u8; C],
    nb: usize,
    x: &[X; R],
) -> [[f32; R]; C] {
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    // Min terms Σ m·s, two blocks per step (lanes 0, 1).
    let mut accm2 = [[_mm_setzero_ps(); R]; C];
    let mut accm = [[0.0f32; R]; C];
    let mut b = 0;
    while b + 2 <= nb {
        let mut xq = [_mm512_setzero_si512(); R];
        let mut dx = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let src = if F::SIGNED {
                x[r].qu
            } else {
                x[r].qs as *const u8
            };
            xq[r] = _mm512_loadu_si512(src.add(32 * b) as *const _);
            dx[r] = _mm512_loadu_ps(x[r].dx8.add(8 * b));
        }
        for c in 0..C {
            let wb = F::decode2(w[c].add(b * F::BYTES));
            for r in 0..R {
                let p = if F::SIGNED {
                    _mm512_dpbusd_epi32(wb.corr, xq[r], wb.w)
                } else {
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), wb.w, xq[r])
                };
                acc[c][r] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(wb.d, dx[r]), acc[c][r]);
                if F::MIN {
                    let s2 = _mm_castpd_ps(_mm_load_sd(x[r].s.add(b) as *const f64));
                    accm2[c][r] = _mm_fmadd_ps(wb.m, s2, accm2[c][r]);
                }
            }
        }
        b += 2;
    }
    let mut tail = [[_mm256_setzero_ps(); R]; C];
    if b < nb {
        blk32::<Vnni, F, C, R>(&w, b, x, &mut tail, &mut accm);
    }
    let mut out = [[0.0f32; R]; C];
    for c in 0..C {
        for r in 0..R {
            let m2 = accm2[c][r];
            let m2 = _mm_cvtss_f32(_mm_add_ss(m2, _mm_movehdup_ps(m2)));
            out[c][r] = _mm512_reduce_add_ps(acc[c][r]) + hsum_ps(tail[c][r]) + accm[c][r] + m2;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// K-quants (256-element super-blocks, Q8_K activations).

/// Per-super-block scales: `sc` (i8 per 16-element sub-block) and the
/// min coefficients as i16 (`mn`), see `scalar::KUnpacked`.
struct KPrep {
    sc: __m128i,
    mn: __m256i,
    d: f32,
    dm: f32,
}

trait FmtK {
    const BYTES: usize;
    /// Min term uses `d` (Q3_K, Q6_K): integers combine before scaling.
    const SAME: bool;
    unsafe fn prep(b: *const u8) -> KPrep;
    /// Unsigned values of chunks `4h .. 4h+4` (32 elements each).
    unsafe fn half(b: *const u8, h: usize) -> [__m256i; 4];
}

struct Q2K;
struct Q3K;
struct Q4K;
struct Q5K;
struct Q6K;

#[inline(always)]
unsafe fn mask8(v: u8) -> __m256i {
    _mm256_set1_epi8(v as i8)
}

/// Bytes of `v` shifted right by `n` bits (a 16-bit shift; callers mask).
#[inline(always)]
unsafe fn srl16(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
}

impl FmtK for Q2K {
    const BYTES: usize = 84;
    const SAME: bool = false;
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> KPrep {
        let s = _mm_loadu_si128(b as *const __m128i);
        let m = _mm_set1_epi8(0xF);
        KPrep {
            sc: _mm_and_si128(s, m),
            mn: _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), m)),
            d: f16(b.add(80)),
            dm: f16(b.add(82)),
        }
    }
    #[inline(always)]
    unsafe fn half(b: *const u8, h: usize) -> [__m256i; 4] {
        let q = loadu(b.add(16 + 32 * h));
        let m = mask8(3);
        [
            _mm256_and_si256(q, m),
            _mm256_and_si256(_mm256_srli_epi16(q, 2), m),
            _mm256_and_si256(_mm256_srli_epi16(q, 4), m),
            _mm256_and_si256(_mm256_srli_epi16(q, 6), m),
        ]
    }
}

impl FmtK for Q3K {
    const BYTES: usize = 110;
    const SAME: bool = true;
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> KPrep {
        let sc = super::scalar::q3k_scales(std::slice::from_raw_parts(b.add(96), 12));
        let s = _mm_loadu_si128(sc.as_ptr() as *const __m128i);
        KPrep {
            sc: s,
            mn: _mm256_slli_epi16(_mm256_cvtepi8_epi16(s), 2),
            d: f16(b.add(108)),
            dm: 0.0,
        }
    }
    #[inline(always)]
    unsafe fn half(b: *const u8, h: usize) -> [__m256i; 4] {
        let q = loadu(b.add(32 + 32 * h));
        let hm = loadu(b);
        let m3 = mask8(3);
        let m4 = mask8(4);
        let mut out = [_mm256_setzero_si256(); 4];
        for (j, o) in out.iter_mut().enumerate() {
            let q2 = _mm256_and_si256(srl16(q, 2 * j), m3);
            // bit (4h + j) of each hmask byte, moved to bit 2.
            let c = 4 * h + j;
            let hb = if c >= 2 {
                _mm256_and_si256(srl16(hm, c - 2), m4)
            } else {
                _mm256_and_si256(_mm256_sll_epi16(hm, _mm_cvtsi32_si128((2 - c) as i32)), m4)
            };
            *o = _mm256_or_si256(q2, hb);
        }
        out
    }
}

/// The 8 (scale, min) pairs of Q4_K/Q5_K as 16 i8 scales (each twice, per
/// 16-element half) and 16 i16 mins.
#[inline(always)]
unsafe fn prep_k4(b: *const u8) -> KPrep {
    let q = std::slice::from_raw_parts(b.add(4), 12);
    let mut sc = [0u8; 16];
    let mut mn = [0i16; 16];
    for j in 0..8 {
        let (s, m) = super::scalar::scale_min_k4(j, q);
        sc[2 * j] = s;
        sc[2 * j + 1] = s;
        mn[2 * j] = m as i16;
        mn[2 * j + 1] = m as i16;
    }
    KPrep {
        sc: _mm_loadu_si128(sc.as_ptr() as *const __m128i),
        mn: _mm256_loadu_si256(mn.as_ptr() as *const __m256i),
        d: f16(b),
        dm: f16(b.add(2)),
    }
}

impl FmtK for Q4K {
    const BYTES: usize = 144;
    const SAME: bool = false;
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> KPrep {
        prep_k4(b)
    }
    #[inline(always)]
    unsafe fn half(b: *const u8, h: usize) -> [__m256i; 4] {
        let m = mask8(0xF);
        let q0 = loadu(b.add(16 + 64 * h));
        let q1 = loadu(b.add(16 + 64 * h + 32));
        [
            _mm256_and_si256(q0, m),
            _mm256_and_si256(_mm256_srli_epi16(q0, 4), m),
            _mm256_and_si256(q1, m),
            _mm256_and_si256(_mm256_srli_epi16(q1, 4), m),
        ]
    }
}

impl FmtK for Q5K {
    const BYTES: usize = 176;
    const SAME: bool = false;
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> KPrep {
        prep_k4(b)
    }
    #[inline(always)]
    unsafe fn half(b: *const u8, h: usize) -> [__m256i; 4] {
        let m = mask8(0xF);
        let m16 = mask8(0x10);
        let qh = loadu(b.add(16));
        let q0 = loadu(b.add(48 + 64 * h));
        let q1 = loadu(b.add(48 + 64 * h + 32));
        // bit c of qh → 0x10
        let hb = |c: usize| {
            if c >= 4 {
                _mm256_and_si256(srl16(qh, c - 4), m16)
            } else {
                _mm256_and_si256(_mm256_sll_epi16(qh, _mm_cvtsi32_si128((4 - c) as i32)), m16)
            }
        };
        let c0 = 4 * h;
        [
            _mm256_or_si256(_mm256_and_si256(q0, m), hb(c0)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q0, 4), m), hb(c0 + 1)),
            _mm256_or_si256(_mm256_and_si256(q1, m), hb(c0 + 2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), m), hb(c0 + 3)),
        ]
    }
}

impl FmtK for Q6K {
    const BYTES: usize = 210;
    const SAME: bool = true;
    #[inline(always)]
    unsafe fn prep(b: *const u8) -> KPrep {
        let s = _mm_loadu_si128(b.add(192) as *const __m128i);
        KPrep {
            sc: s,
            mn: _mm256_slli_epi16(_mm256_cvtepi8_epi16(s), 5),
            d: f16(b.add(208)),
            dm: 0.0,
        }
    }
    #[inline(always)]
    unsafe fn half(b: *const u8, h: usize) -> [__m256i; 4] {
        let m = mask8(0xF);
        let m30 = mask8(0x30);
        let l0 = loadu(b.add(64 * h));
        let l1 = loadu(b.add(64 * h + 32));
        let qh = loadu(b.add(128 + 32 * h));
        [
            _mm256_or_si256(
                _mm256_and_si256(l0, m),
                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(l1, m),
                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m),
                _mm256_and_si256(qh, m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m),
                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
            ),
        ]
    }
}

/// Scale vector of chunk `ch`: i16 lanes 0..8 = sc[2ch], 8..16 = sc[2ch+1].
#[inline(always)]
unsafe fn chunk_scales(sc: __m128i, ch: usize) -> __m256i {
    let a = (2 * ch) as i8;
    let b = (2 * ch + 1) as i8;
    let shuf = _mm_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, shuf))
}

/// `C` weight rows × `R` activation rows of a K-quant format.
#[inline(always)]
unsafe fn mkk<I: Isa, F: FmtK, const C: usize, const R: usize>(
    w: [*const u8; C],
    nb: usize,
    x: &[X; R],
) -> [[f32; R]; C] {
    let mut acc = [[_mm256_setzero_ps(); R]; C];
    for b in 0..nb {
        let mut dx = [0.0f32; R];
        let mut bs = [_mm256_setzero_si256(); R];
        for r in 0..R {
            dx[r] = *x[r].d.add(b);
            bs[r] = _mm256_loadu_si256(x[r].bs.add(16 * b) as *const __m256i);
        }
        for c in 0..C {
            let wb = w[c].add(b * F::BYTES);
            let p = F::prep(wb);
            let mut ai = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                let u = F::half(wb, h);
                for (j, u) in u.iter().enumerate() {
                    let ch = 4 * h + j;
                    let sc = chunk_scales(p.sc, ch);
                    for r in 0..R {
                        let xq = loadu(x[r].qs.add(256 * b + 32 * ch) as *const u8);
                        ai[r] = I::dot_scaled(ai[r], *u, xq, sc);
                    }
                }
            }
            for r in 0..R {
                let mins = _mm256_madd_epi16(bs[r], p.mn);
                if F::SAME {
                    let t = _mm256_cvtepi32_ps(_mm256_sub_epi32(ai[r], mins));
                    acc[c][r] = _mm256_fmadd_ps(t, _mm256_set1_ps(p.d * dx[r]), acc[c][r]);
                } else {
                    acc[c][r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(ai[r]),
                        _mm256_set1_ps(p.d * dx[r]),
                        acc[c][r],
                    );
                    acc[c][r] = _mm256_fnmadd_ps(
                        _mm256_cvtepi32_ps(mins),
                        _mm256_set1_ps(p.dm * dx[r]),
                        acc[c][r],
                    );
                }
            }
        }
    }
    let mut out = [[0.0f32; R]; C];
    for c in 0..C {
        for r in 0..R {
            out[c][r] = hsum_ps(acc[c][r]);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Panels: every weight row of a range against up to 4 activation rows.

/// A kernel over `C` weight rows × `R` activation rows.
trait Micro {
    unsafe fn run<const C: usize, const R: usize>(
        w: [*const u8; C],
        nb: usize,
        x: &[X; R],
    ) -> [[f32; R]; C];
}

struct M32<I, F>(std::marker::PhantomData<(I, F)>);
struct M32Z<F>(std::marker::PhantomData<F>);
struct MK<I, F>(std::marker::PhantomData<(I, F)>);

impl<I: Isa, F: Fmt32> Micro for M32<I, F> {
    #[inline(always)]
    unsafe fn run<const C: usize, const R: usize>(
        w: [*const u8; C],
        nb: usize,
        x: &[X; R],
    ) -> [[f32; R]; C] {
        mk32::<I, F, C, R>(w, nb, x)
    }
}

impl<F: Fmt32Z> Micro for M32Z<F> {
    #[inline(always)]
    unsafe fn run<const C: usize, const R: usize>(
        w: [*const u8; C],
        nb: usize,
        x: &[X; R],
    ) -> [[f32; R]; C] {
        mk32z::<F, C, R>(w, nb, x)
    }
}

impl<I: Isa, F: FmtK> Micro for MK<I, F> {
    #[inline(always)]
    unsafe fn run<const C: usize, const R: usize>(
        w: [*const u8; C],
        nb: usize,
        x: &[X; R],
    ) -> [[f32; R]; C] {
        mkk::<I, F, C, R>(w, nb, x)
    }
}

#[inline(always)]
unsafe fn panel_r<M: Micro, const R: usize>(
    w: *const u8,
    rows: usize,
    row_bytes: usize,
    nb: usize,
    x: &[X; R],
    y: *mut f32,
    ldy: usize,
) {
    let mut j = 0;
    if R == 1 {
        // Two weight rows per pass: independent accumulation chains.
        while j + 2 <= rows {
            let o = M::run::<2, R>([w.add(j * row_bytes), w.add((j + 1) * row_bytes)], nb, x);
            *y.add(j) = o[0][0];
            *y.add(j + 1) = o[1][0];
            j += 2;
        }
    }
    while j < rows {
        let o = M::run::<1, R>([w.add(j * row_bytes)], nb, x);
        for r in 0..R {
            *y.add(r * ldy + j) = o[0][r];
        }
        j += 1;
    }
}

#[inline(always)]
unsafe fn panel_m<M: Micro>(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    xs: &[ActRow],
    y: *mut f32,
    ldy: usize,
) {
    let rows = w.len() / row_bytes;
    let p = w.as_ptr();
    let x = |i: usize| X::new(&xs[i]);
    match xs.len() {
        1 => panel_r::<M, 1>(p, rows, row_bytes, nb, &[x(0)], y, ldy),
        2 => panel_r::<M, 2>(p, rows, row_bytes, nb, &[x(0), x(1)], y, ldy),
        3 => panel_r::<M, 3>(p, rows, row_bytes, nb, &[x(0), x(1), x(2)], y, ldy),
        4 => panel_r::<M, 4>(p, rows, row_bytes, nb, &[x(0), x(1), x(2), x(3)], y, ldy),
        n => unreachable!("panel of {n} activation rows"),
    }
}

#[inline(always)]
unsafe fn panel_isa<I: Isa>(
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    xs: &[ActRow],
    y: *mut f32,
    ldy: usize,
) {
    let nb = row_bytes / format.block().1;
    match format {
        WeightFormat::Q4_0 => panel_m::<M32<I, Q4_0>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q4_1 => panel_m::<M32<I, Q4_1>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q5_0 => panel_m::<M32<I, Q5_0>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q5_1 => panel_m::<M32<I, Q5_1>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q8_0 => panel_m::<M32<I, Q8_0>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q2K => panel_m::<MK<I, Q2K>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q3K => panel_m::<MK<I, Q3K>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q4K => panel_m::<MK<I, Q4K>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q5K => panel_m::<MK<I, Q5K>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q6K => panel_m::<MK<I, Q6K>>(w, row_bytes, nb, xs, y, ldy),
        f => unreachable!("{} is not a GGML block format", f.name()),
    }
}

/// AVX2 panel: `y[r·ldy + j] = w[j] · xs[r]` for every weight row `j` of
/// `w` (`row_bytes` each) and up to 4 activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `y` must be valid for writes at
/// `r·ldy + j` for every such pair, and the activation rows must hold
/// `row_bytes / block bytes` blocks of the format's activation kind.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn panel_avx2(
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    xs: &[ActRow],
    y: *mut f32,
    ldy: usize,
) {
    panel_isa::<Avx2>(format, w, row_bytes, xs, y, ldy)
}

/// AVX-512 VNNI panel (256-bit VNNI instructions on AVX512VL); as
/// [`panel_avx2`].
///
/// # Safety
/// As [`panel_avx2`], plus AVX512F/BW/VL and AVX512-VNNI.
/// The 32-element formats use 512-bit registers (two blocks each) and
/// need the wide Q8_0 activations; K-quants use 256-bit VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn panel_vnni(
    format: WeightFormat,
    w: &[u8],
    row_bytes: usize,
    xs: &[ActRow],
    y: *mut f32,
    ldy: usize,
) {
    let nb = row_bytes / format.block().1;
    match format {
        WeightFormat::Q4_0 => panel_m::<M32Z<Q4_0>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q4_1 => panel_m::<M32Z<Q4_1>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q5_0 => panel_m::<M32Z<Q5_0>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q5_1 => panel_m::<M32Z<Q5_1>>(w, row_bytes, nb, xs, y, ldy),
        WeightFormat::Q8_0 => panel_m::<M32Z<Q8_0>>(w, row_bytes, nb, xs, y, ldy),
        _ => panel_isa::<Vnni>(format, w, row_bytes, xs, y, ldy),
    }
}

// ---------------------------------------------------------------------------
// Activation quantization, bit-identical to `q8::quantize_row`.

/// AVX2 quantization of one activation row.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_row_avx2(kind: ActKind, x: &[f32], out: RowOut) {
    let qk = kind.block();
    let nb = x.len() / qk;
    let sign = _mm256_set1_ps(-0.0);
    for b in 0..nb {
        let xp = x.as_ptr().add(b * qk);
        let mut mx = _mm256_setzero_ps();
        for i in (0..qk).step_by(8) {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(xp.add(i))));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let (d, id) = scales(_mm_cvtss_f32(m4));
        out.d[b] = d;
        let vid = _mm256_set1_ps(id);
        let qp = out.qs.as_mut_ptr().add(b * qk);
        let mut tot = _mm256_setzero_si256();
        for i in (0..qk).step_by(32) {
            let mut v = [_mm256_setzero_si256(); 4];
            for (t, v) in v.iter_mut().enumerate() {
                let f = _mm256_mul_ps(_mm256_loadu_ps(xp.add(i + 8 * t)), vid);
                let f = _mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                *v = _mm256_cvtps_epi32(f);
            }
            if kind == ActKind::Q8K {
                // sums of 16 values: v0+v1 and v2+v3
                for h in 0..2 {
                    let s = hsum_epi32(_mm256_add_epi32(v[2 * h], v[2 * h + 1]));
                    out.bsums[(b * qk + i) / 16 + h] = s as i16;
                }
            } else {
                tot = _mm256_add_epi32(
                    tot,
                    _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])),
                );
            }
            // i32 → i8, restoring element order after the lane-wise packs.
            let p16a = _mm256_packs_epi32(v[0], v[1]);
            let p16b = _mm256_packs_epi32(v[2], v[3]);
            let p8 = _mm256_packs_epi16(p16a, p16b);
            let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(qp.add(i) as *mut __m256i, p8);
        }
        if kind == ActKind::Q8_0 {
            let isum = hsum_epi32(tot);
            out.isum[b] = isum;
            out.s[b] = d * isum as f32;
        }
    }
}
