//! Limits shared by several relays through a real `redis-server` (started on a free port):
//! a global limit admits its number in total under concurrent load on two relays, a key's
//! quota is one across them, and when Redis dies each relay does what `on_redis_error` says —
//! within a bounded time — and is back to normal when Redis returns, without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, RedisServer, chat_body, error_of, sim_config, start_with};
use fm_protocol::KeyUsage;
use fm_relay::RelayConfig;
use fm_relay::config::{BackendFailure, LimitsBackend};

fn on_redis(redis: &RedisServer, on_error: BackendFailure) -> impl Fn(&mut RelayConfig) + '_ {
    move |config: &mut RelayConfig| {
        config.limits.backend = LimitsBackend::Redis;
        config.limits.redis_url = redis.url.clone();
        config.limits.on_redis_error = on_error;
        config.limits.redis_timeout_ms = 200;
        // A limit to keep in Redis (with none, an admission has nothing to ask it).
        config.limits.per_key.requests_per_minute = Some(100_000);
    }
}

/// Sends `count` chat requests to `harness`, `concurrency` at a time; the statuses.
async fn burst(harness: &Harness, count: usize, concurrency: usize) -> Vec<u16> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..count)
        .map(|i| async move {
            harness
                .post("/v1/chat", chat_body(None, &format!("q{}", i % 7)))
                .await
                .status()
                .as_u16()
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

#[tokio::test]
async fn a_global_limit_holds_across_two_relays() {
    let redis = RedisServer::start().await;
    // A burst of 200, then one a second.
    let adjust = |config: &mut RelayConfig| {
        on_redis(&redis, BackendFailure::FailClosed)(config);
        config.limits.global_requests_per_minute = Some(60);
        config.limits.global_burst = Some(200);
    };
    let first = start_with(sim_config(), adjust).await;
    let second = start_with(sim_config(), adjust).await;
    let started = Instant::now();
    let (a, b) = tokio::join!(burst(&first, 200, 16), burst(&second, 200, 16));
    let elapsed = started.elapsed();
    let admitted = a.iter().chain(&b).filter(|&&s| s == 200).count();
    let refused = a.iter().chain(&b).filter(|&&s| s == 429).count();
    assert_eq!(
        admitted + refused,
        400,
        "only admissions and refusals: {a:?} {b:?}"
    );
    // 200 at once, plus one for each second the burst took; ±1%.
    let expected = 200 + elapsed.as_secs() as usize;
    assert!(
        admitted.abs_diff(expected) <= 2,
        "{admitted} admitted in {elapsed:?}, expected {expected}"
    );
    assert!(
        a.contains(&200) && b.contains(&200),
        "both relays admitted some"
    );
}

#[tokio::test]
async fn a_key_s_quota_and_ledger_are_one_across_relays() {
    let redis = RedisServer::start().await;
    let adjust = |config: &mut RelayConfig| {
        on_redis(&redis, BackendFailure::FailClosed)(config);
        config.limits.per_key.monthly_requests = Some(5);
    };
    let first = start_with(sim_config(), adjust).await;
    let second = start_with(sim_config(), adjust).await;
    let mut statuses = Vec::new();
    for round in 0..4 {
        for relay in [&first, &second] {
            let response = relay
                .post("/v1/chat", chat_body(None, &format!("r{round}")))
                .await;
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    let refused = first.post("/v1/chat", chat_body(None, "over")).await;
    assert_eq!(error_of(refused).await.1, "quota_exceeded");
    // Either relay reads the one ledger (written a quarter second after the answers).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let usage: KeyUsage = second.get_json("/v1/usage").await;
    assert_eq!(usage.month_to_date.requests, 5);
}

#[tokio::test]
async fn when_redis_dies_each_relay_does_as_configured_and_recovers_when_it_returns() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let open = start_with(sim_config(), on_redis(&redis, BackendFailure::FailOpen)).await;
    let closed = start_with(sim_config(), on_redis(&redis, BackendFailure::FailClosed)).await;
    for relay in [&open, &closed] {
        assert_eq!(
            relay.post("/v1/chat", chat_body(None, "up")).await.status(),
            200
        );
    }
    drop(redis);
    for round in 0..3 {
        let started = Instant::now();
        let served = open.post("/v1/chat", chat_body(None, "down")).await;
        assert_eq!(served.status(), 200, "fail_open serves (round {round})");
        let refused = closed.post("/v1/chat", chat_body(None, "down")).await;
        let (status, code, _) = error_of(refused).await;
        assert_eq!((status, code.as_str()), (503, "limits_unavailable"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "decided in bounded time"
        );
    }
    let metrics = open.metrics().await;
    let served_locally = counter(&metrics, "fm_relay_limits_served_locally_total");
    // The three chats, and this /metrics request itself.
    assert_eq!(served_locally, 4.0, "{metrics}");
    let _back = RedisServer::start_on(port).await;
    let recovered = async {
        loop {
            let response = closed.post("/v1/chat", chat_body(None, "back")).await;
            if response.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), recovered)
        .await
        .expect("the fail_closed relay serves again once Redis is back");
    let before = open.metrics().await;
    assert_eq!(
        open.post("/v1/chat", chat_body(None, "back"))
            .await
            .status(),
        200
    );
    let after = open.metrics().await;
    let locally = |text: &str| counter(text, "fm_relay_limits_served_locally_total");
    assert_eq!(locally(&before), locally(&after), "counted in Redis again");
}

/// The value of an unlabelled counter in `/metrics` text.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}
