//! Block-wise tuning on the tiny fixtures (HF-generated random models):
//! the f32 block reproduces the model's own layer, its gradients match
//! central differences, and training lowers the held-out loss of an
//! int2 layer while writing exactly the weights it trained.

use std::path::Path;
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, Tensor};
use mm_engine::tune::{held_out, tune_block, Block, Param, TuneOptions, LINEARS};
use mm_formats::open_source;
use mm_models::{load_model, DecoderModel};
use mm_quant::ste::FakeQuant;
use mm_quant::{quantize_rtn, MmFormat};

fn model(name: &str) -> DecoderModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    let src = open_source(&dir).unwrap();
    // The f32 path: the tuning block computes in f32 (the default
    // precision rounds dense prompt rows to 16-bit operands).
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::exact());
    load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {}).unwrap()
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 300) as u32
        })
        .collect()
}

fn weights(m: &DecoderModel, l: usize) -> Vec<Vec<f32>> {
    LINEARS
        .iter()
        .map(|n| {
            let lin = m
                .linears()
                .into_iter()
                .find(|x| x.name() == format!("model.layers.{l}.{n}.weight"))
                .unwrap();
            mm_quant::dequantize_ref(&lin.weight).unwrap()
        })
        .collect()
}

fn refs(w: &[Vec<f32>]) -> [&[f32]; 7] {
    std::array::from_fn(|i| w[i].as_slice())
}

/// The model's layer output for `x` (positions 0.., empty cache).
fn layer_out(m: &DecoderModel, l: usize, x: &[f32]) -> Vec<f32> {
    let e = m.config.hidden_size;
    let t = x.len() / e;
    // f32 KV, as the tuning block computes.
    let mut cache = m.new_cache_with(t, mm_core::KvDType::F32).unwrap();
    let pos: Vec<u32> = (0..t as u32).collect();
    m.forward_layer(
        l,
        &Tensor::from_vec(vec![t, e], x.to_vec()).unwrap(),
        &pos,
        &mut cache,
    )
    .unwrap()
    .to_vec()
    .unwrap()
}

#[test]
fn block_forward_is_the_models_layer() {
    for name in ["llama", "qwen2", "qwen3", "llama-mqa-tied"] {
        let m = model(name);
        let x = m.embed(&tokens(20, 3)).unwrap().to_vec().unwrap();
        let x = layer_out(&m, 0, &x);
        let block = Block::from_model(&m, 1).unwrap();
        let w = weights(&m, 1);
        let (out, _) = block.forward(&refs(&w), &x).unwrap();
        let want = layer_out(&m, 1, &x);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = out
            .iter()
            .zip(&want)
            .fold(0f32, |a, (o, w)| a.max((o - w).abs()));
        assert!(
            err <= 2e-5 * scale,
            "{name}: max error {err} (scale {scale})"
        );
    }
}

/// `L = Σ out·c`: its gradient by the backward pass against central
/// differences, for entries of every weight (f64 sums, step 1e-2).
#[test]
fn gradients_match_central_differences() {
    for name in ["llama", "qwen2", "qwen3"] {
        let m = model(name);
        let x = m.embed(&tokens(12, 5)).unwrap().to_vec().unwrap();
        let block = Block::from_model(&m, 0).unwrap();
        let mut w = weights(&m, 0);
        let c: Vec<f32> = tokens(x.len(), 9)
            .iter()
            .map(|&v| v as f32 / 150.0 - 1.0)
            .collect();
        let loss = |w: &[Vec<f32>]| -> f64 {
            let (out, _) = block.forward(&refs(w), &x).unwrap();
            out.iter().zip(&c).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let (_, tape) = block.forward(&refs(&w), &x).unwrap();
        let grads = block.backward(&refs(&w), &tape, &c);
        for (i, g) in grads.iter().enumerate() {
            let gmax = g.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
            assert!(gmax > 0.0, "{name} {}: zero gradient", LINEARS[i]);
            // The largest entry and a spread of others.
            let top = (0..g.len())
                .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                .unwrap();
            for j in [top, 0, g.len() / 3, g.len() / 2 + 7, g.len() - 1] {
                let h = 1e-2f32;
                let orig = w[i][j];
                w[i][j] = orig + h;
                let lp = loss(&w);
                w[i][j] = orig - h;
                let lm = loss(&w);
                w[i][j] = orig;
                let num = (lp - lm) / (2.0 * h as f64);
                let err = (num - g[j] as f64).abs();
                assert!(
                    err <= 1e-2 * gmax + 1e-3,
                    "{name} {}[{j}]: backward {} vs difference {num} (largest {gmax})",
                    LINEARS[i],
                    g[j]
                );
            }
        }
    }
}

#[test]
fn tuning_an_int2_layer_lowers_the_held_out_loss() {
    let m = model("llama");
    let fmt = MmFormat::parse("int2-asym", 32).unwrap();
    let block = Block::from_model(&m, 0).unwrap();
    let w = weights(&m, 0);
    let windows = 8;
    let inputs: Vec<Vec<f32>> = (0..windows)
        .map(|i| m.embed(&tokens(32, 100 + i)).unwrap().to_vec().unwrap())
        .collect();
    let targets: Vec<Vec<f32>> = inputs.iter().map(|x| layer_out(&m, 0, x)).collect();
    let mut params: Vec<Param> = w
        .iter()
        .zip(block.shapes())
        .map(|(w, (r, c))| {
            Param::Tuned(FakeQuant::from_quantized(&quantize_rtn(w, r, c, fmt).unwrap()).unwrap())
        })
        .collect();
    // Measured on this fixture (7 training windows of 32 random tokens):
    // 0.257 -> 0.171 at these rates; weights alone overfit it.
    let opts = TuneOptions {
        epochs: 12,
        lr: 0.01,
        scale_lr: 0.01,
    };
    let report = tune_block(&block, &mut params, &inputs, &targets, &opts, &|_, _| {}).unwrap();
    assert!(
        report.val_after < 0.8 * report.val_before,
        "held-out loss {} -> {}",
        report.val_before,
        report.val_after
    );
    assert!(report.train_last < report.train_first);
    // What is kept is what gets written: the stored weights decode to the
    // values whose held-out loss was reported.
    let stored: Vec<Vec<f32>> = params
        .iter()
        .map(|p| match p {
            Param::Tuned(f) => f.to_quantized().unwrap().dequantize().unwrap(),
            Param::Fixed(_) => unreachable!(),
        })
        .collect();
    let n_val = held_out(windows as usize);
    let val: f64 = (windows as usize - n_val..windows as usize)
        .map(|i| {
            let (out, _) = block.forward(&refs(&stored), &inputs[i]).unwrap();
            out.iter()
                .zip(&targets[i])
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / out.len() as f64
        })
        .sum::<f64>()
        / n_val as f64;
    assert!(
        (val - report.val_after).abs() <= 1e-9 * val.max(1e-30) + 1e-12,
        "{val} vs {}",
        report.val_after
    );
}

#[test]
fn bad_inputs_are_errors() {
    let m = model("llama");
    let block = Block::from_model(&m, 0).unwrap();
    let w = weights(&m, 0);
    assert!(block.forward(&refs(&w), &[0.0; 63]).is_err());
    let mut short = w.clone();
    short[2].pop();
    assert!(block.forward(&refs(&short), &[0.0; 64]).is_err());
    assert!(Block::from_model(&m, 9).is_err());
    let mut params: Vec<Param> = w.into_iter().map(Param::Fixed).collect();
    let x = vec![vec![0.1f32; 64 * 4]];
    let err = tune_block(
        &block,
        &mut params,
        &x,
        &x,
        &TuneOptions::default(),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("at least 2"), "{err}");
    let x2 = vec![vec![0.1f32; 64 * 4], vec![0.1f32; 64 * 4]];
    let bad = TuneOptions {
        lr: f32::NAN,
        ..TuneOptions::default()
    };
    assert!(tune_block(&block, &mut params, &x2, &x2, &bad, &|_, _| {}).is_err());
}
