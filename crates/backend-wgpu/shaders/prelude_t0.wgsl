// Tier T0 prelude: workgroup reductions through workgroup memory (a tree
// over the workgroup's WG threads, WG a power of two ≤ 256). Any adapter runs it.

var<workgroup> red_: array<f32, 256>;

// The sum of `v` over the workgroup, in every thread. Call from uniform
// control flow: it holds barriers.
fn wg_sum(v: f32, lid: u32) -> f32 {
    red_[lid] = v;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_[lid] = red_[lid] + red_[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_[0];
    workgroupBarrier();
    return r;
}

// The maximum of `v` over the workgroup, in every thread.
fn wg_max(v: f32, lid: u32) -> f32 {
    red_[lid] = v;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red_[lid] = max(red_[lid], red_[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_[0];
    workgroupBarrier();
    return r;
}

var<workgroup> red4_: array<vec4<f32>, 256>;

// The sum of `v` over the workgroup, in every thread (four sums at once).
fn wg_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    red4_[lid] = v;
    workgroupBarrier();
    for (var s = {{WG}}u / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red4_[lid] = red4_[lid] + red4_[lid + s];
        }
        workgroupBarrier();
    }
    let r = red4_[0];
    workgroupBarrier();
    return r;
}
