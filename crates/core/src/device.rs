//! A device: the chosen backend plus the CPU backend as transparent fallback.
//!
//! Model code calls ops on a `Device` and never names a backend. When the
//! primary backend does not support an op (or a weight format), its inputs
//! are copied to the host, the CPU backend computes the same result, and the
//! output is moved back to the primary backend.

use std::sync::Arc;

use crate::backend::{Backend, Op, RowKind, StepInputs};
use crate::kv::{KvDType, KvStore, PagedBatch, PagedParams};
use crate::moe::{MoeExperts, MoeRoute};
use crate::router::RouterParams;
use crate::sample::SampleRow;
use crate::{Result, Tensor, WeightData, WeightFormat};

/// The backend a model runs on, with CPU fallback.
#[derive(Clone)]
pub struct Device {
    primary: Arc<dyn Backend>,
    cpu: Arc<dyn Backend>,
}

impl Device {
    /// `primary` runs what it supports; `cpu` everything else.
    pub fn new(primary: Arc<dyn Backend>, cpu: Arc<dyn Backend>) -> Self {
        Self { primary, cpu }
    }

    /// The primary backend's default KV element type.
    pub fn default_kv_dtype(&self) -> crate::KvDType {
        self.primary.default_kv_dtype()
    }

    /// Name of the primary backend.
    pub fn name(&self) -> &str {
        self.primary.name()
    }

    fn pick(&self, op: Op, f: Option<WeightFormat>) -> Option<&dyn Backend> {
        if self.primary.supports(op, f) {
            None
        } else {
            tracing::trace!(
                ?op,
                ?f,
                backend = self.primary.name(),
                "falling back to cpu"
            );
            Some(self.cpu.as_ref())
        }
    }

    fn back(&self, t: Tensor) -> Result<Tensor> {
        if std::ptr::eq(
            self.primary.as_ref() as *const _ as *const u8,
            self.cpu.as_ref() as *const _ as *const u8,
        ) {
            Ok(t)
        } else {
            self.primary.upload(&t)
        }
    }

    /// Moves a host tensor onto the primary backend.
    pub fn upload(&self, t: &Tensor) -> Result<Tensor> {
        self.primary.upload(t)
    }

    /// Prepares a weight on whichever backend will run its matmul.
    pub fn prepare(&self, w: &WeightData) -> Result<()> {
        match self.pick(Op::Matmul, Some(w.format)) {
            None => self.primary.prepare(w),
            Some(cpu) => cpu.prepare(w),
        }
    }

    pub fn matmul(&self, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
        match self.pick(Op::Matmul, Some(w.format)) {
            None => self.primary.matmul(x, w, bias),
            Some(cpu) => {
                let b = bias.map(|b| b.to_host()).transpose()?;
                self.back(cpu.matmul(&x.to_host()?, w, b.as_ref())?)
            }
        }
    }

    /// [`Backend::matmul_rows`]: a matmul whose rows have kinds.
    pub fn matmul_rows(
        &self,
        x: &Tensor,
        w: &WeightData,
        bias: Option<&Tensor>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        match self.pick(Op::Matmul, Some(w.format)) {
            None => self.primary.matmul_rows(x, w, bias, kinds),
            Some(cpu) => {
                let b = bias.map(|b| b.to_host()).transpose()?;
                self.back(cpu.matmul_rows(&x.to_host()?, w, b.as_ref(), kinds)?)
            }
        }
    }

    pub fn embedding(&self, ids: &[u32], table: &WeightData) -> Result<Tensor> {
        match self.pick(Op::Embedding, Some(table.format)) {
            None => self.primary.embedding(ids, table),
            Some(cpu) => self.back(cpu.embedding(ids, table)?),
        }
    }

    pub fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        match self.pick(Op::RmsNorm, None) {
            None => self.primary.rms_norm(x, w, eps),
            Some(cpu) => self.back(cpu.rms_norm(&x.to_host()?, &w.to_host()?, eps)?),
        }
    }

    pub fn rope(
        &self,
        x: &Tensor,
        head_dim: usize,
        pos: &[u32],
        inv_freq: &[f32],
        mscale: f32,
    ) -> Result<Tensor> {
        match self.pick(Op::Rope, None) {
            None => self.primary.rope(x, head_dim, pos, inv_freq, mscale),
            Some(cpu) => self.back(cpu.rope(&x.to_host()?, head_dim, pos, inv_freq, mscale)?),
        }
    }

    /// A KV store on the backend that runs attention.
    pub fn kv_store(&self, slots: usize, width: usize, dtype: KvDType) -> Result<KvStore> {
        match self.pick(Op::Attention, None) {
            None => self.primary.kv_store(slots, width, dtype),
            Some(cpu) => cpu.kv_store(slots, width, dtype),
        }
    }

    /// Writes `src` rows into `slots` of `store`, on the backend that
    /// holds the store (the CPU's when attention falls back).
    pub fn write_kv(&self, store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()> {
        match self.pick(Op::Attention, None) {
            None => self.primary.write_kv(store, slots, src),
            Some(cpu) => cpu.write_kv(store, slots, &src.to_host()?),
        }
    }

    /// Paged attention of a flattened batch (see [`Backend::paged_attention`]).
    pub fn paged_attention(
        &self,
        q: &Tensor,
        k: &KvStore,
        v: &KvStore,
        batch: &PagedBatch,
        p: &PagedParams,
    ) -> Result<Tensor> {
        match self.pick(Op::Attention, None) {
            None => self.primary.paged_attention(q, k, v, batch, p),
            Some(cpu) => self.back(cpu.paged_attention(&q.to_host()?, k, v, batch, p)?),
        }
    }

    /// Rows of a KV store by slot ([`Backend::gather_kv`]). A store on a
    /// backend without the op is copied to the host for the CPU's (slow,
    /// but correct).
    pub fn gather_kv(&self, store: &KvStore, slots: &[u32]) -> Result<Tensor> {
        match self.pick(Op::GatherKv, None) {
            None => self.primary.gather_kv(store, slots),
            Some(cpu) => {
                let host;
                let st = match &store.storage {
                    crate::KvStorage::Device(b) => {
                        host = KvStore::from_f32(store.slots(), store.width(), b.to_host()?)?;
                        &host
                    }
                    _ => store,
                };
                self.back(cpu.gather_kv(st, slots)?)
            }
        }
    }

    /// Per-head matmul ([`Backend::head_matmul`]).
    pub fn head_matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self.pick(Op::HeadMatmul, None) {
            None => self.primary.head_matmul(x, w),
            Some(cpu) => self.back(cpu.head_matmul(&x.to_host()?, &w.to_host()?)?),
        }
    }

    /// A window of every group's columns ([`Backend::slice_cols`]).
    pub fn slice_cols(
        &self,
        x: &Tensor,
        groups: usize,
        offset: usize,
        len: usize,
        pairs: bool,
    ) -> Result<Tensor> {
        match self.pick(Op::SliceCols, None) {
            None => self.primary.slice_cols(x, groups, offset, len, pairs),
            Some(cpu) => self.back(cpu.slice_cols(&x.to_host()?, groups, offset, len, pairs)?),
        }
    }

    /// Two tensors' columns side by side per group ([`Backend::concat_cols`]).
    pub fn concat_cols(
        &self,
        a: &Tensor,
        b: &Tensor,
        groups: usize,
        b_groups: usize,
    ) -> Result<Tensor> {
        match self.pick(Op::ConcatCols, None) {
            None => self.primary.concat_cols(a, b, groups, b_groups),
            Some(cpu) => {
                self.back(cpu.concat_cols(&a.to_host()?, &b.to_host()?, groups, b_groups)?)
            }
        }
    }

    pub fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self.pick(Op::SiluMul, None) {
            None => self.primary.silu_mul(gate, up),
            Some(cpu) => self.back(cpu.silu_mul(&gate.to_host()?, &up.to_host()?)?),
        }
    }

    pub fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self.pick(Op::Add, None) {
            None => self.primary.add(a, b),
            Some(cpu) => self.back(cpu.add(&a.to_host()?, &b.to_host()?)?),
        }
    }

    /// [`Backend::moe_experts`] on the primary backend when it takes every
    /// expert's format, else on the CPU.
    pub fn moe_experts(
        &self,
        x: &Tensor,
        experts: &MoeExperts<'_>,
        route: &MoeRoute<'_>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        if let Some((routed, shared)) = self.shared_apart(experts) {
            let y = self.moe_experts(x, &routed, route, kinds)?;
            return self.add(&y, &self.swiglu(x, shared, kinds)?);
        }
        if experts.all().all(|w| self.primary.supports_moe(w.format)) {
            return self.primary.moe_experts(x, experts, route, kinds);
        }
        tracing::trace!(
            backend = self.primary.name(),
            "moe_experts falls back to cpu"
        );
        self.back(self.cpu.moe_experts(&x.to_host()?, experts, route, kinds)?)
    }

    /// Whether the primary backend runs the grouped expert op (and its
    /// routing, [`Backend::moe_routed`]) for experts of `format`.
    pub fn supports_moe(&self, format: WeightFormat) -> bool {
        self.primary.supports_moe(format)
    }

    /// [`Backend::moe_routed`] on the primary backend when it takes every
    /// expert's format, else on the CPU.
    pub fn moe_routed(
        &self,
        x: &Tensor,
        logits: &Tensor,
        bias: Option<&Tensor>,
        rule: &RouterParams,
        experts: &MoeExperts<'_>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        if let Some((routed, shared)) = self.shared_apart(experts) {
            let y = self.moe_routed(x, logits, bias, rule, &routed, kinds)?;
            return self.add(&y, &self.swiglu(x, shared, kinds)?);
        }
        if experts.all().all(|w| self.primary.supports_moe(w.format)) {
            return self
                .primary
                .moe_routed(x, logits, bias, rule, experts, kinds);
        }
        tracing::trace!(
            backend = self.primary.name(),
            "moe_routed falls back to cpu"
        );
        let bias = bias.map(|b| b.to_host()).transpose()?;
        self.back(self.cpu.moe_routed(
            &x.to_host()?,
            &logits.to_host()?,
            bias.as_ref(),
            rule,
            experts,
            kinds,
        )?)
    }

    /// The routed experts alone and the shared expert, when the primary
    /// backend does not take every expert's format: the shared expert then
    /// runs apart ([`Device::swiglu`], each matmul wherever its format
    /// runs) instead of following the routed ones to the CPU.
    fn shared_apart<'a>(
        &self,
        experts: &MoeExperts<'a>,
    ) -> Option<(MoeExperts<'a>, [&'a WeightData; 3])> {
        let shared = experts.shared?;
        if experts.all().all(|w| self.primary.supports_moe(w.format)) {
            return None;
        }
        let routed = MoeExperts {
            shared: None,
            ..experts.clone()
        };
        Some((routed, shared))
    }

    /// `down(silu(gate·x) · up·x)` through [`Device::matmul_rows`] with
    /// the rows' kinds (a dense SwiGLU feed-forward's arithmetic).
    pub fn swiglu(
        &self,
        x: &Tensor,
        [g, u, d]: [&WeightData; 3],
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        let g = self.matmul_rows(x, g, None, kinds)?;
        let u = self.matmul_rows(x, u, None, kinds)?;
        self.matmul_rows(&self.silu_mul(&g, &u)?, d, None, kinds)
    }

    /// Whether [`Device::sample`] runs on the primary backend (only the ids
    /// cross the bus).
    pub fn supports_sampling(&self) -> bool {
        self.primary.supports_sampling()
    }

    /// [`Backend::sample`] on the primary backend when it samples, else on
    /// the CPU backend over a host copy of the logits.
    pub fn sample(&self, logits: &Tensor, rows: &[SampleRow]) -> Result<Vec<u32>> {
        if self.primary.supports_sampling() {
            return self.primary.sample(logits, rows);
        }
        self.cpu.sample(&logits.to_host()?, rows)
    }

    /// [`Backend::run_step`] of the primary backend.
    pub fn run_step(
        &self,
        inputs: &StepInputs<'_>,
        body: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.primary.run_step(inputs, body)
    }
}
