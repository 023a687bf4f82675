//! The HTTP surfaces, one file each: [`chat`] (`POST /v1/chat`), [`sse`]
//! (`POST /v1/chat/stream`), [`ws`] (`GET /v1/ws`), [`openai`] (`POST /v1/chat/completions`) and
//! [`meta`] (`/healthz`, `/v1/models`, `/v1/stats`).
//! This is the only module that knows HTTP; it admits a request ([`admit`]: shutdown check,
//! validation, routing) and hands it to the executor.

pub mod chat;
pub mod extract;
pub mod meta;
pub mod openai;
pub mod sse;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use fm_protocol::{ChatRequest, StreamEvent, limits::MAX_BODY_BYTES, validate_chat_request};
use tokio_util::task::TaskTracker;

use crate::cache::AnswerCache;
use crate::config::RelayConfig;
use crate::error::{RelayError, RequestError};
use crate::resilience::{ChatEventStream, Executor, RequestContext, Restart};
use crate::routing::{ModelCatalog, RouteDecision};
use crate::shutdown::{Phase, Shutdown};
use crate::telemetry::{LiveWindow, StreamWrites};
use extract::RequestId;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

#[derive(Debug)]
struct AppInner {
    config: RelayConfig,
    catalog: ModelCatalog,
    executor: Executor,
    cache: Option<Arc<AnswerCache>>,
    /// Recent outcomes per model, recorded by the executor.
    window: Arc<LiveWindow>,
    shutdown: Shutdown,
    /// WebSocket sessions outlive their HTTP request; shutdown waits for them here.
    ws_sessions: TaskTracker,
    stream_writes: StreamWrites,
}

/// The most events one write to a streaming client carries.
const MAX_EVENTS_PER_WRITE: usize = 64;

/// Room for the events of one write, allocated with it (a burst of a fast upstream fills it).
const BATCH_CAPACITY: usize = 8;

impl AppState {
    pub fn new(
        config: RelayConfig,
        catalog: ModelCatalog,
        cache: Option<Arc<AnswerCache>>,
        shutdown: Shutdown,
    ) -> Self {
        let window = Arc::new(LiveWindow::new(
            catalog.list().models.into_iter().map(|model| model.id),
        ));
        let executor = Executor::new(&config, cache.clone(), window.clone(), shutdown.clone());
        AppState {
            inner: Arc::new(AppInner {
                config,
                catalog,
                executor,
                cache,
                window,
                shutdown,
                ws_sessions: TaskTracker::new(),
                stream_writes: StreamWrites::default(),
            }),
        }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.inner.catalog
    }

    pub fn executor(&self) -> &Executor {
        &self.inner.executor
    }

    /// The answer cache, when it is on.
    pub fn cache(&self) -> Option<&AnswerCache> {
        self.inner.cache.as_deref()
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    pub fn window(&self) -> &LiveWindow {
        &self.inner.window
    }

    /// The tracker of open WebSocket sessions.
    pub fn ws_tracker(&self) -> &TaskTracker {
        &self.inner.ws_sessions
    }

    /// Events sent to streaming clients, and the writes that carried them.
    pub fn stream_writes(&self) -> &StreamWrites {
        &self.inner.stream_writes
    }
}

/// Lets a request in: refuses new work while shutting down, validates it with the same function
/// the clients run, and routes it.
pub fn admit(
    state: &AppState,
    request_id: String,
    request: &ChatRequest,
) -> Result<(RequestContext, RouteDecision), RelayError> {
    let ctx = RequestContext::new(request_id);
    if state.shutdown().phase() != Phase::Running {
        return Err(RelayError::ShuttingDown);
    }
    validate_chat_request(request, |model| state.catalog().contains(model))
        .map_err(RelayError::Invalid)?;
    Ok((ctx, state.catalog().route(request)))
}

/// Admits a request and opens its stream: what the streaming surfaces share. `restart` says how
/// the surface takes an answer that starts again after its client got text.
pub async fn open_stream(
    state: &AppState,
    request_id: String,
    request: ChatRequest,
    restart: Restart,
) -> Result<ChatEventStream, RelayError> {
    let (ctx, decision) = admit(state, request_id, &request)?;
    state
        .executor()
        .open_stream(ctx, decision, request, restart)
        .await
}

/// `first`, just taken from `events`, and the events that can share its write (see
/// [`ChatEventStream::gather`]), counted in the relay's stream write counters: what the SSE and
/// WebSocket surfaces send as one write. A fresh list per write: kept for the next one, it would
/// hold its memory for as long as the stream stays open (measured: ~0.6 KiB per idle stream).
pub(crate) async fn take_burst(
    state: &AppState,
    events: &mut ChatEventStream,
    first: StreamEvent,
) -> Vec<StreamEvent> {
    let mut batch = Vec::with_capacity(BATCH_CAPACITY);
    batch.push(first);
    let wait = Duration::from_micros(state.config().server.stream_batch_wait_us);
    events.gather(&mut batch, MAX_EVENTS_PER_WRITE, wait).await;
    state.stream_writes().record(batch.len());
    batch
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(chat::routes())
        .merge(sse::routes())
        .merge(ws::routes())
        .merge(openai::routes())
        .merge(meta::routes());
    // The chat UI's files at `/`, when built; anything else is the API's JSON 404.
    let api = match state
        .config()
        .server
        .web_dir
        .as_deref()
        .filter(|dir| dir.is_dir())
    {
        Some(dir) => api.fallback_service(
            tower_http::services::ServeDir::new(dir)
                .append_index_html_on_directories(true)
                .not_found_service(axum::routing::any(not_found).with_state(state.clone())),
        ),
        None => api.fallback(not_found),
    };
    api.method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(extract::assign_request_id))
        .with_state(state)
}

async fn not_found(RequestId(id): RequestId, method: Method, uri: Uri) -> RequestError {
    RelayError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .with_request_id(&id)
}

async fn method_not_allowed(RequestId(id): RequestId, method: Method) -> RequestError {
    RelayError::MethodNotAllowed {
        method: method.to_string(),
    }
    .with_request_id(&id)
}
