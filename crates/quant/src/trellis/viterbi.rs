//! Viterbi search for the trellis formats: the bit stream of one 256-weight
//! tile whose decoded codes are closest (squared error) to the targets.
//!
//! States. The decoder reads state `s_i` = stream bits `[iK, iK+16)`, LSB
//! first, so the next state shifts K new bits in at the top. The search runs
//! on the bit-reversed label `u = rev16(s)`, where new bits enter at the
//! bottom: `u' = (u << K | b) & 0xFFFF`. The predecessors of `u'` are then
//! `(u' >> K) | r << (16-K)` for `r < 2^K`: 2^K contiguous blocks of the
//! cost array, so the minimum over predecessors is an element-wise minimum
//! of blocks.
//!
//! Arithmetic. Path costs are u16: targets (clamped to the codes' range)
//! and codes are halved and rounded to i16, a step's error is
//! `min(|t - c|, 255)²` (255 units = 510 codes, half the codes' range: a
//! step that far off is as bad as it gets), sums saturate at 65535, and every step subtracts the smallest
//! surviving cost, so the best paths stay near 0. Sixteen states per AVX2
//! instruction (32 with AVX-512), and the three 128 KiB arrays stay in L2.
//! The portable loop computes the same integers, so the chosen stream does
//! not depend on the CPU.
//!
//! Tail-biting. The tile's stream is circular (`s_255`'s window wraps into
//! bit 0), so the first state's low 16-K bits must equal the last state's
//! high 16-K bits. As QTIP does, a first pass over the sequence rotated to
//! put the wrap in its middle (only `WRAP_WINDOW` steps either side: the
//! survivors merge long before) fixes those bits; a second pass over the
//! tile, with start and end constrained to them, finds the best stream.

use super::codebook;
use super::TILE_LEN;

/// Steps on either side of the wrap in the first (tail-fixing) pass.
pub const WRAP_WINDOW: usize = 32;

const STATES: usize = 1 << 16;
/// Targets are clamped to the codes' range: past it the extreme code is
/// the nearest anyway, and a target far outside would give every state a
/// step error past the u16 range, flattening the path costs.
const T_MAX: f32 = codebook::OFFSET as f32;

/// Targets and codes are halved (rounded) in the search: a step error unit
/// is 4 code², and 255 units of difference cover the codes' whole range.
const UNIT: f32 = 0.5;

/// Reverses the low 16 bits.
#[inline(always)]
pub fn rev16(x: u32) -> u32 {
    (x as u16).reverse_bits() as u32
}

/// The codebook: every state's code as f32, indexed by state.
pub struct Codebook {
    values: Vec<f32>,
}

impl Codebook {
    /// The formats' codebook ([`codebook::code`]).
    pub fn new() -> Self {
        Self::from_table(&codebook::table())
    }

    /// A codebook of 65536 integer codes in [-1024, 1023], indexed by state.
    pub fn from_table(table: &[f32]) -> Self {
        assert_eq!(table.len(), STATES);
        Self {
            values: table.to_vec(),
        }
    }

    /// Codes by search label, times [`UNIT`], as i16.
    fn by_label(&self) -> Vec<i16> {
        (0..STATES as u32)
            .map(|u| (self.values[rev16(u) as usize] * UNIT).round() as i16)
            .collect()
    }
}

impl Default for Codebook {
    fn default() -> Self {
        Self::new()
    }
}

/// Scratch memory of one search thread at `k` bits (about 0.5 MB +
/// 320 × 2^(16-K) bytes).
pub struct Workspace {
    k: u32,
    cb: Vec<i16>,
    cost: Vec<u16>,
    next: Vec<u16>,
    minp: Vec<u16>,
    back: Vec<u8>,
    t16: Vec<i16>,
}

impl Workspace {
    pub fn new(k: u32, cb: &Codebook) -> Self {
        let half = STATES >> k;
        Self {
            k,
            cb: cb.by_label(),
            cost: vec![0; STATES],
            next: vec![0; STATES],
            minp: vec![0; half + 32],
            back: vec![0; (TILE_LEN + 2 * WRAP_WINDOW) * half],
            t16: vec![0; TILE_LEN + 2 * WRAP_WINDOW],
        }
    }
}

/// Start and end constraints of one pass: `Some(o)` keeps only labels with
/// `u >> K == o` at the start and `u & (2^(16-K) - 1) == o` at the end.
#[derive(Clone, Copy)]
struct Tail(Option<u32>);

#[inline(always)]
fn step_err(t: i16, c: i16) -> u16 {
    let d = (t as i32 - c as i32).unsigned_abs().min(255);
    (d * d) as u16
}

/// One Viterbi step, portable: `minp`/`back` from `cost`, then `next`.
fn step_scalar(
    k: u32,
    cost: &[u16],
    next: &mut [u16],
    minp: &mut [u16],
    back: &mut [u8],
    cb: &[i16],
    t: i16,
) {
    let half = STATES >> k;
    for j in 0..half {
        let (mut m, mut b) = (cost[j], 0u8);
        for r in 1..1usize << k {
            let c = cost[r * half + j];
            if c < m {
                m = c;
                b = r as u8;
            }
        }
        minp[j] = m;
        back[j] = b;
    }
    let low = *minp[..half].iter().min().unwrap();
    for (u, n) in next.iter_mut().enumerate() {
        *n = (minp[u >> k] - low).saturating_add(step_err(t, cb[u]));
    }
}

/// The same step with AVX-512BW: 32 labels per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn step_avx512(
    k: u32,
    cost: &[u16],
    next: &mut [u16],
    minp: &mut [u16],
    back: &mut [u8],
    cb: &[i16],
    t: i16,
) {
    use std::arch::x86_64::*;
    let half = STATES >> k;
    assert!(cost.len() >= STATES && next.len() >= STATES && cb.len() >= STATES);
    assert!(minp.len() >= half + 32 && back.len() >= half);
    let mut low = _mm512_set1_epi16(-1);
    for j in (0..half).step_by(32) {
        let mut m = _mm512_loadu_si512(cost.as_ptr().add(j) as *const _);
        let mut b = _mm512_setzero_si512();
        for r in 1..1usize << k {
            let c = _mm512_loadu_si512(cost.as_ptr().add(r * half + j) as *const _);
            let lt = _mm512_cmplt_epu16_mask(c, m);
            m = _mm512_mask_mov_epi16(m, lt, c);
            b = _mm512_mask_mov_epi16(b, lt, _mm512_set1_epi16(r as i16));
        }
        low = _mm512_min_epu16(low, m);
        _mm512_storeu_si512(minp.as_mut_ptr().add(j) as *mut _, m);
        _mm256_storeu_si256(back.as_mut_ptr().add(j) as *mut _, _mm512_cvtepi16_epi8(b));
    }
    let mut lanes = [0u16; 32];
    _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, low);
    let low = _mm512_set1_epi16(*lanes.iter().min().unwrap() as i16);
    let tv = _mm512_set1_epi16(t);
    let mut idx = [0u16; 32];
    idx.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i >> k) as u16);
    let idx = _mm512_loadu_si512(idx.as_ptr() as *const _);
    for u in (0..STATES).step_by(32) {
        let mp = _mm512_loadu_si512(minp.as_ptr().add(u >> k) as *const _);
        let mp = _mm512_subs_epu16(_mm512_permutexvar_epi16(idx, mp), low);
        let d = _mm512_sub_epi16(tv, _mm512_loadu_si512(cb.as_ptr().add(u) as *const _));
        let d = _mm512_min_epu16(_mm512_abs_epi16(d), _mm512_set1_epi16(255));
        let e = _mm512_mullo_epi16(d, d);
        _mm512_storeu_si512(next.as_mut_ptr().add(u) as *mut _, _mm512_adds_epu16(mp, e));
    }
}

/// The same step with AVX2: 16 labels per instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn step_avx2(
    k: u32,
    cost: &[u16],
    next: &mut [u16],
    minp: &mut [u16],
    back: &mut [u8],
    cb: &[i16],
    t: i16,
) {
    use std::arch::x86_64::*;
    let half = STATES >> k;
    assert!(cost.len() >= STATES && next.len() >= STATES && cb.len() >= STATES);
    assert!(minp.len() >= half + 32 && back.len() >= half);
    let mut low = _mm256_set1_epi16(-1);
    for j in (0..half).step_by(16) {
        let mut m = _mm256_loadu_si256(cost.as_ptr().add(j) as *const _);
        let mut b = _mm256_setzero_si256();
        for r in 1..1usize << k {
            let c = _mm256_loadu_si256(cost.as_ptr().add(r * half + j) as *const _);
            let mn = _mm256_min_epu16(c, m);
            // c < m exactly where the minimum moved.
            let kept = _mm256_cmpeq_epi16(mn, m);
            b = _mm256_blendv_epi8(_mm256_set1_epi16(r as i16), b, kept);
            m = mn;
        }
        low = _mm256_min_epu16(low, m);
        _mm256_storeu_si256(minp.as_mut_ptr().add(j) as *mut _, m);
        let packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(b, b), 0b1000);
        _mm_storeu_si128(
            back.as_mut_ptr().add(j) as *mut _,
            _mm256_castsi256_si128(packed),
        );
    }
    let mut lanes = [0u16; 16];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, low);
    let low = _mm256_set1_epi16(*lanes.iter().min().unwrap() as i16);
    let tv = _mm256_set1_epi16(t);
    // Label u + i takes minp[(u + i) >> k]: 16 >> k values, each 2^k times,
    // from the 4 values at minp[u >> k] broadcast to both 128-bit lanes.
    let mut pat = [0u8; 32];
    for (i, p) in pat.iter_mut().enumerate() {
        let lane_val = (i % 16) / 2 + (i / 16) * 8;
        *p = ((lane_val >> k) * 2 + i % 2) as u8;
    }
    let pat = _mm256_loadu_si256(pat.as_ptr() as *const _);
    let lim = _mm256_set1_epi16(255);
    for u in (0..STATES).step_by(16) {
        let four = (minp.as_ptr().add(u >> k) as *const i64).read_unaligned();
        let mp = _mm256_shuffle_epi8(_mm256_set1_epi64x(four), pat);
        let mp = _mm256_subs_epu16(mp, low);
        let d = _mm256_sub_epi16(tv, _mm256_loadu_si256(cb.as_ptr().add(u) as *const _));
        let d = _mm256_min_epu16(_mm256_abs_epi16(d), lim);
        let e = _mm256_mullo_epi16(d, d);
        _mm256_storeu_si256(next.as_mut_ptr().add(u) as *mut _, _mm256_adds_epu16(mp, e));
    }
}

#[derive(Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// One Viterbi pass over `t16`; writes the labels of the best path.
fn pass(t16: &[i16], ws: &mut Workspace, tail: Tail, path: &mut [u32]) {
    let k = ws.k;
    let half = STATES >> k;
    let n = t16.len();
    let isa = isa();
    let cb = std::mem::take(&mut ws.cb);
    for (u, c) in ws.cost.iter_mut().enumerate() {
        *c = match tail {
            Tail(Some(o)) if (u >> k) as u32 != o => u16::MAX,
            _ => step_err(t16[0], cb[u]),
        };
    }
    for i in 1..n {
        let Workspace {
            cost,
            next,
            minp,
            back,
            ..
        } = ws;
        let bk = &mut back[i * half..(i + 1) * half];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the feature was detected; the kernels check the lengths.
            Isa::Avx512 => unsafe { step_avx512(k, cost, next, minp, bk, &cb, t16[i]) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { step_avx2(k, cost, next, minp, bk, &cb, t16[i]) },
            _ => step_scalar(k, cost, next, minp, bk, &cb, t16[i]),
        }
        std::mem::swap(&mut ws.cost, &mut ws.next);
    }
    ws.cb = cb;
    let mask = (half - 1) as u32;
    let mut best = (u16::MAX, u32::MAX);
    for (u, &c) in ws.cost.iter().enumerate() {
        let ok = match tail {
            Tail(Some(o)) => u as u32 & mask == o,
            Tail(None) => true,
        };
        if ok && (c < best.0 || best.1 == u32::MAX) {
            best = (c, u as u32);
        }
    }
    path[n - 1] = best.1;
    for i in (1..n).rev() {
        let j = (path[i] >> k) as usize;
        path[i - 1] = (path[i] >> k) | (ws.back[i * half + j] as u32) << (16 - k);
    }
}

/// Encodes one tile of `TILE_LEN` targets (in code units) at `k` bits per
/// weight: writes `8k` little-endian words of the circular bit stream and
/// returns the squared error of the decoded codes.
pub fn encode_tile(t: &[f32], cb: &Codebook, ws: &mut Workspace, words: &mut [u32]) -> f32 {
    let k = ws.k;
    assert_eq!(t.len(), TILE_LEN);
    assert_eq!(words.len(), 8 * k as usize);
    let q = |v: f32| (v.clamp(-T_MAX, T_MAX) * UNIT).round() as i16;
    let w = WRAP_WINDOW.min(TILE_LEN / 2);
    let mut t16 = std::mem::take(&mut ws.t16);
    t16.clear();
    t16.extend(t[TILE_LEN - w..].iter().chain(&t[..w]).map(|&v| q(v)));
    let mut path = [0u32; TILE_LEN];
    pass(&t16, ws, Tail(None), &mut path[..2 * w]);
    let o = path[w] >> k;
    t16.clear();
    t16.extend(t.iter().map(|&v| q(v)));
    pass(&t16, ws, Tail(Some(o)), &mut path);
    ws.t16 = t16;
    words.fill(0);
    let kk = k as usize;
    let mut err = 0f32;
    for (i, &u) in path.iter().enumerate() {
        let s = rev16(u);
        let e = t[i] - cb.values[s as usize];
        err += e * e;
        let bits = s & ((1 << k) - 1);
        let p = i * kk;
        words[p / 32] |= bits << (p % 32);
        if p % 32 + kk > 32 {
            words[p / 32 + 1] |= bits >> (32 - p % 32);
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 and AVX-512 steps equal the portable one, bit for bit.
    #[test]
    fn wide_steps_equal_the_portable_step() {
        let cb = Codebook::new();
        for k in [2u32, 3, 4] {
            let half = STATES >> k;
            let cbk = cb.by_label();
            let cost: Vec<u16> = (0..STATES)
                .map(|i| ((i * 7919) % 5003) as u16 + if i % 97 == 0 { 60000 } else { 0 })
                .collect();
            let mut want = (vec![0u16; STATES], vec![0u16; half + 32], vec![0u8; half]);
            for t in [-30000i16, -5, 0, 3000, 29999] {
                step_scalar(k, &cost, &mut want.0, &mut want.1, &mut want.2, &cbk, t);
                #[cfg(target_arch = "x86_64")]
                for wide in [Isa::Avx2, Isa::Avx512] {
                    let f = if wide == Isa::Avx2 {
                        "avx2"
                    } else {
                        "avx512bw"
                    };
                    if (f == "avx2" && !std::arch::is_x86_feature_detected!("avx2"))
                        || (f == "avx512bw" && !std::arch::is_x86_feature_detected!("avx512bw"))
                    {
                        eprintln!("{f} not on this CPU: its step is not checked");
                        continue;
                    }
                    let mut got = (vec![0u16; STATES], vec![0u16; half + 32], vec![0u8; half]);
                    // SAFETY: the feature was detected just above.
                    unsafe {
                        match wide {
                            Isa::Avx2 => {
                                step_avx2(k, &cost, &mut got.0, &mut got.1, &mut got.2, &cbk, t)
                            }
                            _ => step_avx512(k, &cost, &mut got.0, &mut got.1, &mut got.2, &cbk, t),
                        }
                    }
                    assert!(got.0 == want.0, "{f} k {k} t {t}: costs differ");
                    assert!(got.2 == want.2, "{f} k {k} t {t}: back pointers differ");
                }
            }
        }
    }
}
