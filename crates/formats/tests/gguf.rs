//! GGUF reader: round trips through the test writer, and every kind of
//! malformed file giving an error that names the file and the problem.

mod common;

use common::*;
use mm_core::{Error, HostBytes, WeightFormat as F};
use mm_formats::{GgufFile, GgufValue as V};
use proptest::prelude::*;

fn q(format: F, x: &[f32]) -> Vec<u8> {
    mm_quant::ggml::quantize(format, x).unwrap()
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale)
        .collect()
}

/// A small valid file with every value type and a few tensors.
fn sample() -> GgufBuilder {
    GgufBuilder::new()
        .kv("general.architecture", V::String("llama".into()))
        .kv("u8", V::U8(200))
        .kv("i8", V::I8(-100))
        .kv("u16", V::U16(60000))
        .kv("i16", V::I16(-30000))
        .kv("u32", V::U32(4_000_000_000))
        .kv("i32", V::I32(-7))
        .kv("u64", V::U64(1 << 40))
        .kv("i64", V::I64(-(1 << 40)))
        .kv("f32", V::F32(0.5))
        .kv("f64", V::F64(1e-300))
        .kv("bool", V::Bool(true))
        .kv("str", V::String("héllo".into()))
        .kv(
            "strs",
            V::Array(vec![
                V::String("a".into()),
                V::String("".into()),
                V::String("c".into()),
            ]),
        )
        .kv("floats", V::Array(vec![V::F32(1.5), V::F32(-2.0)]))
        .kv("ints", V::Array(vec![V::I32(-1), V::I32(5)]))
        .kv(
            "nested",
            V::Array(vec![
                V::Array(vec![V::U8(1), V::U8(2)]),
                V::Array(vec![V::U8(3)]),
            ]),
        )
        .f32_tensor("norm", &[8], &ramp(8, 0.1))
        .tensor("q41", &[2, 64], F::Q4_1, q(F::Q4_1, &ramp(128, 0.01)))
        .tensor("q80", &[3, 32], F::Q8_0, q(F::Q8_0, &ramp(96, 0.02)))
}

fn open_bytes(dir: &TempDir, name: &str, bytes: &[u8]) -> mm_core::Result<GgufFile> {
    GgufFile::open(&dir.write(name, bytes))
}

#[test]
fn metadata_round_trip_and_getters() {
    let dir = TempDir::new("meta");
    let f = open_bytes(&dir, "a.gguf", &sample().build()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get("u8"), Some(&V::U8(200)));
    assert_eq!(f.get("i8"), Some(&V::I8(-100)));
    assert_eq!(f.get("u16"), Some(&V::U16(60000)));
    assert_eq!(f.get("i16"), Some(&V::I16(-30000)));
    assert_eq!(f.get("i64"), Some(&V::I64(-(1 << 40))));
    assert_eq!(f.get("f64"), Some(&V::F64(1e-300)));
    assert_eq!(
        f.get("nested"),
        sample()
            .kv
            .iter()
            .find(|k| k.0 == "nested")
            .map(|k| match &k.1 {
                Kv::Value(v) => v,
                _ => unreachable!(),
            })
    );

    // Integer getter accepts any integer type that fits.
    assert_eq!(f.get_u32("u8").unwrap(), Some(200));
    assert_eq!(f.get_u32("u16").unwrap(), Some(60000));
    assert_eq!(f.get_u32("u32").unwrap(), Some(4_000_000_000));
    assert_eq!(f.get_u64("u64").unwrap(), Some(1 << 40));
    assert_eq!(f.get_i64("i64").unwrap(), Some(-(1 << 40)));
    let e = f.get_u32("i32").unwrap_err().to_string();
    assert!(e.contains("'i32'") && e.contains("does not fit"), "{e}");
    let e = f.get_u32("u64").unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let e = f.get_u32("str").unwrap_err().to_string();
    assert!(e.contains("'str' is STRING"), "{e}");
    assert_eq!(f.get_u32("absent").unwrap(), None);

    assert_eq!(f.get_f32("f32").unwrap(), Some(0.5));
    assert_eq!(f.get_f32("f64").unwrap(), Some(1e-300f64 as f32));
    assert!(f.get_f32("u8").is_err());
    assert_eq!(f.get_bool("bool").unwrap(), Some(true));
    assert!(f.get_bool("u8").is_err());
    assert_eq!(f.get_str("str").unwrap(), Some("héllo"));
    assert!(f
        .get_str("u8")
        .unwrap_err()
        .to_string()
        .contains("expected a string"));
    assert_eq!(f.get_str_array("strs").unwrap(), Some(vec!["a", "", "c"]));
    assert_eq!(f.get_f32_array("floats").unwrap(), Some(vec![1.5, -2.0]));
    assert_eq!(f.get_i32_array("ints").unwrap(), Some(vec![-1, 5]));
    assert!(f
        .get_str_array("ints")
        .unwrap_err()
        .to_string()
        .contains("element 0"));
    assert!(f.get_f32_array("str").is_err());
    assert_eq!(f.get_i32_array("absent").unwrap(), None);
    assert_eq!(f.architecture().unwrap(), "llama");
}

#[test]
fn tensors_round_trip_zero_copy() {
    let dir = TempDir::new("tensors");
    let b = sample();
    let f = open_bytes(&dir, "a.gguf", &b.build()).unwrap();
    assert_eq!(f.tensors.len(), 3);
    for spec in &b.tensors {
        let info = f.tensor_info(&spec.name).unwrap();
        assert_eq!(info.offset % 32, 0);
        let w = f.tensor(&spec.name).unwrap();
        let shape: Vec<usize> = spec.ne.iter().rev().map(|&d| d as usize).collect();
        assert_eq!(w.shape, shape);
        assert_eq!(&w.bytes[..], &spec.data[..], "{}", spec.name);
        assert!(matches!(w.bytes, HostBytes::Mapped { .. }));
    }
    let w = f.tensor("q41").unwrap();
    assert_eq!(w.format, F::Q4_1);
    assert_eq!(w.shape, vec![2, 64]);
    let vals = mm_quant::dequantize_ref(&w).unwrap();
    let want = mm_quant::ggml::dequantize(F::Q4_1, &q(F::Q4_1, &ramp(128, 0.01)), 128).unwrap();
    assert_eq!(vals, want);
    assert!(matches!(f.tensor("nope"), Err(Error::MissingTensor(n)) if n == "nope"));
}

#[test]
fn version_2_and_custom_alignment() {
    let dir = TempDir::new("v2");
    let mut b = sample().alignment(64);
    b.version = 2;
    let f = open_bytes(&dir, "a.gguf", &b.build()).unwrap();
    assert_eq!(f.version, 2);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    for t in &f.tensors {
        assert_eq!(t.offset % 64, 0);
    }
    assert_eq!(&f.tensor("q80").unwrap().bytes[..], &b.tensors[2].data[..]);
}

#[test]
fn every_truncation_is_an_error() {
    let dir = TempDir::new("trunc");
    let bytes = sample().build();
    assert!(open_bytes(&dir, "full.gguf", &bytes).is_ok());
    let path = dir.path().join("t.gguf");
    for n in 0..bytes.len() {
        std::fs::write(&path, &bytes[..n]).unwrap();
        match GgufFile::open(&path) {
            Ok(_) => panic!("prefix of {n} bytes parsed"),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains("t.gguf"), "{n}: {s}");
                assert!(matches!(e, Error::Format { .. }), "{n}: {s}");
                assert!(
                    s.contains("truncated")
                        || s.contains("empty")
                        || s.contains("too short")
                        || s.contains("past the end")
                        || s.contains("remain"),
                    "{n}: {s}"
                );
            }
        }
    }
}

#[test]
fn bad_files() {
    let dir = TempDir::new("bad");
    let check = |name: &str, bytes: &[u8], want: &str| {
        let e = err_text(open_bytes(&dir, name, bytes));
        assert!(e.contains(name), "{e}");
        assert!(e.contains(want), "{name}: '{e}' lacks '{want}'");
    };

    // Missing file: an I/O error naming it.
    let missing = dir.path().join("missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.gguf"));

    let e = GgufFile::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("is a directory"),
        "{e}"
    );
    check("empty.gguf", b"", "empty");
    check("short.gguf", b"GG", "too short");
    check("magic.gguf", b"GGML\x03\0\0\0", "bad magic");
    check("ggjt.gguf", b"tjgg\x03\0\0\0", "legacy");
    let mut b = sample();
    b.version = 1;
    check("v1.gguf", &b.build(), "version 1 is not supported");
    b.version = 4;
    check("v4.gguf", &b.build(), "unsupported GGUF version 4");
    b.version = 3u32.swap_bytes();
    check("be.gguf", &b.build(), "big-endian");

    // Tensor data past the end of the file.
    let b = sample().raw_tensor(TensorSpec {
        name: "far".into(),
        ne: vec![32],
        ggml_type: 0,
        data: vec![],
        offset: Some(1 << 20),
    });
    check("far.gguf", &b.build(), "tensor 'far'");
    check("far2.gguf", &b.build(), "extends past the end");
    let b = sample().raw_tensor(TensorSpec {
        name: "huge".into(),
        ne: vec![32],
        ggml_type: 0,
        data: vec![],
        offset: Some(u64::MAX - 31),
    });
    check("huge_off.gguf", &b.build(), "extends past the end");

    // File cut short inside the last tensor's data (size mismatch).
    let bytes = sample().build();
    check("cut.gguf", &bytes[..bytes.len() - 1], "tensor 'q80'");

    // Block size mismatch: 48 elements of Q4_0 is not whole blocks.
    let b = GgufBuilder::new().raw_tensor(TensorSpec {
        name: "odd".into(),
        ne: vec![48, 2],
        ggml_type: 2,
        data: vec![0; 64],
        offset: None,
    });
    check(
        "odd.gguf",
        &b.build(),
        "row length 48, not a multiple of the Q4_0 block size 32",
    );

    // Unknown and unsupported ggml types name the tensor and the type.
    let t = |ty: u32| TensorSpec {
        name: "w".into(),
        ne: vec![256],
        ggml_type: ty,
        data: vec![0; 1024],
        offset: None,
    };
    check(
        "type99.gguf",
        &GgufBuilder::new().raw_tensor(t(99)).build(),
        "tensor 'w' has unknown ggml type id 99",
    );
    check(
        "iq4.gguf",
        &GgufBuilder::new().raw_tensor(t(23)).build(),
        "ggml type 23 (IQ4_XS)",
    );

    // Too many dimensions.
    let b = GgufBuilder::new().raw_tensor(TensorSpec {
        name: "5d".into(),
        ne: vec![1, 1, 1, 1, 1],
        ggml_type: 0,
        data: vec![0; 4],
        offset: None,
    });
    check("dims.gguf", &b.build(), "has 5 dimensions");

    // Dimensions whose product overflows.
    let b = GgufBuilder::new().raw_tensor(TensorSpec {
        name: "big".into(),
        ne: vec![1 << 32, 1 << 32, 1 << 32],
        ggml_type: 0,
        data: vec![],
        offset: None,
    });
    check("overflow.gguf", &b.build(), "overflows");

    // Absurd lengths and counts.
    let mut arr = 0u32.to_le_bytes().to_vec(); // u8 elements
    arr.extend_from_slice(&(1u64 << 62).to_le_bytes());
    check(
        "arr.gguf",
        &GgufBuilder::new().raw_kv("a", 9, arr).build(),
        "claims 4611686018427387904 entries",
    );
    let mut arr = 8u32.to_le_bytes().to_vec(); // string elements
    arr.extend_from_slice(&u64::MAX.to_le_bytes());
    check(
        "arr2.gguf",
        &GgufBuilder::new().raw_kv("a", 9, arr).build(),
        "metadata 'a'",
    );
    let mut s = (1u64 << 62).to_le_bytes().to_vec();
    s.extend_from_slice(b"abc");
    check(
        "str.gguf",
        &GgufBuilder::new().raw_kv("s", 8, s).build(),
        "metadata 's' has length 4611686018427387904",
    );
    check(
        "type.gguf",
        &GgufBuilder::new().raw_kv("s", 13, vec![0; 8]).build(),
        "metadata 's' has unknown value type 13",
    );
    check(
        "bool.gguf",
        &GgufBuilder::new().raw_kv("b", 7, vec![2]).build(),
        "not 0 or 1",
    );
    let mut bytes = GgufBuilder::new().kv("x", V::U8(1)).build();
    bytes[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    check("kvcount.gguf", &bytes, "metadata count");
    let mut bytes = GgufBuilder::new().kv("x", V::U8(1)).build();
    bytes[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    check("tcount.gguf", &bytes, "4611686018427387904 tensors");

    // Absurd key and tensor name lengths.
    let mut bytes = GgufBuilder::new().kv("key", V::U8(1)).build();
    bytes[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    check("keylen.gguf", &bytes, "metadata key #0 has length");
    let mut bytes = sample().build();
    let pos = bytes
        .windows(11)
        .position(|w| w == b"\x03\0\0\0\0\0\0\0q41")
        .unwrap();
    bytes[pos..pos + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    check("namelen.gguf", &bytes, "name of tensor #1 has length");

    // Deeply nested arrays are refused, not recursed into.
    let mut nested = Vec::new();
    for _ in 0..100 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    nested.extend_from_slice(&0u32.to_le_bytes());
    nested.extend_from_slice(&0u64.to_le_bytes());
    check(
        "deep.gguf",
        &GgufBuilder::new().raw_kv("d", 9, nested).build(),
        "nests arrays deeper",
    );

    // Bad alignment, misaligned offsets, duplicates, overlaps.
    let b = GgufBuilder::new().kv("general.alignment", V::U32(3));
    check(
        "align.gguf",
        &b.build(),
        "general.alignment must be a power of two",
    );
    let b = GgufBuilder::new().kv("general.alignment", V::String("x".into()));
    check("align2.gguf", &b.build(), "general.alignment");
    let b = sample().raw_tensor(TensorSpec {
        name: "mis".into(),
        ne: vec![1],
        ggml_type: 0,
        data: vec![],
        offset: Some(4),
    });
    check(
        "misaligned.gguf",
        &b.build(),
        "not a multiple of the alignment 32",
    );
    let b = sample().kv("u8", V::U8(1));
    check("dupkey.gguf", &b.build(), "duplicate metadata key 'u8'");
    let b = sample().f32_tensor("norm", &[8], &[0.0; 8]);
    check("dupname.gguf", &b.build(), "duplicate tensor name 'norm'");
    let b = sample().raw_tensor(TensorSpec {
        name: "alias".into(),
        ne: vec![8],
        ggml_type: 0,
        data: vec![],
        offset: Some(0),
    });
    check("overlap.gguf", &b.build(), "overlap");

    // Invalid UTF-8 in a key.
    let mut bytes = GgufBuilder::new().kv("k\u{e9}y", V::U8(1)).build();
    let pos = bytes
        .windows(2)
        .position(|w| w == "\u{e9}".as_bytes())
        .unwrap();
    bytes[pos] = 0xff;
    check("utf8.gguf", &bytes, "not valid UTF-8");
}

#[test]
fn invalid_utf8_string_values_are_replaced() {
    let dir = TempDir::new("utf8v");
    let mut s = 3u64.to_le_bytes().to_vec();
    s.extend_from_slice(&[b'a', 0xff, b'b']);
    let f = open_bytes(
        &dir,
        "a.gguf",
        &GgufBuilder::new().raw_kv("s", 8, s).build(),
    )
    .unwrap();
    assert_eq!(f.get_str("s").unwrap(), Some("a\u{fffd}b"));
}

#[test]
fn empty_file_with_no_tensors_is_valid() {
    let dir = TempDir::new("none");
    let f = open_bytes(&dir, "a.gguf", &GgufBuilder::new().build()).unwrap();
    assert!(f.tensors.is_empty() && f.metadata.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random corruption of a valid file never panics; whatever parses can
    /// be read entirely.
    #[test]
    fn corrupted_files_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let dir = TempDir::new("fuzz");
        let mut bytes = llama_meta(GgufBuilder::new(), "llama")
            .f32_tensor("output_norm.weight", &[32], &ramp(32, 0.1))
            .tensor("token_embd.weight", &[16, 32], F::Q8_0, q(F::Q8_0, &ramp(512, 0.01)))
            .tensor("blk.0.attn_q.weight", &[32, 32], F::Q4_1, q(F::Q4_1, &ramp(1024, 0.01)))
            .build();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(f) = open_bytes(&dir, "f.gguf", &bytes) {
            for t in &f.tensors {
                let w = f.tensor(&t.name).unwrap();
                mm_quant::dequantize_ref(&w).unwrap();
            }
            let _ = mm_formats::ModelConfig::from_gguf(&f);
        }
    }
}

/// The fuzz seeds were written by gguf-py's GGUFWriter (llama.cpp's own
/// writer): they must parse, and load fully through the source.
#[test]
fn gguf_py_written_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let mut n = 0;
    for ent in std::fs::read_dir(&dir).unwrap() {
        let path = ent.unwrap().path();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.get_str("general.name").unwrap(), Some("seed"));
        assert_eq!(
            f.get_i32_array("tokenizer.ggml.token_type")
                .unwrap()
                .unwrap()
                .len(),
            8
        );
        let src = mm_formats::open_source(&path).unwrap();
        assert_eq!(src.config().num_layers, 1);
        for (name, _, shape) in src.describe() {
            let w = src.tensor(&name).unwrap();
            assert_eq!(w.shape, shape, "{}: {name}", path.display());
            mm_quant::dequantize_ref(&w).unwrap();
        }
        n += 1;
    }
    assert!(n >= 3);
}
