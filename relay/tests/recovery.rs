//! How the relay comes back from trouble, over real sockets against fm-sim's faults and fault
//! schedules: breaker cool-downs that follow the outage (a flap costs about a second of
//! downgrade, a long outage is probed at a growing interval), a short `Retry-After` honoured
//! before a downgrade, a silent upstream not retried on the same target, and broken streams
//! resumed by replay on the OpenAI surface.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, chat_body, model, sim_config, sse_events, start_with};
use fm_protocol::{ChatResponse, CircuitState, ResponseSource, StatsResponse, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::{BreakerConfig, FailoverTarget, ModelConfig};
use fm_sim::FaultRule;

/// The upstream id of the model these tests break.
const FLAKY: &str = "anthropic.flaky-primary-v1:0";
const PROMPT: &str = "Tell me how a relay keeps answering";

/// A relay with `primary` (one region, falling back to `plain`), the default breaker and what
/// `adjust` changes.
async fn start(adjust: impl FnOnce(&mut RelayConfig)) -> Harness {
    start_with(sim_config(), |config| {
        let mut primary = model("primary", FLAKY.into());
        primary.fallback_models = vec!["plain".into()];
        config.models.push(primary);
        config.breaker = BreakerConfig::default();
        adjust(config);
        config.validate().unwrap();
    })
    .await
}

/// `regional`: the primary's upstream in us-east-1, then us-west-2, falling back to `plain`.
fn regional() -> ModelConfig {
    let mut regional = model("regional", FLAKY.into());
    regional.failover = vec![FailoverTarget {
        region: "us-west-2".into(),
        upstream_id: None,
        endpoint: None,
    }];
    regional.fallback_models = vec!["plain".into()];
    regional
}

fn requests_in(harness: &Harness, region: &str) -> u64 {
    let stats = harness.sim.stats();
    stats.requests_by_region.get(region).copied().unwrap_or(0)
}

/// Breaks the primary with `fault` for `for_ms` milliseconds from now (forever with `None`).
fn break_primary(harness: &Harness, fault: &str, for_ms: Option<u64>) {
    let rule = FaultRule {
        for_ms,
        ..FaultRule::always(fault.parse().unwrap()).for_model(FLAKY)
    };
    harness.sim.set_faults(vec![rule]).unwrap();
}

/// Sends a request to `primary` every `every` for `run`; returns when each answer arrived
/// (since `start`) and which model gave it. Every answer must be a success.
async fn steady_traffic(
    harness: &Harness,
    start: Instant,
    run: Duration,
    every: Duration,
) -> Vec<(Duration, String)> {
    let mut answers = Vec::new();
    while start.elapsed() < run {
        let answer: ChatResponse = harness.chat(Some("primary"), PROMPT).await;
        answers.push((start.elapsed(), answer.route.model));
        tokio::time::sleep(every).await;
    }
    answers
}

/// When the simulator saw the calls that reached the primary and failed (since `start`, in
/// the simulator's clock: milliseconds since it started).
fn failed_primary_calls(harness: &Harness) -> Vec<f64> {
    harness
        .sim
        .stats()
        .recent
        .iter()
        .filter(|call| call.model_id == FLAKY && call.fault.is_some())
        .map(|call| call.at_ms)
        .collect()
}

fn primary_circuit(stats: &StatsResponse) -> fm_protocol::CircuitStatus {
    let primary = stats.models.iter().find(|m| m.model == "primary").unwrap();
    primary.targets[0].circuit.clone()
}

#[tokio::test]
async fn a_flap_of_a_few_seconds_is_back_on_the_primary_about_a_second_after_it_recovers() {
    // The relay's default breaker: five failures in a row open it for a second at first.
    let harness = start(|_| {}).await;
    let flap = Duration::from_secs(3);
    let start = Instant::now();
    break_primary(&harness, "unavailable", Some(flap.as_millis() as u64));
    let answers = steady_traffic(
        &harness,
        start,
        flap + Duration::from_millis(2500),
        Duration::from_millis(40),
    )
    .await;

    // During the flap the fallback answered (no client saw an error: `chat` asserts 200).
    let during: Vec<_> = answers.iter().filter(|(at, _)| *at < flap).collect();
    assert!(
        during.iter().all(|(_, model)| model == "plain"),
        "{during:?}"
    );
    // The primary's breaker kept most calls away: a few probes a second, not every request.
    let probes = failed_primary_calls(&harness).len();
    assert!(
        probes <= 5 + 3 * 4,
        "{probes} failed calls reached the primary during a 3 s flap"
    );
    // Back on the primary within about a second of its recovery, and it stays there.
    let back = answers
        .iter()
        .find(|(at, model)| *at >= flap && model == "primary")
        .map(|(at, _)| *at - flap)
        .unwrap_or_else(|| panic!("never back on the primary: {answers:?}"));
    assert!(
        back <= Duration::from_millis(1600),
        "back on the primary {back:?} after it recovered"
    );
    let settled = flap + back;
    assert!(
        answers
            .iter()
            .filter(|(at, _)| *at > settled)
            .all(|(_, model)| model == "primary"),
        "{answers:?}"
    );
    let stats: StatsResponse = harness.get_json("/v1/stats").await;
    assert_eq!(primary_circuit(&stats).state, CircuitState::Closed);
}

#[tokio::test]
async fn a_long_outage_is_probed_at_a_growing_interval() {
    let harness = start(|config| {
        // The default rule, scaled down so that the test takes seconds: 200 ms at first, half
        // the outage so far on each re-opening, at most 2 s.
        config.breaker.min_open_ms = 200;
        config.breaker.open_share_of_outage = 0.5;
        config.breaker.max_open_ms = 2000;
        config.retry.max_attempts = 1;
    })
    .await;
    break_primary(&harness, "unavailable", None);
    // Steady traffic until nine probes went through (about 7 s: the cool-downs are 0.2, 0.2,
    // 0.3, 0.45, 0.68, 1.0, 1.5 and 2 s), bounded.
    let start = Instant::now();
    while failed_primary_calls(&harness).len() < 5 + 9 {
        assert!(start.elapsed() < Duration::from_secs(30), "too few probes");
        let answer = harness.chat(Some("primary"), PROMPT).await;
        assert_eq!(answer.route.model, "plain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Five failures open the breaker; after that every call that reached the primary was a
    // probe. The gaps between them grow, up to the cap.
    let calls = failed_primary_calls(&harness);
    let probes = &calls[5..];
    let gaps: Vec<f64> = probes.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(
        (150.0..400.0).contains(&gaps[0]),
        "the first cool-down is about 200 ms: {gaps:?}"
    );
    let last = *gaps.last().unwrap();
    assert!(
        (1700.0..2400.0).contains(&last),
        "the last is about the 2 s cap: {gaps:?}"
    );
    // Growing: no gap is much shorter than the one before it (requests arrive every ~10 ms, so a
    // probe can come a little after its breaker half-opened).
    assert!(
        gaps.windows(2).all(|pair| pair[1] >= pair[0] - 60.0),
        "{gaps:?}"
    );

    let stats: StatsResponse = harness.get_json("/v1/stats").await;
    let circuit = primary_circuit(&stats);
    assert_eq!(circuit.state, CircuitState::Open);
    assert_eq!(circuit.open_ms, Some(2000), "{circuit:?}");
    assert!(circuit.openings as usize >= gaps.len(), "{circuit:?}");
    let why = circuit.open_time_reason.unwrap();
    assert!(
        why.contains("(the longest)") && why.contains("50%"),
        "{why}"
    );
}

/// A throttle of the primary that asks for `wait_ms`, once.
fn throttle_primary_once(harness: &Harness, wait_ms: u32, region: Option<&str>) {
    let mut rule = FaultRule {
        limit: Some(1),
        ..FaultRule::always(fm_sim::Fault::ThrottleWait { wait_ms }).for_model(FLAKY)
    };
    rule.region = region.map(str::to_string);
    harness.sim.set_faults(vec![rule]).unwrap();
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_on_the_primary_before_another_model_answers() {
    let harness = start(|config| config.models.push(regional())).await;

    // Only another model is left after the primary: its 1 s Retry-After is honoured.
    throttle_primary_once(&harness, 1000, None);
    let asked = Instant::now();
    let answer = harness.chat(Some("primary"), PROMPT).await;
    assert!(asked.elapsed() >= Duration::from_secs(1));
    assert_eq!(answer.route.model, "primary");
    assert_eq!(answer.route.source, ResponseSource::Primary);
    assert_eq!(answer.route.attempts, 2);
    let reason = &answer.route.reason;
    assert!(
        reason.contains("asked to wait 1.0 s, which the relay did"),
        "{reason}"
    );
    // The same on a stream.
    throttle_primary_once(&harness, 1000, None);
    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(Some("primary"), PROMPT))
            .await,
    )
    .await;
    match events.last() {
        Some(StreamEvent::Done { route, .. }) => {
            assert_eq!((route.model.as_str(), route.attempts), ("primary", 2));
            assert!(
                route.reason.contains("which the relay did"),
                "{}",
                route.reason
            );
        }
        other => panic!("{other:?}"),
    }

    // A wait longer than `retry.max_retry_after_ms` (3 s): downgraded at once, and said why.
    throttle_primary_once(&harness, 5000, None);
    let asked = Instant::now();
    let answer = harness.chat(Some("primary"), PROMPT).await;
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(answer.route.source, ResponseSource::FallbackModel);
    assert!(
        answer
            .route
            .reason
            .contains("asked to wait 5.0 s, longer than the relay waits"),
        "{}",
        answer.route.reason
    );

    // The same model has another region: the call moves there at once.
    throttle_primary_once(&harness, 1000, Some("us-east-1"));
    let before = harness.sim.stats().requests;
    let asked = Instant::now();
    let answer = harness.chat(Some("regional"), PROMPT).await;
    assert!(asked.elapsed() < Duration::from_millis(500));
    assert_eq!(answer.route.source, ResponseSource::FallbackRegion);
    assert_eq!(answer.route.region, "us-west-2");
    assert_eq!(answer.route.attempts, 2);
    assert_eq!(harness.sim.stats().requests, before + 2);
}

#[tokio::test]
async fn a_silent_upstream_is_not_retried_on_the_same_target() {
    let harness = start(|config| {
        config.models.push(regional());
        config.retry.slow_failure_ms = 1000;
        config.timeouts.first_token_ms = 10_000;
        config.timeouts.one_shot_ms = 10_000;
    })
    .await;
    let hang_up = |after_ms: u32| {
        let rule = FaultRule::always(fm_sim::Fault::HangUp { after_ms })
            .for_model(FLAKY)
            .in_region("us-east-1");
        harness.sim.set_faults(vec![rule]).unwrap();
    };
    for path in ["/v1/chat", "/v1/chat/stream"] {
        // Accepted, 1.5 s of silence, then the connection closed without an answer: one such
        // wait, then the next region. Retried, it would have taken two.
        hang_up(1500);
        let before = requests_in(&harness, "us-east-1");
        let asked = Instant::now();
        let response = harness
            .post(path, chat_body(Some("regional"), PROMPT))
            .await;
        let route = match path {
            "/v1/chat" => response.json::<ChatResponse>().await.unwrap().route,
            _ => match sse_events(response).await.pop() {
                Some(StreamEvent::Done { route, .. }) => route,
                other => panic!("{path}: {other:?}"),
            },
        };
        let took = asked.elapsed();
        assert!(
            (Duration::from_millis(1500)..Duration::from_millis(2900)).contains(&took),
            "{path}: {took:?}"
        );
        assert_eq!(route.region, "us-west-2", "{path}");
        assert_eq!(route.attempts, 2, "{path}");
        assert!(
            route.reason.contains("without an answer (a timeout"),
            "{path}: {}",
            route.reason
        );
        assert_eq!(requests_in(&harness, "us-east-1"), before + 1, "{path}");
    }
    // A connection closed at once is an ordinary unavailability: retried, then the next region.
    hang_up(50);
    let before = requests_in(&harness, "us-east-1");
    let answer = harness.chat(Some("regional"), PROMPT).await;
    assert_eq!(
        (answer.route.region.as_str(), answer.route.attempts),
        ("us-west-2", 4)
    );
    assert_eq!(requests_in(&harness, "us-east-1"), before + 3);
}

/// A streamed OpenAI chat completion of `PROMPT` from `model`: the chunks (as JSON) and whether
/// the stream ended with `[DONE]`.
async fn openai_stream(harness: &Harness, model: &str) -> (Vec<serde_json::Value>, bool) {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": true,
    });
    let response = harness.post("/v1/chat/completions", body.to_string()).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let mut lines: Vec<&str> = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect();
    let done = lines.last() == Some(&"[DONE]");
    if done {
        lines.pop();
    }
    let chunks = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (chunks, done)
}

fn content_of(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The relay's `fm_relay_stream_replays_total` for `outcome`.
async fn replays(harness: &Harness, outcome: &str) -> u64 {
    let metrics = harness.metrics().await;
    let prefix = format!("fm_relay_stream_replays_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_broken_stream_is_resumed_by_replay_on_the_openai_surface() {
    let harness = start(|config| {
        config.models.push(regional());
        // The same model behind an OpenAI-compatible server: its first target breaks after four
        // tokens by connection reset, its second (the same model on another server) answers.
        let sim_url = config.bedrock.endpoint.clone().unwrap();
        let mut served = model("served", format!("{FLAKY}~reset@4"));
        served.provider = fm_relay::config::ProviderKind::OpenAi;
        served.endpoint = Some(format!("{sim_url}/v1"));
        served.region = "gpu-1".into();
        served.failover = vec![FailoverTarget {
            region: "gpu-2".into(),
            upstream_id: Some(FLAKY.into()),
            endpoint: None,
        }];
        config.models.push(served);
    })
    .await;
    let whole = harness.chat(Some("regional"), PROMPT).await.text;
    let mut resumed = 0;
    for (model, fault) in [
        ("regional", Some("cut@5")),
        ("regional", Some("reset@5")),
        ("served", None),
    ] {
        if let Some(fault) = fault {
            let rule = FaultRule::always(fault.parse().unwrap())
                .for_model(FLAKY)
                .in_region("us-east-1");
            harness.sim.set_faults(vec![rule]).unwrap();
        }
        let (chunks, done) = openai_stream(&harness, model).await;
        // One answer, as if nothing broke: no error, no repeated text.
        assert!(done, "{model} {fault:?}: {chunks:?}");
        assert!(chunks.iter().all(|chunk| chunk.get("error").is_none()));
        assert_eq!(content_of(&chunks), whole, "{model} {fault:?}");
        let last = chunks.last().unwrap();
        assert_eq!(last["fm_relay"]["route"]["source"], "fallback_region");
        assert_eq!(last["fm_relay"]["route"]["attempts"], 2);
        resumed += 1;
        assert_eq!(replays(&harness, "resumed").await, resumed);
    }

    // The native SSE surface still announces the restart instead.
    let events = sse_events(
        harness
            .post("/v1/chat/stream", chat_body(Some("regional"), PROMPT))
            .await,
    )
    .await;
    assert!(
        events.iter().any(|event| matches!(
            event,
            StreamEvent::Failover {
                discard_partial: true,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(replays(&harness, "resumed").await, resumed);
}

#[tokio::test]
async fn a_replay_that_diverges_ends_the_openai_stream_with_an_error() {
    // The primary breaks after five tokens; only another model is left, and it says something
    // else.
    let harness = start(|_| {}).await;
    let whole = harness.chat(Some("primary"), PROMPT).await.text;
    break_primary(&harness, "cut@5", None);
    let (chunks, done) = openai_stream(&harness, "primary").await;
    assert!(!done, "{chunks:?}");
    let error = &chunks.last().unwrap()["error"];
    assert_eq!(error["code"], "upstream_error", "{chunks:?}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("differed from the text already sent"),
        "{message}"
    );
    // The client has the five tokens of the broken answer and nothing spliced onto them.
    let delivered = content_of(&chunks);
    assert!(whole.starts_with(&delivered), "{delivered:?} / {whole:?}");
    assert_eq!(delivered.split_whitespace().count(), 5, "{delivered:?}");
    assert_eq!(replays(&harness, "diverged").await, 1);
    assert_eq!(replays(&harness, "resumed").await, 0);
}

#[tokio::test]
async fn a_replay_must_catch_up_within_the_first_token_deadline() {
    // A model at 20 tokens/s in two regions; the first breaks after 40 tokens (2 s of text), so
    // the restart in the second needs about 2 s to reproduce what the client has.
    for (first_token_ms, resumes) in [(1000, false), (6000, true)] {
        let harness = start(|config| {
            let mut paced = regional();
            paced.id = "paced-regional".into();
            paced.upstream_id = Some(common::PACED_UPSTREAM.into());
            paced.fallback_models.clear();
            config.models.push(paced);
            config.timeouts.first_token_ms = first_token_ms;
        })
        .await;
        let rule = FaultRule::always("cut@40".parse().unwrap())
            .for_model(common::PACED_UPSTREAM)
            .in_region("us-east-1");
        harness.sim.set_faults(vec![rule]).unwrap();
        let (chunks, done) = openai_stream(&harness, "paced-regional").await;
        assert_eq!(done, resumes, "{first_token_ms} ms: {chunks:?}");
        if resumes {
            assert_eq!(content_of(&chunks).split_whitespace().count(), 100);
            assert_eq!(replays(&harness, "resumed").await, 1);
        } else {
            // Held back past the deadline: the target counts as one that sent nothing in time.
            let error = &chunks.last().unwrap()["error"];
            assert_eq!(error["code"], "upstream_timeout", "{chunks:?}");
            assert_eq!(replays(&harness, "failed").await, 1);
            assert_eq!(content_of(&chunks).split_whitespace().count(), 40);
        }
    }
}
