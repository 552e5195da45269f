//! Weights in GPU memory: dense f32/f16/bf16 weights as stored (rows
//! padded to 8 columns), quantized ones in `mm_quant::gpu_layout` (codes
//! widened to 4 or 8 bits, a value table, per-group scale and offset),
//! uploaded once per weight ([`prepare`]) and read by the matmul,
//! embedding and MoE kernels through the load functions of
//! [`template`].
//!
//! A weight whose buffers would pass the adapter's limit per binding
//! ([`Runtime::weight_cap`]: 128 MiB on lavapipe, under 4 GiB on Metal)
//! is split by rows into shards, each its own buffers; the kernels run
//! once per shard, writing its columns of the output.

use std::sync::Arc;

use mm_core::{Error, Result, WeightData, WeightFormat};
use mm_quant::gpu_layout::{self, QLayout};

use crate::runtime::Runtime;

/// How a weight is stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    F32,
    F16,
    BF16,
    /// The GPU layout with `bits`-bit codes and parameter storage `mode`
    /// ([`gpu_layout::Params::mode`]).
    Q {
        bits: u32,
        mode: u32,
    },
}

/// A weight in GPU memory.
pub struct GpuWeight {
    pub rows: usize,
    pub cols: usize,
    /// Row stride in values (padded columns).
    pub kp: usize,
    /// Columns per parameter group (quantized weights; `kp` otherwise).
    pub group: usize,
    pub stored: Stored,
    /// `(lut0, step)` when the value table is affine, `lut[c] = lut0 +
    /// step·c` (quantized integer and GGUF formats).
    pub affine: Option<(f32, f32)>,
    /// The rows, in shards of at most the binding limit each.
    pub shards: Vec<Shard>,
}

/// Rows `row0 .. row0 + rows` of a weight.
pub struct Shard {
    pub row0: usize,
    pub rows: usize,
    /// Values or codes, then parameters and value table (quantized).
    pub bufs: Vec<wgpu::Buffer>,
}

impl GpuWeight {
    /// The slot WEIGHT of a kernel reading this weight.
    pub fn template(&self) -> String {
        template(self.stored)
    }

    /// Bytes in GPU memory.
    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| &s.bufs)
            .map(|b| b.size())
            .sum()
    }

    /// The one shard of a weight that must not be split (an expert's), or
    /// an error naming it.
    pub fn single(&self, what: &str) -> Result<&Shard> {
        match self.shards.as_slice() {
            [s] => Ok(s),
            _ => Err(Error::Invalid(format!(
                "wgpu: {what} of {}x{} is past this adapter's limit per binding",
                self.rows, self.cols
            ))),
        }
    }
}

impl Shard {
    /// The buffers at bindings 8, 9, 10.
    pub fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        self.bufs
            .iter()
            .enumerate()
            .map(|(i, b)| (8 + i as u32, b))
            .collect()
    }
}

/// The WGSL of the load functions of a stored form.
pub fn template(s: Stored) -> String {
    match s {
        Stored::F32 => include_str!("../shaders/w_f32.wgsl").to_string(),
        Stored::F16 => include_str!("../shaders/w_f16.wgsl").to_string(),
        Stored::BF16 => include_str!("../shaders/w_bf16.wgsl").to_string(),
        Stored::Q { bits, mode } => {
            let codes = if bits == 4 {
                include_str!("../shaders/w_q4.wgsl")
            } else {
                include_str!("../shaders/w_q8.wgsl")
            };
            include_str!("../shaders/w_q.wgsl")
                .replace("{{PARAM}}", param(mode))
                .replace("{{CODES}}", codes)
        }
    }
}

/// The body of `wparam(g)`, a group's `(s, o)`, for parameter storage
/// `mode` ([`gpu_layout::Params::mode`]).
pub fn param(mode: u32) -> &'static str {
    match mode {
        0 => "let h = unpack2x16float(wpar[g / 2u]);\n    return vec2<f32>(select(h.x, h.y, (g & 1u) == 1u), 0.0);",
        1 => "return unpack2x16float(wpar[g]);",
        2 => "let h = unpack2x16float(wpar[g]);\n    return vec2<f32>(h.x, -h.x * h.y);",
        3 => "return vec2<f32>(bitcast<f32>(wpar[2u * g]), bitcast<f32>(wpar[2u * g + 1u]));",
        _ => "return vec2<f32>(bitcast<f32>(wpar[g]), 0.0);",
    }
}

/// Every stored form a weight can take.
pub fn all_stored() -> Vec<Stored> {
    let mut v = vec![Stored::F32, Stored::F16, Stored::BF16];
    for bits in [4, 8] {
        for mode in 0..5 {
            v.push(Stored::Q { bits, mode });
        }
    }
    v
}

/// Whether weights of `f` run here.
pub fn supports(f: WeightFormat) -> bool {
    f.is_dense() || gpu_layout::supports(f)
}

/// Rows of `bytes` (`rows × cols` values of `size` bytes) padded to `kp`
/// values with zeros; the bytes themselves when no padding is needed.
fn padded(bytes: &[u8], rows: usize, cols: usize, kp: usize, size: usize) -> Vec<u8> {
    if kp == cols {
        return bytes.to_vec();
    }
    let mut out = vec![0u8; rows * kp * size];
    for (o, i) in out
        .chunks_exact_mut(kp * size)
        .zip(bytes.chunks_exact(cols * size))
    {
        o[..cols * size].copy_from_slice(i);
    }
    out
}

/// `w`'s GPU form, uploaded on first use and kept with the weight.
pub fn prepare(rt: &Arc<Runtime>, w: &WeightData) -> Result<Arc<GpuWeight>> {
    w.prepared(|w| upload(rt, w))
}

fn upload(rt: &Runtime, w: &WeightData) -> Result<GpuWeight> {
    let (rows, cols) = w.dims2()?;
    let what = format!("{} weight {rows}x{cols}", w.format.name());
    // Row-major streams (bytes per row) and the value table every shard
    // gets whole.
    let (kp, group, stored, affine, streams, lut): (_, _, _, _, Vec<(Vec<u8>, usize)>, _) =
        match w.format {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
                let (stored, size) = match w.format {
                    WeightFormat::F32 => (Stored::F32, 4),
                    WeightFormat::F16 => (Stored::F16, 2),
                    _ => (Stored::BF16, 2),
                };
                let kp = cols.div_ceil(8) * 8;
                let data = padded(&w.bytes, rows, cols, kp, size);
                (kp, kp, stored, None, vec![(data, kp * size)], None)
            }
            f if gpu_layout::supports(f) => {
                let l = QLayout::from_weight(w)?;
                let mode = l.params.mode();
                let params = l.params.bytes();
                let (cb, pb) = (l.codes.len() / rows.max(1), params.len() / rows.max(1));
                let stored = Stored::Q { bits: l.bits, mode };
                let lut: Vec<u8> = bytemuck::cast_slice(&l.lut).to_vec();
                let streams = vec![(l.codes, cb), (params, pb)];
                (l.kp, l.group, stored, affine(&l.lut), streams, Some(lut))
            }
            f => {
                return Err(Error::Invalid(format!(
                    "wgpu: {} weights are not supported",
                    f.name()
                )))
            }
        };
    // Shards of a multiple of 4 rows (every stream's slice then starts on
    // a word), as many as fit the binding limit.
    let widest = streams.iter().map(|s| s.1).max().unwrap_or(1).max(1) as u64;
    let fit = (rt.weight_cap() / widest) as usize / 4 * 4;
    if fit == 0 {
        return Err(Error::Invalid(format!(
            "wgpu: {what}: 4 rows of {widest} bytes pass this adapter's limit of {} \
             bytes per binding",
            rt.weight_cap()
        )));
    }
    let mut shards = Vec::new();
    for row0 in (0..rows.max(1)).step_by(fit) {
        let n = fit.min(rows - row0);
        let mut bufs = Vec::new();
        for (data, per) in &streams {
            bufs.push(rt.upload(&data[row0 * per..(row0 + n) * per], &what)?);
        }
        if let Some(lut) = &lut {
            bufs.push(rt.upload(lut, &what)?);
        }
        shards.push(Shard {
            row0,
            rows: n,
            bufs,
        });
    }
    Ok(GpuWeight {
        rows,
        cols,
        kp,
        group,
        stored,
        affine,
        shards,
    })
}

/// `(lut0, step)` of a table whose every entry is `lut0 + step·c` exactly.
fn affine(lut: &[f32]) -> Option<(f32, f32)> {
    let (l0, step) = (*lut.first()?, lut.get(1)? - lut[0]);
    lut.iter()
        .enumerate()
        .all(|(c, &v)| v == l0 + step * c as f32)
        .then_some((l0, step))
}
