//! The inputs of the grouped expert op ([`crate::Backend::moe_experts`]):
//! one MoE layer's routed experts and where each token goes.

use crate::{Error, Result, Tensor, WeightData};

/// The experts of one MoE layer: routed expert `e` is the SwiGLU
/// `down[e](silu(gate[e](x)) * up[e](x))`, with `gate[e]`, `up[e]` of shape
/// `[inter, hidden]` and `down[e]` of `[hidden, inter]`, each in any stored
/// format (experts may differ in format).
#[derive(Clone, Debug)]
pub struct MoeExperts<'a> {
    pub gate: Vec<&'a WeightData>,
    pub up: Vec<&'a WeightData>,
    pub down: Vec<&'a WeightData>,
    /// A shared expert `[gate, up, down]` (any width `[inter_s, hidden]`,
    /// `[hidden, inter_s]`) every token goes through with weight 1: its
    /// output is added after the routed sum, as `add(routed, shared)`
    /// would (bit for bit the same as running it as its own SwiGLU with the
    /// backend's matmuls of the same row kinds and adding). A backend may
    /// fold it into its expert launches.
    pub shared: Option<[&'a WeightData; 3]>,
}

impl MoeExperts<'_> {
    /// Every expert weight, routed then shared.
    pub fn all(&self) -> impl Iterator<Item = &WeightData> + Clone {
        let shared = self.shared.iter().flatten();
        self.gate
            .iter()
            .chain(&self.up)
            .chain(&self.down)
            .chain(shared)
            .copied()
    }
}

/// Where each token of a step goes: token `t` to experts
/// `ids[t*top_k + j]` with weights `weights[t*top_k + j]`, `j < top_k`.
#[derive(Clone, Copy, Debug)]
pub struct MoeRoute<'a> {
    pub top_k: usize,
    pub ids: &'a [u32],
    pub weights: &'a [f32],
}

/// `(n, hidden, inter)` of a `moe_experts` call on `x[n, hidden]`, or an
/// error naming what does not fit: every backend checks its input with this.
pub fn moe_dims(
    x: &Tensor,
    experts: &MoeExperts<'_>,
    route: &MoeRoute<'_>,
) -> Result<(usize, usize, usize)> {
    let (n, hidden, inter) = moe_expert_dims(x, experts)?;
    let e = experts.gate.len();
    let k = route.top_k;
    let bad = |m: String| Err(Error::Invalid(format!("moe_experts: {m}")));
    if k == 0 || route.ids.len() != n * k || route.weights.len() != n * k {
        return bad(format!(
            "{} ids and {} weights for {n} tokens of top-{k}",
            route.ids.len(),
            route.weights.len()
        ));
    }
    if let Some(&id) = route.ids.iter().find(|&&id| id as usize >= e) {
        return bad(format!("expert id {id} of {e} experts"));
    }
    Ok((n, hidden, inter))
}

/// `(n, hidden, inter)` of `x[n, hidden]` and the experts, or an error
/// naming the expert weight whose shape does not fit.
pub fn moe_expert_dims(x: &Tensor, experts: &MoeExperts<'_>) -> Result<(usize, usize, usize)> {
    let bad = |m: String| Err(Error::Invalid(format!("moe_experts: {m}")));
    let (n, hidden) = x.dims2()?;
    let e = experts.gate.len();
    if e == 0 || experts.up.len() != e || experts.down.len() != e {
        return bad(format!(
            "{} gate, {} up and {} down weights",
            e,
            experts.up.len(),
            experts.down.len()
        ));
    }
    let (inter, _) = experts.gate[0].dims2()?;
    for i in 0..e {
        for (name, w, shape) in [
            ("gate", experts.gate[i], [inter, hidden]),
            ("up", experts.up[i], [inter, hidden]),
            ("down", experts.down[i], [hidden, inter]),
        ] {
            if w.shape != shape {
                return bad(format!(
                    "expert {i}'s {name} weight is {:?}, expected {shape:?}",
                    w.shape
                ));
            }
        }
    }
    if let Some([g, u, d]) = experts.shared {
        let (si, _) = g.dims2()?;
        for (name, w, shape) in [
            ("gate", g, [si, hidden]),
            ("up", u, [si, hidden]),
            ("down", d, [hidden, si]),
        ] {
            if w.shape != shape {
                return bad(format!(
                    "the shared expert's {name} weight is {:?}, expected {shape:?}",
                    w.shape
                ));
            }
        }
    }
    Ok((n, hidden, inter))
}
