//! Round-trip bounds, exact encodings, layout and error tests of the
//! metal-marlin formats.

use half::f16;
use mm_core::{HostBytes, WeightData, WeightFormat};
use proptest::prelude::*;

use super::codec::*;
use super::*;

fn formats() -> Vec<MmFormat> {
    MmFormat::all()
}

/// Largest error `|x - deq|` the format allows for `x` in a group whose
/// stored scale is `s` (2^e for MXFP4), before f32 arithmetic slack.
fn bound(kind: MmKind, x: f32, s: f32) -> f32 {
    match kind {
        MmKind::Trellis(_) => f32::INFINITY,
        MmKind::IntSym(_) | MmKind::IntAsym(_) => s / 2.0,
        // Half the widest gap between adjacent NF4 levels (-1 … -0.696).
        MmKind::Nf4 => (NF4_LEVELS[1] - NF4_LEVELS[0]) / 2.0 * s,
        MmKind::Fp8E4M3 => (x.abs() * 2f32.powi(-4)).max(2f32.powi(-10) * s),
        MmKind::Fp8E5M2 => (x.abs() * 2f32.powi(-3)).max(2f32.powi(-17) * s),
        MmKind::Fp4E2M1 => (x.abs() * 0.25).max(0.25 * s),
        MmKind::Mxfp4 => {
            if x.abs() > 6.0 * s {
                x.abs() - 6.0 * s
            } else {
                (x.abs() * 0.25).max(0.25 * s)
            }
        }
    }
}

fn check_round_trip(fmt: MmFormat, rows: usize, cols: usize, x: &[f32]) {
    let q = quantize_rtn(x, rows, cols, fmt).unwrap();
    let d = q.dequantize().unwrap();
    let gl = fmt.group_len(cols);
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            let s = q.scale(r, c / gl);
            let b = bound(fmt.kind, x[i], s);
            let err = (x[i] - d[i]).abs();
            assert!(
                err <= b * (1.0 + 1e-5) + x[i].abs() * 1e-6,
                "{fmt} r{r} c{c}: x={} deq={} err={err} bound={b} scale={s}",
                x[i],
                d[i]
            );
            assert!(d[i].is_finite());
        }
        // Symmetric formats keep zero exactly zero.
        if !fmt.kind.has_zeros() {
            for c in 0..cols {
                if x[r * cols + c] == 0.0 {
                    assert_eq!(d[r * cols + c], 0.0);
                }
            }
        }
    }
    // The element-wise reference agrees with the row kernel bit for bit.
    let w = q.clone().into_weight_data().unwrap();
    let rf = dequantize_mm_ref(&w).unwrap();
    assert_eq!(
        bits(&rf),
        bits(&d),
        "{fmt}: reference and row kernel differ"
    );
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (
        1usize..4,
        1usize..5,
        prop::sample::select(vec![1e-4f32, 1e-2, 1.0, 30.0, 3000.0]),
    )
        .prop_flat_map(|(rows, ngroups, mag)| {
            let cols = ngroups * 128;
            (
                Just(rows),
                Just(cols),
                prop::collection::vec(
                    prop_oneof![8 => (-1.0f32..1.0).prop_map(move |v| v * mag), 1 => Just(0.0f32)],
                    rows * cols,
                ),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_error_bounds((rows, cols, x) in matrix()) {
        for fmt in formats() {
            check_round_trip(fmt, rows, cols, &x);
        }
    }

    #[test]
    fn skewed_groups_round_trip(
        (rows, cols, x) in matrix(),
        shift in -2.0f32..2.0,
    ) {
        // Mostly-positive or mostly-negative groups exercise the asymmetric
        // zero-points and the MXFP4 saturation range.
        let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let y: Vec<f32> = x.iter().map(|v| v + shift * m).collect();
        for fmt in formats() {
            check_round_trip(fmt, rows, cols, &y);
        }
    }

    #[test]
    fn pack_unpack_identity(seed in prop::collection::vec(any::<u8>(), 96)) {
        for b in [2u32, 3, 4, 8] {
            let codes: Vec<u8> = seed.iter().map(|c| c & ((1u16 << b) - 1) as u8).collect();
            let mut packed = vec![0u8; codes.len() * b as usize / 8];
            pack_codes(b, &codes, &mut packed).unwrap();
            let mut back = vec![0u8; codes.len()];
            unpack_codes(b, &packed, &mut back).unwrap();
            prop_assert_eq!(&back, &codes);
            for (i, &c) in codes.iter().enumerate() {
                prop_assert_eq!(code_at(&packed, b, i), c);
            }
            // Packing is a bijection: bytes → codes → the same bytes.
            let raw = &seed[..packed.len()];
            unpack_codes(b, raw, &mut back).unwrap();
            pack_codes(b, &back, &mut packed).unwrap();
            prop_assert_eq!(&packed[..], raw);
        }
    }

    #[test]
    fn row_kernel_matches_reference_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 2 * 256),
        scale_bits in prop::collection::vec(0u16..0x7C00, 16),
        zeros in prop::collection::vec(any::<u8>(), 16),
    ) {
        // Every code pattern (NaN FP8 codes included) decodes identically.
        for fmt in formats() {
            let (rows, cols) = (2usize, 256usize);
            let sizes = fmt.part_sizes(rows, cols).unwrap();
            let codes = bytes[..sizes.codes].to_vec();
            let ng = rows * fmt.groups_per_row(cols);
            let scales: Vec<u8> = match fmt.kind.scale() {
                MmScale::F16 => scale_bits[..ng].iter().flat_map(|s| s.to_le_bytes()).collect(),
                MmScale::E8M0 => scale_bits[..ng].iter().map(|s| (s & 0xFF) as u8).collect(),
            };
            let z = fmt.kind.has_zeros().then(|| zeros[..ng].iter().map(|z| z & ((1u16 << fmt.bits()) - 1) as u8).collect::<Vec<_>>());
            let fast = dequantize_mm(fmt, rows, cols, &codes, &scales, z.as_deref()).unwrap();
            let w = WeightData::new_mm(fmt, vec![rows, cols], HostBytes::owned(codes), HostBytes::owned(scales), z.map(HostBytes::owned)).unwrap();
            let rf = dequantize_mm_ref(&w).unwrap();
            prop_assert_eq!(bits(&fast), bits(&rf), "{}", fmt);
        }
    }

    #[test]
    fn e4m3_relative_error(x in prop_oneof![2f32.powi(-6)..448.0f32, -448.0f32..-2f32.powi(-6)]) {
        let d = e4m3_to_f32(f32_to_e4m3(x));
        prop_assert!((d - x).abs() <= x.abs() * 2f32.powi(-4), "{} -> {}", x, d);
    }

    #[test]
    fn e5m2_relative_error(x in 2f32.powi(-14)..57344.0f32) {
        let d = e5m2_to_f32(f32_to_e5m2(x));
        prop_assert!((d - x).abs() <= x * 2f32.powi(-3), "{} -> {}", x, d);
    }

    #[test]
    fn fp8_is_nearest(x in -500.0f32..500.0) {
        // RNE: no finite code is strictly closer than the chosen one.
        let c = f32_to_e4m3(x);
        let d = e4m3_to_f32(c);
        let best = (0..=255u8).map(e4m3_to_f32).filter(|v| !v.is_nan())
            .fold(f32::INFINITY, |b, v| b.min((v - x).abs()));
        prop_assert_eq!((d - x).abs(), best);
    }
}

#[test]
fn all_zero_groups() {
    for fmt in formats() {
        let (rows, cols) = (3, 256);
        let mut x = vec![0f32; rows * cols];
        // Row 1 has one nonzero group; everything else is zero.
        x[cols + 5] = 1.5;
        let q = quantize_rtn(&x, rows, cols, fmt).unwrap();
        let d = q.dequantize().unwrap();
        assert!(
            d.iter().all(|v| v.is_finite()),
            "{fmt}: NaN from a zero group"
        );
        for (i, (&a, &b)) in x.iter().zip(&d).enumerate() {
            if a == 0.0 && (fmt.group != 0 || i / cols != 1) {
                assert_eq!(b, 0.0, "{fmt}: element {i}");
            }
        }
        match fmt.kind.scale() {
            MmScale::F16 => assert_eq!(q.scale(0, 0), 0.0, "{fmt}"),
            MmScale::E8M0 => assert_eq!(q.scales[0], 0, "{fmt}"),
        }
    }
}

#[test]
fn int4_sym_known_codes() {
    // absmax 7 → scale 1; codes stored offset by 8, low nibble first.
    let mut x = vec![0f32; 32];
    x[..4].copy_from_slice(&[7.0, -7.0, 2.5, -0.4]);
    let q = quantize_rtn(&x, 1, 32, MmFormat::parse("int4", 32).unwrap()).unwrap();
    assert_eq!(q.scales, f16::from_f32(1.0).to_le_bytes());
    // 7 → 15, -7 → 1, 2.5 → 2 (ties to even) → 10, -0.4 → 0 → 8.
    assert_eq!(&q.qweight[..2], &[0x1F, 0x8A]);
    assert!(q.qweight[2..].iter().all(|&b| b == 0x88));
    assert!(q.zeros.is_none());
}

#[test]
fn int4_asym_known_codes() {
    // min -1, max 14 → scale 1, zero 1; x = (q - 1)·1.
    let mut x = vec![0f32; 32];
    x[0] = -1.0;
    x[1] = 14.0;
    x[2] = 3.0;
    let q = quantize_rtn(&x, 1, 32, MmFormat::parse("int4-asym", 32).unwrap()).unwrap();
    assert_eq!(q.scales, f16::from_f32(1.0).to_le_bytes());
    assert_eq!(q.zeros.as_deref(), Some(&[1u8][..]));
    assert_eq!(q.qweight[0], 0xF0); // codes 0, 15
    assert_eq!(q.qweight[1], 0x14); // codes 4, 1
                                    // Positive-only groups keep 0 in range: zero-point 0.
    let y: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let q = quantize_rtn(&y, 1, 32, MmFormat::parse("int4-asym", 32).unwrap()).unwrap();
    assert_eq!(q.zeros.as_deref(), Some(&[0u8][..]));
}

#[test]
fn int3_row_bit_packing() {
    // absmax 3 → scale 1 (qmax 3); codes q + 4.
    let x: Vec<f32> = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.0]
        .iter()
        .cycle()
        .take(32)
        .copied()
        .collect();
    let q = quantize_rtn(&x, 1, 32, MmFormat::parse("int3", 32).unwrap()).unwrap();
    assert_eq!(q.scales, f16::from_f32(1.0).to_le_bytes());
    // Codes 1,2,3,4,5,6,7,4: w = Σ c_t << 3t.
    let w: u32 = [1u32, 2, 3, 4, 5, 6, 7, 4]
        .iter()
        .enumerate()
        .map(|(t, c)| c << (3 * t))
        .sum();
    assert_eq!(w, 0x9F_58D1);
    assert_eq!(q.qweight.len(), 12);
    for chunk in q.qweight.chunks(3) {
        assert_eq!(chunk, &[0xD1, 0x58, 0x9F]);
    }
    assert_eq!(q.dequantize().unwrap(), x);
}

#[test]
fn int8_and_int2_sym() {
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 4.0).collect(); // absmax 8
    let q = quantize_rtn(&x, 1, 64, MmFormat::parse("int8", 0).unwrap()).unwrap();
    assert_eq!(q.scale(0, 0), f16_scale_up(8.0 / 127.0).unwrap().to_f32());
    assert_eq!(q.qweight[0], (128 - 127) as u8); // -8 → -127
    let q = quantize_rtn(&x, 1, 64, MmFormat::parse("int2", 64).unwrap()).unwrap();
    assert_eq!(q.scale(0, 0), 8.0); // qmax 1
                                    // -8 → -1 → code 1; 0 → code 2; 7.75 → 1 → code 3.
    assert_eq!(code_at(&q.qweight, 2, 0), 1);
    assert_eq!(code_at(&q.qweight, 2, 32), 2);
    assert_eq!(code_at(&q.qweight, 2, 63), 3);
}

#[test]
fn fp8_group_scale_and_codes() {
    let mut x = vec![0f32; 32];
    x[0] = 896.0; // absmax → scale 2 exactly
    x[1] = -2.0;
    x[2] = 1e-4; // below half the smallest scaled denormal (2^-9 · 2 ≈ 0.0039) → 0
    let q = quantize_rtn(&x, 1, 32, MmFormat::parse("fp8", 32).unwrap()).unwrap();
    assert_eq!(q.scale(0, 0), 2.0);
    assert_eq!(&q.qweight[..3], &[0x7E, 0xB8, 0x00]);
    let q = quantize_rtn(&x, 1, 32, MmFormat::parse("fp8-e5m2", 0).unwrap()).unwrap();
    assert_eq!(
        q.scale(0, 0),
        f16_scale_up(896.0 / 57344.0).unwrap().to_f32()
    );
    assert_eq!(q.qweight[0], 0x7B);
}

#[test]
fn mxfp4_exponent_and_codes() {
    let mut x = vec![0f32; 64];
    x[0] = 7.0; // floor(log2 7) - 2 = 0 → X = 1; 7 saturates to 6.
    x[1] = -0.75; // ties to even → -1.0
    x[32] = 0.3; // second group: floor(log2 .3) - 2 = -4 → X = 1/16; .3·16 = 4.8 → 4
    let q = quantize_rtn(&x, 1, 64, MmFormat::parse("mxfp4", 32).unwrap()).unwrap();
    assert_eq!(q.scales, vec![127, 123]);
    assert_eq!(q.qweight[0], 0xA7); // codes 7 (6.0), 0xA (-1.0)
    assert_eq!(q.qweight[16], 0x06); // 4.0
    let d = q.dequantize().unwrap();
    assert_eq!((d[0], d[1], d[32]), (6.0, -1.0, 0.25));
}

#[test]
fn fp4_and_nf4_codes() {
    let mut x = vec![0f32; 32];
    x[0] = -12.0; // absmax → scale 2
    x[1] = 5.0; // 2.5 → 2 (ties to even) → code 4
    let q = quantize_rtn(&x, 1, 32, MmFormat::parse("fp4", 32).unwrap()).unwrap();
    assert_eq!(q.scale(0, 0), 2.0);
    assert_eq!(q.qweight[0], 0x4F);
    let q = quantize_rtn(&x, 1, 32, MmFormat::parse("nf4", 32).unwrap()).unwrap();
    assert_eq!(q.scale(0, 0), 12.0);
    // -1 → code 0; 5/12 = .4167 → nearest level .4407 → code 12; 0 → code 7.
    assert_eq!(q.qweight[0], 0xC0);
    assert_eq!(q.qweight[1], 0x77);
}

#[test]
fn shape_and_input_errors() {
    let f = MmFormat::parse("int4", 128).unwrap();
    let e = quantize_rtn(&[0.0; 192], 2, 96, f).unwrap_err().to_string();
    assert!(e.contains("96") && e.contains("group size 128"), "{e}");
    let e = quantize_rtn(&[0.0; 10], 1, 128, f).unwrap_err().to_string();
    assert!(e.contains("needs 128 values"), "{e}");
    let mut x = vec![0f32; 256];
    x[128 + 7] = f32::NAN;
    let e = quantize_rtn(&x, 2, 128, f).unwrap_err().to_string();
    assert!(e.contains("row 1") && e.contains("column 7"), "{e}");
    assert_eq!(e.matches("invalid argument").count(), 1, "{e}");
    assert!(e.contains("int4 (group 128)"), "{e}");
    let mut x = vec![0f32; 128];
    x[3] = 1e10;
    let e = quantize_rtn(&x, 1, 128, MmFormat::parse("int8", 32).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("65504") && e.contains("group 0"), "{e}");
    let e = quantize_rtn(&[0.0; 12], 1, 12, MmFormat::parse("int3", 0).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 8"), "{e}");
    // MXFP4 handles any finite magnitude (E8M0 range is 2^±127).
    let mut x = vec![0f32; 32];
    x[0] = 1e30;
    assert!(quantize_rtn(&x, 1, 32, MmFormat::parse("mxfp4", 32).unwrap()).is_ok());
}

#[test]
fn per_channel_long_rows() {
    // Per-channel groups span whole rows longer than one decode chunk.
    let cols = 8 * 40;
    let x: Vec<f32> = (0..2 * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    for &kind in &MmKind::ALL {
        if let Ok(f) = MmFormat::new(kind, 0) {
            check_round_trip(f, 2, cols, &x);
            let q = quantize_rtn(&x, 2, cols, f).unwrap();
            assert_eq!(q.scales.len(), 2 * 2);
        }
    }
}

#[test]
fn row_api_matches_matrix_api() {
    let x: Vec<f32> = (0..3 * 256)
        .map(|i| ((i * 31) % 97) as f32 - 48.0)
        .collect();
    for fmt in formats() {
        let q = quantize_rtn(&x, 3, 256, fmt).unwrap();
        let cb = fmt.code_bytes(256);
        let g = fmt.groups_per_row(256);
        let sb = g * fmt.scale_bytes();
        let mut codes = vec![0u8; cb];
        let mut scales = vec![0u8; sb];
        let mut zeros = vec![0u8; g];
        let z = fmt.kind.has_zeros().then_some(&mut zeros[..]);
        quantize_mm_row(fmt, &x[256..512], &mut codes, &mut scales, z).unwrap();
        assert_eq!(codes, &q.qweight[cb..2 * cb]);
        assert_eq!(scales, &q.scales[sb..2 * sb]);
        let mut out = vec![0f32; 256];
        let z = q.zeros.as_ref().map(|z| &z[g..2 * g]);
        dequantize_mm_row(fmt, &codes, &scales, z, &mut out).unwrap();
        assert_eq!(bits(&out), bits(&q.dequantize().unwrap()[256..512]));
        // Wrong part sizes are refused with the sizes in the message.
        let e = dequantize_mm_row(fmt, &codes[1..], &scales, z, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("code bytes"), "{e}");
    }
    let f = MmFormat::parse("int4", 32).unwrap();
    let e = dequantize_mm_row(f, &[0; 16], &[0; 2], Some(&[0]), &mut [0.0; 32]).unwrap_err();
    assert!(e.to_string().contains("no zero-points"));
    let f = MmFormat::parse("int4-asym", 32).unwrap();
    let e = dequantize_mm_row(f, &[0; 16], &[0; 2], None, &mut [0.0; 32]).unwrap_err();
    assert!(e.to_string().contains("missing"));
}

#[test]
fn weight_data_parts_and_layout() {
    let x: Vec<f32> = (0..4 * 128).map(|i| (i as f32).sin()).collect();
    for fmt in formats() {
        let q = quantize_rtn(&x, 4, 128, fmt).unwrap();
        let sizes = fmt.part_sizes(4, 128).unwrap();
        let w = q.clone().into_weight_data().unwrap();
        assert_eq!(w.format, WeightFormat::Mm(fmt));
        assert_eq!(w.stored_bytes(), sizes.total());
        assert_eq!(
            WeightFormat::Mm(fmt).stored_bytes(&[4, 128]).unwrap(),
            sizes.total()
        );
        assert_eq!(
            WeightFormat::Mm(fmt).bytes_for(128).unwrap(),
            fmt.code_bytes(128)
        );
        assert_eq!(
            bits(&dequantize_mm_weight(&w).unwrap()),
            bits(&q.dequantize().unwrap())
        );
        // Through the stored parts, as a loader sees them.
        let parts = q.parts().unwrap();
        let view = |p: &MmPart<'_>| (p.dtype, p.shape.clone(), HostBytes::owned(p.data.to_vec()));
        let v: Vec<_> = parts.iter().map(view).collect();
        assert_eq!(v[0].1, vec![4, fmt.code_bytes(128)]);
        assert_eq!(v[1].1, vec![4, fmt.groups_per_row(128)]);
        let pv = |i: usize| PartView {
            dtype: v[i].0,
            shape: &v[i].1,
            bytes: v[i].2.clone(),
        };
        let w2 = mm_weight_from_parts(fmt, pv(0), pv(1), (v.len() == 3).then(|| pv(2))).unwrap();
        assert_eq!(w2.shape, vec![4, 128]);
        assert_eq!(
            bits(&dequantize_mm_ref(&w2).unwrap()),
            bits(&q.dequantize().unwrap())
        );
        // Wrong dtype of the scales.
        let bad = PartView {
            dtype: "F32",
            shape: &v[1].1,
            bytes: v[1].2.clone(),
        };
        let e = mm_weight_from_parts(fmt, pv(0), bad, (v.len() == 3).then(|| pv(2))).unwrap_err();
        assert!(e.to_string().contains("scales must be"), "{e}");
        // Sizes are checked by the constructor.
        let e = WeightData::new_mm(
            fmt,
            vec![4, 128],
            v[0].2.clone(),
            HostBytes::owned(vec![0; 3]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("scales need"), "{e}");
    }
    let f = MmFormat::parse("int4-asym", 32).unwrap();
    let e = WeightData::new_mm(
        f,
        vec![1, 32],
        HostBytes::owned(vec![0; 16]),
        HostBytes::owned(vec![0; 2]),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("zero-points are missing"));
    let e = WeightData::new(
        WeightFormat::Mm(f),
        vec![1, 32],
        HostBytes::owned(vec![0; 16]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("new_mm"));
    // 3-D weights (stacked experts): rows are every leading index.
    let f = MmFormat::parse("int4", 32).unwrap();
    let s = mm_part_shapes(f, &[2, 3, 64]).unwrap();
    assert_eq!(
        (s.qweight, s.scales, s.zeros),
        (vec![2, 3, 32], vec![2, 3, 2], None)
    );
    assert_eq!(
        mm_part_names("model.layers.0.mlp.up_proj.weight")[0],
        "model.layers.0.mlp.up_proj.qweight"
    );
    assert_eq!(mm_base_name("lm_head"), "lm_head");
}

#[test]
fn dense_constructor_unchanged() {
    let w = WeightData::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert!(w.scales.is_none() && w.zeros.is_none());
    assert_eq!(w.stored_bytes(), 16);
    assert!(dequantize_mm_ref(&w)
        .unwrap_err()
        .to_string()
        .contains("not a metal-marlin"));
}

/// Throughput of the quantizer and decoder (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn throughput() {
    let (rows, cols) = (2048, 4096);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 8) as f32 / 16777216.0 - 0.5)
        .collect();
    for (n, g) in [
        ("int4", 128),
        ("int4-asym", 128),
        ("int3", 64),
        ("nf4", 64),
        ("fp8", 0),
        ("fp4", 32),
        ("mxfp4", 32),
    ] {
        let f = MmFormat::parse(n, g).unwrap();
        let t = std::time::Instant::now();
        let q = quantize_rtn(&x, rows, cols, f).unwrap();
        let tq = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let d = q.dequantize().unwrap();
        let td = t.elapsed().as_secs_f64();
        let w = q.into_weight_data().unwrap();
        let t = std::time::Instant::now();
        let r = dequantize_mm_ref(&w).unwrap();
        let tr = t.elapsed().as_secs_f64();
        assert_eq!(bits(&d), bits(&r));
        let m = (rows * cols) as f64 / 1e6;
        println!(
            "{f}: quantize {:.0} M/s, dequantize {:.0} M/s, reference {:.0} M/s",
            m / tq,
            m / td,
            m / tr
        );
    }
}
