//! `GET /v1/usage`: what the calling key spent today and this month (UTC), in all and per model
//! — its own figures only, whichever key asks. `GET /v1/admin/usage` (an admin key): every key's,
//! and every model's today. Both read the usage ledger (`limits::ledger`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use fm_protocol::{KeyUsage, UsageReport};

use super::AppState;
use super::edge::Edge;
use crate::error::RequestError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/usage", get(own_usage))
        .route("/v1/admin/usage", get(every_usage))
}

/// What the calling key spent
///
/// Today and this month (UTC), in all and per model: its own figures only, whichever key asks.
#[utoipa::path(
    get,
    path = "/v1/usage",
    operation_id = "get_usage",
    tag = "usage",
    responses((status = 200, description = "The key's spend.", body = KeyUsage)),
)]
async fn own_usage(
    State(state): State<AppState>,
    edge: Edge,
) -> Result<Json<KeyUsage>, RequestError> {
    state
        .limits()
        .key_usage(edge.caller.name())
        .await
        .map(Json)
        .map_err(|err| err.with_request_id(&edge.request_id))
}

/// Every key's spend (an admin key)
///
/// Every key's spend today and this month, and every model's today.
#[utoipa::path(
    get,
    path = "/v1/admin/usage",
    operation_id = "get_all_usage",
    tag = "admin",
    responses((status = 200, description = "The spend.", body = UsageReport)),
)]
async fn every_usage(
    State(state): State<AppState>,
    edge: Edge,
) -> Result<Json<UsageReport>, RequestError> {
    state
        .limits()
        .report()
        .await
        .map(Json)
        .map_err(|err| err.with_request_id(&edge.request_id))
}
