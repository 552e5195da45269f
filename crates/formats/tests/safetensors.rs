//! Safetensors directories: single, sharded, globbed; malformed files.

mod common;

use common::*;
use mm_core::{Error, HostBytes, WeightFormat as F};
use mm_formats::SafetensorsSet;

#[test]
fn single_file() {
    let dir = TempDir::new("st1");
    let a: Vec<f32> = (0..6).map(|i| i as f32).collect();
    dir.write(
        "model.safetensors",
        &st_f32(&[("a", vec![2, 3], a.clone()), ("b", vec![4], vec![1.0; 4])]),
    );
    let s = SafetensorsSet::open_dir(dir.path()).unwrap();
    assert_eq!(s.names().collect::<Vec<_>>(), ["a", "b"]);
    let w = s.tensor("a").unwrap();
    assert_eq!((w.format, w.shape.clone()), (F::F32, vec![2, 3]));
    assert!(matches!(w.bytes, HostBytes::Mapped { .. }));
    assert_eq!(mm_quant::dequantize_ref(&w).unwrap(), a);
    assert!(matches!(s.tensor("c"), Err(Error::MissingTensor(n)) if n == "c"));
    assert_eq!(s.info("b").unwrap(), ("F32".to_string(), &[4usize][..]));
}

#[test]
fn dtypes() {
    let dir = TempDir::new("stdt");
    let header = r#"{"__metadata__":{"format":"pt"},
        "h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},
        "b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},
        "q":{"dtype":"I8","shape":[2,2],"data_offsets":[8,12]},
        "s":{"dtype":"U8","shape":[],"data_offsets":[12,13]}}"#;
    let mut data = Vec::new();
    data.extend_from_slice(&half::f16::from_f32(1.5).to_le_bytes());
    data.extend_from_slice(&half::f16::from_f32(-2.0).to_le_bytes());
    data.extend_from_slice(&half::bf16::from_f32(3.0).to_le_bytes());
    data.extend_from_slice(&half::bf16::from_f32(0.5).to_le_bytes());
    data.extend_from_slice(&[1, 0xff, 3, 4, 9]);
    dir.write("model.safetensors", &st_bytes(header, &data));
    let s = SafetensorsSet::open_dir(dir.path()).unwrap();
    assert_eq!(
        mm_quant::dequantize_ref(&s.tensor("h").unwrap()).unwrap(),
        [1.5, -2.0]
    );
    assert_eq!(
        mm_quant::dequantize_ref(&s.tensor("b").unwrap()).unwrap(),
        [3.0, 0.5]
    );
    let e = err_text(s.tensor("q"));
    assert!(
        e.contains("tensor 'q' has dtype I8") && e.contains("model.safetensors"),
        "{e}"
    );
    let (dtype, shape, bytes) = s.raw("q").unwrap();
    assert_eq!(
        (dtype.as_str(), shape, &bytes[..]),
        ("I8", vec![2, 2], &[1u8, 0xff, 3, 4][..])
    );
    let (dtype, shape, bytes) = s.raw("s").unwrap();
    assert_eq!(
        (dtype.as_str(), shape, &bytes[..]),
        ("U8", vec![], &[9u8][..])
    );
}

#[test]
fn sharded_with_index() {
    let dir = TempDir::new("stsh");
    dir.write(
        "model-00001-of-00002.safetensors",
        &st_f32(&[("x", vec![2], vec![1.0, 2.0])]),
    );
    dir.write(
        "model-00002-of-00002.safetensors",
        &st_f32(&[("y", vec![1], vec![3.0]), ("z", vec![1], vec![4.0])]),
    );
    dir.write(
        "model.safetensors.index.json",
        br#"{"metadata":{"total_size":16},"weight_map":{
            "x":"model-00001-of-00002.safetensors",
            "y":"model-00002-of-00002.safetensors",
            "z":"model-00002-of-00002.safetensors"}}"#,
    );
    // A stray file not named by the index is ignored.
    dir.write("stray.safetensors", b"garbage");
    let s = SafetensorsSet::open_dir(dir.path()).unwrap();
    assert_eq!(s.names().collect::<Vec<_>>(), ["x", "y", "z"]);
    assert_eq!(s.files().len(), 2);
    assert_eq!(
        mm_quant::dequantize_ref(&s.tensor("z").unwrap()).unwrap(),
        [4.0]
    );
}

#[test]
fn index_errors() {
    let dir = TempDir::new("stie");
    dir.write("a.safetensors", &st_f32(&[("x", vec![1], vec![1.0])]));
    dir.write(
        "model.safetensors.index.json",
        br#"{"weight_map":{"x":"a.safetensors","y":"a.safetensors"}}"#,
    );
    let e = err_text(SafetensorsSet::open_dir(dir.path()));
    assert!(
        e.contains("maps 'y' to 'a.safetensors', which does not contain it"),
        "{e}"
    );

    dir.write(
        "model.safetensors.index.json",
        br#"{"weight_map":{"x":"missing.safetensors"}}"#,
    );
    let e = SafetensorsSet::open_dir(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("missing.safetensors"),
        "{e}"
    );

    dir.write(
        "model.safetensors.index.json",
        br#"{"weight_map":{"x":"../a.safetensors"}}"#,
    );
    let e = err_text(SafetensorsSet::open_dir(dir.path()));
    assert!(e.contains("not a file inside the model directory"), "{e}");

    dir.write("model.safetensors.index.json", br#"{"weights":{}}"#);
    let e = err_text(SafetensorsSet::open_dir(dir.path()));
    assert!(e.contains("missing 'weight_map'"), "{e}");

    dir.write("model.safetensors.index.json", b"{");
    let e = err_text(SafetensorsSet::open_dir(dir.path()));
    assert!(
        e.contains("index.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn glob_fallback_and_duplicates() {
    let dir = TempDir::new("stgl");
    dir.write("b.safetensors", &st_f32(&[("y", vec![1], vec![2.0])]));
    dir.write("a.safetensors", &st_f32(&[("x", vec![1], vec![1.0])]));
    let s = SafetensorsSet::open_dir(dir.path()).unwrap();
    assert_eq!(s.names().collect::<Vec<_>>(), ["x", "y"]);
    dir.write("c.safetensors", &st_f32(&[("x", vec![1], vec![5.0])]));
    let e = err_text(SafetensorsSet::open_dir(dir.path()));
    assert!(
        e.contains("tensor 'x' also appears in") && e.contains("c.safetensors"),
        "{e}"
    );

    let empty = TempDir::new("stempty");
    let e = SafetensorsSet::open_dir(empty.path()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("no model.safetensors"), "{e}");
    let e = SafetensorsSet::open_dir(&empty.path().join("nope")).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("nope"),
        "{e}"
    );
}

#[test]
fn malformed_files() {
    let dir = TempDir::new("stbad");
    let check = |bytes: &[u8], want: &str| {
        dir.write("model.safetensors", bytes);
        let e = err_text(SafetensorsSet::open_dir(dir.path()));
        assert!(
            e.contains("model.safetensors: invalid safetensors file"),
            "{e}"
        );
        assert!(e.contains(want), "'{e}' lacks '{want}'");
    };
    check(b"", "file is empty");
    check(b"\x10\0\0", "too short for the 8-byte header length");
    // Header length past the end of the file.
    check(
        &st_bytes("{}", b"")[..9],
        "header length 2 runs past the end of the file (9 bytes)",
    );
    let mut huge = (1u64 << 62).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    check(&huge, "exceeds the 100 MB limit");
    let mut big = (1000u64).to_le_bytes().to_vec();
    big.extend_from_slice(b"{}");
    check(&big, "header length 1000 runs past the end");
    // Truncated header text.
    let good = st_f32(&[("a", vec![2], vec![1.0, 2.0])]);
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for n in 8..8 + header_len {
        dir.write("model.safetensors", &good[..n]);
        assert!(SafetensorsSet::open_dir(dir.path()).is_err(), "prefix {n}");
    }
    check(&st_bytes("{\"a\":", b""), "not valid safetensors JSON");
    let bad_utf8 = b"{\"a\xff\":{}}";
    let mut f = (bad_utf8.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(bad_utf8);
    check(&f, "header is not valid UTF-8");
    // Data offsets past the end.
    check(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
        ),
        "tensor 'a': data_offsets [0, 8] run past the end of the data section (4 bytes)",
    );
    // Shape × dtype disagrees with the offsets.
    check(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        "tensor 'a': shape [3] of F32 needs 12 bytes, but data_offsets [0, 8] span 8",
    );
    check(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904, 8],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        "overflows",
    );
    // Gaps and trailing bytes.
    check(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8],
        ),
        "tensor 'a'",
    );
    check(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 8],
        ),
        "tensor data ends at byte 4 of the data section, but the file holds 8 bytes",
    );
    check(
        &st_bytes(
            r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ),
        "JSON",
    );
}
