//! Prometheus metrics with vLLM's names and buckets, so dashboards and load
//! tools made for vLLM read them. Each server has its own recorder (no
//! process-wide state: several servers may run in one process, as the
//! tests do); the model thread, which sees every event, records them all.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use mm_engine::sched::{FinishReason, SchedulerStats};

pub const RUNNING: &str = "vllm:num_requests_running";
pub const WAITING: &str = "vllm:num_requests_waiting";
pub const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
pub const PROMPT_TOKENS: &str = "vllm:prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "vllm:generation_tokens_total";
pub const REQUEST_SUCCESS: &str = "vllm:request_success_total";
pub const PREEMPTIONS: &str = "vllm:num_preemptions_total";
pub const PREFIX_QUERIES: &str = "vllm:prefix_cache_queries_total";
pub const PREFIX_HITS: &str = "vllm:prefix_cache_hits_total";
pub const TTFT: &str = "vllm:time_to_first_token_seconds";
pub const ITL: &str = "vllm:inter_token_latency_seconds";
pub const E2E: &str = "vllm:e2e_request_latency_seconds";

/// vLLM's buckets (`vllm/v1/metrics/loggers.py`).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// A recorder with the histogram buckets set, and the handle that renders
/// it for `/metrics`.
pub fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
    let mut b = PrometheusBuilder::new();
    for (name, buckets) in [(TTFT, TTFT_BUCKETS), (ITL, ITL_BUCKETS), (E2E, E2E_BUCKETS)] {
        b = match b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets) {
            Ok(b) => b,
            // Only fails for an empty bucket list, which these are not.
            Err(e) => unreachable!("bucket list for {name}: {e}"),
        };
    }
    let rec = b.build_recorder();
    let handle = rec.handle();
    (rec, handle)
}

/// The `# HELP` lines (vLLM's wording).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(RUNNING, "Number of requests in model execution batches.");
    describe_gauge!(WAITING, "Number of requests waiting to be processed.");
    describe_gauge!(KV_USAGE, "KV-cache usage. 1 means 100 percent usage.");
    describe_counter!(PROMPT_TOKENS, "Number of prefill tokens processed.");
    describe_counter!(GENERATION_TOKENS, "Number of generation tokens processed.");
    describe_counter!(REQUEST_SUCCESS, "Count of successfully processed requests.");
    describe_counter!(
        PREEMPTIONS,
        "Cumulative number of preemptions from the engine."
    );
    describe_counter!(
        PREFIX_QUERIES,
        "Prefix cache queries, in terms of number of queried tokens."
    );
    describe_counter!(
        PREFIX_HITS,
        "Prefix cache hits, in terms of number of cached tokens."
    );
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "Histogram of time to first token in seconds."
    );
    describe_histogram!(
        ITL,
        Unit::Seconds,
        "Histogram of inter-token latency in seconds."
    );
    describe_histogram!(
        E2E,
        Unit::Seconds,
        "Histogram of e2e request latency in seconds."
    );
}

/// The server's metric handles, registered once with the `model_name` label.
pub struct ServerMetrics {
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    success_stop: Counter,
    success_length: Counter,
    success_abort: Counter,
    preemptions: Counter,
    prefix_queries: Counter,
    prefix_hits: Counter,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
}

impl ServerMetrics {
    /// Registers every metric on `rec`, labelled `model_name=<model>`.
    pub fn new(rec: &dyn Recorder, model: &str) -> Self {
        metrics::with_local_recorder(rec, || {
            describe();
            let m = model.to_string();
            let done = |reason: &'static str| metrics::counter!(REQUEST_SUCCESS, "model_name" => m.clone(), "finished_reason" => reason);
            let s = Self {
                running: metrics::gauge!(RUNNING, "model_name" => m.clone()),
                waiting: metrics::gauge!(WAITING, "model_name" => m.clone()),
                kv_usage: metrics::gauge!(KV_USAGE, "model_name" => m.clone()),
                prompt_tokens: metrics::counter!(PROMPT_TOKENS, "model_name" => m.clone()),
                generation_tokens: metrics::counter!(GENERATION_TOKENS, "model_name" => m.clone()),
                success_stop: done("stop"),
                success_length: done("length"),
                success_abort: done("abort"),
                preemptions: metrics::counter!(PREEMPTIONS, "model_name" => m.clone()),
                prefix_queries: metrics::counter!(PREFIX_QUERIES, "model_name" => m.clone()),
                prefix_hits: metrics::counter!(PREFIX_HITS, "model_name" => m.clone()),
                ttft: metrics::histogram!(TTFT, "model_name" => m.clone()),
                itl: metrics::histogram!(ITL, "model_name" => m.clone()),
                e2e: metrics::histogram!(E2E, "model_name" => m.clone()),
            };
            // Make every series visible from the start, at zero.
            for c in [
                &s.prompt_tokens,
                &s.generation_tokens,
                &s.success_stop,
                &s.success_length,
                &s.success_abort,
            ] {
                c.increment(0);
            }
            s.publish(&SchedulerStats {
                num_running: 0,
                num_waiting: 0,
                kv_cache_usage: 0.0,
                num_preemptions: 0,
                prefix_cache: Default::default(),
            });
            s
        })
    }

    /// Gauges and cumulative counters from the scheduler.
    pub fn publish(&self, st: &SchedulerStats) {
        self.running.set(st.num_running as f64);
        self.waiting.set(st.num_waiting as f64);
        self.kv_usage.set(st.kv_cache_usage);
        self.preemptions.absolute(st.num_preemptions);
        self.prefix_queries.absolute(st.prefix_cache.queries);
        self.prefix_hits.absolute(st.prefix_cache.hits);
    }

    /// A sequence's first token, `ttft` after it arrived.
    pub fn first_token(&self, prompt_tokens: usize, ttft: Duration) {
        self.prompt_tokens.increment(prompt_tokens as u64);
        self.generation_tokens.increment(1);
        self.ttft.record(ttft.as_secs_f64());
    }

    /// A later token, `gap` after the previous one.
    pub fn next_token(&self, gap: Duration) {
        self.generation_tokens.increment(1);
        self.itl.record(gap.as_secs_f64());
    }

    /// A sequence ended, `e2e` after it arrived.
    pub fn finished(&self, reason: FinishReason, e2e: Duration) {
        match reason {
            FinishReason::Stop => self.success_stop.increment(1),
            FinishReason::Length => self.success_length.increment(1),
            FinishReason::Abort => self.success_abort.increment(1),
        }
        self.e2e.record(e2e.as_secs_f64());
    }
}
