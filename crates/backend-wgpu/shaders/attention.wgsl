// Paged causal attention with grouped query heads. q[rows, h·d]; the K
// and V stores hold `width` = hkv·d values per slot as u32 words (f32
// bits, or two f16 per word with slot F16 = true); block tables map a
// sequence's key position t to slot table[t / bs]·bs + t % bs.
// info[3·row..] = (position, first visible key, table start) of each
// query row, from the host: the row sees keys first..=position.
//
// One workgroup of WG threads per (query head, row). The scaled query is
// kept in workgroup memory; keys are taken WG at a time, one per thread
// (its score a dot product over d), the tile's softmax folded into a
// running maximum and sum (online softmax), then each thread accumulates
// the weighted values of its output columns (c = lid + i·WG, up to MAXD).

struct P {
    heads: u32,
    group: u32,
    d: u32,
    width: u32,
    bs: u32,
    scale: f32,
    gx: u32,
    rows: u32,
}

var<immediate> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<u32>;
@group(0) @binding(3) var<storage, read> vc: array<u32>;
@group(0) @binding(4) var<storage, read> info: array<u32>;
@group(0) @binding(5) var<storage, read> tables: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

const ACC: u32 = ({{MAXD}}u + {{WG}}u - 1u) / {{WG}}u;

var<workgroup> qs: array<f32, {{MAXD}}>;
var<workgroup> ps: array<f32, {{WG}}>;
var<workgroup> slot_s: array<u32, {{WG}}>;

fn unpack(w: u32, e: u32) -> f32 {
    if ({{F16}}) {
        let h = unpack2x16float(w);
        return select(h.x, h.y, (e & 1u) == 1u);
    }
    return bitcast<f32>(w);
}

// Element e of the K (V) store.
fn kval(e: u32) -> f32 {
    if ({{F16}}) {
        return unpack(kc[e / 2u], e);
    }
    return unpack(kc[e], e);
}

fn vval(e: u32) -> f32 {
    if ({{F16}}) {
        return unpack(vc[e / 2u], e);
    }
    return unpack(vc[e], e);
}

@compute @workgroup_size({{WG}})
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, {{SG}}) {
    {{SG_INIT}}
    let h = wid.x;
    let row = wid.z * p.gx + wid.y;
    if (row >= p.rows) {
        return;
    }
    let pos = info[3u * row];
    let first = info[3u * row + 1u];
    let ts = info[3u * row + 2u];
    let kvo = (h / p.group) * p.d;
    let qo = row * p.heads * p.d + h * p.d;
    for (var c = lid; c < p.d; c = c + {{WG}}u) {
        qs[c] = q[qo + c] * p.scale;
    }
    workgroupBarrier();
    var m = -3.0e38;
    var l = 0.0;
    var acc: array<f32, ACC>;
    for (var i = 0u; i < ACC; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var t0 = first; t0 <= pos; t0 = t0 + {{WG}}u) {
        let t = t0 + lid;
        var s = -3.0e38;
        if (t <= pos) {
            let slot = tables[ts + t / p.bs] * p.bs + t % p.bs;
            slot_s[lid] = slot;
            let kb = slot * p.width + kvo;
            var dot = 0.0;
            for (var c = 0u; c < p.d; c = c + 1u) {
                dot = dot + qs[c] * kval(kb + c);
            }
            s = dot;
        }
        let mt = wg_max(s, lid);
        let mn = max(m, mt);
        let alpha = exp(m - mn);
        var e = 0.0;
        if (t <= pos) {
            e = exp(s - mn);
        }
        ps[lid] = e;
        l = l * alpha + wg_sum(e, lid);
        let cnt = min({{WG}}u, pos + 1u - t0);
        for (var i = 0u; i < ACC; i = i + 1u) {
            let c = lid + i * {{WG}}u;
            if (c < p.d) {
                var a = acc[i] * alpha;
                for (var j = 0u; j < cnt; j = j + 1u) {
                    a = a + ps[j] * vval(slot_s[j] * p.width + kvo + c);
                }
                acc[i] = a;
            }
        }
        m = mn;
        workgroupBarrier();
    }
    for (var i = 0u; i < ACC; i = i + 1u) {
        let c = lid + i * {{WG}}u;
        if (c < p.d) {
            y[qo + c] = acc[i] / l;
        }
    }
}
