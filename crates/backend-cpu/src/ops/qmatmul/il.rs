//! Row-interleaved repack of the 4- and 8-bit integer formats for the
//! x86 SIMD kernels (`x86_il.rs`), built once at load: GGML Q4_0, Q4_1
//! and Q8_0, and metal-marlin int4/int8 (sym and asym), fp4 and mxfp4.
//!
//! Kernels (`x86_il.rs`): 512-bit VNNI and AVX2; other CPUs keep the plain
//! kernels.
//!
//! The plain kernels (`x86.rs`, `x86_mm.rs`) compute one output per weight
//! row as a dot product along `k` and reduce it horizontally at the end.
//! Here the 16 i32 lanes of a register are 16 *weight rows*: one
//! `vpdpbusd` multiplies 4 bytes of each of 16 rows with the same 4
//! activation bytes (an embedded broadcast), so a 32-block of 16 rows is 8
//! instructions per activation row, the scales of 16 rows are one vector,
//! and nothing is reduced horizontally. It is the layout of llama.cpp's
//! repacked `q4_0_8x8` kernels, widened to the 16 lanes of AVX-512.
//!
//! **Values.** Every weight is an unsigned code `u` (a nibble or a byte)
//! with `value = d·(L(u) − z) + m`, `L` the identity or (fp4, mxfp4) a
//! 16-entry table, per scale group (`gb` 32-blocks) a scale `d`, a zero `z`
//! and a min `m`:
//!
//! | format | `L(u)` | `z` | `d` | `m` | scale storage |
//! | --- | --- | --- | --- | --- | --- |
//! | Q4_0 | `u` | 8 | block f16 | 0 | f16 |
//! | Q4_1 | `u` | 0 | block f16 | block f16 | f16 |
//! | Q8_0 | `q ^ 0x80` | 128 | block f16 | 0 | f16 |
//! | int4 / int8 | `u` | 8 / 128 | group scale | 0 | f32 |
//! | int4-asym / int8-asym | `u` | group zero-point | group scale | 0 | f32 |
//! | fp4 / mxfp4 | `2·e2m1(u) + 12` | 12 | scale / 2 | 0 | f32 |
//!
//! **Layout.** Weight rows are taken in groups of 16 (the last group is
//! zero-padded). For row group `g`, 32-block `b` and scale group `s`, with
//! `u_j[i]` code `i` of the block in row `j`:
//!
//! * `codes[(g·nb + b)·CB ..]`, `CB` = 256 (4-bit) or 512 (8-bit) bytes of
//!   64-byte vectors. 4-bit: vector `p` (0..4), byte `4j + t` holds
//!   `u_j[4p + t]` in its low nibble and `u_j[16 + 4p + t]` in its high
//!   nibble. 8-bit: vector `c` (0..8), byte `4j + t` = `u_j[4c + t]`.
//! * scales at `(g·ns + s)·S`: the 16 `d_j` (f16 or f32), then (Q4_1) the
//!   16 f16 `m_j`.
//! * zero-points (asym formats) at `(g·ns + s)·16`: the 16 `z_j` bytes.
//!
//! GGML formats keep their stored bytes exactly; metal-marlin formats carry
//! f32 scales (at most 1 bit per weight more, at group 32).
//!
//! **Dot product** with a Q8_0 activation block (`d_x`, `q`, `isum`, `s =
//! d_x·isum`, see `q8.rs`): `acc += f32(Σ L(u)·q − z·isum) · (d·d_x)` as
//! one fused multiply-add, then for Q4_1 `acc += m·s`. The integer part is
//! exact; the scalar twin [`panel_ref`] performs the same f32 operations in
//! the same order, so the SIMD kernel matches it bit for bit.

use mm_core::weight::{MmFormat, MmKind};
use mm_core::{Error, Result, WeightData, WeightFormat};
use mm_quant::mm::codec::e2m1_to_f32;

use super::mm::MmParts;

use super::q8::{ActKind, ActRow};
use super::{check_isa, compute_tiled, with_act_rows, Isa};

/// Weight rows per interleaved group (= i32 lanes of a 512-bit register).
pub const LANES: usize = 16;

/// Activation rows per kernel call in prefill: each decoded weight block
/// feeds 4 rows (8 measured 1.3–1.7× slower on SmolLM2's shapes: the
/// accumulators, code vectors and broadcasts no longer fit the registers).
pub const GROUP: usize = 4;

/// Per-group scales of 16 rows.
pub enum IlScales {
    /// GGML: f16 `d` (and `m`) per block.
    F16(Vec<u16>),
    /// metal-marlin: f32 `d` per scale group.
    F32(Vec<f32>),
}

/// A weight repacked row-interleaved (see the module docs).
pub struct IlPrepared {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    /// 32-blocks per row.
    pub nb: usize,
    /// 32-blocks per scale group.
    pub gb: usize,
    /// Scale groups per row (`nb / gb`).
    pub ns: usize,
    /// Groups of 16 rows (the last one padded).
    pub groups: usize,
    /// Code bits, 4 or 8.
    pub bits: u32,
    /// The zero `z` of formats without zero-points.
    pub off: i32,
    /// Whether scale groups carry a min `m` (Q4_1).
    pub min: bool,
    /// Nibble → unsigned code (fp4, mxfp4).
    pub lut: Option<[u8; 16]>,
    codes: Vec<u8>,
    codes_at: usize,
    pub scales: IlScales,
    /// Per (row group, scale group) the 16 zero-points (asym formats).
    pub zeros: Vec<u8>,
}

impl IlPrepared {
    /// Bytes of one (group, block) of codes.
    pub fn code_bytes(&self) -> usize {
        LANES * 32 * self.bits as usize / 8
    }

    /// Scale values of one (row group, scale group).
    pub fn scale_len(&self) -> usize {
        if self.min {
            2 * LANES
        } else {
            LANES
        }
    }

    /// The codes of row group `g`, 64-byte aligned.
    #[inline(always)]
    pub fn group_codes(&self, g: usize) -> &[u8] {
        let n = self.nb * self.code_bytes();
        &self.codes[self.codes_at + g * n..self.codes_at + (g + 1) * n]
    }

    /// Bytes held by the prepared form.
    pub fn bytes(&self) -> usize {
        let scales = match &self.scales {
            IlScales::F16(v) => 2 * v.len(),
            IlScales::F32(v) => 4 * v.len(),
        };
        self.codes.len() + scales + self.zeros.len()
    }

    /// Bytes streamed per weight row (sizes the matmul tiles).
    pub fn row_bytes(&self) -> usize {
        let scale = match self.scales {
            IlScales::F16(_) => 2,
            IlScales::F32(_) => 4,
        };
        let zeros = if self.zeros.is_empty() { 0 } else { LANES };
        (self.nb * self.code_bytes() + self.ns * (self.scale_len() * scale + zeros)) / LANES
    }
}

/// Whether `w` has an interleaved form: Q4_0, Q4_1, Q8_0, and metal-marlin
/// int4/int8 (sym and asym), fp4 and mxfp4 with rows of whole 32-blocks.
pub fn supports(w: &WeightData) -> bool {
    let fmt_ok = match w.format {
        WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0 => true,
        WeightFormat::Mm(f) => matches!(
            f.kind,
            MmKind::IntSym(4 | 8) | MmKind::IntAsym(4 | 8) | MmKind::Fp4E2M1 | MmKind::Mxfp4
        ),
        _ => false,
    };
    fmt_ok && w.shape.last().is_some_and(|&c| c > 0 && c % 32 == 0)
}

/// Whether matmuls of `w` take the interleaved path with `isa`: x86 with
/// AVX2 or 512-bit VNNI (elsewhere the plain kernels run).
pub fn active(isa: Isa, w: &WeightData) -> bool {
    matches!(isa, Isa::Avx512Vnni | Isa::Avx2) && supports(w)
}

fn f16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

/// Writes the 32 unsigned codes `u` of one block of row `lane` into that
/// block's group codes `dst`.
fn put_block(bits: u32, u: &[u8; 32], lane: usize, dst: &mut [u8]) {
    if bits == 8 {
        for c in 0..8 {
            dst[64 * c + 4 * lane..64 * c + 4 * lane + 4].copy_from_slice(&u[4 * c..4 * c + 4]);
        }
    } else {
        for pv in 0..4 {
            for t in 0..4 {
                dst[64 * pv + 4 * lane + t] = u[4 * pv + t] | u[16 + 4 * pv + t] << 4;
            }
        }
    }
}

/// An empty prepared form of the given geometry (codes zeroed).
#[allow(clippy::too_many_arguments)]
fn alloc(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    gb: usize,
    bits: u32,
    off: i32,
    min: bool,
    lut: Option<[u8; 16]>,
    f16_scales: bool,
    zeros: bool,
) -> IlPrepared {
    let nb = cols / 32;
    let groups = rows.div_ceil(LANES);
    let ns = nb / gb;
    let mut p = IlPrepared {
        format,
        rows,
        cols,
        nb,
        gb,
        ns,
        groups,
        bits,
        off,
        min,
        lut,
        codes: Vec::new(),
        codes_at: 0,
        scales: IlScales::F32(Vec::new()),
        zeros: Vec::new(),
    };
    p.codes = vec![0u8; groups * nb * p.code_bytes() + 64];
    p.codes_at = p.codes.as_ptr().align_offset(64).min(63);
    let sl = groups * ns * p.scale_len();
    p.scales = if f16_scales {
        IlScales::F16(vec![0; sl])
    } else {
        IlScales::F32(vec![0.0; sl])
    };
    if zeros {
        p.zeros = vec![0; groups * ns * LANES];
    }
    p
}

/// Repacks a weight `w` for which [`supports`] holds.
pub fn prepare(w: &WeightData) -> Result<IlPrepared> {
    if !supports(w) {
        return Err(Error::Invalid(format!(
            "{} weight {:?} has no row-interleaved form",
            w.format.name(),
            w.shape
        )));
    }
    match w.format {
        WeightFormat::Mm(f) => prepare_mm(w, f),
        _ => prepare_ggml(w),
    }
}

fn prepare_ggml(w: &WeightData) -> Result<IlPrepared> {
    let format = w.format;
    let (rows, cols) = mm_core::weight::rows_cols(&w.shape)?;
    let (qk, bb) = format.block();
    if cols % qk != 0 || w.bytes.len() != rows * cols / qk * bb {
        return Err(Error::Invalid(format!(
            "{} weight {:?}: {} bytes do not hold whole 32-blocks",
            format.name(),
            w.shape,
            w.bytes.len()
        )));
    }
    let (bits, off, min) = match format {
        WeightFormat::Q4_0 => (4, 8, false),
        WeightFormat::Q4_1 => (4, 0, true),
        _ => (8, 128, false),
    };
    let mut p = alloc(format, rows, cols, 1, bits, off, min, None, true, false);
    let (nb, cb, sl) = (p.nb, p.code_bytes(), p.scale_len());
    let IlScales::F16(scales) = &mut p.scales else {
        unreachable!()
    };
    let row_bytes = nb * bb;
    let mut u = [0u8; 32];
    for j in 0..rows {
        let (g, lane) = (j / LANES, j % LANES);
        for b in 0..nb {
            let blk = &w.bytes[j * row_bytes + b * bb..j * row_bytes + (b + 1) * bb];
            let si = (g * nb + b) * sl;
            scales[si + lane] = f16_at(blk, 0);
            if format == WeightFormat::Q8_0 {
                for (o, &q) in u.iter_mut().zip(&blk[2..34]) {
                    *o = q ^ 0x80;
                }
            } else {
                let qs = if min {
                    scales[si + LANES + lane] = f16_at(blk, 2);
                    &blk[4..20]
                } else {
                    &blk[2..18]
                };
                for i in 0..16 {
                    u[i] = qs[i] & 15;
                    u[i + 16] = qs[i] >> 4;
                }
            }
            let base = p.codes_at + (g * nb + b) * cb;
            put_block(bits, &u, lane, &mut p.codes[base..base + cb]);
        }
    }
    Ok(p)
}

fn prepare_mm(w: &WeightData, format: MmFormat) -> Result<IlPrepared> {
    let MmParts {
        rows,
        cols,
        scales: scales_in,
        zeros: zeros_in,
    } = super::mm::parts(w, format)?;
    let bits = format.bits();
    let fp4 = matches!(format.kind, MmKind::Fp4E2M1 | MmKind::Mxfp4);
    let lut = fp4.then(|| std::array::from_fn(|u| (2.0 * e2m1_to_f32(u as u8) + 12.0) as u8));
    let off = if fp4 { 12 } else { 1 << (bits - 1) };
    let gb = format.group_len(cols) / 32;
    let mut p = alloc(
        WeightFormat::Mm(format),
        rows,
        cols,
        gb,
        bits,
        off,
        false,
        lut,
        false,
        zeros_in.is_some(),
    );
    let (nb, ns, cb) = (p.nb, p.ns, p.code_bytes());
    let IlScales::F32(scales) = &mut p.scales else {
        unreachable!()
    };
    let in_row = format.code_bytes(cols);
    let mut raw = vec![0u8; cols];
    for j in 0..rows {
        let (g, lane) = (j / LANES, j % LANES);
        mm_quant::mm::unpack_codes(bits, &w.bytes[j * in_row..(j + 1) * in_row], &mut raw)?;
        for s in 0..ns {
            let i = j * ns + s;
            scales[(g * ns + s) * LANES + lane] = scales_in[i];
            if let Some(z) = zeros_in {
                p.zeros[(g * ns + s) * LANES + lane] = z[i];
            }
        }
        for (b, c) in raw.chunks_exact(32).enumerate() {
            // The kernels look fp4 nibbles up in `lut`; codes stay nibbles.
            let u: [u8; 32] = c.try_into().expect("32 codes");
            let base = p.codes_at + (g * nb + b) * cb;
            put_block(bits, &u, lane, &mut p.codes[base..base + cb]);
        }
    }
    Ok(p)
}

/// The code `L(u)` `i` of block `b`, row `lane`, in group codes `gc`.
#[inline(always)]
fn code(p: &IlPrepared, gc: &[u8], b: usize, lane: usize, i: usize) -> i32 {
    let blk = &gc[b * p.code_bytes()..];
    let u = if p.bits == 8 {
        blk[64 * (i / 4) + 4 * lane + i % 4]
    } else {
        let (hi, i) = (i / 16, i % 16);
        (blk[64 * (i / 4) + 4 * lane + i % 4] >> (4 * hi)) & 15
    };
    match p.lut {
        Some(l) => l[u as usize] as i32,
        None => u as i32,
    }
}

/// Scale `d`, min `m` and zero `z` of lane `lane`, row group `g`, scale
/// group `s`.
#[inline(always)]
pub fn group_params(p: &IlPrepared, g: usize, s: usize, lane: usize) -> (f32, f32, i32) {
    let at = (g * p.ns + s) * p.scale_len();
    let (d, m) = match &p.scales {
        IlScales::F16(v) => (
            half::f16::from_bits(v[at + lane]).to_f32(),
            if p.min {
                half::f16::from_bits(v[at + LANES + lane]).to_f32()
            } else {
                0.0
            },
        ),
        IlScales::F32(v) => (v[at + lane], 0.0),
    };
    let z = if p.zeros.is_empty() {
        p.off
    } else {
        p.zeros[(g * p.ns + s) * LANES + lane] as i32
    };
    (d, m, z)
}

/// Scalar twin of the SIMD panels: `out[r·(j1−j0) + j − j0] = w[j] · xs[r]`
/// for weight rows `j0..j1` (`j0` a multiple of 16) and the activation rows
/// `xs`, bit-identical to `x86_il::panel` (VNNI) and `x86_il::panel_avx2`.
pub fn panel_ref(p: &IlPrepared, j0: usize, j1: usize, xs: &[ActRow], out: &mut [f32]) {
    assert!(j0 % LANES == 0 && j0 < j1 && j1 <= p.rows, "row range");
    let ld = j1 - j0;
    assert_eq!(out.len(), ld * xs.len(), "panel output size");
    for g in j0 / LANES..j1.div_ceil(LANES) {
        let gc = p.group_codes(g);
        for (r, x) in xs.iter().enumerate() {
            let mut acc = [0.0f32; LANES];
            for (lane, a) in acc.iter_mut().enumerate() {
                for s in 0..p.ns {
                    let (d, m, z) = group_params(p, g, s, lane);
                    for b in s * p.gb..(s + 1) * p.gb {
                        let q = &x.qs[32 * b..32 * b + 32];
                        let mut dot = -z * x.isum[b];
                        for (i, &qi) in q.iter().enumerate() {
                            dot += code(p, gc, b, lane, i) * qi as i32;
                        }
                        *a = (dot as f32).mul_add(d * x.d[b], *a);
                        if p.min {
                            *a = m.mul_add(x.s[b], *a);
                        }
                    }
                }
            }
            for (lane, a) in acc.iter().enumerate() {
                let j = g * LANES + lane;
                if (j0..j1).contains(&j) {
                    out[r * ld + j - j0] = *a;
                }
            }
        }
    }
}

/// Computes the panel with `isa` (the VNNI kernel, or the scalar twin).
pub fn panel(isa: Isa, p: &IlPrepared, j0: usize, j1: usize, xs: &[ActRow], out: &mut [f32]) {
    assert!(j0 % LANES == 0 && j0 < j1 && j1 <= p.rows, "row range");
    assert_eq!(out.len(), (j1 - j0) * xs.len(), "panel output size");
    assert!(
        (1..=GROUP).contains(&xs.len()),
        "1 to {GROUP} activation rows"
    );
    for x in xs {
        assert!(
            x.qs.len() == p.cols && x.d.len() == p.nb && x.isum.len() == p.nb && x.s.len() == p.nb,
            "activation row length"
        );
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            assert!(
                Isa::available().contains(&isa),
                "AVX-512 VNNI is not available"
            );
            // SAFETY: features checked above; shapes checked above.
            unsafe { super::x86_il::panel(p, j0, j1, xs, out.as_mut_ptr()) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::available().contains(&isa), "AVX2 is not available");
            // SAFETY: features checked above; shapes checked above.
            unsafe { super::x86_il::panel_avx2(p, j0, j1, xs, out.as_mut_ptr()) }
        }
        _ => panel_ref(p, j0, j1, xs, out),
    }
}

/// `y[n, m] = x[n, k] · wᵀ` over the interleaved form (Q8_0 activations).
pub fn matmul_il(p: &IlPrepared, x: &[f32], n: usize) -> Result<Vec<f32>> {
    matmul_il_with(Isa::detect(), p, x, n)
}

/// The zeroed output `y[n, m]` of a matmul of `n` rows `x` over `p` with
/// `isa`, after checking both, and whether there is anything to compute
/// (false in `.1`: no rows or no outputs).
pub(super) fn output(isa: Isa, p: &IlPrepared, x: &[f32], n: usize) -> Result<(Vec<f32>, bool)> {
    check_isa(isa)?;
    let (k, m) = (p.cols, p.rows);
    if x.len() != n * k {
        return Err(Error::Invalid(format!(
            "{} matmul: {} inputs for [{n}, {k}]",
            p.format.name(),
            x.len()
        )));
    }
    Ok((mm_core::host_pool::zeroed(n * m), n > 0 && m > 0))
}

/// [`matmul_il`] with a chosen ISA (tests and benchmarks).
pub fn matmul_il_with(isa: Isa, p: &IlPrepared, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let (mut y, work) = output(isa, p, x, n)?;
    if !work {
        return Ok(y);
    }
    let (k, m) = (p.cols, p.rows);
    with_act_rows(isa, ActKind::Q8_0, false, x, n, k, |xs| {
        compute_tiled(p.row_bytes(), GROUP, n, m, &mut y, |j0, j1, i0, out| {
            let nr = out.len() / (j1 - j0);
            panel(isa, p, j0, j1, &xs[i0..i0 + nr], out)
        })
    });
    Ok(y)
}

#[cfg(test)]
mod tests;
