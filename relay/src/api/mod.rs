//! The HTTP surfaces, one file each: [`chat`] (`POST /v1/chat`), [`sse`]
//! (`POST /v1/chat/stream`), [`ws`] (`GET /v1/ws`), [`openai`] (`POST /v1/chat/completions`),
//! [`anthropic`] (`POST /v1/messages`), [`bedrock`] (`POST /model/{id}/converse` and the other
//! Bedrock Runtime operations) — the drop-in surfaces share [`compat`] —
//! [`routes`] (the purpose-built `[[routes]]`: `/v1/moderate`, `/v1/summarize`, ...),
//! [`explain`] (`POST /v1/route/explain`), [`reload`] (`POST /v1/admin/reload`, and `SIGHUP`),
//! [`jobs`] (`/v1/jobs`: async document jobs), [`usage`] (`GET /v1/usage`, `GET
//! /v1/admin/usage`), [`meta`] (`/healthz`, `/v1/models`,
//! `/v1/stats`, `/metrics`) and [`openapi`] (`/openapi.json`: the OpenAPI document, generated
//! from the handlers and the wire types), behind the [`edge`]'s layers (request id, span, origin, CORS, API
//! key, limits, JSON content type, body limit).
//! This is the only module that knows HTTP; it admits a model request ([`admit`]: shutdown
//! check, validation, the key's models, routing, the limits' reservation) and hands it to the
//! executor.

pub mod anthropic;
pub mod bedrock;
pub mod chat;
pub mod compat;
pub mod edge;
pub mod explain;
pub mod extract;
pub mod jobs;
pub mod meta;
pub mod openai;
pub mod openapi;
pub mod reload;
pub mod routes;
pub mod sse;
pub mod usage;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use fm_protocol::{ChatRequest, StreamEvent, validate_chat_request};
use tokio_util::task::TaskTracker;

use crate::auth::KeyRing;
use crate::cache::AnswerCache;
use crate::config::{ProviderKind, RelayConfig};
use crate::connections::ConnectionStats;
use crate::error::{RelayError, RequestError};
use crate::limits::Limits;
use crate::resilience::{ChatEventStream, Executor, RequestContext, Restart};
use crate::routing::{ModelCatalog, RouteDecision, RouteInput, Routing};
use crate::shutdown::{Phase, Shutdown};
use crate::telemetry::{LiveWindow, StreamWrites};
use crate::upstream::TargetBuilder;
use edge::Edge;
use extract::RequestId;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

#[derive(Debug)]
struct AppInner {
    config: RelayConfig,
    /// Makes the models' targets; a reload asks it again.
    targets: TargetBuilder,
    routing: Routing,
    executor: Executor,
    cache: Option<Arc<AnswerCache>>,
    /// Recent outcomes per model, recorded by the executor.
    window: Arc<LiveWindow>,
    shutdown: Shutdown,
    /// WebSocket sessions outlive their HTTP request; shutdown waits for them here.
    ws_sessions: TaskTracker,
    stream_writes: StreamWrites,
    keys: KeyRing,
    limits: Arc<Limits>,
    connections: Arc<ConnectionStats>,
    /// Async document jobs (`None` with `jobs.enabled = false`).
    jobs: Option<crate::jobs::Jobs>,
}

/// An [`AppState`] that does not keep it alive.
#[derive(Debug, Clone)]
pub struct WeakAppState(std::sync::Weak<AppInner>);

impl WeakAppState {
    /// The state, while the relay that owns it lives.
    pub fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(|inner| AppState { inner })
    }
}

/// The most events one write to a streaming client carries.
const MAX_EVENTS_PER_WRITE: usize = 64;

/// Room for the events of one write, allocated with it (a burst of a fast upstream fills it).
const BATCH_CAPACITY: usize = 8;

/// The parts the server assembles for the handlers.
#[derive(Debug)]
pub struct Parts {
    pub config: RelayConfig,
    pub targets: TargetBuilder,
    pub catalog: ModelCatalog,
    pub cache: Option<Arc<AnswerCache>>,
    pub shutdown: Shutdown,
    pub keys: KeyRing,
    pub limits: Arc<Limits>,
    pub jobs: Option<crate::jobs::Jobs>,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let Parts {
            config,
            targets,
            catalog,
            cache,
            shutdown,
            keys,
            limits,
            jobs,
        } = parts;
        let window = Arc::new(LiveWindow::new(
            catalog.list().data.into_iter().map(|model| model.id),
        ));
        let executor = Executor::new(&config, cache.clone(), window.clone(), shutdown.clone());
        let routing = Routing::new(&config, catalog);
        AppState {
            inner: Arc::new(AppInner {
                config,
                targets,
                routing,
                executor,
                cache,
                window,
                shutdown,
                ws_sessions: TaskTracker::new(),
                stream_writes: StreamWrites::default(),
                keys,
                limits,
                connections: Arc::default(),
                jobs,
            }),
        }
    }

    /// The configuration the relay started with (a reload puts a new file's models, routing
    /// and routes in force in [`AppState::routing`]; every other section is this one).
    pub fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    /// What makes the models' targets (and finds the unchanged ones again on a reload).
    pub fn targets(&self) -> &TargetBuilder {
        &self.inner.targets
    }

    /// A handle that does not keep the state alive (for background tasks).
    pub fn downgrade(&self) -> WeakAppState {
        WeakAppState(Arc::downgrade(&self.inner))
    }

    /// The routing table in force (the catalog, the policy and the live figures it reads).
    pub fn routing(&self) -> &Routing {
        &self.inner.routing
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

    /// The API keys.
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// Rate limits, quotas and the usage ledger.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.inner.limits
    }

    /// The job service, when jobs are on.
    pub fn jobs(&self) -> Option<&crate::jobs::Jobs> {
        self.inner.jobs.as_ref()
    }

    /// How the relay's connections fared.
    pub fn connections(&self) -> &Arc<ConnectionStats> {
        &self.inner.connections
    }

    /// Events sent to streaming clients, and the writes that carried them.
    pub fn stream_writes(&self) -> &StreamWrites {
        &self.inner.stream_writes
    }
}

/// Lets a model request in: refuses new work while shutting down, validates it with the same
/// function the clients run, routes it ([`decide`]: to models the caller may use) and admits it
/// to the limits, whose reservation becomes the request's meter. A `stream` also takes one of
/// the caller's concurrent streams. The decision goes on the answer as `x-fm-route`.
pub async fn admit(
    state: &AppState,
    edge: &Edge,
    request: &ChatRequest,
    stream: bool,
) -> Result<(RequestContext, RouteDecision), RelayError> {
    let mut ctx = RequestContext::new(edge.request_id.clone());
    if state.shutdown().phase() != Phase::Running {
        return Err(RelayError::ShuttingDown);
    }
    let decision = decide(state, edge, &edge.path, request)?;
    state.window().metrics().decided(&decision.choice);
    edge.set_route_header(decision.header_value());
    let model = &decision.first_model().config.id;
    let estimated_input = request
        .prompt_chars()
        .div_ceil(fm_protocol::chat::CHARS_PER_TOKEN);
    let max_tokens = request.max_tokens_or_default();
    let (reservation, headers) = state
        .limits()
        .admit_chat(
            &edge.caller,
            model,
            estimated_input as u64,
            u64::from(max_tokens),
            stream,
        )
        .await;
    edge.set_rate_headers(headers);
    ctx.meter = Some(Arc::new(reservation?));
    Ok((ctx, decision))
}

/// Validates a request and decides its route, as a real request from `edge`'s caller on `path`
/// gets it: what [`admit`] and `POST /v1/route/explain` share.
pub fn decide(
    state: &AppState,
    edge: &Edge,
    path: &str,
    request: &ChatRequest,
) -> Result<RouteDecision, RelayError> {
    let table = state.routing().table();
    validate_chat_request(request, |model| table.catalog().contains(model))
        .map_err(RelayError::Invalid)?;
    let span = tracing::info_span!(
        "route_decision",
        rule = tracing::field::Empty,
        model = tracing::field::Empty
    );
    let decision = span.in_scope(|| {
        table.decide(&RouteInput {
            request,
            path,
            hint_header: edge.route_hint.as_deref(),
            key: edge.caller.key(),
        })
    })?;
    span.record("rule", decision.choice.rule.as_str());
    span.record("model", decision.first_model().config.id.as_str());
    // Each model takes its own range: an OpenAI client's 1.5 suits an OpenAI-compatible model,
    // not a Bedrock one.
    let model = &decision.first_model().config;
    let max_temperature = model.provider.max_temperature();
    if let Some(temperature) = request.temperature.filter(|t| *t > max_temperature) {
        return Err(RelayError::Invalid(fm_protocol::ValidationError::new(
            "temperature",
            format!(
                "model `{}` takes a temperature of 0.0 to {max_temperature:.1}, got {temperature}",
                model.id
            ),
        )));
    }
    if request
        .response_format
        .as_ref()
        .is_some_and(|format| format.constrains() && model.provider != ProviderKind::OpenAi)
    {
        return Err(RelayError::Invalid(fm_protocol::ValidationError::new(
            "response_format",
            format!(
                "model `{}` ({}) takes no response format; OpenAI-compatible models do",
                model.id,
                model.provider.as_str()
            ),
        )));
    }
    // Bedrock cannot be told not to call a tool: without tools a model calls none, but a
    // conversation that already has calls or results must send them.
    let has_tool_turns = request
        .messages
        .iter()
        .any(|m| !m.tool_calls.is_empty() || !m.tool_results.is_empty());
    if request.tool_choice == Some(fm_protocol::ToolChoice::None)
        && has_tool_turns
        && model.provider == ProviderKind::Bedrock
    {
        return Err(RelayError::Invalid(fm_protocol::ValidationError::new(
            "tool_choice",
            format!(
                "model `{}` (bedrock) cannot be told not to call a tool in a conversation with \
                 tool calls; leave tool_choice out or send `auto`",
                model.id
            ),
        )));
    }
    Ok(decision)
}

/// Keeps routing's live figures current while the state lives: the models' health from the
/// live window every `routing.refresh_ms`, and — when a rule budgets spend — today's spend from
/// the usage ledger every `routing.spend_refresh_ms`.
pub fn spawn_routing_refresh(state: &AppState) {
    let routing = &state.config().routing;
    let mut health = tokio::time::interval(Duration::from_millis(routing.refresh_ms));
    let mut spend = tokio::time::interval(Duration::from_millis(routing.spend_refresh_ms));
    for timer in [&mut health, &mut spend] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    }
    let weak = Arc::downgrade(&state.inner);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = health.tick() => {
                    let Some(inner) = weak.upgrade() else { break };
                    let table = inner.routing.table();
                    table.board().refresh(&inner.window, table.catalog());
                }
                _ = spend.tick() => {
                    let Some(inner) = weak.upgrade() else { break };
                    if !inner.routing.table().policy().reads_spend() {
                        continue;
                    }
                    match inner.limits.report().await {
                        // The table in force now: a reload may have come during the read.
                        Ok(report) => inner.routing.table().board().set_spend(spend_today(&report)),
                        Err(err) => tracing::warn!(
                            error = %err,
                            "routing could not read today's spend; budget rules use the last figures"
                        ),
                    }
                }
            }
        }
    });
}

/// Today's spend in a usage report, as the budget rules read it.
fn spend_today(report: &fm_protocol::UsageReport) -> crate::routing::health::Spend {
    let by_model_usd: std::collections::HashMap<String, f64> = report
        .models_today
        .iter()
        .map(|model| (model.model.clone(), model.totals.cost_usd))
        .collect();
    crate::routing::health::Spend {
        day: report.day.clone(),
        global_usd: by_model_usd.values().sum(),
        by_key_usd: report
            .keys
            .iter()
            .map(|key| (key.key.clone(), key.today.cost_usd))
            .collect(),
        by_model_usd,
    }
}

/// Admits a request and opens its stream: what the streaming surfaces share. `restart` says how
/// the surface takes an answer that starts again after its client got text.
pub async fn open_stream(
    state: &AppState,
    edge: &Edge,
    request: ChatRequest,
    restart: Restart,
) -> Result<ChatEventStream, RelayError> {
    let (ctx, decision) = admit(state, edge, &request, true).await?;
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
        .merge(anthropic::routes())
        .merge(bedrock::routes())
        .merge(usage::routes())
        .merge(routes::routes(&state))
        .merge(explain::routes())
        .merge(reload::routes())
        .merge(jobs::routes(&state))
        .merge(meta::routes())
        .merge(openapi::routes(&state));
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
    let api = api.method_not_allowed_fallback(method_not_allowed);
    // Outermost: an error answer on the Bedrock routes, the edge's included, in Bedrock's dialect.
    edge::layers(state.clone(), api)
        .layer(axum::middleware::from_fn(bedrock::error_dialect))
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
