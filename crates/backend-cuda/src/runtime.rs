//! The CUDA driver, context, stream and loaded kernels of one GPU.
//!
//! The driver (`libcuda`) and NVRTC are loaded at run time (cudarc's
//! dynamic loading): builds need no CUDA toolkit, and a machine without
//! them gets an error naming what is missing ([`require_lib`]) instead of
//! cudarc's panic.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr};
use cudarc::nvrtc::Ptx;
use mm_core::{Error, Result};

use crate::compile::{self, Kernel};

/// Fails with a clear message unless the shared library `name` ("cuda",
/// "nvrtc") can be loaded the way cudarc will look for it.
pub fn require_lib(name: &str) -> Result<()> {
    static FOUND: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap_or_else(|p| p.into_inner());
    if found.iter().any(|f| f == name) {
        return Ok(());
    }
    let mut candidates = cudarc::get_lib_name_candidates(name);
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|c| seen.insert(c.clone()));
    // SAFETY: loading a system library runs its initializers, as cudarc
    // itself would on first use.
    if candidates
        .iter()
        .any(|c| unsafe { libloading::Library::new(c) }.is_ok())
    {
        found.push(name.to_string());
        return Ok(());
    }
    let what = match name {
        "cuda" => "the NVIDIA driver library (libcuda.so): no NVIDIA driver is installed",
        "nvrtc" => "NVRTC (libnvrtc.so), which compiles the kernels: install the CUDA 13 runtime compiler or put its directory on LD_LIBRARY_PATH",
        _ => "a CUDA library",
    };
    Err(Error::Backend {
        backend: "cuda".into(),
        reason: format!("cannot load {what} (tried {})", candidates.join(", ")),
    })
}

pub(crate) fn driver_err(what: &str, e: cudarc::driver::DriverError) -> Error {
    Error::Backend {
        backend: "cuda".into(),
        reason: format!("{what}: {e:?}"),
    }
}

/// One GPU: its context, the stream every op runs on, and the kernel
/// modules loaded so far.
pub struct Runtime {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Compute capability as `10·major + minor` (90 for H100).
    pub arch: u32,
    pub name: String,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    /// The last upload under each key ([`Runtime::upload_cached`]).
    uploads: Mutex<HashMap<&'static str, (Vec<u8>, Cached)>>,
    /// A step is being captured as a graph ([`crate::graph`]): nothing
    /// may cross the bus, and the cached uploads the step reads are kept.
    capturing: AtomicBool,
    captured: Mutex<Vec<Cached>>,
    /// The last activations quantized to 8 bits, for the next matmul of
    /// the same input ([`crate::ops::qmatmul::launch_q8`]).
    pub(crate) quantized_x: Mutex<Option<crate::ops::qmatmul::QuantizedX>>,
    /// The expert tables of the MoE layers run so far
    /// ([`crate::ops::moe`]).
    pub(crate) moe_tables: Mutex<Vec<Arc<crate::ops::moe::MoeTable>>>,
    /// The completion counters of the split attention kernel, zeros
    /// between launches ([`Runtime::attention_counters`]).
    attn_counters: Mutex<Option<Arc<CudaSlice<u32>>>>,
    /// The opt-in shared memory limit of a block, read once.
    max_smem: std::sync::OnceLock<usize>,
}

/// A cached upload, kept alive by the graphs that read it.
pub(crate) type Cached = Arc<dyn Any + Send + Sync>;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} ({}, sm_{})",
            self.ctx.ordinal(),
            self.name,
            self.arch
        )
    }
}

impl Runtime {
    /// Opens GPU `ordinal`; errors name a missing driver or NVRTC, a
    /// missing GPU, or a driver failure.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        require_lib("cuda")?;
        require_lib("nvrtc")?;
        let count = CudaContext::device_count().map_err(|e| driver_err("counting GPUs", e))?;
        if ordinal >= count as usize {
            return Err(Error::Backend {
                backend: "cuda".into(),
                reason: format!("GPU {ordinal} requested, the driver sees {count}"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("opening the GPU", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_err("reading the compute capability", e))?;
        let name = ctx
            .name()
            .map_err(|e| driver_err("reading the GPU name", e))?;
        // Every op runs on one stream, in order: cudarc's per-buffer event
        // tracking (for several streams) would only add two driver calls
        // per kernel argument and break graph capture.
        // SAFETY: no buffer is ever used on a second stream.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory(&ctx)?;
        // A stream of its own (not the legacy default stream), so that
        // work on it can be captured as a CUDA graph.
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating a stream", e))?;
        Ok(Arc::new(Self {
            ctx,
            stream,
            arch: (10 * major + minor) as u32,
            name,
            modules: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            capturing: AtomicBool::new(false),
            captured: Mutex::new(Vec::new()),
            quantized_x: Mutex::new(None),
            moe_tables: Mutex::new(Vec::new()),
            attn_counters: Mutex::new(None),
            max_smem: std::sync::OnceLock::new(),
        }))
    }

    /// Function `name` of kernel file `k`, compiled (or read from the
    /// cache) and loaded on first use.
    pub fn function(&self, k: &Kernel, name: &str) -> Result<CudaFunction> {
        let module = {
            let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            let only = k.split.then_some(name);
            let key = match only {
                Some(f) => format!("{}/{f}", k.name),
                None => k.name.to_string(),
            };
            match mods.get(&key) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile::ptx(k, self.arch, only)?;
                    let m = self
                        .ctx
                        .load_module(Ptx::from_src(ptx))
                        .map_err(|e| driver_err(&format!("loading kernels/{}.cu", k.name), e))?;
                    mods.insert(key, m.clone());
                    m
                }
            }
        };
        module
            .load_function(name)
            .map_err(|e| driver_err(&format!("kernel {name} of kernels/{}.cu", k.name), e))
    }

    /// `data` on the GPU, reusing the previous upload under `key` when it
    /// held the same values: a step's metadata (positions, block tables,
    /// KV slots) is the same for every layer, so it crosses the bus once
    /// per step instead of once per layer. While a step is captured, a
    /// value not staged beforehand is an error (it would cross the bus
    /// inside the graph).
    pub fn upload_cached<T: DeviceRepr + bytemuck::Pod + Send + Sync>(
        &self,
        key: &'static str,
        data: &[T],
    ) -> Result<Arc<CudaSlice<T>>> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mut ups = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old, buf)) = ups.get(key) {
            if old.as_slice() == bytes {
                if let Ok(b) = buf.clone().downcast::<CudaSlice<T>>() {
                    if self.capturing() {
                        self.captured
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(b.clone());
                    }
                    return Ok(b);
                }
            }
        }
        self.check_not_capturing(key)?;
        let b = Arc::new(crate::buffer::upload(self, data, key)?);
        ups.insert(key, (bytes.to_vec(), b.clone()));
        Ok(b)
    }

    /// Writes `data` into `buf` (which holds at least `data.len()` values)
    /// and makes it the cached upload of `key`: a graph's inputs, staged
    /// before it is captured or replayed.
    pub(crate) fn stage(
        &self,
        key: &'static str,
        data: &[u32],
        buf: &Arc<CudaSlice<u32>>,
    ) -> Result<()> {
        use cudarc::driver::DevicePtr;
        if data.len() > buf.len() {
            return Err(Error::Other(format!(
                "staging {} values of {key} into a buffer of {}",
                data.len(),
                buf.len()
            )));
        }
        if !data.is_empty() {
            let (ptr, _sync) = buf.device_ptr(&self.stream);
            // SAFETY: buf holds at least data.len() u32 (checked above);
            // the copy is ordered on the one stream before any kernel
            // that reads it.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(ptr, data, self.stream.cu_stream())
            }
            .map_err(|e| driver_err(&format!("staging {key}"), e))?;
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mut ups = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let e = ups.entry(key).or_insert_with(|| (Vec::new(), buf.clone()));
        // The previous step's byte vector is reused: no allocation per step.
        e.0.clear();
        e.0.extend_from_slice(bytes);
        e.1 = buf.clone();
        Ok(())
    }

    /// Whether a step is being captured.
    pub(crate) fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Acquire)
    }

    /// Starts (`true`) or ends a capture: the cached uploads read during
    /// it are returned at its end.
    pub(crate) fn set_capturing(&self, on: bool) -> Vec<Cached> {
        if on {
            self.drop_quantized_x();
        }
        self.capturing.store(on, Ordering::Release);
        std::mem::take(&mut *self.captured.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Frees the kept quantized activations (and the input they hold):
    /// before a capture ends, so that what it allocated is freed inside it.
    pub(crate) fn drop_quantized_x(&self) {
        self.quantized_x
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// An error while a step is captured: `what` would cross the bus.
    /// [`crate::ops::attention::COUNTERS`] counters of the split
    /// attention kernel, allocated zeroed at first use (before any capture:
    /// a step runs once before it is recorded) and kept for the runtime's
    /// life, so recorded steps keep reading the same ones. Each launch's
    /// last blocks set theirs back to zero.
    pub(crate) fn attention_counters(&self) -> Result<Arc<CudaSlice<u32>>> {
        let mut c = self.attn_counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = c.as_ref() {
            return Ok(b.clone());
        }
        self.check_not_capturing("attention counters")?;
        let n = crate::ops::attention::COUNTERS;
        let b = self
            .stream
            .alloc_zeros::<u32>(n)
            .map_err(|e| crate::buffer::oom(self, 4 * n, "attention counters", e))?;
        Ok(c.insert(Arc::new(b)).clone())
    }

    /// The shared memory a block may ask for (opt-in maximum), bytes.
    pub(crate) fn max_shared_memory(&self) -> Result<usize> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        if let Some(&v) = self.max_smem.get() {
            return Ok(v);
        }
        let v = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver_err("reading the GPU's shared memory limit", e))?;
        Ok(*self.max_smem.get_or_init(|| v.max(0) as usize))
    }

    pub(crate) fn check_not_capturing(&self, what: &str) -> Result<()> {
        if self.capturing() {
            return Err(Error::Backend {
                backend: "cuda".into(),
                reason: format!("{what} would be copied to the GPU inside a graph capture"),
            });
        }
        Ok(())
    }
}

/// Makes the stream-ordered allocator (every buffer of every op comes
/// from `cuMemAllocAsync`) a caching allocator: memory freed by one op is
/// kept in the device's pool for the next instead of going back to the
/// driver at each synchronization.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep = u64::MAX;
    // SAFETY: plain driver calls on this context's device; `keep` lives
    // across the call that reads it.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .and_then(|_| {
                sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut keep as *mut u64 as *mut std::ffi::c_void,
                )
                .result()
            })
    }
    .map_err(|e| driver_err("configuring the memory pool", e))
}
