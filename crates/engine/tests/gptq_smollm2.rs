//! GPTQ on real SmolLM2-135M layers: against round-to-nearest at the same
//! format, GPTQ must lower the layer output error `‖W·Xᵀ − Ŵ·Xᵀ‖_F` on
//! held-out activations (text windows not used for calibration), and the
//! Hessian-weighted scale search (`ScaleSearch::Mse`) must lower it further
//! for act-order GPTQ.
//!
//! Weights are the Q4_1 GGUF's `q_proj` (576 inputs: groups of 64 stand in
//! for 128) and `down_proj` (1536 inputs) of a few layers, dequantized to f32; activations come from running the model on real text
//! (`/usr/share/common-licenses/GPL-3` when present, else this repository's
//! documentation and sources). The model file comes from `$MM_SMOLLM2_GGUF`
//! or the default-model cache; without it the test fails when
//! `MM_REQUIRE_SMOLLM2` is set and is skipped otherwise.
//!
//! Run with `--nocapture` to see the per-layer error ratios.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, Tensor, WeightData};
use mm_engine::calib::{calibration_windows, collect_hessians, CalibOptions};
use mm_engine::tokenizer::load_for;
use mm_formats::open_source;
use mm_models::{load_model, LinearObserver};
use mm_quant::gptq::{gptq_quantize, GptqOptions};
use mm_quant::{dequantize_ref, quantize_rtn, MmFormat, ScaleSearch};

fn gguf_path() -> Option<PathBuf> {
    mm_engine::resolve::smollm2_for_tests()
}

/// Real English text: the GPL when the system has it, else this repository's
/// docs and Rust sources.
fn calibration_text() -> String {
    let gpl = Path::new("/usr/share/common-licenses/GPL-3");
    if let Ok(t) = std::fs::read_to_string(gpl) {
        return t;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("docs/FORMAT.md")];
    for dir in [
        "crates/engine/src",
        "crates/quant/src/mm",
        "crates/models/src",
    ] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        v.sort();
        files.extend(v);
    }
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `‖X·Dᵀ‖_F` for `x` `[n, cols]` and `d` `[rows, cols]`, through the CPU
/// backend's matmul.
fn output_error(dev: &Device, x: &Tensor, d: &[f32], rows: usize, cols: usize) -> f64 {
    let dw = WeightData::from_f32(vec![rows, cols], d).unwrap();
    let y = dev.matmul(x, &dw, None).unwrap().to_vec().unwrap();
    y.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

#[test]
fn gptq_beats_rtn_on_real_smollm2_layers() {
    let Some(path) = gguf_path() else {
        return;
    };
    let src = open_source(&path).unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
    let dev = Device::new(cpu.clone(), cpu);
    let mut model = load_model(src.as_ref(), &dev, &|_, _| {}).unwrap();
    let tok = load_for(&path, src.as_ref()).unwrap();
    let tokens = tok.encode(&calibration_text(), false).unwrap();
    assert!(tokens.len() >= 6000, "only {} tokens of text", tokens.len());

    let layers = [0usize, 14, 29];
    let names: Vec<String> = layers
        .iter()
        .flat_map(|l| {
            [
                format!("model.layers.{l}.self_attn.q_proj.weight"),
                format!("model.layers.{l}.mlp.down_proj.weight"),
            ]
        })
        .collect();
    let wanted: Arc<Vec<String>> = Arc::new(names.clone());

    // Calibration on the first 70% of the text, evaluation on the rest.
    let split = tokens.len() * 7 / 10;
    let (calib, held_out) = tokens.split_at(split);
    let w = wanted.clone();
    let opts = CalibOptions {
        window: 256,
        max_windows: 16,
        min_tokens: 2048,
        filter: Some(Arc::new(move |n: &str| w.iter().any(|x| x == n))),
    };
    let hessians = collect_hessians(&mut model, calib, &opts, &|_, _| {}).unwrap();
    assert_eq!(hessians.len(), names.len());

    // Held-out activations, captured raw.
    let captured: Arc<Mutex<HashMap<String, Vec<f32>>>> = Arc::default();
    let (c, w) = (captured.clone(), wanted.clone());
    let observer: LinearObserver = Arc::new(move |name: &str, x: &Tensor| {
        if w.iter().any(|n| n == name) {
            c.lock()
                .unwrap()
                .entry(name.to_string())
                .or_default()
                .extend(x.to_vec()?);
        }
        Ok(())
    });
    model.set_linear_observer(Some(observer));
    for win in calibration_windows(held_out, 256, 4, 1024).unwrap() {
        let mut cache = model.new_cache(win.len()).unwrap();
        model.forward(win, &mut cache, false).unwrap();
    }
    model.set_linear_observer(None);
    let captured = captured.lock().unwrap();

    let formats = [
        ("int4", 128),
        ("int3", 128),
        ("int2-asym", 32),
        ("int4-asym", 128),
        ("nf4", 64),
        ("int4", 0),
    ];
    let label = |f: &str, g: u32| {
        if g == 0 {
            format!("{f} per-channel")
        } else {
            format!("{f} g{g}")
        }
    };
    let mut ratios: HashMap<String, Vec<f64>> = HashMap::new();
    eprintln!(
        "{:<34}{:<18}{:>9}{:>11}{:>7}{:>9}{:>9}",
        "layer", "format", "RTN err", "GPTQ err", "ratio", "act+st", "act+mse"
    );
    for name in &names {
        let w = dequantize_ref(&src.tensor(name).unwrap()).unwrap();
        let x = &captured[name];
        let h = &hessians[name];
        let cols = h.cols();
        let rows = w.len() / cols;
        let xt = Tensor::from_vec(vec![x.len() / cols, cols], x.clone()).unwrap();
        for (fname, asked) in formats {
            // SmolLM2's hidden size 576 is not a multiple of 128: q_proj
            // (576 inputs) uses groups of 64 where 128 is asked for.
            let fits = |g| MmFormat::parse(fname, g).and_then(|f| f.part_sizes(rows, cols));
            let group = if fits(asked).is_ok() { asked } else { 64 };
            let fmt = MmFormat::parse(fname, group).unwrap();
            let err = |q: Vec<f32>| {
                let d: Vec<f32> = w.iter().zip(&q).map(|(a, b)| a - b).collect();
                output_error(&dev, &xt, &d, rows, cols)
            };
            let rtn = err(quantize_rtn(&w, rows, cols, fmt)
                .unwrap()
                .dequantize()
                .unwrap());
            let gptq = err(
                gptq_quantize(&w, rows, cols, h, fmt, &GptqOptions::default())
                    .unwrap()
                    .dequantize()
                    .unwrap(),
            );
            let act = GptqOptions {
                act_order: true,
                static_groups: true,
                ..Default::default()
            };
            let gptq_act = err(gptq_quantize(&w, rows, cols, h, fmt, &act)
                .unwrap()
                .dequantize()
                .unwrap());
            let searched = GptqOptions {
                scale_search: ScaleSearch::Mse,
                ..act
            };
            let gptq_mse = err(gptq_quantize(&w, rows, cols, h, fmt, &searched)
                .unwrap()
                .dequantize()
                .unwrap());
            let short = name
                .trim_start_matches("model.")
                .trim_end_matches(".weight");
            eprintln!(
                "{short:<34}{:<18}{rtn:>9.4}{gptq:>11.4}{:>7.3}{:>9.3}{:>9.3}",
                label(fname, group),
                gptq / rtn,
                gptq_act / rtn,
                gptq_mse / rtn
            );
            // Plain GPTQ (groups fitted as it reaches them, natural column
            // order) overfits the calibration set at 2 bits: on held-out
            // text it can lose to RTN there (down_proj L0: 1.09), so 2-bit
            // asserts only the act-order variants.
            let best = if fname.starts_with("int2") {
                gptq_act.min(gptq_mse)
            } else {
                gptq
            };
            assert!(
                best < rtn,
                "{name} {fname} g{group}: GPTQ error {best} ≥ RTN error {rtn}"
            );
            let r = ratios.entry(label(fname, asked)).or_default();
            r.push(best / rtn);
            r.push(gptq_mse / gptq_act);
        }
    }
    for (fname, asked) in formats {
        let l = label(fname, asked);
        let r = &ratios[&l];
        let mean = |k: usize| r.iter().skip(k).step_by(2).sum::<f64>() / (r.len() / 2) as f64;
        let (gptq, search) = (mean(0), mean(1));
        eprintln!(
            "{l}: mean GPTQ/RTN output error ratio {gptq:.3}; \
             act-order with/without the scale search {search:.3}"
        );
        assert!(gptq < 0.9, "{l}: mean GPTQ/RTN ratio {gptq:.3}");
        // The Hessian-weighted scale search lowers the output error of
        // act-order GPTQ at every format here (0.82–0.96 when measured).
        assert!(
            search < 0.98,
            "{l}: mean searched/min-max ratio {search:.3}"
        );
    }
}
