//! # fm-protocol — the wire types every side of FM Relay speaks
//!
//! This crate is compiled both natively (for the relay and the simulator's tests) and to
//! `wasm32-unknown-unknown` (for the browser chat UI and the IDE panel), so it depends on serde
//! alone: no tokio, no AWS types, no I/O — except, with the `fetch` feature, the JavaScript glue
//! the WASM clients share.
//!
//! - [`chat`]: the request a client sends ([`ChatRequest`]) and the one-shot answer it gets back
//!   ([`ChatResponse`]), with [`Usage`], [`StopReason`], [`RouteInfo`] and [`Timings`], and tool
//!   use ([`ToolDefinition`], [`ToolChoice`], [`ToolCall`], [`ToolResult`]).
//! - [`event`]: [`StreamEvent`], the one event type every streaming transport carries (SSE,
//!   WebSocket frames, and later the job progress feed).
//! - [`error`]: the JSON error body of every non-2xx answer and its stable [`ErrorCode`]s.
//! - [`validate`]: the request limits, as one function that clients run before sending and the
//!   relay runs on arrival, so both reject the same requests with the same words.
//! - [`route`]: how the relay chose a model ([`RouteChoice`], [`RouteExplanation`]) and the
//!   catalog's and classifier's words ([`Tier`], [`Capability`], [`Domain`], [`Complexity`]).
//! - [`jobs`]: async document jobs — the submission, a job's status and progress, its result.
//! - [`stats`]: the relay's latency figures per model (`GET /v1/stats`).
//! - [`usage`]: what callers spent, from the relay's usage ledger (`GET /v1/usage`).
//! - `openapi` (with the `openapi` feature): the JSON schemas of the bounded request fields, from
//!   the validation's limits, for the relay's OpenAPI document.
//! - `fetch` (with the `fetch` feature): a `fetch` answer's body read as SSE as it arrives, and
//!   the relay's error body, for the WASM clients.
//! - [`sse`]: an incremental Server-Sent-Events decoder that accepts any split of the byte stream,
//!   plus the matching encoder.

pub mod chat;
pub mod error;
pub mod event;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod jobs;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod route;
pub mod sse;
pub mod stats;
pub mod usage;
pub mod validate;

pub use chat::{
    ChatRequest, ChatResponse, Message, ModelInfo, ModelList, ResponseFormat, ResponseSource, Role,
    RouteInfo, StopReason, Timings, ToolCall, ToolChoice, ToolDefinition, ToolResult, Usage,
};
pub use error::{ApiError, ApiErrorBody, ErrorCode};
pub use event::StreamEvent;
pub use jobs::{
    AnalysisType, CallbackStatus, DocumentFormat, JobError, JobInfo, JobList, JobProgress,
    JobRequest, JobResult, JobStatus, Priority, validate_job_request,
};
pub use route::{
    Capability, Complexity, ContentClass, Domain, PlannedTarget, QualityRequirement,
    RouteCandidate, RouteChoice, RouteExplanation, TargetPassedOver, Tier,
};
pub use sse::{DEFAULT_MAX_EVENT_BYTES, EventTooLarge, SseDecoder, SseFrame, encode_sse_frame};
pub use stats::{
    CacheStats, CircuitState, CircuitStatus, ModelStats, Percentiles, StatsResponse, TargetStats,
};
pub use usage::{KeyUsage, ModelUsage, UsageReport, UsageTotals};
pub use validate::{ValidationError, limits, validate_chat_request};
