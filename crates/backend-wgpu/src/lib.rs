//! The portable GPU backend (feature `wgpu` of the CLI): WGSL kernels run
//! through wgpu on Vulkan (Linux, Windows, Android) and Metal (Apple
//! Silicon, where naga translates them to MSL).
//!
//! Capability tiers ([`runtime::Tier`]) are chosen when the device opens:
//! T0 (f32, workgroup-memory reductions) runs anywhere, Mesa's lavapipe in
//! CI included; T1 adds subgroup reductions. Kernels live in `shaders/`,
//! one file per op as in every backend; [`shader`] fills their slots per
//! variant, and the tests translate every variant to MSL and SPIR-V.
//!
//! Status: the ops of the dense models and of multi-head latent attention
//! run here (embedding, RMSNorm, RoPE, paged attention over KV stores in
//! GPU memory, SiLU·mul, add, matmul of dense and every quantized weight
//! format in `mm_quant::gpu_layout`, MLA's column ops, KV read-back and
//! per-head matmuls), the MoE experts (routed on the host) and greedy
//! sampling (other rows are read back alone and sampled on the host). Activations are f32. Each op is checked
//! against the CPU references by the conformance suite
//! (`tests/conformance.rs`).

pub mod buffer;
pub mod ops;
pub mod runtime;
pub mod shader;
pub mod weight;

use std::sync::Arc;

use mm_core::backend::{Backend, Op};
use mm_core::{
    KvDType, KvStore, PagedBatch, PagedParams, Result, Tensor, WeightData, WeightFormat,
};

pub use runtime::{OpenOptions, Runtime, Tier};

/// One GPU adapter as a metal-marlin backend.
#[derive(Clone, Debug)]
pub struct WgpuBackend {
    rt: Arc<Runtime>,
}

impl WgpuBackend {
    /// Opens an adapter as `MM_WGPU_ADAPTER` / `MM_WGPU_TIER` ask
    /// ([`OpenOptions::from_env`]); an error names what is missing.
    pub fn new() -> Result<Self> {
        Self::open(&OpenOptions::from_env())
    }

    pub fn open(opts: &OpenOptions) -> Result<Self> {
        Ok(Self {
            rt: Runtime::open(opts)?,
        })
    }

    /// "adapter (backend, tier)".
    pub fn describe(&self) -> String {
        self.rt.describe()
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// Whether the adapter emulates a GPU on the CPU (lavapipe).
    pub fn is_software(&self) -> bool {
        self.rt.is_software()
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &str {
        "wgpu"
    }

    fn supports(&self, op: Op, format: Option<WeightFormat>) -> bool {
        match op {
            Op::Matmul => format.is_some_and(|f| weight::supports(f) || ops::trellis::takes(f)),
            Op::Embedding => format.is_some_and(weight::supports),
            Op::RmsNorm | Op::Rope | Op::Attention | Op::SiluMul | Op::Add | Op::WriteKv => true,
            Op::GatherKv | Op::HeadMatmul | Op::SliceCols | Op::ConcatCols => true,
        }
    }

    fn prepare(&self, w: &WeightData) -> Result<()> {
        if weight::supports(w.format) && w.shape.len() == 2 {
            weight::prepare(&self.rt, w)?;
        } else if ops::trellis::takes(w.format) && w.shape.len() == 2 {
            ops::trellis::prepare(&self.rt, w)?;
        }
        Ok(())
    }

    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        buffer::upload(&self.rt, t)
    }

    fn matmul(&self, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
        ops::matmul::matmul(&self.rt, x, w, bias)
    }

    fn embedding(&self, ids: &[u32], table: &WeightData) -> Result<Tensor> {
        ops::embedding::embedding(&self.rt, ids, table)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        ops::rms_norm::rms_norm(&self.rt, x, w, eps)
    }

    fn rope(
        &self,
        x: &Tensor,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
        mscale: f32,
    ) -> Result<Tensor> {
        ops::rope::rope(&self.rt, x, head_dim, positions, inv_freq, mscale)
    }

    fn kv_store(&self, slots: usize, width: usize, dtype: KvDType) -> Result<KvStore> {
        ops::write_kv::kv_store(&self.rt, slots, width, dtype)
    }

    fn write_kv(&self, store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()> {
        ops::write_kv::write_kv(&self.rt, store, slots, src)
    }

    fn paged_attention(
        &self,
        q: &Tensor,
        k: &KvStore,
        v: &KvStore,
        batch: &PagedBatch,
        p: &PagedParams,
    ) -> Result<Tensor> {
        ops::attention::paged_attention(&self.rt, q, k, v, batch, p)
    }

    fn gather_kv(&self, store: &KvStore, slots: &[u32]) -> Result<Tensor> {
        ops::gather_kv::gather_kv(&self.rt, store, slots)
    }

    fn head_matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        ops::head_matmul::head_matmul(&self.rt, x, w)
    }

    fn slice_cols(
        &self,
        x: &Tensor,
        groups: usize,
        offset: usize,
        len: usize,
        pairs: bool,
    ) -> Result<Tensor> {
        ops::slice_cols::slice_cols(&self.rt, x, groups, offset, len, pairs)
    }

    fn concat_cols(
        &self,
        a: &Tensor,
        b: &Tensor,
        groups: usize,
        b_groups: usize,
    ) -> Result<Tensor> {
        ops::concat_cols::concat_cols(&self.rt, a, b, groups, b_groups)
    }

    fn supports_moe(&self, format: WeightFormat) -> bool {
        weight::supports(format)
    }

    fn moe_experts(
        &self,
        x: &Tensor,
        experts: &mm_core::MoeExperts<'_>,
        route: &mm_core::MoeRoute<'_>,
        _kinds: &[mm_core::RowKind],
    ) -> Result<Tensor> {
        ops::moe::moe_experts(&self.rt, x, experts, route)
    }

    fn supports_sampling(&self) -> bool {
        true
    }

    fn sample(&self, logits: &Tensor, rows: &[mm_core::SampleRow]) -> Result<Vec<u32>> {
        ops::sample::sample(&self.rt, logits, rows)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        ops::activation::binary(&self.rt, "silu_mul", gate, up)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::activation::binary(&self.rt, "add", a, b)
    }
}
