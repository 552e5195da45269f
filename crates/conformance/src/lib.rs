//! The conformance suite: one set of checks, run against every backend.
//!
//! Each check draws fresh random inputs (seeded, so failures reproduce),
//! runs the op through a [`Backend`], and compares with the op's scalar
//! `_ref` twin from `mm-backend-cpu` by relative L2 error and max error.
//! A backend's test file calls [`run_all`] with its backend.

use mm_backend_cpu::ops::{activation, attention, embedding, matmul, rms_norm, rope, write_kv};
use mm_core::{Backend, Result, Tensor, WeightData, WeightFormat};
use mm_core::{KvDType, PagedBatch, PagedParams, SeqSpan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod columns;
mod mla;
pub use columns::{check_concat_cols, check_slice_cols};
pub use mla::{check_gather_kv, check_head_matmul};
pub mod moe;
pub mod sample;
pub use moe::{check_moe_experts, check_moe_routed, check_moe_shared};
pub use sample::{check_sample, check_sample_large, SampleReport, REF_TOL, SAMPLE_TOL};

/// How far a backend may be from the reference.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// ‖out − ref‖₂ / ‖ref‖₂.
    pub rel_l2: f64,
}

impl Tolerance {
    /// f32 arithmetic: far under 1e-3.
    pub const F32: Tolerance = Tolerance { rel_l2: 1e-5 };
    /// Matmuls with GGML block weights whose kernels quantize the
    /// activations to 8 bits per 32 (Q8_0) or 256 (Q8_K) values, as
    /// llama.cpp's: compared with f32 activations times the dequantized
    /// weights, the expected error is ≈4e-3 on uniform inputs.
    pub const Q8_ACTIVATIONS: Tolerance = Tolerance { rel_l2: 1e-2 };
    /// The same kernels with a second 8-bit pass over the activations'
    /// rounding remainder (`ActPrecision::Int8Residual`, the CPU default):
    /// about 15-bit activations, expected error ≈ 4e-3² ≈ 2e-5.
    pub const Q8_RESIDUAL: Tolerance = Tolerance { rel_l2: 1e-4 };
    /// Dense matmuls whose prompt rows multiply integer codes: 15-bit
    /// activations by 14-bit weights per 32-block (the CPU default on
    /// AVX2, `dense16`); expected ≈ 5e-5 on uniform inputs.
    pub const INT16_OPERANDS: Tolerance = Tolerance { rel_l2: 2e-4 };
    /// Matmuls on f16 operands with f32 sums (GPU tensor cores): each
    /// operand rounded to 11 bits, expected ≈ 4e-4 on uniform inputs.
    pub const F16_OPERANDS: Tolerance = Tolerance { rel_l2: 2e-3 };
}

fn randv(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Relative L2 error of `out` against `reference`; NaN never passes.
pub fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in out.iter().zip(reference) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    if num.is_nan() {
        return f64::INFINITY;
    }
    (num / den.max(1e-30)).sqrt()
}

fn check(name: &str, out: &Tensor, reference: &[f32], tol: Tolerance) -> Result<()> {
    let got = out.to_vec()?;
    let e = rel_l2(&got, reference);
    if e > tol.rel_l2 {
        return Err(mm_core::Error::Other(format!(
            "{name}: relative L2 error {e:.3e} > {:.1e}",
            tol.rel_l2
        )));
    }
    Ok(())
}

fn up(b: &dyn Backend, shape: Vec<usize>, v: Vec<f32>) -> Result<Tensor> {
    b.upload(&Tensor::from_vec(shape, v)?)
}

/// `values` stored as a dense `format` weight (F32, F16 or BF16; rounded
/// to nearest).
fn dense_weight(format: WeightFormat, shape: Vec<usize>, values: &[f32]) -> Result<WeightData> {
    let bytes: Vec<u8> = match format {
        WeightFormat::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        WeightFormat::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => return WeightData::from_f32(shape, values),
    };
    WeightData::new(format, shape, mm_core::HostBytes::owned(bytes))
}

/// Dense matmul (F32, F16 and BF16 weights) over several shapes (decode
/// rows and prefill rows, odd `k`), with bias, against the reference over
/// the stored values widened to f32: f32 tolerance for every format, since
/// widening is exact and only the order of the sums differs.
pub fn check_matmul(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let shapes = [
        (1, 64, 48),
        (3, 96, 33),
        (17, 128, 70),
        (64, 256, 128),
        (2, 100, 33),
        (4, 37, 9),
        (67, 200, 40),
    ];
    for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16] {
        for &(n, k, m) in &shapes {
            let x = randv(&mut rng, n * k);
            let bias = randv(&mut rng, m);
            let wd = dense_weight(format, vec![m, k], &randv(&mut rng, m * k))?;
            let w = mm_quant::dequantize_ref(&wd)?;
            let out = b.matmul(
                &up(b, vec![n, k], x.clone())?,
                &wd,
                Some(&up(b, vec![m], bias.clone())?),
            )?;
            let reference = matmul::matmul_ref(&x, &w, Some(&bias), n, k, m);
            let label = format!("matmul {} {n}x{k}x{m}", format.name());
            check(&label, &out, &reference, tol)?;
            let out = b.matmul_rows(
                &up(b, vec![n, k], x.clone())?,
                &wd,
                Some(&up(b, vec![m], bias.clone())?),
                &mixed_kinds(n),
            )?;
            check(&format!("{label} rows"), &out, &reference, tol)?;
        }
    }
    Ok(())
}

/// Row kinds of a step with both: every third row a generated token.
fn mixed_kinds(n: usize) -> Vec<mm_core::RowKind> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                mm_core::RowKind::Generated
            } else {
                mm_core::RowKind::Prompt
            }
        })
        .collect()
}

/// Matmul for every stored weight format the backend claims, against the
/// reference over the dequantized weight.
pub fn check_matmul_formats(
    b: &dyn Backend,
    formats: &[(WeightFormat, WeightData)],
    seed: u64,
    tol: Tolerance,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for (f, w) in formats {
        let (m, k) = w.dims2()?;
        let dense = mm_quant::dequantize_ref(w)?;
        // Decode (1), small batches (5, 19) and a prefill (40: the CPU's
        // default precision runs its prefill path, 16-bit activations or
        // dequantized panels, from 24 rows).
        for n in [1usize, 5, 19, 40] {
            let x = randv(&mut rng, n * k);
            let out = b.matmul(&up(b, vec![n, k], x.clone())?, w, None)?;
            let label = match f {
                WeightFormat::Mm(mf) => format!("{} g{}", f.name(), mf.group),
                _ => f.name().to_string(),
            };
            let reference = matmul::matmul_ref(&x, &dense, None, n, k, m);
            check(&format!("matmul {label} n={n}"), &out, &reference, tol)?;
            // The same rows as a step's, prompt and generated mixed.
            let out = b.matmul_rows(&up(b, vec![n, k], x.clone())?, w, None, &mixed_kinds(n))?;
            check(&format!("matmul_rows {label} n={n}"), &out, &reference, tol)?;
        }
    }
    Ok(())
}

/// Weights of every GGML block format, `[m, k]` with `k` a multiple of 256:
/// Q4_0 … Q8_0 from the reference quantizers (`mm_quant::ggml::quantize`)
/// over uniform values, K-quants as random blocks (every quant bit random,
/// realistic f16 scales), since reference K-quantizers are not available.
pub fn ggml_weights(seed: u64) -> Result<Vec<(WeightFormat, WeightData)>> {
    use mm_backend_cpu::ops::qmatmul::testing::random_blocks;
    use WeightFormat as F;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (i, f) in F::GGML_BLOCK.into_iter().enumerate() {
        let (m, k) = (37 + 11 * i, 512);
        let bytes = match f {
            F::Q2K | F::Q3K | F::Q4K | F::Q5K | F::Q6K => {
                random_blocks(f, m, k, seed * 31 + i as u64)
            }
            _ => mm_quant::ggml::quantize(f, &randv(&mut rng, m * k))?,
        };
        out.push((
            f,
            WeightData::new(f, vec![m, k], mm_core::HostBytes::owned(bytes))?,
        ));
    }
    Ok(out)
}

/// [`check_matmul_formats`] over [`ggml_weights`] for every format the
/// backend supports.
pub fn check_matmul_ggml(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let ws: Vec<_> = ggml_weights(seed)?
        .into_iter()
        .filter(|(f, _)| b.supports(mm_core::backend::Op::Matmul, Some(*f)))
        .collect();
    check_matmul_formats(b, &ws, seed, tol)
}

/// Weights of every metal-marlin format (docs/FORMAT.md) and group size
/// (32, 64, 128, per-channel; MXFP4: 32) from the reference quantizer
/// `mm_quant::mm::quantize_rtn` over uniform values, `[m, 384]`, plus a
/// per-channel int4 weight with rows of 40 values (not whole 32-blocks)
/// and the trellis formats (`[48 | 64 | 80, 384]`, random streams as
/// [`random_weight`] makes them).
pub fn mm_weights(seed: u64) -> Result<Vec<(WeightFormat, WeightData)>> {
    use mm_quant::mm::{quantize_rtn, MmFormat, MmKind};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut formats = Vec::new();
    for kind in MmKind::ALL {
        for &g in kind.group_sizes() {
            formats.push((MmFormat::new(kind, g)?, 384));
        }
    }
    formats.push((MmFormat::new(MmKind::IntSym(4), 0)?, 40));
    // Trellis weights need 16-divisible dimensions.
    let grouped = formats.len();
    for kind in MmKind::TRELLIS {
        formats.push((MmFormat::new(kind, 0)?, 384));
    }
    for (i, (f, k)) in formats.into_iter().enumerate() {
        let w = if i >= grouped {
            // Random streams (every stream is a trellis weight): the
            // Viterbi search is not what this suite checks, and its
            // portable step is slow under emulation.
            let m = 48 + 16 * (i - grouped);
            random_weight(WeightFormat::Mm(f), m, k, seed ^ i as u64)?
        } else {
            let m = 17 + 3 * (i % 11);
            quantize_rtn(&randv(&mut rng, m * k), m, k, f)?.into_weight_data()?
        };
        out.push((w.format, w));
    }
    Ok(out)
}

/// [`check_matmul_formats`] over [`mm_weights`] for every format the
/// backend supports.
pub fn check_matmul_mm(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let ws: Vec<_> = mm_weights(seed)?
        .into_iter()
        .filter(|(f, _)| b.supports(mm_core::backend::Op::Matmul, Some(*f)))
        .collect();
    check_matmul_formats(b, &ws, seed, tol)
}

/// Embedding rows of tables in every stored format the backend takes for
/// embeddings (`formats` as for [`check_matmul_formats`]), against the
/// reference dequantization of those rows.
pub fn check_embedding_formats(
    b: &dyn Backend,
    formats: &[(WeightFormat, WeightData)],
) -> Result<()> {
    for (f, w) in formats {
        if !b.supports(mm_core::backend::Op::Embedding, Some(*f)) {
            continue;
        }
        let (m, k) = w.dims2()?;
        let ids = [0u32, (m - 1) as u32, (m / 2) as u32, 0];
        let mut reference = Vec::with_capacity(ids.len() * k);
        for &i in &ids {
            reference.extend(mm_quant::dequantize_rows_ref(
                w,
                i as usize..i as usize + 1,
            )?);
        }
        // The same values as the reference's, up to f32 rounding of s·q + o.
        check(
            &format!("embedding {} {m}x{k}", f.name()),
            &b.embedding(&ids, w)?,
            &reference,
            Tolerance::F32,
        )?;
    }
    Ok(())
}

/// The quantized-weight checks (GGML and metal-marlin formats), under `tol`
/// (usually [`Tolerance::Q8_ACTIVATIONS`]); returns the failures.
pub fn run_quantized(b: &dyn Backend, tol: Tolerance) -> Vec<String> {
    let mut fails = Vec::new();
    for seed in 0..3 {
        if let Err(e) = check_matmul_ggml(b, seed, tol) {
            fails.push(format!("matmul_ggml (seed {seed}): {e}"));
        }
        if let Err(e) = check_matmul_mm(b, seed, tol) {
            fails.push(format!("matmul_mm (seed {seed}): {e}"));
        }
        let tables = ggml_weights(seed).and_then(|g| Ok(g.into_iter().chain(mm_weights(seed)?)));
        if let Err(e) = tables.and_then(|t| check_embedding_formats(b, &t.collect::<Vec<_>>())) {
            fails.push(format!("embedding formats (seed {seed}): {e}"));
        }
    }
    fails
}

pub fn check_rms_norm(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for &(n, k) in &[(1, 64), (9, 576), (33, 100), (2, 4096), (1, 5000), (3, 30)] {
        let x = randv(&mut rng, n * k);
        let w = randv(&mut rng, k);
        let out = b.rms_norm(
            &up(b, vec![n, k], x.clone())?,
            &up(b, vec![k], w.clone())?,
            1e-5,
        )?;
        check(
            &format!("rms_norm {n}x{k}"),
            &out,
            &rms_norm::rms_norm_ref(&x, &w, 1e-5),
            tol,
        )?;
    }
    Ok(())
}

pub fn check_rope(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for &(n, heads, d, start) in &[
        (1usize, 4usize, 64usize, 700u32),
        (7, 3, 32, 0),
        (5, 2, 128, 31),
    ] {
        let x = randv(&mut rng, n * heads * d);
        let pos: Vec<u32> = (start..start + n as u32).collect();
        let inv: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32))
            .collect();
        let out = b.rope(&up(b, vec![n, heads * d], x.clone())?, d, &pos, &inv, 1.0)?;
        check(
            &format!("rope n={n} d={d}"),
            &out,
            &rope::rope_ref(&x, heads * d, d, &pos, &inv, 1.0),
            tol,
        )?;
    }
    Ok(())
}

/// Paged attention over a batch of sequences with shuffled block tables:
/// decode rows, short and long (blocked-path) prefill chunks after cached
/// keys, GQA/MQA, sliding windows, f32 and f16 stores. Keys and values go
/// in through the backend's `write_kv`; the reference reads an f32 image
/// of the stores as they hold them (f16-rounded for f16).
pub fn check_paged_attention(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    // (heads, kv heads, head_dim, block size, window, [(q_len, kv_len)])
    let cases: [(usize, usize, usize, usize, Option<usize>, &[(usize, usize)]); 10] = [
        (4, 2, 32, 4, None, &[(1, 9), (1, 1), (3, 7)]),
        // More query heads per kv head than one CPU task takes (12).
        (16, 1, 16, 8, None, &[(3, 10), (1, 5)]),
        (9, 3, 64, 16, None, &[(40, 40), (1, 33), (12, 50)]),
        (8, 1, 16, 8, Some(5), &[(1, 20), (9, 30), (2, 2)]),
        (6, 3, 32, 4, Some(7), &[(40, 45), (1, 12)]),
        (2, 2, 64, 16, Some(45), &[(33, 44), (70, 80)]),
        // Multi-head latent attention's absorbed form: heads 576 wide
        // over one shared head.
        (4, 1, 576, 16, None, &[(1, 20), (5, 21)]),
        // GLM-4.7-Flash's absorbed form (20 heads over one): decode rows
        // whose keys span several tiles and splits (the CUDA v2 kernel),
        // next to prompt rows.
        (20, 1, 576, 16, None, &[(1, 300), (1, 1100), (2, 70)]),
        // More heads per KV head than one GPU block takes (36: 3 groups),
        // and a window over a long decode row.
        (36, 1, 64, 8, None, &[(1, 260), (5, 90)]),
        (8, 2, 128, 16, Some(200), &[(1, 700), (1, 130), (3, 3)]),
    ];
    for (h, hkv, d, bs, window, seqs) in cases {
        for dtype in [KvDType::F32, KvDType::F16] {
            let kw = hkv * d;
            let need: usize = seqs.iter().map(|&(_, kv)| kv.div_ceil(bs)).sum();
            let blocks = need + 5;
            // A shuffled pool of blocks, handed out in order.
            let mut pool: Vec<u32> = (0..blocks as u32).collect();
            for i in (1..pool.len()).rev() {
                pool.swap(i, rng.gen_range(0..=i));
            }
            let mut batch = PagedBatch {
                block_size: bs,
                ..Default::default()
            };
            let mut q_start = 0;
            for &(q_len, kv_len) in seqs {
                let n = kv_len.div_ceil(bs);
                let table_start = batch.block_tables.len();
                batch.block_tables.extend(pool.drain(..n));
                batch.seqs.push(SeqSpan {
                    q_start,
                    q_len,
                    kv_len,
                    table_start,
                });
                q_start += q_len;
            }
            let slots_n = blocks * bs;
            let mut ks = b.kv_store(slots_n, kw, dtype)?;
            let mut vs = b.kv_store(slots_n, kw, dtype)?;
            let (mut kimg, mut vimg) = (vec![0.0f32; slots_n * kw], vec![0.0f32; slots_n * kw]);
            for s in &batch.seqs {
                let slots: Vec<u32> = (0..s.kv_len).map(|t| batch.slot(s, t) as u32).collect();
                let (kr, vr) = (
                    randv(&mut rng, s.kv_len * kw),
                    randv(&mut rng, s.kv_len * kw),
                );
                b.write_kv(&mut ks, &slots, &up(b, vec![s.kv_len, kw], kr.clone())?)?;
                b.write_kv(&mut vs, &slots, &up(b, vec![s.kv_len, kw], vr.clone())?)?;
                let f16 = dtype == KvDType::F16;
                write_kv::write_kv_ref(&mut kimg, kw, &slots, &kr, f16);
                write_kv::write_kv_ref(&mut vimg, kw, &slots, &vr, f16);
            }
            let rows = batch.rows();
            let q = randv(&mut rng, rows * h * d);
            let p = PagedParams {
                n_heads: h,
                n_kv_heads: hkv,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
                window,
            };
            let out =
                b.paged_attention(&up(b, vec![rows, h * d], q.clone())?, &ks, &vs, &batch, &p)?;
            check(
                &format!(
                    "paged attention h={h}/{hkv} d={d} bs={bs} window={window:?} {} seqs {seqs:?}",
                    dtype.name()
                ),
                &out,
                &attention::paged_attention_ref(&q, &kimg, &vimg, &batch, &p),
                tol,
            )?;
        }
    }
    Ok(())
}

pub fn check_elementwise(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for n in [7usize, 4096, 40_000] {
        let (g, u) = (randv(&mut rng, n), randv(&mut rng, n));
        let (tg, tu) = (up(b, vec![n], g.clone())?, up(b, vec![n], u.clone())?);
        check(
            "silu_mul",
            &b.silu_mul(&tg, &tu)?,
            &activation::silu_mul_ref(&g, &u),
            tol,
        )?;
        check("add", &b.add(&tg, &tu)?, &activation::add_ref(&g, &u), tol)?;
    }
    Ok(())
}

pub fn check_embedding(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (vocab, k) = (50, 64);
    let table = randv(&mut rng, vocab * k);
    let ids = [3u32, 0, 49, 3, 17];
    let out = b.embedding(&ids, &WeightData::from_f32(vec![vocab, k], &table)?)?;
    check(
        "embedding",
        &out,
        &embedding::embedding_ref(&ids, &table, k),
        tol,
    )?;
    Ok(())
}

/// `write_kv` refuses bad input without touching the store: a slot past
/// the end, a row count that does not match the slots, a wrong width.
/// (What it writes is checked through [`check_paged_attention`].)
pub fn check_write_kv(b: &dyn Backend, seed: u64, _tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (slots, c) = (10, 24);
    let mut st = b.kv_store(slots, c, KvDType::F32)?;
    let src = up(b, vec![3, c], randv(&mut rng, 3 * c))?;
    b.write_kv(&mut st, &[1, 9, 4], &src)?;
    let bad: [(&[u32], &Tensor); 2] = [(&[1, 10, 4], &src), (&[1, 2], &src)];
    for (sl, x) in bad {
        if b.write_kv(&mut st, sl, x).is_ok() {
            return Err(mm_core::Error::Other(format!(
                "write_kv of {:?} rows to slots {sl:?} of {slots} must fail",
                x.shape()
            )));
        }
    }
    let wide = up(b, vec![1, c + 1], randv(&mut rng, c + 1))?;
    if b.write_kv(&mut st, &[0], &wide).is_ok() {
        return Err(mm_core::Error::Other(
            "write_kv of a wrong width must fail".into(),
        ));
    }
    Ok(())
}

/// Runs every check; returns the failures (empty when the backend conforms).
pub fn run_all(b: &dyn Backend, tol: Tolerance) -> Vec<String> {
    run_all_with(b, tol, &[])
}

/// [`run_all`] with the tolerance of some checks (by name: `matmul`,
/// `rms_norm`, …) given apart. An op the backend does not support is a
/// failure here.
pub fn run_all_with(b: &dyn Backend, tol: Tolerance, apart: &[(&str, Tolerance)]) -> Vec<String> {
    let r = run_supported(b, tol, apart);
    let missing = r
        .skipped
        .iter()
        .map(|name| format!("{name}: the backend does not support it"));
    r.fails.into_iter().chain(missing).collect()
}

/// What [`run_supported`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per failed check and seed.
    pub fails: Vec<String>,
    /// Checks not run: their op (or its dense f32 weights) is not supported.
    pub skipped: Vec<&'static str>,
}

/// Every check whose op the backend supports (a backend still growing,
/// whose device sends the rest to the CPU), with the tolerances of
/// [`run_all_with`].
pub fn run_supported(b: &dyn Backend, tol: Tolerance, apart: &[(&str, Tolerance)]) -> Report {
    use mm_core::backend::Op;
    type Check = fn(&dyn Backend, u64, Tolerance) -> Result<()>;
    let dense = [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16];
    let checks: [(&str, Check, bool); 12] = [
        (
            "matmul",
            check_matmul,
            dense.iter().all(|&f| b.supports(Op::Matmul, Some(f))),
        ),
        ("rms_norm", check_rms_norm, b.supports(Op::RmsNorm, None)),
        ("rope", check_rope, b.supports(Op::Rope, None)),
        (
            "paged_attention",
            check_paged_attention,
            b.supports(Op::Attention, None) && b.supports(Op::WriteKv, None),
        ),
        (
            "elementwise",
            check_elementwise,
            b.supports(Op::SiluMul, None) && b.supports(Op::Add, None),
        ),
        (
            "embedding",
            check_embedding,
            b.supports(Op::Embedding, Some(WeightFormat::F32)),
        ),
        ("write_kv", check_write_kv, b.supports(Op::WriteKv, None)),
        (
            "gather_kv",
            check_gather_kv,
            b.supports(Op::GatherKv, None) && b.supports(Op::WriteKv, None),
        ),
        (
            "head_matmul",
            check_head_matmul,
            b.supports(Op::HeadMatmul, None),
        ),
        (
            "slice_cols",
            check_slice_cols,
            b.supports(Op::SliceCols, None),
        ),
        (
            "concat_cols",
            check_concat_cols,
            b.supports(Op::ConcatCols, None),
        ),
        ("sample", check_sample, b.supports_sampling()),
    ];
    let mut r = Report::default();
    for (name, f, supported) in checks {
        if !supported {
            r.skipped.push(name);
            continue;
        }
        let tol = apart
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(tol, |&(_, t)| t);
        for seed in 0..3 {
            if let Err(e) = f(b, seed, tol) {
                r.fails.push(format!("{name} (seed {seed}): {e}"));
            }
        }
    }
    r
}

/// A `m × k` weight of format `f` with random content, as the kernel
/// benchmarks time them: random codes (no e4m3 NaN among fp8 codes),
/// scales in 1e-3..2e-2 and random zero-points for metal-marlin formats;
/// random blocks for GGML formats; values in -1..1 for dense ones.
pub fn random_weight(f: WeightFormat, m: usize, k: usize, seed: u64) -> Result<WeightData> {
    use mm_core::weight::MmKind;
    use mm_core::HostBytes;
    let mut rng = StdRng::seed_from_u64(seed);
    match f {
        WeightFormat::Mm(mf) if mf.kind.is_trellis() => {
            // Any stream is a valid trellis weight; sv as a quantizer sets
            // it (about 1/147.8 of a row's scale), su signs.
            let sizes = mf.part_sizes(m, k)?;
            let codes: Vec<u8> = (0..sizes.codes).map(|_| rng.gen()).collect();
            let mut v: Vec<f32> = (0..m).map(|_| rng.gen_range(1e-5f32..1e-4)).collect();
            v.extend((0..k).map(|_| if rng.gen::<bool>() { 1.0f32 } else { -1.0 }));
            let scales: Vec<u8> = v
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            WeightData::new_mm(
                mf,
                vec![m, k],
                HostBytes::owned(codes),
                HostBytes::owned(scales),
                None,
            )
        }
        WeightFormat::Mm(mf) => {
            let groups = mf.groups_per_row(k);
            let fp8 = mf.kind == MmKind::Fp8E4M3;
            let codes: Vec<u8> = (0..m * mf.code_bytes(k))
                .map(|_| rng.gen::<u8>())
                .map(|c| if fp8 && c & 0x7f == 0x7f { c ^ 1 } else { c })
                .collect();
            let scales: Vec<u8> = (0..m * groups)
                .flat_map(|_| half::f16::from_f32(rng.gen_range(1e-3..2e-2)).to_le_bytes())
                .collect();
            let zeros = mf
                .kind
                .has_zeros()
                .then(|| HostBytes::owned((0..m * groups).map(|_| rng.gen()).collect()));
            WeightData::new_mm(
                mf,
                vec![m, k],
                HostBytes::owned(codes),
                HostBytes::owned(scales),
                zeros,
            )
        }
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            let v: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let bytes: Vec<u8> = match f {
                WeightFormat::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                WeightFormat::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
            WeightData::new(f, vec![m, k], HostBytes::owned(bytes))
        }
        _ => {
            let bytes = mm_backend_cpu::ops::qmatmul::testing::random_blocks(f, m, k, seed);
            WeightData::new(f, vec![m, k], HostBytes::owned(bytes))
        }
    }
}
