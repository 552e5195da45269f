//! The CUDA backend (feature `cuda` of the CLI): NVIDIA GPUs through the
//! driver API, loaded at run time with cudarc (no CUDA toolkit needed to
//! build), kernels in `kernels/*.cu` compiled by NVRTC for the GPU's exact
//! architecture at first use and cached on disk ([`compile`]).
//!
//! Status: activations live on the GPU as f32 tensors; every op of the
//! dense models runs here (paged attention over KV stores in GPU memory
//! included), and matmuls of dense weights and of every quantized format
//! (in the GPU layout of [`qlayout`]), embeddings of either; decode steps
//! are recorded and replayed as CUDA graphs ([`graph`]). Each op is checked
//! against the CPU references by the conformance suite on the GPU
//! (`tests/conformance.rs`, `scripts/test-cuda.sh`).

pub mod buffer;
pub mod compile;
pub mod graph;
pub mod ops;
pub use mm_quant::gpu_layout as qlayout;
pub mod runtime;

use std::sync::{Arc, Mutex};

use mm_core::backend::{Backend, Op};
use mm_core::{
    KvDType, KvStore, PagedBatch, PagedParams, Result, StepInputs, Tensor, WeightData, WeightFormat,
};

pub use runtime::Runtime;

/// One GPU as a metal-marlin backend.
#[derive(Clone)]
pub struct CudaBackend {
    rt: Arc<Runtime>,
    exact: bool,
    tensor_cores: bool,
    /// Sampling on the GPU ([`ops::sample`]); on unless
    /// `MM_CUDA_SAMPLING=0` or [`CudaBackend::device_sampling`] turns it
    /// off (its GPU tests and the engine's end-to-end runs with it passed
    /// on an H100, thirteenth session).
    sampling: bool,
    /// The kernels of the tenth session: v2 paged attention, RMSNorm rows
    /// in registers, the shared expert in the expert launches. On unless
    /// `MM_CUDA_NEXT=0` or [`CudaBackend::next_kernels`] turns them off
    /// (passed on an H100 in the thirteenth session: GLM-shape decode 674
    /// tok/s against 468 without); the GPU tests run both ways.
    next: bool,
    /// Decode steps recorded as CUDA graphs ([`graph`]); None when off.
    graphs: Option<Arc<Mutex<graph::Graphs>>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("rt", &self.rt)
            .field("exact", &self.exact)
            .field("tensor_cores", &self.tensor_cores)
            .field("graphs", &self.graphs.is_some())
            .finish()
    }
}

fn env_is(var: &str, value: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == value)
}

impl CudaBackend {
    /// The routed experts alone and the shared expert, when the expert
    /// launches do not take it ([`ops::moe::fuses_shared`]).
    fn shared_apart<'a>(
        &self,
        experts: &mm_core::MoeExperts<'a>,
        kinds: &[mm_core::RowKind],
    ) -> Option<(mm_core::MoeExperts<'a>, [&'a WeightData; 3])> {
        let shared = experts.shared?;
        if self.next && ops::moe::fuses_shared(experts, kinds) {
            return None;
        }
        let routed = mm_core::MoeExperts {
            shared: None,
            ..experts.clone()
        };
        Some((routed, shared))
    }

    /// A shared expert apart: its SwiGLU through this backend's matmuls
    /// with the rows' kinds.
    fn swiglu(
        &self,
        x: &Tensor,
        [g, u, d]: [&WeightData; 3],
        kinds: &[mm_core::RowKind],
    ) -> Result<Tensor> {
        let g = self.matmul_rows(x, g, None, kinds)?;
        let u = self.matmul_rows(x, u, None, kinds)?;
        self.matmul_rows(&self.silu_mul(&g, &u)?, d, None, kinds)
    }

    /// GPU `ordinal`; a clear error without a driver, NVRTC or that GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(Self {
            rt: Runtime::new(ordinal)?,
            exact: false,
            tensor_cores: !env_is("MM_CUDA_TENSOR_CORES", "0"),
            sampling: !env_is("MM_CUDA_SAMPLING", "0"),
            next: !env_is("MM_CUDA_NEXT", "0"),
            graphs: None,
        }
        .graphs(!env_is("MM_CUDA_GRAPHS", "0")))
    }

    /// Whether decode steps are recorded and replayed as CUDA graphs
    /// ([`graph`]); on unless `MM_CUDA_GRAPHS=0` (`scripts/test-cuda.sh`
    /// checks that both give the same bits). Each mode of a backend keeps
    /// its own recordings.
    pub fn graphs(self, on: bool) -> Self {
        Self {
            graphs: on.then(Default::default),
            ..self
        }
    }

    /// The verification mode: every matmul row in f32 (no tensor cores)
    /// and the KV cache in f32, as the CPU's exact path.
    pub fn exact(self) -> Self {
        let on = self.graphs.is_some();
        Self {
            exact: true,
            ..self
        }
        .graphs(on)
    }

    /// Whether prompt rows run on the tensor cores (f16 operands) in the
    /// default precision; on unless `MM_CUDA_TENSOR_CORES=0`, which sends
    /// every row to the f32 kernels.
    /// Whether the kernels not yet run on a GPU are used (see the field).
    pub fn next_kernels(mut self, on: bool) -> Self {
        self.next = on;
        self
    }

    /// Whether the engine samples on the GPU (see the field).
    pub fn device_sampling(mut self, on: bool) -> Self {
        self.sampling = on;
        self
    }

    pub fn tensor_cores(self, on: bool) -> Self {
        let graphs = self.graphs.is_some();
        Self {
            tensor_cores: on,
            ..self
        }
        .graphs(graphs)
    }

    /// The GPU's runtime (context, stream, kernels).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    fn f32_only(&self) -> bool {
        self.exact || !self.tensor_cores
    }

    /// A one-line description: name and architecture.
    pub fn describe(&self) -> String {
        format!("{} (sm_{})", self.rt.name, self.rt.arch)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        "cuda"
    }

    /// f32 in the exact mode, else f16 (as the CPU backend).
    fn default_kv_dtype(&self) -> mm_core::KvDType {
        if self.exact {
            mm_core::KvDType::F32
        } else {
            mm_core::KvDType::F16
        }
    }

    fn supports(&self, op: Op, format: Option<WeightFormat>) -> bool {
        match op {
            Op::Matmul => format
                .is_some_and(|f| f.is_dense() || qlayout::supports(f) || ops::trellis::takes(f)),
            Op::Embedding => format.is_some_and(|f| f.is_dense() || qlayout::supports(f)),
            Op::RmsNorm | Op::Rope | Op::SiluMul | Op::Add => true,
            Op::Attention | Op::WriteKv => true,
            Op::GatherKv | Op::HeadMatmul => true,
            Op::SliceCols | Op::ConcatCols => true,
        }
    }

    /// Uploads a weight once: dense as stored, quantized in the GPU layout
    /// ([`qlayout`]); formats without one stay on the host for the CPU.
    fn prepare(&self, w: &WeightData) -> Result<()> {
        if w.format.is_dense() {
            buffer::weight(&self.rt, w)?;
        } else if qlayout::supports(w.format) {
            ops::qmatmul::prepare(&self.rt, w)?;
        } else if ops::trellis::takes(w.format) && w.shape.len() == 2 {
            ops::trellis::prepare(&self.rt, w)?;
        }
        Ok(())
    }

    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        if let mm_core::Storage::Device(b) = t.storage() {
            if b.as_any().is::<buffer::CudaBuffer>() {
                return Ok(t.clone());
            }
        }
        if t.numel() == 0 {
            return Ok(Tensor::zeros(t.shape().to_vec()));
        }
        let data = buffer::upload(&self.rt, &t.to_vec()?, "a tensor")?;
        buffer::tensor(&self.rt, t.shape().to_vec(), data)
    }

    /// See [`ops::matmul`]: more than 8 rows on the tensor cores (f16
    /// operands) when they are on ([`CudaBackend::tensor_cores`]) and not
    /// exact.
    fn matmul(&self, x: &Tensor, w: &WeightData, bias: Option<&Tensor>) -> Result<Tensor> {
        ops::matmul::matmul(&self.rt, x, w, bias, None, self.f32_only())
    }

    /// Prompt rows on the tensor cores (f16 operands, when on), generated
    /// rows with f32 kernels; every row in f32 when exact.
    fn matmul_rows(
        &self,
        x: &Tensor,
        w: &WeightData,
        bias: Option<&Tensor>,
        kinds: &[mm_core::RowKind],
    ) -> Result<Tensor> {
        ops::matmul::matmul(&self.rt, x, w, bias, Some(kinds), self.f32_only())
    }

    fn embedding(&self, ids: &[u32], table: &WeightData) -> Result<Tensor> {
        ops::embedding::embedding(&self.rt, ids, table)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        ops::rms_norm::rms_norm(&self.rt, x, w, eps, self.next)
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

    /// A zeroed store in GPU memory.
    fn kv_store(&self, slots: usize, width: usize, dtype: KvDType) -> Result<KvStore> {
        buffer::kv_store(&self.rt, slots, width, dtype)
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
        ops::attention::paged_attention(&self.rt, q, k, v, batch, p, self.next)
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

    fn supports_sampling(&self) -> bool {
        self.sampling
    }

    /// Penalties, bias, greedy and draws on the GPU ([`ops::sample`]):
    /// only the ids come back.
    fn sample(&self, logits: &Tensor, rows: &[mm_core::SampleRow]) -> Result<Vec<u32>> {
        ops::sample::sample(&self.rt, logits, rows)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        ops::activation::silu_mul(&self.rt, gate, up)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::activation::add(&self.rt, a, b)
    }

    /// Integer and GGUF experts in the default mode ([`ops::moe::takes`]);
    /// the exact mode runs experts on the CPU.
    fn supports_moe(&self, format: WeightFormat) -> bool {
        !self.f32_only() && ops::moe::takes(format)
    }

    /// Routing and experts on the GPU ([`ops::moe`]): every row on 8-bit
    /// activations in two passes, whatever its kind.
    fn moe_routed(
        &self,
        x: &Tensor,
        logits: &Tensor,
        bias: Option<&Tensor>,
        rule: &mm_core::RouterParams,
        experts: &mm_core::MoeExperts<'_>,
        kinds: &[mm_core::RowKind],
    ) -> Result<Tensor> {
        if kinds.len() != x.dims2()?.0 {
            return Err(mm_core::Error::Invalid(format!(
                "moe_routed: {} row kinds for {:?}",
                kinds.len(),
                x.shape()
            )));
        }
        if let Some((routed, shared)) = self.shared_apart(experts, kinds) {
            let y = ops::moe::moe_routed(&self.rt, x, logits, bias, rule, &routed)?;
            return self.add(&y, &self.swiglu(x, shared, kinds)?);
        }
        ops::moe::moe_routed(&self.rt, x, logits, bias, rule, experts)
    }

    /// The experts with a route given on the host (calibration): the
    /// route's ids and weights uploaded, then as [`Backend::moe_routed`]
    /// from the routing on.
    fn moe_experts(
        &self,
        x: &Tensor,
        experts: &mm_core::MoeExperts<'_>,
        route: &mm_core::MoeRoute<'_>,
        kinds: &[mm_core::RowKind],
    ) -> Result<Tensor> {
        mm_core::moe::moe_dims(x, experts, route)?;
        if kinds.len() != x.dims2()?.0 {
            return Err(mm_core::Error::Invalid(format!(
                "moe_experts: {} row kinds for {:?}",
                kinds.len(),
                x.shape()
            )));
        }
        if let Some((routed, shared)) = self.shared_apart(experts, kinds) {
            let y = ops::moe::moe_experts(&self.rt, x, &routed, route)?;
            return self.add(&y, &self.swiglu(x, shared, kinds)?);
        }
        ops::moe::moe_experts(&self.rt, x, experts, route)
    }

    /// Decode steps as CUDA graphs (see [`graph`]) unless they are off.
    fn run_step(
        &self,
        inputs: &StepInputs<'_>,
        body: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<Tensor> {
        match &self.graphs {
            None => body(),
            Some(g) => g
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .run(&self.rt, inputs, body),
        }
    }
}
