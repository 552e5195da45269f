//! The computed codebook of the trellis formats: a 16-bit trellis state
//! decodes to one integer weight code in [-510, 510].
//!
//! `code(s) = bytesum(s · MUL mod 2³²) − 510`: one 32-bit multiply, a sum of
//! the product's four bytes, one subtraction. The sum of four roughly
//! uniform bytes is close to Gaussian (Irwin–Hall, standard deviation
//! 147.8), which is what a Hadamard-rotated weight looks like. This is the
//! "MUL1" family of ExLlamaV3 (QTIP's 1MAD without the add); `MUL` was chosen
//! by measuring the trellis's error on Gaussian data (docs/FORMAT.md §7.3).
//!
//! Why an integer code: every backend decodes it exactly (a dp4a / VNNI
//! dot with 0x01010101, or four byte extracts), the per-row scale absorbs
//! the 1/147.8, and f16 holds every value exactly, so tensor-core
//! fragments lose nothing.

/// The multiplier of the codebook (odd, so the map is a bijection of u32).
pub const MUL: u32 = 0x83DC_D12D;

/// Offset removed from the byte sum (the mean, 4 · 127.5, rounded).
pub const OFFSET: i32 = 510;

/// Standard deviation of the codes over all 65536 states (≈ 147.8); the
/// quantizer divides weights by a scale of about `rms / CODE_STD`.
pub const CODE_STD: f32 = 147.8;

/// The code of 16-bit state `s` (only its low 16 bits are used).
#[inline(always)]
pub fn code(s: u32) -> i32 {
    code_with(s & 0xFFFF, MUL)
}

/// The code of state `s` under multiplier `mul` (codebook experiments).
#[inline(always)]
pub fn code_with(s: u32, mul: u32) -> i32 {
    let x = s.wrapping_mul(mul);
    ((x & 0xFF) + ((x >> 8) & 0xFF) + ((x >> 16) & 0xFF) + (x >> 24)) as i32 - OFFSET
}

/// Every state's code as f32, indexed by state.
pub fn table() -> Vec<f32> {
    (0..1u32 << 16).map(|s| code(s) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_centred_with_the_stated_spread() {
        let t = table();
        let n = t.len() as f64;
        let mean = t.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = t.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1.0, "mean {mean}");
        assert!(
            (var.sqrt() - CODE_STD as f64).abs() < 1.5,
            "std {}",
            var.sqrt()
        );
        assert!(t.iter().all(|&v| (-510.0..=510.0).contains(&v)));
        // Spot values, computed by hand: 1·MUL = 0x83DCD12D → 0x83+0xDC+0xD1+0x2D − 510.
        assert_eq!(code(1), 0x83 + 0xDC + 0xD1 + 0x2D - 510);
        assert_eq!(code(0), -510);
    }
}
