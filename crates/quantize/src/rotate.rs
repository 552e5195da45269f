//! Rotation of a model before quantization (`quantize --rotate`): incoherence
//! processing as in QuaRot (Ashkboos et al. 2024) / SpinQuant, fused into the
//! weights so that the rotated model is an ordinary model of the same
//! architecture and runs on every kernel unchanged.
//!
//! Why: a few large weights (outlier input channels) set the scale of their
//! whole group, so at 2–4 bits most weights of the group round to a handful
//! of levels. Multiplying the residual stream by a random orthogonal `Q`
//! spreads every channel over all of them; the product `W·x` is unchanged
//! (`W Q · Qᵀ x`), but the rotated weights have no outlier columns.
//!
//! What changes (row-vector convention, `y = x·Wᵀ`, `W[out, in]`; `Q`
//! hidden × hidden, `R` head_dim × head_dim):
//! * RMSNorm scales `g` are folded into the weights that read the norm's
//!   output (`W·diag(g)`) and become ones: RMSNorm commutes with an
//!   orthogonal `Q` only without them.
//! * The residual stream is rotated: embeddings `E·Q`; q/k/v/gate/up
//!   (readers) `W·diag(g)·Q`; o/down (writers) `Qᵀ·W`, their biases `b·Q`;
//!   the LM head `W·diag(g_final)·Q`. A tied head becomes an untied
//!   `lm_head.weight` (the final norm's scale differs between the two
//!   roles), and `tie_word_embeddings` becomes false.
//! * Inside attention, values are rotated per head by `R` (QuaRot's R2):
//!   v_proj's rows of each kv head `Rᵀ·W_h` (bias `b_h·R`), o_proj's columns
//!   of each head `W_h·R`. Attention mixes values linearly, so this is exact.
//! * The MLP's intermediate activations (down_proj's input) are not rotated:
//!   that needs a rotation at run time (QuaRot's online Hadamard).
//!
//! `Q` (and `R`) = `diag(s)·(O_m ⊗ H_{2^k})`: the largest power-of-two
//! factor of the size gets a normalized Sylvester Hadamard matrix, the odd
//! rest `m` a Haar-random orthogonal matrix (QR of a Gaussian), and random
//! signs `s` on top; seeded, so a run is reproducible. Built and applied in
//! f64/f32 on the CPU when a tensor is read.

use std::path::Path;
use std::sync::Arc;

use half::f16;
use mm_backend_cpu::CpuBackend;
use mm_core::{Device, Error, HostBytes, Result, Tensor, WeightData, WeightFormat};
use mm_formats::{GgufFile, ModelConfig, WeightSource};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Default seed of `--rotate`.
pub const DEFAULT_SEED: u64 = 0x6d6d_726f_7461_7465;

/// A source whose tensors are those of `inner` with the rotation applied.
pub struct RotatedSource {
    inner: Box<dyn WeightSource>,
    config: ModelConfig,
    device: Device,
    /// `Qᵀ` as an F32 `[hidden, hidden]` weight: `matmul(x, qt) = x·Q`.
    qt: WeightData,
    /// `R`, row-major `[head_dim, head_dim]`.
    r: Vec<f32>,
    /// The source has its own `lm_head.weight`.
    has_head: bool,
}

impl RotatedSource {
    /// Wraps `inner`. A tensor the rotation does not know (not a dense
    /// Llama-style decoder's) is an error when it is read, i.e. when the
    /// pipeline plans, before anything is written.
    pub fn new(inner: Box<dyn WeightSource>, seed: u64) -> Result<Self> {
        let mut config = inner.config().clone();
        let (d, hd) = (config.hidden_size, config.head_dim);
        if d == 0 || hd == 0 {
            return Err(Error::Invalid(format!(
                "--rotate: hidden size {d} / head_dim {hd} must be positive"
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let q = orthogonal(d, &mut rng);
        let r = orthogonal(hd, &mut rng);
        let mut qt = vec![0f32; d * d];
        for i in 0..d {
            for j in 0..d {
                qt[j * d + i] = q[i * d + j] as f32;
            }
        }
        // A tied model ignores any lm_head.weight it carries.
        let has_head = inner.contains("lm_head.weight") && !config.tie_word_embeddings;
        config.tie_word_embeddings = false;
        // f32 arithmetic: rotating weights must not round them (the default
        // precision multiplies dense prompt rows with 16-bit operands).
        let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::exact());
        Ok(Self {
            inner,
            config,
            device: Device::new(cpu.clone(), cpu),
            qt: f32_weight(vec![d, d], qt)?,
            r: r.iter().map(|&v| v as f32).collect(),
            has_head,
        })
    }

    fn values(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let w = self.inner.tensor(name)?;
        Ok((mm_quant::dequantize_ref(&w)?, w.shape.clone()))
    }

    /// A norm's scale `g` (checked to have `hidden` entries).
    fn norm(&self, name: &str) -> Result<Vec<f32>> {
        let (g, shape) = self.values(name)?;
        if g.len() != self.config.hidden_size {
            return Err(Error::Shape {
                name: name.into(),
                expected: vec![self.config.hidden_size],
                found: shape,
            });
        }
        Ok(g)
    }

    /// `W·diag(g)·Q` for a `[rows, hidden]` weight.
    fn reader(&self, w: &mut [f32], g: Option<&[f32]>, name: &str) -> Result<Vec<f32>> {
        let d = self.config.hidden_size;
        if w.len() % d != 0 {
            return Err(Error::Invalid(format!(
                "--rotate: '{name}' has {} values, not rows of the hidden size {d}",
                w.len()
            )));
        }
        if let Some(g) = g {
            for row in w.chunks_mut(d) {
                row.iter_mut().zip(g).for_each(|(v, s)| *v *= s);
            }
        }
        self.times_q(w, w.len() / d)
    }

    /// `x·Q` for `x[rows, hidden]`.
    fn times_q(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let d = self.config.hidden_size;
        let t = Tensor::from_vec(vec![rows, d], x.to_vec())?;
        self.device.matmul(&t, &self.qt, None)?.to_vec()
    }

    /// `Qᵀ·W` for a `[hidden, cols]` weight.
    fn writer(&self, w: &[f32], cols: usize) -> Result<Vec<f32>> {
        let d = self.config.hidden_size;
        let wt = transpose(w, d, cols);
        let p = self.times_q(&wt, cols)?; // Wᵀ·Q = (Qᵀ·W)ᵀ
        Ok(transpose(&p, cols, d))
    }

    /// Rotates every `head_dim` slice of every row by `R` (`x·R`).
    fn heads_times_r(&self, x: &mut [f32]) {
        let hd = self.config.head_dim;
        let mut tmp = vec![0f32; hd];
        for s in x.chunks_mut(hd) {
            for (j, t) in tmp.iter_mut().enumerate() {
                *t = (0..hd).map(|i| s[i] * self.r[i * hd + j]).sum();
            }
            s.copy_from_slice(&tmp);
        }
    }

    fn rotate(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let d = self.config.hidden_size;
        let layer_norm = |tail: &str| -> Result<Vec<f32>> {
            let layer: Vec<&str> = name.splitn(4, '.').take(3).collect();
            self.norm(&format!("{}.{tail}", layer.join(".")))
        };
        if name == "lm_head.weight" {
            let src = if self.has_head {
                "lm_head.weight"
            } else {
                "model.embed_tokens.weight"
            };
            let (mut w, shape) = self.values(src)?;
            let g = self.norm("model.norm.weight")?;
            return Ok((self.reader(&mut w, Some(&g), name)?, shape));
        }
        if name == "model.embed_tokens.weight" {
            let (mut w, shape) = self.values(name)?;
            return Ok((self.reader(&mut w, None, name)?, shape));
        }
        let (mut w, shape) = self.values(name)?;
        if name == "model.norm.weight"
            || name.ends_with(".input_layernorm.weight")
            || name.ends_with(".post_attention_layernorm.weight")
        {
            w.iter_mut().for_each(|v| *v = 1.0);
            return Ok((w, shape));
        }
        let Some(tail) = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .map(|x| x.1)
        else {
            return Ok((w, shape));
        };
        let out = match tail {
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" => {
                let g = layer_norm("input_layernorm.weight")?;
                self.reader(&mut w, Some(&g), name)?
            }
            "self_attn.v_proj.weight" => {
                let g = layer_norm("input_layernorm.weight")?;
                let w = self.reader(&mut w, Some(&g), name)?;
                // Rows of each head: Rᵀ·W_h, i.e. columns of W_hᵀ times R.
                let rows = w.len() / d;
                let mut wt = transpose(&w, rows, d);
                self.heads_times_r(&mut wt);
                transpose(&wt, d, rows)
            }
            "self_attn.v_proj.bias" => {
                self.heads_times_r(&mut w);
                w
            }
            "self_attn.o_proj.weight" => {
                let cols = w.len() / d;
                self.heads_times_r(&mut w);
                self.writer(&w, cols)?
            }
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => {
                let g = layer_norm("post_attention_layernorm.weight")?;
                self.reader(&mut w, Some(&g), name)?
            }
            "mlp.down_proj.weight" => {
                let cols = w.len() / d;
                self.writer(&w, cols)?
            }
            "self_attn.o_proj.bias" | "mlp.down_proj.bias" => self.times_q(&w, 1)?,
            "self_attn.q_proj.bias"
            | "self_attn.k_proj.bias"
            | "self_attn.q_norm.weight"
            | "self_attn.k_norm.weight" => w,
            _ => {
                return Err(Error::Invalid(format!(
                "--rotate does not know how to rotate '{name}' (dense Llama-style decoders only)"
            )))
            }
        };
        Ok((out, shape))
    }
}

impl WeightSource for RotatedSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The rotated tensor, F32 where the source is F32, else F16 (or F32
    /// when a value does not fit F16).
    fn tensor(&self, name: &str) -> Result<WeightData> {
        let src_format = if name == "lm_head.weight" && !self.has_head {
            self.inner.tensor("model.embed_tokens.weight")?.format
        } else {
            self.inner.tensor(name)?.format
        };
        let (v, shape) = self
            .rotate(name)
            .map_err(|e| Error::Invalid(format!("rotating '{name}': {e}")))?;
        let fits = v.iter().all(|x| x.abs() <= 65504.0);
        if src_format == WeightFormat::F32 || !fits || shape.len() < 2 {
            return f32_weight(shape, v);
        }
        let bytes: Vec<u8> = v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        WeightData::new(WeightFormat::F16, shape, HostBytes::owned(bytes))
    }

    fn contains(&self, name: &str) -> bool {
        name == "lm_head.weight" || self.inner.contains(name)
    }

    fn gguf(&self) -> Option<&GgufFile> {
        self.inner.gguf()
    }

    fn path(&self) -> Option<&Path> {
        self.inner.path()
    }

    /// The source's tensors (formats as [`tensor`](Self::tensor) returns
    /// them), plus `lm_head.weight` when the source ties it.
    fn describe(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .inner
            .describe()
            .into_iter()
            .map(|(n, f, s)| {
                let f = if f == "F32" || s.len() < 2 {
                    "F32"
                } else {
                    "F16"
                };
                (n, f.to_string(), s)
            })
            .collect();
        if !self.inner.contains("lm_head.weight") {
            let (v_, d) = (self.config.vocab_size, self.config.hidden_size);
            v.push(("lm_head.weight".into(), "F16".into(), vec![v_, d]));
            v.sort_by(|a, b| a.0.cmp(&b.0));
        }
        v
    }
}

fn f32_weight(shape: Vec<usize>, v: Vec<f32>) -> Result<WeightData> {
    WeightData::new(
        WeightFormat::F32,
        shape,
        HostBytes::owned(bytemuck::cast_slice(&v).to_vec()),
    )
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// A random `n × n` orthogonal matrix, row-major f64: random signs times
/// (Haar-random orthogonal of the odd part of `n`) ⊗ (normalized Sylvester
/// Hadamard of its power-of-two part).
pub fn orthogonal(n: usize, rng: &mut StdRng) -> Vec<f64> {
    let k = n.trailing_zeros() as usize;
    let (m, p) = (n >> k, 1usize << k);
    let o = haar(m, rng);
    let h = hadamard(p);
    let mut q = vec![0f64; n * n];
    for i in 0..n {
        let s = if rng.gen::<bool>() { 1.0 } else { -1.0 };
        let (i1, i2) = (i / p, i % p);
        for j in 0..n {
            let (j1, j2) = (j / p, j % p);
            q[i * n + j] = s * o[i1 * m + j1] * h[i2 * p + j2];
        }
    }
    q
}

/// Normalized Sylvester Hadamard matrix of order `p` (a power of two).
fn hadamard(p: usize) -> Vec<f64> {
    let scale = 1.0 / (p as f64).sqrt();
    (0..p * p)
        .map(|ij| {
            let (i, j) = (ij / p, ij % p);
            if (i & j).count_ones() % 2 == 0 {
                scale
            } else {
                -scale
            }
        })
        .collect()
}

/// A Haar-random `m × m` orthogonal matrix: Gram–Schmidt (twice, for
/// accuracy) of a Gaussian matrix's rows, which equals QR with the signs of
/// R's diagonal made positive.
fn haar(m: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut a: Vec<f64> = (0..m * m).map(|_| gaussian(rng)).collect();
    for i in 0..m {
        for _pass in 0..2 {
            for j in 0..i {
                let dot: f64 = (0..m).map(|c| a[i * m + c] * a[j * m + c]).sum();
                for c in 0..m {
                    a[i * m + c] -= dot * a[j * m + c];
                }
            }
        }
        let norm = (0..m).map(|c| a[i * m + c].powi(2)).sum::<f64>().sqrt();
        for c in 0..m {
            a[i * m + c] /= norm;
        }
    }
    a
}

/// A standard normal sample (Box–Muller).
fn gaussian(rng: &mut StdRng) -> f64 {
    let u: f64 = 1.0 - rng.gen::<f64>();
    let v: f64 = rng.gen::<f64>();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_are_orthogonal() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [1, 2, 9, 64, 96, 576] {
            let q = orthogonal(n, &mut rng);
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|c| q[i * n + c] * q[j * n + c]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-10, "n={n} ({i},{j}): {dot}");
                }
            }
        }
    }

    #[test]
    fn rotations_spread_every_axis() {
        // Incoherence: no entry of Q is far above 1/sqrt(n).
        let mut rng = StdRng::seed_from_u64(2);
        let n = 576;
        let q = orthogonal(n, &mut rng);
        let max = q.iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!(max * (n as f64).sqrt() < 6.0, "max entry {max}");
    }
}
