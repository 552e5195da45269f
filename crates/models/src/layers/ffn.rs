//! A decoder layer's feed-forward block: a dense SwiGLU [`Mlp`] or a
//! mixture of experts ([`Moe`]), as the config's layer pattern says.

use mm_core::{Device, Result, RowKind, Tensor};
use mm_formats::{Arch, ModelConfig, WeightSource};

use super::moe::MoeNames;
use super::{Linear, Mlp, Moe};

/// Both boxed: a layer holds one, and the two differ much in size.
pub enum Ffn {
    Dense(Box<Mlp>),
    Moe(Box<Moe>),
}

/// The tensor names of an architecture's MoE blocks (its file says them).
fn moe_names(arch: Arch) -> &'static MoeNames {
    match arch {
        Arch::Mixtral => &crate::mixtral::MOE_NAMES,
        Arch::Glm4Moe => &crate::glm4_moe::MOE_NAMES,
        Arch::DeepseekV2 | Arch::DeepseekV3 | Arch::Glm4MoeLite => &crate::deepseek_v2::MOE_NAMES,
        _ => &crate::qwen3_moe::MOE_NAMES,
    }
}

impl Ffn {
    /// Loads the feed-forward of layer `l`, whose tensors start with
    /// `layer` (`model.layers.3`): the MoE block when the config makes the
    /// layer sparse, else the dense MLP `{layer}.mlp` of `intermediate_size`.
    pub fn load(
        src: &dyn WeightSource,
        layer: &str,
        l: usize,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        match &cfg.moe {
            Some(m) if m.is_sparse(l) => Ok(Ffn::Moe(Box::new(Moe::load(
                src,
                layer,
                cfg,
                moe_names(cfg.arch),
                device,
            )?))),
            _ => Ok(Ffn::Dense(Box::new(Mlp::load(
                src,
                &format!("{layer}.mlp"),
                cfg.hidden_size,
                cfg.intermediate_size,
                device,
            )?))),
        }
    }

    /// See [`Mlp::forward_rows`] and [`Moe::forward_rows`].
    pub fn forward_rows(
        &self,
        x: &Tensor,
        kinds: Option<&[RowKind]>,
        device: &Device,
    ) -> Result<Tensor> {
        match self {
            Ffn::Dense(m) => m.forward_rows(x, kinds, device),
            Ffn::Moe(m) => m.forward_rows(x, kinds, device),
        }
    }

    /// The dense MLP, when this is one.
    pub fn as_mlp(&self) -> Option<&Mlp> {
        match self {
            Ffn::Dense(m) => Some(m.as_ref()),
            Ffn::Moe(_) => None,
        }
    }

    /// (stored bytes, parameters).
    pub fn size(&self) -> (usize, usize) {
        match self {
            Ffn::Dense(m) => m.size(),
            Ffn::Moe(m) => m.size(),
        }
    }

    /// Stored bytes one token reads (on average, for a MoE block).
    pub fn token_bytes(&self) -> usize {
        match self {
            Ffn::Dense(m) => m.size().0,
            Ffn::Moe(m) => m.token_bytes(),
        }
    }

    /// Whether the block reads nothing back to the host on `device`: a
    /// dense MLP always; a MoE block when the device routes and runs its
    /// experts ([`Device::supports_moe`] for every expert's format).
    pub fn stays_on_device(&self, device: &Device) -> bool {
        match self {
            Ffn::Dense(_) => true,
            Ffn::Moe(m) => m
                .experts()
                .iter()
                .flat_map(|x| [&x.gate, &x.up, &x.down])
                .all(|l| device.supports_moe(l.weight.format)),
        }
    }

    /// See [`Moe::set_observe_all_tokens`]; nothing for a dense MLP.
    pub fn set_observe_all_tokens(&mut self, all: bool) {
        if let Ffn::Moe(m) = self {
            m.set_observe_all_tokens(all);
        }
    }

    /// Every linear layer: gate, up, down (dense); see [`Moe::linears`].
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Ffn::Dense(m) => m.linears().to_vec(),
            Ffn::Moe(m) => m.linears(),
        }
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Ffn::Dense(m) => m.linears_mut().into_iter().collect(),
            Ffn::Moe(m) => m.linears_mut(),
        }
    }
}
