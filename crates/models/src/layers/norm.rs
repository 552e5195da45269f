//! RMSNorm layer.

use mm_core::{Device, Result, Tensor};
use mm_formats::WeightSource;

pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
    /// Bytes of the weight as stored in the checkpoint.
    stored: usize,
}

impl RmsNorm {
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        dim: usize,
        eps: f32,
        device: &Device,
    ) -> Result<Self> {
        let (weight, stored) = super::vector(src, name, dim, device)?;
        Ok(Self {
            weight,
            eps,
            stored,
        })
    }

    /// Normalizes the last dimension of `x` (which must equal the weight's length).
    pub fn forward(&self, x: &Tensor, device: &Device) -> Result<Tensor> {
        device.rms_norm(x, &self.weight, self.eps)
    }

    /// The scale vector `w`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `eps` added to the mean square.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// (stored bytes, parameters) of the weight.
    pub fn size(&self) -> (usize, usize) {
        (self.stored, self.weight.numel())
    }
}
