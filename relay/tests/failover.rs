//! The failover plan over real sockets: the relay's Bedrock clients in two regions against one
//! fm-sim whose fault schedule breaks one region (the sim reads the region from the request's
//! signature, as AWS does). Each test asserts what the client got, which targets the upstream saw,
//! and that the answer says how it was reached.

mod common;

use common::{Harness, chat_body, error_of, model, sim_config, sse_events, start_with};
use fm_protocol::{ChatResponse, ResponseSource, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::{FailoverTarget, ModelConfig};
use fm_sim::FaultRule;

/// The upstream id of the models these tests break region by region.
const REGIONAL: &str = "anthropic.regional-v1:0";
const PRIMARY: &str = "us-east-1";
const SECONDARY: &str = "us-west-2";
const PROMPT: &str = "Tell me how a relay keeps answering";

/// A model served in us-east-1, then us-west-2.
fn regional(id: &str, accepts_prefill: bool) -> ModelConfig {
    ModelConfig {
        accepts_prefill,
        failover: vec![FailoverTarget {
            region: SECONDARY.into(),
            upstream_id: None,
            endpoint: None,
        }],
        ..model(id, REGIONAL.into())
    }
}

/// A relay with `regional` (no prefill), `prefilling` (prefill), both in two regions, plus what
/// `adjust` adds.
async fn start(adjust: impl FnOnce(&mut RelayConfig)) -> Harness {
    start_with(sim_config(), |config| {
        config.models.push(regional("regional", false));
        config.models.push(regional("prefilling", true));
        config.timeouts.idle_ms = 300;
        config.timeouts.first_token_ms = 300;
        config.timeouts.one_shot_ms = 300;
        adjust(config);
        config.validate().unwrap();
    })
    .await
}

/// Breaks the primary region with `fault` (fm-sim's grammar).
fn break_primary(harness: &Harness, fault: &str) {
    harness
        .sim
        .set_faults(vec![
            FaultRule::always(fault.parse().unwrap())
                .for_model(REGIONAL)
                .in_region(PRIMARY),
        ])
        .unwrap();
}

fn body(model: &str) -> String {
    chat_body(Some(model), PROMPT)
}

/// The answer a healthy target gives, for comparison.
async fn healthy_answer(harness: &Harness, model: &str) -> String {
    harness.sim.set_faults(Vec::new()).unwrap();
    let answer: ChatResponse = harness.chat(Some(model), PROMPT).await;
    assert_eq!(answer.route.source, ResponseSource::Primary);
    answer.text
}

/// The text a client shows at the end: deltas, minus what a `failover` told it to discard.
fn shown_text(events: &[StreamEvent]) -> String {
    let mut text = String::new();
    for event in events {
        match event {
            StreamEvent::TextDelta { text: delta } => text.push_str(delta),
            StreamEvent::Failover {
                discard_partial: true,
                ..
            } => text.clear(),
            _ => {}
        }
    }
    text
}

fn done_route(events: &[StreamEvent]) -> fm_protocol::RouteInfo {
    match events.last() {
        Some(StreamEvent::Done {
            route, degraded, ..
        }) => {
            assert!(!degraded);
            route.clone()
        }
        other => panic!("expected done, got {other:?} in {events:?}"),
    }
}

fn failovers(events: &[StreamEvent]) -> Vec<(String, bool)> {
    events
        .iter()
        .filter_map(|event| match event {
            StreamEvent::Failover {
                region,
                discard_partial,
                ..
            } => Some((region.clone(), *discard_partial)),
            _ => None,
        })
        .collect()
}

/// The relay still serves: health is green and a healthy model answers.
async fn assert_healthy(harness: &Harness) {
    assert_eq!(harness.get("/healthz").await.status(), 200);
    harness.sim.set_faults(Vec::new()).unwrap();
    let answer = harness.chat(Some("plain"), "still there?").await;
    assert!(!answer.text.is_empty());
}

fn requests_in(harness: &Harness, region: &str) -> u64 {
    harness
        .sim
        .stats()
        .requests_by_region
        .get(region)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn an_unavailable_region_is_retried_then_the_next_region_answers() {
    let harness = start(|_| {}).await;
    break_primary(&harness, "unavailable");
    let answer = harness.chat(Some("regional"), PROMPT).await;
    assert_eq!(answer.route.source, ResponseSource::FallbackRegion);
    assert_eq!(answer.route.region, SECONDARY);
    // Three attempts in the primary region (the retry policy), then one in the secondary.
    assert_eq!(answer.route.attempts, 4);
    assert!(
        answer.route.reason.contains("earlier targets failed"),
        "{}",
        answer.route.reason
    );
    assert_eq!(requests_in(&harness, PRIMARY), 3);
    assert_eq!(requests_in(&harness, SECONDARY), 1);

    // The same before the first token of a stream: silent, no failover event.
    let events = sse_events(harness.post("/v1/chat/stream", body("regional")).await).await;
    assert!(failovers(&events).is_empty(), "{events:?}");
    assert_eq!(done_route(&events).source, ResponseSource::FallbackRegion);
    assert_eq!(shown_text(&events), answer.text);
    assert_eq!(healthy_answer(&harness, "regional").await, answer.text);

    let stats: fm_protocol::StatsResponse = harness.get_json("/v1/stats").await;
    let regional = stats.models.iter().find(|m| m.model == "regional").unwrap();
    assert_eq!(regional.errors, 0);
    assert_eq!(regional.failed_attempts, 2);
    let regions: Vec<_> = regional.targets.iter().map(|t| t.region.as_str()).collect();
    assert_eq!(regions, [PRIMARY, SECONDARY]);
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_throttled_region_is_not_retried_while_another_can_answer() {
    let harness = start(|_| {}).await;
    break_primary(&harness, "throttle");
    let answer = harness.chat(Some("regional"), PROMPT).await;
    assert_eq!(answer.route.region, SECONDARY);
    assert_eq!(answer.route.attempts, 2);
    assert_eq!(requests_in(&harness, PRIMARY), 1);
    // With no other target left, throttling is retried as configured.
    let harness = start(|config| {
        config
            .models
            .push(model("alone", format!("{REGIONAL}~throttle*2")));
    })
    .await;
    let answer = harness.chat(Some("alone"), PROMPT).await;
    assert_eq!(answer.route.attempts, 3);
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_first_token_deadline_moves_on_without_retrying_the_slow_region() {
    let harness = start(|_| {}).await;
    for fault in ["slow@60000", "no-response"] {
        break_primary(&harness, fault);
        let before = requests_in(&harness, PRIMARY);
        let answer = harness.chat(Some("regional"), PROMPT).await;
        assert_eq!(answer.route.region, SECONDARY, "{fault}");
        assert_eq!(answer.route.attempts, 2, "{fault}");
        assert_eq!(requests_in(&harness, PRIMARY), before + 1, "{fault}");

        let events = sse_events(harness.post("/v1/chat/stream", body("regional")).await).await;
        assert_eq!(done_route(&events).region, SECONDARY, "{fault}");
        assert!(failovers(&events).is_empty(), "{fault}: {events:?}");
    }
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_stream_cut_mid_answer_is_continued_from_a_prefill_where_the_model_accepts_one() {
    let harness = start(|_| {}).await;
    let whole = healthy_answer(&harness, "prefilling").await;
    for fault in [
        // The body ends cleanly without the closing events; the connection is torn mid-body.
        "cut@5",
        "reset@5",
        "stream-error@5",
        "stream-throttle@5",
        "garbage@5",
        "stall@5",
    ] {
        break_primary(&harness, fault);
        let events = sse_events(harness.post("/v1/chat/stream", body("prefilling")).await).await;
        assert_eq!(
            failovers(&events),
            [(SECONDARY.to_string(), false)],
            "{fault}: {events:?}"
        );
        // The client's text reads as one answer: the continuation picks up where the cut was.
        assert_eq!(shown_text(&events), whole, "{fault}");
        let route = done_route(&events);
        assert_eq!(route.source, ResponseSource::FallbackRegion, "{fault}");
        assert_eq!(route.attempts, 2, "{fault}");
        // The secondary region was sent the partial answer as the assistant's prefill.
        let last = harness.sim.stats().recent.last().cloned().unwrap();
        assert_eq!(last.region.as_deref(), Some(SECONDARY), "{fault}");
    }
    // On the sync route (one-shot calls) an in-stream exception is an error answer: the next
    // region answers in full.
    break_primary(&harness, "stream-error@5");
    let answer = harness.chat(Some("prefilling"), PROMPT).await;
    assert_eq!(answer.text, whole);
    assert_eq!(answer.route.source, ResponseSource::FallbackRegion);
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_model_without_prefill_restarts_and_tells_the_client_to_discard() {
    let harness = start(|_| {}).await;
    let whole = healthy_answer(&harness, "regional").await;
    break_primary(&harness, "stall@3");
    let events = sse_events(harness.post("/v1/chat/stream", body("regional")).await).await;
    assert_eq!(
        failovers(&events),
        [(SECONDARY.to_string(), true)],
        "{events:?}"
    );
    let before_failover: usize = events
        .iter()
        .take_while(|e| !matches!(e, StreamEvent::Failover { .. }))
        .filter(|e| matches!(e, StreamEvent::TextDelta { .. }))
        .count();
    assert_eq!(before_failover, 3);
    assert_eq!(shown_text(&events), whole);
    assert_eq!(done_route(&events).region, SECONDARY);

    // On the sync route the stalled call passes its one-shot deadline; the next region answers.
    let answer = harness.chat(Some("regional"), PROMPT).await;
    assert_eq!(answer.text, whole);
    assert_eq!(answer.route.region, SECONDARY);
    assert_eq!(answer.route.attempts, 2);
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_refused_prefill_becomes_a_clean_restart_on_the_same_target() {
    let harness = start(|_| {}).await;
    let whole = healthy_answer(&harness, "prefilling").await;
    harness
        .sim
        .set_faults(vec![
            FaultRule::always("cut@4".parse().unwrap())
                .for_model(REGIONAL)
                .in_region(PRIMARY),
            FaultRule::always("reject-prefill".parse().unwrap())
                .for_model(REGIONAL)
                .in_region(SECONDARY),
        ])
        .unwrap();
    let events = sse_events(harness.post("/v1/chat/stream", body("prefilling")).await).await;
    assert_eq!(
        failovers(&events),
        [(SECONDARY.to_string(), true)],
        "{events:?}"
    );
    assert_eq!(shown_text(&events), whole);
    // The secondary saw the refused prefill, then the restart.
    assert_eq!(requests_in(&harness, SECONDARY), 2);
    assert_eq!(done_route(&events).attempts, 3);
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn when_every_region_fails_a_fallback_model_answers() {
    let harness = start(|config| {
        let mut primary = regional("primary", false);
        primary.fallback_models = vec!["plain".into()];
        config.models.push(primary);
    })
    .await;
    harness
        .sim
        .set_faults(vec![
            FaultRule::always("internal".parse().unwrap()).for_model(REGIONAL),
        ])
        .unwrap();
    let answer = harness.chat(Some("primary"), PROMPT).await;
    assert_eq!(answer.model, "plain");
    assert_eq!(answer.route.model, "plain");
    assert_eq!(answer.route.source, ResponseSource::FallbackModel);
    assert_eq!(answer.route.attempts, 7);
    assert!(!answer.degraded);
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_context_too_long_skips_to_a_model_with_a_larger_window() {
    let harness = start(|config| {
        let mut small = model("small", format!("{REGIONAL}~context-too-long"));
        small.context_window = 8_000;
        small.fallback_models = vec!["small-too".into(), "large".into()];
        let mut small_too = model("small-too", "anthropic.small-too-v1:0".into());
        small_too.context_window = 8_000;
        let mut large = model("large", "anthropic.large-v1:0".into());
        large.context_window = 200_000;
        config.models.extend([small, small_too, large]);
        let mut alone = model("alone", format!("{REGIONAL}~context-too-long"));
        alone.fallback_models = vec!["small-too".into()];
        config.models.push(alone);
    })
    .await;
    let answer = harness.chat(Some("small"), PROMPT).await;
    assert_eq!(answer.model, "large");
    assert_eq!(answer.route.attempts, 2);
    let seen: Vec<String> = harness
        .sim
        .stats()
        .recent
        .iter()
        .map(|r| r.model_id.clone())
        .collect();
    assert!(!seen.iter().any(|m| m.contains("small-too")), "{seen:?}");

    // With no larger model left, the client learns why, as its own fault.
    let response = harness.post("/v1/chat", body("alone")).await;
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "context_too_long"));
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_rejected_request_is_not_sent_to_the_fallbacks() {
    let harness = start(|config| {
        let mut strict = model("strict", format!("{REGIONAL}~validation"));
        strict.fallback_models = vec!["plain".into()];
        config.models.push(strict);
    })
    .await;
    let response = harness.post("/v1/chat", body("strict")).await;
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "upstream_rejected"));
    assert_eq!(harness.sim.stats().requests, 1);
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn the_degraded_answer_stands_in_when_nothing_answers_and_is_marked() {
    let harness = start(|config| {
        config.degradation.enabled = true;
        config.degradation.message = "Try again soon.".into();
    })
    .await;
    harness
        .sim
        .set_faults(vec![
            FaultRule::always("unavailable".parse().unwrap()).for_model(REGIONAL),
        ])
        .unwrap();
    let response = harness.post("/v1/chat", body("regional")).await;
    assert_eq!(response.status(), 200);
    let answer: ChatResponse = response.json().await.unwrap();
    assert!(answer.degraded);
    assert_eq!(answer.text, "Try again soon.");
    assert_eq!(answer.route.source, ResponseSource::Degraded);
    assert_eq!(answer.route.attempts, 6);

    let events = sse_events(harness.post("/v1/chat/stream", body("regional")).await).await;
    assert!(matches!(events[0], StreamEvent::Start { .. }), "{events:?}");
    assert_eq!(shown_text(&events), "Try again soon.");
    assert!(
        matches!(
            events.last(),
            Some(StreamEvent::Done {
                degraded: true,
                route,
                ..
            }) if route.source == ResponseSource::Degraded
        ),
        "{events:?}"
    );

    // After text was sent, nothing stands in for a broken answer: the client gets an error.
    harness
        .sim
        .set_faults(vec![
            FaultRule::always("cut@3".parse().unwrap()).for_model(REGIONAL),
        ])
        .unwrap();
    let events = sse_events(harness.post("/v1/chat/stream", body("regional")).await).await;
    assert!(
        matches!(events.last(), Some(StreamEvent::Error { .. })),
        "{events:?}"
    );
    // A client mistake is never degraded.
    let response = harness
        .post(
            "/v1/chat",
            r#"{"messages":[{"role":"assistant","content":"x"}]}"#,
        )
        .await;
    assert_eq!(response.status(), 400);

    let stats: fm_protocol::StatsResponse = harness.get_json("/v1/stats").await;
    let regional = stats.models.iter().find(|m| m.model == "regional").unwrap();
    assert_eq!(regional.errors, 3, "degraded answers count as errors");
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn an_open_breaker_sends_traffic_straight_to_the_next_region() {
    let harness = start(|config| {
        config.breaker.consecutive_failures = 2;
        config.retry.max_attempts = 1;
    })
    .await;
    break_primary(&harness, "unavailable");
    for request in 0..5 {
        let answer = harness.chat(Some("regional"), PROMPT).await;
        assert_eq!(answer.route.region, SECONDARY);
        // Once open, the breaker's refusal is no upstream call: one attempt, the secondary's.
        let expected = if request < 2 { 2 } else { 1 };
        assert_eq!(answer.route.attempts, expected, "request {request}");
    }
    // Two failures opened the primary's breaker; the later requests did not try it.
    assert_eq!(requests_in(&harness, PRIMARY), 2);
    assert_eq!(requests_in(&harness, SECONDARY), 5);
    let stats: fm_protocol::StatsResponse = harness.get_json("/v1/stats").await;
    let regional = stats.models.iter().find(|m| m.model == "regional").unwrap();
    assert_eq!(
        regional.targets[0].circuit.state,
        fm_protocol::CircuitState::Open
    );
    assert_eq!(
        regional.targets[1].circuit.state,
        fm_protocol::CircuitState::Closed
    );
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_fails_over() {
    let harness = start(|config| {
        let mut unreachable = model("unreachable", "llama-test".into());
        unreachable.provider = fm_relay::config::ProviderKind::OpenAi;
        // Nothing listens on port 1: the connection is refused before any header.
        unreachable.endpoint = Some("http://127.0.0.1:1/v1".into());
        unreachable.region = "lab".into();
        unreachable.fallback_models = vec!["regional".into()];
        config.models.push(unreachable);
    })
    .await;
    let answer = harness.chat(Some("unreachable"), PROMPT).await;
    assert_eq!(answer.route.model, "regional");
    assert_eq!(answer.route.source, ResponseSource::FallbackModel);
    // Refused connections count as unavailable: retried (3 calls), then the fallback.
    assert_eq!(answer.route.attempts, 4);
    let events = sse_events(harness.post("/v1/chat/stream", body("unreachable")).await).await;
    assert_eq!(done_route(&events).model, "regional");
    assert_healthy(&harness).await;
}

#[tokio::test]
async fn websocket_clients_see_the_failover_and_the_whole_answer() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let harness = start(|_| {}).await;
    let whole = healthy_answer(&harness, "regional").await;
    break_primary(&harness, "stream-error@4");
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Two requests on one connection: each answer carries its own failover.
    for _ in 0..2 {
        socket
            .send(WsMessage::text(body("regional")))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let mut events = Vec::new();
        loop {
            let frame = socket.next().await.unwrap().unwrap();
            let event: StreamEvent = serde_json::from_str(frame.to_text().unwrap()).unwrap();
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                break;
            }
        }
        assert_eq!(
            failovers(&events),
            [(SECONDARY.to_string(), true)],
            "{events:?}"
        );
        assert_eq!(shown_text(&events), whole);
        assert_eq!(done_route(&events).source, ResponseSource::FallbackRegion);
    }
    assert_healthy(&harness).await;
}
