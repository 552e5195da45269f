//! YaRN RoPE scaling (`modeling_rope_utils._compute_yarn_parameters` of
//! transformers 5): frequencies blended between interpolated (divided by
//! `factor`) and extrapolated (unchanged) by a linear ramp over the
//! dimensions whose wavelengths fall between `beta_fast` and `beta_slow`
//! rotations of the original context, and an attention factor that
//! multiplies cos and sin. Integer-valued bounds and the attention factor
//! are computed in f64 as Python does, the per-frequency values in f32 as
//! torch does.

use mm_formats::{yarn_get_mscale, RopeScaling};

/// Rewrites `inv` (the unscaled inverse frequencies of a head of `dim`
/// rotated values, base `theta`) for `s`, and returns the attention factor.
/// Other scalings leave `inv` alone and return 1.
pub(crate) fn apply(s: &RopeScaling, theta: f32, dim: usize, inv: &mut [f32]) -> f32 {
    let RopeScaling::Yarn {
        factor,
        original_max_position_embeddings,
        beta_fast,
        beta_slow,
        mscale,
        mscale_all_dim,
        attention_factor,
        truncate,
    } = *s
    else {
        return 1.0;
    };
    let f = factor as f64;
    let attention = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
        // Python's `if mscale and mscale_all_dim` (0 is false).
        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
            (yarn_get_mscale(f, m as f64) / yarn_get_mscale(f, a as f64)) as f32
        }
        _ => yarn_get_mscale(f, 1.0) as f32,
    });
    let base = theta as f64;
    let orig = original_max_position_embeddings as f64;
    let correction_dim = |rotations: f64| {
        dim as f64 * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let (mut low, mut high) = (
        correction_dim(beta_fast as f64),
        correction_dim(beta_slow as f64),
    );
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001;
    }
    let (low, span) = (low as f32, (high - low) as f32);
    for (i, x) in inv.iter_mut().enumerate() {
        // `inv` holds 1 / theta^(2i/dim) already: the extrapolated one.
        let pos = theta.powf((2 * i) as f32 / dim as f32);
        let (extra, inter) = (*x, 1.0 / (factor * pos));
        let ramp = ((i as f32 - low) / span).clamp(0.0, 1.0);
        let keep = 1.0 - ramp;
        *x = inter * (1.0 - keep) + extra * keep;
    }
    attention
}
