//! aarch64 NEON kernels for metal-marlin formats over the repacked blocks
//! of [`MmPrepared`] (layout in `mm.rs`): the integer path (int2/3/4/8 sym
//! and asym, fp4, mxfp4) and the float path (nf4, fp8-e4m3, fp8-e5m2).
//!
//! Integer path: a block decodes to two `int8x16_t` halves (elements 0..16,
//! 16..32): 2/3/4-bit codes are spread to one byte each and mapped through
//! the format's 16-entry table with `vqtbl1q_s8`; 8-bit codes are stored as
//! signed bytes already. Products with the Q8_0 activation bytes are
//! widened by `vmull_s8` and pairwise-accumulated into i32 (`vpadalq_s16`),
//! giving exactly the integer of [`vec_dot_int_ref`] (plus `o_g·isum`),
//! combined with the scales by the same f32 expression, so results match
//! the scalar twin bit for bit.
//!
//! Float path: 4 codes at a time become f32 lanes — nf4 through the 64
//! bytes of its f32 level table (`vqtbl4q_u8`, byte `4c + k` of lane `c`);
//! fp8 by shifting the 7 magnitude bits into an f32's exponent/mantissa and
//! scaling by 2^120 (E4M3) or 2^112 (E5M2) — exact, subnormals included —
//! fixing NaN/∞ codes with a compare and adding the sign bit (as the AVX2
//! kernel, `x86_mm.rs`); then FMA with the f32 activations into two
//! accumulators per row, scaled by `d_g` per group. Exact up to the order
//! of the f32 additions (the scalar twin is [`vec_dot_float_ref`]).
//!
//! Tested under qemu user-mode emulation (`scripts/test-aarch64.sh`): the
//! property tests compare every kernel with its scalar twin; that checks
//! correctness, not speed (not measured on ARM hardware).
//!
//! [`vec_dot_int_ref`]: super::mm::vec_dot_int_ref
//! [`vec_dot_float_ref`]: super::mm::vec_dot_float_ref

use std::arch::aarch64::*;

use super::mm::{block_bytes, MmPrepared, MmRows, Path, BLOCK};
use super::q8::ActRow;

/// 8 bytes of 2-bit fields → (elements 0..16, 16..32), one per byte.
#[inline(always)]
unsafe fn crumbs(b: *const u8) -> (uint8x16_t, uint8x16_t) {
    let d = vld1_u8(b);
    let m = vdup_n_u8(3);
    (
        vcombine_u8(vand_u8(d, m), vand_u8(vshr_n_u8::<2>(d), m)),
        vcombine_u8(vand_u8(vshr_n_u8::<4>(d), m), vshr_n_u8::<6>(d)),
    )
}

/// Bits 0..16 and 16..32 of the u32 at `b` → 4 in the matching byte.
#[inline(always)]
unsafe fn high_bits(b: *const u8) -> (uint8x16_t, uint8x16_t) {
    const SEL: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let sel = vld1q_u8(SEL.as_ptr());
    let four = vdupq_n_u8(4);
    let h = |lo: u8, hi: u8| {
        vandq_u8(
            vtstq_u8(vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi)), sel),
            four,
        )
    };
    (h(*b, *b.add(1)), h(*b.add(2), *b.add(3)))
}

/// The signed bytes of one repacked block of `bits`-bit codes.
#[inline(always)]
unsafe fn decode(bits: u32, b: *const u8, lut: int8x16_t) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = match bits {
        8 => return (vld1q_s8(b as *const i8), vld1q_s8(b.add(16) as *const i8)),
        4 => {
            let q = vld1q_u8(b);
            (vandq_u8(q, vdupq_n_u8(0xF)), vshrq_n_u8::<4>(q))
        }
        3 => {
            let (l, h) = crumbs(b);
            let (hl, hh) = high_bits(b.add(8));
            (vorrq_u8(l, hl), vorrq_u8(h, hh))
        }
        _ => crumbs(b),
    };
    (vqtbl1q_s8(lut, lo), vqtbl1q_s8(lut, hi))
}

#[inline(always)]
unsafe fn dot16(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    let hi = vmull_s8(vget_high_s8(w), vget_high_s8(x));
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// `out[r·(j1−j0) + j−j0] = w[j] · xs[r]`: Q8_0 activation rows for the
/// integer path, f32 rows for the float path (the caller, `mm::panel`, has
/// checked the shapes and that the rows match the path).
pub(super) fn panel(p: &MmPrepared, j0: usize, j1: usize, xs: MmRows, out: &mut [f32]) {
    // SAFETY: NEON is baseline on aarch64; every block and activation
    // offset is inside the slices (shapes checked by `mm::panel`).
    unsafe {
        match xs {
            MmRows::Q8(x) => int_panel(p, j0, j1, x, out),
            MmRows::F32(x) => match (p.path, x.len()) {
                (Path::Nf4, n) => float_rows::<NF4>(p, j0, j1, x, n, out),
                (Path::E4M3, n) => float_rows::<E4M3>(p, j0, j1, x, n, out),
                (_, n) => float_rows::<E5M2>(p, j0, j1, x, n, out),
            },
        }
    }
}

#[inline(always)]
unsafe fn int_panel(p: &MmPrepared, j0: usize, j1: usize, x: &[ActRow], out: &mut [f32]) {
    let rows = j1 - j0;
    let bb = block_bytes(p.bits);
    let lut = vld1q_s8(p.lut.as_ptr());
    for j in j0..j1 {
        let w = p.row(j).as_ptr();
        let mut sums = [0.0f32; 4];
        for g in 0..p.groups {
            let d = p.scales[j * p.groups + g];
            let off = p.offset(j, g);
            for b in g * p.group_blocks..(g + 1) * p.group_blocks {
                let (c0, c1) = decode(p.bits, w.add(b * bb), lut);
                for (r, xr) in x.iter().enumerate() {
                    let q = xr.qs.as_ptr().add(b * BLOCK);
                    let acc = dot16(vdupq_n_s32(0), c0, vld1q_s8(q));
                    let acc = dot16(acc, c1, vld1q_s8(q.add(16)));
                    let int = vaddvq_s32(acc) + off * xr.isum[b];
                    sums[r] += (d * xr.d[b]) * int as f32;
                }
            }
        }
        for r in 0..x.len() {
            out[r * rows + j - j0] = sums[r];
        }
    }
}

/// Float-path decoders (the `K` of [`float_kernel`]).
const NF4: u8 = 0;
const E4M3: u8 = 1;
const E5M2: u8 = 2;

#[inline(always)]
unsafe fn float_rows<const K: u8>(
    p: &MmPrepared,
    j0: usize,
    j1: usize,
    x: &[&[f32]],
    n: usize,
    out: &mut [f32],
) {
    match n {
        1 => float_kernel::<K, 1>(p, j0, j1, x, out),
        2 => float_kernel::<K, 2>(p, j0, j1, x, out),
        3 => float_kernel::<K, 3>(p, j0, j1, x, out),
        _ => float_kernel::<K, 4>(p, j0, j1, x, out),
    }
}

/// 4 FP8 codes (one per u32 lane) → f32: E4M3 (`K == E4M3`) or E5M2.
#[inline(always)]
unsafe fn fp8x4<const K: u8>(b: uint32x4_t) -> float32x4_t {
    let mag = vandq_u32(b, vdupq_n_u32(0x7f));
    let sign = vshlq_n_u32::<24>(vandq_u32(b, vdupq_n_u32(0x80)));
    let f = if K == E4M3 {
        let f = vmulq_f32(
            vreinterpretq_f32_u32(vshlq_n_u32::<20>(mag)),
            vdupq_n_f32(f32::from_bits((127 + 120) << 23)),
        );
        // S.1111.111 is NaN.
        let nan = vceqq_u32(mag, vdupq_n_u32(0x7f));
        vorrq_u32(vreinterpretq_u32_f32(f), nan)
    } else {
        let bits = vshlq_n_u32::<21>(mag);
        let f = vmulq_f32(
            vreinterpretq_f32_u32(bits),
            vdupq_n_f32(f32::from_bits((127 + 112) << 23)),
        );
        // Exponent 31: ∞ (mantissa 0) or NaN.
        let e = vdupq_n_u32(0x7c);
        let special = vceqq_u32(vandq_u32(mag, e), e);
        let inf_nan = vorrq_u32(bits, vdupq_n_u32(0x7f80_0000));
        vbslq_u32(special, inf_nan, vreinterpretq_u32_f32(f))
    };
    vreinterpretq_f32_u32(vorrq_u32(f, sign))
}

/// 16 FP8 codes → 4 × 4 f32 lanes, in order.
#[inline(always)]
unsafe fn fp8x16<const K: u8>(v: uint8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_u8(vget_low_u8(v));
    let hi = vmovl_high_u8(v);
    [
        fp8x4::<K>(vmovl_u16(vget_low_u16(lo))),
        fp8x4::<K>(vmovl_high_u16(lo)),
        fp8x4::<K>(vmovl_u16(vget_low_u16(hi))),
        fp8x4::<K>(vmovl_high_u16(hi)),
    ]
}

/// 16 NF4 codes (one per byte) → 4 × 4 f32 levels, in order: lane `i` of
/// quarter `t` gathers bytes `4c + 0..4` of the level table, `c` = code
/// `4t + i`.
#[inline(always)]
unsafe fn nf4x16(v: uint8x16_t, levels: uint8x16x4_t) -> [float32x4_t; 4] {
    // Byte k of each lane: k (added to 4c).
    const K4: [u8; 16] = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3];
    // Quarter t: code 4t + i repeated in the 4 bytes of lane i.
    const DUP: [[u8; 16]; 4] = {
        let mut d = [[0u8; 16]; 4];
        let mut b = 0;
        while b < 64 {
            d[b / 16][b % 16] = (b / 4) as u8;
            b += 1;
        }
        d
    };
    let c4 = vshlq_n_u8::<2>(v);
    let k4 = vld1q_u8(K4.as_ptr());
    let quarter = |t: usize| {
        let idx = vorrq_u8(vqtbl1q_u8(c4, vld1q_u8(DUP[t].as_ptr())), k4);
        vreinterpretq_f32_u8(vqtbl4q_u8(levels, idx))
    };
    [quarter(0), quarter(1), quarter(2), quarter(3)]
}

/// The 32 values (before the group scale) of one float-path block.
#[inline(always)]
unsafe fn decode_f32<const K: u8>(b: *const u8, levels: uint8x16x4_t) -> [[float32x4_t; 4]; 2] {
    if K == NF4 {
        let q = vld1q_u8(b);
        [
            nf4x16(vandq_u8(q, vdupq_n_u8(0xF)), levels),
            nf4x16(vshrq_n_u8::<4>(q), levels),
        ]
    } else {
        [fp8x16::<K>(vld1q_u8(b)), fp8x16::<K>(vld1q_u8(b.add(16)))]
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
    let table = mm_quant::mm::codec::NF4_LEVELS;
    let lp = table.as_ptr() as *const u8;
    let levels = uint8x16x4_t(
        vld1q_u8(lp),
        vld1q_u8(lp.add(16)),
        vld1q_u8(lp.add(32)),
        vld1q_u8(lp.add(48)),
    );
    for j in j0..j1 {
        let w = p.row(j).as_ptr();
        let mut acc = [vdupq_n_f32(0.0); NR];
        for g in 0..p.groups {
            let mut ga = [vdupq_n_f32(0.0); NR];
            let mut gb = [vdupq_n_f32(0.0); NR];
            for b in g * p.group_blocks..(g + 1) * p.group_blocks {
                let v = decode_f32::<K>(w.add(b * bb), levels);
                for r in 0..NR {
                    let xp = x[r].as_ptr().add(b * BLOCK);
                    for (h, vh) in v.iter().enumerate() {
                        let xh = xp.add(16 * h);
                        ga[r] = vfmaq_f32(ga[r], vh[0], vld1q_f32(xh));
                        gb[r] = vfmaq_f32(gb[r], vh[1], vld1q_f32(xh.add(4)));
                        ga[r] = vfmaq_f32(ga[r], vh[2], vld1q_f32(xh.add(8)));
                        gb[r] = vfmaq_f32(gb[r], vh[3], vld1q_f32(xh.add(12)));
                    }
                }
            }
            let d = vdupq_n_f32(p.scales[j * p.groups + g]);
            for r in 0..NR {
                acc[r] = vfmaq_f32(acc[r], vaddq_f32(ga[r], gb[r]), d);
            }
        }
        for r in 0..NR {
            out[r * rows + j - j0] = vaddvq_f32(acc[r]);
        }
    }
}
