//! x86-64 registers for the dense kernels (`dense.rs`): AVX2 (8 lanes,
//! F16C) and AVX-512F (16 lanes), chosen at run time.
//!
//! Widening loads, all unaligned: F16 with `vcvtph2ps` from 16 (AVX2) or
//! 32 (AVX-512) bytes; BF16 zero-extended to 32-bit lanes (`vpmovzxwd`)
//! and shifted left by 16; F32 as is. All three are exact.

use std::arch::x86_64::*;

use super::{run_generic, Job, Lanes};

pub(crate) struct Avx2;
pub(crate) struct Avx512;

impl Lanes for Avx2 {
    type V = __m256;
    const L: usize = 8;
    const WIDE: bool = false;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn f32s(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p.cast())
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn bf16s(p: *const u8) -> __m256 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, acc)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sum(v: __m256) -> f32 {
        // sum4's arithmetic, so every output sums its lanes the same way.
        Self::sum4(v, v, v, v)[0]
    }
    #[inline(always)]
    unsafe fn sum4(a: __m256, b: __m256, c: __m256, d: __m256) -> [f32; 4] {
        let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        let s = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
        std::mem::transmute::<__m128, [f32; 4]>(s)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }
}

impl Lanes for Avx512 {
    type V = __m512;
    const L: usize = 16;
    const WIDE: bool = true;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn f32s(p: *const u8) -> __m512 {
        _mm512_loadu_ps(p.cast())
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn bf16s(p: *const u8) -> __m512 {
        let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, acc)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sum(v: __m512) -> f32 {
        Self::sum4(v, v, v, v)[0]
    }
    #[inline(always)]
    unsafe fn sum4(a: __m512, b: __m512, c: __m512, d: __m512) -> [f32; 4] {
        let half = |v: __m512| {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            _mm256_add_ps(_mm512_castps512_ps256(v), hi)
        };
        Avx2::sum4(half(a), half(b), half(c), half(d))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }
}

/// # Safety
/// AVX2, FMA and F16C must be available; `job` as `super::run` asserts.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn run_avx2(job: Job) {
    run_generic::<Avx2>(job)
}

/// # Safety
/// AVX-512F (and AVX2, FMA, F16C) must be available; `job` as
/// `super::run` asserts.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn run_avx512(job: Job) {
    run_generic::<Avx512>(job)
}
