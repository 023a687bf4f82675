//! # fm-relay — a resilient relay in front of foundation-model APIs
//!
//! A request's path through the crate (see the project's DESIGN.md for the whole map):
//!
//! 1. [`api`] — the HTTP surfaces (`/v1/chat`, `/v1/chat/stream` as SSE, `/v1/ws`, `/v1/models`,
//!    `/healthz`). Parses and validates the body with `fm_protocol`'s shared validation, and maps
//!    every [`RelayError`] to one JSON error shape.
//! 2. [`routing`] — picks the configured model for the request and says why.
//! 3. [`resilience`] — runs the call under deadlines (total, first token, idle between chunks) and
//!    turns the provider's stream into the client-facing `StreamEvent`s; a truncated answer is
//!    never reported as complete.
//! 4. [`provider`] — speaks to the upstream: Bedrock through `aws-sdk-bedrockruntime`.
//!
//! Around them: [`config`] (TOML + env + flags), [`server`] (start-up, the embedded simulator
//! when there is no AWS configuration, graceful shutdown), [`shutdown`] (the drain phases),
//! [`telemetry`] (logging and the live window of outcomes behind `/v1/stats`), [`error`] (the
//! one error type).

pub mod api;
pub mod cache;
pub mod config;
pub mod error;
pub mod provider;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::RelayConfig;
pub use error::RelayError;
pub use server::{RunningRelay, start};
