//! The conformance suite on the wgpu backend: every op it runs against the
//! CPU references, at every tier the adapter has (f32 tolerance: the
//! kernels compute in f32, sums in another order), with naga's bounds
//! checks in the kernels; then the quantized formats.
//!
//! Without a Vulkan or Metal adapter the tests say why and pass;
//! `MM_REQUIRE_WGPU=1` (CI, which installs Mesa's lavapipe) makes that a
//! failure.

use mm_backend_wgpu::{OpenOptions, Tier, WgpuBackend};
use mm_conformance::{run_quantized, run_supported, Tolerance};

fn gpu(tier: Tier) -> Option<WgpuBackend> {
    let opts = OpenOptions {
        max_tier: Some(tier),
        checked: true,
        ..OpenOptions::from_env()
    };
    match WgpuBackend::open(&opts) {
        Ok(b) if b.runtime().tier == tier => Some(b),
        Ok(b) => {
            eprintln!(
                "tier {} skipped: {} has no subgroups",
                tier.name(),
                b.describe()
            );
            None
        }
        Err(e) if std::env::var_os("MM_REQUIRE_WGPU").is_none_or(|v| v != "1") => {
            eprintln!("skipped (no usable adapter): {e}");
            None
        }
        Err(e) => panic!("MM_REQUIRE_WGPU=1 but: {e}"),
    }
}

#[test]
fn wgpu_backend_conforms() {
    for tier in [Tier::T0, Tier::T1] {
        let Some(b) = gpu(tier) else { continue };
        eprintln!("adapter: {}", b.describe());
        let r = run_supported(&b, Tolerance::F32, &[]);
        assert!(
            r.fails.is_empty(),
            "{}: {}",
            tier.name(),
            r.fails.join("\n")
        );
        // Every op of the suite runs here (sampling: greedy rows on the
        // GPU, the others on the host).
        assert!(
            r.skipped.is_empty(),
            "{}: ops not run: {:?}",
            tier.name(),
            r.skipped
        );
    }
}

/// Every GGML and metal-marlin format, through the GPU layout: the kernels
/// multiply f32 activations by the exactly dequantized weights.
#[test]
fn wgpu_quantized_formats_conform() {
    for tier in [Tier::T0, Tier::T1] {
        let Some(b) = gpu(tier) else { continue };
        let fails = run_quantized(&b, Tolerance::F32);
        assert!(fails.is_empty(), "{}: {}", tier.name(), fails.join("\n"));
    }
}

/// The grouped expert op against the scalar experts for every format the
/// conformance suite draws, with host routes and routed from logits under
/// the three families' rules, and with a shared expert: f32 throughout.
#[test]
fn wgpu_moe_conforms() {
    use mm_conformance::{check_moe_experts, check_moe_routed, check_moe_shared};
    for tier in [Tier::T0, Tier::T1] {
        let Some(b) = gpu(tier) else { continue };
        let f32 = Tolerance::F32;
        check_moe_experts(&b, 0, f32, f32).unwrap();
        check_moe_routed(&b, 0, f32).unwrap();
        check_moe_shared(&b, 0, f32, f32).unwrap();
    }
}

/// Weights past the limit per binding run as shards of rows, each its own
/// buffers: the quantized suite (matmuls of 1, 5, 19 and 40 rows, so the
/// decode, small-batch and tiled kernels; embeddings) with a limit of
/// 4 KiB, which splits its weights into shards of a few rows each.
#[test]
fn wgpu_weights_in_shards_conform() {
    let opts = OpenOptions {
        checked: true,
        max_weight_binding: Some(4096),
        ..OpenOptions::from_env()
    };
    let b = match WgpuBackend::open(&opts) {
        Ok(b) => b,
        Err(e) if std::env::var_os("MM_REQUIRE_WGPU").is_none_or(|v| v != "1") => {
            eprintln!("skipped (no usable adapter): {e}");
            return;
        }
        Err(e) => panic!("MM_REQUIRE_WGPU=1 but: {e}"),
    };
    assert_eq!(b.runtime().weight_cap(), 4096);
    let fails = run_quantized(&b, Tolerance::F32);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
    mm_conformance::check_embedding(&b, 0, Tolerance::F32).unwrap();
}
