// Tier T1 prelude: workgroup reductions through subgroup operations
// (`subgroupAdd` is Metal's `simd_sum`), one partial per subgroup in
// workgroup memory, for any subgroup size (8 on lavapipe, 32 on Apple and
// NVIDIA). Entry points take their subgroup builtins through the slot
// SG and store them in the private variables below (slot SG_INIT).

var<workgroup> red_: array<f32, 256>;
var<private> sg_lane: u32;
var<private> sg_id: u32;
var<private> sg_count: u32;

// The sum of `v` over the workgroup, in every thread. Call from uniform
// control flow: it holds barriers.
fn wg_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red_[sg_id] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < sg_count; i = i + 1u) {
        t = t + red_[i];
    }
    workgroupBarrier();
    return t;
}

// The maximum of `v` over the workgroup, in every thread.
fn wg_max(v: f32, lid: u32) -> f32 {
    let s = subgroupMax(v);
    if (sg_lane == 0u) {
        red_[sg_id] = s;
    }
    workgroupBarrier();
    var t = red_[0];
    for (var i = 1u; i < sg_count; i = i + 1u) {
        t = max(t, red_[i]);
    }
    workgroupBarrier();
    return t;
}

var<workgroup> red4_: array<vec4<f32>, 64>;

// The sum of `v` over the workgroup, in every thread (four sums at once).
fn wg_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red4_[sg_id] = s;
    }
    workgroupBarrier();
    var t = vec4<f32>(0.0);
    for (var i = 0u; i < sg_count; i = i + 1u) {
        t = t + red4_[i];
    }
    workgroupBarrier();
    return t;
}
