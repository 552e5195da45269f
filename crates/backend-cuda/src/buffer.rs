//! Device memory: activation buffers ([`CudaBuffer`], the core's
//! `DeviceBuffer`) and weights uploaded once ([`DeviceWeight`]).

use std::any::Any;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use mm_core::tensor::DeviceBuffer;
use mm_core::{Error, Result, Storage, Tensor, WeightData, WeightFormat};

use crate::runtime::{driver_err, Runtime};

/// f32 values on the GPU, owned by a tensor.
pub struct CudaBuffer {
    pub(crate) data: CudaSlice<f32>,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuffer({} f32)", self.data.len())
    }
}

impl DeviceBuffer for CudaBuffer {
    fn backend(&self) -> &str {
        "cuda"
    }

    fn len(&self) -> usize {
        self.data.len()
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        self.stream
            .clone_dtoh(&self.data)
            .map_err(|e| driver_err("copying a tensor to the host", e))
    }

    /// One copy per range (the engine reads back the few logits rows the
    /// host samples).
    fn ranges_to_host(&self, ranges: &[(usize, usize)]) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; ranges.iter().map(|r| r.1).sum()];
        let mut at = 0;
        for &(s, l) in ranges {
            let end = s.checked_add(l).filter(|&e| e <= self.data.len());
            let Some(end) = end else {
                return Err(Error::Invalid(format!(
                    "values {s}..+{l} of a buffer of {}",
                    self.data.len()
                )));
            };
            if l > 0 {
                self.stream
                    .memcpy_dtoh(&self.data.slice(s..end), &mut out[at..at + l])
                    .map_err(|e| driver_err("copying tensor rows to the host", e))?;
            }
            at += l;
        }
        Ok(out)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An uninitialized buffer of `n` (> 0) f32: every op writes all of its
/// output.
pub(crate) fn alloc(rt: &Runtime, n: usize, what: &str) -> Result<CudaSlice<f32>> {
    alloc_of(rt, n, what)
}

/// [`alloc`] of `n` elements of any device type.
pub(crate) fn alloc_of<T: cudarc::driver::DeviceRepr>(
    rt: &Runtime,
    n: usize,
    what: &str,
) -> Result<CudaSlice<T>> {
    // SAFETY: the kernel that receives the buffer writes every element
    // before anything reads it.
    unsafe { rt.stream.alloc::<T>(n) }.map_err(|e| oom(rt, n * std::mem::size_of::<T>(), what, e))
}

/// An error naming what did not fit, with the GPU's free memory.
pub(crate) fn oom(rt: &Runtime, bytes: usize, what: &str, e: cudarc::driver::DriverError) -> Error {
    let free = rt
        .ctx
        .mem_get_info()
        .map(|(free, total)| format!("{} MiB free of {} MiB", free >> 20, total >> 20))
        .unwrap_or_else(|_| "free memory unknown".into());
    Error::Backend {
        backend: "cuda".into(),
        reason: format!(
            "allocating {} MiB for {what} failed ({free}): {e:?}",
            bytes >> 20
        ),
    }
}

/// Wraps a finished device buffer as a tensor of `shape` (ops return
/// empty outputs as host tensors: no zero-size allocations).
pub(crate) fn tensor(rt: &Runtime, shape: Vec<usize>, data: CudaSlice<f32>) -> Result<Tensor> {
    Tensor::from_device(
        shape,
        Arc::new(CudaBuffer {
            data,
            stream: rt.stream.clone(),
        }),
    )
}

/// A tensor's values on this GPU: its own buffer, or a fresh upload of a
/// host (or other backend's) tensor.
pub(crate) enum OnDevice<'a> {
    Here(&'a CudaSlice<f32>),
    Copied(CudaSlice<f32>),
}

impl OnDevice<'_> {
    pub fn slice(&self) -> &CudaSlice<f32> {
        match self {
            OnDevice::Here(s) => s,
            OnDevice::Copied(s) => s,
        }
    }
}

pub(crate) fn on_device<'a>(rt: &Runtime, t: &'a Tensor) -> Result<OnDevice<'a>> {
    if let Storage::Device(b) = t.storage() {
        if let Some(c) = b.as_any().downcast_ref::<CudaBuffer>() {
            return Ok(OnDevice::Here(&c.data));
        }
    }
    let host = t.to_vec()?;
    upload(rt, &host, "an input tensor").map(OnDevice::Copied)
}

/// The buffer `t` owns when `d` is that buffer itself (not a copy): the
/// identity under which the 8-bit activations of `t` are kept for the next
/// matmul of the same input (`ops::qmatmul::with_quantized_x`).
pub(crate) fn kept_input<'a>(
    t: &'a Tensor,
    d: &OnDevice<'_>,
) -> Option<&'a Arc<dyn mm_core::tensor::DeviceBuffer>> {
    match (t.storage(), d) {
        (Storage::Device(b), OnDevice::Here(_)) => Some(b),
        _ => None,
    }
}

pub(crate) fn upload<T: cudarc::driver::DeviceRepr>(
    rt: &Runtime,
    host: &[T],
    what: &str,
) -> Result<CudaSlice<T>> {
    rt.check_not_capturing(what)?;
    if host.is_empty() {
        // SAFETY: a one-element scratch buffer nothing reads.
        return unsafe { rt.stream.alloc::<T>(1) }.map_err(|e| oom(rt, 1, what, e));
    }
    rt.stream
        .clone_htod(host)
        .map_err(|e| oom(rt, std::mem::size_of_val(host), what, e))
}

/// A dense weight's stored bytes on the GPU, uploaded once and cached in
/// the weight.
pub struct DeviceWeight {
    pub format: WeightFormat,
    pub bytes: CudaSlice<u8>,
}

// SAFETY: the slice is only read by kernels on the runtime's stream after
// upload; cudarc slices are plain device pointers plus their stream.
unsafe impl Sync for DeviceWeight {}
unsafe impl Send for DeviceWeight {}

pub(crate) fn weight(rt: &Runtime, w: &WeightData) -> Result<Arc<DeviceWeight>> {
    w.prepared(|w| {
        let what = format!("a {} weight {:?}", w.format.name(), w.shape);
        Ok(DeviceWeight {
            format: w.format,
            bytes: upload(rt, &w.bytes, &what)?,
        })
    })
}

/// One layer's keys or values on the GPU (a [`mm_core::KvStore`]'s device
/// storage): `len` values of `dtype`, zeroed at allocation as host stores.
pub struct KvBuffer {
    pub(crate) data: CudaSlice<u8>,
    pub(crate) dtype: mm_core::KvDType,
    len: usize,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for KvBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvBuffer({} {})", self.len, self.dtype.name())
    }
}

impl DeviceBuffer for KvBuffer {
    fn backend(&self) -> &str {
        "cuda"
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The values widened to f32 (for inspection and tests).
    fn to_host(&self) -> Result<Vec<f32>> {
        let bytes = self
            .stream
            .clone_dtoh(&self.data)
            .map_err(|e| driver_err("copying a KV store to the host", e))?;
        Ok(match self.dtype {
            mm_core::KvDType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            mm_core::KvDType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A zeroed KV store of `slots × width` values on the GPU.
pub(crate) fn kv_store(
    rt: &Runtime,
    slots: usize,
    width: usize,
    dtype: mm_core::KvDType,
) -> Result<mm_core::KvStore> {
    let len = slots
        .checked_mul(width)
        .ok_or_else(|| Error::Invalid(format!("KV store of {slots} slots × {width} overflows")))?;
    let bytes = len.max(1) * dtype.bytes();
    let what = format!("a KV store of {slots} slots × {width} {}", dtype.name());
    let data = rt
        .stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| oom(rt, bytes, &what, e))?;
    let buf = KvBuffer {
        data,
        dtype,
        len,
        stream: rt.stream.clone(),
    };
    mm_core::KvStore::device(slots, width, dtype, Arc::new(buf))
}

/// The GPU buffer of a store this backend made, or an error naming where
/// the store lives.
pub(crate) fn kv_buffer<'a>(s: &'a mm_core::KvStore, op: &str) -> Result<&'a KvBuffer> {
    match &s.storage {
        mm_core::KvStorage::Device(b) => b.as_any().downcast_ref::<KvBuffer>(),
        _ => None,
    }
    .ok_or_else(|| {
        Error::Invalid(format!(
            "{op}: the KV store is not one of this GPU's (make it with the cuda backend's kv_store)"
        ))
    })
}
