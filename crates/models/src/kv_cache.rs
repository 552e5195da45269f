//! Key/value cache: one preallocated `[capacity, kv_heads*head_dim]` buffer
//! pair per layer on the model's device, filled row by row.

use mm_core::{Device, Error, Result, Tensor};

/// The KV cache of one sequence.
pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Allocates room for `capacity` positions of `layers` layers.
    pub fn new(device: &Device, layers: usize, capacity: usize, kv_width: usize) -> Result<Self> {
        let zero = device.upload(&Tensor::zeros(vec![capacity, kv_width]))?;
        Ok(Self {
            k: vec![zero.clone(); layers],
            v: vec![zero; layers],
            len: 0,
            capacity,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets everything (buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps only the first `len` positions (for prefix reuse).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::ContextOverflow {
                prompt: self.len,
                requested: n,
                context: self.capacity,
            });
        }
        Ok(())
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
