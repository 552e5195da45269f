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
//! Column slicing and concatenation happen on the host (`to_vec`): cheap
//! on the CPU; a GPU backend would want device ops for them.

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
    /// row over its sequence's cached rows in the row's form.
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
        let (nope, rd, lat, qk) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.kv_lora_rank,
            m.qk_head_dim(),
        );
        let kinds = Some(&step.kinds[..]);
        let q = match &self.q {
            QProj::Plain(q) => q.forward_rows(x, kinds, device)?,
            QProj::Lora { a, norm, b } => {
                let qa = norm.forward(&a.forward_rows(x, kinds, device)?, device)?;
                b.forward_rows(&qa, kinds, device)?
            }
        }
        .to_vec()?;
        let pe = rope_order(rd, m.rope_interleave);
        // Per head: the position-free part, and the rotated part in
        // transformers' layout.
        let q_nope = pick(
            &q,
            h * qk,
            h,
            |hd, out| {
                out.extend_from_slice(&hd[..nope]);
            },
            qk,
        );
        let q_pe = pick(
            &q,
            h * qk,
            h,
            |hd, out| {
                out.extend(pe.iter().map(|&j| hd[nope + j]));
            },
            qk,
        );
        let q_pe = rope
            .forward(
                &host(vec![n, h * rd], q_pe, device)?,
                &step.positions,
                device,
            )?
            .to_vec()?;
        let kv = self.kv_a.forward_rows(x, kinds, device)?.to_vec()?;
        let w = m.cache_width();
        let c = pick(&kv, w, 1, |r, out| out.extend_from_slice(&r[..lat]), w);
        let k_pe = pick(
            &kv,
            w,
            1,
            |r, out| out.extend(pe.iter().map(|&j| r[lat + j])),
            w,
        );
        let c = self
            .kv_norm
            .forward(&host(vec![n, lat], c, device)?, device)?
            .to_vec()?;
        let k_pe = rope
            .forward(&host(vec![n, rd], k_pe, device)?, &step.positions, device)?
            .to_vec()?;
        let mut rows = Vec::with_capacity(n * w);
        for r in 0..n {
            rows.extend_from_slice(&c[r * lat..][..lat]);
            rows.extend_from_slice(&k_pe[r * rd..][..rd]);
        }
        device.write_kv(cache, &step.slots, &host(vec![n, w], rows, device)?)?;

        let (vd, mut out) = (m.v_head_dim, vec![0.0f32; n * h * m.v_head_dim]);
        for (absorbed, sub) in split_by_form(&step.batch, &step.kinds, self.form) {
            let part = if absorbed {
                self.absorbed(&q_nope, &q_pe, &sub, cache, device)?
            } else {
                self.expanded(&q_nope, &q_pe, &sub, cache, device)?
            };
            for (i, &r) in sub.rows.iter().enumerate() {
                out[r * h * vd..][..h * vd].copy_from_slice(&part[i * h * vd..][..h * vd]);
            }
        }
        self.o
            .forward_rows(&host(vec![n, h * vd], out, device)?, kinds, device)
    }

    /// The absorbed form of `sub`'s rows: `[rows, heads·v_head_dim]`.
    fn absorbed(
        &self,
        q_nope: &[f32],
        q_pe: &[f32],
        sub: &SubBatch,
        cache: &KvStore,
        device: &Device,
    ) -> Result<Vec<f32>> {
        let m = &self.cfg;
        let (h, r) = (self.heads, sub.rows.len());
        let (nope, rd, lat, w) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.kv_lora_rank,
            m.cache_width(),
        );
        let qn: Vec<f32> = sub
            .rows
            .iter()
            .flat_map(|&i| q_nope[i * h * nope..][..h * nope].iter().copied())
            .collect();
        let q_lat = device
            .head_matmul(&host(vec![r, h * nope], qn, device)?, &self.w_uk_t)?
            .to_vec()?;
        let mut q = Vec::with_capacity(r * h * w);
        for (i, &row) in sub.rows.iter().enumerate() {
            for hd in 0..h {
                q.extend_from_slice(&q_lat[(i * h + hd) * lat..][..lat]);
                q.extend_from_slice(&q_pe[(row * h + hd) * rd..][..rd]);
            }
        }
        let p = PagedParams {
            n_heads: h,
            n_kv_heads: 1,
            head_dim: w,
            scale: self.scale,
            window: None,
        };
        let q = host(vec![r, h * w], q, device)?;
        let a = device
            .paged_attention(&q, cache, cache, &sub.batch, &p)?
            .to_vec()?;
        let o_lat = pick(&a, h * w, h, |hd, out| out.extend_from_slice(&hd[..lat]), w);
        device
            .head_matmul(&host(vec![r, h * lat], o_lat, device)?, &self.w_uv)?
            .to_vec()
    }

    /// The expanded form of `sub`'s rows: `[rows, heads·v_head_dim]`.
    fn expanded(
        &self,
        q_nope: &[f32],
        q_pe: &[f32],
        sub: &SubBatch,
        cache: &KvStore,
        device: &Device,
    ) -> Result<Vec<f32>> {
        let m = &self.cfg;
        let (h, r) = (self.heads, sub.rows.len());
        let (nope, rd, lat, vd, w) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.kv_lora_rank,
            m.v_head_dim,
            m.cache_width(),
        );
        let d = m.qk_head_dim().max(vd);
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
        let cached = device.gather_kv(cache, &slots)?.to_vec()?;
        let c = pick(
            &cached,
            w,
            1,
            |row, out| out.extend_from_slice(&row[..lat]),
            w,
        );
        let kvb = self
            .kv_b
            .forward_rows(
                &host(vec![t, lat], c, device)?,
                Some(&vec![RowKind::Prompt; t]),
                device,
            )?
            .to_vec()?;
        let (mut k, mut v) = (vec![0.0f32; t * h * d], vec![0.0f32; t * h * d]);
        for j in 0..t {
            for hd in 0..h {
                let src = &kvb[(j * h + hd) * (nope + vd)..][..nope + vd];
                let kk = &mut k[(j * h + hd) * d..][..d];
                kk[..nope].copy_from_slice(&src[..nope]);
                kk[nope..nope + rd].copy_from_slice(&cached[j * w + lat..][..rd]);
                v[(j * h + hd) * d..][..vd].copy_from_slice(&src[nope..]);
            }
        }
        let mut q = vec![0.0f32; r * h * d];
        for (i, &row) in sub.rows.iter().enumerate() {
            for hd in 0..h {
                let qq = &mut q[(i * h + hd) * d..][..d];
                qq[..nope].copy_from_slice(&q_nope[(row * h + hd) * nope..][..nope]);
                qq[nope..nope + rd].copy_from_slice(&q_pe[(row * h + hd) * rd..][..rd]);
            }
        }
        // The expanded keys and values as f32 stores of one slot per key
        // (blocks of 1, each sequence's table its own run of slots).
        let store = |vals: Vec<f32>| -> Result<KvStore> {
            let mut st = device.kv_store(t, h * d, KvDType::F32)?;
            let all: Vec<u32> = (0..t as u32).collect();
            device.write_kv(&mut st, &all, &host(vec![t, h * d], vals, device)?)?;
            Ok(st)
        };
        let (ks, vs) = (store(k)?, store(v)?);
        let batch = PagedBatch {
            seqs,
            block_tables: (0..t as u32).collect(),
            block_size: 1,
        };
        let p = PagedParams {
            n_heads: h,
            n_kv_heads: h,
            head_dim: d,
            scale: self.scale,
            window: None,
        };
        let a = device
            .paged_attention(&host(vec![r, h * d], q, device)?, &ks, &vs, &batch, &p)?
            .to_vec()?;
        Ok(pick(
            &a,
            h * d,
            h,
            |hd, out| out.extend_from_slice(&hd[..vd]),
            d,
        ))
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

/// Where each of the `rd` rotated values comes from: interleaved pairs
/// `(x0, x1), (x2, x3), …` become transformers' output layout (evens, then
/// odds), which the rotate-half RoPE then rotates pair `(i, i + rd/2)`.
fn rope_order(rd: usize, interleave: bool) -> Vec<usize> {
    let half = rd / 2;
    (0..rd)
        .map(|j| match interleave {
            false => j,
            true if j < half => 2 * j,
            true => 2 * (j - half) + 1,
        })
        .collect()
}

/// For each row of `src` (`width` values), for each of its `parts` chunks
/// of `part` values, what `f` appends.
fn pick(
    src: &[f32],
    width: usize,
    parts: usize,
    f: impl Fn(&[f32], &mut Vec<f32>),
    part: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(src.len());
    for row in src.chunks_exact(width) {
        for p in 0..parts {
            f(&row[p * part..][..part], &mut out);
        }
    }
    out
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
    fn interleaved_pairs_become_evens_then_odds() {
        assert_eq!(rope_order(6, true), [0, 2, 4, 1, 3, 5]);
        assert_eq!(rope_order(4, false), [0, 1, 2, 3]);
    }

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
