//! Traces end to end: an OTLP receiver inside the test (the `opentelemetry-proto` types behind a
//! small axum server) gets one request's spans — `request`, a child of the client's
//! `traceparent`, and under it `route_decision`, `cache_lookup` and `upstream_attempt` — and the
//! OpenAI-compatible upstream receives the attempt's `traceparent`.
//!
//! One test in this binary: the subscriber that exports spans is process-wide.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use common::*;
use fm_relay::config::{ModelConfig, ProviderKind};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// An OTLP/HTTP receiver: every span it was sent.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let router = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes| async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut all = spans.lock().unwrap();
                    for resource in request.resource_spans {
                        for scope in resource.scope_spans {
                            all.extend(scope.spans);
                        }
                    }
                    "{}"
                },
            ),
        )
        .with_state(spans.clone());
    (format!("{}/v1/traces", serve(router).await), spans)
}

/// A minimal OpenAI-compatible upstream that keeps the `traceparent` of each call.
async fn openai_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(seen): State<Arc<Mutex<Vec<String>>>>, headers: HeaderMap| async move {
                if let Some(value) = headers.get("traceparent") {
                    seen.lock().unwrap().push(value.to_str().unwrap().to_string());
                }
                axum::Json(json!({
                    "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
                }))
            }),
        )
        .with_state(seen.clone());
    (format!("{}/v1", serve(router).await), seen)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_s_spans_reach_the_collector_with_the_right_parents() {
    let (collector, spans) = otlp_receiver().await;
    let (upstream, traceparents) = openai_upstream().await;
    let harness = start_with(sim_config(), |config| {
        config.tracing.otlp_endpoint = collector.clone();
        config.tracing.sample_ratio = 0.0; // only the client's sampled trace is exported
        config.cache.enabled = true;
        config.models.push(ModelConfig {
            provider: ProviderKind::OpenAi,
            endpoint: Some(upstream.clone()),
            region: "local".into(),
            ..model("oai", "m".into())
        });
        fm_relay::telemetry::traces::init(&config.tracing).unwrap();
    })
    .await;
    let response = harness
        .http
        .post(harness.url("/v1/chat"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(chat_body(Some("oai"), "hello").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // An unsampled request (no traceparent, ratio 0) exports nothing.
    harness.chat(Some("plain"), "not traced").await;

    let start = Instant::now();
    let spans = loop {
        fm_relay::telemetry::traces::flush();
        let spans = spans.lock().unwrap().clone();
        if spans.iter().any(|s| s.name == "request")
            && spans.iter().any(|s| s.name == "upstream_attempt")
        {
            break spans;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "spans never arrived: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(hex(&request.trace_id), CLIENT_TRACE, "the client's trace");
    assert_eq!(
        hex(&request.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    for child in ["route_decision", "cache_lookup", "upstream_attempt"] {
        let span = spans
            .iter()
            .find(|s| s.name == child)
            .unwrap_or_else(|| panic!("no {child} span in {spans:?}"));
        assert_eq!(span.trace_id, request.trace_id, "{child}");
        assert_eq!(
            span.parent_span_id, request.span_id,
            "{child} is the request's child"
        );
    }
    assert!(
        spans.iter().all(|s| s.trace_id == request.trace_id),
        "only the sampled trace was exported: {spans:?}"
    );
    // The upstream call carried the attempt's context on.
    let attempt = spans.iter().find(|s| s.name == "upstream_attempt").unwrap();
    let traceparents = traceparents.lock().unwrap().clone();
    assert_eq!(
        traceparents,
        [format!("00-{CLIENT_TRACE}-{}-01", hex(&attempt.span_id))]
    );
}
