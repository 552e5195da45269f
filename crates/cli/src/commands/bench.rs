//! `bench`: prefill and decode throughput, like llama-bench (see
//! `mm_engine::bench`).

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mm_engine::bench::{
    peak_rss_bytes, run_batched_decode, run_bench, BenchConfig, BenchTest, RunStats,
};
use serde_json::json;

use crate::args::{BenchArgs, ModelArgs};
use crate::load::{build, open};

pub fn run(a: BenchArgs) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.prompt_tokens == 0 && a.gen_tokens == 0 {
        bail!("nothing to run: --prompt-tokens and --gen-tokens are both 0");
    }
    let margs = ModelArgs {
        model: a.model.clone(),
        device: a.device,
        precision: a.precision,
        ctx: None,
    };
    let (path, source) = open(&margs)?;
    let max = source.config().max_position_embeddings;
    if a.depth + a.prompt_tokens > max {
        bail!(
            "--depth {} plus --prompt-tokens {} exceeds the model's context length {max}",
            a.depth,
            a.prompt_tokens
        );
    }
    if a.depth + a.gen_tokens >= max {
        bail!(
            "--depth {} plus --gen-tokens {} plus the 1-token prefix exceeds the model's context length {max}",
            a.depth,
            a.gen_tokens
        );
    }
    // Special tokens are avoided; a model without a tokenizer still runs,
    // avoiding the ids its config names.
    let tok = match mm_engine::tokenizer::load_for(&path, source.as_ref()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::info!("no tokenizer ({e}); avoiding only the config's BOS/EOS ids");
            None
        }
    };
    let cfg_ids: Vec<u32> = source
        .config()
        .bos_token_id
        .into_iter()
        .chain(source.config().eos_token_ids.iter().copied())
        .collect();
    let excluded = |id: u32| {
        cfg_ids.contains(&id)
            || tok
                .as_ref()
                .is_some_and(|t| t.is_special(id) || t.is_eos(id) || id as usize >= t.vocab_size())
    };
    let (model, _) = build(&path, source.as_ref(), &margs)?;
    let summary = model.weight_summary();
    let threads = rayon::current_num_threads();
    let backend = match (a.precision.exact, a.precision.fast_activations) {
        (true, _) => format!("{} (exact)", model.device().name()),
        (_, true) => format!("{} (fast activations)", model.device().name()),
        _ => model.device().name().to_string(),
    };

    let cfg = BenchConfig {
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        repetitions: a.repetitions,
        depth: a.depth,
        seed: a.seed,
    };
    // llama-bench's labels: "pp512 @ d4096" with a depth.
    let at = match a.depth {
        0 => String::new(),
        d => format!(" @ d{d}"),
    };
    let pp = format!("pp{}{at}", a.prompt_tokens);
    let tg = format!("tg{}{at}", a.gen_tokens);
    let total = (a.prompt_tokens > 0) as u64 + (a.gen_tokens > 0) as u64;
    let bar = ProgressBar::new(total * (a.repetitions as u64 + 1));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} runs")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runs = run_bench(&model, &cfg, &excluded, &mut |test, r, _| {
        let name = match test {
            BenchTest::Prefill => &pp,
            BenchTest::Decode => &tg,
        };
        bar.set_message(format!(
            "{name} {}",
            if r == 0 { "warm-up" } else { "timed" }
        ));
        bar.inc(1);
    });
    let runs = runs?;
    let mut batched = Vec::new();
    for &b in &a.batch {
        bar.set_length(bar.length().unwrap_or(0) + a.repetitions as u64 + 1);
        let rates = run_batched_decode(&model, b, &cfg, &excluded, &mut |r, _| {
            bar.set_message(format!(
                "{tg} x{b} {}",
                if r == 0 { "warm-up" } else { "timed" }
            ));
            bar.inc(1);
        })?;
        batched.push((b, rates));
    }
    bar.finish_and_clear();
    let peak_rss = peak_rss_bytes();
    let pstats = runs.prefill_tok_s.as_deref().and_then(RunStats::of);
    let dstats = runs.decode_tok_s.as_deref().and_then(RunStats::of);
    // Decode reads (about) every weight once per token.
    let gb_s = dstats.map(|d| summary.bytes_per_token as f64 * d.median / 1e9);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string());

    if a.json {
        let out = json!({
            "model": path.display().to_string(),
            "backend": backend,
            "threads": threads,
            "weight_bytes": summary.bytes,
            "params": summary.params,
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "depth": a.depth,
            "repetitions": a.repetitions,
            "prefill_tok_s": pstats.map(|s| s.median),
            "decode_tok_s": dstats.map(|s| s.median),
            "prefill_tok_s_runs": runs.prefill_tok_s,
            "decode_tok_s_runs": runs.decode_tok_s,
            "decode_bytes_per_token": summary.bytes_per_token,
            "decode_effective_gb_s": gb_s,
            "peak_rss_bytes": peak_rss,
            "batched_decode": batched.iter().map(|(b, r)| json!({
                "sequences": b,
                "tok_s": RunStats::of(r).map(|s| s.median),
                "tok_s_runs": r,
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(());
    }

    let size = human_bytes(summary.bytes as f64);
    let params = human_count(summary.params as f64);
    let mut rows = Vec::new();
    let mut tests = vec![(pp.clone(), pstats), (tg.clone(), dstats)];
    for (b, r) in &batched {
        tests.push((format!("{tg} x{b}"), RunStats::of(r)));
    }
    for (test, st) in &tests {
        if let Some(s) = st {
            rows.push(vec![
                name.clone(),
                size.clone(),
                params.clone(),
                backend.clone(),
                threads.to_string(),
                test.to_string(),
                format!("{:.2} ± {:.2}", s.median, s.stddev),
                format!("{:.2}", s.min),
                format!("{:.2}", s.max),
            ]);
        }
    }
    print_table(
        &[
            "model", "size", "params", "backend", "threads", "test", "t/s", "min", "max",
        ],
        &[false, true, true, false, true, true, true, true, true],
        &rows,
    );
    println!();
    if let (Some(d), Some(g)) = (dstats, gb_s) {
        println!(
            "decode roofline: {} of weights read per token / {:.2} ms per token = {g:.2} GB/s effective",
            human_bytes(summary.bytes_per_token as f64),
            1e3 / d.median
        );
    }
    match peak_rss {
        Some(b) => println!("peak RSS: {}", human_bytes(b as f64)),
        None => println!("peak RSS: unavailable on this platform"),
    }
    println!(
        "t/s: median ± sample standard deviation of {} timed runs (after 1 warm-up run)",
        a.repetitions
    );
    if !batched.is_empty() {
        println!("{tg} xN: N sequences decoding together, tokens per second of all of them");
    }
    Ok(())
}

/// A markdown table with padded columns, as llama-bench prints.
fn print_table(head: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].chars().count(), 3])
            .max()
            .unwrap_or(3)
    };
    let widths: Vec<usize> = (0..head.len()).map(width).collect();
    let line = |cells: Vec<String>| format!("| {} |", cells.join(" | "));
    let pad = |s: &str, i: usize| {
        let fill = " ".repeat(widths[i] - s.chars().count());
        if right[i] {
            format!("{fill}{s}")
        } else {
            format!("{s}{fill}")
        }
    };
    println!(
        "{}",
        line(head.iter().enumerate().map(|(i, h)| pad(h, i)).collect())
    );
    println!(
        "{}",
        line(
            widths
                .iter()
                .zip(right)
                .map(|(&w, &r)| if r {
                    format!("{}:", "-".repeat(w - 1))
                } else {
                    "-".repeat(w)
                })
                .collect()
        )
    );
    for r in rows {
        println!(
            "{}",
            line(r.iter().enumerate().map(|(i, c)| pad(c, i)).collect())
        );
    }
}

fn human_bytes(b: f64) -> String {
    const K: f64 = 1024.0;
    if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.2} MiB", b / (K * K))
    } else if b >= K {
        format!("{:.2} KiB", b / K)
    } else {
        format!("{b} B")
    }
}

fn human_count(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.2} K", n / 1e3)
    } else {
        format!("{n}")
    }
}
