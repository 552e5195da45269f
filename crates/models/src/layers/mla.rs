//! Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash), as
//! transformers 5's `DeepseekV3Attention` computes it, over a compressed
//! paged cache.
//!
//! Per token: `q = q_b(q_a_norm(q_a(x)))` (or `q_proj(x)`), per head
//! `qk_nope` position-free values and `qk_rope` rotated ones;
//! `kv_a_proj_with_mqa(x)` gives the latent `c` (`kv_lora_rank` values,
//! normalised by `kv_a_layernorm`) and one rotated key `k_pe` shared by
//! every head. The cache keeps only `[c | k_pe]` per token and layer (576
//! values for GLM-4.7-Flash, against 2 × 20 × 256 for its expanded keys
//! and values): the layer's key store, `kv_lora_rank + qk_rope_head_dim`
//! wide; its value store is empty.
//!
//! Two forms compute the same attention:
//! - **expanded** (prompt rows): the sequence's cached latents are read
//!   back ([`Device::gather_kv`]) and expanded through `kv_b_proj` into
//!   per-head keys `[k_nope | k_pe]` and values; ordinary attention over
//!   them (values zero-padded to the key width when narrower, the padding
//!   dropped after).
//! - **absorbed** (generated rows): `kv_b_proj`'s key part is folded into
//!   each head's query (`q_nope · W_UK_h`, a `kv_lora_rank` vector), so the
//!   query `[q_nope·W_UK_h | q_pe]` attends over the cache rows themselves
//!   as one key-and-value head 576 wide (paged attention with K = V = the
//!   store); the first `kv_lora_rank` outputs of each head go through the
//!   value part `W_UV_h` ([`Device::head_matmul`]).
//!
//! [`MlaForm`] forces either form on every row (tests check both against
//! transformers). Interleaved RoPE pairs (`rope_interleave`) are taken
//! apart into transformers' output layout (evens, then odds) before the
//! rotate-half RoPE, which is what transformers computes.
//!
//! Heads are taken apart and put together on the device
//! ([`Device::slice_cols`], [`Device::concat_cols`]: the query's parts,
//! the cache row `[c | k_pe]`, the absorbed query `[q_lat | q_pe]`, the
//! expanded keys and values and their padding). A step whose rows all run
//! one form (a decode step: every row absorbed) reads nothing back to the
//! host, so a backend may record and replay it. What still goes through
//! the host: a step mixing forms gathers each form's query rows and
//! scatters its outputs there, and the expanded form's per-call index
//! arrays (the slots it reads back, its one-slot-per-key tables) are
//! uploaded, as any prompt step's are.

use mm_core::{
    Device, Error, KvDType, KvStore, PagedBatch, PagedParams, Result, RowKind, SeqSpan, Tensor,
};
use mm_formats::{MlaConfig, ModelConfig, RopeScaling, WeightSource};

use super::{Linear, RmsNorm, Rope};

/// The eps of `q_a_layernorm` and `kv_a_layernorm` (transformers'
/// `DeepseekV3RMSNorm` default, whatever `rms_norm_eps` says).
const LATENT_NORM_EPS: f32 = 1e-6;

/// Which form of multi-head latent attention a row runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MlaForm {
    /// Prompt rows expanded, generated rows absorbed.
    #[default]
    Auto,
    /// Every row expanded.
    Expanded,
    /// Every row absorbed.
    Absorbed,
}

/// The query projection: one matrix, or a low-rank pair with a norm.
// One per layer: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum QProj {
    Plain(Linear),
    Lora { a: Linear, norm: RmsNorm, b: Linear },
}

/// One MLA layer's weights and shape.
pub struct Mla {
    q: QProj,
    kv_a: Linear,
    kv_norm: RmsNorm,
    kv_b: Linear,
    o: Linear,
    /// `W_UKᵀ` per head, `[heads, kv_lora, qk_nope]`: folds a head's
    /// position-free query into the latent space (f32 copy of `kv_b`'s key
    /// rows).
    w_uk_t: Tensor,
    /// `W_UV` per head, `[heads, v_head_dim, kv_lora]` (f32 copy of
    /// `kv_b`'s value rows).
    w_uv: Tensor,
    cfg: MlaConfig,
    heads: usize,
    scale: f32,
    form: MlaForm,
}

impl Mla {
    /// Loads `{prefix}.q_proj` or `q_a_proj`/`q_a_layernorm`/`q_b_proj`,
    /// `kv_a_proj_with_mqa`, `kv_a_layernorm`, `kv_b_proj` and `o_proj`
    /// (biases on `q_a`, `kv_a` and `o` with `attention_bias`).
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        cfg: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let m = cfg.mla.ok_or_else(|| {
            Error::Config("multi-head latent attention without its config".into())
        })?;
        let (h, e, bias) = (cfg.num_heads, cfg.hidden_size, cfg.attention_bias);
        let (qk, lat) = (m.qk_head_dim(), m.kv_lora_rank);
        let lin = |name: &str, out, inp, bias| {
            Linear::load(src, &format!("{prefix}.{name}"), out, inp, bias, device)
        };
        // transformers builds q_a_layernorm and kv_a_layernorm with the
        // RMSNorm's default eps, not the config's rms_norm_eps.
        let norm = |name: &str, dim| {
            RmsNorm::load(
                src,
                &format!("{prefix}.{name}.weight"),
                dim,
                LATENT_NORM_EPS,
                device,
            )
        };
        let q = match m.q_lora_rank {
            None => QProj::Plain(lin("q_proj", h * qk, e, false)?),
            Some(r) => QProj::Lora {
                a: lin("q_a_proj", r, e, bias)?,
                norm: norm("q_a_layernorm", r)?,
                b: lin("q_b_proj", h * qk, r, false)?,
            },
        };
        let kv_b = lin(
            "kv_b_proj",
            h * (m.qk_nope_head_dim + m.v_head_dim),
            lat,
            false,
        )?;
        let (w_uk_t, w_uv) = absorbed_weights(&kv_b, &m, h, device)?;
        Ok(Self {
            q,
            kv_a: lin("kv_a_proj_with_mqa", m.cache_width(), e, bias)?,
            kv_norm: norm("kv_a_layernorm", lat)?,
            kv_b,
            o: lin("o_proj", e, h * m.v_head_dim, bias)?,
            w_uk_t,
            w_uv,
            scale: softmax_scale(cfg.rope_scaling.as_ref(), qk),
            cfg: m,
            heads: h,
            form: MlaForm::Auto,
        })
    }

    /// Forces a form on every row ([`MlaForm::Auto`]: by row kind).
    pub fn set_form(&mut self, form: MlaForm) {
        self.form = form;
    }

    /// The multiplier of `q·k` (`qk_head_dim^-½`, times YaRN's `mscale²`).
    pub fn softmax_scale(&self) -> f32 {
        self.scale
    }

    /// The projections as stored: q (or q_a, q_b), kv_a, kv_b, o.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = match &self.q {
            QProj::Plain(q) => vec![q],
            QProj::Lora { a, b, .. } => vec![a, b],
        };
        v.extend([&self.kv_a, &self.kv_b, &self.o]);
        v
    }

    /// [`linears`](Self::linears), mutably. A new `kv_b_proj` weight is not
    /// seen by the absorbed form, which keeps its own f32 copy from load.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = match &mut self.q {
            QProj::Plain(q) => vec![q],
            QProj::Lora { a, b, .. } => vec![a, b],
        };
        v.extend([&mut self.kv_a, &mut self.kv_b, &mut self.o]);
        v
    }

    /// (stored bytes, parameters) of the projections and norms (the
    /// absorbed form's f32 copies are derived, not counted).
    pub fn size(&self) -> (usize, usize) {
        let mut parts: Vec<(usize, usize)> = self.linears().iter().map(|l| l.size()).collect();
        parts.push(self.kv_norm.size());
        if let QProj::Lora { norm, .. } = &self.q {
            parts.push(norm.size());
        }
        parts.iter().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Attends the flattened batch `x[rows, hidden]` of `step`: writes each
    /// row's latent and rotated key into its slot of `cache` (the layer's
    /// key store, [`MlaConfig::cache_width`] wide), then attention of every
    /// row over its sequence's cached rows in the row's form. Every tensor
    /// stays on the device unless the step mixes forms (see the module
    /// docs).
    pub fn forward(
        &self,
        x: &Tensor,
        step: &crate::Step,
        rope: &Rope,
        cache: &mut KvStore,
        device: &Device,
    ) -> Result<Tensor> {
        let m = &self.cfg;
        let (h, n) = (self.heads, step.ids.len());
        let (nope, rd, lat, vd) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.kv_lora_rank,
            m.v_head_dim,
        );
        let (kinds, pairs) = (Some(&step.kinds[..]), m.rope_interleave);
        let q = match &self.q {
            QProj::Plain(q) => q.forward_rows(x, kinds, device)?,
            QProj::Lora { a, norm, b } => {
                let qa = norm.forward(&a.forward_rows(x, kinds, device)?, device)?;
                b.forward_rows(&qa, kinds, device)?
            }
        };
        // Per head: the position-free part, and the rotated part in
        // transformers' layout.
        let q_nope = device.slice_cols(&q, h, 0, nope, false)?;
        let q_pe = device.slice_cols(&q, h, nope, rd, pairs)?;
        let q_pe = rope.forward(&q_pe, &step.positions, device)?;
        let kv = self.kv_a.forward_rows(x, kinds, device)?;
        let c = self
            .kv_norm
            .forward(&device.slice_cols(&kv, 1, 0, lat, false)?, device)?;
        let k_pe = device.slice_cols(&kv, 1, lat, rd, pairs)?;
        let k_pe = rope.forward(&k_pe, &step.positions, device)?;
        let rows = device.concat_cols(&c, &k_pe, 1, 1)?;
        device.write_kv(cache, &step.slots, &rows)?;

        let subs = split_by_form(&step.batch, &step.kinds, self.form);
        let out = match &subs[..] {
            // Every row in one form, in order: no gathering or scattering.
            [(absorbed, sub)] if sub.rows.iter().copied().eq(0..n) => {
                self.attend(*absorbed, &q_nope, &q_pe, sub, cache, device)?
            }
            _ => {
                let mut out = vec![0.0f32; n * h * vd];
                for (absorbed, sub) in &subs {
                    let (qn, qp) = (
                        rows_of(&q_nope, &sub.rows, device)?,
                        rows_of(&q_pe, &sub.rows, device)?,
                    );
                    let part = self
                        .attend(*absorbed, &qn, &qp, sub, cache, device)?
                        .to_vec()?;
                    for (i, &r) in sub.rows.iter().enumerate() {
                        out[r * h * vd..][..h * vd].copy_from_slice(&part[i * h * vd..][..h * vd]);
                    }
                }
                host(vec![n, h * vd], out, device)?
            }
        };
        self.o.forward_rows(&out, kinds, device)
    }

    /// `sub`'s rows in its form, from their queries' position-free parts
    /// `q_nope[rows, heads·qk_nope]` and rotated parts
    /// `q_pe[rows, heads·qk_rope]`: `[rows, heads·v_head_dim]`.
    fn attend(
        &self,
        absorbed: bool,
        q_nope: &Tensor,
        q_pe: &Tensor,
        sub: &SubBatch,
        cache: &KvStore,
        device: &Device,
    ) -> Result<Tensor> {
        if absorbed {
            self.absorbed(q_nope, q_pe, sub, cache, device)
        } else {
            self.expanded(q_nope, q_pe, sub, cache, device)
        }
    }

    /// The absorbed form (see [`Mla::attend`]).
    fn absorbed(
        &self,
        q_nope: &Tensor,
        q_pe: &Tensor,
        sub: &SubBatch,
        cache: &KvStore,
        device: &Device,
    ) -> Result<Tensor> {
        let (h, lat) = (self.heads, self.cfg.kv_lora_rank);
        let q_lat = device.head_matmul(q_nope, &self.w_uk_t)?;
        let q = device.concat_cols(&q_lat, q_pe, h, h)?;
        let p = PagedParams {
            n_heads: h,
            n_kv_heads: 1,
            head_dim: self.cfg.cache_width(),
            scale: self.scale,
            window: None,
        };
        let a = device.paged_attention(&q, cache, cache, &sub.batch, &p)?;
        let o_lat = device.slice_cols(&a, h, 0, lat, false)?;
        device.head_matmul(&o_lat, &self.w_uv)
    }

    /// The expanded form (see [`Mla::attend`]).
    fn expanded(
        &self,
        q_nope: &Tensor,
        q_pe: &Tensor,
        sub: &SubBatch,
        cache: &KvStore,
        device: &Device,
    ) -> Result<Tensor> {
        let m = &self.cfg;
        let h = self.heads;
        let (nope, rd, lat, vd, qk) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.kv_lora_rank,
            m.v_head_dim,
            m.qk_head_dim(),
        );
        let d = qk.max(vd);
        // Every key position of every sequence, read back from the cache.
        let b = &sub.batch;
        let mut slots = Vec::new();
        let mut seqs = Vec::with_capacity(b.seqs.len());
        for s in &b.seqs {
            seqs.push(SeqSpan {
                table_start: slots.len(),
                ..*s
            });
            slots.extend((0..s.kv_len).map(|t| b.slot(s, t) as u32));
        }
        let t = slots.len();
        let cached = device.gather_kv(cache, &slots)?;
        let c = device.slice_cols(&cached, 1, 0, lat, false)?;
        let kvb = self
            .kv_b
            .forward_rows(&c, Some(&vec![RowKind::Prompt; t]), device)?;
        // Per head: keys [k_nope | k_pe] (k_pe shared by every head) and
        // values, each zero-padded to d (a window reading past its end).
        let k_nope = device.slice_cols(&kvb, h, 0, nope, false)?;
        let k_pe = device.slice_cols(&cached, 1, lat, rd, false)?;
        let k = pad(&device.concat_cols(&k_nope, &k_pe, h, 1)?, h, qk, d, device)?;
        let v = device.slice_cols(&kvb, h, nope, d, false)?;
        let q = pad(&device.concat_cols(q_nope, q_pe, h, h)?, h, qk, d, device)?;
        // The expanded keys and values as f32 stores of one slot per key
        // (blocks of 1, each sequence's table its own run of slots).
        let all: Vec<u32> = (0..t as u32).collect();
        let store = |vals: &Tensor| -> Result<KvStore> {
            let mut st = device.kv_store(t, h * d, KvDType::F32)?;
            device.write_kv(&mut st, &all, vals)?;
            Ok(st)
        };
        let (ks, vs) = (store(&k)?, store(&v)?);
        let batch = PagedBatch {
            seqs,
            block_tables: all.clone(),
            block_size: 1,
        };
        let p = PagedParams {
            n_heads: h,
            n_kv_heads: h,
            head_dim: d,
            scale: self.scale,
            window: None,
        };
        let a = device.paged_attention(&q, &ks, &vs, &batch, &p)?;
        pad(&a, h, d, vd, device)
    }
}

/// The multiplier of `q·k`: `qk_head_dim^-½`, times `mscale²` with
/// `mscale = yarn_get_mscale(factor, mscale_all_dim)` under a YaRN scaling
/// that gives `mscale_all_dim` (transformers' `yarn_apply_mscale`).
fn softmax_scale(s: Option<&RopeScaling>, qk_head_dim: usize) -> f32 {
    let scale = (qk_head_dim as f64).powf(-0.5);
    match s {
        Some(RopeScaling::Yarn {
            factor,
            mscale_all_dim: Some(a),
            ..
        }) if *a != 0.0 => {
            let m = mm_formats::yarn_get_mscale(*factor as f64, *a as f64);
            (scale * m * m) as f32
        }
        _ => scale as f32,
    }
}

/// Each group of `x[n, groups*width]` cut or zero-padded to `to` columns
/// (`x` itself when `to == width`).
fn pad(x: &Tensor, groups: usize, width: usize, to: usize, device: &Device) -> Result<Tensor> {
    match to == width {
        true => Ok(x.clone()),
        false => device.slice_cols(x, groups, 0, to, false),
    }
}

/// Rows `rows` of `x` in that order, through the host (`x` itself when
/// they are all of its rows in order).
fn rows_of(x: &Tensor, rows: &[usize], device: &Device) -> Result<Tensor> {
    let (n, w) = x.dims2()?;
    if rows.iter().copied().eq(0..n) {
        return Ok(x.clone());
    }
    let all = x.to_vec()?;
    let v = rows.iter().flat_map(|&r| all[r * w..][..w].iter().copied());
    host(vec![rows.len(), w], v.collect(), device)
}

/// A host tensor of `shape`, on `device`.
fn host(shape: Vec<usize>, v: Vec<f32>, device: &Device) -> Result<Tensor> {
    device.upload(&Tensor::from_vec(shape, v)?)
}

/// Rows of a step that run one form, as their own paged batch.
struct SubBatch {
    /// The step rows, in the sub-batch's row order.
    rows: Vec<usize>,
    /// Their spans (each a run of consecutive rows of one sequence).
    batch: PagedBatch,
}

/// Splits a step's rows by form: `(absorbed, rows)` for each form that has
/// rows. A sequence's run of consecutive rows of one form keeps its keys
/// up to its last row, so each row still sees exactly its own prefix.
fn split_by_form(b: &PagedBatch, kinds: &[RowKind], form: MlaForm) -> Vec<(bool, SubBatch)> {
    let absorbed = |r: usize| match form {
        MlaForm::Absorbed => true,
        MlaForm::Expanded => false,
        MlaForm::Auto => kinds[r] == RowKind::Generated,
    };
    let mut subs = [false, true].map(|_| SubBatch {
        rows: Vec::new(),
        batch: PagedBatch {
            seqs: Vec::new(),
            block_tables: b.block_tables.clone(),
            block_size: b.block_size,
        },
    });
    for s in &b.seqs {
        let end = s.q_start + s.q_len;
        let mut a = s.q_start;
        while a < end {
            let f = absorbed(a);
            let mut z = a + 1;
            while z < end && absorbed(z) == f {
                z += 1;
            }
            let sub = &mut subs[f as usize];
            sub.batch.seqs.push(SeqSpan {
                q_start: sub.rows.len(),
                q_len: z - a,
                kv_len: s.kv_len - s.q_len + (z - s.q_start),
                table_start: s.table_start,
            });
            sub.rows.extend(a..z);
            a = z;
        }
    }
    let [e, a] = subs;
    [(false, e), (true, a)]
        .into_iter()
        .filter(|(_, s)| !s.rows.is_empty())
        .collect()
}

/// `kv_b_proj`'s key rows per head transposed, `[heads, kv_lora, nope]`,
/// and its value rows per head, `[heads, v, kv_lora]`, as f32 tensors.
fn absorbed_weights(
    kv_b: &Linear,
    m: &MlaConfig,
    h: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (nope, vd, lat) = (m.qk_nope_head_dim, m.v_head_dim, m.kv_lora_rank);
    let w = mm_quant::dequantize_ref(&kv_b.weight)?;
    let mut uk = vec![0.0f32; h * lat * nope];
    let mut uv = Vec::with_capacity(h * vd * lat);
    for hd in 0..h {
        let head = &w[hd * (nope + vd) * lat..][..(nope + vd) * lat];
        for i in 0..nope {
            for c in 0..lat {
                uk[(hd * lat + c) * nope + i] = head[i * lat + c];
            }
        }
        uv.extend_from_slice(&head[nope * lat..]);
    }
    Ok((
        host(vec![h, lat, nope], uk, device)?,
        host(vec![h, vd, lat], uv, device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_by_kind_keep_their_prefixes() {
        // One sequence of 3 prompt rows after 2 cached keys, one decoding.
        let b = PagedBatch {
            seqs: vec![
                SeqSpan {
                    q_start: 0,
                    q_len: 3,
                    kv_len: 5,
                    table_start: 0,
                },
                SeqSpan {
                    q_start: 3,
                    q_len: 1,
                    kv_len: 9,
                    table_start: 1,
                },
            ],
            block_tables: vec![0, 1],
            block_size: 16,
        };
        let kinds = [
            RowKind::Prompt,
            RowKind::Generated,
            RowKind::Prompt,
            RowKind::Generated,
        ];
        let subs = split_by_form(&b, &kinds, MlaForm::Auto);
        assert_eq!(subs.len(), 2);
        let (e, a) = (&subs[0].1, &subs[1].1);
        assert_eq!((subs[0].0, subs[1].0), (false, true));
        assert_eq!(e.rows, [0, 2]);
        assert_eq!(
            e.batch
                .seqs
                .iter()
                .map(|s| (s.q_start, s.q_len, s.kv_len))
                .collect::<Vec<_>>(),
            [(0, 1, 3), (1, 1, 5)]
        );
        assert_eq!(a.rows, [1, 3]);
        assert_eq!(
            a.batch
                .seqs
                .iter()
                .map(|s| (s.q_start, s.q_len, s.kv_len, s.table_start))
                .collect::<Vec<_>>(),
            [(0, 1, 4, 0), (1, 1, 9, 1)]
        );
        let all = split_by_form(&b, &kinds, MlaForm::Absorbed);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.rows, [0, 1, 2, 3]);
        assert_eq!(all[0].1.batch.seqs[0].kv_len, 5);
    }
}
