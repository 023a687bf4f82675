//! OpenAI compatibility over real sockets, both ways: OpenAI-shaped clients calling
//! `/v1/chat/completions`, and models served by an OpenAI-compatible upstream (fm-sim's
//! chat-completions surface) with the same resilience, in fallback chains mixed with Bedrock.

mod common;

use common::{Harness, chat_body, model, sim_config, sse_events, start_with, text_of};
use fm_protocol::{ResponseSource, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::{ModelConfig, ProviderKind};
use serde_json::{Value, json};

/// The upstream id both an OpenAI-compatible model and a Bedrock model use in these tests: the
/// sim plans the same answer for it on both surfaces.
const SHARED_UPSTREAM: &str = "llama-test";

fn openai_model(id: &str, upstream_id: &str, sim_url: &str) -> ModelConfig {
    ModelConfig {
        provider: ProviderKind::OpenAi,
        region: "local-gpu".into(),
        endpoint: Some(format!("{sim_url}/v1")),
        ..model(id, upstream_id.into())
    }
}

/// A relay with `ollama` (OpenAI-compatible, on the sim) and `bedrock-twin` (Bedrock, same
/// upstream id, takes prefill), plus what `adjust` adds given the sim's URL.
async fn start(adjust: impl FnOnce(&mut RelayConfig, &str)) -> Harness {
    start_with(sim_config(), |config| {
        // The relay's Bedrock endpoint is the sim, which serves the OpenAI API too.
        let sim_url = config.bedrock.endpoint.clone().unwrap();
        config
            .models
            .push(openai_model("ollama", SHARED_UPSTREAM, &sim_url));
        config.models.push(ModelConfig {
            accepts_prefill: true,
            ..model("bedrock-twin", SHARED_UPSTREAM.into())
        });
        adjust(config, &sim_url);
        config.validate().unwrap();
    })
    .await
}

#[tokio::test]
async fn a_temperature_is_held_to_the_range_of_the_model_that_answers() {
    let harness = start(|_, _| {}).await;
    let asked = |model: &str, temperature: f32| {
        json!({"model": model, "temperature": temperature,
               "messages": [{"role": "user", "content": "Hi"}]})
        .to_string()
    };
    // OpenAI's range on an OpenAI-compatible model.
    let answered = harness
        .post("/v1/chat/completions", asked("ollama", 1.5))
        .await;
    assert_eq!(answered.status(), 200);
    // Beyond a Bedrock model's: a 400 naming the field and the model.
    let refused = harness
        .post("/v1/chat/completions", asked("plain", 1.5))
        .await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["param"], "temperature", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`plain`"),
        "{error}"
    );
    // Beyond any model's.
    let refused = harness
        .post("/v1/chat/completions", asked("ollama", 2.5))
        .await;
    assert_eq!(refused.status(), 400);
}

#[tokio::test]
async fn a_response_format_goes_to_models_that_take_one_and_is_refused_by_others() {
    let harness = start(|_, _| {}).await;
    let asked = |model: &str, format: Value| {
        json!({"model": model, "response_format": format,
               "messages": [{"role": "user", "content": "Hi"}]})
        .to_string()
    };
    let json_object = json!({"type": "json_object"});
    let answered = harness
        .post("/v1/chat/completions", asked("ollama", json_object.clone()))
        .await;
    assert_eq!(answered.status(), 200);
    for (model, format) in [("plain", json_object), ("ollama", json!({"type": "yaml"}))] {
        let refused = harness
            .post("/v1/chat/completions", asked(model, format.clone()))
            .await;
        assert_eq!(refused.status(), 400, "{model} {format}");
        let error: Value = refused.json().await.unwrap();
        assert_eq!(error["error"]["param"], "response_format", "{error}");
    }
    // Plain text is what every model answers.
    let text = harness
        .post(
            "/v1/chat/completions",
            asked("plain", json!({"type": "text"})),
        )
        .await;
    assert_eq!(text.status(), 200);
}

fn completion_request(model: &str, stream: bool) -> String {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Explain what a relay does."},
        ],
        "max_tokens": 64,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

/// The `data:` payloads of an SSE answer.
async fn data_lines(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn chunk_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn openai_clients_get_completions_and_chunks_from_a_bedrock_model() {
    let harness = start(|_, _| {}).await;
    let response = harness
        .post("/v1/chat/completions", completion_request("plain", false))
        .await;
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "plain");
    let text = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(!text.is_empty());
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert!(completion["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(completion["fm_relay"]["route"]["source"], "primary");

    let lines = data_lines(
        harness
            .post("/v1/chat/completions", completion_request("plain", true))
            .await,
    )
    .await;
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunk_text(&chunks), text);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], completion["usage"]);
}

#[tokio::test]
async fn openai_clients_get_openai_error_bodies() {
    let harness = start(|_, _| {}).await;
    let cases = [
        (
            completion_request("gpt-9", false),
            400,
            "unknown_model",
            "invalid_request_error",
        ),
        (
            "{not json".to_string(),
            400,
            "malformed_json",
            "invalid_request_error",
        ),
        (
            json!({"model": "plain", "messages": [{"role": "user", "content": "x"}], "n": 3})
                .to_string(),
            400,
            "invalid_request",
            "invalid_request_error",
        ),
        (
            completion_request("throttle", false),
            429,
            "upstream_throttled",
            "rate_limit_error",
        ),
        (
            completion_request("unavailable", true),
            503,
            "upstream_unavailable",
            "server_error",
        ),
    ];
    for (body, status, code, kind) in cases {
        let response = harness.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        assert!(response.headers().contains_key("x-request-id"));
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}: {error}");
        assert_eq!(error["error"]["type"], kind, "{body}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().len() > 5);
    }
    // A stream that breaks after it started ends with an error object and no [DONE].
    let lines = data_lines(
        harness
            .post("/v1/chat/completions", completion_request("cut", true))
            .await,
    )
    .await;
    assert!(!lines.iter().any(|line| line == "[DONE]"), "{lines:?}");
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn an_openai_compatible_upstream_serves_every_surface() {
    let harness = start(|_, _| {}).await;
    // The sim plans the same answer for the same model id on both of its surfaces.
    let twin = harness
        .chat(Some("bedrock-twin"), "Explain what a relay does.")
        .await;
    let answer = harness
        .chat(Some("ollama"), "Explain what a relay does.")
        .await;
    assert_eq!(answer.text, twin.text);
    assert_eq!(answer.route.provider, "openai");
    assert_eq!(answer.route.region, "local-gpu");
    assert_eq!(answer.usage, twin.usage);

    let events = sse_events(
        harness
            .post(
                "/v1/chat/stream",
                chat_body(Some("ollama"), "Explain what a relay does."),
            )
            .await,
    )
    .await;
    assert_eq!(text_of(&events), twin.text);
    match events.last() {
        Some(StreamEvent::Done { usage, route, .. }) => {
            assert_eq!(*usage, twin.usage, "include_usage brings the usage");
            assert_eq!(route.provider, "openai");
        }
        other => panic!("{other:?}"),
    }
    let seen: Vec<String> = harness
        .sim
        .stats()
        .recent
        .iter()
        .map(|r| r.operation.clone())
        .collect();
    assert!(seen.iter().any(|op| op == "chat-completions"), "{seen:?}");
}

#[tokio::test]
async fn fallback_chains_mix_providers_before_and_after_the_first_token() {
    let harness = start(|config, sim_url| {
        let mut down = openai_model(
            "ollama-down",
            &format!("{SHARED_UPSTREAM}~unavailable"),
            sim_url,
        );
        down.fallback_models = vec!["bedrock-twin".into()];
        let mut cut = openai_model("ollama-cut", &format!("{SHARED_UPSTREAM}~cut@3"), sim_url);
        cut.fallback_models = vec!["bedrock-twin".into()];
        let mut slow = openai_model(
            "ollama-throttled",
            &format!("{SHARED_UPSTREAM}~throttle"),
            sim_url,
        );
        slow.fallback_models = vec!["bedrock-twin".into()];
        config.models.extend([down, cut, slow]);
    })
    .await;
    let twin = harness
        .chat(Some("bedrock-twin"), "Explain what a relay does.")
        .await;

    let answer = harness
        .chat(Some("ollama-down"), "Explain what a relay does.")
        .await;
    assert_eq!(answer.route.source, ResponseSource::FallbackModel);
    assert_eq!(answer.route.provider, "bedrock");
    assert_eq!(answer.text, twin.text);
    let throttled = harness
        .chat(Some("ollama-throttled"), "Explain what a relay does.")
        .await;
    assert_eq!(throttled.route.provider, "bedrock");
    assert_eq!(
        throttled.route.attempts, 2,
        "no retry while a fallback can answer"
    );

    // Broken after three tokens on the OpenAI upstream, continued on Bedrock from the prefill:
    // the client reads one answer.
    let events = sse_events(
        harness
            .post(
                "/v1/chat/stream",
                chat_body(Some("ollama-cut"), "Explain what a relay does."),
            )
            .await,
    )
    .await;
    let failovers: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                StreamEvent::Failover {
                    discard_partial: false,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(failovers.len(), 1, "{events:?}");
    assert_eq!(text_of(&events), twin.text);

    // The same through the OpenAI surface.
    let lines = data_lines(
        harness
            .post(
                "/v1/chat/completions",
                completion_request("ollama-cut", true),
            )
            .await,
    )
    .await;
    assert_eq!(lines.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn usage_an_upstream_did_not_report_is_absent_or_an_estimate_marked_as_one() {
    let harness = start(|config, sim_url| {
        config.models.push(openai_model(
            "quiet",
            &format!("{SHARED_UPSTREAM}~no-usage"),
            sim_url,
        ));
        config.models.push(model(
            "quiet-bedrock",
            format!("{SHARED_UPSTREAM}~no-usage"),
        ));
    })
    .await;
    let prompt = "Explain what a relay does.";
    for model in ["quiet", "quiet-bedrock"] {
        // The native surfaces: no usage rather than a made-up 0/0.
        if model == "quiet" {
            let response = harness
                .post("/v1/chat", chat_body(Some(model), prompt))
                .await;
            let answer: Value = response.json().await.unwrap();
            assert!(answer["text"].as_str().is_some_and(|t| !t.is_empty()));
            assert!(answer.get("usage").is_none(), "{answer}");
        }
        let events = sse_events(
            harness
                .post("/v1/chat/stream", chat_body(Some(model), prompt))
                .await,
        )
        .await;
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, StreamEvent::Usage { .. })),
            "{model}: {events:?}"
        );
        match events.last() {
            Some(StreamEvent::Done { usage, .. }) => assert_eq!(*usage, None, "{model}"),
            other => panic!("{model}: {other:?}"),
        }
    }

    // The OpenAI surface, whose clients expect usage: the relay's estimate, marked as one.
    let response = harness
        .post("/v1/chat/completions", completion_request("quiet", false))
        .await;
    let completion: Value = response.json().await.unwrap();
    let answer = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    let usage = &completion["usage"];
    assert_eq!(usage["estimated"], true, "{usage}");
    // "Be brief." + the question, and the answer, at four characters a token.
    let prompt_chars = "Be brief.".len() + prompt.len();
    assert_eq!(usage["prompt_tokens"], prompt_chars.div_ceil(4));
    assert_eq!(
        usage["completion_tokens"],
        answer.chars().count().div_ceil(4)
    );
    let lines = data_lines(
        harness
            .post("/v1/chat/completions", completion_request("quiet", true))
            .await,
    )
    .await;
    let usage_chunk: Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    assert_eq!(usage_chunk["usage"], *usage, "{usage_chunk}");

    // A reported usage is passed on as reported, unmarked.
    let response = harness
        .post("/v1/chat/completions", completion_request("ollama", false))
        .await;
    let completion: Value = response.json().await.unwrap();
    assert!(
        completion["usage"].get("estimated").is_none(),
        "{completion}"
    );
}
