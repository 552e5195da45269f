//! Activation tensors: f32 values, row-major, on a backend's storage.

use std::any::Any;
use std::sync::Arc;

use crate::{Error, Result};

/// A buffer owned by a GPU backend. Core knows nothing of its layout beyond
/// its element count; the owning backend downcasts it through `as_any`.
pub trait DeviceBuffer: Send + Sync + std::fmt::Debug {
    /// Name of the backend that owns the buffer.
    fn backend(&self) -> &str;
    /// Number of f32 elements.
    fn len(&self) -> usize;
    /// Copies the values to the host.
    fn to_host(&self) -> Result<Vec<f32>>;
    /// Copies the values of `ranges` (`(start, len)`, in elements) to the
    /// host one after another. Default: everything, then the ranges.
    fn ranges_to_host(&self, ranges: &[(usize, usize)]) -> Result<Vec<f32>> {
        let all = self.to_host()?;
        gather_ranges(&all, ranges)
    }
    fn as_any(&self) -> &dyn Any;
}

/// Where a tensor's values live. A dropped host buffer goes back to
/// [`crate::host_pool`] for the next op of its size.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    Device(Arc<dyn DeviceBuffer>),
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Cpu(v) = self {
            crate::host_pool::recycle(std::mem::take(v));
        }
    }
}

/// An f32 tensor with a row-major shape.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// A host tensor; fails when `data.len()` does not match `shape`.
    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Invalid(format!(
                "shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self {
            shape,
            storage: Storage::Cpu(data),
        })
    }

    /// A host tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            storage: Storage::Cpu(crate::host_pool::zeroed(n)),
        }
    }

    /// Wraps a device buffer; fails when its length does not match `shape`.
    pub fn from_device(shape: Vec<usize>, buf: Arc<dyn DeviceBuffer>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != buf.len() {
            return Err(Error::Invalid(format!(
                "shape {shape:?} needs {n} values, device buffer holds {}",
                buf.len()
            )));
        }
        Ok(Self {
            shape,
            storage: Storage::Device(buf),
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// `(rows, cols)` of a 2-D tensor.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            s => Err(Error::Invalid(format!(
                "expected a 2-D tensor, found shape {s:?}"
            ))),
        }
    }

    /// Same values, new shape with the same element count.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::Invalid(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Host values, or an error for device tensors.
    pub fn as_slice(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Device(b) => Err(Error::Backend {
                backend: b.backend().to_string(),
                reason: "tensor is on the device; copy it to the host first".into(),
            }),
        }
    }

    /// Mutable host values, or an error for device tensors.
    pub fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Device(b) => Err(Error::Backend {
                backend: b.backend().to_string(),
                reason: "tensor is on the device; copy it to the host first".into(),
            }),
        }
    }

    /// Copies the values to the host, wherever they live.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(crate::host_pool::copied(v)),
            Storage::Device(b) => b.to_host(),
        }
    }

    /// Rows `rows` of a 2-D tensor (`[rows.len(), cols]`, in that order)
    /// copied to the host: only those rows cross the bus.
    pub fn rows_to_vec(&self, rows: &[usize]) -> Result<Vec<f32>> {
        let (n, cols) = self.dims2()?;
        if let Some(r) = rows.iter().find(|&&r| r >= n) {
            return Err(Error::Invalid(format!("row {r} of a tensor of {n} rows")));
        }
        // Consecutive rows as one range.
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for &r in rows {
            match ranges.last_mut() {
                Some((s, l)) if *s + *l == r * cols => *l += cols,
                _ => ranges.push((r * cols, cols)),
            }
        }
        match &self.storage {
            Storage::Cpu(v) => gather_ranges(v, &ranges),
            Storage::Device(b) => b.ranges_to_host(&ranges),
        }
    }

    /// A host copy of this tensor (cheap clone when already on the host).
    pub fn to_host(&self) -> Result<Tensor> {
        Ok(Tensor {
            shape: self.shape.clone(),
            storage: Storage::Cpu(self.to_vec()?),
        })
    }

    /// True when the values live on the host.
    pub fn is_host(&self) -> bool {
        matches!(self.storage, Storage::Cpu(_))
    }
}

/// The values of `ranges` (`(start, len)`) of `v`, one after another; a
/// range past the end is an error naming it.
pub fn gather_ranges(v: &[f32], ranges: &[(usize, usize)]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(ranges.iter().map(|r| r.1).sum());
    for &(s, l) in ranges {
        let part = s
            .checked_add(l)
            .and_then(|e| v.get(s..e))
            .ok_or_else(|| Error::Invalid(format!("values {s}..+{l} of {}", v.len())))?;
        out.extend_from_slice(part);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_to_vec_takes_rows_in_the_order_asked() {
        let t = Tensor::from_vec(vec![4, 3], (0..12).map(|v| v as f32).collect()).unwrap();
        assert_eq!(
            t.rows_to_vec(&[2, 3, 0]).unwrap(),
            [6., 7., 8., 9., 10., 11., 0., 1., 2.]
        );
        assert!(t.rows_to_vec(&[]).unwrap().is_empty());
        assert!(t.rows_to_vec(&[4]).is_err());
        assert!(Tensor::zeros(vec![12]).rows_to_vec(&[0]).is_err());
    }
}
