//! RMSNorm layer.

use mm_core::{Device, Result, Tensor};
use mm_formats::WeightSource;

pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        dim: usize,
        eps: f32,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: super::vector(src, name, dim, device)?,
            eps,
        })
    }

    /// Normalizes the last dimension of `x` (which must equal the weight's length).
    pub fn forward(&self, x: &Tensor, device: &Device) -> Result<Tensor> {
        device.rms_norm(x, &self.weight, self.eps)
    }
}
