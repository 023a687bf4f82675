//! The error body of every non-2xx relay answer, and the stable codes clients can match on.
//!
//! ```json
//! {"error":{"code":"invalid_request","message":"messages[1].role: ...","field":"messages[1].role",
//!           "retryable":false,"request_id":"..."}}
//! ```

use serde::{Deserialize, Serialize};

/// Stable machine-readable error codes. New codes may be added; clients decode any code they do
/// not know as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request broke a validation rule; `field` names which.
    InvalidRequest,
    /// The body is not JSON, or not the JSON shape expected.
    MalformedJson,
    /// The body is larger than the relay accepts.
    PayloadTooLarge,
    /// The requested model is not one the relay serves.
    UnknownModel,
    /// No such route.
    NotFound,
    /// The route exists but not for this HTTP method.
    MethodNotAllowed,
    /// The upstream rejected the request as invalid (for example, a content filter).
    UpstreamRejected,
    /// The conversation is longer than every model the request could go to accepts.
    ContextTooLong,
    /// The upstream is throttling; retry later.
    UpstreamThrottled,
    /// The upstream is unavailable or failed internally.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream stopped sending in the middle of an answer.
    UpstreamStalled,
    /// The upstream's answer broke off or could not be understood.
    UpstreamError,
    /// The relay's configuration does not match the upstream (for example, an unknown model id).
    UpstreamMisconfigured,
    /// The request's total deadline passed.
    DeadlineExceeded,
    /// The relay is shutting down and accepts no new work.
    ShuttingDown,
    /// No API key, or one the relay does not accept (unknown and revoked keys look the same).
    Unauthorized,
    /// The API key may not use this model or route, or the page's origin may not call the relay.
    Forbidden,
    /// A request or token rate limit is used up for now; `Retry-After` says when to try again.
    RateLimited,
    /// A monthly request or token quota, or a daily or monthly dollar budget, is used up.
    QuotaExceeded,
    /// A POST body that is not `application/json`.
    UnsupportedMediaType,
    /// The relay cannot reach the store its limits live in and is set to refuse work then.
    LimitsUnavailable,
    /// The relay has as many connections open as it takes (`server.max_connections`).
    OverCapacity,
    /// A configuration reload was refused (the file is invalid, or changes what only a restart
    /// applies); the running configuration is kept.
    ReloadRefused,
    /// A job's document cannot be read as text (not UTF-8, a broken PDF, a PDF without a text
    /// layer).
    UnreadableDocument,
    /// A job's result was asked for before the job completed.
    JobNotFinished,
    /// A bug in the relay.
    Internal,
    /// A code this version of the protocol does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Whether a request that failed with this code may succeed if sent again unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::UpstreamThrottled
                | ErrorCode::UpstreamUnavailable
                | ErrorCode::UpstreamTimeout
                | ErrorCode::UpstreamStalled
                | ErrorCode::UpstreamError
                | ErrorCode::DeadlineExceeded
                | ErrorCode::ShuttingDown
                | ErrorCode::RateLimited
                | ErrorCode::LimitsUnavailable
                | ErrorCode::OverCapacity
        )
    }
}

/// The details of an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
    /// The request field at fault, for validation errors (for example `messages[2].content`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Whether sending the same request again could succeed.
    pub retryable: bool,
    /// The relay's id for the failed request, to quote in bug reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The JSON body of every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiErrorBody {
    pub error: ApiError,
}
