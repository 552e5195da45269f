//! Weight matrices in their stored format.
//!
//! A [`WeightData`] is the one canonical copy of a weight: its format tag, its
//! logical shape (row-major, PyTorch order: `[out_features, in_features]` for
//! a linear layer) and its bytes, usually a window of a memory-mapped file.
//! A backend may derive a prepared form once (dequantized, repacked, uploaded)
//! and cache it in the weight; the stored bytes stay reachable for native
//! kernels.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use crate::{Error, HostBytes, Result};

/// Storage format of a weight tensor. GGML block types use the numbering of
/// the GGUF specification through [`WeightFormat::from_ggml_type`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl WeightFormat {
    /// Maps a GGML type id (as written in GGUF tensor infos) to a format.
    pub fn from_ggml_type(t: u32) -> Option<Self> {
        Some(match t {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Human name as llama.cpp prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }

    /// Bytes needed for `n` elements, or an error when `n` is not a whole
    /// number of blocks.
    pub fn bytes_for(self, n: usize) -> Result<usize> {
        let (be, bb) = self.block();
        if n % be != 0 {
            return Err(Error::Invalid(format!(
                "{} elements is not a multiple of the {} block size {be}",
                n,
                self.name()
            )));
        }
        (n / be)
            .checked_mul(bb)
            .ok_or_else(|| Error::Invalid(format!("{n} elements of {} overflow", self.name())))
    }

    /// True for plain floating-point formats.
    pub fn is_dense(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }
}

/// A weight tensor in its stored format, with a slot for one backend-prepared
/// form (dequantized or repacked), computed at most once.
#[derive(Clone)]
pub struct WeightData {
    pub format: WeightFormat,
    /// Logical shape, row-major (last dimension contiguous).
    pub shape: Vec<usize>,
    pub bytes: HostBytes,
    prepared: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl WeightData {
    /// Checks that `bytes` holds exactly `shape` elements of `format`.
    pub fn new(format: WeightFormat, shape: Vec<usize>, bytes: HostBytes) -> Result<Self> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Invalid(format!("shape {shape:?} overflows")))?;
        if let Some(&inner) = shape.last() {
            let (be, _) = format.block();
            if inner % be != 0 {
                return Err(Error::Invalid(format!(
                    "row length {inner} is not a multiple of the {} block size {be}",
                    format.name()
                )));
            }
        }
        let need = format.bytes_for(n)?;
        if need != bytes.len() {
            return Err(Error::Invalid(format!(
                "{} tensor of shape {shape:?} needs {need} bytes, found {}",
                format.name(),
                bytes.len()
            )));
        }
        Ok(Self {
            format,
            shape,
            bytes,
            prepared: Arc::new(OnceLock::new()),
        })
    }

    /// A dense f32 weight from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Self::new(
            WeightFormat::F32,
            shape,
            HostBytes::owned(bytemuck::cast_slice(values).to_vec()),
        )
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// `[rows, cols]` of a 2-D weight (rows = output features).
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            s => Err(Error::Invalid(format!(
                "expected a 2-D weight, found shape {s:?}"
            ))),
        }
    }

    /// The prepared form, computing it with `f` on first use. Only one type
    /// of prepared form may be stored per weight (one primary backend).
    pub fn prepared<T: Any + Send + Sync>(
        &self,
        f: impl FnOnce(&Self) -> Result<T>,
    ) -> Result<Arc<T>> {
        if let Some(p) = self.prepared.get() {
            return p
                .clone()
                .downcast::<T>()
                .map_err(|_| Error::Other("weight was prepared by a different backend".into()));
        }
        let v: Arc<dyn Any + Send + Sync> = Arc::new(f(self)?);
        let p = self.prepared.get_or_init(|| v).clone();
        p.downcast::<T>()
            .map_err(|_| Error::Other("weight was prepared by a different backend".into()))
    }
}

impl std::fmt::Debug for WeightData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightData({} {:?})", self.format.name(), self.shape)
    }
}
