//! Activation quantization: each f32 activation row is quantized once per
//! matmul, to 8-bit blocks the integer dot products consume.
//!
//! * [`ActKind::Q8_0`] (for Q4_0 … Q8_0 weights): 32 × i8 per block, an f32
//!   scale `d = amax/127`, the block's integer sum `isum` and `s = d·isum`
//!   (used by the formats with a min, Q4_1/Q5_1, and for the offsets of the
//!   unsigned-weight kernels).
//! * [`ActKind::Q8K`] (for K-quants): 256 × i8 per super-block, an f32
//!   scale, and the 16 integer sums of each 16 values (`bsums`).
//!
//! For the 512-bit VNNI kernels a Q8_0 quantization can also be *wide*:
//! the values again as unsigned bytes `q + 128` (`qu`, for `vpdpbusd` with
//! signed weights) and each block scale repeated 8 times (`dx8`, one f32
//! per i32 lane of the block's dot product).
//!
//! `q = round_half_even(x · (127/amax))`, the same in every ISA (the SIMD
//! quantizer in `x86.rs` is bit-identical to [`quantize_row`]), so every
//! kernel sees the same integers.

/// Which 8-bit block layout the activations take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// 32-element blocks.
    Q8_0,
    /// 256-element super-blocks with 16-element sums.
    Q8K,
}

impl ActKind {
    pub fn block(self) -> usize {
        match self {
            ActKind::Q8_0 => 32,
            ActKind::Q8K => 256,
        }
    }
}

/// One quantized activation row, borrowed from a [`QAct`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    /// Q8_0: integer sum of each block.
    pub isum: &'a [i32],
    /// Q8_0: `d · isum` of each block.
    pub s: &'a [f32],
    /// Q8_K: integer sum of each 16 values.
    pub bsums: &'a [i16],
    /// Wide Q8_0: `q + 128` as unsigned bytes (empty otherwise).
    pub qu: &'a [u8],
    /// Wide Q8_0: each block's `d` repeated 8 times (empty otherwise).
    pub dx8: &'a [f32],
}

/// Quantized activations of `n` rows of `k` values. Buffers are reused
/// between calls (see `mod.rs`'s thread-local scratch).
#[derive(Default)]
pub struct QAct {
    kind: Option<ActKind>,
    n: usize,
    k: usize,
    qs: Vec<i8>,
    /// Offset into `qs` where 64-byte-aligned storage begins.
    qs_off: usize,
    d: Vec<f32>,
    isum: Vec<i32>,
    s: Vec<f32>,
    bsums: Vec<i16>,
    wide: bool,
    qu: Vec<u8>,
    qu_off: usize,
    dx8: Vec<f32>,
}

impl QAct {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    /// Row `i` of the last quantized matrix.
    pub fn row(&self, i: usize) -> ActRow<'_> {
        let k = self.k;
        let nb = k / self.kind.map_or(32, ActKind::block);
        let q = &self.qs[self.qs_off..self.qs_off + self.n * k];
        match self.kind {
            Some(ActKind::Q8K) => ActRow {
                qs: &q[i * k..(i + 1) * k],
                d: &self.d[i * nb..(i + 1) * nb],
                isum: &[],
                s: &[],
                bsums: &self.bsums[i * k / 16..(i + 1) * k / 16],
                qu: &[],
                dx8: &[],
            },
            _ => ActRow {
                qs: &q[i * k..(i + 1) * k],
                d: &self.d[i * nb..(i + 1) * nb],
                isum: &self.isum[i * nb..(i + 1) * nb],
                s: &self.s[i * nb..(i + 1) * nb],
                bsums: &[],
                qu: if self.wide {
                    &self.qu[self.qu_off + i * k..self.qu_off + (i + 1) * k]
                } else {
                    &[]
                },
                dx8: if self.wide {
                    &self.dx8[i * nb * 8..(i + 1) * nb * 8]
                } else {
                    &[]
                },
            },
        }
    }

    /// Quantizes `x[n, k]` (`k` a multiple of the block) with `quant_row`
    /// (the scalar [`quantize_row`] or a bit-identical SIMD version), rows
    /// in parallel when there are many. `wide` adds the wide Q8_0 form
    /// (ignored for Q8_K).
    pub fn quantize(
        &mut self,
        kind: ActKind,
        x: &[f32],
        n: usize,
        k: usize,
        quant_row: fn(ActKind, &[f32], RowOut),
        wide: bool,
    ) {
        let qk = kind.block();
        assert!(k % qk == 0 && x.len() == n * k, "bad activation shape");
        let nb = k / qk;
        self.kind = Some(kind);
        self.n = n;
        self.k = k;
        // 64-byte-aligned i8 storage inside a plain Vec.
        let need = n * k + 64;
        if self.qs.len() < need {
            self.qs = vec![0; need];
        }
        self.qs_off = self.qs.as_ptr().align_offset(64).min(63);
        let grow_f = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0)
            }
        };
        grow_f(&mut self.d, n * nb);
        match kind {
            ActKind::Q8_0 => {
                grow_f(&mut self.s, n * nb);
                if self.isum.len() < n * nb {
                    self.isum.resize(n * nb, 0);
                }
            }
            ActKind::Q8K => {
                if self.bsums.len() < n * k / 16 {
                    self.bsums.resize(n * k / 16, 0);
                }
            }
        }
        let qs = &mut self.qs[self.qs_off..self.qs_off + n * k];
        let d = &mut self.d[..n * nb];
        let (isum, s, bsums): (&mut [i32], &mut [f32], &mut [i16]) = match kind {
            ActKind::Q8_0 => (&mut self.isum[..n * nb], &mut self.s[..n * nb], &mut []),
            ActKind::Q8K => (&mut [], &mut [], &mut self.bsums[..n * k / 16]),
        };
        let job = |i: usize,
                   qs: &mut [i8],
                   d: &mut [f32],
                   isum: &mut [i32],
                   s: &mut [f32],
                   bs: &mut [i16]| {
            quant_row(
                kind,
                &x[i * k..(i + 1) * k],
                RowOut {
                    qs,
                    d,
                    isum,
                    s,
                    bsums: bs,
                },
            )
        };
        let (ib, bb) = match kind {
            ActKind::Q8_0 => (nb, 0),
            ActKind::Q8K => (0, k / 16),
        };
        // Parallel only when the work is worth a fork (a few µs).
        let chunk = if n * k >= 1 << 16 { 1 } else { n };
        let mut rows: Vec<_> = qs
            .chunks_mut(k)
            .zip(d.chunks_mut(nb))
            .zip(chunk_or_empty(isum, ib, n))
            .zip(chunk_or_empty(s, ib, n))
            .zip(chunk_or_empty(bsums, bb, n))
            .collect();
        crate::pool::for_each_chunk_mut(&mut rows, chunk, |c, piece| {
            for (r, ((((q, d), is), s), bs)) in piece.iter_mut().enumerate() {
                job(c * chunk + r, q, d, is, s, bs);
            }
        });
        self.wide = wide && kind == ActKind::Q8_0;
        if self.wide {
            if self.qu.len() < need {
                self.qu = vec![0; need];
            }
            self.qu_off = self.qu.as_ptr().align_offset(64).min(63);
            let qs = &self.qs[self.qs_off..self.qs_off + n * k];
            for (u, &q) in self.qu[self.qu_off..self.qu_off + n * k].iter_mut().zip(qs) {
                *u = (q as u8) ^ 0x80;
            }
            if self.dx8.len() < n * nb * 8 {
                self.dx8.resize(n * nb * 8, 0.0);
            }
            for (e, &d) in self.dx8.chunks_exact_mut(8).zip(&self.d[..n * nb]) {
                e.fill(d);
            }
        }
    }
}

/// `n` chunks of `len` (or `n` empty slices when `len` is 0).
fn chunk_or_empty<T>(v: &mut [T], len: usize, n: usize) -> Vec<&mut [T]> {
    if len == 0 {
        (0..n).map(|_| <&mut [T]>::default()).collect()
    } else {
        v.chunks_mut(len).collect()
    }
}

/// Output slots of one row's quantization.
pub struct RowOut<'a> {
    pub qs: &'a mut [i8],
    pub d: &'a mut [f32],
    pub isum: &'a mut [i32],
    pub s: &'a mut [f32],
    pub bsums: &'a mut [i16],
}

/// Scale and inverse scale of a block with absolute maximum `amax`.
#[inline(always)]
pub fn scales(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    (d, id)
}

/// What [`quantize_row`] loses of `x` in blocks of `block` values: `x − d·q`
/// with the same `d` and `q` (the second pass of
/// `ActPrecision::Int8Residual`).
pub fn residual_row(block: usize, x: &[f32], out: &mut [f32]) {
    for (xb, rb) in x.chunks_exact(block).zip(out.chunks_exact_mut(block)) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let (d, id) = scales(amax);
        for (r, v) in rb.iter_mut().zip(xb) {
            *r = v - d * round_half_even_small(v * id);
        }
    }
}

/// `v.round_ties_even()` for |v| ≤ 2²²: adding and removing 1.5·2²³ leaves
/// the nearest integer, ties to even, under the default rounding mode. Plain
/// arithmetic, so loops over it vectorize (`round_ties_even` is a library
/// call without SSE4.1).
#[inline(always)]
pub fn round_half_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (v + MAGIC) - MAGIC
}

/// Scalar activation quantization of one row (the reference).
pub fn quantize_row(kind: ActKind, x: &[f32], out: RowOut) {
    let qk = kind.block();
    for (b, (xb, qb)) in x
        .chunks_exact(qk)
        .zip(out.qs.chunks_exact_mut(qk))
        .enumerate()
    {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let (d, id) = scales(amax);
        out.d[b] = d;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
        match kind {
            ActKind::Q8_0 => {
                let isum: i32 = qb.iter().map(|&q| q as i32).sum();
                out.isum[b] = isum;
                out.s[b] = d * isum as f32;
            }
            ActKind::Q8K => {
                for (j, g) in qb.chunks_exact(16).enumerate() {
                    out.bsums[b * 16 + j] = g.iter().map(|&q| q as i16).sum();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_is_round_ties_even() {
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0, 0.0, -0.0,
        ] {
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
        // Every multiple of 2^-8 in [-128, 128], and neighbours of the ties.
        for i in -(128 << 8)..=(128 << 8) {
            let v = i as f32 / 256.0;
            for w in [v, v.next_up(), v.next_down()] {
                assert_eq!(round_half_even_small(w), w.round_ties_even(), "{w}");
            }
        }
    }

    /// `x − residual` is exactly `d·q` of the reference quantizer, per block.
    #[test]
    fn residual_is_what_quantization_loses() {
        let k = 256;
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        for kind in [ActKind::Q8_0, ActKind::Q8K] {
            let nb = k / kind.block();
            let (mut qs, mut d) = (vec![0i8; k], vec![0f32; nb]);
            let (mut isum, mut s, mut bsums) = (vec![0i32; nb], vec![0f32; nb], vec![0i16; k / 16]);
            quantize_row(
                kind,
                &x,
                RowOut {
                    qs: &mut qs,
                    d: &mut d,
                    isum: &mut isum,
                    s: &mut s,
                    bsums: &mut bsums,
                },
            );
            let mut r = vec![0f32; k];
            residual_row(kind.block(), &x, &mut r);
            for i in 0..k {
                let dq = d[i / kind.block()] * qs[i] as f32;
                assert_eq!(r[i], x[i] - dq, "{kind:?} element {i}");
                assert!(r[i].abs() <= d[i / kind.block()] * 0.5 * (1.0 + 1e-6));
            }
        }
    }
}
