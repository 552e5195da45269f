//! `quantize` of mixture-of-experts models with calibration: GPTQ of the
//! routed experts, shared experts and MLA projections on the tiny fixtures
//! made by transformers (the quantized models load and run), per-expert bit
//! allocation (`--expert-bits auto --target-bpw B`: the budget is met, the
//! choice is recorded, and the same formats given as explicit rules give
//! identical logits), and the errors of bad options.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

const CALIB: &str = "/usr/share/common-licenses/GPL-3";

const MOE: [&str; 5] = [
    "qwen3-moe",
    "mixtral",
    "glm4-moe",
    "glm4-moe-lite",
    "deepseek-v2",
];

/// GPTQ (act-order, error propagation on) of every MoE/MLA fixture: the run
/// reports its routed experts, and the model loads and stays as close to
/// the source as RTN's bounds for int4 g32 (`moe_experts_are_quantized_and_run`).
#[test]
fn gptq_of_experts_loads_and_runs() {
    let t = Tmp::new("gptq-experts");
    let mut bad = Vec::new();
    for fixture in MOE {
        let src = with_byte_tokenizer(fixture, &t.join(&format!("src-{fixture}")));
        let ids = input_ids(fixture);
        let (want, vocab) = logits(&src, &ids);
        let mut kl = Vec::new();
        for method in ["rtn", "gptq"] {
            let out = t.join(&format!("{fixture}-{method}"));
            let mut args = vec![
                "quantize",
                src.to_str().unwrap(),
                "--format",
                "int4",
                "--group-size",
                "32",
                "--group-fallback",
                "--method",
                method,
                "-o",
                out.to_str().unwrap(),
            ];
            if method == "gptq" {
                args.extend(["--calib", CALIB, "--calib-windows", "4", "--act-order"]);
            }
            let err = ok(&args);
            // Mixtral's fixture has two MoE layers, the others one.
            let experts = if fixture == "mixtral" { 16 } else { 8 };
            let report = format!("GPTQ of routed experts: {experts} experts");
            if method == "gptq" && !err.contains(&report) {
                bad.push(format!("{fixture}: no expert report in {err}"));
            }
            let c = closeness(&want, &logits(&out, &ids).0, vocab);
            if !(c.rel_max <= 0.6 && c.top1 >= 0.25 && c.kl <= 0.08) {
                bad.push(format!("{fixture} {method}: {c:?}"));
            }
            kl.push(c.kl);
        }
        eprintln!("{fixture}: KL RTN {:.3e}, GPTQ {:.3e}", kl[0], kl[1]);
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The `"expert_bits"` record of quantization_config.json, and the
/// routed-expert weights stored in another format than the default
/// (its overrides): weight name → `int2/g32`.
fn allocated(dir: &std::path::Path) -> (Value, BTreeMap<String, String>) {
    let qc = read_json(&dir.join("quantization_config.json"));
    let eb = qc["expert_bits"].clone();
    let mut formats = BTreeMap::new();
    for (name, f) in qc["overrides"].as_object().into_iter().flatten() {
        if name.contains(".experts.") {
            // {"format": "int2", "group_size": 32}
            let label = format!("{}/g{}", f["format"].as_str().unwrap(), f["group_size"]);
            formats.insert(name.clone(), label);
        }
    }
    (eb, formats)
}

/// `--expert-bits auto` on qwen3-moe: the allocation meets each budget, the
/// expert most sensitive at the lowest format never gets fewer bits than
/// the least sensitive, and the same formats written as explicit `--keep`
/// rules give bit-identical logits.
#[test]
fn expert_bits_meet_the_budget_and_equal_explicit_rules() {
    let t = Tmp::new("expert-bits");
    let src = with_byte_tokenizer("qwen3-moe", &t.join("src"));
    let ids = input_ids("qwen3-moe");
    let base = [
        "--format",
        "int4",
        "--group-size",
        "32",
        "--expert-formats",
        "int2,int3,int4,int8",
        "--calib",
        CALIB,
        "--calib-windows",
        "4",
    ];
    let bits = |label: &str| -> f64 {
        match label {
            l if l.starts_with("int2") => 2.5,
            l if l.starts_with("int3") => 3.5,
            l if l.starts_with("int4") => 4.5,
            _ => 8.5,
        }
    };
    for target in ["3", "4.5", "5.5"] {
        let out = t.join(&format!("auto-{target}"));
        let mut args = vec![
            "quantize",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(base);
        args.extend(["--expert-bits", "auto", "--target-bpw", target]);
        let err = ok(&args);
        assert!(err.contains("per-expert bits: 8 experts"), "{err}");
        let (eb, formats) = allocated(&out);
        let target: f64 = target.parse().unwrap();
        let achieved = eb["achieved_bpw"].as_f64().unwrap();
        assert!(achieved <= target + 1e-9 && achieved > target - 0.5, "{eb}");
        // Every expert weight is stored as recorded; the mean matches.
        let experts = eb["experts"].as_array().unwrap();
        assert_eq!(experts.len(), 8);
        let mean: f64 = experts
            .iter()
            .map(|e| bits(e["format"].as_str().unwrap()))
            .sum::<f64>()
            / 8.0;
        assert!((mean - achieved).abs() < 1e-9, "{mean} vs {achieved}");
        let stored = open_source_formats(&out);
        for e in experts {
            let (l, x) = (e["layer"].as_u64().unwrap(), e["expert"].as_u64().unwrap());
            for p in ["gate_proj", "up_proj", "down_proj"] {
                let name = format!("model.layers.{l}.mlp.experts.{x}.{p}.weight");
                let want = e["format"].as_str().unwrap();
                assert!(
                    stored[&name].starts_with(&want.replace("/g32", "")),
                    "{name}: {} vs {want}",
                    stored[&name]
                );
            }
        }
        // The most sensitive expert (at the lowest format) never has fewer
        // bits than the least sensitive.
        let s0 = |e: &Value| e["sensitivity"][0].as_f64().unwrap();
        let hi = experts
            .iter()
            .max_by(|a, b| s0(a).total_cmp(&s0(b)))
            .unwrap();
        let lo = experts
            .iter()
            .min_by(|a, b| s0(a).total_cmp(&s0(b)))
            .unwrap();
        assert!(
            bits(hi["format"].as_str().unwrap()) >= bits(lo["format"].as_str().unwrap()),
            "{hi} vs {lo}"
        );
        // The same formats by explicit rules: identical logits.
        let rules = t.join(&format!("rules-{target}"));
        let keeps: Vec<String> = formats
            .iter()
            .map(|(n, f)| format!("^{}$={f}", n.replace('.', "\\.")))
            .collect();
        let mut args = vec![
            "quantize",
            src.to_str().unwrap(),
            "-o",
            rules.to_str().unwrap(),
        ];
        args.extend(["--format", "int4", "--group-size", "32"]);
        for k in &keeps {
            args.extend(["--keep", k.as_str()]);
        }
        ok(&args);
        let (a, _) = logits(&out, &ids);
        let (b, _) = logits(&rules, &ids);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "target {target}"
        );
    }
    // With GPTQ too: the budget holds and the model runs.
    let out = t.join("auto-gptq");
    let mut args = vec![
        "quantize",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(base);
    args.extend([
        "--expert-bits",
        "auto",
        "--target-bpw",
        "3.5",
        "--method",
        "gptq",
    ]);
    ok(&args);
    let (eb, _) = allocated(&out);
    assert!(eb["achieved_bpw"].as_f64().unwrap() <= 3.5, "{eb}");
    let (want, vocab) = logits(&src, &ids);
    let c = closeness(&want, &logits(&out, &ids).0, vocab);
    assert!(c.top1 >= 0.25 && c.kl <= 0.5, "{c:?}");
}

/// Stored format of every weight: name → format label.
fn open_source_formats(dir: &std::path::Path) -> BTreeMap<String, String> {
    mm_formats::open_source(dir)
        .unwrap()
        .describe()
        .into_iter()
        .map(|(n, f, _)| (n, f))
        .collect()
}

#[test]
fn bad_expert_options_are_clear_errors() {
    let t = Tmp::new("expert-bad");
    let src = with_byte_tokenizer("qwen3-moe", &t.join("src"));
    let s = src.to_str().unwrap();
    let out = t.join("out");
    let o = out.to_str().unwrap();
    let e = fails(&[
        "quantize",
        s,
        "-o",
        o,
        "--expert-bits",
        "auto",
        "--target-bpw",
        "3",
    ]);
    assert!(e.contains("--calib"), "{e}");
    let auto = [
        "--expert-bits",
        "auto",
        "--calib",
        CALIB,
        "--calib-windows",
        "2",
    ];
    let e = fails(&[&["quantize", s, "-o", o, "--target-bpw", "1"][..], &auto].concat());
    assert!(e.contains("cannot be met"), "{e}");
    let e = fails(
        &[
            &[
                "quantize",
                s,
                "-o",
                o,
                "--target-bpw",
                "3",
                "--expert-formats",
                "int4,f16",
            ][..],
            &auto,
        ]
        .concat(),
    );
    assert!(e.contains("not a quantized format"), "{e}");
    let e = fails(
        &[
            &[
                "quantize",
                s,
                "-o",
                o,
                "--target-bpw",
                "3",
                "--expert-formats",
                "int4/g64",
            ][..],
            &auto,
        ]
        .concat(),
    );
    assert!(e.contains("cannot store expert rows of 32"), "{e}");
    let e = fails(
        &[
            &[
                "quantize",
                with_byte_tokenizer("llama", &t.join("llama"))
                    .to_str()
                    .unwrap(),
                "-o",
                o,
                "--target-bpw",
                "3",
            ][..],
            &auto,
        ]
        .concat(),
    );
    assert!(e.contains("no routed experts"), "{e}");
    // clap: --target-bpw needs --expert-bits.
    let r = run(&["quantize", s, "-o", o, "--target-bpw", "3"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--expert-bits"));
    let gptq = ["--method", "gptq", "--calib", CALIB, "--calib-windows", "2"];
    let e = fails(
        &[
            &["quantize", s, "-o", o, "--expert-min-tokens", "-1"][..],
            &gptq,
        ]
        .concat(),
    );
    assert!(e.contains("--expert-min-tokens"), "{e}");
    let e = fails(&[&["quantize", s, "-o", o, "--tune", "1"][..], &gptq].concat());
    assert!(
        e.contains("--tune supports dense layers") && e.contains("layer 1"),
        "{e}"
    );
    assert_nothing_written(&out);
}
