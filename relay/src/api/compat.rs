//! What the drop-in surfaces ([`super::openai`], [`super::anthropic`]) share: a request's way
//! through admission to a JSON answer or to an SSE stream of the surface's own frames (resumed by
//! replay when another target must restart it, since these clients cannot take text back),
//! errors in the surface's own body with the relay's status and `Retry-After`, and what such a
//! client is told when a restarted answer cannot continue what it already showed.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fm_protocol::{ApiError, ChatRequest, ChatResponse, Message, Usage};
use serde_json::Value;

use super::edge::Edge;
use super::sse::{StreamEncoder, stream_body, stream_response};
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
    stream: Option<impl StreamEncoder>,
    body: impl FnOnce(&ChatResponse) -> Value,
) -> Result<Response, RelayError> {
    match stream {
        Some(encoder) => {
            let content_type = encoder.content_type();
            let events = open_stream(state, edge, request, Restart::Replay).await?;
            Ok(stream_response(
                stream_body(state, events, encoder),
                content_type,
            ))
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

/// A 400 `invalid_request` naming `field`: well-formed, but not something the relay does.
pub(super) fn unsupported(field: impl Into<String>, message: impl Into<String>) -> RelayError {
    RelayError::Invalid(fm_protocol::ValidationError::new(field, message))
}

/// Message `index` of a conversation whose roles are `user` and `assistant`.
pub(super) fn message(index: usize, role: &str, text: String) -> Result<Message, RelayError> {
    match role {
        "user" => Ok(Message::user(text)),
        "assistant" => Ok(Message::assistant(text)),
        other => Err(unsupported(
            format!("messages[{index}].role"),
            format!("role `{other}` is not one of `user`, `assistant`"),
        )),
    }
}

/// The upstream's token counts, or — for clients that expect counts — the relay's estimate from
/// the prompt's and the answer's characters when it reported none (marked `estimated`).
pub(super) fn usage_or_estimate(
    usage: Option<Usage>,
    prompt_chars: usize,
    answer_chars: usize,
) -> Usage {
    usage.unwrap_or_else(|| Usage::estimate_from_chars(prompt_chars, answer_chars))
}
