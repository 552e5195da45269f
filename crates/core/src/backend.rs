//! The backend interface.
//!
//! Every op works on row-major f32 [`Tensor`]s; weights come as
//! [`WeightData`] in their stored format. A backend reports which ops and
//! weight formats it supports; [`crate::Device`] sends whatever it lacks to
//! the CPU backend, which supports everything and is the reference.
//!
//! Shapes used below: `n` tokens, `k` input features, `m` output features,
//! `h`/`hkv` query/key-value heads of width `d`.

use crate::kv::{KvDType, KvStore, PagedBatch, PagedParams};
use crate::moe::{MoeExperts, MoeRoute};
use crate::router::RouterParams;
use crate::sample::SampleRow;
use crate::{Result, Tensor, WeightData, WeightFormat};

/// Ops a backend may or may not implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Matmul,
    Embedding,
    RmsNorm,
    Rope,
    /// Paged attention over a flattened batch.
    Attention,
    SiluMul,
    Add,
    /// Writing a step's keys/values into their cache slots.
    WriteKv,
    /// Reading rows of a KV store back by slot ([`Backend::gather_kv`]).
    GatherKv,
    /// One small matmul per head ([`Backend::head_matmul`]).
    HeadMatmul,
    /// A window of columns of every group of a row ([`Backend::slice_cols`]).
    SliceCols,
    /// Two tensors' columns side by side per group ([`Backend::concat_cols`]).
    ConcatCols,
}

/// Where a row of a step comes from. A backend whose arithmetic would
/// otherwise depend on how many rows a call has (the CPU's default
/// precision) gives each row the arithmetic of its kind instead, so a
/// sequence's results do not depend on the batch around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// A prompt token (prefill).
    Prompt,
    /// A token the model generated (decode, or its recomputation).
    Generated,
}

/// What changes from one decode step to the next. A backend that records
/// a step once and replays the recording (CUDA graphs) stages these before
/// each replay; everything else the step reads (weights, KV stores, op
/// shapes) is the same for every step of one `key` and row count.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs<'a> {
    /// What the step reads besides these inputs: ids of the model and of
    /// the KV cache ([`unique_id`]).
    pub key: (u64, u64),
    pub ids: &'a [u32],
    pub positions: &'a [u32],
    pub slots: &'a [u32],
    pub batch: &'a PagedBatch,
}

/// A process-wide unique id (never 0): keys recordings of steps to the
/// objects they read.
pub fn unique_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A compute backend. Implementations: `cpu` (always present, the fallback
/// and reference), `cuda`, `wgpu`.
pub trait Backend: Send + Sync {
    /// Short name: "cpu", "cuda", "wgpu".
    fn name(&self) -> &str;

    /// Whether `op` runs here, for weights of `format` where the op takes one.
    fn supports(&self, op: Op, format: Option<WeightFormat>) -> bool;

    /// Derives and caches this backend's form of a weight (dequantized,
    /// repacked, uploaded) ahead of the first use, so load time is not
    /// billed to the first forward pass. Default: nothing to do.
    fn prepare(&self, _w: &WeightData) -> Result<()> {
        Ok(())
    }

    /// Moves a tensor onto this backend's storage (no-op when already there).
    fn upload(&self, t: &Tensor) -> Result<Tensor>;

    /// `y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m])`.
    fn matmul(&self, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor>;

    /// [`Backend::matmul`] whose row `i` is of kind `kinds[i]` (one per
    /// row of `x`). Default: `matmul`.
    fn matmul_rows(
        &self,
        x: &Tensor,
        w: &WeightData,
        bias: Option<&Tensor>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        let _ = kinds;
        self.matmul(x, w, bias)
    }

    /// Rows of `table[vocab, k]` for `ids`: `[ids.len(), k]`.
    fn embedding(&self, ids: &[u32], table: &WeightData) -> Result<Tensor>;

    /// `x / rms(x) * w` over the last dimension of `x[n, k]`, `w[k]`.
    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor>;

    /// Rotary embedding, rotate-half (GPT-NeoX / HF) layout, applied to
    /// `x[n, heads*d]` in place of a copy. `inv_freq[d/2]` holds the
    /// (already scaled) inverse frequencies, `positions[n]` the positions,
    /// `mscale` multiplies cos and sin (YaRN attention factor; 1 otherwise).
    fn rope(
        &self,
        x: &Tensor,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
        mscale: f32,
    ) -> Result<Tensor>;

    /// The KV element type callers get unless they ask for one: f16 (half
    /// the memory and bandwidth of attention, within f16 rounding of f32);
    /// a reference backend answers f32.
    fn default_kv_dtype(&self) -> KvDType {
        KvDType::F16
    }

    /// A zeroed store for one layer's keys or values: `slots` rows of
    /// `width` values (see [`crate::kv`]). Default: host memory.
    fn kv_store(&self, slots: usize, width: usize, dtype: KvDType) -> Result<KvStore> {
        KvStore::host(slots, width, dtype)
    }

    /// Writes row `i` of `src[t, width]` into slot `slots[i]` of `store`
    /// (rounded to the store's element type).
    fn write_kv(&self, store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()>;

    /// Causal GQA attention of the flattened queries `q[rows, h*d]` of the
    /// batch's sequences over their paged keys and values: `[rows, h*d]`.
    /// Each output row depends only on its own query and its sequence's
    /// keys, never on how the batch is composed or chunked.
    fn paged_attention(
        &self,
        q: &Tensor,
        k: &KvStore,
        v: &KvStore,
        batch: &PagedBatch,
        p: &PagedParams,
    ) -> Result<Tensor>;

    /// Rows `slots` of `store`, widened to f32: `[slots.len(), width]`
    /// (multi-head latent attention reads its compressed cache back to
    /// expand it). Every slot is checked first.
    /// Default: unsupported (the device sends it to the CPU backend).
    fn gather_kv(&self, store: &KvStore, slots: &[u32]) -> Result<Tensor> {
        let _ = (store, slots);
        Err(unsupported(self.name(), "gather_kv"))
    }

    /// Per-head matmul: `x[n, h*k]` and `w[h, m, k]` give `y[n, h*m]` with
    /// `y[:, head] = x[:, head] · w[head]ᵀ`, in f32 (multi-head latent
    /// attention's absorbed projections). Each row's result depends only
    /// on that row.
    /// Default: unsupported (the device sends it to the CPU backend).
    fn head_matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let _ = (x, w);
        Err(unsupported(self.name(), "head_matmul"))
    }

    /// A window of every group's columns: `x[n, groups*gw]` gives
    /// `y[n, groups*len]` with `y[r, g*len + j] = x[r, g*gw + offset + j]`,
    /// zero where `offset + j >= gw` (zero padding: `len` may reach past a
    /// group's end). With `pairs` the window's interleaved pairs
    /// `(w0, w1), (w2, w3), …` are taken apart, evens then odds:
    /// `y[.., j] = w[2j]` for `j < len/2`, `w[2(j - len/2) + 1]` after
    /// (`len` even). Multi-head latent attention and partial RoPE take a
    /// head's parts apart with it on the device. A copy: exact.
    /// Default: unsupported (the device sends it to the CPU backend).
    fn slice_cols(
        &self,
        x: &Tensor,
        groups: usize,
        offset: usize,
        len: usize,
        pairs: bool,
    ) -> Result<Tensor> {
        let _ = (x, groups, offset, len, pairs);
        Err(unsupported(self.name(), "slice_cols"))
    }

    /// Per group, `a`'s part then `b`'s: `a[n, groups*la]` and
    /// `b[n, b_groups*lb]` give `y[n, groups*(la + lb)]`, group `g` of a
    /// row `[a_g | b_g]`; `b_groups` is `groups` (a part of `b` per group)
    /// or 1 (one part every group repeats). A copy: exact.
    /// Default: unsupported (the device sends it to the CPU backend).
    fn concat_cols(
        &self,
        a: &Tensor,
        b: &Tensor,
        groups: usize,
        b_groups: usize,
    ) -> Result<Tensor> {
        let _ = (a, b, groups, b_groups);
        Err(unsupported(self.name(), "concat_cols"))
    }

    /// `silu(gate) * up`, elementwise.
    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor>;

    /// `a + b`, elementwise, same shapes.
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// Whether [`Backend::moe_experts`] runs here for expert weights of
    /// `format`. Not an [`Op`] (backends written before it match `Op`
    /// exhaustively); default: no, and [`crate::Device`] runs it on the CPU.
    fn supports_moe(&self, format: WeightFormat) -> bool {
        let _ = format;
        false
    }

    /// The routed experts of a MoE layer over the flattened rows
    /// `x[n, hidden]`, grouped by expert (one pass per projection over every
    /// expert some token chose, not a call per expert):
    /// `y[t] = Σ_j weights[t,j] · down_e(silu(gate_e(x_t)) · up_e(x_t))`
    /// with `e = ids[t,j]`, summed in `j` order; `[n, hidden]`. Row `i` is of
    /// kind `kinds[i]` and, as for [`Backend::matmul_rows`], gets the same
    /// arithmetic in any batch. Default: an error (see
    /// [`Backend::supports_moe`]).
    fn moe_experts(
        &self,
        x: &Tensor,
        experts: &MoeExperts<'_>,
        route: &MoeRoute<'_>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        let _ = (x, experts, route, kinds);
        Err(crate::Error::Invalid(format!(
            "moe_experts is not implemented by the {} backend",
            self.name()
        )))
    }

    /// The routed experts of a MoE layer together with their routing: row
    /// `t` of `logits[n, experts]` (the router's output) picks its experts
    /// and weights by `rule` ([`crate::router::route`], with the correction
    /// `bias[experts]` if any), then as [`Backend::moe_experts`]. Default:
    /// the logits are read back and routed on the host; a backend that
    /// routes where the logits are (the CUDA backend) saves that round trip,
    /// so the step can be recorded ([`Backend::run_step`]).
    #[allow(clippy::too_many_arguments)]
    fn moe_routed(
        &self,
        x: &Tensor,
        logits: &Tensor,
        bias: Option<&Tensor>,
        rule: &RouterParams,
        experts: &MoeExperts<'_>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        let bias = bias.map(|b| b.to_vec()).transpose()?;
        let r = crate::router::route(&logits.to_vec()?, bias.as_deref(), rule)?;
        let route = MoeRoute {
            top_k: r.top_k,
            ids: &r.ids,
            weights: &r.weights,
        };
        self.moe_experts(x, experts, &route, kinds)
    }

    /// Whether [`Backend::sample`] runs where this backend keeps its
    /// tensors (so only the sampled ids cross the bus). Not an [`Op`];
    /// default: no, and [`crate::Device`] samples on the host.
    fn supports_sampling(&self) -> bool {
        false
    }

    /// The token each of `rows` picks from its row of `logits[n, vocab]`
    /// ([`crate::sample`]: penalties, bias, greedy or a draw at the row's
    /// `r`); one id per entry of `rows`, in order. Rows of `logits` that no
    /// entry names are not read. Default: the logits are read back and
    /// sampled on the host ([`crate::sample::sample_rows`]).
    fn sample(&self, logits: &Tensor, rows: &[SampleRow]) -> Result<Vec<u32>> {
        let (_, vocab) = logits.dims2()?;
        crate::sample::sample_rows(&logits.to_vec()?, vocab, rows)
    }

    /// Runs `body`: one decode step's forward pass, whose ops read nothing
    /// that changes between steps of `inputs.key` and the same row count
    /// except `inputs`. A backend may record it and replay the recording
    /// for later such steps with their `inputs` staged, instead of running
    /// `body` (the CUDA backend's graphs). Default: runs `body`.
    fn run_step(
        &self,
        inputs: &StepInputs<'_>,
        body: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let _ = inputs;
        body()
    }
}

/// `(n, k, m)` of `y[n, m] = x[n, k] · w[m, k]ᵀ (+ bias[m])`, or an error
/// naming the mismatch: every backend's matmul checks its input with this.
pub fn matmul_dims(
    x: &Tensor,
    w: &WeightData,
    bias: Option<&Tensor>,
) -> Result<(usize, usize, usize)> {
    let (n, k) = x.dims2()?;
    let (m, kw) = w.dims2()?;
    if k != kw {
        return Err(crate::Error::Invalid(format!(
            "matmul: x has {k} columns, weight {:?} expects {kw}",
            w.shape
        )));
    }
    if let Some(b) = bias {
        if b.numel() != m {
            return Err(crate::Error::Invalid(format!(
                "matmul: bias has {} values, expected {m}",
                b.numel()
            )));
        }
    }
    Ok((n, k, m))
}

/// The error of an op a backend does not implement.
fn unsupported(backend: &str, op: &str) -> crate::Error {
    crate::Error::Invalid(format!("{op} is not implemented on the {backend} backend"))
}

/// `(n, heads, k, m)` of a [`Backend::head_matmul`] of `x[n, h*k]` by
/// `w[h, m, k]`, or an error naming the mismatch: every backend's
/// `head_matmul` checks its input with this.
pub fn head_matmul_dims(x: &Tensor, w: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let (n, width) = x.dims2()?;
    let [h, m, k] = *w.shape() else {
        return Err(crate::Error::Invalid(format!(
            "head_matmul: the weight must be [heads, out, in], found {:?}",
            w.shape()
        )));
    };
    if h == 0 || k == 0 || width != h * k {
        return Err(crate::Error::Invalid(format!(
            "head_matmul: x {:?} does not split into {h} heads of the weight's {k} inputs",
            x.shape()
        )));
    }
    Ok((n, h, k, m))
}

/// `(n, gw)` of a [`Backend::slice_cols`] of `x[n, groups*gw]`, or an
/// error naming the mismatch: every backend's `slice_cols` checks its
/// input with this.
pub fn slice_cols_dims(
    x: &Tensor,
    groups: usize,
    offset: usize,
    len: usize,
    pairs: bool,
) -> Result<(usize, usize)> {
    let (n, width) = x.dims2()?;
    if groups == 0 || width % groups != 0 {
        return Err(crate::Error::Invalid(format!(
            "slice_cols: x {:?} does not split into {groups} groups",
            x.shape()
        )));
    }
    let gw = width / groups;
    if offset > gw || (pairs && !len.is_multiple_of(2)) {
        return Err(crate::Error::Invalid(format!(
            "slice_cols: a window of {len} columns at {offset} (pairs: {pairs}) \
             does not fit groups of {gw} columns"
        )));
    }
    if n.checked_mul(groups)
        .and_then(|v| v.checked_mul(len))
        .is_none()
    {
        return Err(crate::Error::Invalid(format!(
            "slice_cols: {n} rows of {groups} groups of {len} columns overflow"
        )));
    }
    Ok((n, gw))
}

/// `(n, la, lb)` of a [`Backend::concat_cols`] of `a[n, groups*la]` and
/// `b[n, b_groups*lb]`, or an error naming the mismatch: every backend's
/// `concat_cols` checks its input with this.
pub fn concat_cols_dims(
    a: &Tensor,
    b: &Tensor,
    groups: usize,
    b_groups: usize,
) -> Result<(usize, usize, usize)> {
    let ((n, wa), (nb, wb)) = (a.dims2()?, b.dims2()?);
    if groups == 0
        || (b_groups != 1 && b_groups != groups)
        || n != nb
        || wa % groups != 0
        || wb % b_groups != 0
    {
        return Err(crate::Error::Invalid(format!(
            "concat_cols: a {:?} in {groups} groups and b {:?} in {b_groups} \
             (1 or {groups}) do not fit together",
            a.shape(),
            b.shape()
        )));
    }
    Ok((n, wa / groups, wb / b_groups))
}

/// `(n, width)` of a RoPE input `x[n, width]` with its `head_dim`,
/// `positions[n]` and `inv_freq[head_dim/2]`, or an error naming them:
/// every backend's rope checks its input with this.
pub fn rope_dims(
    x: &Tensor,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
) -> Result<(usize, usize)> {
    let (n, width) = x.dims2()?;
    if head_dim == 0
        || head_dim % 2 != 0
        || width % head_dim != 0
        || inv_freq.len() * 2 != head_dim
        || positions.len() != n
    {
        return Err(crate::Error::Invalid(format!(
            "rope: x {:?}, head_dim {head_dim}, {} inv_freq, {} positions do not fit together",
            x.shape(),
            inv_freq.len(),
            positions.len()
        )));
    }
    Ok((n, width))
}
