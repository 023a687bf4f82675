//! The answer cache over real sockets: exact and semantic hits on both surfaces, misses, the
//! opt-out, nothing cached from errors or truncated answers, stale answers only when every target
//! failed, and Redis shared by two relay instances (a real `redis-server`, which
//! `scripts/setup.sh` installs; each test run starts its own on a free port).

mod common;

use std::time::Duration;

use common::{Harness, RedisServer, chat_body, sim_config, sse_events, start_with, text_of};
use fm_protocol::{ChatResponse, ResponseSource, StatsResponse, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::CacheBackend;
use fm_sim::FaultRule;

const PROMPT: &str = "What is the capital of France?";

async fn start(adjust: impl FnOnce(&mut RelayConfig)) -> Harness {
    start_with(sim_config(), |config| {
        config.cache.enabled = true;
        adjust(config);
    })
    .await
}

async fn cache_stats(harness: &Harness) -> fm_protocol::CacheStats {
    let stats: StatsResponse = harness.get_json("/v1/stats").await;
    stats.cache.expect("the cache is on")
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache_on_every_surface() {
    let harness = start(|_| {}).await;
    let first = harness.chat(None, PROMPT).await;
    assert_eq!(first.route.source, ResponseSource::Primary);
    assert_eq!(harness.sim.stats().requests, 1);

    let again = harness.chat(None, PROMPT).await;
    assert_eq!(again.route.source, ResponseSource::Cache);
    assert_eq!(again.text, first.text);
    assert_eq!(again.route.attempts, 0);
    assert_eq!(
        again.usage.map(|usage| usage.total_tokens),
        Some(0),
        "a cache hit spends no tokens"
    );
    assert!(
        again.route.reason.contains("the same request"),
        "{}",
        again.route.reason
    );

    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(None, PROMPT))
            .await,
    )
    .await;
    assert!(matches!(events[0], StreamEvent::Start { .. }), "{events:?}");
    assert_eq!(text_of(&events), first.text);
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { route, .. }) if route.source == ResponseSource::Cache),
        "{events:?}"
    );
    assert_eq!(
        harness.sim.stats().requests,
        1,
        "the upstream saw one request"
    );
    let stats = cache_stats(&harness).await;
    assert_eq!((stats.exact_hits, stats.misses, stats.stored), (2, 1, 1));

    // Another question is a miss; a streamed answer is stored too.
    let events = sse_events(
        harness
            .post(
                "/v1/chat/stream",
                chat_body(None, "How do relays fail over?"),
            )
            .await,
    )
    .await;
    let streamed = text_of(&events);
    let cached = harness.chat(None, "How do relays fail over?").await;
    assert_eq!(cached.route.source, ResponseSource::Cache);
    assert_eq!(cached.text, streamed);
    assert_eq!(harness.sim.stats().requests, 2);
}

#[tokio::test]
async fn a_similar_question_hits_the_semantic_cache_but_other_numbers_do_not() {
    let harness = start(|_| {}).await;
    let first = harness.chat(None, PROMPT).await;
    let similar = harness.chat(None, "what is the capital of france").await;
    assert_eq!(similar.route.source, ResponseSource::Cache);
    assert_eq!(similar.text, first.text);
    assert!(
        similar.route.reason.contains("similar request"),
        "{}",
        similar.route.reason
    );

    harness.chat(None, "What is 12 times 12?").await;
    let other = harness.chat(None, "What is 12 times 13?").await;
    assert_eq!(other.route.source, ResponseSource::Primary);
    // Another model is another scope.
    let elsewhere = harness.chat(Some("paced"), PROMPT).await;
    assert_eq!(elsewhere.route.source, ResponseSource::Primary);
    let stats = cache_stats(&harness).await;
    assert_eq!(stats.semantic_hits, 1);
}

#[tokio::test]
async fn an_opted_out_request_neither_reads_nor_writes_the_cache() {
    let harness = start(|_| {}).await;
    let opted_out = serde_json::json!({
        "messages": [{"role": "user", "content": PROMPT}],
        "no_cache": true,
    })
    .to_string();
    for _ in 0..2 {
        let response = harness.post("/v1/chat", opted_out.clone()).await;
        let answer: ChatResponse = response.json().await.unwrap();
        assert_eq!(answer.route.source, ResponseSource::Primary);
    }
    assert_eq!(harness.sim.stats().requests, 2);
    assert_eq!(cache_stats(&harness).await.stored, 0);
    // Nothing was stored, so a normal request is a miss too.
    let normal = harness.chat(None, PROMPT).await;
    assert_eq!(normal.route.source, ResponseSource::Primary);
}

#[tokio::test]
async fn errors_and_truncated_answers_are_never_cached() {
    let harness = start(|_| {}).await;
    for (model, path) in [
        ("throttle", "/v1/chat"),
        ("cut", "/v1/chat/stream"),
        ("garbage", "/v1/chat/stream"),
        ("stream-throttle", "/v1/chat/stream"),
    ] {
        for _ in 0..2 {
            let response = harness.post(path, chat_body(Some(model), PROMPT)).await;
            if path == "/v1/chat" {
                assert_eq!(response.status(), 429, "{model}");
            } else {
                let events = sse_events(response).await;
                assert!(
                    matches!(events.last(), Some(StreamEvent::Error { .. })),
                    "{model}: {events:?}"
                );
            }
        }
    }
    let stats = cache_stats(&harness).await;
    assert_eq!(stats.stored, 0);
    assert_eq!(stats.exact_hits + stats.semantic_hits, 0);
}

#[tokio::test]
async fn a_stale_answer_stands_in_only_when_every_target_fails() {
    let harness = start(|config| {
        // Answers are stale at once, and kept.
        config.cache.ttl_secs = 0;
        config.cache.stale_secs = 600;
    })
    .await;
    let first = harness.chat(None, PROMPT).await;
    // While the upstream is healthy a stale answer is not served.
    let fresh = harness.chat(None, PROMPT).await;
    assert_eq!(fresh.route.source, ResponseSource::Primary);

    harness
        .sim
        .set_faults(vec![FaultRule::always("unavailable".parse().unwrap())])
        .unwrap();
    let stale = harness.chat(None, PROMPT).await;
    assert_eq!(stale.route.source, ResponseSource::Cache);
    assert_eq!(stale.text, first.text);
    assert!(
        stale.route.reason.contains("every target failed"),
        "{}",
        stale.route.reason
    );
    assert_eq!(stale.route.attempts, 3);
    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(None, PROMPT))
            .await,
    )
    .await;
    assert_eq!(text_of(&events), first.text);
    assert_eq!(cache_stats(&harness).await.stale_hits, 2);
    // A question never answered has nothing to stand in: the client gets the error.
    let response = harness
        .post("/v1/chat", chat_body(None, "Something new"))
        .await;
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn two_relays_share_answers_through_redis() {
    let redis = RedisServer::start().await;
    let with_redis = |config: &mut RelayConfig| {
        config.cache.backend = CacheBackend::Redis;
        config.cache.redis_url = redis.url.clone();
    };
    let first_relay = start(with_redis).await;
    let second_relay = start(with_redis).await;

    let answer = first_relay.chat(None, PROMPT).await;
    assert_eq!(answer.route.source, ResponseSource::Primary);
    // The write is in the background: wait (bounded) until the other relay sees it.
    let mut shared = None;
    for _ in 0..100 {
        if cache_stats(&first_relay).await.stored == 1 {
            shared = Some(second_relay.chat(None, PROMPT).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shared = shared.expect("the first relay stored its answer");
    assert_eq!(shared.route.source, ResponseSource::Cache);
    assert_eq!(shared.text, answer.text);
    assert_eq!(
        second_relay.sim.stats().requests,
        0,
        "the second relay's upstream was not called"
    );
    let similar = second_relay
        .chat(None, "what is the capital of france")
        .await;
    assert_eq!(similar.route.source, ResponseSource::Cache);

    // A Redis that cannot be reached fails the relay's start with a clear error.
    let sim = fm_sim::spawn(sim_config()).await.unwrap();
    let mut config = common::relay_config(&sim);
    config.cache.enabled = true;
    config.cache.backend = CacheBackend::Redis;
    config.cache.redis_url = "redis://127.0.0.1:1".into();
    let err = fm_relay::start(config).await.unwrap_err().to_string();
    assert!(err.contains("Redis at redis://127.0.0.1:1"), "{err}");
}
