//! Host byte buffers that are either owned or a window into a memory map.

use std::ops::Deref;
use std::sync::Arc;

/// Bytes on the host: owned, or borrowed from a shared memory map so weights
/// are never copied at load time.
#[derive(Clone)]
pub enum HostBytes {
    Owned(Arc<Vec<u8>>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl HostBytes {
    /// Wraps an owned vector.
    pub fn owned(v: Vec<u8>) -> Self {
        HostBytes::Owned(Arc::new(v))
    }

    /// A window of `len` bytes at `offset` of `map`. The caller has checked
    /// that the window lies inside the map.
    pub fn mapped(map: Arc<memmap2::Mmap>, offset: usize, len: usize) -> Self {
        debug_assert!(offset + len <= map.len());
        HostBytes::Mapped { map, offset, len }
    }
}

impl Deref for HostBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            HostBytes::Owned(v) => v,
            HostBytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

impl std::fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBytes({} bytes)", self.len())
    }
}
