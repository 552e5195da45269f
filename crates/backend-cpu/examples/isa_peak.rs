//! Peak multiply-add rate of one core for the two prefill arithmetics:
//! f32 FMA (`vfmadd231ps`, the dense tiles and f32 panels) and 16-bit
//! integer `vpmaddwd` + `vpaddd` (`qmatmul/il16.rs`), each as 12
//! independent register-only chains (no memory traffic), one thread.
//! The ceilings the kernels' efficiency is quoted against.
//! `cargo run --release -p mm-backend-cpu --example isa_peak` (x86 with
//! AVX2 and FMA; prints a note elsewhere).

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    const ITERS: usize = 50_000_000;

    /// G multiply-adds/s of 12 FMA chains (8 per instruction).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma() -> f64 {
        let (b, c) = (
            black_box(_mm256_set1_ps(0.5)),
            black_box(_mm256_set1_ps(0.25)),
        );
        let mut a = [_mm256_setzero_ps(); 12];
        let t = Instant::now();
        for _ in 0..ITERS {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, b, c);
            }
        }
        black_box(a);
        (ITERS * 12 * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// G multiply-adds/s of 12 `vpmaddwd` + `vpaddd` chains (16 each).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn maddwd() -> f64 {
        let w = black_box(_mm256_set1_epi16(3));
        let mut a: [__m256i; 12] = std::array::from_fn(|i| black_box(_mm256_set1_epi16(i as i16)));
        let t = Instant::now();
        for _ in 0..ITERS {
            // Each product depends on the chain's last sum, so nothing can
            // be hoisted out of the loop (wrapping integers: values are
            // irrelevant).
            for v in a.iter_mut() {
                *v = _mm256_add_epi32(*v, _mm256_madd_epi16(*v, w));
            }
        }
        black_box(a);
        (ITERS * 12 * 16) as f64 / t.elapsed().as_secs_f64() / 1e9
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        for _ in 0..3 {
            // SAFETY: AVX2 and FMA detected above.
            let (f, m) = unsafe { (x86::fma(), x86::maddwd()) };
            println!(
                "one core: f32 FMA {f:.1} G multiply-adds/s, vpmaddwd+vpaddd {m:.1} G/s ({:.2}x)",
                m / f
            );
        }
        return;
    }
    println!("isa_peak measures AVX2 + FMA; this CPU has neither");
}
