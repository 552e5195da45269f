//! Aggregate decode throughput of the batched step loop, no HTTP:
//! `S` streams of `P` random prompt tokens each generate `G` tokens
//! (greedy, EOS ignored) through one `BatchEngine`, for each `S` given.
//!
//! `cargo run --release -p mm-engine --example batch_bench -- MODEL.gguf 1,8,32 [P=128] [G=64]`
//!
//! Prints, per stream count: wall time (prefill included), aggregate
//! generated tokens/s, steps and the mean tokens per step.

use std::sync::Arc;
use std::time::Instant;

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, KvDType};
use mm_engine::batch::{BatchEngine, BatchRequest};
use mm_engine::sched::SchedulerConfig;
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: batch_bench MODEL 1,8,32 [P] [G]")?;
    let streams: Vec<usize> = args
        .get(2)
        .map_or("1,8,32", String::as_str)
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let p: usize = args.get(3).map_or(Ok(128), |s| s.parse())?;
    let g: usize = args.get(4).map_or(Ok(64), |s| s.parse())?;
    let src = mm_formats::open_source(std::path::Path::new(path))?;
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
    let model = mm_models::load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {})?;
    let vocab = model.config.vocab_size as u32;
    println!(
        "streams | prompt tok | generated tok | wall s | generated tok/s | steps | mean rows/step"
    );
    for &s in &streams {
        let cfg = SchedulerConfig {
            max_num_seqs: s.max(1),
            max_num_batched_tokens: 2048.max(s),
            num_blocks: (s * (p + g)).div_ceil(16) + 16,
            ..Default::default()
        };
        let mut eng = BatchEngine::new(&model, cfg, KvDType::F16)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..s {
            eng.add(BatchRequest {
                prompt: (0..p).map(|_| rng.gen_range(0..vocab)).collect(),
                max_new_tokens: g,
                sampling: Default::default(),
                eos: vec![],
                logprobs: None,
                guide: None,
            })?;
        }
        let t0 = Instant::now();
        let pool0 = mm_core::host_pool::stats();
        let (mut steps, mut generated) = (0usize, 0usize);
        while eng.has_unfinished() {
            generated += eng.step()?.len();
            steps += 1;
        }
        let wall = t0.elapsed().as_secs_f64();
        println!(
            "{s} | {} | {generated} | {wall:.2} | {:.1} | {steps} | {:.1}",
            s * p,
            generated as f64 / wall,
            (s * (p + g)) as f64 / steps as f64
        );
        let pool = mm_core::host_pool::stats();
        eprintln!(
            "host buffers: {} reused, {} allocated",
            pool.0 - pool0.0,
            pool.1 - pool0.1
        );
    }
    Ok(())
}
