//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.

use mm_core::{Device, Result, Tensor};
use mm_formats::WeightSource;

use super::Linear;

pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        hidden: usize,
        inter: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(
                src,
                &format!("{prefix}.gate_proj"),
                inter,
                hidden,
                false,
                device,
            )?,
            up: Linear::load(
                src,
                &format!("{prefix}.up_proj"),
                inter,
                hidden,
                false,
                device,
            )?,
            down: Linear::load(
                src,
                &format!("{prefix}.down_proj"),
                hidden,
                inter,
                false,
                device,
            )?,
        })
    }

    /// (stored bytes, parameters) of the three projections.
    pub fn size(&self) -> (usize, usize) {
        [&self.gate, &self.up, &self.down]
            .iter()
            .map(|l| l.size())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The gate, up and down projections, in that order.
    pub fn linears(&self) -> [&Linear; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// The gate, up and down projections, mutably.
    pub fn linears_mut(&mut self) -> [&mut Linear; 3] {
        [&mut self.gate, &mut self.up, &mut self.down]
    }

    pub fn forward(&self, x: &Tensor, device: &Device) -> Result<Tensor> {
        self.forward_rows(x, None, device)
    }

    /// [`forward`](Self::forward) with the kind of each row (see
    /// [`Linear::forward_rows`]).
    pub fn forward_rows(
        &self,
        x: &Tensor,
        kinds: Option<&[mm_core::RowKind]>,
        device: &Device,
    ) -> Result<Tensor> {
        let g = self.gate.forward_rows(x, kinds, device)?;
        let u = self.up.forward_rows(x, kinds, device)?;
        self.down
            .forward_rows(&device.silu_mul(&g, &u)?, kinds, device)
    }
}
