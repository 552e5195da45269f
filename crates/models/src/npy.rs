//! Reading NumPy `.npy` arrays of float32 or float16 (C order, little
//! endian), as written by the reference-fixture generator.

use std::path::Path;

use mm_core::{Error, Result};

/// Reads an `.npy` file into `(shape, values as f32)`.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |r: &str| Error::format(path, "npy", r.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("bad magic"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(hstart..hstart + hlen)
            .ok_or_else(|| bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not UTF-8"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let elem = if header.contains("'<f4'") {
        4
    } else if header.contains("'<f2'") {
        2
    } else {
        return Err(bad(
            "only little-endian float32/float16 arrays are supported",
        ));
    };
    let shape_str = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in header"))?;
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[hstart + hlen..];
    if data.len() != n * elem {
        return Err(bad(&format!(
            "expected {} data bytes, found {}",
            n * elem,
            data.len()
        )));
    }
    let values = if elem == 4 {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        data.chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    };
    Ok((shape, values))
}
