//! Tensors and KV stores in GPU memory, and weights in their GPU form.

use std::sync::Arc;

use half::f16;
use mm_core::tensor::DeviceBuffer;
use mm_core::{Error, KvStore, Result, Tensor};

use crate::runtime::Runtime;

/// Element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    /// Two per u32, low half first (KV stores).
    F16,
}

/// A GPU buffer of `len` elements.
pub struct WgpuBuffer {
    pub buf: wgpu::Buffer,
    pub len: usize,
    pub elem: Elem,
    pub rt: Arc<Runtime>,
    /// Taken from the runtime's pool ([`Runtime::take`]), to which it goes
    /// back when the tensor is dropped.
    pub pooled: bool,
}

impl Drop for WgpuBuffer {
    fn drop(&mut self) {
        if self.pooled {
            self.rt.give(self.buf.clone());
        }
    }
}

impl std::fmt::Debug for WgpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBuffer({} × {:?})", self.len, self.elem)
    }
}

impl WgpuBuffer {
    fn bytes_of(&self, elems: usize) -> u64 {
        match self.elem {
            Elem::F32 => elems as u64 * 4,
            Elem::F16 => elems as u64 * 2,
        }
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn backend(&self) -> &str {
        "wgpu"
    }

    fn len(&self) -> usize {
        self.len
    }

    fn to_host(&self) -> Result<Vec<f32>> {
        let bytes = self
            .rt
            .read(&self.buf, 0, self.bytes_of(self.len).div_ceil(4) * 4)?;
        Ok(match self.elem {
            Elem::F32 => bytemuck::cast_slice::<u8, f32>(&bytes)[..self.len].to_vec(),
            Elem::F16 => bytes
                .chunks_exact(2)
                .take(self.len)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }

    /// f32 buffers copy only the ranges asked for (a few logits rows of a
    /// batch); f16 ones read everything and pick.
    fn ranges_to_host(&self, ranges: &[(usize, usize)]) -> Result<Vec<f32>> {
        if self.elem != Elem::F32 {
            let all = self.to_host()?;
            return mm_core::tensor::gather_ranges(&all, ranges);
        }
        let mut bytes = Vec::with_capacity(ranges.len());
        for &(s, l) in ranges {
            if s.checked_add(l).is_none_or(|e| e > self.len) {
                return Err(Error::Invalid(format!("values {s}..+{l} of {}", self.len)));
            }
            bytes.push((s as u64 * 4, l as u64 * 4));
        }
        let raw = self.rt.read_ranges(&self.buf, &bytes)?;
        Ok(bytemuck::cast_slice::<u8, f32>(&raw).to_vec())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A new f32 tensor of `shape` on the GPU, in a pooled buffer whose
/// contents are undefined until a kernel writes all of it.
pub fn alloc(rt: &Arc<Runtime>, shape: Vec<usize>, what: &str) -> Result<(Tensor, wgpu::Buffer)> {
    let len: usize = shape.iter().product();
    let buf = rt.take(len as u64 * 4, what)?;
    let t = Tensor::from_device(
        shape,
        Arc::new(WgpuBuffer {
            buf: buf.clone(),
            len,
            elem: Elem::F32,
            rt: rt.clone(),
            pooled: true,
        }),
    )?;
    Ok((t, buf))
}

/// `t` on this GPU: its buffer when it is already here, else an upload.
pub fn on_gpu(rt: &Arc<Runtime>, t: &Tensor) -> Result<wgpu::Buffer> {
    if let mm_core::tensor::Storage::Device(d) = t.storage() {
        if let Some(b) = d.as_any().downcast_ref::<WgpuBuffer>() {
            if b.elem == Elem::F32 {
                return Ok(b.buf.clone());
            }
        }
    }
    let v = t.to_vec()?;
    rt.upload(bytemuck::cast_slice(&v), "input")
}

/// An upload of `t` as a tensor of this backend.
pub fn upload(rt: &Arc<Runtime>, t: &Tensor) -> Result<Tensor> {
    if let mm_core::tensor::Storage::Device(d) = t.storage() {
        if d.as_any().downcast_ref::<WgpuBuffer>().is_some() {
            return Ok(t.clone());
        }
    }
    let v = t.to_vec()?;
    let buf = rt.take_filled(bytemuck::cast_slice(&v), "tensor")?;
    Tensor::from_device(
        t.shape().to_vec(),
        Arc::new(WgpuBuffer {
            buf,
            len: v.len(),
            elem: Elem::F32,
            rt: rt.clone(),
            pooled: true,
        }),
    )
}

/// Small host data (ids, slots, tables) as a storage buffer; the same
/// data under the same name as last time reuses that upload
/// ([`Runtime::upload_cached`]: every layer of a step writes the same KV
/// slots and reads the same block tables).
pub fn words(rt: &Runtime, v: &[u32], what: &'static str) -> Result<wgpu::Buffer> {
    let bytes: &[u8] = bytemuck::cast_slice(v);
    rt.upload_cached(what, bytes, || bytes.to_vec())
}

/// The buffer and element type of a KV store of this backend.
pub fn kv_buffer(store: &KvStore) -> Result<(&WgpuBuffer, bool)> {
    match &store.storage {
        mm_core::kv::KvStorage::Device(d) => d
            .as_any()
            .downcast_ref::<WgpuBuffer>()
            .map(|b| (b, b.elem == Elem::F16))
            .ok_or_else(|| Error::Invalid("KV store belongs to another backend".into())),
        _ => Err(Error::Invalid(
            "KV store is in host memory; the wgpu backend needs one of its own (kv_store)".into(),
        )),
    }
}
