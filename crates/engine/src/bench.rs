//! Throughput benchmark in the manner of llama.cpp's `llama-bench`:
//!
//! * prefill (`ppN`): one forward of `N` tokens into an empty KV cache;
//! * decode (`tgN`): after a 1-token prefix, `N` forwards of one token each.
//!
//! Token ids are drawn from a seeded generator, avoiding special tokens, so
//! runs are reproducible; no sampling happens (its cost is not the model's).
//! Each test runs once untimed as warm-up (weights paged in and prepared,
//! buffers allocated), then `repetitions` timed times. The logits of every
//! forward are read back to the host inside the timed region, so an
//! asynchronous backend is measured to completion.

use std::time::Instant;

use mm_core::{Error, Result};
use mm_models::DecoderModel;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Settings of a benchmark run. A token count of 0 skips that test.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Tokens already in the cache before each test (llama-bench's `-d`),
    /// prefilled untimed: the prefill test appends its prompt to them, the
    /// decode test generates after them, so attention runs over `depth`
    /// more keys.
    pub depth: usize,
    /// Timed runs of each test (after one untimed warm-up run).
    pub repetitions: usize,
    /// Seed of the token ids.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            prompt_tokens: 512,
            gen_tokens: 128,
            depth: 0,
            repetitions: 5,
            seed: 42,
        }
    }
}

/// Which test a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchTest {
    Prefill,
    Decode,
}

/// Tokens per second of every timed run, per test (`None`: skipped).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchRuns {
    pub prefill_tok_s: Option<Vec<f64>>,
    pub decode_tok_s: Option<Vec<f64>>,
}

/// Summary statistics of a set of runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunStats {
    pub median: f64,
    pub mean: f64,
    /// Sample standard deviation (0 for a single run).
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
}

impl RunStats {
    /// Statistics of `v`; `None` when it is empty.
    pub fn of(v: &[f64]) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let mean = s.iter().sum::<f64>() / n as f64;
        let stddev = if n > 1 {
            (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self {
            median,
            mean,
            stddev,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// `n` token ids below `vocab` drawn from a generator seeded with `seed`,
/// none of them one for which `excluded` holds.
pub fn random_ids(
    n: usize,
    vocab: usize,
    excluded: &dyn Fn(u32) -> bool,
    seed: u64,
) -> Result<Vec<u32>> {
    let vocab = u32::try_from(vocab)
        .map_err(|_| Error::Invalid(format!("vocabulary of {vocab} is too large")))?;
    let allowed: Vec<u32> = (0..vocab).filter(|&i| !excluded(i)).collect();
    if allowed.is_empty() {
        return Err(Error::Invalid(
            "the vocabulary has no ordinary (non-special) token to benchmark with".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    Ok((0..n)
        .map(|_| allowed[rng.gen_range(0..allowed.len())])
        .collect())
}

/// Runs the tests of `cfg` on `model` with ids from [`random_ids`];
/// `progress(test, done, total)` is called after every run (warm-up included
/// as run 0).
pub fn run_bench(
    model: &DecoderModel,
    cfg: &BenchConfig,
    excluded: &dyn Fn(u32) -> bool,
    progress: &mut dyn FnMut(BenchTest, usize, usize),
) -> Result<BenchRuns> {
    if cfg.repetitions == 0 {
        return Err(Error::Invalid("repetitions must be at least 1".into()));
    }
    if cfg.prompt_tokens == 0 && cfg.gen_tokens == 0 {
        return Err(Error::Invalid(
            "nothing to run: both the prompt and the generation length are 0".into(),
        ));
    }
    let max = model.config.max_position_embeddings;
    let d = cfg.depth;
    if d + cfg.prompt_tokens > max {
        return Err(Error::Invalid(format!(
            "{d} tokens of depth and {} prompt tokens exceed the model's context length {max}",
            cfg.prompt_tokens
        )));
    }
    if cfg.gen_tokens > 0 && d + cfg.gen_tokens + 1 > max {
        return Err(Error::Invalid(format!(
            "{d} tokens of depth, 1 prefix token and {} generated tokens exceed the model's \
             context length {max}",
            cfg.gen_tokens
        )));
    }
    let need = d + cfg.prompt_tokens.max(if cfg.gen_tokens > 0 {
        cfg.gen_tokens + 1
    } else {
        0
    });
    let ids = random_ids(need, model.config.vocab_size, excluded, cfg.seed)?;
    let mut cache = model.new_cache(need)?;
    let total = cfg.repetitions + 1;
    let mut runs = BenchRuns::default();
    // The cache holding the first `d` ids (prefilled, untimed).
    let deep = |cache: &mut mm_models::KvCache| -> Result<()> {
        cache.clear();
        if d > 0 {
            model.forward(&ids[..d], cache, false)?.to_vec()?;
        }
        Ok(())
    };

    if cfg.prompt_tokens > 0 {
        let prompt = &ids[d..d + cfg.prompt_tokens];
        let mut rates = Vec::with_capacity(cfg.repetitions);
        for r in 0..total {
            deep(&mut cache)?;
            let t = Instant::now();
            model.forward(prompt, &mut cache, false)?.to_vec()?;
            let secs = t.elapsed().as_secs_f64();
            if r > 0 {
                rates.push(cfg.prompt_tokens as f64 / secs.max(1e-9));
            }
            progress(BenchTest::Prefill, r, total);
        }
        runs.prefill_tok_s = Some(rates);
    }

    if cfg.gen_tokens > 0 {
        let mut rates = Vec::with_capacity(cfg.repetitions);
        for r in 0..total {
            deep(&mut cache)?;
            model.forward(&ids[d..=d], &mut cache, false)?.to_vec()?;
            let t = Instant::now();
            for &id in &ids[d + 1..=d + cfg.gen_tokens] {
                model.forward(&[id], &mut cache, false)?.to_vec()?;
            }
            let secs = t.elapsed().as_secs_f64();
            if r > 0 {
                rates.push(cfg.gen_tokens as f64 / secs.max(1e-9));
            }
            progress(BenchTest::Decode, r, total);
        }
        runs.decode_tok_s = Some(rates);
    }
    Ok(runs)
}

/// Aggregate decode throughput of `batch` sequences generating together
/// through the batched engine ([`crate::batch::BatchEngine`], its paged KV
/// cache and greedy sampling of every sequence): per run, `batch` prompts
/// of `depth + 1` tokens are admitted and prefilled (untimed), then the
/// steps until each
/// has generated `gen_tokens` more tokens are timed. Tokens per second of
/// every timed run (after one warm-up run); `progress(done, total)` after
/// each run.
pub fn run_batched_decode(
    model: &DecoderModel,
    batch: usize,
    cfg: &BenchConfig,
    excluded: &dyn Fn(u32) -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    use crate::batch::{BatchEngine, BatchRequest};
    use crate::sched::SchedulerConfig;
    if batch == 0 || cfg.gen_tokens == 0 || cfg.repetitions == 0 {
        return Err(Error::Invalid(format!(
            "batched decode needs sequences, tokens and runs ({batch}, {}, {})",
            cfg.gen_tokens, cfg.repetitions
        )));
    }
    let d = cfg.depth;
    let len = d + cfg.gen_tokens + 2;
    if len > model.config.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "{} prompt tokens and {} generated tokens exceed the model's context length {}",
            d + 1,
            cfg.gen_tokens + 1,
            model.config.max_position_embeddings
        )));
    }
    let block_size = mm_models::DEFAULT_BLOCK_SIZE;
    let sched = SchedulerConfig {
        max_num_seqs: batch,
        max_num_batched_tokens: batch.max(2048),
        block_size,
        num_blocks: batch * len.div_ceil(block_size),
        max_model_len: len,
        enable_prefix_caching: false,
    };
    let mut engine = BatchEngine::new(model, sched, model.default_kv_dtype())?;
    let ids = random_ids(batch * (d + 1), model.config.vocab_size, excluded, cfg.seed)?;
    let total = cfg.repetitions + 1;
    let mut rates = Vec::with_capacity(cfg.repetitions);
    for r in 0..total {
        for p in ids.chunks(d + 1) {
            engine.add(BatchRequest {
                prompt: p.to_vec(),
                max_new_tokens: cfg.gen_tokens + 1,
                ..Default::default()
            })?;
        }
        // The prompts, each with its first sampled token.
        let mut first = 0;
        while first < batch {
            first += engine.step()?.len();
        }
        let t = Instant::now();
        let mut tokens = 0;
        while engine.has_unfinished() {
            tokens += engine.step()?.len();
        }
        let secs = t.elapsed().as_secs_f64();
        if r > 0 {
            rates.push(tokens as f64 / secs.max(1e-9));
        }
        progress(r, total);
    }
    Ok(rates)
}

/// Peak resident set size of this process in bytes (`VmHWM` of
/// `/proc/self/status`); `None` where that file does not exist.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next() {
        Some("kB") | None => 1024,
        Some("B") => 1,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some(_) => return None,
    };
    value.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_runs() {
        let s = RunStats::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.mean, s.min, s.max), (2.5, 4.0, 1.0, 10.0));
        assert!((s.stddev - (50.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let one = RunStats::of(&[5.0]).unwrap();
        assert_eq!((one.median, one.stddev), (5.0, 0.0));
        assert!(RunStats::of(&[]).is_none());
    }

    #[test]
    fn random_ids_are_seeded_and_skip_excluded() {
        let ex = |i: u32| i < 3 || i == 7;
        let a = random_ids(500, 10, &ex, 1).unwrap();
        assert_eq!(a, random_ids(500, 10, &ex, 1).unwrap());
        assert_ne!(a, random_ids(500, 10, &ex, 2).unwrap());
        assert!(a.iter().all(|&i| i < 10 && !ex(i)));
        assert!(random_ids(5, 3, &ex, 1).is_err());
        assert!(random_ids(5, 0, &ex, 1).is_err());
    }

    #[test]
    fn vm_hwm_parses() {
        let s = "Name:\tx\nVmPeak:\t 100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB"), None);
        assert_eq!(parse_vm_hwm("VmHWM: lots kB"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 0);
        }
    }

    #[test]
    fn bench_runs_on_a_tiny_model() {
        use std::sync::Arc;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny/llama");
        let src = mm_formats::open_source(&dir).unwrap();
        let cpu: Arc<dyn mm_core::Backend> = Arc::new(mm_backend_cpu::CpuBackend::new());
        let dev = mm_core::Device::new(cpu.clone(), cpu);
        let m = mm_models::load_model(src.as_ref(), &dev, &|_, _| {}).unwrap();
        let cfg = BenchConfig {
            prompt_tokens: 16,
            gen_tokens: 8,
            repetitions: 3,
            depth: 0,
            seed: 0,
        };
        let mut calls = Vec::new();
        let runs = run_bench(&m, &cfg, &|i| i < 3, &mut |t, r, n| calls.push((t, r, n))).unwrap();
        for v in [&runs.prefill_tok_s, &runs.decode_tok_s] {
            let v = v.as_ref().unwrap();
            assert_eq!(v.len(), 3);
            assert!(v.iter().all(|x| x.is_finite() && *x > 0.0));
        }
        assert_eq!(calls.len(), 8);
        assert_eq!(calls[7], (BenchTest::Decode, 3, 4));
        let skip = BenchConfig {
            gen_tokens: 0,
            ..cfg.clone()
        };
        assert!(run_bench(&m, &skip, &|_| false, &mut |_, _, _| {})
            .unwrap()
            .decode_tok_s
            .is_none());
        let bad = |c: BenchConfig| {
            run_bench(&m, &c, &|_| false, &mut |_, _, _| {})
                .unwrap_err()
                .to_string()
        };
        assert!(bad(BenchConfig {
            repetitions: 0,
            ..cfg.clone()
        })
        .contains("repetitions"));
        assert!(bad(BenchConfig {
            prompt_tokens: 0,
            gen_tokens: 0,
            ..cfg.clone()
        })
        .contains("nothing"));
        assert!(bad(BenchConfig {
            prompt_tokens: 513,
            ..cfg.clone()
        })
        .contains("512"));
        assert!(bad(BenchConfig {
            gen_tokens: 512,
            ..cfg.clone()
        })
        .contains("512"));
        // With a depth: the tests run after it, and it counts against the
        // context.
        let deep = BenchConfig {
            depth: 100,
            repetitions: 1,
            ..cfg.clone()
        };
        let runs = run_bench(&m, &deep, &|_| false, &mut |_, _, _| {}).unwrap();
        assert!(runs.decode_tok_s.unwrap()[0] > 0.0);
        assert!(bad(BenchConfig {
            depth: 500,
            ..cfg.clone()
        })
        .contains("500 tokens of depth"));
        let rates = run_batched_decode(&m, 3, &deep, &|_| false, &mut |_, _| {}).unwrap();
        assert!(rates.len() == 1 && rates[0] > 0.0);
    }
}
