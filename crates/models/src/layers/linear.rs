//! A linear layer over a weight of any stored format: the model never sees
//! the format; the device picks a kernel for it (or falls back to CPU).

use std::sync::Arc;

use mm_core::{Device, Error, Result, RowKind, Tensor, WeightData};
use mm_formats::WeightSource;

/// Sees the input of linear layers before their matmul: called with the
/// layer's weight name (`model.layers.3.mlp.down_proj.weight`) and its input
/// `x[rows, in]` (calibration for GPTQ). An error aborts the forward pass.
pub type LinearObserver = Arc<dyn Fn(&str, &Tensor) -> Result<()> + Send + Sync>;

/// `y = x · Wᵀ (+ b)` with `W[out, in]` in any format.
pub struct Linear {
    pub weight: WeightData,
    pub bias: Option<Tensor>,
    /// Bytes of the bias as stored in the checkpoint (0 without one).
    bias_bytes: usize,
    /// Name of the weight tensor.
    name: String,
    observer: Option<LinearObserver>,
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
            name,
            observer: None,
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
            name: name.to_string(),
            observer: None,
        })
    }

    /// Name of the weight tensor (`{prefix}.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Installs (or, with `None`, removes) the observer of this layer's inputs.
    pub fn set_observer(&mut self, observer: Option<LinearObserver>) {
        self.observer = observer;
    }

    /// Whether an observer is installed.
    pub fn has_observer(&self) -> bool {
        self.observer.is_some()
    }

    /// Shows `x[rows, in]` to the observer, if any: for a weight another op
    /// multiplies (grouped experts), with the rows it multiplies.
    pub fn observe(&self, x: &Tensor) -> Result<()> {
        match &self.observer {
            Some(observe) => observe(&self.name, x),
            None => Ok(()),
        }
    }

    /// Replaces the weight by one of the same shape in any format (prepared
    /// for `device` here, as at load).
    pub fn set_weight(&mut self, weight: WeightData, device: &Device) -> Result<()> {
        let (out, inp) = (self.weight.shape[0], self.weight.shape[1]);
        Self::check(&self.name, &weight, out, inp)?;
        device.prepare(&weight)?;
        self.weight = weight;
        Ok(())
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
        self.forward_rows(x, None, device)
    }

    /// [`forward`](Self::forward) with the kind of each row of `x` (a
    /// step's rows: the same row gets the same arithmetic in any batch).
    pub fn forward_rows(
        &self,
        x: &Tensor,
        kinds: Option<&[RowKind]>,
        device: &Device,
    ) -> Result<Tensor> {
        if let Some(observe) = &self.observer {
            observe(&self.name, x)?;
        }
        match kinds {
            Some(k) => device.matmul_rows(x, &self.weight, self.bias.as_ref(), k),
            None => device.matmul(x, &self.weight, self.bias.as_ref()),
        }
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
