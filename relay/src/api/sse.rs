//! `POST /v1/chat/stream`: the answer as Server-Sent Events, one
//! [`StreamEvent`](fm_protocol::StreamEvent) per event (`event:` its name, `data:` its JSON), with
//! keep-alive comments while the upstream is quiet. Failures before the upstream accepted the call
//! are ordinary JSON error answers; after that they arrive as an `error` event. When the client
//! disconnects, the body is dropped and the upstream call with it.
//!
//! Events that come together (a burst of tokens from the upstream) are written as one body chunk:
//! one write and one TCP segment instead of one per token. What may join a chunk is decided by
//! [`ChatEventStream::gather`]: the `start` event and the first text never wait, and tokens that
//! trickle in at a model's pace are written one by one as they come.

use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::post;
use fm_protocol::{ApiErrorBody, ChatRequest, StreamEvent, encode_sse_frame};
use futures_util::StreamExt;
use tokio::time::{Instant, Sleep};

use super::edge::Edge;
use super::extract::ApiJson;
use super::{AppState, open_stream, take_burst};
use crate::error::RequestError;
use crate::resilience::{ChatEventStream, Restart};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/chat/stream", post(chat_stream))
}

/// A chat answer as Server-Sent Events
///
/// One `StreamEvent` per event (`event:` its `type`, `data:` its JSON): `start`, then
/// `text_delta` and `tool_call` events (and possibly `usage` and `failover`), then exactly one
/// `done` or `error`. Failures before the upstream accepted the call are ordinary JSON error
/// answers; after that they arrive as an `error` event.
#[utoipa::path(
    post,
    path = "/v1/chat/stream",
    operation_id = "chat_stream",
    tag = "chat",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer's events; each event's data is one `StreamEvent`.", body = StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "The request breaks a rule (`invalid_request`, `malformed_json`, `unknown_model`; `field` names the field), or the upstream refused it (`upstream_rejected`, `context_too_long`).", body = ApiErrorBody),
    ),
)]
async fn chat_stream(
    State(state): State<AppState>,
    edge: Edge,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Response, RequestError> {
    let opened = open_stream(&state, &edge, request, Restart::Announce).await;
    let events = opened.map_err(|error| error.with_request_id(&edge.request_id))?;
    Ok(sse_response(stream_body(&state, events, NativeEvents)))
}

/// A `text/event-stream` answer carrying `body`.
pub(super) fn sse_response(body: Body) -> Response {
    stream_response(body, SSE)
}

const SSE: &str = "text/event-stream";

/// A streamed answer of `content_type` carrying `body`, which no cache or proxy should hold.
pub(super) fn stream_response(body: Body, content_type: &'static str) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Ask reverse proxies (nginx) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Turns stream events into one surface's frames: SSE text, or (Bedrock's surface) AWS
/// event-stream frames.
pub(super) trait StreamEncoder: Send + 'static {
    /// Appends the frames for `event` to `chunk`; `false` ends the body after them.
    fn encode(&mut self, event: &StreamEvent, chunk: &mut Vec<u8>) -> bool;

    /// The answer's content type.
    fn content_type(&self) -> &'static str {
        SSE
    }

    /// What is sent after `server.sse_keep_alive_secs` of silence; `None` for a framing that has
    /// no harmless frame.
    fn keep_alive(&self) -> Option<&'static [u8]> {
        Some(b": keep-alive\n\n")
    }
}

/// The native surface: one SSE event per stream event, named after it.
pub(super) struct NativeEvents;

impl StreamEncoder for NativeEvents {
    fn encode(&mut self, event: &StreamEvent, chunk: &mut Vec<u8>) -> bool {
        // Compact JSON never contains a line break (serde_json escapes them inside strings), so
        // the event is one `data:` line, serialised straight into the chunk: no string per event.
        let start = chunk.len();
        chunk.extend_from_slice(b"event: ");
        chunk.extend_from_slice(event.name().as_bytes());
        chunk.extend_from_slice(b"\ndata: ");
        if serde_json::to_writer(&mut *chunk, event).is_err() {
            // Not reachable for these types; `to_json` says what went wrong if it ever is.
            chunk.truncate(start);
            chunk.extend_from_slice(encode_sse_frame(event.name(), &event.to_json()).as_bytes());
            return true;
        }
        chunk.extend_from_slice(b"\n\n");
        true
    }
}

/// The streamed body: each chunk holds the frames of the events that came together (see
/// [`take_burst`]), or the encoder's keep-alive after `server.sse_keep_alive_secs` of silence. One timer per stream: when
/// it fires after recent writes it is re-armed for the keep-alive interval after the last one.
pub(super) fn stream_body(
    state: &AppState,
    events: ChatEventStream,
    encoder: impl StreamEncoder,
) -> Body {
    let keep_alive = Duration::from_secs(state.config().server.sse_keep_alive_secs);
    struct State<E> {
        app: AppState,
        events: ChatEventStream,
        encoder: E,
        timer: Pin<Box<Sleep>>,
        last_write: Instant,
        ended: bool,
    }
    let state = State {
        app: state.clone(),
        events,
        encoder,
        timer: Box::pin(tokio::time::sleep(keep_alive)),
        last_write: Instant::now(),
        ended: false,
    };
    let chunks = futures_util::stream::unfold(state, move |mut state| async move {
        if state.ended {
            return None;
        }
        let mut chunk = Vec::new();
        loop {
            tokio::select! {
                biased;
                event = state.events.next() => {
                    for event in take_burst(&state.app, &mut state.events, event?).await {
                        if !state.encoder.encode(&event, &mut chunk) {
                            state.ended = true;
                            break;
                        }
                    }
                }
                () = state.timer.as_mut() => {
                    let due = state.last_write + keep_alive;
                    let now = Instant::now();
                    match state.encoder.keep_alive() {
                        Some(_) if now < due => state.timer.as_mut().reset(due),
                        Some(frame) => {
                            chunk.extend_from_slice(frame);
                            break;
                        }
                        None => state.timer.as_mut().reset(now + keep_alive),
                    }
                    continue;
                }
            }
            break;
        }
        state.last_write = Instant::now();
        if state.timer.is_elapsed() {
            state.timer.as_mut().reset(state.last_write + keep_alive);
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), state))
    });
    Body::from_stream(chunks)
}

#[cfg(test)]
mod tests {
    use fm_protocol::{
        ErrorCode, ResponseSource, RouteInfo, SseDecoder, StopReason, Timings, Usage,
    };

    use super::*;

    #[test]
    fn native_events_are_the_protocols_sse_frames() {
        let events = [
            StreamEvent::Start {
                request_id: "r1".into(),
                model: "m".into(),
                route: fm_protocol::RouteChoice {
                    rule: "default".into(),
                    ..Default::default()
                },
            },
            StreamEvent::TextDelta {
                text: "two\nlines\r\nand \"quotes\" é".into(),
            },
            StreamEvent::Done {
                stop_reason: StopReason::EndTurn,
                usage: Some(Usage::new(3, 4)),
                timings: Timings {
                    ttft_ms: Some(1.5),
                    total_ms: 2.0,
                },
                route: RouteInfo {
                    model: "m".into(),
                    provider: "bedrock".into(),
                    region: "us-east-1".into(),
                    source: ResponseSource::Primary,
                    attempts: 1,
                    reason: "asked".into(),
                    choice: Default::default(),
                },
                degraded: false,
            },
            StreamEvent::Error {
                code: ErrorCode::UpstreamTimeout,
                message: "slow\nupstream".into(),
                retryable: true,
            },
        ];
        let mut chunk = Vec::new();
        for event in &events {
            assert!(NativeEvents.encode(event, &mut chunk));
        }
        let expected: String = events
            .iter()
            .map(|event| encode_sse_frame(event.name(), &event.to_json()))
            .collect();
        assert_eq!(String::from_utf8(chunk.clone()).unwrap(), expected);
        let decoded: Vec<StreamEvent> = SseDecoder::new()
            .feed(&chunk)
            .unwrap()
            .into_iter()
            .map(|frame| frame.stream_event().unwrap())
            .collect();
        assert_eq!(decoded, events);
    }
}
