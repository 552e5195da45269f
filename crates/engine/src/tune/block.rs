//! One decoder layer as a differentiable function of its seven linear
//! weights: `out = x + attn(norm(x)); out += mlp(norm(out))`, computed in
//! f32 with [`super::ops`], with a tape of the activations the backward
//! pass needs and the gradients of a loss with respect to every weight.
//!
//! The layer's other parameters (norm scales, biases, rotary frequencies,
//! head geometry) come from the loaded model ([`Block::from_model`]) and
//! stay fixed. Inputs are residual streams at positions `0..t` with an
//! empty cache (as calibration runs them). Weight order: q, k, v, o,
//! gate, up, down ([`LINEARS`]).

use mm_core::{Error, Result};
use mm_models::DecoderModel;

use super::ops::{self, Heads};

/// The linear weights of a layer, in the order of [`Block`]'s weight arrays.
pub const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// A decoder layer's fixed parameters.
pub struct Block {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    eps: f32,
    /// Per-head query/key RMSNorm scales and eps (Qwen3).
    head_norms: Option<(Vec<f32>, Vec<f32>, f32)>,
    /// Biases of q, k, v (Qwen2).
    bias: [Option<Vec<f32>>; 3],
    heads: Heads,
    inv_freq: Vec<f32>,
    hidden: usize,
    inter: usize,
}

/// The activations of one forward pass that the backward pass reads.
pub struct Tape {
    t: usize,
    positions: Vec<u32>,
    n1: Vec<f32>,
    /// With head norms: q and k before them, and the norms' row factors
    /// (empty without).
    q_pre: Vec<f32>,
    k_pre: Vec<f32>,
    inv_q: Vec<f32>,
    inv_k: Vec<f32>,
    /// q and k as attention read them (normed, rotated), and v.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    a: Vec<f32>,
    x1: Vec<f32>,
    n2: Vec<f32>,
    inv2: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    act: Vec<f32>,
}

impl Block {
    /// Layer `l` of `model`.
    pub fn from_model(model: &DecoderModel, l: usize) -> Result<Self> {
        let layer = model.layer(l).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {l} does not exist (the model has {})",
                model.num_layers()
            ))
        })?;
        let attn = layer.attn.gqa().ok_or_else(|| {
            Error::Invalid(
                "tuning supports grouped-query attention only, not multi-head latent attention"
                    .into(),
            )
        })?;
        if layer.ffn.as_mlp().is_none() || model.rope().rotary_dim() != model.config.head_dim {
            return Err(Error::Invalid(format!(
                "tuning supports dense MLP layers with full-width RoPE; layer {l} has a mixture of experts or partial RoPE"
            )));
        }
        let (n, kv, dim, window) = attn.shape();
        let (qn, kn) = attn.head_norms();
        let head_norms = match (qn, kn) {
            (Some(q), Some(k)) => Some((q.weight().to_vec()?, k.weight().to_vec()?, q.eps())),
            (None, None) => None,
            _ => {
                return Err(Error::Invalid(
                    "tuning needs both or neither of the query and key head norms".into(),
                ))
            }
        };
        let lin = attn.linears();
        let [b0, b1, b2] = [0, 1, 2].map(|i| lin[i].bias.as_ref().map(|b| b.to_vec()).transpose());
        let bias = [b0?, b1?, b2?];
        if lin[3].bias.is_some() {
            return Err(Error::Invalid(
                "tuning does not support a bias on o_proj".into(),
            ));
        }
        Ok(Self {
            attn_norm: layer.attn_norm.weight().to_vec()?,
            ffn_norm: layer.ffn_norm.weight().to_vec()?,
            eps: layer.attn_norm.eps(),
            head_norms,
            bias,
            heads: Heads { n, kv, dim, window },
            inv_freq: model.rope().inv_freq().to_vec(),
            hidden: model.config.hidden_size,
            inter: model.config.intermediate_size,
        })
    }

    /// `(rows, cols)` of each weight in [`LINEARS`] order.
    pub fn shapes(&self) -> [(usize, usize); 7] {
        let (e, i) = (self.hidden, self.inter);
        let (q, kv) = (
            self.heads.n * self.heads.dim,
            self.heads.kv * self.heads.dim,
        );
        [(q, e), (kv, e), (kv, e), (e, q), (i, e), (i, e), (e, i)]
    }

    fn check(&self, w: &[&[f32]; 7], x: &[f32]) -> Result<usize> {
        for ((w, (r, c)), name) in w.iter().zip(self.shapes()).zip(LINEARS) {
            if w.len() != r * c {
                return Err(Error::Invalid(format!(
                    "{name}: {} values for a {r}x{c} weight",
                    w.len()
                )));
            }
        }
        if x.is_empty() || !x.len().is_multiple_of(self.hidden) {
            return Err(Error::Invalid(format!(
                "a residual stream of {} values is not rows of {}",
                x.len(),
                self.hidden
            )));
        }
        Ok(x.len() / self.hidden)
    }

    /// The layer's output for the stream `x` (`[t, hidden]`), and its tape.
    pub fn forward(&self, w: &[&[f32]; 7], x: &[f32]) -> Result<(Vec<f32>, Tape)> {
        let t = self.check(w, x)?;
        let positions: Vec<u32> = (0..t as u32).collect();
        let [sq, sk, sv, so, sg, _, sd] = self.shapes();
        let (n1, _) = ops::rms_norm(x, &self.attn_norm, self.eps);
        let q_pre = ops::linear(&n1, w[0], self.bias[0].as_deref(), t, sq.0);
        let k_pre = ops::linear(&n1, w[1], self.bias[1].as_deref(), t, sk.0);
        let v = ops::linear(&n1, w[2], self.bias[2].as_deref(), t, sv.0);
        let (mut q, mut k, q_pre, k_pre, inv_q, inv_k) = match &self.head_norms {
            Some((gq, gk, eps)) => {
                let (q, iq) = ops::rms_norm(&q_pre, gq, *eps);
                let (k, ik) = ops::rms_norm(&k_pre, gk, *eps);
                (q, k, q_pre, k_pre, iq, ik)
            }
            None => (q_pre, k_pre, Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        let d = self.heads.dim;
        ops::rope(&mut q, d, &positions, &self.inv_freq, false);
        ops::rope(&mut k, d, &positions, &self.inv_freq, false);
        let (a, probs) = ops::attention(&q, &k, &v, t, self.heads);
        let mut x1 = ops::linear(&a, w[3], None, t, so.0);
        x1.iter_mut().zip(x).for_each(|(o, x)| *o += x);
        let (n2, inv2) = ops::rms_norm(&x1, &self.ffn_norm, self.eps);
        let g = ops::linear(&n2, w[4], None, t, sg.0);
        let u = ops::linear(&n2, w[5], None, t, sg.0);
        let act = ops::silu_mul(&g, &u);
        let mut out = ops::linear(&act, w[6], None, t, sd.0);
        out.iter_mut().zip(&x1).for_each(|(o, x)| *o += x);
        Ok((
            out,
            Tape {
                t,
                positions,
                n1,
                q_pre,
                k_pre,
                inv_q,
                inv_k,
                q,
                k,
                v,
                probs,
                a,
                x1,
                n2,
                inv2,
                g,
                u,
                act,
            },
        ))
    }

    /// Gradients of the loss with respect to every weight ([`LINEARS`]
    /// order) from its gradient `dout` with respect to the output.
    pub fn backward(&self, w: &[&[f32]; 7], tape: &Tape, dout: &[f32]) -> Vec<Vec<f32>> {
        let t = tape.t;
        let [sq, sk, _, so, sg, _, sd] = self.shapes();
        let d = self.heads.dim;
        // MLP: out = x1 + down(silu(g)·u), g/u = gate/up(norm(x1)).
        let dw_down = ops::linear_dw(dout, &tape.act, t, sd.0);
        let dact = ops::linear_dx(dout, w[6], t, sd.0);
        let (dg, du) = ops::silu_mul_backward(&dact, &tape.g, &tape.u);
        let dw_gate = ops::linear_dw(&dg, &tape.n2, t, sg.0);
        let dw_up = ops::linear_dw(&du, &tape.n2, t, sg.0);
        let mut dn2 = ops::linear_dx(&dg, w[4], t, sg.0);
        ops::linear_dx(&du, w[5], t, sg.0)
            .iter()
            .zip(&mut dn2)
            .for_each(|(a, b)| *b += a);
        let mut dx1 = ops::rms_norm_dx(&dn2, &tape.x1, &self.ffn_norm, &tape.inv2);
        dx1.iter_mut().zip(dout).for_each(|(a, b)| *a += b);
        // Attention: x1 = x + o(attn(rope(q), rope(k), v)).
        let dw_o = ops::linear_dw(&dx1, &tape.a, t, so.0);
        let da = ops::linear_dx(&dx1, w[3], t, so.0);
        let (mut dq, mut dk, dv) =
            ops::attention_backward(&da, &tape.q, &tape.k, &tape.v, &tape.probs, t, self.heads);
        ops::rope(&mut dq, d, &tape.positions, &self.inv_freq, true);
        ops::rope(&mut dk, d, &tape.positions, &self.inv_freq, true);
        if let Some((gq, gk, _)) = &self.head_norms {
            dq = ops::rms_norm_dx(&dq, &tape.q_pre, gq, &tape.inv_q);
            dk = ops::rms_norm_dx(&dk, &tape.k_pre, gk, &tape.inv_k);
        }
        let dw_q = ops::linear_dw(&dq, &tape.n1, t, sq.0);
        let dw_k = ops::linear_dw(&dk, &tape.n1, t, sk.0);
        let dw_v = ops::linear_dw(&dv, &tape.n1, t, sk.0);
        vec![dw_q, dw_k, dw_v, dw_o, dw_gate, dw_up, dw_down]
    }
}
