//! `serve`: the OpenAI-compatible server (crate `mm-server`); this module
//! only turns flags into its configuration and a model loader.

use anyhow::{bail, Result};
use mm_core::KvDType;
use mm_server::{EngineOptions, KvBudget, Loader, ServerConfig};

use crate::args::{ModelArgs, ServeArgs};
use crate::load;

pub fn run(a: ServeArgs) -> Result<()> {
    let spec = a.positional.clone().or(a.model.clone());
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        spec.clone()
            .unwrap_or_else(|| mm_engine::resolve::DEFAULT_HUB_REPO.to_string())
    });
    let kv = match (a.num_kv_blocks, a.kv_memory) {
        (Some(0), _) => bail!("--num-kv-blocks must be at least 1"),
        (Some(n), _) => KvBudget::Blocks(n),
        (None, Some(g)) if !(g > 0.0 && g.is_finite()) => {
            bail!("--kv-memory must be a positive number of GiB, got {g}")
        }
        (None, Some(g)) => KvBudget::Bytes((g * (1u64 << 30) as f64) as u64),
        (None, None) => KvBudget::Bytes(mm_server::config::DEFAULT_KV_BYTES),
    };
    if a.max_queue == Some(0) {
        bail!("--max-queue must be at least 1");
    }
    let mut cfg = ServerConfig::new(name);
    cfg.host = a.host.clone();
    cfg.port = a.port;
    cfg.api_key = a.api_key.clone();
    cfg.max_queue = a.max_queue;
    cfg.metrics_port = a.metrics_port;
    cfg.reasoning_parser = a.reasoning.reasoning_parser;
    cfg.engine = EngineOptions {
        max_num_seqs: a.max_num_seqs,
        max_num_batched_tokens: a.max_num_batched_tokens,
        kv,
        block_size: a.block_size,
        max_model_len: a.max_model_len,
        kv_dtype: if a.precision.exact {
            KvDType::F32
        } else {
            KvDType::F16
        },
        enable_prefix_caching: !a.no_enable_prefix_caching,
    };
    let margs = ModelArgs {
        model: spec,
        device: a.device,
        ctx: None,
        precision: a.precision,
    };
    // Runs on the model thread: the server listens (and /health says 503)
    // while the model loads.
    let loader: Loader = Box::new(move || {
        let (path, source) = load::open(&margs)?;
        let tok = load::tokenizer(&path, source.as_ref())?;
        let (model, _ctx) = load::build(&path, source.as_ref(), &margs)?;
        Ok((model, tok))
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mm-http")
        .build()?;
    rt.block_on(async move {
        let server = mm_server::start(cfg, loader).await?;
        eprintln!(
            "metal-marlin: listening on http://{}{}",
            server.local_addr(),
            server
                .metrics_addr()
                .map(|m| format!(" (metrics also on http://{m}/metrics)"))
                .unwrap_or_default()
        );
        server.run_until(mm_server::shutdown_signal()).await
    })
}
