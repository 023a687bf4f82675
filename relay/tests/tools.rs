//! Tool use end to end, over real sockets: the sim calls a tool when the prompt names one, on
//! its Converse and its OpenAI surfaces; the relay carries the call to every surface and the
//! results back; and a stream cut in the middle of a call never delivers half of one.

mod common;

use common::{Harness, UPSTREAM, model, sim_config, sse_events, start_with, text_of};
use fm_protocol::{ChatResponse, StopReason, StreamEvent, ToolCall};
use fm_relay::RelayConfig;
use fm_relay::config::{ModelConfig, ProviderKind};
use serde_json::{Value, json};

/// What the prompts ask: the sim calls `search` with the JSON object in the prompt.
const ASK: &str = r#"Please use search with {"query": "relays", "limit": 2}"#;

fn tools() -> Value {
    json!([
        {"name": "get_weather", "description": "The weather in a city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "search", "description": "Searches the web",
         "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}},
    ])
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": ASK}], "tools": tools()})
}

/// A relay with `ollama` (OpenAI-compatible, on the sim) beside the Bedrock models, and what
/// `adjust` adds.
async fn start(adjust: impl FnOnce(&mut RelayConfig)) -> Harness {
    start_with(sim_config(), |config| {
        let sim_url = config.bedrock.endpoint.clone().unwrap();
        config.models.push(ModelConfig {
            provider: ProviderKind::OpenAi,
            region: "local-gpu".into(),
            endpoint: Some(format!("{sim_url}/v1")),
            ..model("ollama", UPSTREAM.into())
        });
        adjust(config);
        config.validate().unwrap();
    })
    .await
}

async fn chat(harness: &Harness, body: &Value) -> ChatResponse {
    let response = harness.post("/v1/chat", body.to_string()).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn the_search_call(calls: &[ToolCall]) -> &ToolCall {
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].name, "search");
    assert_eq!(calls[0].input, json!({"query": "relays", "limit": 2}));
    &calls[0]
}

fn tool_calls(events: &[StreamEvent]) -> Vec<ToolCall> {
    events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::ToolCall { call } => Some(call.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_model_calls_a_tool_and_answers_its_result_on_either_provider() {
    let harness = start(|_| {}).await;
    for model in ["plain", "ollama"] {
        let answer = chat(&harness, &ask(model)).await;
        assert_eq!(answer.stop_reason, StopReason::ToolUse, "{model}");
        let call = the_search_call(&answer.tool_calls).clone();
        assert!(!answer.text.is_empty(), "a sentence before the call");

        // The result goes back; the model answers it.
        let round_trip = json!({
            "model": model,
            "tools": tools(),
            "messages": [
                {"role": "user", "content": ASK},
                {"role": "assistant", "content": answer.text, "tool_calls": [call]},
                {"role": "user", "content": "", "tool_results": [
                    {"tool_call_id": call.id, "content": "3 pages about relays"}]},
            ],
        });
        let answered = chat(&harness, &round_trip).await;
        assert_eq!(answered.stop_reason, StopReason::EndTurn, "{model}");
        assert!(answered.tool_calls.is_empty());
        assert!(
            answered
                .text
                .starts_with("The tool returned 3 pages about relays."),
            "{model}: {}",
            answered.text
        );

        // Streamed: the call arrives whole, once, after the text.
        let events = sse_events(
            harness
                .post("/v1/chat/stream", ask(model).to_string())
                .await,
        )
        .await;
        the_search_call(&tool_calls(&events));
        assert_eq!(text_of(&events), answer.text, "{model}");
        match events.last() {
            Some(StreamEvent::Done { stop_reason, .. }) => {
                assert_eq!(*stop_reason, StopReason::ToolUse)
            }
            other => panic!("{model}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn tool_choice_picks_the_tool_and_bad_tool_use_is_a_400_naming_the_field() {
    let harness = start(|_| {}).await;
    let mut named = ask("plain");
    named["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let answer = chat(&harness, &named).await;
    assert_eq!(answer.tool_calls[0].name, "get_weather");

    let refused = |body: Value, field: &'static str| {
        let harness = &harness;
        async move {
            let response = harness.post("/v1/chat", body.to_string()).await;
            assert_eq!(response.status(), 400, "{body}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["field"], field, "{error}");
        }
    };
    let mut unknown = ask("plain");
    unknown["tool_choice"] = json!({"type": "tool", "name": "nope"});
    refused(unknown, "tool_choice.name").await;
    // A result for a call the assistant did not make.
    refused(
        json!({"tools": tools(), "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "tool_results": [{"tool_call_id": "t1", "content": "x"}]},
        ]}),
        "messages[2].tool_results[0].tool_call_id",
    )
    .await;
    // Bedrock cannot be told `none` once the conversation has tool turns.
    refused(
        json!({"model": "plain", "tools": tools(), "tool_choice": {"type": "none"}, "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "name": "search", "input": {}}]},
            {"role": "user", "tool_results": [{"tool_call_id": "t1", "content": "x"}]},
        ]}),
        "tool_choice",
    )
    .await;
}

/// The text a client shows at the end, and the calls it holds: what a `failover` told it to
/// discard is dropped.
fn what_the_client_keeps(events: &[StreamEvent]) -> (String, Vec<ToolCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for event in events {
        match event {
            StreamEvent::TextDelta { text: piece } => text.push_str(piece),
            StreamEvent::ToolCall { call } => calls.push(call.clone()),
            StreamEvent::Failover {
                discard_partial: true,
                ..
            } => {
                text.clear();
                calls.clear();
            }
            _ => {}
        }
    }
    (text, calls)
}

#[tokio::test]
async fn a_stream_cut_in_the_middle_of_a_tool_call_never_delivers_half_of_one() {
    // The sim sends six tokens of text, then the call's input in three pieces: cut after the
    // first piece, and after the last one (before the call's block ends).
    let harness = start(|config| {
        for (id, cut) in [("cut-in-call", 7), ("cut-at-call-end", 9)] {
            config.models.push(ModelConfig {
                fallback_models: vec!["plain".into()],
                ..model(id, format!("{UPSTREAM}~cut@{cut}"))
            });
        }
    })
    .await;
    let whole = chat(&harness, &ask("plain")).await;
    for model in ["cut-in-call", "cut-at-call-end"] {
        // Native SSE: the restart is announced, the text dropped, the call comes once, whole.
        let events = sse_events(
            harness
                .post("/v1/chat/stream", ask(model).to_string())
                .await,
        )
        .await;
        let failover = events
            .iter()
            .position(|e| matches!(e, StreamEvent::Failover { .. }))
            .unwrap_or_else(|| panic!("{model}: {events:?}"));
        assert!(
            matches!(
                events[failover],
                StreamEvent::Failover {
                    discard_partial: true,
                    ..
                }
            ),
            "{events:?}"
        );
        assert!(
            tool_calls(&events[..failover]).is_empty(),
            "{model}: no piece of the cut call before the failover: {events:?}"
        );
        let (text, calls) = what_the_client_keeps(&events);
        assert_eq!(text, whole.text, "{model}");
        assert_eq!(calls, whole.tool_calls, "{model}");
        assert!(
            matches!(events.last(), Some(StreamEvent::Done { .. })),
            "{events:?}"
        );

        // OpenAI's surface cannot take text back: the restart replays it, then the call comes.
        let mut body = json!({"model": model, "stream": true,
            "messages": [{"role": "user", "content": ASK}],
            "tools": [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
                      {"type": "function", "function": {"name": "get_weather"}}]});
        body["tool_choice"] = json!("auto");
        let response = harness.post("/v1/chat/completions", body.to_string()).await;
        assert_eq!(response.status(), 200);
        let lines: Vec<String> = response
            .text()
            .await
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix("data: ").map(str::to_string))
            .collect();
        assert_eq!(
            lines.last().map(String::as_str),
            Some("[DONE]"),
            "{lines:?}"
        );
        let calls: Vec<Value> = lines
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|chunk| {
                chunk["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .cloned()
            })
            .flatten()
            .collect();
        assert_eq!(calls.len(), 1, "{model}: {lines:?}");
        assert_eq!(calls[0]["function"]["name"], "search");
        let arguments: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"query": "relays", "limit": 2}));
    }
}
