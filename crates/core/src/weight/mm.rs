//! metal-marlin's own quantized formats: the format tags and their layout
//! arithmetic (how many bytes each part of a weight takes). The byte-level
//! specification is `docs/FORMAT.md`; the quantizers and reference
//! dequantizers live in `mm-quant` (`mm_quant::mm`).
//!
//! A weight `W[rows, cols]` in an [`MmFormat`] is stored as up to three parts,
//! all row-major so that one row's codes and scales are contiguous:
//!
//! * codes: `rows × cols·bits/8` bytes of little-endian bit-packed codes;
//! * scales: `rows × groups` scales, F16 little-endian (E8M0 bytes for MXFP4);
//! * zeros: `rows × groups` U8 zero-points, asymmetric integer formats only.

use std::fmt;

use crate::{Error, Result};

/// The group sizes a format may use; 0 means one group per row (per-channel).
pub const MM_GROUP_SIZES: [u32; 4] = [0, 32, 64, 128];

/// Every name [`MmKind::parse`] accepts, canonical names first.
pub const MM_FORMAT_NAMES: [&str; 17] = [
    "int8",
    "int4",
    "int3",
    "int2",
    "int8-asym",
    "int4-asym",
    "int3-asym",
    "int2-asym",
    "nf4",
    "fp8-e4m3",
    "fp8-e5m2",
    "fp4",
    "mxfp4",
    "trellis2",
    "trellis3",
    "trellis4",
    "fp8",
];

/// The element encoding of a metal-marlin quantized format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmKind {
    /// Signed integer codes of 2, 3, 4 or 8 bits, stored offset by
    /// `2^(bits-1)`; value = code · scale; scale = absmax / (2^(bits-1) - 1).
    IntSym(u8),
    /// Unsigned integer codes of 2, 3, 4 or 8 bits with a per-group U8
    /// zero-point; value = (code - zero) · scale; scale = (max - min) / (2^bits - 1).
    IntAsym(u8),
    /// QLoRA's 16 NormalFloat levels in [-1, 1], times an absmax scale.
    Nf4,
    /// OCP FP8 E4M3 ("fn": max 448, no infinities, NaN = S.1111.111).
    Fp8E4M3,
    /// OCP FP8 E5M2 (IEEE-like: max 57344, infinities and NaNs).
    Fp8E5M2,
    /// FP4 E2M1 elements (±{0, 0.5, 1, 1.5, 2, 3, 4, 6}) with F16 scales.
    Fp4E2M1,
    /// OCP MXFP4: E2M1 elements, one E8M0 power-of-two scale per 32 elements.
    Mxfp4,
    /// Bitshift trellis of 2, 3 or 4 bits per weight over 16×16 tiles, with
    /// Hadamard transforms and sign/scale vectors on both sides
    /// (docs/FORMAT.md §4.8; `mm_quant::trellis`). Not grouped and not
    /// row-major: its codes are tiles, its "scales" part holds the output
    /// then the input vector (`rows + cols` F16), so the group arithmetic of
    /// [`MmFormat`] does not describe it; see [`MmFormat::part_sizes`].
    Trellis(u8),
}

/// How a format's per-group scales are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmScale {
    /// IEEE binary16, little-endian, 2 bytes per group.
    F16,
    /// OCP E8M0: one byte per group, value 2^(byte - 127), 0xFF = NaN.
    E8M0,
}

impl MmKind {
    /// Every grouped (row-major) format, in the order of [`MM_FORMAT_NAMES`];
    /// the trellis formats are [`MmKind::TRELLIS`].
    pub const ALL: [MmKind; 13] = [
        Self::IntSym(8),
        Self::IntSym(4),
        Self::IntSym(3),
        Self::IntSym(2),
        Self::IntAsym(8),
        Self::IntAsym(4),
        Self::IntAsym(3),
        Self::IntAsym(2),
        Self::Nf4,
        Self::Fp8E4M3,
        Self::Fp8E5M2,
        Self::Fp4E2M1,
        Self::Mxfp4,
    ];

    /// The trellis formats.
    pub const TRELLIS: [MmKind; 3] = [Self::Trellis(2), Self::Trellis(3), Self::Trellis(4)];

    /// The group sizes the format allows (0 = per-channel): its fixed group
    /// (MXFP4: 32) or every one of [`MM_GROUP_SIZES`].
    pub fn group_sizes(self) -> &'static [u32] {
        match self {
            Self::Mxfp4 => &[32],
            Self::Trellis(_) => &[0],
            _ => &MM_GROUP_SIZES,
        }
    }

    /// Parses a format name (see [`MM_FORMAT_NAMES`]); case-insensitive.
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase();
        Ok(match n.as_str() {
            "int8" => Self::IntSym(8),
            "int4" => Self::IntSym(4),
            "int3" => Self::IntSym(3),
            "int2" => Self::IntSym(2),
            "int8-asym" => Self::IntAsym(8),
            "int4-asym" => Self::IntAsym(4),
            "int3-asym" => Self::IntAsym(3),
            "int2-asym" => Self::IntAsym(2),
            "nf4" => Self::Nf4,
            "fp8-e4m3" | "fp8" => Self::Fp8E4M3,
            "fp8-e5m2" => Self::Fp8E5M2,
            "fp4" => Self::Fp4E2M1,
            "mxfp4" => Self::Mxfp4,
            "trellis2" => Self::Trellis(2),
            "trellis3" => Self::Trellis(3),
            "trellis4" => Self::Trellis(4),
            _ => {
                return Err(Error::Invalid(format!(
                "unknown quantization format '{name}' (valid: {}; 'fp8' is an alias of 'fp8-e4m3')",
                MM_FORMAT_NAMES[..16].join(", ")
            )))
            }
        })
    }

    /// Canonical name, as written in `quantization_config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::IntSym(8) => "int8",
            Self::IntSym(4) => "int4",
            Self::IntSym(3) => "int3",
            Self::IntSym(2) => "int2",
            Self::IntAsym(8) => "int8-asym",
            Self::IntAsym(4) => "int4-asym",
            Self::IntAsym(3) => "int3-asym",
            Self::IntAsym(2) => "int2-asym",
            Self::IntSym(_) => "int?",
            Self::IntAsym(_) => "int?-asym",
            Self::Nf4 => "nf4",
            Self::Fp8E4M3 => "fp8-e4m3",
            Self::Fp8E5M2 => "fp8-e5m2",
            Self::Fp4E2M1 => "fp4",
            Self::Mxfp4 => "mxfp4",
            Self::Trellis(2) => "trellis2",
            Self::Trellis(3) => "trellis3",
            Self::Trellis(4) => "trellis4",
            Self::Trellis(_) => "trellis?",
        }
    }

    /// Bits per code.
    pub fn bits(self) -> u32 {
        match self {
            Self::IntSym(b) | Self::IntAsym(b) | Self::Trellis(b) => b as u32,
            Self::Nf4 | Self::Fp4E2M1 | Self::Mxfp4 => 4,
            Self::Fp8E4M3 | Self::Fp8E5M2 => 8,
        }
    }

    /// Whether this is a trellis format (tiles, not row-major groups).
    pub fn is_trellis(self) -> bool {
        matches!(self, Self::Trellis(_))
    }

    /// Whether the format stores a per-group zero-point part.
    pub fn has_zeros(self) -> bool {
        matches!(self, Self::IntAsym(_))
    }

    /// How the per-group scales are stored.
    pub fn scale(self) -> MmScale {
        match self {
            Self::Mxfp4 => MmScale::E8M0,
            _ => MmScale::F16,
        }
    }

    /// The only group size the format allows, if it fixes one (MXFP4: 32).
    pub fn fixed_group(self) -> Option<u32> {
        match self {
            Self::Mxfp4 => Some(32),
            Self::Trellis(_) => Some(0),
            _ => None,
        }
    }

    /// Smallest number of codes that fills whole bytes (8 for 3-bit codes,
    /// which pack 8 to 3 bytes). Every row holds a multiple of it.
    pub fn pack_unit(self) -> usize {
        if self.is_trellis() {
            return 16;
        }
        match self.bits() {
            2 => 4,
            3 => 8,
            4 => 2,
            _ => 1,
        }
    }

    /// Checks that integer kinds have a supported bit width.
    pub fn validate(self) -> Result<()> {
        match self {
            Self::IntSym(b) | Self::IntAsym(b) if !matches!(b, 2 | 3 | 4 | 8) => {
                Err(Error::Invalid(format!(
                    "integer quantization supports 2, 3, 4 or 8 bits, not {b}"
                )))
            }
            Self::Trellis(b) if !matches!(b, 2..=4) => Err(Error::Invalid(format!(
                "trellis formats have 2, 3 or 4 bits per weight, not {b}"
            ))),
            _ => Ok(()),
        }
    }
}

/// A metal-marlin quantized format: element encoding plus group size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmFormat {
    pub kind: MmKind,
    /// Elements per scale group along a row; 0 = one group per row
    /// (per-channel). One of [`MM_GROUP_SIZES`].
    pub group: u32,
}

/// Byte sizes of the parts of one quantized weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmPartSizes {
    pub codes: usize,
    pub scales: usize,
    /// 0 when the format has no zero-points.
    pub zeros: usize,
}

impl MmPartSizes {
    /// All parts together.
    pub fn total(&self) -> usize {
        self.codes + self.scales + self.zeros
    }
}

impl MmFormat {
    /// A validated format.
    pub fn new(kind: MmKind, group: u32) -> Result<Self> {
        let f = Self { kind, group };
        f.validate()?;
        Ok(f)
    }

    /// Every valid grouped (format, group size) combination: each of [`MmKind::ALL`]
    /// with each of its [`MmKind::group_sizes`].
    pub fn all() -> Vec<Self> {
        MmKind::ALL
            .iter()
            .flat_map(|&k| {
                k.group_sizes()
                    .iter()
                    .map(move |&g| Self { kind: k, group: g })
            })
            .filter(|f| f.validate().is_ok())
            .collect()
    }

    /// Parses a format name (`int4`, `int4-asym`, `nf4`, `fp8-e4m3`/`fp8`,
    /// `fp8-e5m2`, `fp4`, `mxfp4`, …) with a group size (0 = per-channel).
    pub fn parse(name: &str, group: u32) -> Result<Self> {
        Self::new(MmKind::parse(name)?, group)
    }

    /// Checks the bit width and the group size.
    pub fn validate(self) -> Result<()> {
        self.kind.validate()?;
        if self.kind.is_trellis() && self.group != 0 {
            return Err(Error::Invalid(format!(
                "{} has no scale groups (one scale per row and per column): leave the group size out, not {}",
                self.kind.name(),
                self.group
            )));
        }
        if let Some(g) = self.kind.fixed_group() {
            if self.group != g {
                return Err(Error::Invalid(format!(
                    "{} uses a fixed group size of {g} (one shared exponent per {g} elements), not {}",
                    self.kind.name(),
                    group_label(self.group)
                )));
            }
        } else if !MM_GROUP_SIZES.contains(&self.group) {
            return Err(Error::Invalid(format!(
                "{}: unsupported group size {} (valid: 0 = per-channel, 32, 64, 128)",
                self.kind.name(),
                self.group
            )));
        }
        Ok(())
    }

    /// Canonical name of the element encoding (the group is not included).
    pub fn name(self) -> &'static str {
        self.kind.name()
    }

    /// Bits per code.
    pub fn bits(self) -> u32 {
        self.kind.bits()
    }

    /// Elements per group in a row of `cols` elements.
    pub fn group_len(self, cols: usize) -> usize {
        if self.group == 0 {
            cols
        } else {
            self.group as usize
        }
    }

    /// Groups (scales) per row of `cols` elements.
    pub fn groups_per_row(self, cols: usize) -> usize {
        if self.group == 0 {
            1
        } else {
            cols / self.group as usize
        }
    }

    /// Bytes of one group's scale.
    pub fn scale_bytes(self) -> usize {
        match self.kind.scale() {
            MmScale::F16 => 2,
            MmScale::E8M0 => 1,
        }
    }

    /// Bytes of packed codes for `n` elements (`n` a multiple of the
    /// packing unit).
    pub fn code_bytes(self, n: usize) -> usize {
        n / self.kind.pack_unit() * (self.kind.pack_unit() * self.bits() as usize / 8)
    }

    /// Checks that rows of `cols` elements can be stored in this format.
    pub fn check_row_len(self, cols: usize) -> Result<()> {
        self.validate()?;
        if cols == 0 {
            return Err(Error::Invalid(format!(
                "{}: rows must not be empty",
                self.kind.name()
            )));
        }
        if self.group != 0 && cols % self.group as usize != 0 {
            return Err(Error::Invalid(format!(
                "{}: row length {cols} is not divisible by the group size {}",
                self.kind.name(),
                self.group
            )));
        }
        let unit = self.kind.pack_unit();
        if cols % unit != 0 {
            return Err(Error::Invalid(format!(
                "{}: row length {cols} must be a multiple of {unit} ({}-bit codes pack {unit} to {} byte(s))",
                self.kind.name(),
                self.bits(),
                unit * self.bits() as usize / 8
            )));
        }
        Ok(())
    }

    /// Byte sizes of the parts of a `[rows, cols]` weight.
    /// Trellis formats (2-D weights only): codes `rows·cols·K/8` bytes of
    /// tiles, scales `rows + cols` F16 (the output then the input vector).
    pub fn part_sizes(self, rows: usize, cols: usize) -> Result<MmPartSizes> {
        self.check_row_len(cols)?;
        let overflow = || Error::Invalid(format!("{rows}x{cols} {} weight overflows", self.name()));
        if self.kind.is_trellis() {
            if rows == 0 || rows % 16 != 0 {
                return Err(Error::Invalid(format!(
                    "{}: {rows} rows do not divide into 16x16 tiles (a non-zero multiple of 16 is needed)",
                    self.name()
                )));
            }
            let codes = rows
                .checked_mul(self.code_bytes(cols))
                .ok_or_else(overflow)?;
            let scales = rows
                .checked_add(cols)
                .and_then(|n| n.checked_mul(2))
                .ok_or_else(overflow)?;
            return Ok(MmPartSizes {
                codes,
                scales,
                zeros: 0,
            });
        }
        let groups = rows
            .checked_mul(self.groups_per_row(cols))
            .ok_or_else(overflow)?;
        Ok(MmPartSizes {
            codes: rows
                .checked_mul(self.code_bytes(cols))
                .ok_or_else(overflow)?,
            scales: groups
                .checked_mul(self.scale_bytes())
                .ok_or_else(overflow)?,
            zeros: if self.kind.has_zeros() { groups } else { 0 },
        })
    }

    /// (elements, bytes) of the smallest unit of packed codes that a row is
    /// made of: one group, or the packing unit for per-channel formats.
    pub fn block(self) -> (usize, usize) {
        let n = if self.group == 0 {
            self.kind.pack_unit()
        } else {
            self.group as usize
        };
        (n, self.code_bytes(n))
    }
}

fn group_label(g: u32) -> String {
    if g == 0 {
        "per-channel (0)".into()
    } else {
        g.to_string()
    }
}

impl fmt::Display for MmFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group == 0 {
            write!(f, "{} (per-channel)", self.kind.name())
        } else {
            write!(f, "{} (group {})", self.kind.name(), self.group)
        }
    }
}

/// `(rows, cols)` of a weight of logical shape `shape`: the last dimension is
/// a row, every leading dimension multiplies the row count.
pub fn rows_cols(shape: &[usize]) -> Result<(usize, usize)> {
    let (&cols, lead) = shape
        .split_last()
        .ok_or_else(|| Error::Invalid("a quantized weight needs at least one dimension".into()))?;
    let rows = lead
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Invalid(format!("shape {shape:?} overflows")))?;
    Ok((rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_and_aliases() {
        for n in MM_FORMAT_NAMES {
            let g = match n {
                "mxfp4" => 32,
                _ if n.starts_with("trellis") => 0,
                _ => 128,
            };
            let f = MmFormat::parse(n, g).unwrap();
            if n != "fp8" {
                assert_eq!(f.name(), n);
            }
        }
        assert_eq!(MmKind::parse("FP8").unwrap(), MmKind::Fp8E4M3);
        let e = MmFormat::parse("int5", 32).unwrap_err().to_string();
        assert!(
            e.contains("int5") && e.contains("int4-asym") && e.contains("mxfp4"),
            "{e}"
        );
    }

    #[test]
    fn group_validation() {
        assert!(MmFormat::parse("int4", 0).is_ok());
        assert!(MmFormat::parse("int4", 96)
            .unwrap_err()
            .to_string()
            .contains("96"));
        assert!(MmFormat::parse("mxfp4", 64).is_err());
        assert!(MmFormat::parse("mxfp4", 0).is_err());
        assert!(MmFormat::new(MmKind::IntSym(5), 32).is_err());
        let f = MmFormat::parse("int4", 128).unwrap();
        let e = f.part_sizes(4, 96).unwrap_err().to_string();
        assert!(e.contains("96") && e.contains("128"), "{e}");
        let f = MmFormat::parse("int3", 0).unwrap();
        assert!(f
            .part_sizes(2, 12)
            .unwrap_err()
            .to_string()
            .contains("multiple of 8"));
    }

    #[test]
    fn sizes() {
        let f = MmFormat::parse("int3-asym", 32).unwrap();
        let s = f.part_sizes(3, 64).unwrap();
        assert_eq!(
            s,
            MmPartSizes {
                codes: 3 * 24,
                scales: 3 * 2 * 2,
                zeros: 6
            }
        );
        assert_eq!(f.block(), (32, 12));
        let f = MmFormat::parse("mxfp4", 32).unwrap();
        let s = f.part_sizes(2, 64).unwrap();
        assert_eq!(
            s,
            MmPartSizes {
                codes: 64,
                scales: 4,
                zeros: 0
            }
        );
        let f = MmFormat::parse("int2", 0).unwrap();
        assert_eq!(f.block(), (4, 1));
        assert_eq!(f.part_sizes(5, 8).unwrap().scales, 10);
    }
}
