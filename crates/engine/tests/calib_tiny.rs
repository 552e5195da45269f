//! Calibration capture on the tiny Llama fixture: which layers get a
//! Hessian, that it is `2·XᵀX/n` of exactly the inputs the layer saw, that
//! GPTQ with it beats RTN on those inputs, and that the model is unchanged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, Tensor};
use mm_engine::calib::{
    calibration_windows, collect_hessians, names_filter, stage_of, CalibOptions, SequentialCalib,
    STAGES,
};
use mm_formats::{open_source, WeightSource};
use mm_models::{load_model, DecoderModel, LinearObserver};
use mm_quant::gptq::{gptq_quantize_weight, GptqOptions};
use mm_quant::{dequantize_ref, quantize_rtn, MmFormat};

fn tiny() -> (Box<dyn WeightSource>, DecoderModel) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama");
    let src = open_source(&dir).unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
    let model = load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {}).unwrap();
    (src, model)
}

fn tokens(n: usize) -> Vec<u32> {
    let mut s = 99u64;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 320) as u32
        })
        .collect()
}

fn opts() -> CalibOptions {
    CalibOptions {
        window: 32,
        max_windows: 4,
        min_tokens: 128,
        filter: None,
    }
}

#[test]
fn hessians_are_the_inputs_gram_matrices() {
    let (src, mut model) = tiny();
    let toks = tokens(200);
    let probe: Vec<u32> = toks[..9].to_vec();
    let before = {
        let mut c = model.new_cache_with(16, mm_core::KvDType::F32).unwrap();
        model
            .forward(&probe, &mut c, true)
            .unwrap()
            .to_vec()
            .unwrap()
    };
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let hessians = collect_hessians(&mut model, &toks, &opts(), &move |d, t| {
        c.lock().unwrap().push((d, t))
    })
    .unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    );
    // Every decoder-layer linear, not the LM head.
    let mut names: Vec<&str> = hessians.keys().map(|s| s.as_str()).collect();
    names.sort();
    assert_eq!(names.len(), 14);
    assert!(names.iter().all(|n| n.starts_with("model.layers.")));
    assert!(hessians.values().all(|h| h.n_samples() == 4 * 32));

    // Recompute from raw inputs captured on the same windows.
    let seen: Arc<Mutex<HashMap<String, Vec<f32>>>> = Arc::default();
    let s = seen.clone();
    let observer: LinearObserver = Arc::new(move |name: &str, x: &Tensor| {
        s.lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .extend(x.to_vec()?);
        Ok(())
    });
    model.set_linear_observer(Some(observer));
    for w in calibration_windows(&toks, 32, 4, 128).unwrap() {
        let mut c = model.new_cache_with(32, mm_core::KvDType::F32).unwrap();
        model.forward(w, &mut c, false).unwrap();
    }
    model.set_linear_observer(None);
    let seen = seen.lock().unwrap();
    for (name, h) in &hessians {
        let x = &seen[name];
        let cols = h.cols();
        let n = x.len() / cols;
        assert_eq!(n, h.n_samples(), "{name}");
        for i in 0..cols {
            for j in 0..cols {
                let want = 2.0
                    * (0..n)
                        .map(|t| x[t * cols + i] as f64 * x[t * cols + j] as f64)
                        .sum::<f64>()
                    / n as f64;
                let got = h.get(i, j);
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{name} H[{i}][{j}] = {got}, want {want}"
                );
            }
        }
    }
    let q = &hessians["model.layers.1.self_attn.q_proj.weight"];
    assert_eq!(q, &hessians["model.layers.1.self_attn.v_proj.weight"]);

    // GPTQ lowers the calibration objective against RTN on every layer.
    let fmt = MmFormat::parse("int4", 32).unwrap();
    for (name, h) in &hessians {
        let w = src.tensor(name).unwrap();
        let wf = dequantize_ref(&w).unwrap();
        let (rows, cols) = (w.shape[0], w.shape[1]);
        let (g, _) = gptq_quantize_weight(&w, h, fmt, &GptqOptions::default()).unwrap();
        let r = quantize_rtn(&wf, rows, cols, fmt).unwrap();
        let e_g = h.output_error(&wf, &g.dequantize().unwrap(), rows).unwrap();
        let e_r = h.output_error(&wf, &r.dequantize().unwrap(), rows).unwrap();
        assert!(e_g < e_r, "{name}: GPTQ {e_g} vs RTN {e_r}");
    }

    // The observer is gone and the model computes what it did before.
    let mut c = model.new_cache_with(16, mm_core::KvDType::F32).unwrap();
    let after = model
        .forward(&probe, &mut c, true)
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(before
        .iter()
        .zip(&after)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn calibration_errors() {
    let (_, mut model) = tiny();
    let e = collect_hessians(&mut model, &tokens(100), &opts(), &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("calibration text too short: 100 tokens, need ≥ 128"),
        "{e}"
    );
    let o = CalibOptions {
        filter: Some(Arc::new(|_: &str| false)),
        ..opts()
    };
    let e = collect_hessians(&mut model, &tokens(200), &o, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("captured no linear layer"), "{e}");
    let o = CalibOptions {
        window: 1024,
        min_tokens: 0,
        ..opts()
    };
    let e = collect_hessians(&mut model, &tokens(2000), &o, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds the model's context length 512"), "{e}");
    // Only the selected layers, the LM head included when asked for.
    let o = CalibOptions {
        filter: Some(Arc::new(|n: &str| {
            n.ends_with("down_proj.weight") || n == "lm_head.weight"
        })),
        ..opts()
    };
    let h = collect_hessians(&mut model, &tokens(200), &o, &|_, _| {}).unwrap();
    let mut names: Vec<&String> = h.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "lm_head.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.mlp.down_proj.weight"
        ]
    );
    // The head sees only each window's last position.
    assert_eq!(h["lm_head.weight"].n_samples(), 4);
}

fn max_rel_diff(a: &mm_quant::gptq::Hessian, b: &mm_quant::gptq::Hessian) -> f64 {
    let scale = b.matrix().iter().fold(0f64, |m, v| m.max(v.abs()));
    a.matrix()
        .iter()
        .zip(b.matrix())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Sequential calibration sees, for layer `l`, exactly what a whole-model
/// pass sees once layers `0..l` (and earlier stages of `l`) hold their
/// quantized weights: layer by layer equals the model's own forward.
#[test]
fn sequential_hessians_follow_the_quantized_layers() {
    let (_, mut model) = tiny();
    let toks = tokens(200);
    let one_pass = collect_hessians(&mut model, &toks, &opts(), &|_, _| {}).unwrap();
    let mut seq = SequentialCalib::new(&model, &toks, &opts()).unwrap();
    assert_eq!(seq.windows(), 4);
    let fmt = MmFormat::parse("int4", 32).unwrap();
    let device = model.device().clone();
    let mut quantized = Vec::new();
    for l in 0..model.num_layers() {
        assert_eq!(seq.next_layer(), l);
        for stage in 0..STAGES {
            let names: Vec<String> = one_pass
                .keys()
                .filter(|n| stage_of(n) == Some((l, stage)))
                .cloned()
                .collect();
            // Stage 1 holds MLA's up-projections: none in this dense model.
            if stage == 1 {
                assert!(names.is_empty(), "layer {l} stage 1: {names:?}");
                continue;
            }
            assert!(!names.is_empty(), "layer {l} stage {stage}");
            let hs = seq
                .hessians(&mut model, names_filter(names.clone()))
                .unwrap();
            assert_eq!(hs.len(), names.len());
            // The same inputs through the whole model, as it is now.
            let whole = collect_hessians(
                &mut model,
                &toks,
                &CalibOptions {
                    filter: Some(names_filter(names.clone())),
                    ..opts()
                },
                &|_, _| {},
            )
            .unwrap();
            for n in &names {
                let d = max_rel_diff(&hs[n], &whole[n]);
                assert!(
                    d < 1e-5,
                    "{n}: sequential vs whole-model pass differ by {d}"
                );
                // Before anything is quantized both equal the one-pass Hessian;
                // after, the inputs have moved.
                let moved = max_rel_diff(&hs[n], &one_pass[n]);
                if quantized.is_empty() {
                    assert!(moved < 1e-5, "{n}: {moved}");
                } else if l > 0 {
                    assert!(moved > 1e-4, "{n}: inputs did not move ({moved})");
                }
            }
            // Quantize this stage (RTN) and put it into the model.
            for n in &names {
                let lin = model.linear_mut(n).unwrap();
                let (rows, cols) = (lin.weight.shape[0], lin.weight.shape[1]);
                let w = dequantize_ref(&lin.weight).unwrap();
                let q = quantize_rtn(&w, rows, cols, fmt).unwrap();
                let wd = q.into_weight_data().unwrap();
                lin.set_weight(wd, &device).unwrap();
                quantized.push(n.clone());
            }
        }
        seq.advance(&mut model).unwrap();
    }
    let e = seq.advance(&mut model).unwrap_err().to_string();
    assert!(e.contains("past the last layer"), "{e}");
}

/// The inputs of weight `name` in each window of a whole-model pass.
fn inputs_of(model: &mut DecoderModel, windows: &[&[u32]], name: &str) -> Vec<(usize, Vec<f32>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let want = name.to_string();
    let observer: LinearObserver = Arc::new(move |n: &str, x: &Tensor| {
        if n == want {
            sink.lock().unwrap().push((x.dims2()?.0, x.to_vec()?));
        }
        Ok(())
    });
    model.set_linear_observer(Some(observer));
    for w in windows {
        let mut cache = model
            .new_cache_with(w.len(), mm_core::KvDType::F32)
            .unwrap();
        model.forward(w, &mut cache, false).unwrap();
    }
    model.set_linear_observer(None);
    let v = std::mem::take(&mut *seen.lock().unwrap());
    v
}

/// Per window, the residual stream at the input of layer `l` and between
/// its attention and MLP blocks, layer by layer from the embedding.
fn streams_at(model: &DecoderModel, windows: &[&[u32]], l: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    windows
        .iter()
        .map(|w| {
            let positions: Vec<u32> = (0..w.len() as u32).collect();
            let mut cache = model
                .new_cache_with(w.len(), mm_core::KvDType::F32)
                .unwrap();
            let mut h = model.embed(w).unwrap();
            for j in 0..l {
                h = model.forward_layer(j, &h, &positions, &mut cache).unwrap();
            }
            let (mid, _) = model
                .forward_layer_mid(l, &h, &positions, &mut cache)
                .unwrap();
            (h.to_vec().unwrap(), mid.to_vec().unwrap())
        })
        .collect()
}

fn assert_matrix_close(n: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{n}: no error at all");
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-5 * scale, "{n}: {diff} vs {scale}");
}

/// With error propagation, each weight's cross-product pairs the inputs
/// the *unquantized* model gives it with those of the model as it is now,
/// window by window: zero until something is quantized, then exactly what
/// two whole-model passes give.
#[test]
fn error_propagation_pairs_reference_and_quantized_inputs() {
    let (_, mut reference) = tiny();
    let (_, mut model) = tiny();
    let toks = tokens(200);
    let windows = calibration_windows(&toks, 32, 4, 128).unwrap();
    let names: Vec<String> = collect_hessians(&mut model, &toks, &opts(), &|_, _| {})
        .unwrap()
        .into_keys()
        .collect();
    let mut seq = SequentialCalib::new(&model, &toks, &opts())
        .unwrap()
        .with_reference();
    let fmt = MmFormat::parse("int3", 32).unwrap();
    let device = model.device().clone();
    let mut quantized = 0;
    for l in 0..model.num_layers() {
        for stage in 0..STAGES {
            let stage_names: Vec<String> = names
                .iter()
                .filter(|n| stage_of(n) == Some((l, stage)))
                .cloned()
                .collect();
            // Stage 1 holds MLA's up-projections: none in this dense model.
            if stage_names.is_empty() {
                assert_eq!(stage, 1, "layer {l}: stage {stage} is empty");
                continue;
            }
            let stats = seq
                .calibrate(&mut model, names_filter(stage_names.clone()))
                .unwrap();
            for n in &stage_names {
                let cross = stats[n].cross.as_ref().expect("a cross-product");
                let mut expect = mm_quant::gptq::ErrorCross::new(cross.cols());
                for ((rows, x), (_, xq)) in inputs_of(&mut reference, &windows, n)
                    .iter()
                    .zip(&inputs_of(&mut model, &windows, n))
                {
                    expect.add_rows(x, xq, *rows).unwrap();
                }
                assert_eq!(cross.n_samples(), 4 * 32);
                // o_proj adds to the layer's input stream, down_proj to the
                // stream between the blocks; the others feed products.
                let point = match stage {
                    2 => Some(0),
                    4 => Some(1),
                    _ => None,
                };
                assert_eq!(stats[n].residual.is_some(), point.is_some(), "{n}");
                if quantized == 0 {
                    assert!(cross.matrix().iter().all(|&v| v == 0.0), "{n}");
                    continue;
                }
                assert_matrix_close(n, cross.matrix(), expect.matrix());
                if let (Some(point), Some(res)) = (point, &stats[n].residual) {
                    let hidden = model.config.hidden_size;
                    let mut want =
                        mm_quant::gptq::ErrorCross::with_error_width(hidden, cross.cols());
                    let fp = streams_at(&reference, &windows, l);
                    let q = streams_at(&model, &windows, l);
                    let xq = inputs_of(&mut model, &windows, n);
                    for k in 0..windows.len() {
                        let (a, b) = if point == 0 {
                            (&fp[k].0, &q[k].0)
                        } else {
                            (&fp[k].1, &q[k].1)
                        };
                        let e: Vec<f32> = a.iter().zip(b).map(|(a, b)| a - b).collect();
                        want.add_error(&e, &xq[k].1, xq[k].0).unwrap();
                    }
                    assert_eq!(res.error_width(), hidden);
                    if l == 0 && point == 0 {
                        // Both models start from the same embedding.
                        assert!(res.matrix().iter().all(|&v| v == 0.0), "{n}");
                    } else {
                        assert_matrix_close(n, res.matrix(), want.matrix());
                    }
                }
            }
            for n in &stage_names {
                let lin = model.linear_mut(n).unwrap();
                let (rows, cols) = (lin.weight.shape[0], lin.weight.shape[1]);
                let w = dequantize_ref(&lin.weight).unwrap();
                let q = quantize_rtn(&w, rows, cols, fmt).unwrap();
                lin.set_weight(q.into_weight_data().unwrap(), &device)
                    .unwrap();
                quantized += 1;
            }
        }
        seq.advance(&mut model).unwrap();
    }
}
