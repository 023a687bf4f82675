//! The multi-tenant edge over real sockets (and one `Router::oneshot` pass through the same
//! layers): API keys (401 and 403 in every case), request-rate limits with a burst and their
//! headers, token reservations that settle after sync answers, streams, cancelled streams and
//! failovers, the usage ledger (its totals are the answers' usage; a key sees only its own),
//! quotas that survive a restart, dollar budgets, concurrent streams, and browser safety
//! (origins, JSON-only POSTs, WebSocket close codes).

mod common;

use std::time::Duration;

use common::{Harness, api_key as key, chat_body, error_of, sim_config, sse_events, start_with};
use fm_protocol::{ChatResponse, KeyUsage, ModelList, StreamEvent, Usage, UsageReport};
use fm_relay::RelayConfig;
use fm_relay::config::{AuthMode, KeyLimits};
use futures_util::{SinkExt, StreamExt};

const ALICE: &str = "fmr_alice_test_key";
const BOB: &str = "fmr_bob_test_key";
const ADMIN: &str = "fmr_admin_test_key";
const REVOKED: &str = "fmr_revoked_test_key";

/// Keys mode with alice (limits as given), bob, an admin and a revoked key.
fn with_keys(config: &mut RelayConfig, alice: KeyLimits) {
    config.auth.mode = AuthMode::Keys;
    let mut admin = key("admin", ADMIN, KeyLimits::default());
    admin.admin = true;
    let mut revoked = key("revoked", REVOKED, KeyLimits::default());
    revoked.revoked = true;
    config.auth.keys = vec![
        key("alice", ALICE, alice),
        key("bob", BOB, KeyLimits::default()),
        admin,
        revoked,
    ];
}

async fn keyed(alice: KeyLimits) -> Harness {
    start_with(sim_config(), |config| with_keys(config, alice)).await
}

async fn post_as(harness: &Harness, key: &str, path: &str, body: String) -> reqwest::Response {
    harness
        .http
        .post(harness.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The status of [`post_as`]'s answer.
async fn status_of(harness: &Harness, key: &str, path: &str, body: String) -> u16 {
    post_as(harness, key, path, body).await.status().as_u16()
}

async fn get_as(harness: &Harness, key: &str, path: &str) -> reqwest::Response {
    harness
        .http
        .get(harness.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

fn body_with_max_tokens(model: Option<&str>, prompt: &str, max_tokens: u32) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&chat_body(model, prompt)).unwrap();
    body["max_tokens"] = max_tokens.into();
    body.to_string()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn keys_are_required_and_refusals_never_tell_whether_a_key_exists() {
    let harness = keyed(KeyLimits::default()).await;
    let body = || chat_body(None, "hello");
    let missing = harness.post("/v1/chat", body()).await;
    assert_eq!(error_of(missing).await.0, 401);
    let unknown = post_as(&harness, "fmr_nobody", "/v1/chat", body()).await;
    let revoked = post_as(&harness, REVOKED, "/v1/chat", body()).await;
    let unknown: serde_json::Value = {
        assert_eq!(unknown.status(), 401);
        unknown.json().await.unwrap()
    };
    let revoked: serde_json::Value = {
        assert_eq!(revoked.status(), 401);
        revoked.json().await.unwrap()
    };
    assert_eq!(unknown["error"]["code"], "unauthorized");
    assert_eq!(unknown["error"]["message"], revoked["error"]["message"]);
    // Both SDK conventions carry the key.
    assert_eq!(status_of(&harness, ALICE, "/v1/chat", body()).await, 200);
    let anthropic_style = harness
        .http
        .post(harness.url("/v1/chat"))
        .header("x-api-key", BOB)
        .header("content-type", "application/json")
        .body(body())
        .send()
        .await
        .unwrap();
    assert_eq!(anthropic_style.status(), 200);
    // Every route under /v1 and /metrics is guarded; the health check and the page are not.
    for path in ["/v1/models", "/v1/stats", "/v1/usage", "/metrics"] {
        assert_eq!(harness.get(path).await.status(), 401, "{path}");
    }
    assert_eq!(harness.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn models_routes_and_admin_routes_the_key_may_not_use_are_403() {
    let harness = start_with(sim_config(), |config| {
        with_keys(config, KeyLimits::default());
        let alice = &mut config.auth.keys[0];
        alice.models = vec!["plain".into()];
        alice.routes = vec!["/v1/chat".into(), "/v1/usage".into()];
    })
    .await;
    let ok = post_as(&harness, ALICE, "/v1/chat", chat_body(Some("plain"), "hi")).await;
    assert_eq!(ok.status(), 200);
    let stream = post_as(
        &harness,
        ALICE,
        "/v1/chat/stream",
        chat_body(Some("plain"), "hi"),
    )
    .await;
    assert_eq!(stream.status(), 200, "a path under an allowed route");
    let (status, code, _) =
        error_of(post_as(&harness, ALICE, "/v1/chat", chat_body(Some("paced"), "hi")).await).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    for path in ["/v1/models", "/v1/stats", "/metrics"] {
        let (status, code, _) = error_of(get_as(&harness, ALICE, path).await).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
    }
    assert_eq!(get_as(&harness, ALICE, "/v1/usage").await.status(), 200);
    assert_eq!(
        error_of(get_as(&harness, BOB, "/v1/admin/usage").await)
            .await
            .0,
        403
    );
    assert_eq!(
        get_as(&harness, ADMIN, "/v1/admin/usage").await.status(),
        200
    );
}

#[tokio::test]
async fn a_key_that_names_its_models_is_shown_only_those() {
    let harness = start_with(sim_config(), |config| {
        with_keys(config, KeyLimits::default());
        config.auth.keys[0].models = vec!["plain".into()];
    })
    .await;
    let listed = |key: &'static str| {
        let harness = &harness;
        async move {
            let list: ModelList = get_as(harness, key, "/v1/models")
                .await
                .json()
                .await
                .unwrap();
            list.data.into_iter().map(|m| m.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(ALICE).await, ["plain"]);
    assert!(listed(BOB).await.len() > 1);
    assert_eq!(
        get_as(&harness, ALICE, "/v1/models/plain").await.status(),
        200
    );
    assert_eq!(
        get_as(&harness, ALICE, "/v1/models/paced").await.status(),
        404
    );
    assert_eq!(
        get_as(&harness, BOB, "/v1/models/paced").await.status(),
        200
    );
}

#[tokio::test]
async fn a_burst_is_admitted_then_the_steady_rate_holds_and_the_headers_count_down() {
    // 60 a minute: one a second, with a burst of 3.
    let harness = keyed(KeyLimits {
        requests_per_minute: Some(60),
        burst: Some(3),
        ..KeyLimits::default()
    })
    .await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let response = post_as(&harness, ALICE, "/v1/chat", chat_body(None, "hi")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "3");
        remaining.push(header(&response, "x-ratelimit-remaining-requests"));
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let refused = post_as(&harness, ALICE, "/v1/chat", chat_body(None, "hi")).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    let reset = header(&refused, "x-ratelimit-reset-requests");
    assert!(reset.ends_with('s'), "{reset}");
    assert_eq!(error_of(refused).await.1, "rate_limited");
    // Bob has no limit; other routes count against alice's too.
    assert_eq!(
        status_of(&harness, BOB, "/v1/chat", chat_body(None, "hi")).await,
        200
    );
    assert_eq!(get_as(&harness, ALICE, "/v1/models").await.status(), 429);
    // The steady rate: one more a second later, and only one.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        status_of(&harness, ALICE, "/v1/chat", chat_body(None, "hi")).await,
        200
    );
    assert_eq!(
        status_of(&harness, ALICE, "/v1/chat", chat_body(None, "hi")).await,
        429
    );
}

#[tokio::test]
async fn a_request_refused_by_its_key_limit_uses_up_nothing_of_the_global_one() {
    let harness = start_with(sim_config(), |config| {
        with_keys(
            config,
            KeyLimits {
                requests_per_minute: Some(1),
                burst: Some(1),
                ..KeyLimits::default()
            },
        );
        config.limits.global_requests_per_minute = Some(60);
        config.limits.global_burst = Some(4);
    })
    .await;
    assert_eq!(
        status_of(&harness, ALICE, "/v1/chat", chat_body(None, "hi")).await,
        200
    );
    for _ in 0..10 {
        let refused = post_as(&harness, ALICE, "/v1/chat", chat_body(None, "hi")).await;
        assert_eq!(refused.status(), 429);
    }
    // The global burst of 4 lost one to alice's admitted request, none to her refusals.
    for expected in ["2", "1", "0"] {
        let response = post_as(&harness, BOB, "/v1/chat", chat_body(None, "hi")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "x-ratelimit-remaining-requests"),
            expected
        );
    }
    let refused = post_as(&harness, BOB, "/v1/chat", chat_body(None, "hi")).await;
    assert_eq!(refused.status(), 429);
}

/// Alice may use 2 500 tokens a minute; each request reserves its prompt plus 1 000: without
/// settling to the real usage (a few dozen tokens), the third request would be refused.
fn token_limited() -> KeyLimits {
    KeyLimits {
        tokens_per_minute: Some(2500),
        ..KeyLimits::default()
    }
}

async fn own_usage(harness: &Harness, key: &str) -> KeyUsage {
    let response = get_as(harness, key, "/v1/usage").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn token_reservations_settle_after_sync_answers_streams_cancels_and_failovers() {
    let harness = start_with(sim_config(), |config| {
        with_keys(config, token_limited());
        // `broken` fails over to `plain` mid-stream.
        let mut broken = common::model("broken", format!("{}~cut@3", common::UPSTREAM));
        broken.fallback_models = vec!["plain".into()];
        config.models.push(broken);
    })
    .await;
    let mut answered = Usage::default();
    let mut add = |usage: Usage| {
        answered.input_tokens += usage.input_tokens;
        answered.output_tokens += usage.output_tokens;
    };
    for round in 0..4 {
        let body = body_with_max_tokens(None, &format!("sync {round}"), 1000);
        let response = post_as(&harness, ALICE, "/v1/chat", body).await;
        assert_eq!(response.status(), 200, "sync round {round}");
        let remaining: u64 = header(&response, "x-ratelimit-remaining-tokens")
            .parse()
            .unwrap();
        assert!(
            (300..1500).contains(&remaining),
            "round {round} holds its reservation of ~1 000, earlier rounds only their use: {remaining}"
        );
        let answer: ChatResponse = response.json().await.unwrap();
        add(answer.usage.unwrap());
    }
    let done_usage = |events: &[StreamEvent]| {
        events.iter().find_map(|event| match event {
            StreamEvent::Done { usage, .. } => *usage,
            _ => None,
        })
    };
    for round in 0..4 {
        let body = body_with_max_tokens(None, &format!("stream {round}"), 1000);
        let events = sse_events(post_as(&harness, ALICE, "/v1/chat/stream", body).await).await;
        add(done_usage(&events).expect("a complete stream"));
    }
    for round in 0..3 {
        let body = body_with_max_tokens(Some("broken"), &format!("failover {round}"), 1000);
        let events = sse_events(post_as(&harness, ALICE, "/v1/chat/stream", body).await).await;
        assert!(
            events
                .iter()
                .any(|e| matches!(e, StreamEvent::Failover { .. }))
        );
        add(done_usage(&events).expect("completed after the failover"));
    }
    let usage = own_usage(&harness, ALICE).await;
    // The answers' usage plus what the broken calls consumed before they broke (estimated).
    assert_eq!(usage.month_to_date.requests, 11);
    assert!(usage.month_to_date.input_tokens >= u64::from(answered.input_tokens));
    assert!(usage.month_to_date.output_tokens >= u64::from(answered.output_tokens));
    let by_model = |model: &str| {
        usage
            .month_by_model
            .iter()
            .find(|m| m.model == model)
            .unwrap_or_else(|| panic!("no usage of {model}: {usage:?}"))
            .totals
    };
    assert!(
        by_model("broken").output_tokens > 0,
        "the cut calls' tokens count"
    );
    assert_eq!(
        usage.month_to_date.input_tokens + usage.month_to_date.output_tokens,
        u64::from(answered.input_tokens + answered.output_tokens)
            + by_model("broken").input_tokens
            + by_model("broken").output_tokens
    );
    assert!(usage.month_to_date.cost_usd > 0.0);

    // Cancelled streams settle too: each reserves ~1 000 of the 2 500 and is dropped after its
    // first text.
    for round in 0..4 {
        let body = body_with_max_tokens(Some("paced"), &format!("cancel {round}"), 1000);
        let response = post_as(&harness, ALICE, "/v1/chat/stream", body).await;
        assert_eq!(response.status(), 200, "cancelled round {round}");
        let mut reader = common::SseReader::new(response);
        while let Some(event) = reader.next_event().await {
            if matches!(event, StreamEvent::TextDelta { .. }) {
                break;
            }
        }
        drop(reader);
        harness.wait_for_cancelled_streams(round + 1).await;
    }
    let after = own_usage(&harness, ALICE).await;
    assert_eq!(after.month_to_date.requests, 15);
    let paced = after
        .month_by_model
        .iter()
        .find(|m| m.model == "paced")
        .expect("the cancelled streams' tokens are in the ledger");
    assert!(paced.totals.input_tokens > 0 && paced.totals.output_tokens > 0);
}

#[tokio::test]
async fn concurrent_streams_cannot_overshoot_a_token_limit() {
    let harness = keyed(token_limited()).await;
    // Each reserves ~1 000: two fit in 2 500 while both are open, the third does not.
    let open = |round: u32| {
        post_as(
            &harness,
            ALICE,
            "/v1/chat/stream",
            body_with_max_tokens(Some("paced"), &format!("open {round}"), 1000),
        )
    };
    let (first, second, third) = tokio::join!(open(0), open(1), open(2));
    let statuses = [first.status(), second.status(), third.status()];
    assert_eq!(
        statuses.iter().filter(|s| s.as_u16() == 200).count(),
        2,
        "{statuses:?}"
    );
    let refused = [first, second, third]
        .into_iter()
        .find(|r| r.status() == 429)
        .unwrap();
    assert!(
        header(&refused, "x-ratelimit-remaining-tokens")
            .parse::<u64>()
            .unwrap()
            < 1010
    );
}

#[tokio::test]
async fn a_key_sees_only_its_own_usage_and_the_admin_sees_all() {
    let harness = keyed(KeyLimits::default()).await;
    for _ in 0..2 {
        post_as(&harness, ALICE, "/v1/chat", chat_body(None, "alice asks")).await;
    }
    post_as(&harness, BOB, "/v1/chat", chat_body(None, "bob asks")).await;
    let alice = own_usage(&harness, ALICE).await;
    let bob = own_usage(&harness, BOB).await;
    assert_eq!((alice.key.as_str(), alice.today.requests), ("alice", 2));
    assert_eq!((bob.key.as_str(), bob.today.requests), ("bob", 1));
    assert_eq!(alice.today_by_model[0].model, "plain");
    let report: UsageReport = get_as(&harness, ADMIN, "/v1/admin/usage")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = report.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(report.models_today[0].totals.requests, 3);
}

#[tokio::test]
async fn monthly_quotas_survive_a_restart() {
    let data_dir = common::temp_dir("quota");
    let limits = KeyLimits {
        monthly_requests: Some(3),
        ..KeyLimits::default()
    };
    let adjust = |config: &mut RelayConfig| {
        with_keys(config, limits);
        config.limits.data_dir = data_dir.clone();
    };
    let first = start_with(sim_config(), adjust).await;
    for _ in 0..2 {
        assert_eq!(
            status_of(&first, ALICE, "/v1/chat", chat_body(None, "q")).await,
            200
        );
    }
    first.relay.begin_shutdown();
    first.relay.stopped().await;
    let second = start_with(sim_config(), adjust).await;
    assert_eq!(
        status_of(&second, ALICE, "/v1/chat", chat_body(None, "q")).await,
        200
    );
    let refused = post_as(&second, ALICE, "/v1/chat", chat_body(None, "q")).await;
    let (status, code, _) = error_of(refused).await;
    assert_eq!((status, code.as_str()), (429, "quota_exceeded"));
    // Bob's quota is his own.
    assert_eq!(
        status_of(&second, BOB, "/v1/chat", chat_body(None, "q")).await,
        200
    );
    assert_eq!(own_usage(&second, ALICE).await.month_to_date.requests, 3);
}

#[tokio::test]
async fn a_spent_daily_budget_refuses_its_key_and_no_other() {
    // The test models cost $0.001 / $0.002 per 1k tokens, so an answer of a few dozen tokens
    // costs several ten-thousandths of a cent: more than this budget of $0.00002, which the
    // first request finds unspent.
    let harness = keyed(KeyLimits {
        daily_usd: Some(0.00002),
        ..KeyLimits::default()
    })
    .await;
    assert_eq!(
        status_of(&harness, ALICE, "/v1/chat", chat_body(None, "spend")).await,
        200
    );
    let (status, code, _) =
        error_of(post_as(&harness, ALICE, "/v1/chat", chat_body(None, "more")).await).await;
    assert_eq!((status, code.as_str()), (429, "quota_exceeded"));
    assert_eq!(
        status_of(&harness, BOB, "/v1/chat", chat_body(None, "bob")).await,
        200
    );
}

#[tokio::test]
async fn a_key_has_at_most_its_concurrent_streams() {
    let harness = keyed(KeyLimits {
        max_concurrent_streams: Some(1),
        ..KeyLimits::default()
    })
    .await;
    let open = post_as(
        &harness,
        ALICE,
        "/v1/chat/stream",
        chat_body(Some("paced"), "long"),
    )
    .await;
    assert_eq!(open.status(), 200);
    let second = post_as(
        &harness,
        ALICE,
        "/v1/chat/stream",
        chat_body(Some("paced"), "2"),
    )
    .await;
    let (status, code, _) = error_of(second).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // Sync answers are not streams; and once the stream ends, another may open.
    assert_eq!(
        status_of(&harness, ALICE, "/v1/chat", chat_body(None, "sync")).await,
        200
    );
    drop(open);
    harness.wait_for_cancelled_streams(1).await;
    let again = post_as(&harness, ALICE, "/v1/chat/stream", chat_body(None, "again")).await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn pages_from_other_origins_cannot_call_and_only_json_is_posted() {
    let harness = start_with(sim_config(), |config| {
        config.edge.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let post_from = |origin: &'static str| {
        harness
            .http
            .post(harness.url("/v1/chat"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(chat_body(None, "from a page"))
            .send()
    };
    let evil = post_from("https://evil.example").await.unwrap();
    assert_eq!(error_of(evil).await.0, 403);
    let allowed = post_from("https://app.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        "https://app.example"
    );
    let own = format!("http://{}", harness.relay.addr());
    let own_page = harness
        .http
        .post(harness.url("/v1/chat"))
        .header("origin", own)
        .header("content-type", "application/json")
        .body(chat_body(None, "from the relay's page"))
        .send()
        .await
        .unwrap();
    assert_eq!(own_page.status(), 200);
    // The preflight of an allowed page.
    let preflight = harness
        .http
        .request(reqwest::Method::OPTIONS, harness.url("/v1/chat"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed_headers = header(&preflight, "access-control-allow-headers");
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    // "Simple" cross-site POSTs never reach a model.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = harness
            .http
            .post(harness.url("/v1/chat"))
            .header("content-type", content_type)
            .body(chat_body(None, "simple"))
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));
    }
    assert_eq!(
        harness.sim.stats().requests,
        2,
        "only the two allowed pages' calls"
    );
}

#[tokio::test]
async fn websockets_from_other_origins_are_refused_and_oversized_messages_closed_with_1009() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::{Error, Message};
    let harness = common::start().await;
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("a WebSocket from another origin was not refused: {other:?}"),
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let oversized = "x".repeat(fm_protocol::limits::MAX_BODY_BYTES + 1);
    socket.send(Message::text(oversized)).await.unwrap();
    let close = loop {
        match socket.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Size);
    assert_eq!(harness.connections_closed("ws_too_big").await, 1.0);
}

#[tokio::test]
async fn an_idle_websocket_is_closed_with_1008_and_a_busy_one_is_not() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let harness = start_with(sim_config(), |config| {
        config.server.ws_idle_timeout_secs = 1;
    })
    .await;
    let url = format!("ws://{}/v1/ws", harness.relay.addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // An answer that takes longer than the idle timeout (100 tokens at 20/s) keeps it open.
    socket
        .send(Message::text(chat_body(Some("paced"), "a long answer")))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let close = loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let event: StreamEvent = serde_json::from_str(&text).unwrap();
                if event.is_terminal() {
                    assert!(matches!(event, StreamEvent::Done { .. }), "{event:?}");
                    assert!(started.elapsed() > Duration::from_secs(1));
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "closed a second after the answer"
    );
    assert_eq!(harness.connections_closed("ws_idle").await, 1.0);
}

#[tokio::test]
async fn a_broken_websocket_frame_is_answered_with_close_code_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let harness = common::start().await;
    let mut socket = tokio::net::TcpStream::connect(harness.relay.addr())
        .await
        .unwrap();
    socket
        .write_all(
            b"GET /v1/ws HTTP/1.1\r\nhost: relay\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // A masked frame with the reserved opcode 3: a protocol error.
    socket.write_all(&[0x83, 0x80, 1, 2, 3, 4]).await.unwrap();
    let mut frame = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), socket.read_exact(&mut frame))
        .await
        .expect("a close frame, not silence")
        .unwrap();
    assert_eq!(frame[0], 0x88, "a close frame: {frame:?}");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1002);
    assert_eq!(harness.connections_closed("ws_protocol_error").await, 1.0);
}

#[tokio::test]
async fn open_mode_serves_without_a_key_and_files_usage_under_anonymous() {
    let harness = common::start().await;
    let answer = harness.chat(None, "no key").await;
    let usage: KeyUsage = harness.get_json("/v1/usage").await;
    assert_eq!(usage.key, "anonymous");
    assert_eq!(usage.today.requests, 1);
    let answered = answer.usage.unwrap();
    assert_eq!(
        usage.today.input_tokens + usage.today.output_tokens,
        u64::from(answered.input_tokens + answered.output_tokens)
    );
}

#[tokio::test]
async fn the_layers_answer_in_process_through_router_oneshot() {
    use tower::ServiceExt;
    let sim = fm_sim::spawn(sim_config()).await.unwrap();
    let mut config = common::relay_config(&sim);
    with_keys(&mut config, KeyLimits::default());
    let assembled = fm_relay::server::assemble(config).await.unwrap();
    let request = |key: Option<&str>, content_type: &str| {
        let mut builder =
            axum::http::Request::post("/v1/chat").header("content-type", content_type);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        builder
            .body(axum::body::Body::from(chat_body(None, "in process")))
            .unwrap()
    };
    let cases = [
        (None, "application/json", 401),
        (Some(ALICE), "text/plain", 415),
        (Some(ALICE), "application/json; charset=utf-8", 200),
    ];
    for (key, content_type, status) in cases {
        let response = assembled
            .app
            .clone()
            .oneshot(request(key, content_type))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{key:?} {content_type}");
        assert!(response.headers().contains_key("x-request-id"));
    }
}
