//! Every kernel variant of every tier, translated by naga to MSL (what
//! Metal compiles on a Mac) and to SPIR-V (Vulkan), after naga's
//! validation: a kernel that Metal could not take fails here, on any
//! machine, GPU or not.

use mm_backend_wgpu::shader::{all, render};
use mm_backend_wgpu::Tier;
use naga::valid::{Capabilities, ValidationFlags, Validator};

#[test]
fn every_kernel_translates_to_msl_and_spirv() {
    let variants = all();
    assert!(variants.len() >= 30, "only {} variants", variants.len());
    let mut done = 0;
    for tier in [Tier::T0, Tier::T1] {
        // unpack2x16float needs SHADER_FLOAT16_IN_FLOAT32, a downlevel
        // flag every Vulkan and Metal device has.
        // Kernel parameters are immediates (push constants; Metal's
        // setBytes).
        let caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32
            | Capabilities::IMMEDIATES
            | match tier {
                Tier::T0 => Capabilities::empty(),
                Tier::T1 => Capabilities::SUBGROUP,
            };
        for v in &variants {
            let text = render(v, tier).unwrap();
            let what = format!(
                "{} ({})",
                v.key().split(';').next().unwrap_or(""),
                tier.name()
            );
            let module = naga::front::wgsl::parse_str(&text)
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&text)));
            let info = Validator::new(ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&text)));
            // Every binding, the immediates and naga's buffer-size table
            // get a real slot, as in a Metal pipeline; nothing faked.
            let msl = naga::back::msl::Options {
                lang_version: (2, 4),
                per_entry_point_map: metal_slots(&module),
                fake_missing_bindings: false,
                ..Default::default()
            };
            let (out, tr) = naga::back::msl::write_string(
                &module,
                &info,
                &msl,
                &naga::back::msl::PipelineOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
            for ep in &tr.entry_point_names {
                if let Err(e) = ep {
                    panic!("{what}: MSL entry point: {e}");
                }
            }
            assert!(out.contains("kernel void"), "{what}: no MSL kernel");
            if tier == Tier::T1 {
                assert!(out.contains("simd_"), "{what}: no simdgroup op in the MSL");
            }
            let spv = naga::back::spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            naga::back::spv::write_vec(&module, &info, &spv, None)
                .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
            done += 1;
        }
    }
    eprintln!("{done} kernel variants translated");
}

/// Buffer slots for every binding of `module`'s entry points (binding b at
/// slot b), immediates and the buffer sizes (naga's bounds checks) after
/// the last: what a Metal pipeline receives.
fn metal_slots(module: &naga::Module) -> naga::back::msl::EntryPointResourceMap {
    let mut res = naga::back::msl::EntryPointResources::default();
    let mut next = 0u8;
    for (_, g) in module.global_variables.iter() {
        if let Some(b) = &g.binding {
            let slot = u8::try_from(b.binding).expect("binding below 256");
            next = next.max(slot + 1);
            let mutable = matches!(
                g.space,
                naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE)
            );
            res.resources.insert(
                *b,
                naga::back::msl::BindTarget {
                    buffer: Some(slot),
                    mutable,
                    ..Default::default()
                },
            );
        }
    }
    assert!(
        next + 2 <= 31,
        "{next} buffer slots and two more: past Metal's 31"
    );
    res.immediates_buffer = Some(next);
    res.sizes_buffer = Some(next + 1);
    module
        .entry_points
        .iter()
        .map(|ep| (ep.name.clone(), res.clone()))
        .collect()
}
