//! The CPU backend: always present, the transparent fallback of every GPU
//! backend, and home of the scalar `_ref` twin of every op.
//!
//! Each op lives in `ops/<op>.rs` (the same file names as in the other
//! backends) with its fast version and its scalar `*_ref` reference.

pub mod ops;
pub mod pool;
mod prepared;

use mm_core::backend::{Backend, Op, RowKind};
use mm_core::{KvStore, MoeExperts, MoeRoute, PagedBatch, PagedParams, Result, Tensor};
use mm_core::{WeightData, WeightFormat};

pub use ops::matmul::ActPrecision;
pub use prepared::{dense_f32, il_prepared, mm_prepared};

/// Multi-threaded CPU backend: parallel loops on [`pool`] (sized by rayon's
/// global pool, i.e. `--threads`).
///
/// By default GGML block weights run through the native quantized kernels,
/// which quantize activations to 8 bits as llama.cpp does, and
/// metal-marlin weights through theirs (repacked once at load, no f32
/// copy; 8-bit activations for the integer formats, f32 for nf4/fp8); the
/// 8-bit activations get a second pass over their rounding remainder
/// ([`ActPrecision::Int8Residual`], about 15 bits) unless
/// [`CpuBackend::with_activations`] asks for one pass. `exact()` instead
/// dequantizes every quantized weight once to f32 and keeps activations in
/// f32: slower, but numerically the reference (what transformers computes).
/// Dense weights (F32, F16, BF16) run on their stored values
/// (`ops::matmul::dense`) in both modes, except that the default mode
/// multiplies their prompt rows on AVX2 with 16-bit operands (weights
/// rounded to 14 bits per 32-block, `ops::qmatmul::dense16`).
#[derive(Default, Debug, Clone, Copy)]
pub struct CpuBackend {
    exact: bool,
    act: ActPrecision,
}

impl CpuBackend {
    /// Native kernels with the default activation precision.
    pub fn new() -> Self {
        Self::default()
    }

    /// The f32-activation reference mode.
    pub fn exact() -> Self {
        CpuBackend {
            exact: true,
            ..Self::default()
        }
    }

    /// Native kernels with the given activation precision.
    pub fn with_activations(act: ActPrecision) -> Self {
        CpuBackend { exact: false, act }
    }

    /// Whether this is the f32-activation reference mode.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    fn native(&self, w: &WeightData) -> bool {
        !self.exact
            && (ops::qmatmul::supports(w.format)
                || ops::qmatmul::mm::supports(w)
                || ops::qmatmul::trellis::supports(w))
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn supports(&self, _op: Op, _format: Option<WeightFormat>) -> bool {
        true
    }

    /// f32 in the exact mode (the verification reference), else f16.
    fn default_kv_dtype(&self) -> mm_core::KvDType {
        if self.exact {
            mm_core::KvDType::F32
        } else {
            mm_core::KvDType::F16
        }
    }

    /// Dense weights (F32, F16, BF16) and GGML block formats need nothing
    /// (their matmuls read the stored bytes); metal-marlin formats are
    /// repacked once (`ops::qmatmul::mm`). On x86 (AVX2, AVX-512 VNNI),
    /// Q4_0/Q4_1/Q8_0 and metal-marlin int4/int8/fp4/mxfp4 are repacked
    /// row-interleaved instead (`ops::qmatmul::il`). The exact mode widens
    /// every quantized weight to f32 once.
    fn prepare(&self, w: &WeightData) -> Result<()> {
        if self.native(w) {
            if ops::qmatmul::il::active(ops::qmatmul::Isa::detect(), w) {
                il_prepared(w)?;
            } else if ops::qmatmul::mm::supports(w) {
                mm_prepared(w)?;
            }
            return Ok(());
        }
        if !w.format.is_dense() {
            dense_f32(w)?;
        }
        Ok(())
    }

    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        t.to_host()
    }

    fn matmul(&self, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
        if self.native(w) || (!self.exact && w.format.is_dense()) {
            ops::matmul::matmul_with(x, w, bias, self.act)
        } else {
            ops::matmul::matmul_dense(x, w, bias)
        }
    }

    /// Every row gets the arithmetic of its kind whatever the batch: in the
    /// default precision prompt rows with 16-bit activations (or on
    /// dequantized f32 panels) and
    /// generated rows through the two 8-bit passes
    /// ([`ops::matmul::matmul_kinds`]); dense weights and the exact mode
    /// through the dense kernels' tiles or decode kernel
    /// ([`ops::matmul::matmul_dense_kinds`]; in the default mode dense
    /// prompt rows with 16-bit operands on AVX2); one 8-bit pass computes
    /// each row on its own anyway.
    fn matmul_rows(
        &self,
        x: &Tensor,
        w: &WeightData,
        bias: Option<&Tensor>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        if !self.native(w) {
            let fast = !self.exact && w.format.is_dense();
            ops::matmul::matmul_dense_kinds(x, w, bias, kinds, fast)
        } else if self.act == ActPrecision::Int8Residual {
            ops::matmul::matmul_kinds(x, w, bias, kinds)
        } else {
            self.matmul(x, w, bias)
        }
    }

    fn embedding(&self, ids: &[u32], table: &WeightData) -> Result<Tensor> {
        ops::embedding::embedding(ids, table)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        ops::rms_norm::rms_norm(x, w, eps)
    }

    fn rope(
        &self,
        x: &Tensor,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
        mscale: f32,
    ) -> Result<Tensor> {
        ops::rope::rope(x, head_dim, positions, inv_freq, mscale)
    }

    fn paged_attention(
        &self,
        q: &Tensor,
        k: &KvStore,
        v: &KvStore,
        batch: &PagedBatch,
        p: &PagedParams,
    ) -> Result<Tensor> {
        ops::attention::paged_attention(q, k, v, batch, p)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        ops::activation::silu_mul(gate, up)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::activation::add(a, b)
    }

    fn supports_moe(&self, _format: WeightFormat) -> bool {
        true
    }

    /// Tokens grouped by expert, each expert's rows through
    /// [`Backend::matmul_rows`] (`ops::moe`): every format and precision of
    /// the linear layers, batch-invariant as they are.
    fn moe_experts(
        &self,
        x: &Tensor,
        experts: &MoeExperts<'_>,
        route: &MoeRoute<'_>,
        kinds: &[RowKind],
    ) -> Result<Tensor> {
        ops::moe::moe_experts(x, experts, route, kinds, &|x, w, k| {
            self.matmul_rows(x, w, None, k)
        })
    }

    fn write_kv(&self, store: &mut KvStore, slots: &[u32], src: &Tensor) -> Result<()> {
        ops::write_kv::write_kv(store, slots, src)
    }

    fn gather_kv(&self, store: &KvStore, slots: &[u32]) -> Result<Tensor> {
        ops::gather_kv::gather_kv(store, slots)
    }

    fn head_matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        ops::head_matmul::head_matmul(x, w)
    }

    fn slice_cols(
        &self,
        x: &Tensor,
        groups: usize,
        offset: usize,
        len: usize,
        pairs: bool,
    ) -> Result<Tensor> {
        ops::slice_cols::slice_cols(x, groups, offset, len, pairs)
    }

    fn supports_sampling(&self) -> bool {
        true
    }

    /// Rows in parallel ([`ops::sample`]).
    fn sample(&self, logits: &Tensor, rows: &[mm_core::SampleRow]) -> Result<Vec<u32>> {
        ops::sample::sample(logits, rows)
    }

    fn concat_cols(
        &self,
        a: &Tensor,
        b: &Tensor,
        groups: usize,
        b_groups: usize,
    ) -> Result<Tensor> {
        ops::concat_cols::concat_cols(a, b, groups, b_groups)
    }
}
