//! Errors the simulator answers with, shaped exactly as Bedrock sends them: an HTTP status, the
//! `x-amzn-errortype` header the SDK maps to its typed errors, and a `{"message": ...}` body —
//! or, for a connection that hangs up, no answer at all.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::fault::HttpFault;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A scripted fault.
    #[error("{}", .0.message())]
    Injected(HttpFault),
    /// A scripted throttle that asks the client to wait this many milliseconds.
    #[error("{}", HttpFault::Throttle.message())]
    ThrottledFor(u32),
    /// A scripted hang-up: the connection closes without an answer.
    #[error("the connection was closed without an answer")]
    HungUp,
    /// The request body is not what Bedrock accepts.
    #[error("{0}")]
    Validation(String),
    /// The URL names no Bedrock operation.
    #[error("unknown operation `{0}`")]
    UnknownOperation(String),
}

impl SimError {
    /// The fault behind this error, if it is a scripted one.
    pub fn injected(&self) -> Option<HttpFault> {
        match self {
            SimError::Injected(fault) => Some(*fault),
            SimError::ThrottledFor(_) => Some(HttpFault::Throttle),
            _ => None,
        }
    }

    /// Adds the headers that ask the client to wait, for a throttle that says how long: whole
    /// seconds in `Retry-After` (rounded up), milliseconds in `x-amz-retry-after` and
    /// `retry-after-ms`.
    pub fn add_wait_headers(&self, headers: &mut HeaderMap) {
        let SimError::ThrottledFor(wait_ms) = self else {
            return;
        };
        headers.insert(header::RETRY_AFTER, wait_ms.div_ceil(1000).into());
        headers.insert("x-amz-retry-after", (*wait_ms).into());
        headers.insert("retry-after-ms", (*wait_ms).into());
    }

    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            SimError::Injected(fault) => (fault.status(), fault.error_type()),
            SimError::ThrottledFor(_) | SimError::HungUp => (
                HttpFault::Throttle.status(),
                HttpFault::Throttle.error_type(),
            ),
            SimError::Validation(_) => (StatusCode::BAD_REQUEST, "ValidationException"),
            SimError::UnknownOperation(_) => (StatusCode::NOT_FOUND, "UnknownOperationException"),
        }
    }
}

/// A response that never reaches the client: its body fails before anything is written, so hyper
/// closes the connection without sending the status line or headers (the fm-sim tests read the
/// socket to prove it). Mid-body, the same failure tears the connection down without the closing
/// chunk.
pub fn hang_up() -> Response {
    let failed = futures_util::stream::once(async {
        Err::<bytes::Bytes, _>(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    });
    Response::new(Body::from_stream(failed))
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        if let SimError::HungUp = self {
            return hang_up();
        }
        let (status, error_type) = self.status_and_type();
        let body = serde_json::json!({ "message": self.to_string() }).to_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-amzn-errortype", HeaderValue::from_static(error_type));
        self.add_wait_headers(headers);
        response
    }
}
