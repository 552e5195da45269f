//! Rotary embedding frequencies, with the scaling schemes of the configs we
//! load (linear, llama3, YaRN, GGUF per-frequency factors). Formulas follow
//! transformers' `modeling_rope_utils`, in f32.

use mm_core::{Device, Error, Result, Tensor};
use mm_formats::{ModelConfig, RopeScaling};

pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    attention_factor: f32,
    /// Leading dimensions of each head that rotate (`head_dim` unless the
    /// config's `rotary_dim` says fewer).
    rotary_dim: usize,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Result<Self> {
        let d = cfg.rotary_dim.unwrap_or(cfg.head_dim);
        let mut inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / d as f32))
            .collect();
        let mut attention_factor = 1.0;
        match &cfg.rope_scaling {
            None => {}
            Some(y @ RopeScaling::Yarn { .. }) => {
                attention_factor = super::yarn::apply(y, cfg.rope_theta, d, &mut inv);
            }
            Some(RopeScaling::Linear { factor }) => inv.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f32;
                let low_wl = old / low_freq_factor;
                let high_wl = old / high_freq_factor;
                for f in inv.iter_mut() {
                    let wl = 2.0 * std::f32::consts::PI / *f;
                    if wl > low_wl {
                        *f /= factor;
                    } else if wl >= high_wl {
                        let s = (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - s) * *f / factor + s * *f;
                    }
                }
            }
            Some(RopeScaling::FreqFactors(ff)) => {
                if ff.len() != inv.len() {
                    return Err(Error::Config(format!(
                        "rope_freqs has {} factors, head_dim {d} needs {}",
                        ff.len(),
                        inv.len()
                    )));
                }
                inv.iter_mut().zip(ff).for_each(|(f, s)| *f /= s);
            }
        }
        Ok(Self {
            inv_freq: inv,
            head_dim: cfg.head_dim,
            rotary_dim: d,
            attention_factor,
        })
    }

    /// Rotates every head of `x[n, heads*head_dim]` by its row's position
    /// (its first `rotary_dim` dimensions).
    pub fn forward(&self, x: &Tensor, positions: &[u32], device: &Device) -> Result<Tensor> {
        if self.rotary_dim < self.head_dim {
            return super::partial_rope::forward(
                x,
                (self.head_dim, self.rotary_dim),
                positions,
                &self.inv_freq,
                self.attention_factor,
                device,
            );
        }
        device.rope(
            x,
            self.head_dim,
            positions,
            &self.inv_freq,
            self.attention_factor,
        )
    }

    /// The factor cos and sin are multiplied by (YaRN; 1 otherwise).
    pub fn attention_factor(&self) -> f32 {
        self.attention_factor
    }

    /// Leading dimensions of each head that rotate.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}
