//! The SIMD vocabulary of the dense kernels (and of paged attention):
//! [`Lanes`], one register of f32 lanes with the widening loads, FMA and
//! the one lane reduction every kernel uses; [`Elem`], a stored element
//! type (F32, F16, BF16); [`Portable`], eight lanes in an array for the
//! compiler to vectorize. The ISA implementations are in `x86.rs` and
//! `aarch64.rs`.

/// One SIMD register of f32 lanes, and the loads that widen stored values
/// into it.
pub(crate) trait Lanes {
    type V: Copy;
    /// f32 lanes per register.
    const L: usize;
    /// 32 architectural registers (room for 6 × 4 accumulator tiles).
    const WIDE: bool;
    unsafe fn zero() -> Self::V;
    /// Every lane `v`.
    unsafe fn splat(v: f32) -> Self::V;
    /// `L` little-endian f32 / f16 / bf16 values at `p`.
    unsafe fn f32s(p: *const u8) -> Self::V;
    unsafe fn f16s(p: *const u8) -> Self::V;
    unsafe fn bf16s(p: *const u8) -> Self::V;
    /// `acc + a·b`.
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes, with exactly the arithmetic of one lane of
    /// [`Lanes::sum4`] (so an output's value does not depend on which
    /// of the two computed it).
    unsafe fn sum(v: Self::V) -> f32;
    /// The sums of four registers (fewer shuffles than four [`Lanes::sum`]).
    unsafe fn sum4(a: Self::V, b: Self::V, c: Self::V, d: Self::V) -> [f32; 4];
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Hints that the cache line at `p` (any address) will be read soon.
    unsafe fn prefetch(p: *const u8);
}

/// A stored element type.
pub(crate) trait Elem {
    const BYTES: usize;
    unsafe fn load<S: Lanes>(p: *const u8) -> S::V;
    /// One value (the tails of rows that are not whole registers).
    unsafe fn one(p: *const u8) -> f32;
}

pub(crate) struct F32;
pub(crate) struct F16;
pub(crate) struct Bf16;

impl Elem for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load<S: Lanes>(p: *const u8) -> S::V {
        S::f32s(p)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        f32::from_le_bytes(p.cast::<[u8; 4]>().read())
    }
}

impl Elem for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load<S: Lanes>(p: *const u8) -> S::V {
        S::f16s(p)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        half::f16::from_bits(u16::from_le_bytes(p.cast::<[u8; 2]>().read())).to_f32()
    }
}

impl Elem for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load<S: Lanes>(p: *const u8) -> S::V {
        S::bf16s(p)
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> f32 {
        f32::from_bits((u16::from_le_bytes(p.cast::<[u8; 2]>().read()) as u32) << 16)
    }
}

/// Eight f32 lanes in an array: the portable level, which the compiler
/// vectorizes for the baseline ISA.
pub(crate) struct Portable;

impl Lanes for Portable {
    type V = [f32; 8];
    const L: usize = 8;
    const WIDE: bool = false;
    #[inline(always)]
    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> [f32; 8] {
        [v; 8]
    }
    #[inline(always)]
    unsafe fn f32s(p: *const u8) -> [f32; 8] {
        std::array::from_fn(|i| F32::one(p.add(4 * i)))
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> [f32; 8] {
        std::array::from_fn(|i| F16::one(p.add(2 * i)))
    }
    #[inline(always)]
    unsafe fn bf16s(p: *const u8) -> [f32; 8] {
        std::array::from_fn(|i| Bf16::one(p.add(2 * i)))
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; 8], b: [f32; 8], acc: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| acc[i] + a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sum(v: [f32; 8]) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn sum4(a: [f32; 8], b: [f32; 8], c: [f32; 8], d: [f32; 8]) -> [f32; 4] {
        [Self::sum(a), Self::sum(b), Self::sum(c), Self::sum(d)]
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        p.cast::<[f32; 8]>().write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn prefetch(_: *const u8) {}
}
