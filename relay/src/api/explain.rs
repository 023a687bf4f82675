//! `POST /v1/route/explain?path=PATH`: the routing decision a chat request would get on `PATH`
//! (default `/v1/chat`) from this caller now — the rule, the content class, the candidates and
//! why any were passed over, and the whole plan — without calling a model. It is made by the
//! same function a real request's admission calls ([`super::decide`]), framed the same way for a
//! purpose-built route.

use axum::extract::{RawQuery, State};
use axum::routing::post;
use axum::{Json, Router};
use fm_protocol::{ApiErrorBody, ChatRequest, PlannedTarget, RouteExplanation};

use super::edge::Edge;
use super::extract::{ApiJson, query_param};
use super::{AppState, decide, routes};
use crate::config::routing::CHAT_PATHS;
use crate::error::{RelayError, RequestError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/route/explain", post(explain))
}

/// The routing decision a chat request would get, without calling a model
///
/// The rule that fired, the content class, the candidates and why any were passed over, and the
/// whole plan — for this caller, now, on `path` (default `/v1/chat`).
#[utoipa::path(
    post,
    path = "/v1/route/explain",
    operation_id = "explain_route",
    tag = "chat",
    request_body = ChatRequest,
    params(("path" = Option<String>, Query, description = "The surface to explain the request for: a chat surface or a configured route (default `/v1/chat`).")),
    responses(
        (status = 200, description = "The decision.", body = RouteExplanation),
        (status = 400, description = "The request breaks a rule, or `path` calls no model (`invalid_request`, `malformed_json`, `unknown_model`; `field` names the field).", body = ApiErrorBody),
    ),
)]
async fn explain(
    State(state): State<AppState>,
    edge: Edge,
    RawQuery(query): RawQuery,
    ApiJson(mut request): ApiJson<ChatRequest>,
) -> Result<Json<RouteExplanation>, RequestError> {
    let result = (|| {
        let path = explained_path(query.as_deref());
        let table = state.routing().table();
        let route = table.policy().route(&path);
        if !CHAT_PATHS.contains(&path.as_str()) && route.is_none() {
            return Err(RelayError::InvalidQuery {
                field: "path".into(),
                message: format!(
                    "`{path}` does not call a model: give a chat surface ({}) or a configured route",
                    CHAT_PATHS.join(", ")
                ),
            });
        }
        if let Some(route) = route {
            routes::frame(&mut request, &route.config)?;
        }
        let decision = decide(&state, &edge, &path, &request)?;
        edge.set_route_header(decision.header_value());
        Ok(RouteExplanation {
            path,
            model: decision.first_model().config.id.clone(),
            plan: decision
                .plan
                .iter()
                .map(|step| PlannedTarget {
                    model: step.model.config.id.clone(),
                    region: step.target.region().to_string(),
                    source: step.source,
                })
                .collect(),
            route: decision.choice,
            reason: decision.reason,
        })
    })();
    result
        .map(Json)
        .map_err(|error| error.with_request_id(&edge.request_id))
}

/// The `path` query parameter (percent-decoded slashes allowed), `/v1/chat` when absent.
fn explained_path(query: Option<&str>) -> String {
    query_param(query, "path")
        .map(|value| value.replace("%2F", "/").replace("%2f", "/"))
        .unwrap_or_else(|| "/v1/chat".into())
}
