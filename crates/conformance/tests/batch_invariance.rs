//! Batch invariance on the CPU: a row's result is the same bits whatever
//! else shares its step. Linear layers (every GGML and metal-marlin format,
//! default precision, prompt and generated rows mixed) and paged attention
//! (one prompt computed whole, in chunks, and beside other sequences).

use mm_backend_cpu::ops::qmatmul::testing::random_dense;
use mm_backend_cpu::{ActPrecision, CpuBackend};
use mm_conformance::{ggml_weights, mm_weights};
use mm_core::{
    Backend, HostBytes, KvDType, PagedBatch, PagedParams, RowKind, SeqSpan, Tensor, WeightData,
    WeightFormat,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randv(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn t(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape, v).unwrap()
}

/// Every format, the three CPU precisions (default, exact, one 8-bit pass).
#[test]
fn linear_rows_do_not_depend_on_the_batch() {
    for b in [
        CpuBackend::new(),
        CpuBackend::exact(),
        CpuBackend::with_activations(ActPrecision::Int8),
    ] {
        linear_rows(&b);
    }
}

fn linear_rows(b: &CpuBackend) {
    let mut rng = StdRng::seed_from_u64(7);
    let n = 30;
    // Generated rows every third row, the rest prompt rows.
    let kinds: Vec<RowKind> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                RowKind::Generated
            } else {
                RowKind::Prompt
            }
        })
        .collect();
    let dense = [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16]
        .into_iter()
        .map(|f| {
            let (m, k) = (37, 200);
            let w = WeightData::new(f, vec![m, k], HostBytes::owned(random_dense(f, m * k, 2)));
            (f, w.unwrap())
        });
    let weights: Vec<_> = ggml_weights(1)
        .unwrap()
        .into_iter()
        .chain(mm_weights(1).unwrap())
        .chain(dense)
        .collect();
    for (f, w) in &weights {
        let (m, k) = w.dims2().unwrap();
        let x = randv(&mut rng, n * k);
        let full = b
            .matmul_rows(&t(vec![n, k], x.clone()), w, None, &kinds)
            .unwrap()
            .to_vec()
            .unwrap();
        // Alone, and in chunks of 7 (other kinds mixes, other row counts).
        for chunk in [1usize, 7] {
            for i0 in (0..n).step_by(chunk) {
                let i1 = (i0 + chunk).min(n);
                let part = b
                    .matmul_rows(
                        &t(vec![i1 - i0, k], x[i0 * k..i1 * k].to_vec()),
                        w,
                        None,
                        &kinds[i0..i1],
                    )
                    .unwrap()
                    .to_vec()
                    .unwrap();
                for i in i0..i1 {
                    let (a, z) = (&full[i * m..(i + 1) * m], &part[(i - i0) * m..][..m]);
                    assert!(
                        a.iter().zip(z).all(|(p, q)| p.to_bits() == q.to_bits()),
                        "{b:?}: {} {:?} row {i} ({:?}) differs computed with {} rows",
                        f.name(),
                        w.shape,
                        kinds[i],
                        i1 - i0
                    );
                }
            }
        }
    }
}

/// One sequence's 45 keys and queries; its attention rows computed in one
/// step, in chunks of 7, 1, 20 and 17 rows, and beside two other sequences.
#[test]
fn attention_rows_do_not_depend_on_chunks_or_neighbours() {
    let b = CpuBackend::new();
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in [KvDType::F32, KvDType::F16] {
        let (h, hkv, d, bs) = (6usize, 2usize, 64usize, 16usize);
        let kw = hkv * d;
        let len = 45;
        let blocks = 16;
        let mut ks = b.kv_store(blocks * bs, kw, dtype).unwrap();
        let mut vs = b.kv_store(blocks * bs, kw, dtype).unwrap();
        // Our sequence in blocks 5, 2, 9; a neighbour in 0, 1, 3, 4.
        let ours: Vec<u32> = vec![5, 2, 9];
        let theirs: Vec<u32> = vec![0, 1, 3, 4];
        for (table, n) in [(&ours, len), (&theirs, 60)] {
            let slots: Vec<u32> = (0..n)
                .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
                .collect();
            b.write_kv(&mut ks, &slots, &t(vec![n, kw], randv(&mut rng, n * kw)))
                .unwrap();
            b.write_kv(&mut vs, &slots, &t(vec![n, kw], randv(&mut rng, n * kw)))
                .unwrap();
        }
        let q = randv(&mut rng, len * h * d);
        let p = PagedParams {
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: d,
            scale: 0.125,
            window: None,
        };
        let span = |q_start, q_len, kv_len, table_start| SeqSpan {
            q_start,
            q_len,
            kv_len,
            table_start,
        };
        let run = |batch: &PagedBatch, qs: Vec<f32>| {
            let rows = batch.rows();
            b.paged_attention(&t(vec![rows, h * d], qs), &ks, &vs, batch, &p)
                .unwrap()
                .to_vec()
                .unwrap()
        };
        let whole = run(
            &PagedBatch {
                seqs: vec![span(0, len, len, 0)],
                block_tables: ours.clone(),
                block_size: bs,
            },
            q.clone(),
        );
        let w = h * d;
        let mut start = 0;
        for c in [7usize, 1, 20, 17] {
            // This chunk after a neighbour decoding one token.
            let mut qs = randv(&mut rng, w);
            qs.extend_from_slice(&q[start * w..(start + c) * w]);
            let mut tables = theirs.clone();
            tables.extend_from_slice(&ours);
            let batch = PagedBatch {
                seqs: vec![span(0, 1, 60, 0), span(1, c, start + c, theirs.len())],
                block_tables: tables,
                block_size: bs,
            };
            let got = run(&batch, qs);
            for r in 0..c {
                let (a, z) = (&whole[(start + r) * w..][..w], &got[(1 + r) * w..][..w]);
                assert!(
                    a.iter().zip(z).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{} row {} differs in a chunk of {c}",
                    dtype.name(),
                    start + r
                );
            }
            start += c;
        }
    }
}

/// MLA's per-head matmul: each row of a 21-row call equals the same row
/// alone, bit for bit.
#[test]
fn head_matmul_rows_do_not_depend_on_the_batch() {
    let b = CpuBackend::new();
    let mut rng = StdRng::seed_from_u64(11);
    let (n, h, k, m) = (21, 3, 40, 17);
    let x = randv(&mut rng, n * h * k);
    let w = t(vec![h, m, k], randv(&mut rng, h * m * k));
    let all = b
        .head_matmul(&t(vec![n, h * k], x.clone()), &w)
        .unwrap()
        .to_vec()
        .unwrap();
    for r in 0..n {
        let one = b
            .head_matmul(&t(vec![1, h * k], x[r * h * k..][..h * k].to_vec()), &w)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(one, all[r * h * m..][..h * m], "row {r}");
    }
}
