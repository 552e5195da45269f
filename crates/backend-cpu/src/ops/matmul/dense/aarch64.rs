//! aarch64 NEON registers for the dense kernels (`dense.rs`), 4 lanes.
//!
//! Widening loads, all through byte loads (no alignment assumed): F16 with
//! `fcvtl` (inline assembly: Rust's f16 NEON intrinsics are unstable);
//! BF16 with `ushll #16` (`vshll_n_u16`, the value as the top half of a
//! 32-bit lane); F32 as is. All three are exact. Tested under qemu
//! user-mode emulation (`scripts/test-aarch64.sh`): correctness, not speed.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{run_generic, Job, Lanes};

pub(crate) struct Neon;

impl Lanes for Neon {
    type V = float32x4_t;
    const L: usize = 4;
    const WIDE: bool = true;
    #[inline(always)]
    unsafe fn splat(v: f32) -> float32x4_t {
        vdupq_n_f32(v)
    }
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn f32s(p: *const u8) -> float32x4_t {
        vreinterpretq_f32_u8(vld1q_u8(p))
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> float32x4_t {
        let h = vreinterpret_u16_u8(vld1_u8(p));
        let f: float32x4_t;
        asm!("fcvtl {f:v}.4s, {h:v}.4h", f = out(vreg) f, h = in(vreg) h,
             options(pure, nomem, nostack, preserves_flags));
        f
    }
    #[inline(always)]
    unsafe fn bf16s(p: *const u8) -> float32x4_t {
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(vld1_u8(p))))
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, acc: float32x4_t) -> float32x4_t {
        vfmaq_f32(acc, a, b)
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vaddq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn sum(v: float32x4_t) -> f32 {
        // sum4's arithmetic, so every output sums its lanes the same way.
        Self::sum4(v, v, v, v)[0]
    }
    #[inline(always)]
    unsafe fn sum4(a: float32x4_t, b: float32x4_t, c: float32x4_t, d: float32x4_t) -> [f32; 4] {
        let s = vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d));
        std::mem::transmute::<float32x4_t, [f32; 4]>(s)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        vst1q_u8(p.cast(), vreinterpretq_u8_f32(v))
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
}

/// NEON is baseline on aarch64; `job` as `super::run` asserts.
pub(super) fn run_neon(job: Job) {
    // SAFETY: NEON is always available on aarch64; the caller asserted the
    // shapes.
    unsafe { run_generic::<Neon>(job) }
}
