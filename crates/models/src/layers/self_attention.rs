//! A decoder layer's attention: grouped-query ([`Attention`]) or
//! multi-head latent ([`Mla`]), chosen by the config.

use mm_core::{Device, KvStore, Result, Tensor};
use mm_formats::{ModelConfig, WeightSource};

use super::{Attention, AttentionOptions, Linear, Mla, MlaForm, Rope};

pub enum SelfAttention {
    Gqa(Box<Attention>),
    Mla(Box<Mla>),
}

impl SelfAttention {
    /// Multi-head latent attention when `cfg.mla` is set, else
    /// grouped-query attention with `opt`.
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        opt: AttentionOptions,
        device: &Device,
    ) -> Result<Self> {
        Ok(match cfg.mla {
            Some(_) => Self::Mla(Box::new(Mla::load(src, prefix, cfg, device)?)),
            None => Self::Gqa(Box::new(Attention::load(src, prefix, cfg, opt, device)?)),
        })
    }

    /// The grouped-query attention, if this is one.
    pub fn gqa(&self) -> Option<&Attention> {
        match self {
            Self::Gqa(a) => Some(a),
            Self::Mla(_) => None,
        }
    }

    /// Sets the form of multi-head latent attention (nothing otherwise).
    pub fn set_mla_form(&mut self, form: MlaForm) {
        if let Self::Mla(m) = self {
            m.set_form(form);
        }
    }

    /// Attends the rows of `step` (see [`Attention::forward`],
    /// [`Mla::forward`]; the latter keeps everything in `k_cache`).
    pub fn forward(
        &self,
        x: &Tensor,
        step: &crate::Step,
        rope: &Rope,
        k_cache: &mut KvStore,
        v_cache: &mut KvStore,
        device: &Device,
    ) -> Result<Tensor> {
        match self {
            Self::Gqa(a) => a.forward(x, step, rope, k_cache, v_cache, device),
            Self::Mla(m) => m.forward(x, step, rope, k_cache, device),
        }
    }

    /// (stored bytes, parameters).
    pub fn size(&self) -> (usize, usize) {
        match self {
            Self::Gqa(a) => a.size(),
            Self::Mla(m) => m.size(),
        }
    }

    /// The projections in forward order (q, k, v, o for grouped-query
    /// attention; see [`Mla::linears`]).
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Self::Gqa(a) => a.linears().to_vec(),
            Self::Mla(m) => m.linears(),
        }
    }

    /// The projections, mutably.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Self::Gqa(a) => a.linears_mut().into_iter().collect(),
            Self::Mla(m) => m.linears_mut(),
        }
    }
}
