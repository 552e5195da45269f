//! The HTTP routes: the OpenAI API (behind the API key when one is set),
//! `/health` and `/metrics` (always open), and OpenAI-shaped 404/405
//! answers for everything else.

mod chat;
mod completions;
mod tokenize;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::worker::{EngineHandle, Status};

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<ServerConfig>,
    pub engine: EngineHandle,
    pub metrics: PrometheusHandle,
    /// Unix time the server started (`created` of `/v1/models`).
    pub started: u64,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(state.cfg.body_limit))
        .with_state(state)
}

/// `/metrics` alone (for `--metrics-port`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .with_state(state)
}

/// 401 unless `Authorization: Bearer <key>` matches the configured key.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 200 once the model is loaded; 503 while it loads or after it failed.
async fn health(State(state): State<AppState>) -> Response {
    match state.engine.shared().status() {
        Status::Ready => (StatusCode::OK, Json(json!({"status": "ok"}))).into_response(),
        Status::Loading => ApiError::unavailable("The model is still loading.").into_response(),
        Status::Failed | Status::Stopped => {
            ApiError::unavailable("The model is not available.").into_response()
        }
    }
}

async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let name = &state.cfg.served_model_name;
    let max_len = state.engine.shared().info().map(|i| i.max_model_len);
    Json(json!({
        "object": "list",
        "data": [{
            "id": name,
            "object": "model",
            "created": state.started,
            "owned_by": "metal-marlin",
            "root": name,
            "max_model_len": max_len,
        }],
    }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
