//! # fm-relay — a resilient relay in front of foundation-model APIs
//!
//! A request's path through the crate (see the project's DESIGN.md for the whole map):
//!
//! 1. [`api`] — the HTTP surfaces (`/v1/chat`, `/v1/chat/stream` as SSE, `/v1/ws`,
//!    `/v1/chat/completions`, `/v1/usage`, `/v1/models`, `/v1/stats`, `/metrics`, `/healthz`)
//!    behind the edge's tower layers (`api::edge`: request id, span, origin, CORS, API key,
//!    limits, JSON content type, body limit). Parses and validates the body with `fm_protocol`'s
//!    shared validation, admits the request to the limits, and maps every [`RelayError`] to one
//!    JSON error shape.
//!    - [`auth`] — API keys: who is calling and what they may use.
//!    - [`limits`] — request and token rate limits, quotas, dollar budgets and the usage ledger
//!      (in memory and SQLite, or in Redis for several replicas); a request's reservation is its
//!      [`telemetry::SpendMeter`], settled to the real usage when it ends.
//! 2. [`routing`] — picks the configured model for the request and says why.
//! 3. [`resilience`] — runs the call under deadlines (total, first token, idle between chunks) and
//!    turns the provider's stream into the client-facing `StreamEvent`s; a truncated answer is
//!    never reported as complete.
//! 4. [`provider`] — speaks to the upstream: Bedrock through `aws-sdk-bedrockruntime`.
//!
//! Around them: [`config`] (TOML + env + flags), [`server`] (start-up, the embedded simulator
//! when there is no AWS configuration, graceful shutdown), [`connections`] (the accept loop: the
//! listen backlog, the connection cap, the header-read timeout and header limits), [`shutdown`] (the drain phases),
//! [`telemetry`] (logging, the live window of outcomes behind `/v1/stats`, the spend hook through
//! which `resilience` reports tokens without knowing `limits`), [`error`] (the one error type).

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod connections;
pub mod error;
pub mod limits;
pub mod provider;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::RelayConfig;
pub use error::RelayError;
pub use server::{RunningRelay, start};
