//! What a server is started with: network and API settings
//! ([`ServerConfig`]) and the engine's limits ([`EngineOptions`]), and how
//! the engine's limits become a [`SchedulerConfig`] once the model is known.

use std::time::Duration;

use mm_core::KvDType;
use mm_engine::sched::SchedulerConfig;
use mm_engine::ReasoningParser;
use mm_models::DecoderModel;

/// Default KV-cache budget when neither blocks nor memory are given.
pub const DEFAULT_KV_BYTES: u64 = 1 << 30;

/// Largest request body accepted (bigger ones get 413).
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// Network, API and engine settings of one server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (see `RunningServer::local_addr`).
    pub port: u16,
    /// When set, every API route needs `Authorization: Bearer <key>`
    /// (`/health` and `/metrics` stay open).
    pub api_key: Option<String>,
    /// The model name clients use and `/v1/models` lists.
    pub served_model_name: String,
    /// Answer 503 (Retry-After) once this many sequences wait to be
    /// scheduled; `None`: no limit.
    pub max_queue: Option<usize>,
    /// Serve `/metrics` on this port as well.
    pub metrics_port: Option<u16>,
    /// Request bodies larger than this get 413.
    pub body_limit: usize,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
    /// Which models get reasoning split out of chat answers
    /// (`--reasoning-parser`).
    pub reasoning_parser: ReasoningParser,
    pub engine: EngineOptions,
}

impl ServerConfig {
    /// Defaults for `served_model_name` on 127.0.0.1:8000.
    pub fn new(served_model_name: impl Into<String>) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            served_model_name: served_model_name.into(),
            max_queue: None,
            metrics_port: None,
            body_limit: DEFAULT_BODY_LIMIT,
            keep_alive: Duration::from_secs(15),
            reasoning_parser: ReasoningParser::Auto,
            engine: EngineOptions::default(),
        }
    }
}

/// How big the paged KV cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvBudget {
    /// This many blocks.
    Blocks(usize),
    /// As many blocks as fit in this many bytes.
    Bytes(u64),
}

/// The batched engine's limits (vLLM's flags of the same names).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub max_num_seqs: usize,
    /// Token budget of one step; default `max(2048, max_num_seqs)`.
    pub max_num_batched_tokens: Option<usize>,
    pub kv: KvBudget,
    pub block_size: usize,
    /// Longest prompt plus completion; default the model's context, capped
    /// by what the KV cache holds.
    pub max_model_len: Option<usize>,
    /// f16 by default, f32 for `--exact`.
    pub kv_dtype: KvDType,
    pub enable_prefix_caching: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_num_seqs: 64,
            max_num_batched_tokens: None,
            kv: KvBudget::Bytes(DEFAULT_KV_BYTES),
            block_size: 16,
            max_model_len: None,
            kv_dtype: KvDType::F16,
            enable_prefix_caching: true,
        }
    }
}

impl EngineOptions {
    /// The scheduler's configuration for `model`, or an error naming the
    /// setting that does not fit it.
    pub fn scheduler_config(&self, model: &DecoderModel) -> Result<SchedulerConfig, String> {
        let c = &model.config;
        if self.block_size == 0 {
            return Err("--block-size must be at least 1".into());
        }
        let num_blocks = match self.kv {
            KvBudget::Blocks(n) => n,
            KvBudget::Bytes(b) => {
                let per_block = model.kv_bytes_per_token(self.kv_dtype) * self.block_size;
                (b / per_block.max(1) as u64) as usize
            }
        };
        if num_blocks == 0 {
            return Err(
                "the KV cache would hold no block: raise --kv-memory or --num-kv-blocks".into(),
            );
        }
        let kv_tokens = num_blocks.saturating_mul(self.block_size);
        let model_len = c.max_position_embeddings;
        let max_model_len = match self.max_model_len {
            Some(n) if n > model_len => {
                return Err(format!(
                    "--max-model-len {n} exceeds the model's context length {model_len}"
                ))
            }
            Some(n) if n > kv_tokens => {
                return Err(format!(
                    "--max-model-len {n} exceeds what the KV cache holds ({num_blocks} blocks of {} = {kv_tokens} tokens)",
                    self.block_size
                ))
            }
            Some(n) => n,
            None => model_len.min(kv_tokens),
        };
        let cfg = SchedulerConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self
                .max_num_batched_tokens
                .unwrap_or(2048.max(self.max_num_seqs)),
            block_size: self.block_size,
            num_blocks,
            max_model_len,
            enable_prefix_caching: self.enable_prefix_caching,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}
