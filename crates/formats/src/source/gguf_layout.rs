//! Byte-level layout changes between llama.cpp's GGUF tensors and the HF
//! tensors model code reads: undoing the q/k row permutation of `llama`
//! files, taking one expert (or half of one, for fused gate/up) out of a
//! merged `[experts, rows, cols]` tensor, and rebuilding MLA's `kv_b_proj`
//! from the split `attn_k_b` / `attn_v_b`.
//!
//! Rows of every GGML format are whole blocks, so moving or slicing rows
//! never touches the encoding: a quantized expert stays in its format, and
//! an expert of a memory-mapped file is a window into the same map.

use mm_core::{Error, HostBytes, Result, WeightData, WeightFormat};

/// Undoes llama.cpp's q/k permutation: within each head of `rows / n_head`
/// rows (width D), GGUF row `h*D + 2*i + j` holds HF row `h*D + j*D/2 + i`.
/// Moves whole rows of bytes, so it works for block-quantized rows too.
pub fn unpermute_rows(w: &WeightData, n_head: usize) -> Result<WeightData> {
    let rows = *w
        .shape
        .first()
        .ok_or_else(|| Error::Invalid("cannot unpermute a 0-dimensional tensor".into()))?;
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(Error::Invalid(format!(
            "cannot unpermute {} rows over {n_head} heads: the head width must be even",
            rows
        )));
    }
    let total = w.bytes.len();
    if rows == 0 {
        return Ok(w.clone());
    }
    if !total.is_multiple_of(rows) {
        return Err(Error::Invalid(format!(
            "{} tensor of shape {:?} does not split into {rows} rows of whole bytes",
            w.format.name(),
            w.shape
        )));
    }
    let rb = total / rows;
    let d = rows / n_head;
    let half = d / 2;
    let src: &[u8] = &w.bytes;
    let mut out = vec![0u8; total];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let s = h * d + 2 * i + j;
                let t = h * d + j * half + i;
                out[t * rb..(t + 1) * rb].copy_from_slice(&src[s * rb..(s + 1) * rb]);
            }
        }
    }
    WeightData::new(w.format, w.shape.clone(), HostBytes::owned(out))
}

/// Bytes per row of `w`, whose rows are its last dimension.
fn row_bytes(w: &WeightData) -> Result<(usize, usize)> {
    let cols = *w
        .shape
        .last()
        .ok_or_else(|| Error::Invalid("a 0-dimensional tensor has no rows".into()))?;
    let rows = w.numel().checked_div(cols).unwrap_or(0);
    if rows == 0 || !w.bytes.len().is_multiple_of(rows) {
        return Err(Error::Invalid(format!(
            "{} tensor of shape {:?} does not split into rows of whole bytes",
            w.format.name(),
            w.shape
        )));
    }
    Ok((rows, w.bytes.len() / rows))
}

/// Rows `first..first + n` of `w` as a `[n, cols]` weight in the same
/// format: a window of the same memory map, or a copy of owned bytes.
pub(super) fn rows(w: &WeightData, first: usize, n: usize) -> Result<WeightData> {
    let (total, rb) = row_bytes(w)?;
    if first + n > total {
        return Err(Error::Invalid(format!(
            "rows {first}..{} of a tensor of {total} rows",
            first + n
        )));
    }
    let (start, len) = (first * rb, n * rb);
    let bytes = match &w.bytes {
        HostBytes::Mapped { map, offset, .. } => {
            HostBytes::mapped(map.clone(), offset + start, len)
        }
        HostBytes::Owned(v) => HostBytes::owned(v[start..start + len].to_vec()),
    };
    let cols = *w.shape.last().unwrap_or(&0);
    WeightData::new(w.format, vec![n, cols], bytes)
}

/// Expert `e` of a merged `[experts, rows, cols]` tensor; with `half`,
/// only the first (`Some(0)`) or second (`Some(1)`) half of its rows (gate
/// and up of a fused `ffn_gate_up_exps`).
pub(super) fn expert(w: &WeightData, e: usize, half: Option<usize>) -> Result<WeightData> {
    let [experts, r, _] = w.shape[..] else {
        return Err(Error::Invalid(format!(
            "merged experts must be 3-D [experts, rows, cols], found shape {:?}",
            w.shape
        )));
    };
    if e >= experts {
        return Err(Error::Invalid(format!(
            "expert {e} requested of a tensor holding {experts}"
        )));
    }
    match half {
        None => rows(w, e * r, r),
        Some(h) if r % 2 == 0 => rows(w, e * r + h * (r / 2), r / 2),
        Some(_) => Err(Error::Invalid(format!(
            "fused gate/up experts of {r} rows do not split in two"
        ))),
    }
}

/// The shape of MLA's split key/value up-projections.
#[derive(Clone, Copy, Debug)]
pub(super) struct KvBShape {
    pub heads: usize,
    pub nope: usize,
    pub v: usize,
    pub lora: usize,
}

/// (format, shape) of the `kv_b_proj` [`kv_b`] builds from tensors of
/// these formats: theirs when both are the same dense format, else F32.
pub(super) fn kv_b_format(
    k: WeightFormat,
    v: WeightFormat,
    s: KvBShape,
) -> (WeightFormat, Vec<usize>) {
    let f = if k == v && dense_bytes(k).is_some() {
        k
    } else {
        WeightFormat::F32
    };
    (f, vec![s.heads * (s.nope + s.v), s.lora])
}

fn dense_bytes(f: WeightFormat) -> Option<usize> {
    match f {
        WeightFormat::F32 => Some(4),
        WeightFormat::F16 | WeightFormat::BF16 => Some(2),
        _ => None,
    }
}

/// MLA's `kv_b_proj` `[heads · (nope + v), lora]` (per head its `nope` key
/// rows, then its `v` value rows) from llama.cpp's `attn_k_b`, the key rows
/// transposed per head (`[heads, lora, nope]`), and `attn_v_b`
/// (`[heads, v, lora]`). Dense tensors of one format keep it (values move,
/// unchanged); otherwise both are dequantized and the result is F32,
/// holding exactly the values the file encodes.
pub(super) fn kv_b(k_b: &WeightData, v_b: &WeightData, s: KvBShape) -> Result<WeightData> {
    let KvBShape {
        heads,
        nope,
        v,
        lora,
    } = s;
    for (w, want, what) in [
        (k_b, [heads, lora, nope], "attn_k_b"),
        (v_b, [heads, v, lora], "attn_v_b"),
    ] {
        if w.shape != want {
            return Err(Error::Invalid(format!(
                "{what} has shape {:?}, expected {want:?} (heads, then per head {})",
                w.shape,
                if what == "attn_k_b" {
                    "the latent rows of the key columns"
                } else {
                    "the value rows of the latent"
                }
            )));
        }
    }
    let (format, shape) = kv_b_format(k_b.format, v_b.format, s);
    let (kb, vb, es): (Vec<u8>, Vec<u8>, usize) = match dense_bytes(format) {
        Some(es) if format == k_b.format => (k_b.bytes.to_vec(), v_b.bytes.to_vec(), es),
        _ => {
            let f = |w: &WeightData| -> Result<Vec<u8>> {
                Ok(bytemuck::cast_slice(&mm_quant::dequantize_ref(w)?).to_vec())
            };
            (f(k_b)?, f(v_b)?, 4)
        }
    };
    let mut out = vec![0u8; shape[0] * lora * es];
    let row = nope + v;
    for h in 0..heads {
        for j in 0..nope {
            for l in 0..lora {
                let dst = ((h * row + j) * lora + l) * es;
                let src = ((h * lora + l) * nope + j) * es;
                out[dst..dst + es].copy_from_slice(&kb[src..src + es]);
            }
        }
        let dst = (h * row + nope) * lora * es;
        let src = h * v * lora * es;
        out[dst..dst + v * lora * es].copy_from_slice(&vb[src..src + v * lora * es]);
    }
    WeightData::new(format, shape, HostBytes::owned(out))
}
