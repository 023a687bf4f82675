//! `POST /v1/messages` at the HTTP level, for what the SDK test (conformance.rs) cannot provoke:
//! a stream that breaks after it started ends with Anthropic's `error` event (never a
//! `message_stop`), a refusal before it started is an Anthropic error body with the relay's
//! status. (The SDK test sends its key as `x-api-key`.)

mod common;

use common::*;
use serde_json::{Value, json};

/// The stream's events: (name, data).
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    body.split("\n\n")
        .filter_map(|frame| {
            let (name, data) = frame.strip_prefix("event: ")?.split_once("\ndata: ")?;
            Some((name.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

fn request(model: &str, stream: bool) -> String {
    json!({"model": model, "max_tokens": 100, "stream": stream,
           "messages": [{"role": "user", "content": "Tell me a story."}]})
    .to_string()
}

#[tokio::test]
async fn a_broken_stream_ends_with_an_error_event_and_refusals_are_anthropic_errors() {
    let harness = start().await;
    let broken = events(harness.post("/v1/messages", request("cut", true)).await).await;
    let names: Vec<&str> = broken.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names[..2],
        ["message_start", "content_block_start"],
        "{names:?}"
    );
    assert!(!names.contains(&"message_stop"), "{names:?}");
    let (last, data) = broken.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "api_error", "{data}");

    let whole = events(harness.post("/v1/messages", request("plain", true)).await).await;
    let (_, delta) = whole
        .iter()
        .find(|(name, _)| name == "message_delta")
        .unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(delta["fm_relay"]["route"]["model"].is_string(), "{delta}");

    let refused = harness
        .post("/v1/messages", request("throttle", false))
        .await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        (body["type"].as_str(), body["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error")),
        "{body}"
    );
    let unknown = harness.post("/v1/messages", request("nope", false)).await;
    assert_eq!(unknown.status(), 400);
}
