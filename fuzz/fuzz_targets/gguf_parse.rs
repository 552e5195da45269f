//! GGUF parser fuzz target: any input must give a parsed file whose every
//! tensor loads and dequantizes, or an error; never a panic, a crash or an
//! unbounded allocation.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mm_formats::source::GgufSource;
use mm_formats::{GgufFile, ModelConfig, WeightSource};

/// One scratch file per fuzzing process, on tmpfs where there is one.
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() { shm } else { std::env::temp_dir() };
        dir.join(format!("mm-fuzz-gguf-{}.gguf", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("cannot write the scratch file");
    let Ok(file) = GgufFile::open(path) else { return };
    for t in &file.tensors {
        let w = file.tensor(&t.name).expect("a listed tensor must load");
        assert_eq!(w.bytes.len(), t.size);
        let v = mm_quant::dequantize_ref(&w).expect("a loaded tensor must dequantize");
        assert_eq!(v.len(), w.numel());
    }
    for key in file.metadata.keys() {
        let _ = file.get_str(key);
        let _ = file.get_u32(key);
        let _ = file.get_f32(key);
        let _ = file.get_str_array(key);
        let _ = file.get_i32_array(key);
        let _ = file.get_f32_array(key);
    }
    let _ = ModelConfig::from_gguf(&file);
    // Through the HF-named source too (q/k unpermutation).
    if let Ok(src) = GgufSource::from_file(file) {
        for (name, _, _) in src.describe() {
            let _ = src.tensor(&name);
        }
    }
});
