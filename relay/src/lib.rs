//! # fm-relay — a resilient relay in front of foundation-model APIs
//!
//! A request's path through the crate (the project's DESIGN.md draws the whole map):
//!
//! 1. [`connections`] accepts the connection (listen backlog, connection cap, header-read
//!    timeout, header limits, a write timeout for clients that stop reading), serves it HTTP/1.1
//!    or, when it opens with HTTP/2's preface, HTTP/2, and hands its requests to the app.
//! 2. [`api`] — the only module that knows HTTP. Its edge (`api::edge`, tower layers composed in
//!    one place) gives the request an id and a span, checks its origin, answers CORS, identifies
//!    the caller ([`auth`]: API keys and what each may use), admits it to the request rates
//!    ([`limits`]) and refuses POST bodies that are not JSON or too large. The surfaces — `/v1/chat`,
//!    `/v1/chat/stream` (SSE), `/v1/ws`, `/v1/chat/completions` (OpenAI), `/v1/usage`,
//!    `/v1/admin/usage`, `/v1/models`, `/v1/stats`, `/metrics`, `/healthz` — parse and validate
//!    the body with `fm_protocol`'s shared validation; `api::admit` routes a model request and
//!    reserves its tokens against the key's and the model's limits, quotas and budgets. Beside
//!    them: the purpose-built `[[routes]]` (`/v1/moderate`, `/v1/summarize`, `/v1/analyze`),
//!    `POST /v1/route/explain`, and `POST /v1/admin/reload` (also `SIGHUP`, and a change of the
//!    file): the new file's models, routing and routes, with the unchanged targets kept. The
//!    drop-in surfaces (`api::openai`, `api::anthropic`, `api::bedrock`) speak the vendors' APIs;
//!    `api::openapi` serves `GET /openapi.json`, the OpenAPI 3.1 document generated from the
//!    handlers and the wire types (limits included).
//! 3. [`routing`] turns the request into a plan of [`upstream`] targets and says why: the model
//!    the request names, else the first rule of the policy in config whose conditions hold (path,
//!    hint, the content classifier's domain and complexity, key, quality, a model's live figures,
//!    today's spend), else the route's models or the default; then the targets whose live
//!    figures are within bounds first (each region judged by the calls made to it), their
//!    fallback models, and the passed-over targets last. The catalog, the policy and the board
//!    of figures form one routing table, which a configuration reload replaces whole.
//! 4. [`cache`] answers a repeated or similar request without a model call.
//! 5. [`resilience`] walks the plan: deadlines, retries, each target's breaker and adaptive rate
//!    limiter (kept in [`upstream`] with the target's live window of calls and its health gates,
//!    driven and recorded here), failover mid-stream; a truncated answer is never
//!    reported as complete. Each call's spend goes to the request's meter
//!    ([`telemetry::SpendMeter`], which [`limits`] implements: the reservation settles to the real
//!    usage and the usage ledger records it).
//! 6. [`jobs`] runs async document jobs: `api` submits them; a durable queue and job table —
//!    SQLite and a folder on one machine, or SQS, DynamoDB, S3 and SNS shared by many relays
//!    (`jobs::backend`) — keep jobs, documents and results; workers
//!    read each document as text, split it and run the analysis, each model call made through
//!    [`jobs::ModelCalls`], which `api` implements with the same admission, routing and
//!    resilience as a chat request. On Lambda (the `fm-relay-lambda` crate) SQS delivers the
//!    messages instead of a polling worker: `Jobs::handle_delivery` runs one attempt of the job a
//!    message names through the same worker code.
//! 7. [`provider`] speaks to the upstream — Bedrock through `aws-sdk-bedrockruntime`, or any
//!    OpenAI-compatible server — and turns its answer into `StreamEvent`s.
//!
//! Around them: [`config`] (TOML + env + flags, the routing policy's sections, what a reload
//! may change), [`server`] (assembly — the targets from `upstream`'s builder, which a reload
//! asks again — the embedded simulator when there is no AWS configuration, the background
//! refresh of routing's figures, graceful shutdown; `server::assemble_without_tasks` is the same
//! app without background tasks, for a Lambda function), [`shutdown`]
//! (the drain phases), [`telemetry`] (logging and OTLP traces, the Prometheus histograms and
//! counters, the live window of outcomes behind `/v1/stats`, `/metrics` and routing's health
//! gates, replay and write counters, the spend hook), [`error`] (the one error type, mapped to
//! HTTP in one place).
//!
//! Who may use whom: `api` calls `auth`, `limits`, `routing`, `cache`, `resilience` and `jobs`
//! (and serves `jobs` its model calls), and
//! hands routing the spend `limits` reports; `routing` reads `upstream` (targets and their
//! health), `auth` (what a key may use) and `telemetry` (the live window), and never drives
//! calls; `resilience` walks `routing`'s plans over `upstream` targets and calls `provider`,
//! knowing no surface and no limit; `provider` knows neither surfaces nor routing; everyone writes `telemetry`. No module
//! imports one that imports it back (`module-cycles` checks).

// The futures of the drop-in surfaces (a JSON answer or a stream of frames, through admission,
// routing and resilience) nest deeper than the compiler's default layout depth of 128.
#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod connections;
pub mod error;
pub mod jobs;
pub mod limits;
pub mod provider;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod upstream;

pub use config::RelayConfig;
pub use error::RelayError;
pub use server::{RunningRelay, start};
