//! `GET /healthz` (liveness and drain state), `GET /v1/models` and `GET /v1/models/{id}` (the
//! configured models, in OpenAI's list and model shapes with the relay's fields beside),
//! `GET /v1/stats?window_secs=N` (server-side latency per model over the last N seconds, default
//! 300, at most 3600) and `GET /metrics` (for Prometheus, in the OpenMetrics text format through
//! `prometheus-client`: histograms of time to first token, total time, tokens and attempts;
//! counters of requests, routing decisions by rule, fallbacks by reason and cost; each target's
//! circuit, its cool-down and rate limit; connections, limits and cache counters).

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use fm_protocol::{ApiErrorBody, ModelInfo, ModelList, StatsResponse};
use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::edge::Edge;
use super::extract::{RequestId, query_param};
use crate::error::{RelayError, RequestError};
use crate::shutdown::Phase;
use crate::telemetry::metrics::{self, Families, Kind};
use crate::telemetry::window::MAX_WINDOW;
use crate::telemetry::{Ending, ReplayOutcome};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
}

/// The answer of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
}

/// Whether the relay takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Serving.
    Ok,
    /// Shutting down: finishing the work in progress, taking no new work.
    Draining,
}

/// Liveness and drain state
///
/// 200 while serving; 503 once draining, so load balancers stop sending new work. Needs no key.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "Serving.", body = Health),
        (status = 503, description = "Draining for shutdown: send new work elsewhere.", body = Health),
    ),
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    match state.shutdown().phase() {
        Phase::Running => (
            StatusCode::OK,
            Json(Health {
                status: HealthStatus::Ok,
            }),
        ),
        Phase::Draining | Phase::Stopped => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: HealthStatus::Draining,
            }),
        ),
    }
}

/// The models the caller's key may use
///
/// In OpenAI's list shape (what `client.models.list()` of the OpenAI SDKs reads), with the
/// relay's fields beside each model and the routing hints a request may give. A key that names
/// its models sees only those.
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "list_models",
    tag = "models",
    responses((status = 200, description = "The models.", body = ModelList)),
)]
async fn models(State(state): State<AppState>, edge: Edge) -> Json<ModelList> {
    let mut list = state.routing().table().list();
    list.data
        .retain(|model| edge.caller.key().may_use_model(&model.id));
    Json(list)
}

/// One model by its id
///
/// A 404 naming it for one the relay does not have or the key may not use.
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    operation_id = "get_model",
    tag = "models",
    params(("id" = String, Path, description = "A model id from `GET /v1/models`.")),
    responses(
        (status = 200, description = "The model.", body = ModelInfo),
        (status = 404, description = "No such model, or not one the key may use (`not_found`).", body = ApiErrorBody),
    ),
)]
async fn model(
    State(state): State<AppState>,
    edge: Edge,
    Path(id): Path<String>,
) -> Result<Json<ModelInfo>, RequestError> {
    state
        .routing()
        .table()
        .list()
        .data
        .into_iter()
        .find(|model| model.id == id && edge.caller.key().may_use_model(&model.id))
        .map(Json)
        .ok_or_else(|| RelayError::ModelNotFound { id }.with_request_id(&edge.request_id))
}

/// The window `GET /v1/stats` reports when none is asked for.
const DEFAULT_STATS_WINDOW_SECS: u64 = 300;

/// The query of `GET /v1/stats` (read by [`stats_window`]; this type describes it).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    #[param(schema_with = stats_window_schema)]
    pub window_secs: Option<u64>,
}

/// `window_secs`: 1 to the longest window kept ([`MAX_WINDOW`]).
fn stats_window_schema() -> RefOr<Schema> {
    super::openapi::whole_number_from_one(
        MAX_WINDOW.as_secs(),
        DEFAULT_STATS_WINDOW_SECS,
        "How far back the figures reach, in seconds",
    )
}

/// Latency, errors and health per model
///
/// Server-side figures over the last `window_secs`: time to first token and total time
/// percentiles, tokens, errors by kind, each target's circuit, and the answer cache's counters.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "get_stats",
    tag = "meta",
    params(StatsQuery),
    responses(
        (status = 200, description = "The figures.", body = StatsResponse),
        (status = 400, description = "`window_secs` out of range (`invalid_request`, naming the field).", body = ApiErrorBody),
    ),
)]
async fn stats(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    RawQuery(query): RawQuery,
) -> Result<Json<StatsResponse>, RequestError> {
    let window_secs = stats_window(query.as_deref()).map_err(|e| e.with_request_id(&request_id))?;
    let window = Duration::from_secs(window_secs);
    let mut models = state.window().stats(window);
    let table = state.routing().table();
    for model in &mut models {
        if let Some(entry) = table.catalog().get(&model.model) {
            model.targets = entry
                .targets
                .iter()
                .map(|target| target.stats(window, table.board().tripped(target)))
                .collect();
        }
    }
    Ok(Json(StatsResponse {
        window_secs,
        models,
        cache: state.cache().map(|cache| cache.stats()),
    }))
}

/// The relay's metrics, for Prometheus
///
/// The OpenMetrics text format (which Prometheus reads): histograms of time to first token,
/// total time, tokens and attempts; counters of requests, routing decisions, fallbacks and cost;
/// each target's circuit and rate limit; connections, limits and cache counters — gathered now.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    responses((status = 200, description = "The metrics.", body = String, content_type = metrics::CONTENT_TYPE)),
)]
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let mut out = Families::default();
    out.family("fm_relay_requests_total",
        Kind::Counter,
        "Requests that ended, per model they were routed to and outcome: ok, error (degraded answers are errors) or cancelled (the client went away first).",
    );
    let models = state.window().totals();
    for (model, series) in &models {
        for ending in [Ending::Ok, Ending::Error, Ending::Cancelled] {
            out.sample(
                "fm_relay_requests_total",
                &[("model", model), ("outcome", ending.as_str())],
                series.totals().ended(ending) as f64,
            );
        }
    }
    out.family(
        "fm_relay_failed_attempts_total",
        Kind::Counter,
        "Upstream calls that failed and were answered elsewhere (not completions).",
    );
    for (model, series) in &models {
        let value = series
            .totals()
            .failed_attempts
            .load(std::sync::atomic::Ordering::Relaxed);
        out.sample(
            "fm_relay_failed_attempts_total",
            &[("model", model)],
            value as f64,
        );
    }
    let writes = state.stream_writes();
    for (name, help, value) in [
        (
            "fm_relay_stream_events_total",
            "Events sent to streaming clients (SSE and WebSocket).",
            writes.events(),
        ),
        (
            "fm_relay_stream_writes_total",
            "Writes that carried those events (SSE body chunks, WebSocket flushes); events per write shows how bursts of tokens are batched.",
            writes.writes(),
        ),
    ] {
        out.family(name, Kind::Counter, help);
        out.sample(name, &[], value as f64);
    }
    let connections = state.connections();
    let health = state.limits().health();
    labelled_counts(
        &mut out,
        "fm_relay_connections_closed_total",
        "Connections the relay closed on its own: over_capacity (server.max_connections were open: answered 503), header_timeout (no complete request headers within server.header_read_timeout_ms: slow, silent or idle keep-alive clients), header_too_large (over server.max_headers or server.max_header_bytes: answered 431), write_timeout (a write made no progress for server.write_timeout_secs: a client that stopped reading), ws_too_big (a WebSocket message or frame over the size limit: close code 1009), ws_protocol_error (a broken WebSocket frame: 1002), ws_idle (a WebSocket idle for server.ws_idle_timeout_secs: 1008).",
        "reason",
        &[
            ("over_capacity", &connections.over_capacity),
            ("header_timeout", &connections.header_timeouts),
            ("header_too_large", &connections.headers_too_large),
            ("write_timeout", &connections.write_timeouts),
            ("ws_too_big", &connections.ws_too_big),
            ("ws_protocol_error", &connections.ws_protocol_errors),
            ("ws_idle", &connections.ws_idle),
        ],
    );
    labelled_counts(
        &mut out,
        "fm_relay_limits_redis_calls_total",
        "Round trips to the limits' Redis: admit (one script per request) and write (settled corrections and ledger rows, written a few times a second whatever the request rate).",
        "call",
        &[
            ("admit", &health.redis_admissions),
            ("write", &health.redis_writes),
        ],
    );
    for (name, help, value) in [
        (
            "fm_relay_connections_open",
            "HTTP connections open now.",
            &connections.open,
        ),
        (
            "fm_relay_connections_accepted_total",
            "HTTP connections accepted since start-up.",
            &connections.accepted,
        ),
        (
            "fm_relay_connections_http2_total",
            "HTTP connections accepted since start-up that spoke HTTP/2 (prior knowledge, h2c).",
            &connections.http2,
        ),
        (
            "fm_relay_limits_redis_errors_total",
            "Admissions for which the limits' Redis failed or did not answer within limits.redis_timeout_ms.",
            &health.redis_errors,
        ),
        (
            "fm_relay_limits_served_locally_total",
            "Requests admitted by this process's own counters while Redis could not be reached (on_redis_error = fail_open).",
            &health.served_locally,
        ),
        (
            "fm_relay_limits_unavailable_total",
            "Requests refused with 503 limits_unavailable while Redis could not be reached (on_redis_error = fail_closed).",
            &health.refused_unavailable,
        ),
    ] {
        let kind = match name.ends_with("_total") {
            true => Kind::Counter,
            false => Kind::Gauge,
        };
        out.family(name, kind, help);
        let value = value.load(std::sync::atomic::Ordering::Relaxed);
        out.sample(name, &[], value as f64);
    }
    out.family("fm_relay_stream_replays_total",
        Kind::Counter,
        "Answers restarted on the OpenAI surface and held back until they reproduced the text already sent: resumed (it matched), diverged (it did not; the stream ended with an error), failed (the target failed during the replay).",
    );
    for outcome in ReplayOutcome::ALL {
        let value = state.executor().replays().count(outcome);
        out.sample(
            "fm_relay_stream_replays_total",
            &[("outcome", outcome.as_str())],
            value as f64,
        );
    }
    out.family(
        "fm_relay_circuit_state",
        Kind::Gauge,
        "Each target's circuit breaker: 1 for the state it is in.",
    );
    out.family(
        "fm_relay_circuit_open_seconds",
        Kind::Gauge,
        "How long each target's breaker stays open this time (it grows with the outage; 0 while closed).",
    );
    out.family(
        "fm_relay_client_rate_limit",
        Kind::Gauge,
        "Calls per second the relay allows itself to a target that throttled (absent when not limiting).",
    );
    out.family(
        "fm_relay_target_calls_total",
        Kind::Counter,
        "Calls to each target by outcome: ok (it answered) or failed (the request moved on or ended with the error).",
    );
    let table = state.routing().table();
    for entry in table.catalog().models() {
        let model = &entry.config.id;
        for target in &entry.targets {
            let circuit = target.breaker.status();
            let labels = [
                ("model", model.as_str()),
                ("target", target.name.as_str()),
                ("region", target.region()),
            ];
            let calls = target.calls.totals();
            for (outcome, counter) in [("ok", &calls.ok), ("failed", &calls.failed_attempts)] {
                let mut with_outcome = labels.to_vec();
                with_outcome.push(("outcome", outcome));
                out.sample(
                    "fm_relay_target_calls_total",
                    &with_outcome,
                    counter.load(std::sync::atomic::Ordering::Relaxed) as f64,
                );
            }
            for (name, state_now) in [
                ("closed", fm_protocol::CircuitState::Closed),
                ("half_open", fm_protocol::CircuitState::HalfOpen),
                ("open", fm_protocol::CircuitState::Open),
            ] {
                let mut with_state = labels.to_vec();
                with_state.push(("state", name));
                let value = if circuit.state == state_now { 1.0 } else { 0.0 };
                out.sample("fm_relay_circuit_state", &with_state, value);
            }
            let open_ms = circuit.open_ms.unwrap_or(0);
            out.sample(
                "fm_relay_circuit_open_seconds",
                &labels,
                open_ms as f64 / 1000.0,
            );
            if let Some(rate) = target.limiter.allowed_rate() {
                out.sample("fm_relay_client_rate_limit", &labels, rate);
            }
        }
    }
    if let Some(cache) = state.cache() {
        let stats = cache.stats();
        out.family(
            "fm_relay_cache_lookups_total",
            Kind::Counter,
            "Answer-cache lookups by result.",
        );
        for (result, value) in [
            ("exact_hit", stats.exact_hits),
            ("semantic_hit", stats.semantic_hits),
            ("stale_hit", stats.stale_hits),
            ("miss", stats.misses),
            ("error", stats.errors),
        ] {
            out.sample(
                "fm_relay_cache_lookups_total",
                &[("result", result)],
                value as f64,
            );
        }
        out.family(
            "fm_relay_cache_stored_total",
            Kind::Counter,
            "Answers stored in the cache.",
        );
        out.sample("fm_relay_cache_stored_total", &[], stats.stored as f64);
    }
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(state.window().metrics(), out),
    )
}

/// A counter family with one label, from counts the relay keeps.
fn labelled_counts(
    out: &mut Families,
    name: &str,
    help: &str,
    label: &str,
    counts: &[(&str, &std::sync::atomic::AtomicU64)],
) {
    out.family(name, Kind::Counter, help);
    for (value_label, count) in counts {
        let value = count.load(std::sync::atomic::Ordering::Relaxed);
        out.sample(name, &[(label, value_label)], value as f64);
    }
}

/// The `window_secs` query parameter: 1 to the longest window kept, default 300.
fn stats_window(query: Option<&str>) -> Result<u64, RelayError> {
    let max = MAX_WINDOW.as_secs();
    let Some(value) = query_param(query, "window_secs") else {
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
