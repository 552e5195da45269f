//! GGML block formats: fixtures from gguf-py (llama.cpp's Python twin of
//! ggml-quants.c), hand-built K-quant blocks, quantizer round trips.

use half::f16;
use mm_core::{HostBytes, WeightData, WeightFormat as F};
use mm_quant::ggml;
use proptest::prelude::*;

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{name}[{i}]: got {g:e}, want {w:e}"
        );
    }
}

const ALL_QUANT: [(F, &str); 10] = [
    (F::Q4_0, "q4_0"),
    (F::Q4_1, "q4_1"),
    (F::Q5_0, "q5_0"),
    (F::Q5_1, "q5_1"),
    (F::Q8_0, "q8_0"),
    (F::Q2K, "q2_k"),
    (F::Q3K, "q3_k"),
    (F::Q4K, "q4_k"),
    (F::Q5K, "q5_k"),
    (F::Q6K, "q6_k"),
];

#[test]
fn dequantize_matches_gguf_py_fixtures_bit_exactly() {
    for (format, name) in ALL_QUANT {
        let blocks = data(&format!("{name}.bin"));
        let want = f32s(&data(&format!("{name}.f32")));
        let got = ggml::dequantize(format, &blocks, want.len()).unwrap();
        assert_bits_eq(name, &got, &want);
        // Through WeightData and the dense entry point as well.
        let be = format.block().0;
        let w =
            WeightData::new(format, vec![want.len() / be, be], HostBytes::owned(blocks)).unwrap();
        assert_bits_eq(name, &mm_quant::dequantize_ref(&w).unwrap(), &want);
    }
}

#[test]
fn quantizers_match_gguf_py_bytes() {
    for (format, name) in &ALL_QUANT[..5] {
        let x = f32s(&data(&format!("{name}.input.f32")));
        let want = data(&format!("{name}.bin"));
        let got = ggml::quantize(*format, &x).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (b, (g, w)) in got
            .chunks(format.block().1)
            .zip(want.chunks(format.block().1))
            .enumerate()
        {
            assert_eq!(g, w, "{name}: block {b}");
        }
    }
}

#[test]
fn length_mismatches_are_errors() {
    for (format, _) in ALL_QUANT {
        let (be, bb) = format.block();
        let mut out = vec![0f32; be];
        assert!(ggml::dequantize_row(format, &vec![0u8; bb - 1], &mut out).is_err());
        assert!(ggml::dequantize_row(format, &vec![0u8; bb + 1], &mut out).is_err());
        let mut short = vec![0f32; be - 1];
        assert!(ggml::dequantize_row(format, &vec![0u8; bb], &mut short).is_err());
        assert!(ggml::dequantize_row(format, &vec![0u8; bb], &mut out).is_ok());
    }
    assert!(ggml::quantize(F::Q4K, &[0.0; 256]).is_err());
    assert!(ggml::quantize(F::Q8_0, &[0.0; 31]).is_err());
}

#[test]
fn dense_formats() {
    let vals = [1.0f32, -2.5, 0.0, 65504.0, 1.0e-3, f32::INFINITY];
    let mut f32b = Vec::new();
    let mut f16b = Vec::new();
    let mut bf16b = Vec::new();
    for v in vals {
        f32b.extend_from_slice(&v.to_le_bytes());
        f16b.extend_from_slice(&h(v));
        bf16b.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
    }
    let w = WeightData::new(F::F32, vec![2, 3], HostBytes::owned(f32b.clone())).unwrap();
    assert_eq!(mm_quant::dequantize_ref(&w).unwrap(), vals);
    let w = WeightData::new(F::F16, vec![2, 3], HostBytes::owned(f16b.clone())).unwrap();
    let want: Vec<f32> = vals.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
    assert_eq!(mm_quant::dequantize_ref(&w).unwrap(), want);
    let w = WeightData::new(F::BF16, vec![3, 2], HostBytes::owned(bf16b.clone())).unwrap();
    let want: Vec<f32> = vals
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(mm_quant::dequantize_ref(&w).unwrap(), want);
    assert_eq!(mm_quant::dequantize_rows_ref(&w, 1..3).unwrap(), want[2..6]);
    assert!(mm_quant::dequantize_rows_ref(&w, 2..4).is_err());
    let mut two = vec![0f32; 4];
    mm_quant::dequantize_rows_into(&w, 1..3, &mut two).unwrap();
    assert_eq!(two, want[2..6]);
    // An output of the wrong size is an error, not a partial write.
    assert!(mm_quant::dequantize_rows_into(&w, 1..3, &mut [0f32; 3]).is_err());

    // Unaligned byte slices take the byte-wise path and agree.
    for (format, bytes) in [(F::F32, &f32b), (F::F16, &f16b), (F::BF16, &bf16b)] {
        let mut buf = vec![0u8];
        buf.extend_from_slice(bytes);
        let a = ggml::dequantize(format, &buf[1..], vals.len()).unwrap();
        let b = ggml::dequantize(format, bytes, vals.len()).unwrap();
        assert_eq!(a, b);
        // And quantize back to the same bytes.
        assert_eq!(&ggml::quantize(format, &b).unwrap(), bytes);
    }
}

// ------------------------------------------------------------ K-quants
//
// Each reference below indexes element `e` straight from the layout of
// ggml-common.h (the loops of ggml-quants.c unrolled by hand), a second
// derivation independent of the implementation's loop structure.

/// 6-bit scale/min pairs of Q4_K/Q5_K packed per the ggml-common.h layout:
/// bytes 0..4 scales 0..4 (+2 high bits of scales 4..8), bytes 4..8 mins
/// 0..4 (+2 high bits of mins 4..8), bytes 8..12 low nibbles of scales and
/// mins 4..8.
fn pack_k4(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    q
}

/// Q3_K 6-bit scales: low nibbles in bytes 0..8 (scales 0..8 low, 8..16
/// high nibble), high two bits of scale i in byte 8 + i%4 at bit 2*(i/4).
fn pack_q3k_scales(s: [u8; 16]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for i in 0..16 {
        let lo = s[i] & 15;
        if i < 8 {
            q[i] |= lo;
        } else {
            q[i - 8] |= lo << 4;
        }
        q[8 + i % 4] |= (s[i] >> 4) << (2 * (i / 4));
    }
    q
}

fn ref_q2k(b: &[u8], e: usize) -> f32 {
    let d = f16::from_le_bytes([b[80], b[81]]).to_f32();
    let dmin = f16::from_le_bytes([b[82], b[83]]).to_f32();
    let (n, j, half, l) = (e / 128, (e % 128) / 32, (e % 32) / 16, e % 16);
    let sc = b[8 * n + 2 * j + half];
    let q = (b[16 + 32 * n + 16 * half + l] >> (2 * j)) & 3;
    d * (sc & 15) as f32 * q as f32 - dmin * (sc >> 4) as f32
}

fn ref_q3k(b: &[u8], e: usize) -> f32 {
    let d = f16::from_le_bytes([b[108], b[109]]).to_f32();
    let (n, j, half, l) = (e / 128, (e % 128) / 32, (e % 32) / 16, e % 16);
    let s = &b[96..108];
    let si = 8 * n + 2 * j + half;
    let lo = if si < 8 { s[si] & 15 } else { s[si - 8] >> 4 };
    let hi = (s[8 + si % 4] >> (2 * (si / 4))) & 3;
    let scale = (lo | (hi << 4)) as i32 - 32;
    let q = ((b[32 + 32 * n + 16 * half + l] >> (2 * j)) & 3) as i32;
    let hbit = (b[16 * half + l] >> (4 * n + j)) & 1;
    let v = q - if hbit == 1 { 0 } else { 4 };
    d * scale as f32 * v as f32
}

fn k4_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    // Unpacking the layout pack_k4 documents, written out per field.
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn ref_q4k(b: &[u8], e: usize) -> f32 {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
    let (n, hi, l) = (e / 64, (e % 64) / 32, e % 32);
    let (sc, m) = k4_scale_min(&b[4..16], 2 * n + hi);
    let byte = b[16 + 32 * n + l];
    let q = if hi == 0 { byte & 15 } else { byte >> 4 };
    d * sc as f32 * q as f32 - dmin * m as f32
}

fn ref_q5k(b: &[u8], e: usize) -> f32 {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
    let (n, hi, l) = (e / 64, (e % 64) / 32, e % 32);
    let (sc, m) = k4_scale_min(&b[4..16], 2 * n + hi);
    let byte = b[48 + 32 * n + l];
    let low = if hi == 0 { byte & 15 } else { byte >> 4 };
    let high = (b[16 + l] >> (2 * n + hi)) & 1;
    d * sc as f32 * (low | (high << 4)) as f32 - dmin * m as f32
}

fn ref_q6k(b: &[u8], e: usize) -> f32 {
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
    let ql = b[64 * n + 32 * (k % 2) + l];
    let low = if k < 2 { ql & 15 } else { ql >> 4 };
    let high = (b[128 + 32 * n + l] >> (2 * k)) & 3;
    let sc = b[192 + 8 * n + l / 16 + 2 * k] as i8;
    let q = (low | (high << 4)) as i32 - 32;
    d * sc as f32 * q as f32
}

fn dq_block(format: F, b: &[u8]) -> Vec<f32> {
    ggml::dequantize(format, b, 256).unwrap()
}

#[test]
fn q2_k_hand_built() {
    let mut b = [0u8; 84];
    b[80..82].copy_from_slice(&h(1.0)); // d
    b[82..84].copy_from_slice(&h(0.5)); // dmin
    b[0] = 0x21; // sub-block 0: scale 1, min 2
    b[1] = 0x47; // sub-block 1: scale 7, min 4
    b[2] = 0x13; // sub-block 2: scale 3, min 1
    b[4] = 0x05; // sub-block 4: scale 5, min 0
    b[6] = 0xF0; // sub-block 6: scale 0, min 15
    b[8] = 0x0F; // sub-block 8 (second 128): scale 15
    b[16] = 0b11_10_01_00; // qs[0]: elements 0, 32, 64, 96 get q = 0, 1, 2, 3
    b[16 + 16] = 0b00_00_00_11; // qs[16]: element 16 gets q = 3
    b[16 + 32 + 5] = 0b00_00_00_10; // qs[37]: element 128 + 5 gets q = 2
    let y = dq_block(F::Q2K, &b);
    assert_eq!(y[0], 1.0 * 1.0 * 0.0 - 0.5 * 2.0); // -1
    assert_eq!(y[16], 7.0 * 3.0 - 0.5 * 4.0); // 19
    assert_eq!(y[32], 3.0 * 1.0 - 0.5 * 1.0); // 2.5
    assert_eq!(y[64], 5.0 * 2.0); // 10
    assert_eq!(y[96], 0.0 * 3.0 - 0.5 * 15.0); // -7.5
    assert_eq!(y[133], 15.0 * 2.0); // 30
    assert_eq!(y[1], -1.0); // q = 0 in sub-block 0
    for (e, v) in y.iter().enumerate() {
        assert_eq!(*v, ref_q2k(&b, e), "element {e}");
    }
}

#[test]
fn q3_k_hand_built() {
    let mut s = [32u8; 16]; // all scales 0 after the -32 offset
    s[0] = 33; // +1
    s[1] = 30; // -2
    s[2] = 63; // +31
    s[9] = 37; // +5
    s[15] = 0; // -32
    let packed = pack_q3k_scales(s);
    // Spot-check the packing against the layout by hand: scale 0 = 0b10_0001
    // → low nibble 1 in byte 0, high bits 0b10 in byte 8 bits 0..2; scale 9
    // = 0b10_0101 → nibble 5 in the high half of byte 1, high bits in byte
    // 9 at bits 4..6.
    assert_eq!(packed[0] & 15, 1);
    assert_eq!(packed[8] & 3, 2);
    assert_eq!(packed[1] >> 4, 5);
    assert_eq!((packed[9] >> 4) & 3, 2);
    let unpacked = ggml::unpack_q3_k_scales(&packed);
    let want: Vec<i8> = s.iter().map(|v| *v as i8 - 32).collect();
    assert_eq!(unpacked.to_vec(), want);

    let mut b = [0u8; 110];
    b[96..108].copy_from_slice(&packed);
    b[108..110].copy_from_slice(&h(2.0));
    // qs[0] = 3 at shift 0, hmask[0] bit 0 set → element 0: q = 3 - 0.
    b[32] = 0b00_00_01_11; // element 0: q 3; element 32 (shift 2): q 1
    b[0] = 0b0000_0001; // hmask bit 0 of element 0 set; element 32 (bit 1) clear → -4
    b[32 + 16] = 0b10; // element 16: low 2, hmask clear → 2 - 4 = -2 (scale 1 = -2)
    b[32 + 32 + 16] = 0b11; // element 128 + 16: low 3, scale 9
    b[16] = 1 << 4; // hmask[16] bit 4: element 128 + 16 → no offset
    let y = dq_block(F::Q3K, &b);
    assert_eq!(y[0], 2.0 * 1.0 * 3.0);
    assert_eq!(y[32], 2.0 * 31.0 * (1.0 - 4.0));
    assert_eq!(y[16], 2.0 * -2.0 * (2.0 - 4.0));
    assert_eq!(y[144], 2.0 * 5.0 * 3.0);
    assert_eq!(y[240], 2.0 * -32.0 * -4.0); // scale 15, q 0, no hmask bit
    for (e, v) in y.iter().enumerate() {
        assert_eq!(*v, ref_q3k(&b, e), "element {e}");
    }
}

#[test]
fn q4_k_hand_built() {
    let sc = [1, 2, 3, 63, 17, 40, 5, 63];
    let m = [0, 4, 63, 1, 33, 2, 48, 15];
    let packed = pack_k4(sc, m);
    for j in 0..8 {
        assert_eq!(
            ggml::get_scale_min_k4(j, &packed),
            (sc[j], m[j]),
            "sub-block {j}"
        );
    }
    // A literal byte pattern: scale 4 = 17 = 0b01_0001 keeps its low nibble
    // in byte 8 and its high bits in byte 0 bits 6..8.
    assert_eq!(packed[8] & 15, 1);
    assert_eq!(packed[0] >> 6, 1);
    assert_eq!(packed[0] & 63, 1);

    let mut b = [0u8; 144];
    b[0..2].copy_from_slice(&h(0.25));
    b[2..4].copy_from_slice(&h(2.0));
    b[4..16].copy_from_slice(&packed);
    b[16] = 0x9A; // element 0: q 10 (sub-block 0), element 32: q 9 (sub-block 1)
    b[16 + 64 + 3] = 0xF0; // element 128 + 3: q 0 (sub-block 4); 160 + 3: q 15 (sub-block 5)
    let y = dq_block(F::Q4K, &b);
    assert_eq!(y[0], 0.25 * 1.0 * 10.0 - 0.0);
    assert_eq!(y[32], 0.25 * 2.0 * 9.0 - 2.0 * 4.0);
    assert_eq!(y[131], 0.0 - 2.0 * 33.0);
    assert_eq!(y[163], 0.25 * 40.0 * 15.0 - 2.0 * 2.0);
    assert_eq!(y[255], -2.0 * 15.0);
    for (e, v) in y.iter().enumerate() {
        assert_eq!(*v, ref_q4k(&b, e), "element {e}");
    }
}

#[test]
fn q5_k_hand_built() {
    let sc = [2, 63, 1, 1, 20, 1, 1, 33];
    let m = [1, 0, 0, 0, 0, 50, 0, 7];
    let mut b = [0u8; 176];
    b[0..2].copy_from_slice(&h(0.5));
    b[2..4].copy_from_slice(&h(0.25));
    b[4..16].copy_from_slice(&pack_k4(sc, m));
    b[48] = 0x3F; // element 0: low 15; element 32: low 3
    b[16] = 0b0000_0001; // qh[0] bit 0: element 0 +16; bit 1 clear: element 32
    b[48 + 96 + 31] = 0xE0; // element 192 + 31: low 0, 224 + 31: low 14
    b[16 + 31] = 0b1000_0000; // qh[31] bit 7: element 255 (sub-block 7) +16
    let y = dq_block(F::Q5K, &b);
    assert_eq!(y[0], 0.5 * 2.0 * 31.0 - 0.25 * 1.0);
    assert_eq!(y[32], 0.5 * 63.0 * 3.0);
    assert_eq!(y[223], 0.0);
    assert_eq!(y[255], 0.5 * 33.0 * 30.0 - 0.25 * 7.0);
    for (e, v) in y.iter().enumerate() {
        assert_eq!(*v, ref_q5k(&b, e), "element {e}");
    }
}

#[test]
fn q6_k_hand_built() {
    let mut b = [0u8; 210];
    b[208..210].copy_from_slice(&h(0.5));
    for i in 0..16 {
        b[192 + i] = (i as i8 - 8) as u8; // scales -8..7
    }
    b[0] = 0x5A; // element 0 low 0xA, element 64 low 0x5
    b[128] = 0b11_00_10_01; // qh[0]: element 0 +16, element 32 +32, element 64 +0, element 96 +48
    b[32] = 0x0F; // element 32 low 15; element 96 low 0
    b[64 + 32 + 17] = 0x01; // element 128 + 32 + 17 low 1, scale index 8 + 1 + 2
    let y = dq_block(F::Q6K, &b);
    assert_eq!(y[0], 0.5 * -8.0 * (0xA as f32 + 16.0 - 32.0));
    assert_eq!(y[32], 0.5 * -6.0 * (15.0 + 32.0 - 32.0));
    assert_eq!(y[64], 0.5 * -4.0 * (5.0 - 32.0));
    assert_eq!(y[96], 0.5 * -2.0 * (48.0 - 32.0));
    assert_eq!(y[177], 0.5 * 3.0 * (1.0 - 32.0));
    for (e, v) in y.iter().enumerate() {
        assert_eq!(*v, ref_q6k(&b, e), "element {e}");
    }
}

type RefFn = fn(&[u8], usize) -> f32;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random K-quant blocks (sane f16 scales) against the per-element refs.
    #[test]
    fn k_quants_match_layout_refs(
        mut bytes in proptest::collection::vec(any::<u8>(), 210),
        d in -4.0f32..4.0,
        dmin in -4.0f32..4.0,
        which in 0usize..5,
    ) {
        let (format, r, fields): (F, RefFn, &[usize]) = match which {
            0 => (F::Q2K, ref_q2k, &[80, 82]),
            1 => (F::Q3K, ref_q3k, &[108]),
            2 => (F::Q4K, ref_q4k, &[0, 2]),
            3 => (F::Q5K, ref_q5k, &[0, 2]),
            _ => (F::Q6K, ref_q6k, &[208]),
        };
        bytes.truncate(format.block().1);
        for (k, off) in fields.iter().enumerate() {
            bytes[*off..*off + 2].copy_from_slice(&h(if k == 0 { d } else { dmin }));
        }
        let y = dq_block(format, &bytes);
        for (e, v) in y.iter().enumerate() {
            prop_assert_eq!(v.to_bits(), r(&bytes, e).to_bits(), "{:?} element {}", format, e);
        }
    }

    /// Quantize → dequantize stays within each format's error bound.
    #[test]
    fn simple_formats_round_trip(
        x in proptest::collection::vec(-1.0f32..1.0, 32..=128),
        scale in prop_oneof![Just(1.0f32), Just(1e-3), Just(300.0), Just(1e-6)],
        offset in prop_oneof![Just(0.0f32), Just(0.5), Just(-7.0)],
    ) {
        let n = x.len() / 32 * 32;
        let x: Vec<f32> = x[..n].iter().map(|v| v * scale + offset * scale).collect();
        for format in [F::Q4_0, F::Q4_1, F::Q5_0, F::Q5_1, F::Q8_0] {
            let q = ggml::quantize(format, &x).unwrap();
            prop_assert_eq!(q.len(), format.bytes_for(n).unwrap());
            let y = ggml::dequantize(format, &q, n).unwrap();
            for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let min = xb.iter().cloned().fold(f32::MAX, f32::min);
                let max = xb.iter().cloned().fold(-f32::MAX, f32::max);
                // f16 rounding of d/m: relative 2^-11, or half the smallest
                // subnormal step 2^-25 in absolute terms.
                let f16_err = |v: f32| v.abs() * 4.9e-4 + 3.0e-8;
                let bound = match format {
                    // Symmetric: d = amax/8 (amax/16); the value opposite the
                    // extreme clamps at 15 (31) for one full step.
                    F::Q4_0 => { let d = amax / 8.0; d + 8.0 * f16_err(d) }
                    F::Q5_0 => { let d = amax / 16.0; d + 16.0 * f16_err(d) }
                    F::Q4_1 => { let d = (max - min) / 15.0; d / 2.0 + 15.0 * f16_err(d) + f16_err(min) }
                    F::Q5_1 => { let d = (max - min) / 31.0; d / 2.0 + 31.0 * f16_err(d) + f16_err(min) }
                    _ => { let d = amax / 127.0; d / 2.0 + 127.0 * f16_err(d) }
                } + 1e-6 * (amax + 1e-30) ;
                for (i, (a, b2)) in xb.iter().zip(yb).enumerate() {
                    prop_assert!((a - b2).abs() <= bound,
                        "{:?} block {} elem {}: {} -> {} (bound {})", format, b, i, a, b2, bound);
                }
            }
        }
    }
}

#[test]
fn q8_0_exact_on_integer_grid() {
    let x: Vec<f32> = (0..32)
        .map(|i| (i as f32 - 16.0) * 127.0 / 16.0)
        .map(|v| v.round())
        .collect();
    let mut x = x;
    x[0] = -127.0;
    let q = ggml::quantize(F::Q8_0, &x).unwrap();
    assert_eq!(&q[0..2], &h(1.0));
    assert_eq!(ggml::dequantize(F::Q8_0, &q, 32).unwrap(), x);
}

#[test]
fn zero_blocks_quantize_to_zero() {
    for format in [F::Q4_0, F::Q4_1, F::Q5_0, F::Q5_1, F::Q8_0] {
        let q = ggml::quantize(format, &[0.0; 64]).unwrap();
        assert!(
            ggml::dequantize(format, &q, 64)
                .unwrap()
                .iter()
                .all(|v| *v == 0.0),
            "{format:?}"
        );
    }
}

#[test]
fn non_finite_input_does_not_panic() {
    let mut x = [1.0f32; 32];
    x[3] = f32::NAN;
    x[4] = f32::INFINITY;
    for format in [F::Q4_0, F::Q4_1, F::Q5_0, F::Q5_1, F::Q8_0] {
        let q = ggml::quantize(format, &x).unwrap();
        let _ = ggml::dequantize(format, &q, 32).unwrap();
    }
}
