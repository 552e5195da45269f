//! Little-endian bit packing of 2-, 3-, 4- and 8-bit codes.
//!
//! A row of codes is one bit stream: code `i` occupies bits
//! `[i·b, (i+1)·b)`, and stream bit `k` is bit `k mod 8` of byte `k / 8`.
//! So 4-bit code `2j` is the low nibble of byte `j`; 2-bit code `4j + t` is
//! bits `2t..2t+2` of byte `j`; 3-bit codes `8j..8j+8` form the 24-bit
//! little-endian word `b[3j] | b[3j+1] << 8 | b[3j+2] << 16`, code `8j + t`
//! being bits `3t..3t+3` of it.

use mm_core::{Error, Result};

fn check(bits: u32, n: usize, bytes: usize) -> Result<()> {
    let unit = match bits {
        2 => 4,
        3 => 8,
        4 => 2,
        8 => 1,
        _ => {
            return Err(Error::Invalid(format!(
                "cannot pack {bits}-bit codes (2, 3, 4 or 8)"
            )))
        }
    };
    if n % unit != 0 {
        return Err(Error::Invalid(format!(
            "{n} {bits}-bit codes do not fill whole bytes (need a multiple of {unit})"
        )));
    }
    if bytes != n * bits as usize / 8 {
        return Err(Error::Invalid(format!(
            "{n} {bits}-bit codes pack into {} bytes, buffer has {bytes}",
            n * bits as usize / 8
        )));
    }
    Ok(())
}

/// Packs `codes` (each `< 2^bits`; higher bits are ignored) into `out`,
/// which must hold exactly `codes.len() · bits / 8` bytes.
pub fn pack_codes(bits: u32, codes: &[u8], out: &mut [u8]) -> Result<()> {
    check(bits, codes.len(), out.len())?;
    pack_unchecked(bits, codes, out);
    Ok(())
}

/// Unpacks `out.len()` codes from `packed` (exactly `out.len() · bits / 8` bytes).
pub fn unpack_codes(bits: u32, packed: &[u8], out: &mut [u8]) -> Result<()> {
    check(bits, out.len(), packed.len())?;
    unpack_unchecked(bits, packed, out);
    Ok(())
}

/// [`pack_codes`] for sizes the caller has checked.
#[inline]
pub(crate) fn pack_unchecked(bits: u32, codes: &[u8], out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(2)) {
                *o = (c[0] & 0xF) | (c[1] << 4);
            }
        }
        2 => {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(4)) {
                *o = (c[0] & 3) | (c[1] & 3) << 2 | (c[2] & 3) << 4 | (c[3] << 6);
            }
        }
        3 => {
            for (o, c) in out.chunks_exact_mut(3).zip(codes.chunks_exact(8)) {
                let w = c
                    .iter()
                    .enumerate()
                    .fold(0u32, |w, (t, &v)| w | ((v as u32 & 7) << (3 * t)));
                o.copy_from_slice(&w.to_le_bytes()[..3]);
            }
        }
        _ => unreachable!("checked bit width"),
    }
}

/// [`unpack_codes`] for sizes the caller has checked.
#[inline]
pub(crate) fn unpack_unchecked(bits: u32, packed: &[u8], out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(packed),
        4 => {
            for (c, &b) in out.chunks_exact_mut(2).zip(packed) {
                c[0] = b & 0xF;
                c[1] = b >> 4;
            }
        }
        2 => {
            for (c, &b) in out.chunks_exact_mut(4).zip(packed) {
                c[0] = b & 3;
                c[1] = (b >> 2) & 3;
                c[2] = (b >> 4) & 3;
                c[3] = b >> 6;
            }
        }
        3 => {
            for (c, b) in out.chunks_exact_mut(8).zip(packed.chunks_exact(3)) {
                let w = b[0] as u32 | (b[1] as u32) << 8 | (b[2] as u32) << 16;
                for (t, v) in c.iter_mut().enumerate() {
                    *v = ((w >> (3 * t)) & 7) as u8;
                }
            }
        }
        _ => unreachable!("checked bit width"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int3_hand_built() {
        // Codes 0..8 → w = Σ t << 3t = 0b111_110_101_100_011_010_001_000.
        let codes = [0u8, 1, 2, 3, 4, 5, 6, 7];
        let mut out = [0u8; 3];
        pack_codes(3, &codes, &mut out).unwrap();
        assert_eq!(out, [0x88, 0xC6, 0xFA]);
        let mut back = [0u8; 8];
        unpack_codes(3, &out, &mut back).unwrap();
        assert_eq!(back, codes);
        // A single code set in the middle, straddling bytes 0 and 1 (bits 6..9).
        let mut codes = [0u8; 8];
        codes[2] = 0b101;
        pack_codes(3, &codes, &mut out).unwrap();
        assert_eq!(out, [0x40, 0x01, 0x00]);
    }

    #[test]
    fn nibble_and_crumb_order() {
        let mut out = [0u8; 1];
        pack_codes(4, &[0x3, 0xA], &mut out).unwrap();
        assert_eq!(out, [0xA3]);
        pack_codes(2, &[1, 2, 3, 0], &mut out).unwrap();
        assert_eq!(out, [0b00_11_10_01]);
    }

    #[test]
    fn size_errors() {
        let mut out = [0u8; 3];
        assert!(pack_codes(3, &[0; 7], &mut out).is_err());
        assert!(pack_codes(5, &[0; 8], &mut out).is_err());
        assert!(unpack_codes(4, &[0; 2], &mut [0u8; 5]).is_err());
    }
}
