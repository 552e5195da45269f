//! The training loop of block-wise tuning: Adam on the latent weights and
//! group scales of a layer's quantized weights ([`FakeQuant`]), minimizing
//! the mean squared error between the layer's output on the quantized
//! model's streams and the target streams, one calibration window per
//! step, with a cosine learning-rate decay.
//!
//! The last windows are held out: their loss is measured before training
//! and after every epoch, and the weights of the best of those checkpoints
//! are kept, so tuning never returns a layer that does worse on held-out
//! text than the one it started from.
//!
//! Step sizes are relative: a latent weight (in units of its group's
//! scale, `mm_quant::ste`) moves by about `lr` per step, `lr` of the
//! distance between integer levels; a scale by about `scale_lr` times
//! itself, whatever the layer's magnitudes.

use mm_core::{Error, Result};
use mm_quant::ste::FakeQuant;
use rayon::prelude::*;

use super::block::{Block, LINEARS};

/// Hyperparameters of [`tune_block`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TuneOptions {
    /// Passes over the training windows.
    pub epochs: usize,
    /// Adam step of a latent weight, in units of its group's scale.
    pub lr: f32,
    /// Adam step of a scale, relative to the scale.
    pub scale_lr: f32,
}

impl Default for TuneOptions {
    fn default() -> Self {
        Self {
            epochs: DEFAULT_EPOCHS,
            lr: DEFAULT_LR,
            scale_lr: DEFAULT_SCALE_LR,
        }
    }
}

/// Default passes over the calibration windows.
pub const DEFAULT_EPOCHS: usize = 3;
/// Default latent step, in group scales: 0, codes stay as GPTQ chose them.
/// Measured on SmolLM2 (docs/QUALITY.md): with 14 training windows, moving
/// codes (0.01–0.02) fit the training windows and lost on held-out ones
/// after one or two epochs; the scales alone kept improving both.
pub const DEFAULT_LR: f32 = 0.0;
/// Default relative scale step (measured on SmolLM2 at 2 and 3 bits).
pub const DEFAULT_SCALE_LR: f32 = 5e-3;

/// One of a layer's weights: tuned, or held fixed (not quantized).
pub enum Param {
    Fixed(Vec<f32>),
    Tuned(FakeQuant),
}

/// Losses of one layer's tuning (mean squared error per element).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TuneReport {
    /// Held-out loss of the starting weights and of the kept ones.
    pub val_before: f64,
    pub val_after: f64,
    /// Training loss over the first and the last epoch.
    pub train_first: f64,
    pub train_last: f64,
    /// The epoch whose weights were kept (0: the starting weights).
    pub best_epoch: usize,
}

struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Moves `x` by `−lr·unit·m̂/(√v̂+ε)` for gradient `g` at step `t` (1-based).
    fn step(
        &mut self,
        x: &mut [f32],
        g: &[f32],
        t: i32,
        lr: f32,
        unit: impl Fn(usize) -> f32 + Sync,
    ) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
        x.par_iter_mut()
            .zip(g)
            .zip(&mut self.m)
            .zip(&mut self.v)
            .enumerate()
            .for_each(|(i, (((x, &g), m), v))| {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                let (mh, vh) = (*m / c1, *v / c2);
                *x -= lr * unit(i) * mh / (vh.sqrt() + 1e-30);
            });
    }
}

/// How many of `n` windows are held out.
pub fn held_out(n: usize) -> usize {
    (n / 8).max(1)
}

/// Tunes the quantized weights among `params` ([`LINEARS`] order) of
/// `block` so that its outputs on `inputs` approach `targets` (one
/// `[t, hidden]` stream per window each; the last [`held_out`] windows
/// are validation). `progress(epoch, loss)` reports each epoch's
/// held-out loss. Needs at least two windows.
pub fn tune_block(
    block: &Block,
    params: &mut [Param],
    inputs: &[Vec<f32>],
    targets: &[Vec<f32>],
    opts: &TuneOptions,
    progress: &dyn Fn(usize, f64),
) -> Result<TuneReport> {
    if params.len() != LINEARS.len() {
        return Err(Error::Invalid(format!(
            "tuning a layer takes its {} linear weights, {} given",
            LINEARS.len(),
            params.len()
        )));
    }
    if inputs.len() != targets.len() || inputs.len() < 2 {
        return Err(Error::Invalid(format!(
            "tuning needs at least 2 calibration windows with a target each ({} inputs, {} targets)",
            inputs.len(),
            targets.len()
        )));
    }
    if !(opts.lr >= 0.0 && opts.scale_lr >= 0.0 && opts.lr.is_finite() && opts.scale_lr.is_finite())
    {
        return Err(Error::Invalid(format!(
            "tuning learning rates must be finite and non-negative (weights {}, scales {})",
            opts.lr, opts.scale_lr
        )));
    }
    if let Some(i) = (0..inputs.len()).find(|&i| inputs[i].len() != targets[i].len()) {
        return Err(Error::Invalid(format!(
            "window {i}: an input of {} values and a target of {}",
            inputs[i].len(),
            targets[i].len()
        )));
    }
    let n_val = held_out(inputs.len());
    let n_train = inputs.len() - n_val;
    // Held-out loss: the weights' forward values once, every window on them.
    let val = |params: &[Param]| -> Result<f64> {
        let w = values(params);
        let refs = refs(&w);
        let mut s = 0.0;
        for i in n_train..inputs.len() {
            let (out, _) = block.forward(&refs, &inputs[i])?;
            s += mse(&out, &targets[i]).0;
        }
        Ok(s / n_val as f64)
    };
    let val_before = val(params)?;
    progress(0, val_before);
    let mut best = (val_before, 0usize, snapshot(params));
    let mut adams: Vec<Option<(Adam, Adam)>> = params
        .iter()
        .map(|p| match p {
            Param::Tuned(f) => Some((Adam::new(f.latent.len()), Adam::new(f.scales.len()))),
            Param::Fixed(_) => None,
        })
        .collect();
    let total = (opts.epochs * n_train) as f32;
    let mut step = 0i32;
    let (mut train_first, mut train_last) = (f64::NAN, f64::NAN);
    let mut order: Vec<usize> = (0..n_train).collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for epoch in 1..=opts.epochs {
        for i in (1..order.len()).rev() {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let mut epoch_loss = 0.0;
        for &i in &order {
            let w = values(params);
            let refs = refs(&w);
            let (out, tape) = block.forward(&refs, &inputs[i])?;
            let (loss, dout) = mse(&out, &targets[i]);
            if !loss.is_finite() {
                return Err(Error::Other(format!(
                    "tuning diverged: the loss of window {i} in epoch {epoch} is {loss}"
                )));
            }
            epoch_loss += loss;
            let grads = block.backward(&refs, &tape, &dout);
            step += 1;
            let decay = 0.5 * (1.0 + (std::f32::consts::PI * (step - 1) as f32 / total).cos());
            for ((p, g), adam) in params.iter_mut().zip(&grads).zip(&mut adams) {
                let (Param::Tuned(f), Some((aw, as_))) = (p, adam) else {
                    continue;
                };
                let (dw, ds) = f.backward(g);
                aw.step(&mut f.latent, &dw, step, opts.lr * decay, |_| 1.0);
                if f.trains_scales() {
                    let old = f.scales.clone();
                    as_.step(&mut f.scales, &ds, step, opts.scale_lr * decay, |j| old[j]);
                    f.clamp_scales();
                }
            }
        }
        let train = epoch_loss / n_train as f64;
        if epoch == 1 {
            train_first = train;
        }
        train_last = train;
        let v = val(params)?;
        progress(epoch, v);
        if v < best.0 {
            best = (v, epoch, snapshot(params));
        }
    }
    let (val_after, best_epoch, kept) = best;
    for (p, k) in params.iter_mut().zip(kept) {
        if let (Param::Tuned(f), Some(k)) = (p, k) {
            *f = k;
        }
    }
    Ok(TuneReport {
        val_before,
        val_after,
        train_first,
        train_last,
        best_epoch,
    })
}

/// The forward values of every weight.
fn values(params: &[Param]) -> Vec<std::borrow::Cow<'_, [f32]>> {
    params
        .iter()
        .map(|p| match p {
            Param::Fixed(w) => std::borrow::Cow::Borrowed(w.as_slice()),
            Param::Tuned(f) => std::borrow::Cow::Owned(f.forward()),
        })
        .collect()
}

fn refs<'a>(w: &'a [std::borrow::Cow<'a, [f32]>]) -> [&'a [f32]; 7] {
    std::array::from_fn(|i| w[i].as_ref())
}

fn snapshot(params: &[Param]) -> Vec<Option<FakeQuant>> {
    params
        .iter()
        .map(|p| match p {
            Param::Tuned(f) => Some(f.clone()),
            Param::Fixed(_) => None,
        })
        .collect()
}

/// Mean squared error and its gradient with respect to `out`.
fn mse(out: &[f32], target: &[f32]) -> (f64, Vec<f32>) {
    let n = out.len() as f32;
    let mut sum = 0f64;
    let grad = out
        .iter()
        .zip(target)
        .map(|(o, t)| {
            let d = o - t;
            sum += (d as f64) * (d as f64);
            2.0 * d / n
        })
        .collect();
    (sum / out.len() as f64, grad)
}
