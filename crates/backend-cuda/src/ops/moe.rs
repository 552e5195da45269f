//! The routed experts of a MoE layer on the GPU, routing included
//! (`Backend::moe_routed`), in launches whose number and grids do not
//! depend on which experts the tokens choose (`kernels/moe.cu`):
//!
//! 1. `moe_route`: router logits → each token's k expert ids and weights;
//! 2. `moe_align`: the (token, choice) pairs grouped by expert into blocks
//!    of [`NR`] pairs;
//! 3. gate and up of every chosen expert in one launch (8-bit activations
//!    in two passes, as the dense decode kernels: [`qmatmul::Q8_PASSES`]);
//! 4. `moe_glu_q8`: `silu(gate)·up`, quantized for down;
//! 5. down of every chosen expert in one launch;
//! 6. `moe_combine`: each token's k outputs times their weights.
//!
//! Nothing crosses the bus, so a decode step of a MoE model can be
//! recorded as a graph. Every row, prompt or generated, takes this
//! arithmetic (so a row's result does not depend on the batch); the exact
//! mode and experts whose value table is not affine (nf4, fp4, mxfp4,
//! fp8) or that are dense run on the CPU ([`takes`]).
//!
//! The experts' code and parameter pointers live in device tables built
//! on first use and kept in the runtime ([`MoeTable`]); experts whose GPU
//! layouts differ (a per-expert choice of format) form layout classes, one
//! launch per class.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use mm_core::{moe::moe_expert_dims, Error, MoeExperts, Result, RouterParams, Tensor, WeightData};
use mm_core::{MoeScoring, WeightFormat};

use crate::buffer::{alloc, alloc_of, on_device, tensor, upload};
use crate::compile::MOE;
use crate::ops::qmatmul::{self, DeviceQWeight, Q8_PASSES};
use crate::runtime::{driver_err, Runtime};

/// Pairs per block of the expert GEMVs (`NR` of their instances), weight
/// rows per warp (`R`) and warps per block.
pub const NR: usize = 8;
const R: usize = 4;
const WARPS: usize = 4;
/// Limits of the kernels: experts (the align kernel's shared counts),
/// experts per token (`moe_route`'s registers) and expert groups (one
/// lane each).
const MAX_EXPERTS: usize = 1024;
const MAX_TOP_K: usize = 16;
const MAX_GROUPS: usize = 32;

/// Whether the GPU runs experts of `format` (with [`moe_routed`]): the
/// integer and GGUF formats, whose GPU layout has an affine value table
/// of 4- or 8-bit codes (what the 8-bit-activation kernels take).
pub fn takes(format: WeightFormat) -> bool {
    use mm_core::weight::MmKind;
    match format {
        WeightFormat::Mm(f) => matches!(f.kind, MmKind::IntSym(_) | MmKind::IntAsym(_)),
        f => !f.is_dense() && crate::qlayout::supports(f),
    }
}

/// What the kernels need to read one expert matrix the same way as the
/// others of its launch.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Class {
    bits: u32,
    mode: u32,
    group: usize,
    kp: usize,
    la: f32,
    lb: f32,
}

/// Device tables of one projection's experts: pointers to each matrix's
/// codes and parameters, and its layout class.
struct Tables {
    codes: CudaSlice<u64>,
    params: CudaSlice<u64>,
    class_of: CudaSlice<i32>,
    classes: Vec<Class>,
}

/// The device tables of one MoE layer's experts: gate then up (2·E
/// entries), and down (E), the shared expert (when fused) last of each. `key` holds the device addresses and layout
/// class of every matrix they were built from, compared on every use: a
/// table is reused only for weights at the same addresses in the same
/// layouts (the memory of freed weights may hold others later).
pub struct MoeTable {
    key: Vec<(u64, u64, Class)>,
    gate_up: Tables,
    down: Tables,
}

fn prepare_all(rt: &Runtime, ws: &[&WeightData]) -> Result<Vec<Arc<DeviceQWeight>>> {
    ws.iter().map(|w| qmatmul::prepare(rt, w)).collect()
}

/// Each matrix's code and parameter addresses and layout class, or an
/// error naming a `what` (gate/up, down) expert the kernels cannot read.
fn describe(rt: &Runtime, qs: &[Arc<DeviceQWeight>], what: &str) -> Result<Vec<(u64, u64, Class)>> {
    qs.iter()
        .map(|q| {
            let Some((la, lb)) = q.affine.filter(|_| qmatmul::q8_capable(q)) else {
                return Err(Error::Invalid(format!(
                    "moe on cuda: a {what} expert's {}-bit GPU layout has no affine value table",
                    q.bits
                )));
            };
            let (c, _s1) = q.codes.device_ptr(&rt.stream);
            let (p, _s2) = q.params.device_ptr(&rt.stream);
            let class = Class {
                bits: q.bits,
                mode: q.mode,
                group: q.group,
                kp: q.kp,
                la,
                lb,
            };
            Ok((c, p, class))
        })
        .collect()
}

fn tables(rt: &Runtime, d: &[(u64, u64, Class)]) -> Result<Tables> {
    let mut classes: Vec<Class> = Vec::new();
    let mut class_of = Vec::with_capacity(d.len());
    for &(_, _, c) in d {
        let i = match classes.iter().position(|&k| k == c) {
            Some(i) => i,
            None => {
                classes.push(c);
                classes.len() - 1
            }
        };
        class_of.push(i as i32);
    }
    let codes: Vec<u64> = d.iter().map(|x| x.0).collect();
    let params: Vec<u64> = d.iter().map(|x| x.1).collect();
    Ok(Tables {
        codes: upload(rt, &codes, "expert pointers")?,
        params: upload(rt, &params, "expert pointers")?,
        class_of: upload(rt, &class_of, "expert layout classes")?,
        classes,
    })
}

/// The layer's tables: kept ones whose addresses still match, else built
/// (outside a graph capture: the first step of a model builds them).
fn table(rt: &Runtime, experts: &MoeExperts<'_>) -> Result<Arc<MoeTable>> {
    let s = experts.shared;
    let gate = experts.gate.iter().copied().chain(s.map(|s| s[0]));
    let up = experts.up.iter().copied().chain(s.map(|s| s[1]));
    let down: Vec<&WeightData> = experts
        .down
        .iter()
        .copied()
        .chain(s.map(|s| s[2]))
        .collect();
    let gu: Vec<&WeightData> = gate.chain(up).collect();
    let gu = describe(rt, &prepare_all(rt, &gu)?, "gate/up")?;
    let down = describe(rt, &prepare_all(rt, &down)?, "down")?;
    let key: Vec<(u64, u64, Class)> = gu.iter().chain(&down).copied().collect();
    let mut kept = rt.moe_tables.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = kept.iter().find(|t| t.key == key) {
        return Ok(t.clone());
    }
    let t = Arc::new(MoeTable {
        gate_up: tables(rt, &gu)?,
        down: tables(rt, &down)?,
        key,
    });
    // Tables of models long gone go first (they are small).
    if kept.len() >= 4096 {
        kept.remove(0);
    }
    kept.push(t.clone());
    Ok(t)
}

/// `Backend::moe_routed` on the GPU: see the module header. `x[n, hidden]`,
/// `logits[n, experts]`, `bias[experts]`.
pub fn moe_routed(
    rt: &Runtime,
    x: &Tensor,
    logits: &Tensor,
    bias: Option<&Tensor>,
    rule: &RouterParams,
    experts: &MoeExperts<'_>,
) -> Result<Tensor> {
    let (n, hidden, _) = moe_expert_dims(x, experts)?;
    let e = experts.gate.len();
    rule.check(bias.map(|b| b.numel()))?;
    let k = rule.top_k;
    if logits.shape() != [n, e] || rule.num_experts != e {
        return Err(Error::Invalid(format!(
            "moe_routed: logits {:?} for {n} rows of {e} experts (the rule has {})",
            logits.shape(),
            rule.num_experts
        )));
    }
    if e > MAX_EXPERTS || k > MAX_TOP_K || rule.n_group > MAX_GROUPS {
        return Err(Error::Invalid(format!(
            "moe on cuda: {e} experts, top-{k}, {} groups (at most {MAX_EXPERTS}, \
             {MAX_TOP_K} and {MAX_GROUPS})",
            rule.n_group
        )));
    }
    if n == 0 {
        return Ok(Tensor::zeros(vec![0, hidden]));
    }
    let ld = on_device(rt, logits)?;
    let bd = bias.map(|b| on_device(rt, b)).transpose()?;
    let ks = k + usize::from(experts.shared.is_some());
    let (ids, wts) = route(rt, ld.slice(), bd.as_ref().map(|b| b.slice()), rule, n, ks)?;
    run(rt, x, experts, (&ids, &wts), ks)
}

/// Whether [`moe_routed`] and [`moe_experts`] take `experts`' shared
/// expert into the expert launches (as expert `E`, chosen by every token
/// with weight 1): when it is as wide as the routed experts and every row
/// is a generated token. Prompt rows keep it apart, on the tensor cores
/// of the dense matmuls, which a prompt's many rows of one weight favour.
pub fn fuses_shared(experts: &MoeExperts<'_>, kinds: &[mm_core::RowKind]) -> bool {
    match (experts.shared, experts.gate.first()) {
        (Some([g, ..]), Some(r)) => {
            g.shape == r.shape && kinds.iter().all(|&k| k == mm_core::RowKind::Generated)
        }
        _ => false,
    }
}

/// The experts with a route given on the host (`Backend::moe_experts`:
/// calibration, the conformance suite): its ids and weights uploaded,
/// then as [`moe_routed`].
pub fn moe_experts(
    rt: &Runtime,
    x: &Tensor,
    experts: &MoeExperts<'_>,
    route: &mm_core::MoeRoute<'_>,
) -> Result<Tensor> {
    let (n, hidden, _) = mm_core::moe::moe_dims(x, experts, route)?;
    let e = experts.gate.len();
    if e > MAX_EXPERTS {
        return Err(Error::Invalid(format!(
            "moe on cuda: {e} experts (at most {MAX_EXPERTS})"
        )));
    }
    if n == 0 {
        return Ok(Tensor::zeros(vec![0, hidden]));
    }
    // With the shared expert: id e, weight 1, in a last slot per token.
    let k = route.top_k;
    let ks = k + usize::from(experts.shared.is_some());
    let (mut ids, mut wts) = (Vec::with_capacity(n * ks), Vec::with_capacity(n * ks));
    for t in 0..n {
        ids.extend(route.ids[t * k..(t + 1) * k].iter().map(|&i| i as i32));
        wts.extend_from_slice(&route.weights[t * k..(t + 1) * k]);
        if ks > k {
            ids.push(e as i32);
            wts.push(1.0);
        }
    }
    let ids = upload(rt, &ids, "expert ids")?;
    let wts = upload(rt, &wts, "expert weights")?;
    run(rt, x, experts, (&ids, &wts), ks)
}

/// Steps 2–6 of the module header on routed pairs `ids`/`wts` (`n·k`).
fn run(
    rt: &Runtime,
    x: &Tensor,
    experts: &MoeExperts<'_>,
    (ids, wts): (&CudaSlice<i32>, &CudaSlice<f32>),
    k: usize,
) -> Result<Tensor> {
    let (n, hidden, inter) = moe_expert_dims(x, experts)?;
    // The shared expert, if any, is expert e of the tables.
    let e = experts.gate.len() + usize::from(experts.shared.is_some());
    let t = table(rt, experts)?;
    let xd = on_device(rt, x)?;
    let input = crate::buffer::kept_input(x, &xd);
    let pairs = n * k;
    let maxb = pairs.div_ceil(NR) + e.min(pairs);
    let (be, bp) = align(rt, ids, pairs, e, maxb)?;
    let blocks = Blocks {
        expert: &be,
        pair: &bp,
        maxb,
        e,
    };
    let mut gu = alloc(rt, pairs * 2 * inter, "expert gate/up outputs")?;
    for (ci, c) in t.gate_up.classes.iter().enumerate() {
        let key = (n, hidden, c.kp, Q8_PASSES, c.bits == 4);
        qmatmul::with_quantized_x(rt, xd.slice(), input, None, key, |xq, xm| {
            let src = Source {
                xq,
                xm,
                rows: n,
                div: k,
            };
            gemv(
                rt,
                &t.gate_up,
                ci,
                &blocks,
                &src,
                (&mut gu, 2 * inter),
                inter,
                2,
            )
        })?;
    }
    let mut out = alloc(rt, pairs * hidden, "expert down outputs")?;
    for (ci, c) in t.down.classes.iter().enumerate() {
        let (xq, xm) = glu_q8(rt, &gu, pairs, inter, c)?;
        let src = Source {
            xq: &xq,
            xm: &xm,
            rows: pairs,
            div: 1,
        };
        gemv(
            rt,
            &t.down,
            ci,
            &blocks,
            &src,
            (&mut out, hidden),
            hidden,
            1,
        )?;
    }
    let mut y = alloc(rt, n * hidden, "moe output")?;
    let f = rt.function(&MOE, "moe_combine")?;
    let (ni, ki, hi) = (
        super::dim(n, "moe rows")?,
        super::dim(k, "top-k")?,
        super::dim(hidden, "hidden")?,
    );
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&out).arg(wts).arg(&ni).arg(&ki).arg(&hi).arg(&mut y);
    // SAFETY: out holds n·k rows of hidden values, wts n·k, y n rows.
    unsafe { l.launch(super::cover(n * hidden, 256)) }.map_err(|e| driver_err("moe combine", e))?;
    tensor(rt, vec![n, hidden], y)
}

/// `moe_route`: each row's k expert ids and weights, `ks` apart (k, or
/// k + 1 with the shared expert last).
fn route(
    rt: &Runtime,
    logits: &CudaSlice<f32>,
    bias: Option<&CudaSlice<f32>>,
    rule: &RouterParams,
    n: usize,
    ks: usize,
) -> Result<(CudaSlice<i32>, CudaSlice<f32>)> {
    let (e, k) = (rule.num_experts, rule.top_k);
    let mut ids = alloc_of::<i32>(rt, n * ks, "expert ids")?;
    let mut wts = alloc(rt, n * ks, "expert weights")?;
    let f = rt.function(&MOE, "moe_route")?;
    let ints = [
        super::dim(n, "moe rows")?,
        super::dim(e, "experts")?,
        super::dim(k, "top-k")?,
        i32::from(rule.scoring == MoeScoring::Sigmoid),
        i32::from(rule.norm_topk_prob),
    ];
    let groups = [
        super::dim(rule.n_group, "expert groups")?,
        super::dim(rule.topk_group, "chosen groups")?,
        i32::from(rule.group_score == mm_core::GroupScore::Top2Sum),
    ];
    let null = 0u64;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(logits);
    super::arg_or_null(&mut l, bias, &null);
    for v in &ints {
        l.arg(v);
    }
    l.arg(&rule.routed_scaling_factor);
    for v in &groups {
        l.arg(v);
    }
    let ksi = super::dim(ks, "expert slots")?;
    l.arg(&ksi).arg(&mut ids).arg(&mut wts);
    // Four warps (tokens) per block, each with scores, choices and flags.
    let per_warp = (2 * e + e.div_ceil(4)) * 4;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(4) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: (4 * per_warp) as u32,
    };
    // SAFETY: logits hold n rows of e values, bias e (checked by the
    // caller), the outputs n·ks (ks ≥ k); shared memory as the kernel
    // lays it out.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("moe routing", e))?;
    Ok((ids, wts))
}

/// `moe_align`: the pairs laid out in blocks of [`NR`] of one expert.
fn align(
    rt: &Runtime,
    ids: &CudaSlice<i32>,
    pairs: usize,
    e: usize,
    maxb: usize,
) -> Result<(CudaSlice<i32>, CudaSlice<i32>)> {
    let mut be = alloc_of::<i32>(rt, maxb, "expert blocks")?;
    let mut bp = alloc_of::<i32>(rt, maxb * NR, "expert block pairs")?;
    let f = rt.function(&MOE, "moe_align")?;
    let v = [
        super::dim(pairs, "expert pairs")?,
        super::dim(e, "experts")?,
        NR as i32,
        super::dim(maxb, "expert blocks")?,
    ];
    let mut l = rt.stream.launch_builder(&f);
    l.arg(ids);
    for x in &v {
        l.arg(x);
    }
    l.arg(&mut be).arg(&mut bp);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: (2 * e * 4) as u32,
    };
    // SAFETY: ids holds `pairs` ids below e (written by moe_route), the
    // outputs maxb and maxb·NR values; shared memory 2·e ints.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("moe pair layout", e))?;
    Ok((be, bp))
}

/// The block layout of [`align`].
struct Blocks<'a> {
    expert: &'a CudaSlice<i32>,
    pair: &'a CudaSlice<i32>,
    maxb: usize,
    e: usize,
}

/// Quantized activations of a GEMV: `rows` rows per pass; a pair reads
/// row `pair / div`.
struct Source<'a> {
    xq: &'a CudaSlice<i8>,
    xm: &'a CudaSlice<i32>,
    rows: usize,
    div: usize,
}

/// One launch of the expert GEMV for layout class `ci` of `t`: `mats`
/// matrices per expert (2: gate and up, side by side in each output row
/// of `ldy` values; 1: down), `m` rows each.
#[allow(clippy::too_many_arguments)]
fn gemv(
    rt: &Runtime,
    t: &Tables,
    ci: usize,
    b: &Blocks<'_>,
    src: &Source<'_>,
    (y, ldy): (&mut CudaSlice<f32>, usize),
    m: usize,
    mats: u32,
) -> Result<()> {
    let c = t.classes[ci];
    let name = format!("moe_q8{Q8_PASSES}_b{}_p{}", c.bits, c.mode);
    let f = rt.function(&MOE, &name)?;
    let ints = [super::dim(ci, "layout class")?, super::dim(b.e, "experts")?];
    let dims = [
        super::dim(src.div, "pair divisor")?,
        super::dim(src.rows, "activation rows")?,
    ];
    let out = [
        super::dim(ldy, "output stride")?,
        super::dim(m, "expert rows")?,
        super::dim(c.kp, "padded k")?,
        super::dim(c.group, "group")?,
    ];
    let mut l = rt.stream.launch_builder(&f);
    l.arg(&t.codes).arg(&t.params).arg(&t.class_of);
    l.arg(&ints[0]).arg(&ints[1]).arg(b.expert).arg(b.pair);
    l.arg(&dims[0]).arg(src.xq).arg(src.xm).arg(&dims[1]).arg(y);
    for v in &out {
        l.arg(v);
    }
    l.arg(&c.la).arg(&c.lb);
    let cfg = LaunchConfig {
        grid_dim: (
            m.div_ceil(WARPS * R) as u32,
            super::dim(b.maxb, "expert blocks")? as u32,
            mats,
        ),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the tables hold `mats`·e pointers to weights of m rows of kp
    // codes in class ci's layout; the block arrays maxb and maxb·NR
    // entries; the activations `rows` rows per pass of kp codes; y every
    // pair's row of ldy values. The kernel skips blocks of other classes.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("moe expert matmul", e))?;
    Ok(())
}

/// `silu(gate)·up` of every pair's `gu` row, quantized for a down class.
fn glu_q8(
    rt: &Runtime,
    gu: &CudaSlice<f32>,
    pairs: usize,
    inter: usize,
    c: &Class,
) -> Result<(CudaSlice<i8>, CudaSlice<i32>)> {
    let np = pairs * Q8_PASSES as usize;
    let mut xq = alloc_of::<i8>(rt, np * c.kp, "8-bit expert activations")?;
    let mut xm = alloc_of::<i32>(rt, np * c.kp / 32 * 4, "8-bit expert activation scales")?;
    let f = rt.function(&MOE, "moe_glu_q8")?;
    let v = [
        super::dim(pairs, "expert pairs")?,
        super::dim(inter, "expert width")?,
        super::dim(c.kp, "padded k")?,
        Q8_PASSES as i32,
        i32::from(c.bits == 4),
    ];
    let mut l = rt.stream.launch_builder(&f);
    l.arg(gu);
    for x in &v {
        l.arg(x);
    }
    l.arg(&mut xq).arg(&mut xm);
    let cfg = LaunchConfig {
        grid_dim: ((c.kp / 32).div_ceil(8) as u32, v[0] as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: gu holds `pairs` rows of 2·inter values; the outputs were
    // sized above for `pairs` rows, two passes, kp codes.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("moe activation", e))?;
    Ok((xq, xm))
}

/// The routing kernel alone on host values, its ids and weights read
/// back: the check of `moe_route` against `mm_core::router::route`.
pub fn route_to_host(
    rt: &Runtime,
    logits: &[f32],
    bias: Option<&[f32]>,
    rule: &RouterParams,
) -> Result<(Vec<u32>, Vec<f32>)> {
    rule.check(bias.map(|b| b.len()))?;
    let n = logits.len() / rule.num_experts;
    if n * rule.num_experts != logits.len() || n == 0 {
        return Err(Error::Invalid(format!(
            "route_to_host: {} logits for {} experts",
            logits.len(),
            rule.num_experts
        )));
    }
    let ld = upload(rt, logits, "router logits")?;
    let bd = bias.map(|b| upload(rt, b, "correction bias")).transpose()?;
    let (ids, wts) = route(rt, &ld, bd.as_ref(), rule, n, rule.top_k)?;
    let read = |e| driver_err("reading the routing back", e);
    let ids = rt.stream.clone_dtoh(&ids).map_err(read)?;
    let wts = rt.stream.clone_dtoh(&wts).map_err(read)?;
    Ok((ids.into_iter().map(|i| i as u32).collect(), wts))
}
