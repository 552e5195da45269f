//! A linear layer over a weight of any stored format: the model never sees
//! the format; the device picks a kernel for it (or falls back to CPU).

use mm_core::{Device, Error, Result, Tensor, WeightData};
use mm_formats::WeightSource;

/// `y = x · Wᵀ (+ b)` with `W[out, in]` in any format.
pub struct Linear {
    pub weight: WeightData,
    pub bias: Option<Tensor>,
    /// Bytes of the bias as stored in the checkpoint (0 without one).
    bias_bytes: usize,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`), checking
    /// the shape `[out, in]`.
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        device: &Device,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let weight = src.tensor(&name)?;
        Self::check(&name, &weight, out, inp)?;
        device.prepare(&weight)?;
        let (bias, bias_bytes) = if bias {
            let (b, n) = super::vector(src, &format!("{prefix}.bias"), out, device)?;
            (Some(b), n)
        } else {
            (None, 0)
        };
        Ok(Self {
            weight,
            bias,
            bias_bytes,
        })
    }

    /// Wraps an already loaded weight (tied embeddings).
    pub fn from_weight(
        name: &str,
        weight: WeightData,
        out: usize,
        inp: usize,
        device: &Device,
    ) -> Result<Self> {
        Self::check(name, &weight, out, inp)?;
        device.prepare(&weight)?;
        Ok(Self {
            weight,
            bias: None,
            bias_bytes: 0,
        })
    }

    fn check(name: &str, w: &WeightData, out: usize, inp: usize) -> Result<()> {
        if w.shape != [out, inp] {
            return Err(Error::Shape {
                name: name.into(),
                expected: vec![out, inp],
                found: w.shape.clone(),
            });
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor, device: &Device) -> Result<Tensor> {
        device.matmul(x, &self.weight, self.bias.as_ref())
    }

    /// (stored bytes, parameters) of the weight and bias.
    pub fn size(&self) -> (usize, usize) {
        let b = self.bias.as_ref().map_or(0, |b| b.numel());
        (
            self.weight.stored_bytes() + self.bias_bytes,
            self.weight.numel() + b,
        )
    }
}
