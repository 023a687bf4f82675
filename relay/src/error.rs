//! [`RelayError`], the relay's one error type, and its mapping to HTTP answers and stream error
//! events — in one place, so every surface speaks the same codes.
//!
//! Every error knows its status, its stable [`ErrorCode`], whether retrying could help, and whose
//! fault it is: a client's mistake is always a 4xx, never a 5xx.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fm_protocol::{ApiError, ApiErrorBody, ErrorCode, StreamEvent, ValidationError};

/// How an upstream call failed, as far as a caller needs to know to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    /// 429 / ThrottlingException, before or inside the stream.
    Throttled,
    /// 5xx, ModelNotReady, connection refused or reset.
    Unavailable,
    /// No answer (or no first token) in time, or the model itself timed out.
    Timeout,
    /// The stream went silent for longer than the idle timeout.
    Stalled,
    /// The upstream found the request invalid (the client's fault: e.g. a content filter).
    Rejected,
    /// The conversation does not fit the model's context window: only a model with a larger
    /// window can answer it.
    ContextTooLong,
    /// The upstream does not know the model or refuses our credentials (the operator's fault).
    Misconfigured,
    /// The upstream's answer was malformed or ended without its closing events.
    Protocol,
    /// The target's circuit breaker is open: the call was not made.
    CircuitOpen,
    /// The relay's own adaptive rate limit held the call back (the target throttled recently):
    /// the call was not made.
    RateLimited,
}

impl UpstreamFailure {
    /// Whether the relay refused the call itself, so that it never reached the upstream.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            UpstreamFailure::CircuitOpen | UpstreamFailure::RateLimited
        )
    }
}

/// Why a request's API key was not accepted. Unknown and revoked keys are one case: the answer
/// never tells whether a key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => {
                "this relay needs an API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`"
            }
            AuthFailure::Invalid => "the API key is not valid",
        })
    }
}

/// What a caller may not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Model {
        key: String,
        model: String,
    },
    Route {
        key: String,
        path: String,
    },
    /// `/v1/admin/*` with a key that is not an admin key.
    NotAdmin {
        key: String,
    },
    /// A browser page from an origin the relay does not allow (`edge.allowed_origins`).
    Origin {
        origin: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Model { key, model } => {
                write!(f, "the API key `{key}` may not use model `{model}`")
            }
            Refusal::Route { key, path } => write!(f, "the API key `{key}` may not call {path}"),
            Refusal::NotAdmin { key } => {
                write!(
                    f,
                    "the API key `{key}` is not an admin key, which this route needs"
                )
            }
            Refusal::Origin { origin } => write!(
                f,
                "pages from {origin} may not call this relay (`edge.allowed_origins`)"
            ),
        }
    }
}

/// A rate limit that refused a request for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    KeyRequests { key: String, per_minute: u32 },
    GlobalRequests { per_minute: u32 },
    KeyTokens { key: String, per_minute: u64 },
    ModelTokens { model: String, per_minute: u64 },
    ConcurrentStreams { key: String, max: u32 },
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::KeyRequests { key, per_minute } => {
                write!(
                    f,
                    "the API key `{key}` may make {per_minute} requests a minute"
                )
            }
            Limit::GlobalRequests { per_minute } => {
                write!(
                    f,
                    "the relay takes {per_minute} requests a minute from all callers"
                )
            }
            Limit::KeyTokens { key, per_minute } => {
                write!(
                    f,
                    "the API key `{key}` may use {per_minute} tokens a minute"
                )
            }
            Limit::ModelTokens { model, per_minute } => write!(
                f,
                "model `{model}` takes {per_minute} tokens a minute from all callers"
            ),
            Limit::ConcurrentStreams { key, max } => {
                write!(f, "the API key `{key}` may have {max} streams open at once")
            }
        }
    }
}

/// A quota or budget that is used up for its period.
#[derive(Debug, Clone, PartialEq)]
pub enum Quota {
    MonthlyRequests { key: String, limit: u64 },
    MonthlyTokens { key: String, limit: u64 },
    DailyUsd { key: String, limit: f64 },
    MonthlyUsd { key: String, limit: f64 },
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quota::MonthlyRequests { key, limit } => write!(
                f,
                "the API key `{key}` has used its {limit} requests for this month (UTC)"
            ),
            Quota::MonthlyTokens { key, limit } => write!(
                f,
                "the API key `{key}` has used its {limit} tokens for this month (UTC)"
            ),
            Quota::DailyUsd { key, limit } => write!(
                f,
                "the API key `{key}` has spent its daily budget of ${limit:.2} (UTC day)"
            ),
            Quota::MonthlyUsd { key, limit } => write!(
                f,
                "the API key `{key}` has spent its monthly budget of ${limit:.2} (UTC month)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Unauthorized(AuthFailure),
    #[error("{0}")]
    Forbidden(Refusal),
    /// A rate limit is used up for now; try again after `retry_after`.
    #[error("rate limited: {limit}; try again in {:.1} s", retry_after.as_secs_f64())]
    RateLimited { limit: Limit, retry_after: Duration },
    /// One request reserves more tokens than a token limit allows in a minute: it can never pass.
    #[error(
        "the request reserves {reserved} tokens (its estimated input plus `max_tokens`), more than {limit} allows; lower `max_tokens` or shorten the conversation"
    )]
    LargerThanLimit { reserved: u64, limit: Limit },
    #[error("{0}")]
    QuotaExceeded(Quota),
    #[error(
        "POST bodies must be JSON: send `Content-Type: application/json` (got {})",
        got.as_deref().unwrap_or("no Content-Type")
    )]
    UnsupportedMediaType { got: Option<String> },
    /// Redis, where the limits live, failed and `limits.on_redis_error` is `fail_closed`.
    #[error(
        "the relay cannot reach the store of its limits (Redis) and refuses work until it is back"
    )]
    LimitsUnavailable {
        #[source]
        source: Option<redis::RedisError>,
    },
    #[error("the relay has {max} connections open, as many as it takes; try again in a moment")]
    TooManyConnections { max: usize },
    /// The usage ledger's SQLite store failed.
    #[error("the usage ledger ({path}): {source}")]
    Ledger {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The request broke a validation rule.
    #[error("{0}")]
    Invalid(ValidationError),
    /// The body is not JSON, or not the expected shape.
    #[error("{message}")]
    MalformedJson {
        message: String,
        field: Option<String>,
    },
    /// A query parameter is invalid.
    #[error("{message}")]
    InvalidQuery { field: String, message: String },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no route for {method} {path}; the API lives under /v1 (see GET /v1/models)")]
    NotFound { method: String, path: String },
    #[error("{method} is not allowed on this route")]
    MethodNotAllowed { method: String },
    /// The upstream failed; `message` says how.
    #[error("upstream {provider} ({target}): {message}")]
    Upstream {
        failure: UpstreamFailure,
        provider: &'static str,
        target: String,
        message: String,
        /// How long the upstream asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    #[error("the request took longer than its deadline of {0:?}")]
    DeadlineExceeded(Duration),
    #[error("the relay is shutting down and accepts no new work; retry on another instance")]
    ShuttingDown,
    /// The configuration is invalid (at start-up, or in a file a reload read).
    #[error("invalid configuration ({origin}): {message}")]
    Config { origin: String, message: String },
    /// `bedrock.ca_file` cannot be read.
    #[error("cannot read bedrock.ca_file {path}")]
    CaFileUnreadable {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `bedrock.ca_file` is not PEM, or holds a certificate rustls cannot use as a root.
    #[error("bedrock.ca_file {path} holds no usable PEM certificate")]
    CaFileInvalid {
        path: std::path::PathBuf,
        #[source]
        source: Option<rustls::Error>,
    },
    /// A configuration reload was refused; the running configuration is kept.
    #[error("configuration reload refused: {0}")]
    ReloadRefused(ReloadRefusal),
    /// A multipart upload that cannot be read (no boundary, a broken part).
    #[error("the upload cannot be read: {0}")]
    UploadRejected(#[source] axum::extract::multipart::MultipartRejection),
    /// `GET /v1/ws` without a WebSocket upgrade: its headers do not ask for one, or the
    /// connection cannot be upgraded (a Lambda function URL, a proxy that drops the headers).
    #[error(
        "GET /v1/ws opens a WebSocket and this request cannot ({0}); where connections are not upgraded (a Lambda function URL), stream with POST /v1/chat/stream"
    )]
    NotUpgradable(#[source] axum::extract::ws::rejection::WebSocketUpgradeRejection),
    #[error("the upload cannot be read: {0}")]
    Upload(#[source] axum::extract::multipart::MultipartError),
    /// A model's answer is not what a job asked for (a JSON object, one of the labels).
    #[error("the model's answer is not {expected}")]
    UnusableAnswer { expected: &'static str },
    /// A job's document cannot be analysed.
    #[error("{0}")]
    Document(DocumentError),
    /// A submitted document is refused: the one in the request's field `field` (`text`,
    /// `file`, `document_ref`).
    #[error("{error}")]
    DocumentRefused {
        field: &'static str,
        error: DocumentError,
    },
    #[error("no job `{id}` (a key sees only its own jobs)")]
    JobNotFound { id: String },
    /// `GET /v1/models/{id}` of a model the relay does not have.
    #[error("no model `{id}`: GET /v1/models lists the relay's models")]
    ModelNotFound { id: String },
    #[error("job `{id}` is {status}: its result is there once it is COMPLETED")]
    JobNotFinished { id: String, status: &'static str },
    /// The key has as many unfinished jobs as `jobs.max_queued_per_key` allows.
    #[error(
        "the API key `{key}` has {max} unfinished jobs, as many as it may have; submit more when some have finished"
    )]
    TooManyJobs { key: String, max: u32 },
    /// The job table's SQLite store failed.
    #[error("the job store ({path}): {source}")]
    JobStore {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The document and result store failed.
    #[error("the job object store, at `{location}`: {source}")]
    JobObjects {
        location: String,
        #[source]
        source: object_store::Error,
    },
    /// The AWS job backend's S3 bucket failed.
    #[error("the job bucket (S3), at `{location}`: {source}")]
    JobS3 {
        location: String,
        #[source]
        source: Box<aws_sdk_s3::Error>,
    },
    /// An object of the S3 bucket could not be read to its end.
    #[error("the job bucket (S3), reading `{location}`: {source}")]
    JobS3Body {
        location: String,
        #[source]
        source: aws_sdk_s3::primitives::ByteStreamError,
    },
    /// The AWS job backend's SQS queues failed.
    #[error("the job queue (SQS), {operation}: {source}")]
    JobQueue {
        operation: &'static str,
        #[source]
        source: Box<aws_sdk_sqs::Error>,
    },
    /// The AWS job backend's DynamoDB table failed.
    #[error("the job table (DynamoDB), {operation}: {source}")]
    JobTable {
        operation: &'static str,
        #[source]
        source: Box<aws_sdk_dynamodb::Error>,
    },
    /// A job notice could not be published to SNS.
    #[error("the job notices (SNS), {operation}: {source}")]
    JobNotice {
        operation: &'static str,
        #[source]
        source: Box<aws_sdk_sns::Error>,
    },
    /// A request to the AWS job backend could not be built (a required field missing).
    #[error("a request to the AWS job backend: {source}")]
    JobAwsRequest {
        #[source]
        source: aws_smithy_types::error::operation::BuildError,
    },
    /// A message delivered by SQS (to a Lambda function) from a queue that is none of this
    /// relay's job queues: the event source mapping names another queue.
    #[error(
        "a message from {queue_arn}, which is none of this relay's job queues (jobs.aws.queue_prefix)"
    )]
    UnknownQueue { queue_arn: String },
    /// A stored job record is not one this relay can read.
    #[error("the stored job `{id}` is unreadable: {reason}")]
    JobRecordUnreadable { id: String, reason: &'static str },
    /// The relay could not start (bind, TLS, simulator).
    #[error("cannot start: {0}")]
    Startup(String),
    /// The answer cache failed (logged and treated as a miss; never a request's answer).
    #[error("cache: {0}")]
    Cache(String),
    /// A bug: something that should not happen did.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a job's document cannot be analysed.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the document has no text to analyse")]
    Empty,
    #[error(
        "the document is {size} bytes, more than the {max} bytes `jobs.max_document_bytes` allows"
    )]
    TooLarge { size: u64, max: u64 },
    #[error("the PDF has no text layer (a scanned image?): run OCR on it first")]
    NoTextLayer,
    #[error("the document cannot be read as {format}: {source}")]
    Unreadable {
        format: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("`document_ref` `{0}` names no document in the store")]
    MissingReference(String),
}

/// Why a configuration reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefusal {
    #[error(
        "the relay was started without a config file (`fm-relay serve --config FILE`): there is nothing to reload"
    )]
    NoFile,
    #[error("the new file is invalid, so the running configuration is kept: {0}")]
    Invalid(#[source] Box<RelayError>),
    #[error(
        "the new file changes {}, which only a restart applies; the running configuration is kept (a reload applies `[[models]]`, `default_model`, `[routing]` but for its refresh intervals, and the `[[routes]]` of the paths already served)",
        .0.join(", ")
    )]
    NeedsRestart(Vec<String>),
}

impl RelayError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RelayError::Unauthorized(_) => ErrorCode::Unauthorized,
            RelayError::Forbidden(_) => ErrorCode::Forbidden,
            RelayError::RateLimited { .. } => ErrorCode::RateLimited,
            RelayError::LargerThanLimit { .. } => ErrorCode::InvalidRequest,
            RelayError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            RelayError::UnsupportedMediaType { .. } => ErrorCode::UnsupportedMediaType,
            RelayError::LimitsUnavailable { .. } => ErrorCode::LimitsUnavailable,
            RelayError::Ledger { .. } => ErrorCode::Internal,
            RelayError::TooManyConnections { .. } => ErrorCode::OverCapacity,
            RelayError::Invalid(err) => err.code,
            RelayError::MalformedJson { .. } => ErrorCode::MalformedJson,
            RelayError::InvalidQuery { .. } => ErrorCode::InvalidRequest,
            RelayError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            RelayError::NotFound { .. } => ErrorCode::NotFound,
            RelayError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            RelayError::Upstream { failure, .. } => match failure {
                UpstreamFailure::Throttled | UpstreamFailure::RateLimited => {
                    ErrorCode::UpstreamThrottled
                }
                UpstreamFailure::Unavailable | UpstreamFailure::CircuitOpen => {
                    ErrorCode::UpstreamUnavailable
                }
                UpstreamFailure::Timeout => ErrorCode::UpstreamTimeout,
                UpstreamFailure::Stalled => ErrorCode::UpstreamStalled,
                UpstreamFailure::Rejected => ErrorCode::UpstreamRejected,
                UpstreamFailure::ContextTooLong => ErrorCode::ContextTooLong,
                UpstreamFailure::Misconfigured => ErrorCode::UpstreamMisconfigured,
                UpstreamFailure::Protocol => ErrorCode::UpstreamError,
            },
            RelayError::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            RelayError::Document(error) | RelayError::DocumentRefused { error, .. } => {
                match error {
                    DocumentError::Empty | DocumentError::MissingReference(_) => {
                        ErrorCode::InvalidRequest
                    }
                    DocumentError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
                    DocumentError::NoTextLayer | DocumentError::Unreadable { .. } => {
                        ErrorCode::UnreadableDocument
                    }
                }
            }
            RelayError::JobNotFound { .. } | RelayError::ModelNotFound { .. } => {
                ErrorCode::NotFound
            }
            RelayError::UploadRejected(_) | RelayError::NotUpgradable(_) => {
                ErrorCode::InvalidRequest
            }
            RelayError::Upload(err) => match err.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                _ => ErrorCode::InvalidRequest,
            },
            RelayError::UnusableAnswer { .. } => ErrorCode::UpstreamError,
            RelayError::JobNotFinished { .. } => ErrorCode::JobNotFinished,
            RelayError::TooManyJobs { .. } => ErrorCode::QuotaExceeded,
            RelayError::JobStore { .. }
            | RelayError::JobObjects { .. }
            | RelayError::JobS3 { .. }
            | RelayError::JobS3Body { .. }
            | RelayError::JobQueue { .. }
            | RelayError::JobTable { .. }
            | RelayError::JobNotice { .. }
            | RelayError::JobAwsRequest { .. }
            | RelayError::JobRecordUnreadable { .. }
            | RelayError::UnknownQueue { .. } => ErrorCode::Internal,
            RelayError::ReloadRefused(_) => ErrorCode::ReloadRefused,
            RelayError::ShuttingDown => ErrorCode::ShuttingDown,
            RelayError::Config { .. }
            | RelayError::CaFileUnreadable { .. }
            | RelayError::CaFileInvalid { .. }
            | RelayError::Startup(_)
            | RelayError::Cache(_)
            | RelayError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        RelayError::status_of(self.code())
    }

    /// The HTTP status of an error of `code` (one place: every surface answers with it).
    pub fn status_of(code: ErrorCode) -> StatusCode {
        match code {
            ErrorCode::InvalidRequest
            | ErrorCode::MalformedJson
            | ErrorCode::UnknownModel
            | ErrorCode::UpstreamRejected
            | ErrorCode::ContextTooLong
            | ErrorCode::UnreadableDocument => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::LimitsUnavailable | ErrorCode::OverCapacity => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::ReloadRefused | ErrorCode::JobNotFinished => StatusCode::CONFLICT,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UpstreamThrottled => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::UpstreamUnavailable | ErrorCode::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamStalled
            | ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::UpstreamError | ErrorCode::UpstreamMisconfigured => StatusCode::BAD_GATEWAY,
            ErrorCode::Internal | ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request, sent again, could succeed.
    pub fn is_retryable(&self) -> bool {
        self.code().is_retryable()
    }

    /// Whether this is a failure of where jobs are kept (the job table, queue, objects or
    /// notices), which a later attempt of the job may not meet.
    pub fn is_job_backend_failure(&self) -> bool {
        matches!(
            self,
            RelayError::JobStore { .. }
                | RelayError::JobObjects { .. }
                | RelayError::JobS3 { .. }
                | RelayError::JobS3Body { .. }
                | RelayError::JobQueue { .. }
                | RelayError::JobTable { .. }
                | RelayError::JobNotice { .. }
        )
    }

    /// Whether another target of the plan could answer where this call failed: every upstream
    /// failure except a rejection of the request itself (a context too long for this model may
    /// still fit a larger one).
    pub fn next_target_may_help(&self) -> bool {
        matches!(self, RelayError::Upstream { failure, .. } if *failure != UpstreamFailure::Rejected)
    }

    /// Whether the client caused this error (and so must not count against the upstream).
    pub fn is_client_fault(&self) -> bool {
        self.status().is_client_error()
    }

    fn field(&self) -> Option<String> {
        match self {
            RelayError::Invalid(err) => Some(err.field.clone()),
            RelayError::MalformedJson { field, .. } => field.clone(),
            RelayError::InvalidQuery { field, .. } => Some(field.clone()),
            RelayError::LargerThanLimit { .. } => Some("max_tokens".into()),
            RelayError::DocumentRefused { field, .. } => Some((*field).into()),
            RelayError::Upload(_) | RelayError::UploadRejected(_) => Some("file".into()),
            _ => None,
        }
    }

    /// The error as the JSON body of an HTTP answer.
    pub fn to_body(&self, request_id: Option<&str>) -> ApiErrorBody {
        ApiErrorBody {
            error: ApiError {
                code: self.code(),
                message: self.to_string(),
                field: self.field(),
                retryable: self.is_retryable(),
                request_id: request_id.map(str::to_string),
            },
        }
    }

    /// The error as the terminal event of a stream.
    pub fn to_event(&self) -> StreamEvent {
        StreamEvent::Error {
            code: self.code(),
            message: self.to_string(),
            retryable: self.is_retryable(),
        }
    }

    /// Adds a `Retry-After` header (whole seconds, rounded up, at least 1) to an error answer
    /// when the wait is known.
    pub fn add_retry_after(&self, response: &mut Response) {
        if let Some(wait) = self.retry_after()
            && let Ok(value) =
                HeaderValue::from_str(&wait.as_millis().div_ceil(1000).max(1).to_string())
        {
            response.headers_mut().insert("retry-after", value);
        }
    }

    /// How long the upstream asked to wait before calling again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RelayError::Upstream { retry_after, .. } => *retry_after,
            RelayError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// An upstream that could not be reached or answered nothing but made the call wait
    /// `waited` first is a timeout, not an unavailability: another call to it would likely wait
    /// as long (see `retry.slow_failure_ms`). Other errors are left as they are.
    pub fn waited_for_nothing(mut self, waited: Duration) -> Self {
        if let RelayError::Upstream {
            failure, message, ..
        } = &mut self
            && *failure == UpstreamFailure::Unavailable
        {
            *failure = UpstreamFailure::Timeout;
            message.push_str(&format!(
                " after {:.1} s without an answer (a timeout: not retried on the same target)",
                waited.as_secs_f64()
            ));
        }
        self
    }

    /// Notes in an upstream error's message how many calls were made, when more than one.
    pub fn after_attempts(mut self, attempts: u32) -> Self {
        if let RelayError::Upstream { message, .. } = &mut self
            && attempts > 1
        {
            message.push_str(&format!(" (after {attempts} attempts)"));
        }
        self
    }

    /// Attaches the request id, so the answer can quote it.
    pub fn with_request_id(self, request_id: &str) -> RequestError {
        RequestError {
            error: self,
            request_id: Some(request_id.to_string()),
        }
    }
}

/// A [`RelayError`] with the id of the request it ended, ready to become an HTTP answer.
#[derive(Debug)]
pub struct RequestError {
    pub error: RelayError,
    pub request_id: Option<String>,
}

impl From<RelayError> for RequestError {
    fn from(error: RelayError) -> Self {
        RequestError {
            error,
            request_id: None,
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = self.error.status();
        if status.is_server_error() {
            tracing::warn!(error = %self.error, request_id = ?self.request_id, "request failed");
        } else {
            tracing::debug!(error = %self.error, request_id = ?self.request_id, "request rejected");
        }
        let body = self.error.to_body(self.request_id.as_deref());
        let mut response = (status, axum::Json(body)).into_response();
        self.error.add_retry_after(&mut response);
        response
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        RequestError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_4xx_and_not_retryable() {
        let invalid = RelayError::Invalid(ValidationError {
            field: "model".into(),
            message: "unknown".into(),
            code: ErrorCode::UnknownModel,
        });
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(invalid.code(), ErrorCode::UnknownModel);
        assert!(invalid.is_client_fault() && !invalid.is_retryable());
        let too_big = RelayError::PayloadTooLarge { limit: 10 };
        assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let upstream = |failure| RelayError::Upstream {
            failure,
            provider: "bedrock",
            target: "m".into(),
            message: "x".into(),
            retry_after: None,
        };
        for (failure, status, retryable) in [
            (UpstreamFailure::Throttled, 429, true),
            (UpstreamFailure::Unavailable, 503, true),
            (UpstreamFailure::Timeout, 504, true),
            (UpstreamFailure::Stalled, 504, true),
            (UpstreamFailure::Rejected, 400, false),
            (UpstreamFailure::ContextTooLong, 400, false),
            (UpstreamFailure::Misconfigured, 502, false),
            (UpstreamFailure::Protocol, 502, true),
        ] {
            let err = upstream(failure);
            assert_eq!(err.status().as_u16(), status, "{failure:?}");
            assert_eq!(err.is_retryable(), retryable, "{failure:?}");
        }
    }
}
