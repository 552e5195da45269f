//! The pre-norm decoder stack shared by the Llama family:
//! `h += attn(norm(h)); h += ffn(norm(h))`, final norm, LM head.
//! Architecture files fill it; attention and feed-forward are fields of a
//! layer so MoE feed-forwards and MLA attention slot in beside them.

use mm_core::{Device, Error, KvDType, Result, RowKind, StepInputs, Tensor, WeightData};
use mm_formats::{ModelConfig, WeightSource};

use crate::layers::{
    AttentionOptions, Ffn, Linear, LinearObserver, MlaForm, RmsNorm, Rope, SelfAttention,
};
use crate::{KvCache, PagedKv, Step};

/// One decoder layer.
pub struct DecoderLayer {
    pub attn_norm: RmsNorm,
    pub attn: SelfAttention,
    pub ffn_norm: RmsNorm,
    pub ffn: Ffn,
}

/// Sizes of a model's weights, as stored (quantized bytes, not the form a
/// backend may expand them to).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightSummary {
    /// Stored bytes of every weight, a tied embedding counted once.
    pub bytes: usize,
    /// Parameters, a tied embedding counted once.
    pub params: usize,
    /// Stored bytes one decoded token reads: every layer (of a MoE layer
    /// its router, shared experts and `top_k` average routed experts), the
    /// final norm, the LM head and one embedding row.
    pub bytes_per_token: usize,
}

/// A causal language model: embeddings, decoder layers, final norm, head.
pub struct DecoderModel {
    pub config: ModelConfig,
    /// Unique per model ([`mm_core::unique_id`]): keys recorded steps.
    id: u64,
    device: Device,
    embed: WeightData,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// The LM head is the embedding table.
    tied: bool,
    rope: Rope,
    /// A decode step reads nothing back to the host mid-step (no MoE
    /// routing), so a backend may record and replay it.
    replayable: bool,
}

impl DecoderModel {
    /// Loads the standard HF tensor layout with the given attention options.
    pub fn load(
        src: &dyn WeightSource,
        device: &Device,
        opt: AttentionOptions,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self> {
        let cfg = src.config().clone();
        let (e, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed = src.tensor("model.embed_tokens.weight")?;
        if embed.shape != [v, e] {
            return Err(Error::Shape {
                name: "model.embed_tokens.weight".into(),
                expected: vec![v, e],
                found: embed.shape.clone(),
            });
        }
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            progress(i, cfg.num_layers);
            let p = format!("model.layers.{i}");
            layers.push(DecoderLayer {
                attn_norm: RmsNorm::load(
                    src,
                    &format!("{p}.input_layernorm.weight"),
                    e,
                    cfg.rms_norm_eps,
                    device,
                )?,
                attn: SelfAttention::load(src, &format!("{p}.self_attn"), &cfg, opt, device)?,
                ffn_norm: RmsNorm::load(
                    src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    e,
                    cfg.rms_norm_eps,
                    device,
                )?,
                ffn: Ffn::load(src, &p, i, &cfg, device)?,
            });
        }
        progress(cfg.num_layers, cfg.num_layers);
        let tied = cfg.tie_word_embeddings || !src.contains("lm_head.weight");
        let lm_head = if tied {
            Linear::from_weight("model.embed_tokens.weight", embed.clone(), v, e, device)?
        } else {
            Linear::load(src, "lm_head", v, e, false, device)?
        };
        let rope = Rope::new(&cfg)?;
        // Layers that read results back to the host mid-step cannot be
        // recorded for replay. Attention of every kind (grouped-query,
        // partial RoPE, multi-head latent) keeps a decode step on the
        // device; a MoE feed-forward does where the device routes and runs
        // its experts.
        let replayable = layers.iter().all(|l| l.ffn.stays_on_device(device));
        Ok(Self {
            norm: RmsNorm::load(src, "model.norm.weight", e, cfg.rms_norm_eps, device)?,
            rope,
            replayable,
            id: mm_core::unique_id(),
            device: device.clone(),
            config: cfg,
            embed,
            layers,
            lm_head,
            tied,
        })
    }

    /// A single-sequence KV cache for up to `capacity` positions (at most
    /// the model's context), in the backend's default KV type (f16; f32 on
    /// the exact reference backend).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.new_cache_with(capacity, self.device.default_kv_dtype())
    }

    /// [`new_cache`](Self::new_cache) storing keys and values in `dtype`.
    pub fn new_cache_with(&self, capacity: usize, dtype: KvDType) -> Result<KvCache> {
        let c = &self.config;
        KvCache::new(
            &self.device,
            c.num_layers,
            capacity.min(c.max_position_embeddings).max(1),
            self.kv_widths(),
            dtype,
        )
    }

    /// Values a token's cache row holds per layer: `(keys, values)`; kv
    /// heads × head dim each, or for multi-head latent attention the latent
    /// and rotated key, and no values.
    pub fn kv_widths(&self) -> (usize, usize) {
        self.config.kv_widths()
    }

    /// Bytes of KV cache one token takes over every layer in `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: KvDType) -> usize {
        let (k, v) = self.kv_widths();
        self.config.num_layers * (k + v) * dtype.bytes()
    }

    /// The KV element type of this model's backend by default (f16; f32 on
    /// the exact reference backend).
    pub fn default_kv_dtype(&self) -> KvDType {
        self.device.default_kv_dtype()
    }

    /// A paged KV cache of `num_blocks` blocks of `block_size` tokens, shared
    /// by the sequences of batched steps ([`forward_step`](Self::forward_step)).
    pub fn new_paged(
        &self,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDType,
    ) -> Result<PagedKv> {
        let c = &self.config;
        PagedKv::new(
            &self.device,
            c.num_layers,
            num_blocks,
            block_size,
            self.kv_widths(),
            dtype,
        )
    }

    /// Runs one batched step: the flattened tokens of `step`'s sequences
    /// through every layer, their keys and values written into `kv` at
    /// `step.slots`. Returns the logits of `step.logits_rows`,
    /// `[logits_rows.len(), vocab]`. This is the only forward path: the
    /// single-sequence [`forward`](Self::forward) builds a one-sequence step.
    pub fn forward_step(&self, step: &Step, kv: &mut PagedKv) -> Result<Tensor> {
        step.validate(kv)?;
        if kv.layers() != self.layers.len() {
            return Err(Error::Invalid(format!(
                "a KV cache of {} layers given to a model of {}",
                kv.layers(),
                self.layers.len()
            )));
        }
        let vocab = self.config.vocab_size;
        if let Some(&bad) = step.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        // A decode step (one generated token per sequence, every row's
        // logits) reads nothing but its inputs that changes from step to
        // step: the backend may replay a recording of it.
        let n = step.ids.len();
        // Layers that read device results on the host mid-step (see
        // `replayable`) would not be redone by a recording: such models
        // never take that path.
        let decode = self.replayable
            && step.batch.seqs.iter().all(|s| s.q_len == 1)
            && step.kinds.iter().all(|&k| k == RowKind::Generated)
            && step.logits_rows.len() == n
            && step.logits_rows.iter().enumerate().all(|(i, &r)| i == r);
        if decode {
            let inputs = StepInputs {
                key: (self.id, kv.id),
                ids: &step.ids,
                positions: &step.positions,
                slots: &step.slots,
                batch: &step.batch,
            };
            return self
                .device
                .run_step(&inputs, &mut || self.step_body(step, kv));
        }
        self.step_body(step, kv)
    }

    /// The ops of a validated step.
    fn step_body(&self, step: &Step, kv: &mut PagedKv) -> Result<Tensor> {
        let dev = &self.device;
        let mut h = dev.embedding(&step.ids, &self.embed)?;
        for l in 0..self.layers.len() {
            h = self.layer_step(l, &h, step, kv)?.1;
        }
        let n = step.ids.len();
        let kinds: Vec<_> = step.logits_rows.iter().map(|&r| step.kinds[r]).collect();
        if step.logits_rows.len() != n || step.logits_rows.iter().enumerate().any(|(i, &r)| i != r)
        {
            let e = self.config.hidden_size;
            let all = h.to_vec()?;
            let mut rows = Vec::with_capacity(step.logits_rows.len() * e);
            for &r in &step.logits_rows {
                rows.extend_from_slice(&all[r * e..(r + 1) * e]);
            }
            h = dev.upload(&Tensor::from_vec(vec![step.logits_rows.len(), e], rows)?)?;
        }
        let x = self.norm.forward(&h, dev)?;
        self.lm_head.forward_rows(&x, Some(&kinds), dev)
    }

    /// Runs `ids` after what `cache` holds and returns logits `[rows, vocab]`:
    /// every position when `all_logits`, else only the last.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::Invalid("forward called with no tokens".into()));
        }
        let step = cache.step(ids, all_logits)?;
        let logits = self.forward_step(&step, &mut cache.paged)?;
        cache.advance(ids.len());
        Ok(logits)
    }

    /// The embedding rows of `ids`: the residual stream entering layer 0.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.device.embedding(ids, &self.embed)
    }

    /// Runs decoder layer `l` on the residual stream `h[rows, hidden]` of the
    /// tokens at `positions`, which follow the `cache.len()` positions the
    /// cache holds, and returns the new residual stream. Writes the layer's
    /// keys and values into `cache` but does not advance it: after the last
    /// layer [`forward`](Self::forward) does. Layer-by-layer calibration
    /// (sequential GPTQ) calls it with a cleared cache.
    pub fn forward_layer(
        &self,
        l: usize,
        h: &Tensor,
        positions: &[u32],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        Ok(self.forward_layer_mid(l, h, positions, cache)?.1)
    }

    /// [`forward_layer`](Self::forward_layer), also returning the residual
    /// stream between the attention and the MLP blocks (`h + attention`,
    /// what the MLP's output is added to): `(mid, out)`.
    pub fn forward_layer_mid(
        &self,
        l: usize,
        h: &Tensor,
        positions: &[u32],
        cache: &mut KvCache,
    ) -> Result<(Tensor, Tensor)> {
        let pos0 = cache.len();
        if positions
            .iter()
            .enumerate()
            .any(|(i, &p)| p as usize != pos0 + i)
        {
            return Err(Error::Invalid(format!(
                "forward_layer: positions must follow the cache's {pos0}"
            )));
        }
        // The ids are not read by a layer; the step only carries the layout.
        let step = cache.step(&vec![0; positions.len()], false)?;
        step.validate(&cache.paged)?;
        self.layer_step(l, h, &step, &mut cache.paged)
    }

    /// Layer `l` of a step: `(h + attention, h + attention + mlp)`.
    fn layer_step(
        &self,
        l: usize,
        h: &Tensor,
        step: &Step,
        kv: &mut PagedKv,
    ) -> Result<(Tensor, Tensor)> {
        let layer = self.layers.get(l).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {l} does not exist (the model has {})",
                self.layers.len()
            ))
        })?;
        if kv.k.len() != self.layers.len() {
            return Err(Error::Invalid(format!(
                "a KV cache of {} layers given to a model of {}",
                kv.k.len(),
                self.layers.len()
            )));
        }
        let dev = &self.device;
        let x = layer.attn_norm.forward(h, dev)?;
        let a = layer
            .attn
            .forward(&x, step, &self.rope, &mut kv.k[l], &mut kv.v[l], dev)?;
        let h = dev.add(h, &a)?;
        let x = layer.ffn_norm.forward(&h, dev)?;
        let out = dev.add(&h, &layer.ffn.forward_rows(&x, Some(&step.kinds), dev)?)?;
        Ok((h, out))
    }

    /// The linear layer whose weight is `name`
    /// (`model.layers.3.mlp.down_proj.weight`), for replacing its weight.
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                let mut v = l.attn.linears_mut();
                v.extend(l.ffn.linears_mut());
                v
            })
            .chain(std::iter::once(&mut self.lm_head))
            .find(|lin| lin.name() == name)
    }

    /// Runs every multi-head latent attention layer in `form` (the default,
    /// [`MlaForm::Auto`], expands prompt rows and absorbs generated ones);
    /// nothing for other attention.
    pub fn set_mla_form(&mut self, form: MlaForm) {
        for l in &mut self.layers {
            l.attn.set_mla_form(form);
        }
    }

    /// Decoder layer `l`.
    pub fn layer(&self, l: usize) -> Option<&DecoderLayer> {
        self.layers.get(l)
    }

    /// The rotary embedding every layer applies.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Stored sizes of the weights (for reports and bandwidth estimates).
    pub fn weight_summary(&self) -> WeightSummary {
        let add = |a: (usize, usize), b: (usize, usize)| (a.0 + b.0, a.1 + b.1);
        let mut body = self.norm.size();
        // What a token skips: the experts it is not routed to.
        let mut unread = 0;
        for l in &self.layers {
            body = add(body, l.attn_norm.size());
            body = add(body, l.attn.size());
            body = add(body, l.ffn_norm.size());
            body = add(body, l.ffn.size());
            unread += l.ffn.size().0 - l.ffn.token_bytes();
        }
        let head = self.lm_head.size();
        let embed = (self.embed.stored_bytes(), self.embed.numel());
        let rows = self.embed.shape.first().copied().unwrap_or(1).max(1);
        let (bytes, params) = if self.tied {
            add(body, embed)
        } else {
            add(add(body, embed), head)
        };
        WeightSummary {
            bytes,
            params,
            bytes_per_token: body.0 - unread + head.0 + embed.0 / rows,
        }
    }

    /// Every linear layer in forward order: per decoder layer q, k, v, o,
    /// then gate, up, down (a MoE layer: its router, each expert's gate, up
    /// and down, its shared experts'); then the LM head (named `model.embed_tokens.weight`
    /// when tied to the embeddings).
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = Vec::with_capacity(self.layers.len() * 7 + 1);
        for l in &self.layers {
            v.extend(l.attn.linears());
            v.extend(l.ffn.linears());
        }
        v.push(&self.lm_head);
        v
    }

    /// Installs `observer` on every linear layer (see [`LinearObserver`]),
    /// or removes it with `None`. Without an observer, forward passes do
    /// exactly what they did before; with one, their results are unchanged.
    pub fn set_linear_observer(&mut self, observer: Option<LinearObserver>) {
        for l in &mut self.layers {
            for lin in l.attn.linears_mut() {
                lin.set_observer(observer.clone());
            }
            for lin in l.ffn.linears_mut() {
                lin.set_observer(observer.clone());
            }
        }
        self.lm_head.set_observer(observer);
    }

    /// Calibration: every MoE block shows its routed experts' observers
    /// all the rows entering it (`true`) or only their routed rows
    /// (`false`, the default); see [`crate::layers::Moe::set_observe_all_tokens`].
    pub fn set_moe_observe_all_tokens(&mut self, all: bool) {
        for l in &mut self.layers {
            l.ffn.set_observe_all_tokens(all);
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}
