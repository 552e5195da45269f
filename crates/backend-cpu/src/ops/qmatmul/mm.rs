//! Fused dequantize-and-dot matmul for metal-marlin's own formats
//! (docs/FORMAT.md): `y[n, m] = x[n, k] · w[m, k]ᵀ` computed from the codes,
//! never from an f32 copy of the weight.
//!
//! **Prepared form** ([`MmPrepared`], built once at load by [`prepare`]):
//! each row is cut into 32-element blocks whose codes are repacked for SIMD
//! decoding, with the same number of bytes as stored:
//!
//! | bits | bytes / 32 | block layout (`c[i]` = raw code `i` of the block) |
//! | --- | --- | --- |
//! | 8 | 32 | byte `i` = `c[i]` (fp8) or `c[i] ^ 0x80` (integers: `c − 128` as i8) |
//! | 4 | 16 | byte `j` = `c[j] \| c[j+16] << 4` (GGML Q4_0 order) |
//! | 3 | 12 | bytes 0..8: the low 2 bits as for 2 bits; bytes 8..12: u32 LE, bit `i` = bit 2 of `c[i]` |
//! | 2 | 8 | byte `j` = `c[j] \| c[j+8] << 2 \| c[j+16] << 4 \| c[j+24] << 6` |
//!
//! and per group an f32 scale (the stored scale; halved for fp4/mxfp4,
//! whose values ×2 are integers; `2^(E−127)/2` for MXFP4's E8M0 byte) and,
//! for asymmetric formats, the stored U8 zero-point. With f32 scales instead
//! of f16 the prepared form is at most ~1.2× the stored bytes (int2-asym
//! g32), ~1.05× for int4 g128.
//!
//! **Integer path** (int2/3/4/8 sym and asym, fp4, mxfp4): every value is
//! `d_g · (c_i + o_g)` with `c_i` a signed byte (`u − 2^(b−1)`, or `2·e2m1`)
//! and `o_g = 2^(b−1) − z_g` for asymmetric formats (0 otherwise).
//! Activations are quantized to Q8_0 blocks (`q8.rs`, the same quantizer as
//! the GGML kernels), so per 32-block the dot product is the exact integer
//! `Σ c·q + o_g·isum` scaled once by `d_g·d_x`.
//!
//! **Float path** (nf4, fp8-e4m3, fp8-e5m2): codes are decoded to f32
//! (nf4 through its 16-entry table, fp8 by moving the bits into an f32 and
//! rescaling by a power of two — exact, subnormals, NaN and ∞ included) and
//! multiplied with the f32 activations; per group the partial sum is scaled
//! by `d_g`. Exact up to the order of the f32 additions.
//!
//! Kernels: [`vec_dot_int_ref`] / [`vec_dot_float_ref`] are the scalar
//! twins, with the same per-block integer sums and per-group scaling as the
//! AVX2 kernels (`x86_mm.rs`; on x86 only for the formats without a
//! row-interleaved form, see `il.rs`) and the NEON
//! kernels (`aarch64_mm.rs`, both paths). Threading is the GGML kernels'
//! ([`super::compute_tiled`]).

use mm_core::weight::{MmFormat, MmKind};
use mm_core::{Error, Result, WeightData, WeightFormat};
use mm_quant::mm::codec::{e2m1_to_f32, e4m3_to_f32, e5m2_to_f32, e8m0_to_f32, NF4_LEVELS};

use super::q8::{ActKind, ActRow};
use super::{check_isa, compute_tiled, with_act_rows, Isa};

/// Elements per repacked block (= the Q8_0 activation block).
pub const BLOCK: usize = 32;

/// How a format's dot product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Signed-byte weights times Q8_0 activations.
    Int,
    /// f32 weights times f32 activations: NF4 levels.
    Nf4,
    /// f32 weights times f32 activations: FP8 E4M3 bytes.
    E4M3,
    /// f32 weights times f32 activations: FP8 E5M2 bytes.
    E5M2,
}

/// A metal-marlin weight repacked for the CPU kernels (see the module docs
/// for the layout). Built once per weight and cached in its [`WeightData`].
pub struct MmPrepared {
    pub format: MmFormat,
    pub rows: usize,
    pub cols: usize,
    pub path: Path,
    /// Code bits (2, 3, 4 or 8).
    pub bits: u32,
    /// Repacked codes, `rows × row_bytes`.
    pub codes: Vec<u8>,
    /// Bytes of one row's repacked codes (`cols / 32 · bits · 4`).
    pub row_bytes: usize,
    /// Per-group f32 scale `d_g`, `rows × groups`.
    pub scales: Vec<f32>,
    /// Per-group zero-points (asymmetric formats), `rows × groups`; empty
    /// otherwise.
    pub zeros: Vec<u8>,
    /// Groups per row.
    pub groups: usize,
    /// 32-blocks per group.
    pub group_blocks: usize,
    /// Signed byte of each 4-bit (or 2-/3-bit) code: `u − 2^(b−1)` for
    /// integers, `2·e2m1(u)` for fp4/mxfp4 (the table the SIMD decoders
    /// shuffle with).
    pub lut: [i8; 16],
}

impl MmPrepared {
    /// Bytes held by the prepared form.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len() + self.zeros.len()
    }

    /// `o_g = 2^(b−1) − z_g` for asymmetric formats, 0 otherwise.
    #[inline(always)]
    pub fn offset(&self, row: usize, g: usize) -> i32 {
        if self.zeros.is_empty() {
            0
        } else {
            (1i32 << (self.bits - 1)) - self.zeros[row * self.groups + g] as i32
        }
    }

    /// Repacked codes of row `j`.
    #[inline(always)]
    pub fn row(&self, j: usize) -> &[u8] {
        &self.codes[j * self.row_bytes..(j + 1) * self.row_bytes]
    }
}

/// Whether the CPU kernels can run a weight: a 2-D (or stacked) metal-marlin
/// weight whose rows are whole 32-element blocks (every grouped format; a
/// per-channel weight with `cols % 32 != 0` uses the f32 path). Trellis
/// weights have their own kernel.
pub fn supports(w: &WeightData) -> bool {
    matches!(w.format, WeightFormat::Mm(f) if !f.kind.is_trellis())
        && w.shape.last().is_some_and(|&c| c > 0 && c % BLOCK == 0)
}

/// Bytes of one repacked 32-block of `bits`-bit codes.
pub fn block_bytes(bits: u32) -> usize {
    bits as usize * 4
}

/// Repacks the 32 raw codes `c` of one block into `out` (see the module
/// docs); `xor` is applied to 8-bit codes.
pub fn repack_block(bits: u32, c: &[u8], xor: u8, out: &mut [u8]) {
    match bits {
        8 => out.iter_mut().zip(c).for_each(|(o, &v)| *o = v ^ xor),
        4 => (0..16).for_each(|j| out[j] = (c[j] & 15) | (c[j + 16] << 4)),
        2 | 3 => {
            for j in 0..8 {
                out[j] =
                    (c[j] & 3) | (c[j + 8] & 3) << 2 | (c[j + 16] & 3) << 4 | (c[j + 24] & 3) << 6;
            }
            if bits == 3 {
                let hi = (0..32).fold(0u32, |a, i| a | (((c[i] >> 2) & 1) as u32) << i);
                out[8..12].copy_from_slice(&hi.to_le_bytes());
            }
        }
        _ => unreachable!("{bits}-bit codes"),
    }
}

/// The 32 raw codes of a repacked block (inverse of [`repack_block`]).
pub fn unpack_block(bits: u32, b: &[u8], xor: u8) -> [u8; 32] {
    let mut c = [0u8; 32];
    match bits {
        8 => c.iter_mut().zip(b).for_each(|(o, &v)| *o = v ^ xor),
        4 => {
            for j in 0..16 {
                c[j] = b[j] & 15;
                c[j + 16] = b[j] >> 4;
            }
        }
        _ => {
            for (i, o) in c.iter_mut().enumerate() {
                *o = (b[i % 8] >> (2 * (i / 8))) & 3;
            }
            if bits == 3 {
                let hi = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
                for (i, o) in c.iter_mut().enumerate() {
                    *o |= (((hi >> i) & 1) << 2) as u8;
                }
            }
        }
    }
    c
}

/// The kernel path of a format kind.
pub fn path(kind: MmKind) -> Path {
    match kind {
        MmKind::Nf4 => Path::Nf4,
        MmKind::Fp8E4M3 => Path::E4M3,
        MmKind::Fp8E5M2 => Path::E5M2,
        _ => Path::Int,
    }
}

/// A metal-marlin weight's parts, checked against its shape.
pub struct MmParts<'a> {
    pub rows: usize,
    pub cols: usize,
    /// The kernels' per-group scale `d_g`, `rows × groups`: the stored f16
    /// scale (or `2^(E−127)` of MXFP4's E8M0 byte) as f32, halved for
    /// fp4/mxfp4, whose values ×2 are integers (exact: scales are f16 or
    /// powers of two ≥ 2^-127).
    pub scales: Vec<f32>,
    /// The stored zero-points of asymmetric formats, `rows × groups`.
    pub zeros: Option<&'a [u8]>,
}

/// Checks the part sizes of `w` (in `format`) and decodes its scales; shared
/// by this module's repack and the row-interleaved one (`il.rs`).
pub fn parts(w: &WeightData, format: MmFormat) -> Result<MmParts<'_>> {
    let (rows, cols) = mm_core::weight::rows_cols(&w.shape)?;
    let sizes = format.part_sizes(rows, cols)?;
    let scales_in = w
        .scales
        .as_deref()
        .ok_or_else(|| Error::Invalid(format!("{format} weight has no scales")))?;
    if w.bytes.len() != sizes.codes || scales_in.len() != sizes.scales {
        return Err(Error::Invalid(format!("{format} weight: bad part sizes")));
    }
    let kind = format.kind;
    let half = matches!(kind, MmKind::Fp4E2M1 | MmKind::Mxfp4);
    let scales = (0..rows * format.groups_per_row(cols))
        .map(|i| {
            let s = match kind {
                MmKind::Mxfp4 => e8m0_to_f32(scales_in[i]),
                _ => half::f16::from_le_bytes([scales_in[2 * i], scales_in[2 * i + 1]]).to_f32(),
            };
            if half {
                s * 0.5
            } else {
                s
            }
        })
        .collect();
    let zeros = if kind.has_zeros() {
        Some(
            w.zeros
                .as_deref()
                .ok_or_else(|| Error::Invalid(format!("{format} weight has no zero-points")))?,
        )
    } else {
        None
    };
    Ok(MmParts {
        rows,
        cols,
        scales,
        zeros,
    })
}

/// Builds the prepared form of a metal-marlin weight (see [`supports`]).
pub fn prepare(w: &WeightData) -> Result<MmPrepared> {
    let WeightFormat::Mm(format) = w.format else {
        return Err(Error::Invalid(format!(
            "{} is not a metal-marlin format",
            w.format.name()
        )));
    };
    if !supports(w) {
        return Err(Error::Invalid(format!(
            "{format} weight {:?}: rows must be whole 32-element blocks",
            w.shape
        )));
    }
    let MmParts {
        rows,
        cols,
        scales,
        zeros,
        ..
    } = parts(w, format)?;
    let kind = format.kind;
    let bits = format.bits();
    let groups = format.groups_per_row(cols);
    let group_blocks = format.group_len(cols) / BLOCK;
    let bb = block_bytes(bits);
    let row_bytes = cols / BLOCK * bb;
    let in_row = format.code_bytes(cols);
    let p = path(kind);
    let xor = if p == Path::Int { 0x80 } else { 0 };
    let mut codes = vec![0u8; rows * row_bytes];
    let mut raw = vec![0u8; cols];
    for r in 0..rows {
        mm_quant::mm::unpack_codes(bits, &w.bytes[r * in_row..(r + 1) * in_row], &mut raw)?;
        for (b, c) in raw.chunks_exact(BLOCK).enumerate() {
            let o = r * row_bytes + b * bb;
            repack_block(bits, c, xor, &mut codes[o..o + bb]);
        }
    }
    let zeros = zeros.map(<[u8]>::to_vec).unwrap_or_default();
    let lut: [i8; 16] = std::array::from_fn(|u| match kind {
        MmKind::Fp4E2M1 | MmKind::Mxfp4 => (2.0 * e2m1_to_f32(u as u8)) as i8,
        _ if bits <= 4 => u as i8 - (1i8 << (bits - 1)),
        _ => 0,
    });
    Ok(MmPrepared {
        format,
        rows,
        cols,
        path: p,
        bits,
        codes,
        row_bytes,
        scales,
        zeros,
        groups,
        group_blocks,
        lut,
    })
}

/// The signed bytes `c_i` of block `b` of a row (integer path).
#[inline]
pub fn block_i8(p: &MmPrepared, row: &[u8], b: usize) -> [i8; 32] {
    let bb = block_bytes(p.bits);
    let blk = &row[b * bb..(b + 1) * bb];
    if p.bits == 8 {
        return std::array::from_fn(|i| blk[i] as i8);
    }
    let c = unpack_block(p.bits, blk, 0);
    std::array::from_fn(|i| p.lut[c[i] as usize])
}

/// The f32 values (before the group scale) of block `b` of a row (float
/// path).
#[inline]
pub fn block_f32(p: &MmPrepared, row: &[u8], b: usize) -> [f32; 32] {
    let bb = block_bytes(p.bits);
    let c = unpack_block(p.bits, &row[b * bb..(b + 1) * bb], 0);
    std::array::from_fn(|i| match p.path {
        Path::Nf4 => NF4_LEVELS[c[i] as usize],
        Path::E4M3 => e4m3_to_f32(c[i]),
        Path::E5M2 => e5m2_to_f32(c[i]),
        Path::Int => unreachable!("integer format on the float path"),
    })
}

/// Scalar twin of the integer kernels: weight row `j` · one Q8_0
/// activation row. Per block the exact integer `Σ c·q + o_g·isum`, scaled by
/// `d_g·d_x` and summed in f32.
pub fn vec_dot_int_ref(p: &MmPrepared, j: usize, x: &ActRow) -> f32 {
    let row = p.row(j);
    let mut sum = 0.0f32;
    for g in 0..p.groups {
        let d = p.scales[j * p.groups + g];
        let off = p.offset(j, g);
        for b in g * p.group_blocks..(g + 1) * p.group_blocks {
            let c = block_i8(p, row, b);
            let xq = &x.qs[b * BLOCK..(b + 1) * BLOCK];
            let mut int = off * x.isum[b];
            for i in 0..BLOCK {
                int += c[i] as i32 * xq[i] as i32;
            }
            sum += (d * x.d[b]) * int as f32;
        }
    }
    sum
}

/// Scalar twin of the float kernels: weight row `j` · one f32 activation
/// row. Per group an f32 partial sum, scaled by `d_g`.
pub fn vec_dot_float_ref(p: &MmPrepared, j: usize, x: &[f32]) -> f32 {
    let row = p.row(j);
    let mut sum = 0.0f32;
    for g in 0..p.groups {
        let mut gs = 0.0f32;
        for b in g * p.group_blocks..(g + 1) * p.group_blocks {
            let v = block_f32(p, row, b);
            for i in 0..BLOCK {
                gs += v[i] * x[b * BLOCK + i];
            }
        }
        sum += p.scales[j * p.groups + g] * gs;
    }
    sum
}

/// Activation rows of one panel: Q8_0 rows (integer path) or f32 rows.
#[derive(Clone, Copy)]
pub enum MmRows<'a> {
    Q8(&'a [ActRow<'a>]),
    F32(&'a [&'a [f32]]),
}

impl MmRows<'_> {
    pub fn len(&self) -> usize {
        match self {
            MmRows::Q8(x) => x.len(),
            MmRows::F32(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `out[r·(j1−j0) + (j−j0)] = w[j] · xs[r]` for weight rows `j0..j1` and
/// 1 to 4 activation rows, with the kernels of `isa`.
///
/// Panics when `isa` is not available or the rows do not match the path.
pub fn panel(isa: Isa, p: &MmPrepared, j0: usize, j1: usize, xs: MmRows, out: &mut [f32]) {
    let rows = j1 - j0;
    assert!(j0 <= j1 && j1 <= p.rows && (1..=4).contains(&xs.len()));
    assert_eq!(out.len(), rows * xs.len(), "panel output size");
    match xs {
        MmRows::Q8(x) => {
            assert_eq!(p.path, Path::Int, "Q8 activations for an integer format");
            for r in x {
                assert!(r.qs.len() == p.cols && r.d.len() == p.cols / BLOCK);
                assert_eq!(r.isum.len(), p.cols / BLOCK);
            }
        }
        MmRows::F32(x) => {
            assert_ne!(p.path, Path::Int, "f32 activations for a float format");
            assert!(x.iter().all(|r| r.len() == p.cols), "activation row length");
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if matches!(xs, MmRows::F32(_)) => {
            assert!(Isa::available().contains(&isa), "AVX-512 is not available");
            let MmRows::F32(x) = xs else { unreachable!() };
            // SAFETY: AVX-512F (part of Avx512Vnni), AVX2 and FMA checked
            // above; lengths checked above.
            unsafe { super::x86_mm::float_panel_avx512(p, j0, j1, x, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            assert!(Isa::available().contains(&isa), "AVX2 is not available");
            // SAFETY: AVX2/FMA checked above; lengths checked above.
            unsafe { super::x86_mm::panel_avx2(p, j0, j1, xs, out) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => super::aarch64_mm::panel(p, j0, j1, xs, out),
        _ => {
            for j in j0..j1 {
                match xs {
                    MmRows::Q8(x) => {
                        for (r, x) in x.iter().enumerate() {
                            out[r * rows + j - j0] = vec_dot_int_ref(p, j, x);
                        }
                    }
                    MmRows::F32(x) => {
                        for (r, x) in x.iter().enumerate() {
                            out[r * rows + j - j0] = vec_dot_float_ref(p, j, x);
                        }
                    }
                }
            }
        }
    }
}

/// `y[n, m] = x[n, k] · wᵀ` for a prepared weight, with the detected ISA.
pub fn matmul_mm(p: &MmPrepared, x: &[f32], n: usize) -> Result<Vec<f32>> {
    matmul_mm_with(Isa::detect(), p, x, n)
}

/// [`matmul_mm`] with a chosen ISA (tests and benchmarks).
pub fn matmul_mm_with(isa: Isa, p: &MmPrepared, x: &[f32], n: usize) -> Result<Vec<f32>> {
    check_isa(isa)?;
    let (k, m) = (p.cols, p.rows);
    if x.len() != n * k {
        return Err(Error::Invalid(format!(
            "{} matmul: {} inputs for [{n}, {k}]",
            p.format,
            x.len()
        )));
    }
    let mut y = mm_core::host_pool::zeroed(n * m);
    if n == 0 || m == 0 {
        return Ok(y);
    }
    let rb = p.row_bytes + 4 * p.groups;
    if p.path == Path::Int {
        with_act_rows(isa, ActKind::Q8_0, false, x, n, k, |xs| {
            compute_tiled(rb, super::GROUP, n, m, &mut y, |j0, j1, i0, out| {
                let nr = out.len() / (j1 - j0);
                panel(isa, p, j0, j1, MmRows::Q8(&xs[i0..i0 + nr]), out)
            })
        });
    } else {
        let xs: Vec<&[f32]> = x.chunks_exact(k).collect();
        compute_tiled(rb, super::GROUP, n, m, &mut y, |j0, j1, i0, out| {
            let nr = out.len() / (j1 - j0);
            panel(isa, p, j0, j1, MmRows::F32(&xs[i0..i0 + nr]), out)
        });
    }
    Ok(y)
}

#[cfg(test)]
pub(crate) mod tests;
