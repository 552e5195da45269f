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

pub mod mm;
pub use mm::{rows_cols, MmFormat, MmKind, MmPartSizes, MmScale, MM_FORMAT_NAMES, MM_GROUP_SIZES};

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
    /// metal-marlin's own quantized formats (docs/FORMAT.md); the weight's
    /// `bytes` are the packed codes, its scales and zero-points are separate
    /// parts of the [`WeightData`].
    Mm(MmFormat),
}

impl WeightFormat {
    /// Every GGML block-quantized format (those the GGUF reader loads).
    pub const GGML_BLOCK: [WeightFormat; 10] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

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
            Self::Mm(f) => f.name(),
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
            Self::Mm(f) => f.block(),
        }
    }

    /// Bytes needed for `n` elements, or an error when `n` is not a whole
    /// number of blocks. For [`WeightFormat::Mm`] formats this is the size of
    /// the packed codes only; see [`WeightFormat::stored_bytes`].
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

    /// Bytes of every part of a weight of logical `shape` (codes, scales and
    /// zero-points for [`WeightFormat::Mm`] formats).
    pub fn stored_bytes(self, shape: &[usize]) -> Result<usize> {
        match self {
            Self::Mm(f) => {
                let (rows, cols) = rows_cols(shape)?;
                Ok(f.part_sizes(rows, cols)?.total())
            }
            _ => {
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| Error::Invalid(format!("shape {shape:?} overflows")))?;
                self.bytes_for(n)
            }
        }
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
    /// Per-group scales of a [`WeightFormat::Mm`] weight (F16 little-endian,
    /// or E8M0 bytes for MXFP4), row-major `[rows, groups]`; `None` otherwise.
    pub scales: Option<HostBytes>,
    /// Per-group U8 zero-points of an asymmetric [`WeightFormat::Mm`] weight,
    /// row-major `[rows, groups]`; `None` otherwise.
    pub zeros: Option<HostBytes>,
    prepared: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl WeightData {
    /// Checks that `bytes` holds exactly `shape` elements of `format`.
    /// [`WeightFormat::Mm`] weights have several parts: use [`WeightData::new_mm`].
    pub fn new(format: WeightFormat, shape: Vec<usize>, bytes: HostBytes) -> Result<Self> {
        if let WeightFormat::Mm(f) = format {
            return Err(Error::Invalid(format!(
                "{f} weights carry scales: build them with WeightData::new_mm"
            )));
        }
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
            scales: None,
            zeros: None,
            prepared: Arc::new(OnceLock::new()),
        })
    }

    /// A weight in a metal-marlin quantized format from its parts: packed
    /// `codes` (`rows × cols·bits/8` bytes), `scales` (`rows × groups`
    /// entries) and, for asymmetric formats only, `zeros` (`rows × groups`
    /// bytes). Rows are the last dimension of `shape`. Every size is checked.
    pub fn new_mm(
        format: MmFormat,
        shape: Vec<usize>,
        codes: HostBytes,
        scales: HostBytes,
        zeros: Option<HostBytes>,
    ) -> Result<Self> {
        let (rows, cols) = rows_cols(&shape)?;
        let sizes = format.part_sizes(rows, cols)?;
        let check = |part: &str, need: usize, found: usize| {
            if need == found {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{format} weight of shape {shape:?}: {part} need {need} bytes, found {found}"
                )))
            }
        };
        check("codes", sizes.codes, codes.len())?;
        check("scales", sizes.scales, scales.len())?;
        match (&zeros, format.kind.has_zeros()) {
            (Some(z), true) => check("zero-points", sizes.zeros, z.len())?,
            (None, false) => {}
            (None, true) => {
                return Err(Error::Invalid(format!(
                    "{format} weight of shape {shape:?}: zero-points are missing"
                )))
            }
            (Some(_), false) => {
                return Err(Error::Invalid(format!(
                    "{format} weight of shape {shape:?}: symmetric formats have no zero-points"
                )))
            }
        }
        Ok(Self {
            format: WeightFormat::Mm(format),
            shape,
            bytes: codes,
            scales: Some(scales),
            zeros,
            prepared: Arc::new(OnceLock::new()),
        })
    }

    /// Bytes of all parts of the stored weight.
    pub fn stored_bytes(&self) -> usize {
        self.bytes.len()
            + self.scales.as_ref().map_or(0, |s| s.len())
            + self.zeros.as_ref().map_or(0, |z| z.len())
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
