//! Mixture-of-experts feed-forward: a dense router picks each token's
//! experts ([`mm_core::router`]), the routed experts run as one grouped op
//! ([`mm_core::Device::moe_experts`]: tokens grouped by expert, one pass
//! per projection), their outputs are summed with the routing weights, and
//! the shared experts (a SwiGLU every token goes through) are added.
//!
//! The experts are [`Linear`]s in any stored format (`quantize` replaces
//! their weights like any other linear layer's); the model never sees the
//! format.

use mm_core::router::route;
use mm_core::{Device, Error, MoeExperts, MoeRoute, Result, RouterParams, RowKind, Tensor};
use mm_formats::{ModelConfig, WeightSource};

use super::{Linear, Mlp};

/// Tensor names of a MoE block under a layer's prefix: `{layer}.{block}.
/// {router}.weight`, `{layer}.{block}.experts.{e}.{gate|up|down}.weight`,
/// `{layer}.{block}.{shared}.{gate,up,down}_proj.weight`.
#[derive(Clone, Copy, Debug)]
pub struct MoeNames {
    pub block: &'static str,
    pub router: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
    pub shared: &'static str,
}

/// One routed expert: `down(silu(gate(x)) * up(x))`.
pub struct Expert {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

pub struct Moe {
    router: Linear,
    /// The router's `e_score_correction_bias` on the device, on the host
    /// (calibration routes there), and its stored bytes.
    bias: Option<(Tensor, Vec<f32>, usize)>,
    params: RouterParams,
    experts: Vec<Expert>,
    shared: Option<Mlp>,
    /// Calibration: show every expert's observers all the rows entering
    /// the block, not only those routed to it (see
    /// [`set_observe_all_tokens`](Self::set_observe_all_tokens)).
    observe_all: bool,
}

impl Moe {
    /// Loads the MoE block of the layer whose tensors start with `layer`
    /// (`model.layers.3`).
    pub fn load(
        src: &dyn WeightSource,
        layer: &str,
        cfg: &ModelConfig,
        names: &MoeNames,
        device: &Device,
    ) -> Result<Self> {
        let m = cfg
            .moe
            .as_ref()
            .ok_or_else(|| Error::Config("a MoE layer needs the model's MoE config".into()))?;
        let (e, h, i) = (m.num_experts, cfg.hidden_size, m.expert_intermediate_size);
        let p = format!("{layer}.{}", names.block);
        let router_name = format!("{p}.{}", names.router);
        let router = Linear::load(src, &router_name, e, h, false, device)?;
        let bias = if m.correction_bias {
            let name = format!("{router_name}.e_score_correction_bias");
            let (t, bytes) = super::vector(src, &name, e, device)?;
            let host = t.to_vec()?;
            Some((t, host, bytes))
        } else {
            None
        };
        let experts = (0..e)
            .map(|x| {
                let lin = |n: &str, out, inp| {
                    Linear::load(
                        src,
                        &format!("{p}.experts.{x}.{n}"),
                        out,
                        inp,
                        false,
                        device,
                    )
                };
                Ok(Expert {
                    gate: lin(names.gate, i, h)?,
                    up: lin(names.up, i, h)?,
                    down: lin(names.down, h, i)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = (m.shared_experts > 0)
            .then(|| {
                let sp = format!("{p}.{}", names.shared);
                Mlp::load(src, &sp, h, m.shared_intermediate_size, device)
            })
            .transpose()?;
        Ok(Self {
            router,
            bias,
            params: m.router_params(),
            experts,
            shared,
            observe_all: false,
        })
    }

    /// Under calibration observers, show each routed expert's observers
    /// every row entering the block (`true`) or only the rows routed to it
    /// (`false`, the default). The block's output is the same either way:
    /// GPTQ uses the all-rows statistics as the layer-wide prior of experts
    /// that see too few tokens.
    pub fn set_observe_all_tokens(&mut self, all: bool) {
        self.observe_all = all;
    }

    /// The routing rule.
    pub fn params(&self) -> &RouterParams {
        &self.params
    }

    /// The routed experts.
    pub fn experts(&self) -> &[Expert] {
        &self.experts
    }

    /// Router logits `[rows, experts]` of `x[rows, hidden]`. Every row takes
    /// the arithmetic of a generated token (f32 activations for a dense
    /// router): the logits decide discrete choices, and a prompt row must
    /// choose as its decode would.
    pub fn router_logits(&self, x: &Tensor, device: &Device) -> Result<Tensor> {
        let rows = x.dims2()?.0;
        self.router
            .forward_rows(x, Some(&vec![RowKind::Generated; rows]), device)
    }

    /// The block's output for the rows `x[rows, hidden]` of the given kinds
    /// (see [`Linear::forward_rows`]; none: prompt rows).
    pub fn forward_rows(
        &self,
        x: &Tensor,
        kinds: Option<&[RowKind]>,
        device: &Device,
    ) -> Result<Tensor> {
        let rows = x.dims2()?.0;
        let prompt;
        let kinds = match kinds {
            Some(k) => k,
            None => {
                prompt = vec![RowKind::Prompt; rows];
                &prompt
            }
        };
        let logits = self.router_logits(x, device)?;
        let mut experts = MoeExperts {
            gate: self.experts.iter().map(|x| &x.gate.weight).collect(),
            up: self.experts.iter().map(|x| &x.up.weight).collect(),
            down: self.experts.iter().map(|x| &x.down.weight).collect(),
            shared: None,
        };
        if self.experts.first().is_some_and(|x| x.gate.has_observer()) {
            // Calibration: each expert's observers see the rows routed to
            // it, so the route is needed on the host.
            let bias = self.bias.as_ref().map(|b| &b.1[..]);
            let r = route(&logits.to_vec()?, bias, &self.params)?;
            let route = MoeRoute {
                top_k: r.top_k,
                ids: &r.ids,
                weights: &r.weights,
            };
            self.observe_experts(x, &route, device)?;
            let y = device.moe_experts(x, &experts, &route, kinds)?;
            // The shared expert's observers see every row.
            return match &self.shared {
                None => Ok(y),
                Some(s) => device.add(&y, &s.forward_rows(x, Some(kinds), device)?),
            };
        }
        // The shared expert goes with the routed ones (the same arithmetic
        // as running it apart; a backend may fold it into their launches).
        experts.shared = self.shared.as_ref().map(|s| s.linears().map(|l| &l.weight));
        let bias = self.bias.as_ref().map(|b| &b.0);
        device.moe_routed(x, &logits, bias, &self.params, &experts, kinds)
    }

    /// Shows each expert's observers the rows routed to it (calibration:
    /// GPTQ builds an expert's statistics from its own tokens); an expert
    /// no token chose sees nothing. With
    /// [`set_observe_all_tokens`](Self::set_observe_all_tokens), every row.
    fn observe_experts(&self, x: &Tensor, route: &MoeRoute, device: &Device) -> Result<()> {
        let (n, h) = x.dims2()?;
        let xs = x.to_vec()?;
        for (e, ex) in self.experts.iter().enumerate() {
            let toks: Vec<usize> = if self.observe_all {
                (0..n).collect()
            } else {
                (0..n * route.top_k)
                    .filter(|&p| route.ids[p] as usize == e)
                    .map(|p| p / route.top_k)
                    .collect()
            };
            if toks.is_empty() {
                continue;
            }
            let rows: Vec<f32> = toks
                .iter()
                .flat_map(|&t| &xs[t * h..(t + 1) * h])
                .copied()
                .collect();
            let xe = device.upload(&Tensor::from_vec(vec![toks.len(), h], rows)?)?;
            let g = ex.gate.forward(&xe, device)?;
            let u = ex.up.forward(&xe, device)?;
            ex.down.observe(&device.silu_mul(&g, &u)?)?;
        }
        Ok(())
    }

    /// (stored bytes, parameters) of the router, its bias, the experts and
    /// the shared experts.
    pub fn size(&self) -> (usize, usize) {
        let bias = self.bias.as_ref().map_or((0, 0), |b| (b.2, b.1.len()));
        self.linears()
            .iter()
            .map(|l| l.size())
            .fold(bias, |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Stored bytes one token reads on average: the router, its bias and
    /// the shared experts, and `top_k` of the routed experts.
    pub fn token_bytes(&self) -> usize {
        let routed: usize = self
            .experts
            .iter()
            .flat_map(|x| [&x.gate, &x.up, &x.down])
            .map(|l| l.size().0)
            .sum();
        let per = routed / self.experts.len().max(1);
        self.size().0 - routed + per * self.params.top_k
    }

    /// Every linear layer: the router, each expert's gate, up and down, the
    /// shared experts' gate, up and down.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = vec![&self.router];
        for x in &self.experts {
            v.extend([&x.gate, &x.up, &x.down]);
        }
        if let Some(s) = &self.shared {
            v.extend(s.linears());
        }
        v
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = vec![&mut self.router];
        for x in &mut self.experts {
            v.extend([&mut x.gate, &mut x.up, &mut x.down]);
        }
        if let Some(s) = &mut self.shared {
            v.extend(s.linears_mut());
        }
        v
    }
}
