//! What the drop-in surfaces ([`super::openai`], [`super::anthropic`]) share: a request's way
//! through admission to a JSON answer or to an SSE stream of the surface's own frames (resumed by
//! replay when another target must restart it, since these clients cannot take text back),
//! errors in the surface's own body with the relay's status and `Retry-After`, and what such a
//! client is told when a restarted answer cannot continue what it already showed.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fm_protocol::{ApiError, ChatRequest, ChatResponse};
use serde_json::Value;

use super::edge::Edge;
use super::sse::{SseEncoder, sse_body, sse_response};
use super::{AppState, admit, open_stream};
use crate::error::RelayError;
use crate::resilience::Restart;

/// Why a stream that already sent text ends when its answer restarted from scratch elsewhere.
pub(super) const CANNOT_TAKE_BACK: &str = "the upstream broke off and the answer restarted on \
    another target; the partial answer cannot be taken back: send the request again";

/// Answers `request`: as a stream of `stream`'s frames when it is given, else as `body` makes
/// the whole answer.
pub(super) async fn answer(
    state: &AppState,
    edge: &Edge,
    request: ChatRequest,
    stream: Option<impl SseEncoder>,
    body: impl FnOnce(&ChatResponse) -> Value,
) -> Result<Response, RelayError> {
    match stream {
        Some(encoder) => {
            let events = open_stream(state, edge, request, Restart::Replay).await?;
            Ok(sse_response(sse_body(state, events, encoder)))
        }
        None => {
            let (ctx, decision) = admit(state, edge, &request, false).await?;
            let answer = state.executor().complete(ctx, decision, request).await?;
            Ok(Json(body(&answer)).into_response())
        }
    }
}

/// `err` as a surface's error answer: `body` of the relay's error and status, sent with that
/// status (and `Retry-After` when known); server errors are logged.
pub(super) fn error_response(
    err: RelayError,
    request_id: &str,
    body: impl FnOnce(&ApiError, StatusCode) -> Value,
) -> Response {
    let status = err.status();
    if status.is_server_error() {
        tracing::warn!(error = %err, request_id, "request failed");
    }
    let error = err.to_body(Some(request_id)).error;
    let mut response = (status, Json(body(&error, status))).into_response();
    err.add_retry_after(&mut response);
    response
}
