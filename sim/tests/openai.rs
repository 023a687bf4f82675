//! fm-sim's OpenAI chat-completions surface over HTTP: the same deterministic answers as the
//! Bedrock operations, OpenAI's JSON and SSE chunk shapes, usage on request, and faults as
//! OpenAI-compatible servers show them.

use fm_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

const MODEL: &str = "llama-test";

async fn post(sim: &SimHandle, body: Value) -> reqwest::Response {
    // rustls needs its crypto provider chosen before a client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", sim.endpoint_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn request(model: &str, stream: bool) -> Value {
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
}

/// The `data:` payloads of an SSE body.
async fn data_lines(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn answers_in_json_and_in_chunks_with_usage_and_done() {
    let sim = fm_sim::spawn(SimConfig::instant()).await.unwrap();
    let answer: Value = post(&sim, request(MODEL, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "chat.completion");
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty());
    let usage = &answer["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    let lines = data_lines(post(&sim, request(MODEL, true)).await).await;
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
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text, "the same answer as the one-shot call");
    let finish = &chunks[chunks.len() - 2];
    assert!(
        finish["choices"][0]["finish_reason"].is_string(),
        "{finish}"
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], answer["usage"]);
}

#[tokio::test]
async fn faults_look_like_an_openai_compatible_server_failing() {
    let sim = fm_sim::spawn(SimConfig::instant()).await.unwrap();
    let throttled = post(&sim, request(&format!("{MODEL}~throttle"), false)).await;
    assert_eq!(throttled.status(), 429);
    let body: Value = throttled.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let too_long = post(&sim, request(&format!("{MODEL}~context-too-long"), true)).await;
    assert_eq!(too_long.status(), 400);
    let body: Value = too_long.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");

    let broken =
        data_lines(post(&sim, request(&format!("{MODEL}~stream-error@3"), true)).await).await;
    assert_eq!(broken.len(), 1 + 3 + 1, "{broken:?}");
    let last: Value = serde_json::from_str(broken.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");

    let cut = data_lines(post(&sim, request(&format!("{MODEL}~cut@2"), true)).await).await;
    assert_eq!(cut.len(), 1 + 2, "{cut:?}");
    assert!(!cut.iter().any(|line| line == "[DONE]"));
    assert_eq!(sim.stats().requests, 4);
}

#[tokio::test]
async fn no_usage_leaves_the_token_counts_out_as_some_servers_do() {
    let sim = fm_sim::spawn(SimConfig::instant()).await.unwrap();
    let model = format!("{MODEL}~no-usage");
    let answer: Value = post(&sim, request(&model, false))
        .await
        .json()
        .await
        .unwrap();
    assert!(answer["choices"][0]["message"]["content"].is_string());
    assert!(answer.get("usage").is_none(), "{answer}");

    let lines = data_lines(post(&sim, request(&model, true)).await).await;
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    let finish: Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    assert!(
        finish["choices"][0]["finish_reason"].is_string(),
        "{finish}"
    );
}
