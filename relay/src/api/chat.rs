//! `POST /v1/chat`: one JSON [`ChatResponse`](fm_protocol::ChatResponse) per request.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use fm_protocol::{ChatRequest, ChatResponse};

use super::extract::{ApiJson, RequestId};
use super::{AppState, admit};
use crate::error::RequestError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/chat", post(chat))
}

async fn chat(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Json<ChatResponse>, RequestError> {
    let result = async {
        let (ctx, decision) = admit(&state, request_id.clone(), &request)?;
        state.executor().complete(ctx, decision, request).await
    }
    .await;
    result
        .map(Json)
        .map_err(|error| error.with_request_id(&request_id))
}
