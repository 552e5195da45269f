//! aarch64 NEON kernels for the 32-element block formats (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0); K-quants use the scalar kernels.
//!
//! Weights are decoded to signed bytes `u − off`, multiplied with the
//! activation bytes by `vmull_s8` and pairwise-accumulated into i32 lanes
//! (`vpadalq_s16`): the exact integer sum of the scalar kernel, combined
//! with the scales by the same f32 expression, so results match
//! [`super::scalar::vec_dot`] bit for bit (a test checks it). Tested under
//! qemu user-mode emulation (`scripts/test-aarch64.sh`): correctness, not
//! speed.

use std::arch::aarch64::*;

use mm_core::WeightFormat;

use super::q8::ActRow;
use super::scalar::{self, f16_to_f32, has_min};

/// Signed weight bytes (`u − off`) of one block: elements 0..16, 16..32.
#[inline(always)]
unsafe fn decode(format: WeightFormat, b: *const u8) -> (int8x16_t, int8x16_t) {
    let nib = |p: *const u8| {
        let q = vld1q_u8(p);
        (vandq_u8(q, vdupq_n_u8(0xF)), vshrq_n_u8::<4>(q))
    };
    let fifth = |p: *const u8| {
        // bit j of the u32 at p → 0x10 in byte j.
        let bits = (p as *const u32).read_unaligned();
        let mut lo = [0u8; 16];
        let mut hi = [0u8; 16];
        for j in 0..16 {
            lo[j] = (((bits >> j) & 1) << 4) as u8;
            hi[j] = (((bits >> (j + 16)) & 1) << 4) as u8;
        }
        (vld1q_u8(lo.as_ptr()), vld1q_u8(hi.as_ptr()))
    };
    match format {
        WeightFormat::Q4_0 => {
            let (l, h) = nib(b.add(2));
            let off = vdupq_n_s8(8);
            (
                vsubq_s8(vreinterpretq_s8_u8(l), off),
                vsubq_s8(vreinterpretq_s8_u8(h), off),
            )
        }
        WeightFormat::Q4_1 => {
            let (l, h) = nib(b.add(4));
            (vreinterpretq_s8_u8(l), vreinterpretq_s8_u8(h))
        }
        WeightFormat::Q5_0 => {
            let (l, h) = nib(b.add(6));
            let (fl, fh) = fifth(b.add(2));
            let off = vdupq_n_s8(16);
            (
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l, fl)), off),
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(h, fh)), off),
            )
        }
        WeightFormat::Q5_1 => {
            let (l, h) = nib(b.add(8));
            let (fl, fh) = fifth(b.add(4));
            (
                vreinterpretq_s8_u8(vorrq_u8(l, fl)),
                vreinterpretq_s8_u8(vorrq_u8(h, fh)),
            )
        }
        WeightFormat::Q8_0 => (
            vld1q_s8(b.add(2) as *const i8),
            vld1q_s8(b.add(18) as *const i8),
        ),
        f => unreachable!("{} is not a 32-element block format", f.name()),
    }
}

#[inline(always)]
unsafe fn dot16(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    let hi = vmull_s8(vget_high_s8(w), vget_high_s8(x));
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// One weight row · one activation row of a 32-element format.
#[inline(always)]
unsafe fn vec_dot32(format: WeightFormat, w: &[u8], x: &ActRow) -> f32 {
    let bb = format.block().1;
    let nb = w.len() / bb;
    let min = has_min(format);
    let mut sum = 0.0f32;
    for b in 0..nb {
        let blk = w.as_ptr().add(b * bb);
        let (wl, wh) = decode(format, blk);
        let xp = x.qs.as_ptr().add(32 * b);
        let acc = dot16(vdupq_n_s32(0), wl, vld1q_s8(xp));
        let acc = dot16(acc, wh, vld1q_s8(xp.add(16)));
        let int = vaddvq_s32(acc);
        let d = f16_to_f32(&w[b * bb..]);
        sum += (d * x.d[b]) * int as f32;
        if min {
            sum += f16_to_f32(&w[b * bb + 2..]) * x.s[b];
        }
    }
    sum
}

/// NEON panel: `out[r·rows + j] = w[j] · xs[r]` (shapes checked by the
/// caller, `super::panel`).
pub fn panel(format: WeightFormat, w: &[u8], row_bytes: usize, xs: &[ActRow], out: &mut [f32]) {
    let rows = w.len() / row_bytes;
    let neon = matches!(
        format,
        WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1
            | WeightFormat::Q8_0
    );
    for (r, x) in xs.iter().enumerate() {
        for (j, wr) in w.chunks_exact(row_bytes).enumerate() {
            out[r * rows + j] = if neon {
                // SAFETY: NEON is baseline on aarch64; `wr` holds whole
                // blocks and `x` as many activation blocks (checked by the
                // caller).
                unsafe { vec_dot32(format, wr, x) }
            } else {
                scalar::vec_dot(format, wr, x)
            };
        }
    }
}
