//! The edge every request passes before a handler sees it, as tower layers composed in one place
//! ([`layers`]), outermost first:
//!
//! 1. **request id** — `x-request-id` on every answer ([`extract::assign_request_id`]);
//! 2. **trace span** — every request runs in a `request` span with its id, method and path (a
//!    child of the client's trace when it sent a W3C `traceparent`);
//! 3. **origin** — a request whose `Origin` is neither the relay's own (its `Host`) nor in
//!    `edge.allowed_origins` is refused with 403: so no other web page can drive a relay on the
//!    developer's machine, over fetch or WebSocket (browsers apply no CORS to WebSockets);
//! 4. **CORS** (`tower-http`) — preflights answered and the headers a page may read exposed, for
//!    the allowed origins;
//! 5. **auth and limits** — under `/v1/`, the Bedrock routes (`/model/…`) and `/metrics`: the
//!    API key from `Authorization: Bearer …`, `x-api-key` or a SigV4 signature's access key id
//!    identifies the [`Caller`] (401 when missing or not valid, in keys
//!    mode), whose routes are checked (403; `/v1/admin/` needs an admin key). Routes that call a
//!    model (the chat surfaces and the purpose-built `[[routes]]`) are admitted by
//!    [`super::admit`] with the request's tokens; every other route here by its request rates.
//!    Every answer carries the `x-ratelimit-*` headers of what was admitted, and a model
//!    route's the `x-fm-route` header of its routing decision;
//! 6. **JSON only** — a POST whose body is not `application/json` is refused with 415, so a
//!    cross-site "simple" form or `text/plain` POST never reaches a model; the one exception is
//!    a document upload (`multipart/form-data`) to `POST /v1/jobs` (a cross-site form is still
//!    stopped by the origin check), and a Bedrock route's body without a content type (as
//!    boto3's InvokeModel sends it);
//! 7. **body limit** — 413 over [`MAX_BODY_BYTES`] (`POST /v1/jobs` sets its own, from
//!    `jobs.max_document_bytes`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use fm_protocol::limits::MAX_BODY_BYTES;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use super::AppState;
use super::extract::{self, RequestId};
use crate::auth::Caller;
use crate::config::routing::{BEDROCK_PREFIX, CHAT_PATHS};
use crate::error::{Refusal, RelayError, RequestError};
use crate::limits::RateHeaders;
use crate::limits::gcra::Headroom;
use crate::telemetry::traces;

/// Headers a page from an allowed origin may send and read.
const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "authorization",
    "x-api-key",
    "x-fm-route-hint",
];
const EXPOSED_HEADERS: &[&str] = &[
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-fm-route",
];

/// What the edge established about a request, for the handlers that admit model calls.
#[derive(Debug, Clone)]
pub struct Edge {
    pub request_id: String,
    pub caller: Caller,
    /// The request's path: the surface routing rules see.
    pub path: Arc<str>,
    /// The `x-fm-route-hint` header.
    pub route_hint: Option<Arc<str>>,
    /// What the admission leaves for the answer's headers.
    answer_headers: Arc<Mutex<AnswerHeaders>>,
}

/// Headers the admission decides and the edge writes on the answer.
#[derive(Debug, Clone, Default)]
struct AnswerHeaders {
    rate: RateHeaders,
    /// `x-fm-route`.
    route: Option<String>,
}

impl Edge {
    /// The edge of a request that did not pass the layers (a WebSocket's later frames reuse
    /// their connection's caller, path and hint with a fresh id).
    pub fn with_request_id(&self, request_id: String) -> Edge {
        Edge {
            request_id,
            caller: self.caller.clone(),
            path: self.path.clone(),
            route_hint: self.route_hint.clone(),
            answer_headers: Arc::default(),
        }
    }

    /// The edge of a request the relay makes itself on behalf of `caller` (a job's model
    /// call): no HTTP request, no hint header, nothing for answer headers.
    pub fn internal(request_id: String, caller: Caller, path: &str) -> Edge {
        Edge {
            request_id,
            caller,
            path: Arc::from(path),
            route_hint: None,
            answer_headers: Arc::default(),
        }
    }

    /// Notes what the admission left, for the answer's headers.
    pub fn set_rate_headers(&self, headers: RateHeaders) {
        self.answer_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rate = headers;
    }

    /// Notes the routing decision, for the `x-fm-route` header.
    pub fn set_route_header(&self, value: String) {
        self.answer_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .route = Some(value);
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Edge {
    type Rejection = RequestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RequestId(request_id) = RequestId::from_request_parts(parts, state).await?;
        parts.extensions.get::<Edge>().cloned().ok_or_else(|| {
            RelayError::Internal("a model route outside the auth layer".into())
                .with_request_id(&request_id)
        })
    }
}

/// The whole edge around `router`.
pub fn layers(state: AppState, router: Router<AppState>) -> Router<AppState> {
    let allowed = &state.config().edge.allowed_origins;
    let cors = CorsLayer::new()
        .allow_origin(match allowed.iter().any(|origin| origin == "*") {
            true => AllowOrigin::any(),
            false => AllowOrigin::list(
                allowed
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            ),
        })
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers(
            ALLOWED_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect::<Vec<_>>(),
        )
        .expose_headers(
            EXPOSED_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect::<Vec<_>>(),
        )
        .max_age(Duration::from_secs(600));
    router.layer(
        ServiceBuilder::new()
            .layer(from_fn(extract::assign_request_id))
            .layer(from_fn(span))
            .layer(from_fn_with_state(state.clone(), check_origin))
            .layer(cors)
            .layer(from_fn_with_state(state, authenticate))
            .layer(from_fn(require_json))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
    )
}

/// Runs the request in its span: a traced one when the request is sampled for export.
async fn span(request: Request, next: Next) -> Response {
    let (id, method, path) = (
        RequestId::of(&request).unwrap_or_default(),
        request.method(),
        request.uri().path(),
    );
    let span = match traces::sampled(request.headers()) {
        true => tracing::info_span!(target: traces::TRACED, "request", id, %method, %path),
        false => tracing::info_span!(target: traces::UNTRACED, "request", id, %method, %path),
    };
    traces::adopt_parent(&span, request.headers());
    next.run(request).instrument(span).await
}

/// Whether `origin` may call: the relay's own page, or a configured origin.
fn origin_allowed(allowed: &[String], origin: &str, host: Option<&str>) -> bool {
    let own = host.is_some_and(|host| {
        origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
    });
    own || allowed
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
}

async fn check_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !origin_allowed(&state.config().edge.allowed_origins, origin, host) {
            let refusal = RelayError::Forbidden(Refusal::Origin {
                origin: origin.to_string(),
            });
            return refuse(&request, refusal);
        }
    }
    next.run(request).await
}

fn refuse(request: &Request, error: RelayError) -> Response {
    RequestError {
        error,
        request_id: RequestId::of(request).map(str::to_string),
    }
    .into_response()
}

/// The key a request carries: `Authorization: Bearer …` or `x-api-key` — or, for a browser's
/// WebSocket (which cannot set headers), a subprotocol beside `fm-relay` that starts like a key.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(protocols) = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        && let Some(key) = protocols
            .split(',')
            .map(str::trim)
            .find(|protocol| protocol.starts_with(crate::auth::KEY_PREFIX))
    {
        return Some(key);
    }
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, key) = value.trim().split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(key.trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| sigv4_access_key(headers))
}

/// The access key id of an AWS SigV4 `Authorization` header (`AWS4-HMAC-SHA256
/// Credential=<key id>/<date>/<region>/<service>/aws4_request, ...`): how boto3 and the AWS SDKs
/// present a relay key on the Bedrock routes. The signature is not checked: the key is the
/// credential, as a bearer token is.
fn sigv4_access_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let rest = value.strip_prefix("AWS4-HMAC-SHA256")?;
    let credential = rest
        .split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("Credential="))?;
    credential.split('/').next().filter(|key| !key.is_empty())
}

/// Whether a request to `path` needs a key and is admitted to the limits.
pub(super) fn is_guarded(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with(BEDROCK_PREFIX) || path == "/metrics"
}

/// Whether `path` calls a model: admitted by [`super::admit`] with the request's tokens rather
/// than here by the request rates.
pub(super) fn calls_a_model(state: &AppState, path: &str) -> bool {
    CHAT_PATHS.contains(&path)
        || path.starts_with(BEDROCK_PREFIX)
        || state.routing().table().policy().route(path).is_some()
}

async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !is_guarded(path) || request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let path: Arc<str> = Arc::from(path);
    let caller = match state.keys().identify(presented_key(request.headers())) {
        Ok(caller) => caller,
        Err(err) => return refuse(&request, err),
    };
    if !caller.key().may_call(&path) {
        let refusal = Refusal::Route {
            key: caller.name().to_string(),
            path: path.to_string(),
        };
        return refuse(&request, RelayError::Forbidden(refusal));
    }
    if path.starts_with("/v1/admin/") && !caller.key().admin {
        let refusal = Refusal::NotAdmin {
            key: caller.name().to_string(),
        };
        return refuse(&request, RelayError::Forbidden(refusal));
    }
    let answer_headers = Arc::new(Mutex::new(AnswerHeaders::default()));
    if !calls_a_model(&state, &path) {
        let (admitted, headers) = state.limits().admit_request(&caller).await;
        answer_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rate = headers;
        if let Err(err) = admitted {
            let mut response = refuse(&request, err);
            add_rate_headers(&mut response, headers);
            return response;
        }
    }
    let request_id = RequestId::of(&request).unwrap_or_default().to_string();
    let route_hint = request
        .headers()
        .get("x-fm-route-hint")
        .and_then(|v| v.to_str().ok())
        .map(|hint| Arc::from(hint.trim()));
    request.extensions_mut().insert(Edge {
        request_id,
        caller,
        path,
        route_hint,
        answer_headers: answer_headers.clone(),
    });
    let mut response = next.run(request).await;
    let answer = std::mem::take(&mut *answer_headers.lock().unwrap_or_else(|e| e.into_inner()));
    add_rate_headers(&mut response, answer.rate);
    if let Some(route) = answer.route.and_then(|v| HeaderValue::try_from(v).ok()) {
        response.headers_mut().insert("x-fm-route", route);
    }
    response
}

/// The OpenAI convention: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, the reset as a
/// duration (`1s`, `6m0s`, `250ms`).
fn add_rate_headers(response: &mut Response, headers: RateHeaders) {
    for (unit, headroom) in [("requests", headers.requests), ("tokens", headers.tokens)] {
        let Some(headroom) = headroom else { continue };
        let values = rate_header_values(headroom);
        for (name, value) in ["limit", "remaining", "reset"].iter().zip(values) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(format!("x-ratelimit-{name}-{unit}")),
                HeaderValue::try_from(value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
}

fn rate_header_values(headroom: Headroom) -> [String; 3] {
    [
        headroom.limit.to_string(),
        headroom.remaining.to_string(),
        format_reset(Duration::from_micros(headroom.reset_us.max(0.0) as u64)),
    ]
}

/// `250ms`, `1.5s`, `6m0s`: how OpenAI writes its reset times.
fn format_reset(wait: Duration) -> String {
    let ms = wait.as_millis();
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => {
            let secs = wait.as_secs_f64();
            format!("{}s", (secs * 1000.0).round() / 1000.0)
        }
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// Refuses a POST whose body is not JSON — but for a document upload (`multipart/form-data`)
/// to `POST /v1/jobs`, and a Bedrock route's body sent without a content type (read as JSON).
async fn require_json(request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let essence = content_type.map(|value| value.split(';').next().unwrap_or("").trim());
        let is = |media: &str| essence.is_some_and(|e| e.eq_ignore_ascii_case(media));
        let path = request.uri().path();
        // boto3's InvokeModel sends no content type unless told one; a browser always sends one.
        let accepted = is("application/json")
            || (is("multipart/form-data") && path == crate::config::routing::JOBS_PATH)
            || (content_type.is_none() && path.starts_with(BEDROCK_PREFIX));
        if !accepted {
            let got = content_type.map(str::to_string);
            return refuse(&request, RelayError::UnsupportedMediaType { got });
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_page_and_configured_origins_are_allowed() {
        let allowed = vec!["https://app.example".to_string()];
        let host = Some("127.0.0.1:8080");
        assert!(origin_allowed(&allowed, "http://127.0.0.1:8080", host));
        assert!(origin_allowed(&allowed, "https://app.example", host));
        assert!(!origin_allowed(&allowed, "https://evil.example", host));
        assert!(!origin_allowed(&allowed, "http://127.0.0.1:9999", host));
        assert!(origin_allowed(&["*".into()], "https://evil.example", host));
    }

    #[test]
    fn keys_come_from_either_header() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer fmr_x"));
        assert_eq!(presented_key(&headers), Some("fmr_x"));
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("fmr_y"));
        assert_eq!(presented_key(&headers), Some("fmr_y"));
        let mut headers = HeaderMap::new();
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("fm-relay, fmr_z"),
        );
        assert_eq!(presented_key(&headers), Some("fmr_z"));
        assert_eq!(presented_key(&HeaderMap::new()), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=fmr_w/20261204/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc",
            ),
        );
        assert_eq!(presented_key(&headers), Some("fmr_w"));
    }

    #[test]
    fn resets_read_like_openais() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
