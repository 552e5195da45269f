//! Expert routing: a token's router logits to the experts it is sent to and
//! their weights, as transformers computes them (f32):
//!
//! * scores: `softmax` over all experts (Qwen3-MoE, Mixtral) or `sigmoid`
//!   of each logit (GLM-4.5+, DeepSeek-V3);
//! * choice: the scores plus the correction bias when there is one — the
//!   bias only decides *which* experts, the weights come from the unbiased
//!   scores;
//! * group limit (`n_group > 1`): experts form `n_group` consecutive
//!   groups, each scored by its best choice value ([`GroupScore::Max`]) or
//!   the sum of its best two ([`GroupScore::Top2Sum`]); only the best
//!   `topk_group` groups compete;
//! * top-k of the choice values, best first;
//! * weights: the chosen scores, divided by their sum when
//!   `norm_topk_prob` (plus 1e-20 under sigmoid, as transformers), times
//!   `routed_scaling_factor`.
//!
//! Ties are broken towards the lower expert index. torch.topk on the CPU
//! does not promise an order among equal values (it returned `[1, 4, 2]`
//! for three equal maxima at 1, 2, 4), so exact ties may pick other
//! experts than transformers; real router scores are not tied, and the
//! fixture generator rejects weights whose routing is within 1e-4 of one.

use crate::{Error, Result};

/// How router logits become expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeScoring {
    /// `softmax` over all experts (Qwen3-MoE, Mixtral, DeepSeek-V2).
    Softmax,
    /// Elementwise `sigmoid` (GLM-4.5+, DeepSeek-V3).
    Sigmoid,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// The group's best expert score (DeepSeek-V2 `group_limited_greedy`).
    Max,
    /// The sum of the group's two best (bias-corrected) scores
    /// (DeepSeek-V3 `noaux_tc`, GLM-4.5+).
    Top2Sum,
}

/// The routing rule of a MoE layer (`mm_formats::MoeConfig::router_params`
/// reads it from a model's config).
#[derive(Clone, Debug, PartialEq)]
pub struct RouterParams {
    pub num_experts: usize,
    pub top_k: usize,
    pub scoring: MoeScoring,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
    pub n_group: usize,
    pub topk_group: usize,
    pub group_score: GroupScore,
}

impl RouterParams {
    /// Whether the rule can route at all (experts, top-k, groups), and a
    /// correction bias of `bias_len` values fits it; an error names what
    /// does not.
    pub fn check(&self, bias_len: Option<usize>) -> Result<()> {
        let (e, k) = (self.num_experts, self.top_k);
        let bad = |m: String| Err(Error::Invalid(format!("route: {m}")));
        if e == 0 || k == 0 || k > e {
            return bad(format!("top-{k} of {e} experts"));
        }
        if self.n_group == 0
            || !e.is_multiple_of(self.n_group)
            || self.topk_group == 0
            || self.topk_group > self.n_group
        {
            return bad(format!(
                "{e} experts in {} groups, {} chosen",
                self.n_group, self.topk_group
            ));
        }
        if (e / self.n_group) * self.topk_group < k {
            return bad(format!(
                "top-{k} of {} groups of {} experts",
                self.topk_group,
                e / self.n_group
            ));
        }
        match bias_len {
            Some(b) if b != e => bad(format!("{b} correction biases for {e} experts")),
            _ => Ok(()),
        }
    }
}

/// Every token's experts and weights: token `t` goes to `ids[t*k + j]` with
/// weight `weights[t*k + j]`, `j < k` best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// Routes the tokens whose router logits are the rows of
/// `logits[n, num_experts]`; `bias[num_experts]` is the correction bias.
pub fn route(logits: &[f32], bias: Option<&[f32]>, p: &RouterParams) -> Result<Routing> {
    p.check(bias.map(|b| b.len()))?;
    let (e, k) = (p.num_experts, p.top_k);
    if !logits.len().is_multiple_of(e) {
        return Err(Error::Invalid(format!(
            "route: {} logits for {e} experts",
            logits.len()
        )));
    }
    let n = logits.len() / e;
    let mut ids = Vec::with_capacity(n * k);
    let mut weights = Vec::with_capacity(n * k);
    let mut scores = vec![0f32; e];
    let mut choice = vec![0f32; e];
    for row in logits.chunks_exact(e) {
        match p.scoring {
            MoeScoring::Softmax => softmax(row, &mut scores),
            MoeScoring::Sigmoid => {
                for (s, &x) in scores.iter_mut().zip(row) {
                    *s = 1.0 / (1.0 + (-x).exp());
                }
            }
        }
        for (i, c) in choice.iter_mut().enumerate() {
            *c = scores[i] + bias.map_or(0.0, |b| b[i]);
        }
        if p.n_group > 1 {
            limit_groups(&mut choice, p);
        }
        let top = top_k(&choice, k);
        let mut w: Vec<f32> = top.iter().map(|&i| scores[i]).collect();
        if p.norm_topk_prob {
            let eps = match p.scoring {
                MoeScoring::Softmax => 0.0,
                MoeScoring::Sigmoid => 1e-20,
            };
            let sum = w.iter().sum::<f32>() + eps;
            w.iter_mut().for_each(|x| *x /= sum);
        }
        w.iter_mut().for_each(|x| *x *= p.routed_scaling_factor);
        ids.extend(top.iter().map(|&i| i as u32));
        weights.extend(w);
    }
    Ok(Routing {
        top_k: k,
        ids,
        weights,
    })
}

/// `softmax(row)` into `out`, as torch: `exp(x - max) / Σ`.
fn softmax(row: &[f32], out: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for (o, &x) in out.iter_mut().zip(row) {
        *o = (x - max).exp();
    }
    let sum: f32 = out.iter().sum();
    out.iter_mut().for_each(|o| *o /= sum);
}

/// Sets the choice values outside the best `topk_group` groups to −∞.
fn limit_groups(choice: &mut [f32], p: &RouterParams) {
    let per = choice.len() / p.n_group;
    let group_scores: Vec<f32> = choice
        .chunks_exact(per)
        .map(|g| match p.group_score {
            GroupScore::Max => g.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)),
            GroupScore::Top2Sum => top_k(g, 2.min(per)).iter().map(|&i| g[i]).sum(),
        })
        .collect();
    let keep = top_k(&group_scores, p.topk_group);
    for (gi, g) in choice.chunks_exact_mut(per).enumerate() {
        if !keep.contains(&gi) {
            g.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
        }
    }
}

/// Indices of the `k` largest values, largest first, lower index first
/// among equal values; NaN counts as −∞.
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut picked = vec![false; v.len()];
    let mut out = Vec::with_capacity(k);
    for _ in 0..k.min(v.len()) {
        let mut best: Option<usize> = None;
        for (i, &x) in v.iter().enumerate() {
            if picked[i] {
                continue;
            }
            if best.is_none_or(|b| key(x) > key(v[b])) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            picked[b] = true;
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(e: usize, k: usize, scoring: MoeScoring, norm: bool) -> RouterParams {
        RouterParams {
            num_experts: e,
            top_k: k,
            scoring,
            norm_topk_prob: norm,
            routed_scaling_factor: 1.0,
            n_group: 1,
            topk_group: 1,
            group_score: GroupScore::Top2Sum,
        }
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn softmax_top_k_with_and_without_renormalising() {
        let logits = [
            1.0f32, 3.0, 0.0, 2.0, /* token 2 */ -1.0, -1.0, 5.0, 0.0,
        ];
        let z: f32 = [1.0f32, 3.0, 0.0, 2.0].iter().map(|x| x.exp()).sum();
        let (p3, p2) = (3f32.exp() / z, 2f32.exp() / z);
        let r = route(&logits, None, &params(4, 2, MoeScoring::Softmax, false)).unwrap();
        assert_eq!(r.ids[..2], [1, 3]);
        close(&r.weights[..2], &[p3, p2]);
        // Token 2: expert 2 (logit 5), then expert 3 (0 beats the two -1).
        assert_eq!(r.ids[2..], [2, 3]);
        let r = route(&logits, None, &params(4, 2, MoeScoring::Softmax, true)).unwrap();
        close(&r.weights[..2], &[p3 / (p3 + p2), p2 / (p3 + p2)]);
        let s: f32 = r.weights[2..].iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2, 0.5], 2), [1, 2]);
        assert_eq!(top_k(&[f32::NAN, 0.0, f32::NAN], 2), [1, 0]);
        let r = route(&[2.0; 6], None, &params(6, 3, MoeScoring::Softmax, true)).unwrap();
        assert_eq!(r.ids, [0, 1, 2]);
        close(&r.weights, &[1.0 / 3.0; 3]);
    }

    #[test]
    fn correction_bias_picks_but_does_not_weigh() {
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let bias = [0.0f32, 0.0, 0.0, 2.0];
        let mut p = params(4, 2, MoeScoring::Sigmoid, false);
        p.routed_scaling_factor = 2.5;
        let r = route(&logits, Some(&bias), &p).unwrap();
        // Expert 3's biased score (0.27 + 2) wins; its weight is unbiased.
        assert_eq!(r.ids, [3, 0]);
        close(&r.weights, &[2.5 * sig(-1.0), 2.5 * sig(2.0)]);
        p.norm_topk_prob = true;
        let r = route(&logits, Some(&bias), &p).unwrap();
        let s = sig(-1.0) + sig(2.0);
        close(&r.weights, &[2.5 * sig(-1.0) / s, 2.5 * sig(2.0) / s]);
    }

    #[test]
    fn group_limited_top_k() {
        // 8 experts in 4 groups of 2; the best single expert (index 0,
        // logit 3) sits in a group whose top-2 sum is low.
        let logits = [3.0f32, -4.0, 1.0, 1.0, 0.5, 0.4, -2.0, 2.5];
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let mut p = params(8, 2, MoeScoring::Sigmoid, true);
        p.n_group = 4;
        p.topk_group = 2;
        // Group sums: g0 0.95+0.02, g1 0.73+0.73, g2 0.62+0.60, g3 0.12+0.92.
        let r = route(&logits, None, &p).unwrap();
        assert_eq!(r.ids, [2, 3]);
        let s = 2.0 * sig(1.0);
        close(&r.weights, &[sig(1.0) / s, sig(1.0) / s]);
        // Scored by their best expert (DeepSeek-V2), groups 0 and 3 win.
        p.group_score = GroupScore::Max;
        let r = route(&logits, None, &p).unwrap();
        assert_eq!(r.ids, [0, 7]);
        // Without a group limit expert 0 and 7 win too.
        p.n_group = 1;
        p.topk_group = 1;
        assert_eq!(route(&logits, None, &p).unwrap().ids, [0, 7]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let p = params(4, 2, MoeScoring::Softmax, true);
        assert!(route(&[0.0; 5], None, &p).is_err());
        assert!(route(&[0.0; 4], Some(&[0.0; 3]), &p).is_err());
        let mut q = params(4, 5, MoeScoring::Softmax, true);
        assert!(route(&[0.0; 4], None, &q).is_err());
        q.top_k = 2;
        q.n_group = 3;
        assert!(route(&[0.0; 4], None, &q).is_err());
        q.n_group = 4;
        q.topk_group = 1;
        assert!(route(&[0.0; 4], None, &q).is_err());
    }
}
