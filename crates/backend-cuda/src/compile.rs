//! Kernel sources and their compilation: each `kernels/*.cu` file, with
//! `kernels/prelude.cuh` prepended, is compiled by NVRTC for the GPU's
//! exact architecture at first use and cached on disk as PTX, keyed by
//! the source's hash, the architecture and the NVRTC version (a changed
//! kernel, GPU or NVRTC never loads a stale file).
//!
//! Cache directory: `$METAL_MARLIN_CACHE/cuda` (default
//! `~/.cache/metal-marlin/cuda`); a cache that cannot be written is
//! skipped (compiled again next time), never an error.

use std::path::PathBuf;

use cudarc::nvrtc::{CompileOptions, Ptx};
use mm_core::{Error, Result};
use sha2::{Digest, Sha256};

/// One kernel file and the functions it defines.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub src: &'static str,
    pub functions: &'static [&'static str],
    /// Compiled one function at a time (`MM_ONLY`, see the prelude): for
    /// files of many template instances, of which a model uses a few.
    pub split: bool,
    /// Device code shared with other files (a `kernels/*.cuh`), placed
    /// between the prelude and the file.
    pub head: &'static str,
}

const PRELUDE: &str = include_str!("../kernels/prelude.cuh");
/// The 8-bit-activation GEMV of `qmatmul_q8.cu` and `moe.cu`.
const Q8_GEMV: &str = include_str!("../kernels/q8_gemv.cuh");

macro_rules! kernel {
    ($name:literal, [$($f:literal),* $(,)?]) => {
        Kernel {
            name: $name,
            src: include_str!(concat!("../kernels/", $name, ".cu")),
            functions: &[$($f),*],
            split: false,
            head: "",
        }
    };
    (split $name:literal, [$($f:literal),* $(,)?]) => {
        Kernel {
            split: true,
            ..kernel!($name, [$($f),*])
        }
    };
    (split $name:literal, head $head:expr, [$($f:literal),* $(,)?]) => {
        Kernel {
            head: $head,
            ..kernel!(split $name, [$($f),*])
        }
    };
}

pub const RMS_NORM: Kernel = kernel!("rms_norm", ["rms_norm_f32"]);
pub const ACTIVATION: Kernel = kernel!("activation", ["silu_mul_f32", "add_f32"]);
pub const ROPE: Kernel = kernel!("rope", ["rope_f32"]);
pub const EMBEDDING: Kernel = kernel!(
    "embedding",
    [
        "embedding_f32",
        "embedding_f16",
        "embedding_bf16",
        "qembedding_b4_p0",
        "qembedding_b4_p1",
        "qembedding_b4_p2",
        "qembedding_b4_p3",
        "qembedding_b4_p4",
        "qembedding_b8_p0",
        "qembedding_b8_p1",
        "qembedding_b8_p2",
        "qembedding_b8_p3",
        "qembedding_b8_p4",
    ]
);
pub const MATMUL: Kernel = kernel!("matmul", ["matmul_f32", "matmul_f16", "matmul_bf16"]);
/// The quantized matmul's instances: code bits, parameter mode, weight
/// rows per warp, activation rows per warp; `_a`: affine value table.
pub const QMATMUL: Kernel = kernel!(
    split "qmatmul",
    [
        "qmatmul_b4_p0_r2_n1",
        "qmatmul_b4_p0_r2_n1_a",
        "qmatmul_b4_p0_r2_n4",
        "qmatmul_b4_p0_r2_n4_a",
        "qmatmul_b4_p0_r2_n8",
        "qmatmul_b4_p0_r2_n8_a",
        "qmatmul_b4_p1_r2_n1",
        "qmatmul_b4_p1_r2_n1_a",
        "qmatmul_b4_p1_r2_n4",
        "qmatmul_b4_p1_r2_n4_a",
        "qmatmul_b4_p1_r2_n8",
        "qmatmul_b4_p1_r2_n8_a",
        "qmatmul_b4_p2_r2_n1",
        "qmatmul_b4_p2_r2_n1_a",
        "qmatmul_b4_p2_r2_n4",
        "qmatmul_b4_p2_r2_n4_a",
        "qmatmul_b4_p2_r2_n8",
        "qmatmul_b4_p2_r2_n8_a",
        "qmatmul_b4_p3_r2_n1",
        "qmatmul_b4_p3_r2_n1_a",
        "qmatmul_b4_p3_r2_n4",
        "qmatmul_b4_p3_r2_n4_a",
        "qmatmul_b4_p3_r2_n8",
        "qmatmul_b4_p3_r2_n8_a",
        "qmatmul_b4_p4_r2_n1",
        "qmatmul_b4_p4_r2_n1_a",
        "qmatmul_b4_p4_r2_n4",
        "qmatmul_b4_p4_r2_n4_a",
        "qmatmul_b4_p4_r2_n8",
        "qmatmul_b4_p4_r2_n8_a",
        "qmatmul_b8_p0_r2_n1",
        "qmatmul_b8_p0_r2_n1_a",
        "qmatmul_b8_p0_r2_n4",
        "qmatmul_b8_p0_r2_n4_a",
        "qmatmul_b8_p0_r2_n8",
        "qmatmul_b8_p0_r2_n8_a",
        "qmatmul_b8_p1_r2_n1",
        "qmatmul_b8_p1_r2_n1_a",
        "qmatmul_b8_p1_r2_n4",
        "qmatmul_b8_p1_r2_n4_a",
        "qmatmul_b8_p1_r2_n8",
        "qmatmul_b8_p1_r2_n8_a",
        "qmatmul_b8_p2_r2_n1",
        "qmatmul_b8_p2_r2_n1_a",
        "qmatmul_b8_p2_r2_n4",
        "qmatmul_b8_p2_r2_n4_a",
        "qmatmul_b8_p2_r2_n8",
        "qmatmul_b8_p2_r2_n8_a",
        "qmatmul_b8_p3_r2_n1",
        "qmatmul_b8_p3_r2_n1_a",
        "qmatmul_b8_p3_r2_n4",
        "qmatmul_b8_p3_r2_n4_a",
        "qmatmul_b8_p3_r2_n8",
        "qmatmul_b8_p3_r2_n8_a",
        "qmatmul_b8_p4_r2_n1",
        "qmatmul_b8_p4_r2_n1_a",
        "qmatmul_b8_p4_r2_n4",
        "qmatmul_b8_p4_r2_n4_a",
        "qmatmul_b8_p4_r2_n8",
        "qmatmul_b8_p4_r2_n8_a",
    ]
);
/// The decode kernels on 8-bit activations: their quantization, then per
/// passes (1, or 2 with the remainder), code bits, parameter mode, weight
/// rows and activation rows per warp.
pub const QMATMUL_Q8: Kernel = kernel!(
    split "qmatmul_q8",
    head Q8_GEMV,
    [
        "quantize_x_q8",
        "qmatmul_q81_b4_p0_r2_n1",
        "qmatmul_q81_b4_p0_r2_n4",
        "qmatmul_q81_b4_p0_r2_n8",
        "qmatmul_q81_b4_p0_r4_n1",
        "qmatmul_q81_b4_p0_r4_n4",
        "qmatmul_q81_b4_p0_r4_n8",
        "qmatmul_q82_b4_p0_r2_n1",
        "qmatmul_q82_b4_p0_r2_n4",
        "qmatmul_q82_b4_p0_r2_n8",
        "qmatmul_q82_b4_p0_r4_n1",
        "qmatmul_q82_b4_p0_r4_n4",
        "qmatmul_q82_b4_p0_r4_n8",
        "qmatmul_q81_b4_p1_r2_n1",
        "qmatmul_q81_b4_p1_r2_n4",
        "qmatmul_q81_b4_p1_r2_n8",
        "qmatmul_q81_b4_p1_r4_n1",
        "qmatmul_q81_b4_p1_r4_n4",
        "qmatmul_q81_b4_p1_r4_n8",
        "qmatmul_q82_b4_p1_r2_n1",
        "qmatmul_q82_b4_p1_r2_n4",
        "qmatmul_q82_b4_p1_r2_n8",
        "qmatmul_q82_b4_p1_r4_n1",
        "qmatmul_q82_b4_p1_r4_n4",
        "qmatmul_q82_b4_p1_r4_n8",
        "qmatmul_q81_b4_p2_r2_n1",
        "qmatmul_q81_b4_p2_r2_n4",
        "qmatmul_q81_b4_p2_r2_n8",
        "qmatmul_q81_b4_p2_r4_n1",
        "qmatmul_q81_b4_p2_r4_n4",
        "qmatmul_q81_b4_p2_r4_n8",
        "qmatmul_q82_b4_p2_r2_n1",
        "qmatmul_q82_b4_p2_r2_n4",
        "qmatmul_q82_b4_p2_r2_n8",
        "qmatmul_q82_b4_p2_r4_n1",
        "qmatmul_q82_b4_p2_r4_n4",
        "qmatmul_q82_b4_p2_r4_n8",
        "qmatmul_q81_b4_p3_r2_n1",
        "qmatmul_q81_b4_p3_r2_n4",
        "qmatmul_q81_b4_p3_r2_n8",
        "qmatmul_q81_b4_p3_r4_n1",
        "qmatmul_q81_b4_p3_r4_n4",
        "qmatmul_q81_b4_p3_r4_n8",
        "qmatmul_q82_b4_p3_r2_n1",
        "qmatmul_q82_b4_p3_r2_n4",
        "qmatmul_q82_b4_p3_r2_n8",
        "qmatmul_q82_b4_p3_r4_n1",
        "qmatmul_q82_b4_p3_r4_n4",
        "qmatmul_q82_b4_p3_r4_n8",
        "qmatmul_q81_b4_p4_r2_n1",
        "qmatmul_q81_b4_p4_r2_n4",
        "qmatmul_q81_b4_p4_r2_n8",
        "qmatmul_q81_b4_p4_r4_n1",
        "qmatmul_q81_b4_p4_r4_n4",
        "qmatmul_q81_b4_p4_r4_n8",
        "qmatmul_q82_b4_p4_r2_n1",
        "qmatmul_q82_b4_p4_r2_n4",
        "qmatmul_q82_b4_p4_r2_n8",
        "qmatmul_q82_b4_p4_r4_n1",
        "qmatmul_q82_b4_p4_r4_n4",
        "qmatmul_q82_b4_p4_r4_n8",
        "qmatmul_q81_b8_p0_r2_n1",
        "qmatmul_q81_b8_p0_r2_n4",
        "qmatmul_q81_b8_p0_r2_n8",
        "qmatmul_q81_b8_p0_r4_n1",
        "qmatmul_q81_b8_p0_r4_n4",
        "qmatmul_q81_b8_p0_r4_n8",
        "qmatmul_q82_b8_p0_r2_n1",
        "qmatmul_q82_b8_p0_r2_n4",
        "qmatmul_q82_b8_p0_r2_n8",
        "qmatmul_q82_b8_p0_r4_n1",
        "qmatmul_q82_b8_p0_r4_n4",
        "qmatmul_q82_b8_p0_r4_n8",
        "qmatmul_q81_b8_p1_r2_n1",
        "qmatmul_q81_b8_p1_r2_n4",
        "qmatmul_q81_b8_p1_r2_n8",
        "qmatmul_q81_b8_p1_r4_n1",
        "qmatmul_q81_b8_p1_r4_n4",
        "qmatmul_q81_b8_p1_r4_n8",
        "qmatmul_q82_b8_p1_r2_n1",
        "qmatmul_q82_b8_p1_r2_n4",
        "qmatmul_q82_b8_p1_r2_n8",
        "qmatmul_q82_b8_p1_r4_n1",
        "qmatmul_q82_b8_p1_r4_n4",
        "qmatmul_q82_b8_p1_r4_n8",
        "qmatmul_q81_b8_p2_r2_n1",
        "qmatmul_q81_b8_p2_r2_n4",
        "qmatmul_q81_b8_p2_r2_n8",
        "qmatmul_q81_b8_p2_r4_n1",
        "qmatmul_q81_b8_p2_r4_n4",
        "qmatmul_q81_b8_p2_r4_n8",
        "qmatmul_q82_b8_p2_r2_n1",
        "qmatmul_q82_b8_p2_r2_n4",
        "qmatmul_q82_b8_p2_r2_n8",
        "qmatmul_q82_b8_p2_r4_n1",
        "qmatmul_q82_b8_p2_r4_n4",
        "qmatmul_q82_b8_p2_r4_n8",
        "qmatmul_q81_b8_p3_r2_n1",
        "qmatmul_q81_b8_p3_r2_n4",
        "qmatmul_q81_b8_p3_r2_n8",
        "qmatmul_q81_b8_p3_r4_n1",
        "qmatmul_q81_b8_p3_r4_n4",
        "qmatmul_q81_b8_p3_r4_n8",
        "qmatmul_q82_b8_p3_r2_n1",
        "qmatmul_q82_b8_p3_r2_n4",
        "qmatmul_q82_b8_p3_r2_n8",
        "qmatmul_q82_b8_p3_r4_n1",
        "qmatmul_q82_b8_p3_r4_n4",
        "qmatmul_q82_b8_p3_r4_n8",
        "qmatmul_q81_b8_p4_r2_n1",
        "qmatmul_q81_b8_p4_r2_n4",
        "qmatmul_q81_b8_p4_r2_n8",
        "qmatmul_q81_b8_p4_r4_n1",
        "qmatmul_q81_b8_p4_r4_n4",
        "qmatmul_q81_b8_p4_r4_n8",
        "qmatmul_q82_b8_p4_r2_n1",
        "qmatmul_q82_b8_p4_r2_n4",
        "qmatmul_q82_b8_p4_r2_n8",
        "qmatmul_q82_b8_p4_r4_n1",
        "qmatmul_q82_b8_p4_r4_n4",
        "qmatmul_q82_b8_p4_r4_n8",
    ]
);
/// The routed experts of a MoE layer: routing, pair layout, the
/// 8-bit-activation expert GEMVs per passes, code bits and parameter mode,
/// the gated activation and the weighted sum.
pub const MOE: Kernel = kernel!(
    split "moe",
    head Q8_GEMV,
    [
        "moe_route",
        "moe_align",
        "moe_glu_q8",
        "moe_combine",
        "moe_q81_b4_p0",
        "moe_q81_b4_p1",
        "moe_q81_b4_p2",
        "moe_q81_b4_p3",
        "moe_q81_b4_p4",
        "moe_q81_b8_p0",
        "moe_q81_b8_p1",
        "moe_q81_b8_p2",
        "moe_q81_b8_p3",
        "moe_q81_b8_p4",
        "moe_q82_b4_p0",
        "moe_q82_b4_p1",
        "moe_q82_b4_p2",
        "moe_q82_b4_p3",
        "moe_q82_b4_p4",
        "moe_q82_b8_p0",
        "moe_q82_b8_p1",
        "moe_q82_b8_p2",
        "moe_q82_b8_p3",
        "moe_q82_b8_p4",
    ]
);
pub const TC_MATMUL: Kernel = kernel!(
    split "tc_matmul",
    [
        "x_row_scales",
        "tc_matmul_f16",
        "tc_matmul_bf16",
        "tc_matmul_f32",
        "tc_matmul_b4_p0",
        "tc_matmul_b4_p1",
        "tc_matmul_b4_p2",
        "tc_matmul_b4_p3",
        "tc_matmul_b4_p4",
        "tc_matmul_b8_p0",
        "tc_matmul_b8_p1",
        "tc_matmul_b8_p2",
        "tc_matmul_b8_p3",
        "tc_matmul_b8_p4",
    ]
);
pub const WRITE_KV: Kernel = kernel!("write_kv", ["write_kv_f32", "write_kv_f16"]);
pub const GATHER_KV: Kernel = kernel!("gather_kv", ["gather_kv_f32", "gather_kv_f16"]);
pub const HEAD_MATMUL: Kernel = kernel!("head_matmul", ["head_matmul_f32"]);
pub const SLICE_COLS: Kernel = kernel!("slice_cols", ["slice_cols_f32"]);
pub const CONCAT_COLS: Kernel = kernel!("concat_cols", ["concat_cols_f32"]);
pub const SAMPLE: Kernel = kernel!("sample", ["sample_rows"]);
pub const TRELLIS: Kernel = kernel!(
    "trellis",
    [
        "trellis_had",
        "trellis_mv_k2",
        "trellis_mv_k3",
        "trellis_mv_k4"
    ]
);
pub const ATTENTION: Kernel = kernel!(
    "attention",
    [
        "attention_f32_d32",
        "attention_f32_d64",
        "attention_f32_d128",
        "attention_f32_d256",
        "attention_f16_d32",
        "attention_f16_d64",
        "attention_f16_d128",
        "attention_f16_d256",
        "attention_f32_d576",
        "attention_f16_d576",
        "attention_gqa_f32",
        "attention_gqa_f16",
    ]
);

/// Every kernel file of the backend (CI compiles them all).
pub const ALL: &[Kernel] = &[
    RMS_NORM,
    ACTIVATION,
    ROPE,
    EMBEDDING,
    MATMUL,
    QMATMUL,
    QMATMUL_Q8,
    MOE,
    TC_MATMUL,
    WRITE_KV,
    GATHER_KV,
    HEAD_MATMUL,
    SLICE_COLS,
    CONCAT_COLS,
    SAMPLE,
    ATTENTION,
    TRELLIS,
];

/// The NVRTC version `(major, minor)`, or an error naming the missing
/// library.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    crate::runtime::require_lib("nvrtc")?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters; the library was found above.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Other(format!("nvrtcVersion failed: {r:?}")));
    }
    Ok((major, minor))
}

fn options(arch: u32, only: Option<&str>) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".into(),
        // IEEE division and square root, as the CPU references compute.
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
    ];
    if let Some(f) = only {
        o.push(format!("-DMM_ONLY=\"{f}\""));
    }
    o
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("METAL_MARLIN_CACHE")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("metal-marlin")))?;
    Some(base.join("cuda"))
}

/// The PTX of `k` for `sm_{arch}` (of its function `only` alone, for a
/// split file): from the disk cache, else compiled.
pub fn ptx(k: &Kernel, arch: u32, only: Option<&str>) -> Result<String> {
    let (major, minor) = nvrtc_version()?;
    let opts = options(arch, only);
    let mut h = Sha256::new();
    for part in [
        PRELUDE,
        k.head,
        k.src,
        &opts.join(" "),
        &format!("nvrtc {major}.{minor}"),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = cache_dir().map(|d| {
        d.join(format!(
            "{}{}-sm{arch}-{hash}.ptx",
            k.name,
            only.map_or(String::new(), |f| format!("-{f}"))
        ))
    });
    if let Some(text) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        return Ok(text);
    }
    let text = compile_only(k, arch, only)?;
    if let Some(f) = &file {
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let saved = f.parent().map(std::fs::create_dir_all).transpose().is_ok()
            && std::fs::write(&tmp, &text).is_ok()
            && std::fs::rename(&tmp, f).is_ok();
        if !saved {
            std::fs::remove_file(&tmp).ok();
            tracing::debug!("kernel cache {} not writable", f.display());
        }
    }
    Ok(text)
}

/// Compiles every function of `k` for `sm_{arch}` with NVRTC (no cache);
/// the error carries NVRTC's log.
pub fn compile(k: &Kernel, arch: u32) -> Result<String> {
    compile_only(k, arch, None)
}

/// [`compile`], of function `only` alone when given (the others compile
/// to empty bodies).
pub fn compile_only(k: &Kernel, arch: u32, only: Option<&str>) -> Result<String> {
    crate::runtime::require_lib("nvrtc")?;
    let src = format!(
        "{PRELUDE}\n{}\n#line 1 \"{}.cu\"\n{}",
        k.head, k.name, k.src
    );
    let opts = CompileOptions {
        options: options(arch, only),
        name: Some(format!("{}.cu", k.name)),
        ..Default::default()
    };
    let ptx: Ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| {
        Error::Other(format!(
            "NVRTC could not compile kernels/{}.cu for sm_{arch}: {e:?}",
            k.name
        ))
    })?;
    Ok(ptx.to_src())
}
