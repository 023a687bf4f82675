//! `POST /v1/chat`: one JSON [`ChatResponse`](fm_protocol::ChatResponse) per request.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use fm_protocol::{ApiErrorBody, ChatRequest, ChatResponse};

use super::edge::Edge;
use super::extract::ApiJson;
use super::{AppState, admit};
use crate::error::RequestError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/chat", post(chat))
}

/// A chat answer as one JSON object
///
/// The request is validated (`fm_protocol`'s rules, the same the clients run), routed, and
/// answered by the first target of its plan that can, with retries and failover behind it.
#[utoipa::path(
    post,
    path = "/v1/chat",
    operation_id = "chat",
    tag = "chat",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer, with the route that served it.", body = ChatResponse),
        (status = 400, description = "The request breaks a rule (`invalid_request`, `malformed_json`, `unknown_model`; `field` names the field), or the upstream refused it (`upstream_rejected`, `context_too_long`).", body = ApiErrorBody),
    ),
)]
async fn chat(
    State(state): State<AppState>,
    edge: Edge,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Json<ChatResponse>, RequestError> {
    let result = async {
        let (ctx, decision) = admit(&state, &edge, &request, false).await?;
        state.executor().complete(ctx, decision, request).await
    }
    .await;
    result
        .map(Json)
        .map_err(|error| error.with_request_id(&edge.request_id))
}
