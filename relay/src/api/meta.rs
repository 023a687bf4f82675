//! `GET /healthz` (liveness and drain state) and `GET /v1/models` (the configured models).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fm_protocol::ModelList;
use serde_json::{Value, json};

use super::AppState;
use crate::shutdown::Phase;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/models", get(models))
}

/// 200 while serving; 503 once draining, so load balancers stop sending new work.
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.shutdown().phase() {
        Phase::Running => (StatusCode::OK, Json(json!({"status": "ok"}))),
        Phase::Draining | Phase::Stopped => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        ),
    }
}

async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(state.catalog().list())
}
