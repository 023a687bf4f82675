//! Request plumbing shared by every route: the request id every answer carries, and a JSON body
//! extractor whose rejections speak the relay's error shape (400 with the field at fault, 413 over
//! the size limit) instead of axum's plain-text ones.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use fm_protocol::limits::MAX_BODY_BYTES;
use serde::de::DeserializeOwned;

use crate::error::{RelayError, RequestError};

/// The header that carries the request id on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the request being served, assigned on arrival.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id the request was given on arrival (by [`assign_request_id`]), if it was.
    pub(crate) fn of(request: &Request) -> Option<&str> {
        request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.as_str())
    }

    pub(crate) fn generate() -> Self {
        // A random (version 4) UUID from the thread's fast generator: a request id needs to be
        // unique, not secret, and asking the kernel for randomness cost a syscall per request.
        let bytes = fastrand::u128(..).to_le_bytes();
        RequestId(
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .simple()
                .to_string(),
        )
    }
}

/// The value of `name=value` in a query string (the first, as written), if there is one.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Middleware: gives the request an id and puts it in the answer's `x-request-id` header.
pub async fn assign_request_id(mut request: Request, next: Next) -> Response {
    let id = RequestId::generate();
    let header = HeaderValue::from_str(&id.0).ok();
    request.extensions_mut().insert(id);
    let mut response = next.run(request).await;
    if let Some(header) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = RequestError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}

/// A JSON body of type `T`, rejected with a [`RelayError`] that names the problem.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = RequestError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let request_id = RequestId::of(&request).map(str::to_string);
        let reject = |error: RelayError| RequestError {
            error,
            request_id: request_id.clone(),
        };
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                reject(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    RelayError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    RelayError::MalformedJson {
                        message: format!("the request body could not be read: {rejection}"),
                        field: None,
                    }
                })
            })?;
        parse_json(&bytes).map(ApiJson).map_err(reject)
    }
}

/// Parses a JSON body, naming the field at fault when the shape is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RelayError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(RelayError::MalformedJson {
            message: "the request body is empty; send a JSON object".into(),
            field: None,
        });
    }
    // Well-formed bodies take the plain parser; only a body that fails is read again with
    // `serde_path_to_error` (slower: it tracks the path of every value) to name the field at fault.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let field = (path != ".").then_some(path);
        let message = match (&field, inner.classify()) {
            (_, serde_json::error::Category::Syntax | serde_json::error::Category::Eof) => {
                format!("the request body is not valid JSON: {inner}")
            }
            (Some(field), _) => format!("field `{field}`: {inner}"),
            (None, _) => format!("the request body has the wrong shape: {inner}"),
        };
        RelayError::MalformedJson { message, field }
    })?;
    deserializer
        .end()
        .map_err(|err| RelayError::MalformedJson {
            message: format!("unexpected data after the JSON value: {err}"),
            field: None,
        })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fm_protocol::ChatRequest;

    fn message_and_field(body: &str) -> (String, Option<String>) {
        match parse_json::<ChatRequest>(body.as_bytes()).unwrap_err() {
            RelayError::MalformedJson { message, field } => (message, field),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let (message, field) = message_and_field(
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":"many"}"#,
        );
        assert_eq!(field.as_deref(), Some("max_tokens"));
        assert!(message.contains("invalid type"), "{message}");
        let (_, field) = message_and_field(r#"{"messages":[{"role":"robot","content":"hi"}]}"#);
        assert_eq!(field.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn syntax_errors_and_empty_bodies_are_explained() {
        let (message, _) = message_and_field(r#"{"messages": ["#);
        assert!(message.contains("not valid JSON"), "{message}");
        let (message, _) = message_and_field("  ");
        assert!(message.contains("empty"), "{message}");
        let (message, _) = message_and_field(r#"{"messages":[]} {}"#);
        assert!(message.contains("after the JSON value"), "{message}");
    }
}
