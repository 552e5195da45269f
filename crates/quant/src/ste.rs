//! A trainable quantized weight: latent values in units of the group scale
//! and the group scales, whose forward value is exactly what the stored
//! format decodes to, with straight-through gradients (block-wise tuning,
//! `mm_engine::tune`).
//!
//! Parametrization: `ŵ = s·v(enc(u))`, `u` the latent unscaled value, `v`
//! the format's level of the code nearest `u` (its group quantizer at unit
//! scale, [`GroupQuantizer`]), `s` the scale rounded to its stored F16. So
//! the scale and the rounding are separate: a scale step rescales the whole
//! group with its codes fixed (as in EfficientQAT's E2E-QP), a latent step
//! moves a value towards another code (as in its Block-AP), and the tuned
//! weight written out decodes to the very values training saw.
//!
//! Backward (straight-through estimator): `∂ŵ/∂u = s` inside the format's
//! range and `0` where `u` clips; `∂ŵ/∂s = v`, summed over the group.
//!
//! Zero-points stay as quantization chose them (they are integers on
//! disk); MXFP4's power-of-two scales are not trained. Layout: `latent`
//! `rows × cols` row-major, `scales` `rows × groups`.

use half::f16;
use mm_core::weight::MmKind;
use mm_core::{Error, Result};
use rayon::prelude::*;

use crate::mm::dequantize::decode;
use crate::mm::{pack_codes, GroupQuantizer, MmFormat, QuantizedTensor};

/// A weight being tuned (see the module docs).
#[derive(Clone, Debug)]
pub struct FakeQuant {
    format: MmFormat,
    rows: usize,
    cols: usize,
    /// Latent unscaled values, `rows × cols`.
    pub latent: Vec<f32>,
    /// Group scales as trained (f32), `rows × groups`; MXFP4: the E8M0 byte.
    pub scales: Vec<f32>,
    zeros: Vec<u8>,
}

impl FakeQuant {
    /// Starts from a quantized weight: the latent values are its codes'
    /// levels, so the first forward reproduces it exactly.
    pub fn from_quantized(q: &QuantizedTensor) -> Result<Self> {
        let groups = q.format.groups_per_row(q.cols);
        let mut codes = vec![0u8; q.cols];
        let row_bytes = q.format.code_bytes(q.cols);
        let mut latent = Vec::with_capacity(q.rows * q.cols);
        for r in 0..q.rows {
            crate::mm::unpack_codes(
                q.format.bits(),
                &q.qweight[r * row_bytes..(r + 1) * row_bytes],
                &mut codes,
            )?;
            let gl = q.format.group_len(q.cols);
            for (c, &code) in codes.iter().enumerate() {
                let z = q.zeros.as_ref().map_or(0, |z| z[r * groups + c / gl]);
                latent.push(decode(q.format.kind, code, z));
            }
        }
        let n = q.rows * groups;
        let scales = match q.format.kind {
            MmKind::Mxfp4 => q.scales.iter().map(|&b| b as f32).collect(),
            _ => q
                .scales
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        let zeros = q.zeros.clone().unwrap_or_else(|| vec![0; n]);
        Ok(Self {
            format: q.format,
            rows: q.rows,
            cols: q.cols,
            latent,
            scales,
            zeros,
        })
    }

    pub fn format(&self) -> MmFormat {
        self.format
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Whether the scales are trained (every format but MXFP4).
    pub fn trains_scales(&self) -> bool {
        self.format.kind != MmKind::Mxfp4
    }

    fn group_len(&self) -> usize {
        self.format.group_len(self.cols)
    }

    /// The quantizer of group `i` (row-major over `rows × groups`) as stored.
    fn quantizer(&self, i: usize) -> GroupQuantizer {
        let bits = match self.format.kind {
            MmKind::Mxfp4 => self.scales[i] as u16,
            _ => f16::from_f32(self.scales[i]).to_bits(),
        };
        GroupQuantizer::from_parts(self.format.kind, bits, self.zeros[i])
    }

    /// Group `i`'s codec at unit scale: `encode(u)` is the code nearest `u`.
    fn unit(&self, i: usize) -> GroupQuantizer {
        let bits = match self.format.kind {
            MmKind::Mxfp4 => 127,
            _ => f16::ONE.to_bits(),
        };
        GroupQuantizer::from_parts(self.format.kind, bits, self.zeros[i])
    }

    /// The unscaled range `[lo, hi]` that encoding reaches in group `i`
    /// (the levels values beyond it clip or saturate to).
    fn range(&self, i: usize) -> (f32, f32) {
        let unit = self.unit(i);
        let level = |u: f32| unit.decode(unit.encode(u));
        (level(-1e6), level(1e6))
    }

    /// The values the stored weight would decode to, `rows × cols`.
    pub fn forward(&self) -> Vec<f32> {
        let gl = self.group_len();
        let mut out = vec![0f32; self.latent.len()];
        out.par_chunks_exact_mut(gl)
            .zip(self.latent.par_chunks_exact(gl))
            .enumerate()
            .for_each(|(i, (o, w))| {
                let (q, unit) = (self.quantizer(i), self.unit(i));
                for (o, &u) in o.iter_mut().zip(w) {
                    *o = q.decode(unit.encode(u));
                }
            });
        out
    }

    /// Straight-through gradients `(∂L/∂latent, ∂L/∂scales)` from the
    /// gradient `d` of the loss with respect to [`forward`](Self::forward)'s
    /// values (scale gradients are zero where scales are not trained).
    pub fn backward(&self, d: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let gl = self.group_len();
        let mut dw = vec![0f32; d.len()];
        let mut ds = vec![0f32; self.scales.len()];
        let trains = self.trains_scales();
        dw.par_chunks_exact_mut(gl)
            .zip(d.par_chunks_exact(gl))
            .zip(self.latent.par_chunks_exact(gl))
            .zip(ds.par_iter_mut())
            .enumerate()
            .for_each(|(i, (((dw, d), w), ds))| {
                let s = self.quantizer(i).scale();
                let unit = self.unit(i);
                let (lo, hi) = self.range(i);
                let mut g = 0f32;
                for ((dw, &d), &u) in dw.iter_mut().zip(d).zip(w) {
                    if u >= lo && u <= hi {
                        *dw = d * s;
                    }
                    g += d * unit.decode(unit.encode(u));
                }
                if trains {
                    *ds = g;
                }
            });
        (dw, ds)
    }

    /// Keeps every trained scale a positive F16 (at least the smallest
    /// normal F16) after an update; MXFP4 bytes are left as they are.
    pub fn clamp_scales(&mut self) {
        if !self.trains_scales() {
            return;
        }
        let min = f16::MIN_POSITIVE.to_f32();
        let max = f16::MAX.to_f32();
        for s in &mut self.scales {
            if *s != 0.0 {
                *s = s.clamp(min, max);
            }
        }
    }

    /// The stored form of the current values.
    pub fn to_quantized(&self) -> Result<QuantizedTensor> {
        let (rows, cols, gl) = (self.rows, self.cols, self.group_len());
        let groups = cols / gl;
        let bits = self.format.bits();
        let row_bytes = self.format.code_bytes(cols);
        let mut qweight = vec![0u8; rows * row_bytes];
        let mut codes = vec![0u8; cols];
        for r in 0..rows {
            for g in 0..groups {
                let unit = self.unit(r * groups + g);
                let latent = &self.latent[r * cols + g * gl..r * cols + (g + 1) * gl];
                for (j, (code, &u)) in codes[g * gl..(g + 1) * gl]
                    .iter_mut()
                    .zip(latent)
                    .enumerate()
                {
                    if !u.is_finite() {
                        return Err(Error::Invalid(format!(
                            "tuned weight row {r} column {} is the non-finite value {u}",
                            g * gl + j
                        )));
                    }
                    *code = unit.encode(u);
                }
            }
            pack_codes(
                bits,
                &codes,
                &mut qweight[r * row_bytes..(r + 1) * row_bytes],
            )?;
        }
        let sb = self.format.scale_bytes();
        let mut scales = vec![0u8; self.scales.len() * sb];
        for (i, out) in scales.chunks_exact_mut(sb).enumerate() {
            self.quantizer(i).write_scale(out);
        }
        Ok(QuantizedTensor {
            format: self.format,
            rows,
            cols,
            qweight,
            scales,
            zeros: self.format.kind.has_zeros().then(|| self.zeros.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::quantize_rtn;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn starts_at_the_stored_weight_and_round_trips() {
        for name in [
            "int2-asym",
            "int3",
            "int4",
            "nf4",
            "fp4",
            "mxfp4",
            "fp8-e4m3",
            "int8",
        ] {
            let fmt = MmFormat::parse(name, 32).unwrap();
            let w = data(4 * 64, 7);
            let q = quantize_rtn(&w, 4, 64, fmt).unwrap();
            let fq = FakeQuant::from_quantized(&q).unwrap();
            assert_eq!(fq.forward(), q.dequantize().unwrap(), "{name}");
            assert_eq!(fq.to_quantized().unwrap(), q, "{name}");
        }
    }

    /// Gradients against central differences of `L = Σ d·ŵ`: in the scale
    /// (codes fixed, exact up to the F16 rounding of the scale) and in a
    /// latent value away from a rounding boundary (zero: the code holds),
    /// and the straight-through latent gradient `d·s`.
    #[test]
    fn gradients_are_the_level_and_straight_through() {
        let fmt = MmFormat::parse("int2-asym", 32).unwrap();
        let w = data(2 * 32, 3);
        let q = quantize_rtn(&w, 2, 32, fmt).unwrap();
        let fq = FakeQuant::from_quantized(&q).unwrap();
        let d = data(2 * 32, 11);
        let (dw, ds) = fq.backward(&d);
        let loss = |f: &FakeQuant| -> f64 {
            f.forward()
                .iter()
                .zip(&d)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        for g in 0..2 {
            let s = fq.scales[g];
            let (mut a, mut b) = (fq.clone(), fq.clone());
            a.scales[g] = s * 1.01;
            b.scales[g] = s * 0.99;
            let (sa, sb) = (
                f16::from_f32(a.scales[g]).to_f32(),
                f16::from_f32(b.scales[g]).to_f32(),
            );
            let num = (loss(&a) - loss(&b)) / (sa - sb) as f64;
            assert!(
                (num - ds[g] as f64).abs() < 1e-4 * (1.0 + num.abs()),
                "{num} {}",
                ds[g]
            );
            for c in 0..32 {
                let i = g * 32 + c;
                assert_eq!(dw[i], d[i] * fq.quantizer(g).scale());
            }
        }
        let mut moved = fq.clone();
        let i = (0..64).find(|&i| fq.latent[i] < 1.0).unwrap();
        moved.latent[i] += 0.3;
        assert_eq!(moved.forward(), fq.forward());
        moved.latent[i] += 0.4;
        assert_ne!(moved.forward(), fq.forward());
    }

    #[test]
    fn clipped_values_get_no_latent_gradient() {
        let fmt = MmFormat::parse("int2", 32).unwrap();
        let w = data(32, 5);
        let q = quantize_rtn(&w, 1, 32, fmt).unwrap();
        let mut fq = FakeQuant::from_quantized(&q).unwrap();
        fq.latent[0] = 1.7;
        fq.latent[1] = -1.2;
        let (dw, _) = fq.backward(&[1.0; 32]);
        assert_eq!((dw[0], dw[1]), (0.0, 0.0));
        assert_eq!(dw[2], fq.quantizer(0).scale());
        fq.latent[0] = f32::NAN;
        assert!(fq.to_quantized().is_err());
    }
}
