//! metal-marlin core: the types every other crate shares.
//!
//! * [`Tensor`]: an f32 activation tensor living on some backend's storage.
//! * [`WeightFormat`] / [`WeightData`]: a weight matrix in its stored format
//!   (dense f32/f16/bf16, GGUF blocks, our own quantized formats) with its
//!   bytes memory-mapped or owned.
//! * [`Backend`]: the op interface implemented by `cpu`, `cuda` and `wgpu`.
//! * [`Device`]: a backend plus transparent CPU fallback for what it lacks.
//! * [`kv`]: the paged KV cache's storage and a forward step's batch layout.
//! * [`Error`]: one error type naming what failed and why.

pub mod backend;
pub mod bytes;
pub mod device;
pub mod error;
pub mod host_pool;
pub mod kv;
pub mod moe;
pub mod router;
pub mod sample;
pub mod tensor;
pub mod weight;

pub use backend::{unique_id, Backend, Op, RowKind, StepInputs};
pub use bytes::HostBytes;
pub use device::Device;
pub use error::{Error, Result};
pub use kv::{KvDType, KvStorage, KvStore, PagedBatch, PagedParams, SeqSpan};
pub use moe::{MoeExperts, MoeRoute};
pub use router::{GroupScore, MoeScoring, RouterParams};
pub use sample::SampleRow;
pub use tensor::{Storage, Tensor};
pub use weight::{WeightData, WeightFormat};
