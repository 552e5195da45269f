//! metal-marlin's OpenAI-compatible HTTP server.
//!
//! One model thread owns the model and a continuous-batching
//! [`mm_engine::batch::BatchEngine`]; axum handlers on a tokio runtime
//! validate requests, render chat templates, tokenize, and exchange jobs
//! and token events with that thread over channels (see [`worker`]).
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`, `POST /tokenize`, `POST /detokenize`, `GET /health`,
//! `GET /metrics` (Prometheus, vLLM's metric names). Errors are OpenAI's
//! `{"error": {...}}` objects ([`error::ApiError`]).
//!
//! ```no_run
//! # async fn f(load: mm_server::Loader) -> anyhow::Result<()> {
//! let server = mm_server::start(mm_server::ServerConfig::new("my-model"), load).await?;
//! server.run_until(mm_server::shutdown_signal()).await
//! # }
//! ```

pub mod config;
pub mod error;
mod gen;
mod logprobs;
pub mod params;
pub mod protocol;
mod routes;
mod sse;
pub mod worker;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{EngineOptions, KvBudget, ServerConfig};
pub use worker::{Loader, Status};

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A started server: listening, its model loading or loaded.
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    engine: worker::EngineHandle,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    model_thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds the listeners, starts the model thread (which calls `load`) and
/// serves. `/health` answers 503 until the model is loaded.
pub async fn start(cfg: ServerConfig, load: Loader) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match cfg.metrics_port {
        Some(p) => Some(
            TcpListener::bind((cfg.host.as_str(), p))
                .await
                .with_context(|| format!("cannot listen on {}:{p} (--metrics-port)", cfg.host))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let (recorder, metrics) = worker::recorder();
    let (engine, model_thread) = worker::spawn(
        load,
        cfg.engine.clone(),
        cfg.reasoning_parser,
        cfg.served_model_name.clone(),
        recorder,
    )
    .context("cannot start the model thread")?;
    let state = routes::AppState {
        cfg: Arc::new(cfg),
        engine: engine.clone(),
        metrics,
        started: gen::unix_now(),
    };
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let app = routes::router(state.clone());
    tasks.push(tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(wait(stopped.clone()))
            .into_future(),
    ));
    if let Some(l) = metrics_listener {
        let app = routes::metrics_router(state);
        tasks.push(tokio::spawn(
            axum::serve(l, app)
                .with_graceful_shutdown(wait(stopped))
                .into_future(),
        ));
    }
    tracing::info!("listening on http://{addr}");
    Ok(RunningServer {
        addr,
        metrics_addr,
        engine,
        stop,
        tasks,
        model_thread: Some(model_thread),
    })
}

impl RunningServer {
    /// Where the API listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the separate `/metrics` listener is, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the model thread is.
    pub fn status(&self) -> Status {
        self.engine.shared().status()
    }

    /// Waits until the model is loaded; errors with the reason when it
    /// failed to load.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        loop {
            match self.status() {
                Status::Ready => return Ok(()),
                Status::Loading => tokio::time::sleep(Duration::from_millis(20)).await,
                Status::Failed | Status::Stopped => {
                    let why = self.engine.shared().error().unwrap_or_default();
                    anyhow::bail!("the model thread stopped: {why}")
                }
            }
        }
    }

    /// Serves until `signal` completes (or the model fails to load), then
    /// shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let failed = async {
            loop {
                if matches!(self.status(), Status::Failed) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let load_error = tokio::select! {
            _ = signal => None,
            _ = failed => self.engine.shared().error(),
        };
        self.shutdown().await?;
        match load_error {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(()),
        }
    }

    /// Stops accepting connections, cancels every request in flight (their
    /// streams end), stops the model thread and waits for all of it.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        let _ = self.stop.send(true);
        self.engine.shutdown();
        for t in self.tasks.drain(..) {
            match tokio::time::timeout(SHUTDOWN_GRACE, t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!("server task ended with: {e}"),
                Ok(Err(e)) => tracing::warn!("server task failed: {e}"),
                Err(_) => {
                    tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing")
                }
            }
        }
        if let Some(j) = self.model_thread.take() {
            let joined = tokio::task::spawn_blocking(move || j.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                anyhow::bail!("the model thread panicked");
            }
        }
        Ok(())
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
