//! Errors the simulator answers with, shaped exactly as Bedrock sends them: an HTTP status, the
//! `x-amzn-errortype` header the SDK maps to its typed errors, and a `{"message": ...}` body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::fault::HttpFault;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A scripted fault.
    #[error("{}", .0.message())]
    Injected(HttpFault),
    /// The request body is not what Bedrock accepts.
    #[error("{0}")]
    Validation(String),
    /// The URL names no Bedrock operation.
    #[error("unknown operation `{0}`")]
    UnknownOperation(String),
}

impl SimError {
    fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            SimError::Injected(fault) => (fault.status(), fault.error_type()),
            SimError::Validation(_) => (StatusCode::BAD_REQUEST, "ValidationException"),
            SimError::UnknownOperation(_) => (StatusCode::NOT_FOUND, "UnknownOperationException"),
        }
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let (status, error_type) = self.status_and_type();
        let body = serde_json::json!({ "message": self.to_string() }).to_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-amzn-errortype", HeaderValue::from_static(error_type));
        response
    }
}
