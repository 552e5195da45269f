//! aarch64 NEON kernels for the integer path of metal-marlin formats
//! (int2/3/4/8 sym and asym, fp4, mxfp4) over the repacked blocks of
//! [`MmPrepared`] (layout in `mm.rs`); the float path (nf4, fp8) uses the
//! scalar twin on aarch64.
//!
//! A block decodes to two `int8x16_t` halves (elements 0..16, 16..32):
//! 2/3/4-bit codes are spread to one byte each and mapped through the
//! format's 16-entry table with `vqtbl1q_s8`; 8-bit codes are stored as
//! signed bytes already. Products with the Q8_0 activation bytes are
//! widened by `vmull_s8` and pairwise-accumulated into i32 (`vpadalq_s16`),
//! giving exactly the integer of [`vec_dot_int_ref`] (plus `o_g·isum`),
//! combined with the scales by the same f32 expression, so results match
//! the scalar twin bit for bit (a test checks it). Tested under qemu
//! user-mode emulation (`scripts/test-aarch64.sh`): correctness, not speed.
//!
//! [`vec_dot_int_ref`]: super::mm::vec_dot_int_ref

use std::arch::aarch64::*;

use super::mm::{block_bytes, MmPrepared, MmRows, BLOCK};

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

/// `out[r·(j1−j0) + j−j0] = w[j] · xs[r]` for Q8_0 activation rows (the
/// caller, `mm::panel`, has checked the shapes).
pub(super) fn panel(p: &MmPrepared, j0: usize, j1: usize, xs: MmRows, out: &mut [f32]) {
    let MmRows::Q8(x) = xs else {
        unreachable!("float formats use the scalar kernels on aarch64")
    };
    let rows = j1 - j0;
    let bb = block_bytes(p.bits);
    // SAFETY: NEON is baseline on aarch64; every block and activation
    // offset is inside the slices (shapes checked by `mm::panel`).
    unsafe {
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
}
