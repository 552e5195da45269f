//! Test and benchmark helpers: random GGML blocks and dense (F32, F16,
//! BF16) weights.
//!
//! Every quant bit and scale byte is random; only the f16 scale fields are
//! replaced by finite values of a realistic size (random sign), so the
//! kernels see every bit pattern a file can hold.

use mm_core::WeightFormat;

/// Byte offsets of the f16 fields of one block.
pub fn f16_fields(format: WeightFormat) -> &'static [usize] {
    match format {
        WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::Q8_0 => &[0],
        WeightFormat::Q4_1 | WeightFormat::Q5_1 | WeightFormat::Q4K | WeightFormat::Q5K => &[0, 2],
        WeightFormat::Q2K => &[80, 82],
        WeightFormat::Q3K => &[108],
        WeightFormat::Q6K => &[208],
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 | WeightFormat::Mm(_) => &[],
    }
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[-1, 1)`.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `rows × k` weights of `format` as random blocks.
pub fn random_blocks(format: WeightFormat, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let (qk, bb) = format.block();
    assert!(!format.is_dense() && k % qk == 0);
    let mut rng = Rng::new(seed);
    let mut v: Vec<u8> = (0..rows * k / qk * bb)
        .map(|_| rng.next_u64() as u8)
        .collect();
    // Scales ~ what a quantizer writes for unit-range weights.
    let mag = match format {
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => 0.12,
        WeightFormat::Q5_0 | WeightFormat::Q5_1 => 0.06,
        WeightFormat::Q8_0 => 0.008,
        WeightFormat::Q2K => 0.05,
        WeightFormat::Q3K => 0.01,
        WeightFormat::Q4K | WeightFormat::Q5K => 0.005,
        WeightFormat::Q6K => 0.0005,
        _ => 1.0,
    };
    for blk in v.chunks_exact_mut(bb) {
        for &o in f16_fields(format) {
            let h = half::f16::from_f32(rng.f32() * mag);
            blk[o..o + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    v
}

/// `n` random activation values in `[-1, 1)`.
pub fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0x5EED);
    (0..n).map(|_| rng.f32()).collect()
}

/// `n` random finite values stored in a dense format (little-endian), over
/// a wide range of magnitudes: F16 down to its subnormals (2^-20…2^3),
/// BF16 and F32 2^-40…2^40.
pub fn random_dense(format: WeightFormat, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0xDE5E);
    let mut v = Vec::with_capacity(n * format.block().1);
    for _ in 0..n {
        let r = rng.next_u64();
        let x = rng.f32();
        match format {
            WeightFormat::F16 => {
                let x = x * 2f32.powi((r % 24) as i32 - 20);
                v.extend_from_slice(&half::f16::from_f32(x).to_le_bytes())
            }
            WeightFormat::BF16 => {
                let x = x * 2f32.powi((r % 81) as i32 - 40);
                v.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())
            }
            WeightFormat::F32 => {
                let x = x * 2f32.powi((r % 81) as i32 - 40);
                v.extend_from_slice(&x.to_le_bytes())
            }
            f => panic!("{} is not a dense format", f.name()),
        }
    }
    v
}
