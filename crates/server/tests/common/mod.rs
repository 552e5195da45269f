//! Starting real servers on ephemeral ports with the real SmolLM2 (the
//! default model), and small HTTP helpers.
//!
//! The model file comes from `$MM_SMOLLM2_GGUF` or the default-model cache;
//! without it the tests are skipped, unless `MM_REQUIRE_SMOLLM2` is set (as
//! in CI), which makes them fail.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mm_backend_cpu::CpuBackend;
use mm_core::Device;
use mm_server::{KvBudget, Loader, RunningServer, ServerConfig};
use serde_json::Value;

pub fn model_path() -> Option<PathBuf> {
    mm_engine::resolve::smollm2_for_tests()
}

/// Loads SmolLM2 (default precision) on the model thread.
pub fn loader(path: PathBuf) -> Loader {
    Box::new(move || {
        let src = mm_formats::open_source(&path)?;
        let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
        let model =
            mm_models::load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {})?;
        let tok = mm_engine::tokenizer::load_for(&path, src.as_ref())?;
        Ok((model, tok))
    })
}

/// A config for tests: port 0, a small cache.
pub fn config(name: &str) -> ServerConfig {
    let mut cfg = ServerConfig::new(name);
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    cfg.engine.max_num_seqs = 8;
    cfg.engine.kv = KvBudget::Blocks(256);
    cfg.keep_alive = Duration::from_secs(15);
    cfg
}

/// A server on its own runtime (so it outlives any one test's runtime).
pub struct TestServer {
    pub url: String,
    pub name: String,
    rt: Option<tokio::runtime::Runtime>,
    server: Option<RunningServer>,
}

impl TestServer {
    /// Starts a server and waits for its model; `None` when the model file
    /// is absent (the test is skipped).
    pub fn start(cfg: ServerConfig) -> Option<TestServer> {
        let path = model_path()?;
        Some(Self::start_with(cfg, loader(path), true))
    }

    /// Starts a server with `load`; waits for the model when `ready`.
    pub fn start_with(cfg: ServerConfig, load: Loader, ready: bool) -> TestServer {
        let name = cfg.served_model_name.clone();
        // A runtime cannot be started from within the test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test runtime");
            let server = rt.block_on(async {
                let s = mm_server::start(cfg, load).await.expect("server starts");
                if ready {
                    s.wait_ready().await.expect("model loads");
                }
                s
            });
            TestServer {
                url: format!("http://{}", server.local_addr()),
                name,
                rt: Some(rt),
                server: Some(server),
            }
        })
        .join()
        .expect("the test server failed to start")
    }

    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().and_then(|s| s.metrics_addr())
    }

    /// Shuts the server down (from a blocking thread) and reports how long
    /// it took.
    pub async fn shutdown(mut self) -> Duration {
        let t = Instant::now();
        let server = self.server.take().expect("running");
        let rt = self.rt.take().expect("runtime");
        tokio::task::spawn_blocking(move || {
            rt.block_on(server.shutdown()).expect("clean shutdown");
            rt.shutdown_timeout(Duration::from_secs(5));
        })
        .await
        .expect("shutdown thread");
        t.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A runtime may not be dropped inside another one: drop it on a
        // thread of its own (its tasks end; the model thread then sees its
        // inbox closed and stops).
        let (rt, server) = (self.rt.take(), self.server.take());
        if rt.is_some() || server.is_some() {
            let _ = std::thread::spawn(move || {
                drop(server);
                drop(rt);
            })
            .join();
        }
    }
}

/// The server most tests share (started once per test binary).
pub fn shared() -> Option<&'static TestServer> {
    static S: OnceLock<Option<TestServer>> = OnceLock::new();
    S.get_or_init(|| TestServer::start(config("smol-test")))
        .as_ref()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client")
}

/// POSTs JSON; returns the status and the parsed body.
pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.expect("request sent");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// POSTs a streaming request and returns its SSE `data:` payloads in
/// order (`[DONE]` included), checking each event's framing.
pub async fn post_stream(url: &str, body: &Value) -> Vec<String> {
    let r = client()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request sent");
    assert_eq!(r.status().as_u16(), 200, "streaming request failed");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    let text = r.text().await.expect("stream body");
    assert!(text.ends_with("\n\n"), "events end with a blank line");
    text.split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Asserts an OpenAI error body.
pub fn assert_error(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "status; body {body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {body}"
    );
    assert!(e["type"].is_string(), "type: {body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "param/code: {body}"
    );
}

/// The value of a metric line `name{labels...} value` whose labels contain
/// every `want` label.
pub fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            (n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
        })
        .next()
}

/// Polls `/metrics` until `pred` holds (or panics after `secs`).
pub async fn wait_metrics(url: &str, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let (_, m) = get(&format!("{url}/metrics")).await;
        if pred(&m) {
            return m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
