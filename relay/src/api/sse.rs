//! `POST /v1/chat/stream`: the answer as Server-Sent Events, one
//! [`StreamEvent`](fm_protocol::StreamEvent) per event (`event:` its name, `data:` its JSON), with
//! keep-alive comments while the upstream is quiet. Failures before the upstream accepted the call
//! are ordinary JSON error answers; after that they arrive as an `error` event. When the client
//! disconnects, the body is dropped and the upstream call with it.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use fm_protocol::ChatRequest;
use futures_util::StreamExt;

use super::extract::{ApiJson, RequestId};
use super::{AppState, admit};
use crate::error::RequestError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/chat/stream", post(chat_stream))
}

async fn chat_stream(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Response, RequestError> {
    let opened = async {
        let (ctx, decision) = admit(&state, request_id.clone(), &request)?;
        state.executor().open_stream(ctx, decision, &request).await
    }
    .await;
    let events = opened.map_err(|error| error.with_request_id(&request_id))?;
    let frames = events.map(|event| {
        Ok::<_, Infallible>(Event::default().event(event.name()).data(event.to_json()))
    });
    let keep_alive = Duration::from_secs(state.config().server.sse_keep_alive_secs);
    let mut response = Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    // Ask reverse proxies (nginx) not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
