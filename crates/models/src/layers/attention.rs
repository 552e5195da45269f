//! Grouped-query self-attention with optional q/k/v biases (Qwen2) and
//! per-head q/k RMSNorm (Qwen3), over the paged KV cache.

use mm_core::{Device, KvStore, PagedParams, Result, Tensor};
use mm_formats::{ModelConfig, WeightSource};

use super::{Linear, RmsNorm, Rope};

/// Which optional parts an architecture's attention has.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionOptions {
    pub qkv_bias: bool,
    pub qk_norm: bool,
}

pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
}

impl Attention {
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        opt: AttentionOptions,
        device: &Device,
    ) -> Result<Self> {
        let (h, hkv, d, e) = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.hidden_size,
        );
        let lin = |name: &str, out, inp, bias| {
            Linear::load(src, &format!("{prefix}.{name}"), out, inp, bias, device)
        };
        let norm = |name: &str| {
            RmsNorm::load(
                src,
                &format!("{prefix}.{name}.weight"),
                d,
                cfg.rms_norm_eps,
                device,
            )
        };
        Ok(Self {
            q: lin("q_proj", h * d, e, opt.qkv_bias)?,
            k: lin("k_proj", hkv * d, e, opt.qkv_bias)?,
            v: lin("v_proj", hkv * d, e, opt.qkv_bias)?,
            o: lin("o_proj", e, h * d, false)?,
            q_norm: opt.qk_norm.then(|| norm("q_norm")).transpose()?,
            k_norm: opt.qk_norm.then(|| norm("k_norm")).transpose()?,
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: d,
            window: cfg.sliding_window,
        })
    }

    /// (stored bytes, parameters) of the projections and q/k norms.
    pub fn size(&self) -> (usize, usize) {
        let lin = [&self.q, &self.k, &self.v, &self.o].map(|l| l.size());
        let norms = [&self.q_norm, &self.k_norm].map(|n| n.as_ref().map_or((0, 0), |n| n.size()));
        lin.iter()
            .chain(norms.iter())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The q, k, v and o projections, in that order.
    /// `(heads, kv heads, head dim, sliding window)`.
    pub fn shape(&self) -> (usize, usize, usize, Option<usize>) {
        (self.n_heads, self.n_kv_heads, self.head_dim, self.window)
    }

    /// The per-head RMSNorms of queries and keys (Qwen3), when present.
    pub fn head_norms(&self) -> (Option<&RmsNorm>, Option<&RmsNorm>) {
        (self.q_norm.as_ref(), self.k_norm.as_ref())
    }

    pub fn linears(&self) -> [&Linear; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }

    /// The q, k, v and o projections, mutably.
    pub fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o]
    }

    /// Per-head RMSNorm: views `x[n, heads*d]` as `[n*heads, d]`.
    fn head_norm(&self, norm: &Option<RmsNorm>, x: Tensor, device: &Device) -> Result<Tensor> {
        match norm {
            None => Ok(x),
            Some(nm) => {
                let shape = x.shape().to_vec();
                let rows = x.numel() / self.head_dim;
                nm.forward(&x.reshape(vec![rows, self.head_dim])?, device)?
                    .reshape(shape)
            }
        }
    }

    /// Attends the flattened batch `x[rows, hidden]` of `step`: writes the
    /// rows' keys and values into their slots of the layer's stores, then
    /// paged attention of every sequence over its cached keys.
    pub fn forward(
        &self,
        x: &Tensor,
        step: &crate::Step,
        rope: &Rope,
        k_cache: &mut KvStore,
        v_cache: &mut KvStore,
        device: &Device,
    ) -> Result<Tensor> {
        let kinds = Some(&step.kinds[..]);
        let q = self.q.forward_rows(x, kinds, device)?;
        let q = self.head_norm(&self.q_norm, q, device)?;
        let k = self.k.forward_rows(x, kinds, device)?;
        let k = self.head_norm(&self.k_norm, k, device)?;
        let v = self.v.forward_rows(x, kinds, device)?;
        let q = rope.forward(&q, &step.positions, device)?;
        let k = rope.forward(&k, &step.positions, device)?;
        device.write_kv(k_cache, &step.slots, &k)?;
        device.write_kv(v_cache, &step.slots, &v)?;
        let p = PagedParams {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            window: self.window,
        };
        let a = device.paged_attention(&q, k_cache, v_cache, &step.batch, &p)?;
        self.o.forward_rows(&a, kinds, device)
    }
}
