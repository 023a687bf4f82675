//! The purpose-built routes of `[[routes]]` (by default `POST /v1/moderate`, `/v1/summarize`,
//! `/v1/analyze`): a chat request framed by the route's system prompt, its `max_tokens`
//! bounded by the route's, routed by the rules that name the path and then the route's own
//! models; answered as one JSON [`ChatResponse`](fm_protocol::ChatResponse), or as Server-Sent
//! Events like `/v1/chat/stream` with `?stream=true` or `Accept: text/event-stream`.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use fm_protocol::{ChatRequest, ValidationError};

use super::edge::Edge;
use super::extract::{ApiJson, query_param};
use super::sse::{NativeEvents, sse_response, stream_body};
use super::{AppState, admit, open_stream};
use crate::config::RouteConfig;
use crate::error::{RelayError, RequestError};
use crate::resilience::Restart;

/// One route per configured path.
pub fn routes(state: &AppState) -> Router<AppState> {
    state
        .routing()
        .table()
        .policy()
        .routes()
        .fold(Router::new(), |router, route| {
            router.route(&route.config.path, post(purpose_route))
        })
}

async fn purpose_route(
    State(state): State<AppState>,
    edge: Edge,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ApiJson(mut request): ApiJson<ChatRequest>,
) -> Result<Response, RequestError> {
    let result = async {
        let table = state.routing().table();
        let route = table
            .policy()
            .route(&edge.path)
            .ok_or_else(|| RelayError::Internal(format!("no configured route at {}", edge.path)))?;
        frame(&mut request, &route.config)?;
        if wants_stream(query.as_deref(), &headers)? {
            let events = open_stream(&state, &edge, request, Restart::Announce).await?;
            Ok(sse_response(stream_body(&state, events, NativeEvents)))
        } else {
            let (ctx, decision) = admit(&state, &edge, &request, false).await?;
            let answer = state.executor().complete(ctx, decision, request).await?;
            Ok(Json(answer).into_response())
        }
    }
    .await;
    result.map_err(|error: RelayError| error.with_request_id(&edge.request_id))
}

/// Puts the route's system prompt before the request's own and bounds `max_tokens` (the route's
/// when the request sets none; a larger one is a 400 naming `max_tokens`).
pub(super) fn frame(request: &mut ChatRequest, route: &RouteConfig) -> Result<(), RelayError> {
    match request.max_tokens {
        Some(asked) if asked > route.max_tokens => {
            return Err(RelayError::Invalid(ValidationError::new(
                "max_tokens",
                format!(
                    "must be at most {} on {} (asked for {asked})",
                    route.max_tokens, route.path
                ),
            )));
        }
        Some(_) => {}
        None => request.max_tokens = Some(route.max_tokens),
    }
    request.system = Some(match request.system.take() {
        Some(own) => format!("{}\n\n{own}", route.system),
        None => route.system.clone(),
    });
    Ok(())
}

/// `?stream=true` (or `1`), or an `Accept` that asks for `text/event-stream`.
fn wants_stream(query: Option<&str>, headers: &HeaderMap) -> Result<bool, RelayError> {
    // A bare `stream` (no `=`) asks for one too.
    let bare = || {
        query
            .unwrap_or_default()
            .split('&')
            .any(|pair| pair == "stream")
            .then_some("")
    };
    let asked = query_param(query, "stream").or_else(bare);
    if let Some(value) = asked {
        return match value {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(RelayError::InvalidQuery {
                field: "stream".into(),
                message: format!("`stream` must be true or false, got `{other}`"),
            }),
        };
    }
    Ok(headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|kind| kind.split(';').next().unwrap_or("").trim() == "text/event-stream")
        }))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_query_or_the_accept_header_asks_for_a_stream() {
        let none = HeaderMap::new();
        assert!(!wants_stream(None, &none).unwrap());
        assert!(wants_stream(Some("stream=true"), &none).unwrap());
        assert!(wants_stream(Some("a=1&stream"), &none).unwrap());
        assert!(!wants_stream(Some("stream=false"), &none).unwrap());
        assert!(wants_stream(Some("stream=yes"), &none).is_err());
        let mut sse = HeaderMap::new();
        sse.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream;q=0.9"),
        );
        assert!(wants_stream(None, &sse).unwrap());
        assert!(!wants_stream(Some("stream=0"), &sse).unwrap());
    }

    #[test]
    fn a_route_frames_the_request_and_bounds_its_answer() {
        let route = RouteConfig {
            path: "/v1/summarize".into(),
            system: "Summarize.".into(),
            max_tokens: 300,
            models: vec!["m".into()],
            max_latency_ms: None,
        };
        let mut request = ChatRequest::from_prompt("text");
        frame(&mut request, &route).unwrap();
        assert_eq!(request.max_tokens, Some(300));
        assert_eq!(request.system.as_deref(), Some("Summarize."));
        let mut request = ChatRequest {
            system: Some("In French.".into()),
            max_tokens: Some(100),
            ..ChatRequest::from_prompt("text")
        };
        frame(&mut request, &route).unwrap();
        assert_eq!(request.system.as_deref(), Some("Summarize.\n\nIn French."));
        let mut request = ChatRequest {
            max_tokens: Some(301),
            ..ChatRequest::from_prompt("text")
        };
        let err = frame(&mut request, &route).unwrap_err();
        assert!(
            matches!(err, RelayError::Invalid(ref e) if e.field == "max_tokens"),
            "{err}"
        );
    }
}
