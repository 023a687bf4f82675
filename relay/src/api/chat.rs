//! `POST /v1/chat`: one JSON [`ChatResponse`](fm_protocol::ChatResponse) per request.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use fm_protocol::{ChatRequest, ChatResponse};

use super::edge::Edge;
use super::extract::ApiJson;
use super::{AppState, admit};
use crate::error::RequestError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/chat", post(chat))
}

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
