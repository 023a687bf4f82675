//! `GET /healthz` (liveness and drain state), `GET /v1/models` (the configured models) and
//! `GET /v1/stats?window_secs=N` (server-side latency per model over the last N seconds, default
//! 300, at most 3600).

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fm_protocol::{ModelList, StatsResponse};
use serde_json::{Value, json};

use super::AppState;
use super::extract::RequestId;
use crate::error::{RelayError, RequestError};
use crate::shutdown::Phase;
use crate::telemetry::window::MAX_WINDOW;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/models", get(models))
        .route("/v1/stats", get(stats))
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

/// The window `GET /v1/stats` reports when none is asked for.
const DEFAULT_STATS_WINDOW_SECS: u64 = 300;

async fn stats(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    RawQuery(query): RawQuery,
) -> Result<Json<StatsResponse>, RequestError> {
    let window_secs = stats_window(query.as_deref()).map_err(|e| e.with_request_id(&request_id))?;
    let mut models = state.window().stats(Duration::from_secs(window_secs));
    for model in &mut models {
        if let Some(entry) = state.catalog().get(&model.model) {
            model.targets = entry.targets.iter().map(|target| target.stats()).collect();
        }
    }
    Ok(Json(StatsResponse {
        window_secs,
        models,
        cache: state.cache().map(|cache| cache.stats()),
    }))
}

/// The `window_secs` query parameter: 1 to the longest window kept, default 300.
fn stats_window(query: Option<&str>) -> Result<u64, RelayError> {
    let max = MAX_WINDOW.as_secs();
    let value = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "window_secs")
        .map(|(_, value)| value);
    let Some(value) = value else {
        return Ok(DEFAULT_STATS_WINDOW_SECS);
    };
    match value.parse::<u64>() {
        Ok(secs) if (1..=max).contains(&secs) => Ok(secs),
        _ => Err(RelayError::InvalidQuery {
            field: "window_secs".into(),
            message: format!(
                "`window_secs` must be a whole number of seconds from 1 to {max}, got `{value}`"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_window_is_checked() {
        assert_eq!(stats_window(None).unwrap(), 300);
        assert_eq!(stats_window(Some("x=1&window_secs=60")).unwrap(), 60);
        for bad in [
            "window_secs=0",
            "window_secs=3601",
            "window_secs=soon",
            "window_secs=",
        ] {
            assert!(stats_window(Some(bad)).is_err(), "{bad}");
        }
    }
}
