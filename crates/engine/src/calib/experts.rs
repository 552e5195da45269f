//! GPTQ statistics of routed experts that the calibration text routes few
//! tokens to: their own Hessian (from their routed tokens) is shrunk
//! towards a layer-wide one (every token entering the MoE block), see
//! docs/GPTQ.md, "Experts".

use std::collections::HashMap;

use mm_core::{Error, Result};
use mm_models::DecoderModel;
use mm_quant::gptq::Hessian;

use super::{names_filter, routed_expert, SequentialCalib, WeightStats};

/// Default of [`ExpertPolicy::min_tokens_per_input`]: an expert's own
/// Hessian is used alone from twice its input width of routed tokens.
pub const DEFAULT_EXPERT_MIN_TOKENS: f64 = 2.0;

/// What GPTQ does with routed experts that see few calibration tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpertPolicy {
    /// An expert weight with `cols` inputs whose routed tokens number
    /// `n < min_tokens_per_input · cols` gets the Hessian
    /// `(n·H_own + (m − n)·H_all) / m`, `m = ⌈min_tokens_per_input · cols⌉`,
    /// `H_all` the Hessian of its inputs over every token entering the
    /// block ([`SequentialCalib::hessians_all_tokens`]). 0: every expert
    /// keeps its own Hessian, and an expert no token chose gets a diagonal
    /// one (GPTQ then equals round-to-nearest).
    pub min_tokens_per_input: f64,
}

impl Default for ExpertPolicy {
    fn default() -> Self {
        Self {
            min_tokens_per_input: DEFAULT_EXPERT_MIN_TOKENS,
        }
    }
}

impl ExpertPolicy {
    /// Routed tokens from which a weight of `cols` inputs keeps its own
    /// Hessian alone.
    pub fn min_tokens(&self, cols: usize) -> usize {
        (self.min_tokens_per_input * cols as f64).ceil() as usize
    }
}

/// A routed-expert weight whose Hessian took the layer-wide prior.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blended {
    pub name: String,
    /// Tokens routed to it in the calibration windows.
    pub tokens: usize,
    /// The token count from which it would have kept its own Hessian.
    pub min_tokens: usize,
}

/// For the routed-expert weights among `names` (one stage of the next
/// layer; `stats` from [`SequentialCalib::calibrate`] on them): those with
/// fewer routed tokens than `policy` asks get their Hessian shrunk towards
/// the layer-wide one, and experts no token chose get one at all. Returns
/// the weights that took the prior. Costs one more layer forward on every
/// window, only when some weight needs it.
pub fn complete_expert_stats(
    seq: &mut SequentialCalib,
    model: &mut DecoderModel,
    names: &[String],
    stats: &mut HashMap<String, WeightStats>,
    policy: &ExpertPolicy,
) -> Result<Vec<Blended>> {
    if !(policy.min_tokens_per_input.is_finite() && policy.min_tokens_per_input >= 0.0) {
        return Err(Error::Invalid(format!(
            "the experts' minimum tokens per input column must be finite and ≥ 0, not {}",
            policy.min_tokens_per_input
        )));
    }
    let linears = model.linears();
    let mut thin = Vec::new();
    for name in names.iter().filter(|n| routed_expert(n).is_some()) {
        let cols = linears
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.weight.shape[1])
            .ok_or_else(|| Error::Other(format!("the model has no weight '{name}'")))?;
        let tokens = stats.get(name).map_or(0, |s| s.hessian.n_samples());
        let min_tokens = policy.min_tokens(cols);
        if tokens < min_tokens || tokens == 0 {
            thin.push((name.clone(), cols, tokens, min_tokens));
        }
    }
    drop(linears);
    if thin.is_empty() {
        return Ok(Vec::new());
    }
    let prior = if policy.min_tokens_per_input > 0.0 {
        seq.hessians_all_tokens(
            model,
            names_filter(thin.iter().map(|t| t.0.clone()).collect()),
        )?
    } else {
        HashMap::new()
    };
    let mut out = Vec::with_capacity(thin.len());
    for (name, cols, tokens, min_tokens) in thin {
        let own = stats.remove(&name).map(|s| s.hessian);
        let hessian = match prior.get(&name) {
            Some(all) => own
                .unwrap_or_else(|| Hessian::new(cols))
                .shrink_towards(all, min_tokens.max(1))
                .map_err(|e| Error::Other(format!("{name}: {e}")))?,
            // Policy 0 and no token: a diagonal Hessian (round-to-nearest).
            None => match own {
                Some(h) => h,
                None => {
                    let mut eye = vec![0.0; cols * cols];
                    (0..cols).for_each(|i| eye[i * cols + i] = 1.0);
                    Hessian::from_matrix(cols, eye, 0)?
                }
            },
        };
        stats.insert(
            name.clone(),
            WeightStats {
                hessian,
                cross: None,
                residual: None,
            },
        );
        out.push(Blended {
            name,
            tokens,
            min_tokens,
        });
    }
    Ok(out)
}
