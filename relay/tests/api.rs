//! The relay over real sockets, in front of a real fm-sim reached through the real Bedrock SDK:
//! sync, SSE and WebSocket answers, validation errors, upstream errors before and inside the
//! stream, client disconnects cancelling upstream, and stalls caught by the idle timeout.

mod common;

use common::*;
use fm_protocol::{ChatResponse, ErrorCode, ModelInfo, ModelList, StopReason, StreamEvent};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn sync_and_streamed_answers_agree() {
    let harness = start().await;
    let response = harness
        .post("/v1/chat", chat_body(None, "Tell me a story"))
        .await;
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let answer: ChatResponse = response.json().await.unwrap();
    assert_eq!(answer.request_id, request_id);
    assert_eq!(answer.model, "plain");
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    assert!(answer.text.split(' ').count() >= 40, "{}", answer.text);
    assert_eq!(answer.route.provider, "bedrock");
    assert_eq!(answer.route.region, "us-east-1");
    assert_eq!(answer.route.attempts, 1);
    assert!(
        answer.route.reason.contains("default"),
        "{}",
        answer.route.reason
    );
    let usage = answer.usage.expect("Bedrock reports usage");
    assert!(!usage.estimated);
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);

    let events = sse_events(
        harness
            .post(
                "/v1/chat/stream",
                chat_body(Some("plain"), "Tell me a story"),
            )
            .await,
    )
    .await;
    let StreamEvent::Start { model, .. } = &events[0] else {
        panic!("first event {:?}", events[0])
    };
    assert_eq!(model, "plain");
    assert_eq!(text_of(&events), answer.text);
    let deltas = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::TextDelta { .. }))
        .count();
    assert_eq!(deltas as u32, usage.output_tokens);
    match events.last().unwrap() {
        StreamEvent::Done {
            stop_reason,
            usage,
            timings,
            route,
            degraded,
        } => {
            assert!(!degraded);
            assert_eq!(*stop_reason, StopReason::EndTurn);
            assert_eq!(*usage, answer.usage);
            let ttft = timings.ttft_ms.unwrap();
            assert!(ttft > 0.0 && ttft <= timings.total_ms, "{timings:?}");
            assert!(
                route.reason.contains("named model `plain`"),
                "{}",
                route.reason
            );
        }
        other => panic!("last event {other:?}"),
    }
    assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
}

#[tokio::test]
async fn websocket_answers_several_requests_in_order() {
    let harness = start().await;
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Two requests at once: the second waits for the first.
    socket
        .send(WsMessage::text(chat_body(None, "first question")))
        .await
        .unwrap();
    socket
        .send(WsMessage::text(chat_body(Some("plain"), "second question")))
        .await
        .unwrap();
    socket.send(WsMessage::text("{not json")).await.unwrap();
    socket
        .send(WsMessage::text(chat_body(Some("gpt-9"), "third")))
        .await
        .unwrap();

    // Every frame is answered in its turn: the n-th terminal event answers the n-th frame.
    let mut answers: Vec<Vec<StreamEvent>> = vec![Vec::new()];
    while answers.len() <= 4 {
        let frame = socket.next().await.unwrap().unwrap();
        let event: StreamEvent = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        let terminal = event.is_terminal();
        answers.last_mut().unwrap().push(event);
        if terminal {
            answers.push(Vec::new());
        }
    }
    let direct = |prompt: &'static str| {
        let harness = &harness;
        async move {
            let response = harness.post("/v1/chat", chat_body(None, prompt)).await;
            response.json::<ChatResponse>().await.unwrap().text
        }
    };
    for (answer, prompt) in answers[..2]
        .iter()
        .zip(["first question", "second question"])
    {
        assert!(matches!(answer[0], StreamEvent::Start { .. }), "{answer:?}");
        assert!(
            matches!(answer.last(), Some(StreamEvent::Done { .. })),
            "{answer:?}"
        );
        assert_eq!(text_of(answer), direct(prompt).await);
    }
    assert_single_error(&answers[2], ErrorCode::MalformedJson);
    assert_single_error(&answers[3], ErrorCode::UnknownModel);

    // Binary frames are refused with an explanation, and the connection stays usable.
    socket.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
    let frame = socket.next().await.unwrap().unwrap();
    let event: StreamEvent = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert!(matches!(
        event,
        StreamEvent::Error {
            code: ErrorCode::MalformedJson,
            ..
        }
    ));
    socket
        .send(WsMessage::text(chat_body(None, "still there?")))
        .await
        .unwrap();
    loop {
        let frame = socket.next().await.unwrap().unwrap();
        let event: StreamEvent = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        if event.is_terminal() {
            assert!(matches!(event, StreamEvent::Done { .. }), "{event:?}");
            break;
        }
    }
}

/// An answer that is one error event with `code`.
fn assert_single_error(answer: &[StreamEvent], code: ErrorCode) {
    match answer {
        [StreamEvent::Error { code: got, .. }] => assert_eq!(*got, code),
        other => panic!("expected one {code:?} error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_requests_get_4xx_answers_that_name_the_problem() {
    let harness = start().await;
    let fifty_one: Vec<serde_json::Value> = (0..51)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": "hi"})
        })
        .collect();
    let huge = "x".repeat(fm_protocol::limits::MAX_BODY_BYTES + 1);
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("{\"messages\": [".into(), 400, "malformed_json", None),
        (String::new(), 400, "malformed_json", None),
        ("[1, 2]".into(), 400, "malformed_json", None),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":"lots"}"#.into(),
            400,
            "malformed_json",
            Some("max_tokens"),
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"temprature":0.5}"#.into(),
            400,
            "malformed_json",
            None,
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-9"}"#.into(),
            400,
            "unknown_model",
            Some("model"),
        ),
        (
            serde_json::json!({"messages": fifty_one}).to_string(),
            400,
            "invalid_request",
            Some("messages"),
        ),
        (
            r#"{"messages":[]}"#.into(),
            400,
            "invalid_request",
            Some("messages"),
        ),
        (
            r#"{"messages":[{"role":"assistant","content":"hi"}]}"#.into(),
            400,
            "invalid_request",
            Some("messages[0].role"),
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5000}"#.into(),
            400,
            "invalid_request",
            Some("max_tokens"),
        ),
        (
            format!(r#"{{"messages":[{{"role":"user","content":"{huge}"}}]}}"#),
            413,
            "payload_too_large",
            None,
        ),
    ];
    for path in ["/v1/chat", "/v1/chat/stream"] {
        for (body, status, code, field) in &cases {
            let (got_status, got_code, got_field) =
                error_of(harness.post(path, body.clone()).await).await;
            let shown: String = body.chars().take(60).collect();
            assert_eq!(got_status, *status, "{path} {shown}");
            assert_eq!(got_code, *code, "{path} {shown}");
            if field.is_some() {
                assert_eq!(got_field.as_deref(), *field, "{path} {shown}");
            }
        }
    }
    // Unknown routes and wrong methods answer in the same JSON shape.
    let response = harness
        .http
        .get(harness.url("/v1/chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.1, "method_not_allowed");
    let response = harness
        .http
        .get(harness.url("/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await, (404, "not_found".into(), None));
    // A plain GET of the WebSocket route (no upgrade asked for) too.
    let response = harness
        .http
        .get(harness.url("/v1/ws"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (400, "invalid_request".into(), None)
    );
    // Nothing reached the upstream.
    assert_eq!(harness.sim.stats().requests, 0);
}

#[tokio::test]
async fn upstream_errors_before_the_stream_are_typed_http_errors() {
    let harness = start().await;
    // (model, status, code, retryable, upstream calls per request)
    for (model, status, code, retryable, calls) in [
        ("throttle", 429, "upstream_throttled", true, 3),
        ("unavailable", 503, "upstream_unavailable", true, 3),
        ("not-found", 502, "upstream_misconfigured", false, 1),
        ("validation", 400, "upstream_rejected", false, 1),
    ] {
        for path in ["/v1/chat", "/v1/chat/stream"] {
            let before = harness.sim.stats().requests;
            let response = harness.post(path, chat_body(Some(model), "hello")).await;
            assert_eq!(response.status().as_u16(), status, "{model} {path}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{model} {path}");
            assert_eq!(body["error"]["retryable"], retryable, "{model} {path}");
            let message = body["error"]["message"].as_str().unwrap();
            assert_eq!(
                message.contains("after 3 attempts"),
                calls == 3,
                "{message}"
            );
            // Retries happen only where they can help, and the SDK adds none of its own.
            assert_eq!(
                harness.sim.stats().requests - before,
                calls,
                "{model} {path}"
            );
        }
    }
    // And the relay is healthy afterwards.
    let response = harness.post("/v1/chat", chat_body(None, "hello")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn throttling_and_unavailability_are_retried_until_the_answer_comes() {
    let harness = start().await;
    let answer = harness.chat(Some("flaky"), "hello").await;
    assert_eq!(answer.route.attempts, 3);
    assert_eq!(harness.sim.stats().requests, 3);

    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(Some("flaky-stream"), "hello"))
            .await,
    )
    .await;
    match events.last().unwrap() {
        StreamEvent::Done { route, .. } => assert_eq!(route.attempts, 2),
        other => panic!("last event {other:?}"),
    }
    assert_eq!(text_of(&events), answer.text);
    assert_eq!(harness.sim.stats().requests, 5);
}

#[tokio::test]
async fn failures_inside_the_stream_end_with_a_typed_error_event_never_done() {
    let harness = start().await;
    let full = harness
        .post("/v1/chat", chat_body(None, "hello"))
        .await
        .json::<ChatResponse>()
        .await
        .unwrap()
        .text;
    for (model, code, tokens) in [
        ("stream-throttle", ErrorCode::UpstreamThrottled, 2),
        ("cut", ErrorCode::UpstreamError, 3),
        // A corrupt frame fails the attempt; nothing of it reaches the client.
        ("garbage", ErrorCode::UpstreamError, 2),
    ] {
        let events = sse_events(
            harness
                .post("/v1/chat/stream", chat_body(Some(model), "hello"))
                .await,
        )
        .await;
        assert!(matches!(events[0], StreamEvent::Start { .. }), "{model}");
        let text = text_of(&events);
        assert_eq!(text.split_inclusive(' ').count(), tokens, "{model}: {text}");
        assert!(full.starts_with(&text), "{model}");
        match events.last().unwrap() {
            StreamEvent::Error {
                code: got,
                retryable,
                ..
            } => {
                assert_eq!(*got, code, "{model}");
                assert!(*retryable, "{model}");
            }
            other => panic!("{model}: last event {other:?}"),
        }
        assert!(
            !events.iter().any(|e| matches!(e, StreamEvent::Done { .. })),
            "{model}"
        );
    }
    // The corrupt stream's upstream call was dropped, and the relay still answers.
    harness.wait_for_cancelled_streams(1).await;
    let response = harness.post("/v1/chat", chat_body(None, "hello")).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_stalled_stream_is_caught_by_the_idle_timeout_and_cancelled_upstream() {
    let harness = start_with(sim_config(), |config| config.timeouts.idle_ms = 300).await;
    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(Some("stall"), "hello"))
            .await,
    )
    .await;
    assert_eq!(text_of(&events).split_inclusive(' ').count(), 2);
    match events.last().unwrap() {
        StreamEvent::Error { code, message, .. } => {
            assert_eq!(*code, ErrorCode::UpstreamStalled);
            assert!(message.contains("stalled"), "{message}");
        }
        other => panic!("last event {other:?}"),
    }
    harness.wait_for_cancelled_streams(1).await;
}

#[tokio::test]
async fn a_missing_first_token_and_the_total_deadline_are_enforced() {
    let harness = start_with(sim_config(), |config| {
        config.timeouts.first_token_ms = 300;
        config.timeouts.idle_ms = 60_000;
    })
    .await;
    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(Some("slow"), "hi"))
            .await,
    )
    .await;
    assert!(
        matches!(
            events.last(),
            Some(StreamEvent::Error {
                code: ErrorCode::UpstreamTimeout,
                ..
            })
        ),
        "{events:?}"
    );
    assert_eq!(text_of(&events), "");

    let harness = start_with(sim_config(), |config| config.timeouts.total_ms = 300).await;
    let (status, code, _) = error_of(
        harness
            .post("/v1/chat", chat_body(Some("slow"), "hi"))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (504, "deadline_exceeded"));
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_call_and_counts_as_cancelled() {
    let harness = start().await;
    // SSE: read the first token, then hang up.
    let mut sse = SseReader::new(
        harness
            .post("/v1/chat/stream", chat_body(Some("paced"), "long answer"))
            .await,
    );
    while !matches!(sse.next_event().await, Some(StreamEvent::TextDelta { .. })) {}
    drop(sse);
    harness.wait_for_cancelled_streams(1).await;

    // WebSocket: the same when the socket closes mid-answer.
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(WsMessage::text(chat_body(
            Some("paced"),
            "another long answer",
        )))
        .await
        .unwrap();
    loop {
        let frame = socket.next().await.unwrap().unwrap();
        if frame.to_text().unwrap().contains("text_delta") {
            break;
        }
    }
    socket.close(None).await.unwrap();
    drop(socket);
    harness.wait_for_cancelled_streams(2).await;
    let stats = harness.sim.stats();
    assert_eq!((stats.streams_started, stats.streams_completed), (2, 0));

    // A sync request whose client gives up while the model thinks.
    let impatient = harness
        .http
        .post(harness.url("/v1/chat"))
        .header("content-type", "application/json")
        .body(chat_body(Some("slow"), "take your time"))
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());

    // All three are counted, as cancelled: neither answered nor the upstream's failure.
    let cancelled = |stats: &fm_protocol::StatsResponse, model: &str| {
        let model = stats.models.iter().find(|m| m.model == model).unwrap();
        (model.requests, model.cancelled, model.errors)
    };
    let mut stats: fm_protocol::StatsResponse = harness.get_json("/v1/stats").await;
    for _ in 0..100 {
        if cancelled(&stats, "slow").1 == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stats = harness.get_json("/v1/stats").await;
    }
    assert_eq!(cancelled(&stats, "paced"), (2, 2, 0));
    assert_eq!(cancelled(&stats, "slow"), (1, 1, 0));
    let metrics = harness.metrics().await;
    for line in [
        r#"fm_relay_requests_total{model="paced",outcome="cancelled"} 2"#,
        r#"fm_relay_requests_total{model="slow",outcome="cancelled"} 1"#,
        r#"fm_relay_requests_total{model="slow",outcome="error"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn health_and_models_describe_the_relay() {
    let harness = start().await;
    let health: serde_json::Value = harness.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");
    let models: ModelList = harness.get_json("/v1/models").await;
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(&ids[..3], ["plain", "slow", "paced"]);
    assert!(models.data[0].default && !models.data[1].default);
    assert_eq!(models.data[0].context_window, 100_000);
    // OpenAI's shapes: a list of model objects, and one model by id.
    assert_eq!(models.object, "list");
    assert_eq!(
        (
            models.data[0].object.as_str(),
            models.data[0].owned_by.as_str()
        ),
        ("model", "bedrock")
    );
    assert!(models.data[0].created > 1_700_000_000);
    let one: ModelInfo = harness.get_json("/v1/models/slow").await;
    assert_eq!(one, models.data[1]);
    let (status, code, _) = error_of(harness.get("/v1/models/nope").await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}

/// The relay's stream write counters: (events sent, writes that carried them).
async fn stream_writes(harness: &Harness) -> (u64, u64) {
    let metrics = harness.metrics().await;
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in\n{metrics}"))
    };
    (
        counter("fm_relay_stream_events_total"),
        counter("fm_relay_stream_writes_total"),
    )
}

#[tokio::test]
async fn bursts_of_tokens_share_writes_and_paced_tokens_go_out_one_by_one() {
    // A generous wait, so that a busy test machine cannot cut the bursts short.
    let harness = start_with(sim_config(), |config| {
        config.server.stream_batch_wait_us = 5_000;
    })
    .await;
    let ask = |model: &str, max_tokens: u32| {
        serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "Tell me how a relay streams tokens."}],
            "max_tokens": max_tokens,
        })
        .to_string()
    };

    // The plain model answers at once: its tokens reach the relay as a burst.
    let burst = sse_events(harness.post("/v1/chat/stream", ask("plain", 200)).await).await;
    assert!(matches!(burst.last(), Some(StreamEvent::Done { .. })));
    let texts = burst
        .iter()
        .filter(|event| matches!(event, StreamEvent::TextDelta { .. }))
        .count();
    assert!(texts >= 20, "{burst:?}");
    let (events, writes) = stream_writes(&harness).await;
    assert_eq!(events, burst.len() as u64);
    assert!(
        writes * 2 <= events,
        "{events} events of a burst took {writes} writes"
    );

    // Over a WebSocket too.
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(WsMessage::text(ask("plain", 200)))
        .await
        .unwrap();
    let mut frames = 0;
    loop {
        let frame = socket.next().await.unwrap().unwrap();
        frames += 1;
        let event: StreamEvent = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        if event.is_terminal() {
            assert!(matches!(event, StreamEvent::Done { .. }), "{event:?}");
            break;
        }
    }
    let (all_events, all_writes) = stream_writes(&harness).await;
    let (ws_events, ws_writes) = (all_events - events, all_writes - writes);
    assert_eq!(ws_events, frames);
    assert!(
        ws_writes * 2 <= ws_events,
        "{ws_events} WebSocket events of a burst took {ws_writes} flushes"
    );

    // The paced model sends 20 tokens a second: none waits for the next. Only the start event
    // may share the first text's write, and the closing events the last text's.
    let paced = sse_events(harness.post("/v1/chat/stream", ask("paced", 8)).await).await;
    assert!(matches!(paced.last(), Some(StreamEvent::Done { .. })));
    let (after_events, after_writes) = stream_writes(&harness).await;
    let (paced_events, paced_writes) = (after_events - all_events, after_writes - all_writes);
    assert_eq!(paced_events, paced.len() as u64);
    assert!(
        paced_writes + 3 >= paced_events,
        "{paced_events} paced events went out in only {paced_writes} writes"
    );
}

#[tokio::test]
async fn a_quiet_stream_carries_keep_alive_comments() {
    let harness = start_with(sim_config(), |config| {
        config.server.sse_keep_alive_secs = 1;
        config.timeouts.first_token_ms = 60_000;
    })
    .await;
    let response = harness
        .post("/v1/chat/stream", chat_body(Some("slow"), "hi"))
        .await;
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut body = response.bytes_stream();
    let mut raw = Vec::new();
    while !String::from_utf8_lossy(&raw).contains(": keep-alive\n\n") {
        raw.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("event: start\n"), "{text}");
    assert!(!text.contains("text_delta"), "{text}");
}

#[tokio::test]
async fn stats_report_server_side_latency_per_model() {
    let harness = start().await;
    let answer = harness.chat(None, "one").await;
    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(None, "two"))
            .await,
    )
    .await;
    let Some(StreamEvent::Done { timings, .. }) = events.last() else {
        panic!("{events:?}")
    };
    let response = harness
        .post("/v1/chat", chat_body(Some("throttle"), "three"))
        .await;
    assert_eq!(response.status(), 429);

    let stats: fm_protocol::StatsResponse = harness.get_json("/v1/stats?window_secs=60").await;
    assert_eq!(stats.window_secs, 60);
    let model = |id: &str| stats.models.iter().find(|m| m.model == id).unwrap().clone();
    let plain = model("plain");
    assert_eq!((plain.requests, plain.errors), (2, 0));
    // One streamed answer: its TTFT is every percentile.
    let ttft = plain.ttft_ms.unwrap();
    assert_eq!(ttft.p50, timings.ttft_ms.unwrap());
    let total = plain.total_ms.unwrap();
    assert!(total.p50 <= total.p99);
    assert!(total.p99 >= answer.timings.total_ms.min(timings.total_ms));
    let throttle = model("throttle");
    assert_eq!((throttle.requests, throttle.errors), (1, 1));
    assert_eq!(throttle.total_ms, None);
    assert_eq!(model("slow").requests, 0);

    let response = harness
        .http
        .get(harness.url("/v1/stats?window_secs=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (400, "invalid_request".into(), Some("window_secs".into()))
    );
}

#[tokio::test]
async fn a_failing_target_trips_its_breaker_which_probes_and_closes() {
    let harness = start_with(sim_config(), |config| {
        config.breaker.consecutive_failures = 3;
        config.breaker.min_open_ms = 200;
        config.breaker.half_open_probes = 1;
    })
    .await;
    let circuit = |stats: &fm_protocol::StatsResponse| {
        let model = stats
            .models
            .iter()
            .find(|m| m.model == "recovering")
            .unwrap();
        model.targets[0].circuit.clone()
    };
    // Three failed attempts (one request and its retries) open the breaker.
    let response = harness
        .post("/v1/chat", chat_body(Some("recovering"), "hi"))
        .await;
    assert_eq!(response.status(), 503);
    let status = circuit(&harness.get_json("/v1/stats").await);
    assert_eq!(status.state, fm_protocol::CircuitState::Open);
    assert!(status.reason.unwrap().contains("3 failures in a row"));
    assert_eq!((status.open_ms, status.openings), (Some(200), 1));
    assert!(status.probe_in_ms.is_some_and(|wait| wait <= 200));
    assert!(status.open_time_reason.unwrap().contains("first opening"));
    assert_eq!(harness.sim.stats().requests, 3);

    // While open, calls fail fast: nothing reaches the upstream, and the answer says when to
    // come back.
    for path in ["/v1/chat", "/v1/chat/stream"] {
        let response = harness
            .post(path, chat_body(Some("recovering"), "hi"))
            .await;
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_unavailable", "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("circuit open"), "{message}");
    }
    assert_eq!(harness.sim.stats().requests, 3);

    // After the cool-down one probe goes through; the target has recovered, so it closes.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let response = harness
        .post("/v1/chat/stream", chat_body(Some("recovering"), "hi"))
        .await;
    let events = sse_events(response).await;
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { .. })),
        "{events:?}"
    );
    let status = circuit(&harness.get_json("/v1/stats").await);
    assert_eq!(status.state, fm_protocol::CircuitState::Closed);
    let response = harness
        .post("/v1/chat", chat_body(Some("recovering"), "hi"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(harness.sim.stats().requests, 5);
}

#[tokio::test]
async fn a_throttling_target_is_paced_by_the_adaptive_rate_limit() {
    // `flaky` throttles its first two calls, in us-east-1 and then in its failover region.
    let harness = start_with(sim_config(), |config| {
        config.rate_limit.adaptive = true;
        let flaky = config.models.iter_mut().find(|m| m.id == "flaky").unwrap();
        flaky.failover = vec![fm_relay::config::FailoverTarget {
            region: "us-west-2".into(),
            upstream_id: None,
            endpoint: None,
        }];
    })
    .await;
    let stats: fm_protocol::StatsResponse = harness.get_json("/v1/stats").await;
    let limit = |stats: &fm_protocol::StatsResponse, id: &str| {
        stats.models.iter().find(|m| m.model == id).unwrap().targets[0].client_rate_limit
    };
    assert_eq!(limit(&stats, "flaky"), None);
    // Throttled, then answered: the answer still comes, and the relay now paces itself. (Until
    // both throttles were spent: the second may fall on the next request.)
    while harness.sim.stats().errors < 2 {
        harness.chat(Some("flaky"), "hello").await;
    }
    let stats: fm_protocol::StatsResponse = harness.get_json("/v1/stats").await;
    let paced = limit(&stats, "flaky").expect("rate limiting is on after a throttle");
    assert!(paced > 0.0, "{paced}");
    assert_eq!(limit(&stats, "plain"), None, "other models are untouched");
    // The upstream throttles no more, but the primary's limiter lets through only what its
    // bucket holds (about one call): of eight requests at once, the rest go to the other region
    // at once rather than wait. Without pacing, all eight would be answered in us-east-1.
    let errors_before = harness.sim.stats().errors;
    let requests = (0..8).map(|i| harness.chat(Some("flaky"), if i % 2 == 0 { "a" } else { "b" }));
    let answers = futures_util::future::join_all(requests).await;
    let primary = answers
        .iter()
        .filter(|answer| answer.route.region == "us-east-1")
        .count();
    assert!(primary < 8, "every call went to the paced target");
    assert!(
        answers
            .iter()
            .any(|answer| answer.route.region == "us-west-2"),
        "the overflow went to the other region"
    );
    assert_eq!(
        harness.sim.stats().errors,
        errors_before,
        "not for throttles"
    );
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let harness = start().await;
    harness.chat(None, "hello").await;
    let response = harness
        .post("/v1/chat", chat_body(Some("throttle"), "hi"))
        .await;
    assert_eq!(response.status(), 429);
    let response = harness
        .http
        .get(harness.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let text = response.text().await.unwrap();
    for line in [
        "# TYPE fm_relay_requests counter",
        r#"fm_relay_requests_total{model="plain",outcome="ok"} 1"#,
        r#"fm_relay_requests_total{model="throttle",outcome="error"} 1"#,
        r#"fm_relay_circuit_state{model="plain",target="anthropic.test-v1:0 in us-east-1",region="us-east-1",state="closed"} 1"#,
        r#"fm_relay_circuit_state{model="plain",target="anthropic.test-v1:0 in us-east-1",region="us-east-1",state="open"} 0"#,
        r#"fm_relay_circuit_open_seconds{model="plain",target="anthropic.test-v1:0 in us-east-1",region="us-east-1"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"fm_relay_request_duration_seconds_bucket{le="+Inf",model="plain",outcome="ok"} "#
        )),
        "{text}"
    );
    // Every sample line is `name{labels} value` or `name value`, with a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn a_stream_that_hangs_after_its_stop_event_is_finished_promptly() {
    // A long idle timeout: only the grace after the stop event can end this stream soon.
    let harness = start_with(sim_config(), |config| {
        config.timeouts.idle_ms = 120_000;
        config.models.push(common::model(
            "hanging",
            format!("{UPSTREAM}~hang-after-stop"),
        ));
    })
    .await;
    let expected = harness.chat(Some("plain"), "hello").await.text;
    let events = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        sse_events(
            harness
                .post("/v1/chat/stream", chat_body(Some("hanging"), "hello"))
                .await,
        )
        .await
    })
    .await
    .expect("the stream was finished after its stop event, not held until the idle timeout");
    assert_eq!(text_of(&events), expected);
    assert!(
        matches!(
            events.last(),
            Some(StreamEvent::Done {
                stop_reason: StopReason::EndTurn,
                ..
            })
        ),
        "{events:?}"
    );
}
