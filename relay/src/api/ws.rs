//! `GET /v1/ws`: chat over a WebSocket. Each text frame the client sends is one
//! [`ChatRequest`]; the relay answers with the same [`StreamEvent`]s as the SSE route, one JSON
//! text frame each, ending in exactly one terminal event (`done` or `error`) per request. Several
//! requests can use one connection: every frame is answered in the order it arrived (a frame that
//! is not a valid request gets an `error` event in its turn), so the n-th terminal event answers
//! the n-th frame. Events that come together (a burst of tokens, see
//! [`ChatEventStream::gather`]) are sent as their frames with one flush. Frames that arrive while
//! an answer streams wait in a bounded queue (`server.ws_max_queued_requests`); when it is full
//! the relay stops reading the socket until there is room, which pushes back on the client
//! through TCP.
//!
//! Closing the socket cancels the answer in progress (and its upstream call). While the relay
//! drains for shutdown, new requests get a `shutting_down` error and an idle socket is closed
//! with code 1001 (going away). A message over the size limit is answered with close code 1009
//! (too big), a broken frame with 1002 (protocol error), and a socket with nothing to answer that
//! sent nothing for `server.ws_idle_timeout_secs` is closed with 1008 (policy): an idle
//! WebSocket holds a connection as an idle keep-alive would, and the header-read timeout no longer
//! applies once a connection is upgraded. A client that stops reading meets the connection's
//! write timeout (`server.write_timeout_secs`, see `connections`): the socket closes and the
//! answer's upstream call with it. Each of these closes is counted in `/metrics`. The upgrade
//! passed the edge like any request (origin, API key); each request frame is admitted to the
//! limits on its own.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fm_protocol::{ChatRequest, StreamEvent};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use super::edge::Edge;
use super::extract::{RequestId, parse_json};
use super::{AppState, open_stream, take_burst};
use crate::error::RelayError;
use crate::resilience::{ChatEventStream, Restart};
use crate::shutdown::Phase;

/// Outgoing frames gather up to this many bytes before a write; the socket is flushed at the end
/// of every burst anyway. A socket whose client stopped reading holds at most this and one more
/// frame (writes wait for the flush), until `server.write_timeout_secs` closes it.
const WRITE_BUFFER_BYTES: usize = 32 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    edge: Edge,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return RelayError::NotUpgradable(rejection)
                .with_request_id(&edge.request_id)
                .into_response();
        }
    };
    upgrade
        .max_message_size(fm_protocol::limits::MAX_BODY_BYTES)
        .max_frame_size(fm_protocol::limits::MAX_BODY_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + fm_protocol::limits::MAX_BODY_BYTES)
        // The chat page offers `fm-relay` (and its API key as a second protocol: `api::edge`).
        .protocols(["fm-relay"])
        .on_upgrade(move |socket| {
            let tracker = state.ws_tracker().clone();
            tracker.track_future(Session::new(state, edge, socket).run())
        })
}

/// One WebSocket connection.
struct Session {
    state: AppState,
    /// The caller the upgrade was admitted for.
    edge: Edge,
    socket: WebSocket,
    /// Frames waiting for their turn: a request, or the error that answers a bad frame.
    queue: VecDeque<Result<ChatRequest, RelayError>>,
    current: Option<ChatEventStream>,
}

/// What the socket or the answer in progress produced.
enum Input {
    Frame(Option<Result<Message, axum::Error>>),
    Event(Option<StreamEvent>),
    Draining,
    Idle,
}

impl Session {
    fn new(state: AppState, edge: Edge, socket: WebSocket) -> Self {
        Session {
            state,
            edge,
            socket,
            queue: VecDeque::new(),
            current: None,
        }
    }

    async fn run(mut self) {
        let idle_timeout = Duration::from_secs(self.state.config().server.ws_idle_timeout_secs);
        let mut last_frame = Instant::now();
        loop {
            if self.current.is_none()
                && let Some(next) = self.queue.pop_front()
            {
                let started = match next {
                    Ok(request) => self.start(request).await,
                    Err(err) => self.send_error(err).await,
                };
                if !started {
                    return;
                }
                continue;
            }
            let draining =
                self.current.is_none() && self.state.shutdown().phase() != Phase::Running;
            if draining {
                let _ = self
                    .socket
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: Utf8Bytes::from_static("the relay is shutting down"),
                    })))
                    .await;
                return;
            }
            let shutdown = self.state.shutdown().clone();
            let room = self.queue.len() < self.state.config().server.ws_max_queued_requests;
            let idle = self.current.is_none() && self.queue.is_empty();
            let input = tokio::select! {
                frame = self.socket.recv(), if room => Input::Frame(frame),
                event = next_event(&mut self.current) => Input::Event(event),
                () = shutdown.reached(Phase::Draining), if self.current.is_none() => Input::Draining,
                () = tokio::time::sleep_until(last_frame + idle_timeout), if idle => Input::Idle,
            };
            let keep_going = match input {
                Input::Frame(Some(Ok(message))) => {
                    last_frame = Instant::now();
                    self.on_message(message)
                }
                Input::Idle => {
                    let stats = self.state.connections();
                    stats.ws_idle.fetch_add(1, Ordering::Relaxed);
                    let reason = format!("idle for {} s", idle_timeout.as_secs());
                    let frame = CloseFrame {
                        code: close_code::POLICY,
                        reason: Utf8Bytes::from(reason),
                    };
                    let _ = self.socket.send(Message::Close(Some(frame))).await;
                    false
                }
                // A frame the socket could not take: say why in the close frame.
                Input::Frame(Some(Err(err))) => {
                    self.close_after(err).await;
                    false
                }
                // The client left: dropping `current` cancels upstream.
                Input::Frame(None) => false,
                Input::Event(Some(event)) => self.send_burst(event).await,
                Input::Event(None) => {
                    self.current = None;
                    true
                }
                Input::Draining => true,
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Queues one client frame; returns whether the session goes on.
    fn on_message(&mut self, message: Message) -> bool {
        let entry = match message {
            Message::Text(text) => parse_json::<ChatRequest>(text.as_bytes()),
            Message::Close(_) => return false,
            // Pings are answered by the socket itself.
            Message::Ping(_) | Message::Pong(_) => return true,
            Message::Binary(_) => Err(RelayError::MalformedJson {
                message:
                    "binary frames are not supported; send each ChatRequest as a JSON text frame"
                        .into(),
                field: None,
            }),
        };
        self.queue.push_back(entry);
        true
    }

    /// Closes the socket after a frame it could not take: 1009 for a message over the size
    /// limit, 1002 for a protocol error (the connection may be gone already: then nothing is
    /// sent).
    async fn close_after(&mut self, err: axum::Error) {
        let stats = self.state.connections().clone();
        if stats.count_write_timeout(&err) {
            return;
        }
        let (code, reason) = match err.into_inner().downcast::<tungstenite::Error>() {
            Ok(err) => match *err {
                tungstenite::Error::Capacity(_) => {
                    stats.ws_too_big.fetch_add(1, Ordering::Relaxed);
                    (
                        close_code::SIZE,
                        format!(
                            "message larger than {} bytes",
                            fm_protocol::limits::MAX_BODY_BYTES
                        ),
                    )
                }
                tungstenite::Error::Protocol(err) => {
                    stats.ws_protocol_errors.fetch_add(1, Ordering::Relaxed);
                    (close_code::PROTOCOL, err.to_string())
                }
                _ => return,
            },
            Err(_) => return,
        };
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }

    /// Opens the stream for `request`; a failure becomes its terminal error event.
    async fn start(&mut self, request: ChatRequest) -> bool {
        let RequestId(request_id) = RequestId::generate();
        let edge = self.edge.with_request_id(request_id);
        let opened = open_stream(&self.state, &edge, request, Restart::Announce).await;
        match opened {
            Ok(stream) => {
                self.current = Some(stream);
                true
            }
            Err(err) => self.send_error(err).await,
        }
    }

    async fn send_error(&mut self, err: RelayError) -> bool {
        self.send(&err.to_event()).await
    }

    /// Sends `first` and the events that came with it, one frame each, with one flush; returns
    /// false when the socket is gone.
    async fn send_burst(&mut self, first: StreamEvent) -> bool {
        let batch = match self.current.as_mut() {
            Some(current) => take_burst(&self.state, current, first).await,
            None => vec![first],
        };
        if batch.iter().any(StreamEvent::is_terminal) {
            self.current = None;
        }
        for event in batch {
            let fed = self
                .socket
                .feed(Message::Text(event.to_json().into()))
                .await;
            if let Err(err) = fed {
                return self.lost(&err);
            }
        }
        match self.socket.flush().await {
            Ok(()) => true,
            Err(err) => self.lost(&err),
        }
    }

    /// Sends one event; returns false when the socket is gone.
    async fn send(&mut self, event: &StreamEvent) -> bool {
        match self
            .socket
            .send(Message::Text(event.to_json().into()))
            .await
        {
            Ok(()) => true,
            Err(err) => self.lost(&err),
        }
    }

    /// The socket failed under a write: gone, or (counted) a client that stopped reading.
    fn lost(&self, err: &axum::Error) -> bool {
        self.state.connections().count_write_timeout(err);
        false
    }
}

async fn next_event(current: &mut Option<ChatEventStream>) -> Option<StreamEvent> {
    match current {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}
