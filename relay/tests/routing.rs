//! Model routing end to end, against fm-sim: each strategy of a hybrid policy routes as
//! configured (explicit model, hints in the body and the header, content class, key, quality,
//! purpose-built routes), every answer explains itself (`route` in the JSON body and the stream's
//! start event, `x-fm-route`), `POST /v1/route/explain` agrees with real requests, live metrics
//! move traffic away from a slow or failing model and back after it recovers, and a spent budget
//! downgrades until the next day.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fm_protocol::{ChatResponse, RouteExplanation, StreamEvent};
use fm_protocol::{Complexity, Domain, QualityRequirement};
use fm_relay::RelayConfig;
use fm_relay::config::FailoverTarget;
use fm_relay::config::routing::{Conditions, RouteConfig, RuleConfig, SpendCondition, SpendScope};
use fm_sim::FaultRule;
use serde_json::{Value, json};

const FAST: &str = "anthropic.fast-v1:0";
const PREMIUM: &str = "anthropic.premium-v1:0";

fn rule(name: &str, when: Conditions, models: &[&str]) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        when,
        models: models.iter().map(|m| m.to_string()).collect(),
    }
}

/// `fast` and `premium` beside the test models, a policy with every static strategy, and the
/// `/v1/summarize` route.
fn policy(config: &mut RelayConfig) {
    let mut fast = model("fast", FAST.into());
    fast.tier = fm_protocol::Tier::Fast;
    let mut premium = model("premium", PREMIUM.into());
    premium.tier = fm_protocol::Tier::Premium;
    premium.fallback_models = vec!["plain".into()];
    config.models.push(fast);
    config.models.push(premium);
    config.routing.rules = vec![
        rule(
            "vip-key",
            Conditions {
                keys: vec!["vip".into()],
                ..Conditions::default()
            },
            &["premium"],
        ),
        rule(
            "highest",
            Conditions {
                quality: Some(QualityRequirement::Highest),
                ..Conditions::default()
            },
            &["premium"],
        ),
        rule(
            "hint-fast",
            Conditions {
                hints: vec!["fast".into()],
                ..Conditions::default()
            },
            &["fast", "plain"],
        ),
        rule(
            "hint-quality",
            Conditions {
                hints: vec!["quality".into()],
                ..Conditions::default()
            },
            &["premium"],
        ),
        rule(
            "hard-code",
            Conditions {
                domains: vec![Domain::Code],
                complexity: Some(Complexity::High),
                ..Conditions::default()
            },
            &["premium", "plain"],
        ),
        rule(
            "summaries-fast",
            Conditions {
                paths: vec!["/v1/summarize".into()],
                hints: vec!["fast".into()],
                ..Conditions::default()
            },
            &["fast"],
        ),
    ];
    config.routes = vec![RouteConfig {
        path: "/v1/summarize".into(),
        system: "Summarize the text.".into(),
        max_tokens: 200,
        models: vec!["plain".into(), "fast".into()],
        max_latency_ms: None,
    }];
}

const HARD_CODE: &str = "Review this Rust function and refactor it: explain the trade-offs of \
    borrowing versus cloning, design a better API for the parser, and compare the performance \
    of both versions.\n```rust\nfn parse(input: &str) -> Vec<String> {\n    input.split(',').map(|s| s.to_string()).collect();\n}\n```";

async fn chat_json(harness: &Harness, path: &str, body: Value) -> (ChatResponse, String) {
    let response = harness.post(path, body.to_string()).await;
    assert_eq!(response.status(), 200, "{path} {body}");
    let header = response.headers()["x-fm-route"]
        .to_str()
        .unwrap()
        .to_string();
    (response.json().await.unwrap(), header)
}

async fn explain(harness: &Harness, path: &str, body: Value) -> RouteExplanation {
    let response = harness
        .post(&format!("/v1/route/explain?path={path}"), body.to_string())
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn each_strategy_routes_as_configured_and_says_why() {
    let harness = start_with(sim_config(), policy).await;
    let prompt = |text: &str| json!({"messages": [{"role": "user", "content": text}]});

    // No rule fires: the default, said as such.
    let (answer, header) = chat_json(&harness, "/v1/chat", prompt("hello there")).await;
    assert_eq!(answer.route.model, "plain");
    assert_eq!(answer.route.choice.rule, "default");
    // The content rule before it read the class, so the decision reports it.
    assert_eq!(header, "rule=default; model=plain; class=general/simple");

    // A hint in the body, and the same hint in the header.
    let (answer, header) = chat_json(
        &harness,
        "/v1/chat",
        json!({"messages": [{"role": "user", "content": "hello"}], "routing_hint": "fast"}),
    )
    .await;
    assert_eq!(
        (
            answer.route.model.as_str(),
            answer.route.choice.rule.as_str()
        ),
        ("fast", "hint-fast")
    );
    assert_eq!(header, "rule=hint-fast; model=fast");
    let candidates: Vec<_> = answer
        .route
        .choice
        .candidates
        .iter()
        .map(|c| c.model.as_str())
        .collect();
    assert_eq!(candidates, ["fast", "plain"]);
    let response = harness
        .http
        .post(harness.url("/v1/chat"))
        .header("content-type", "application/json")
        .header("x-fm-route-hint", "quality")
        .body(prompt("hello").to_string())
        .send()
        .await
        .unwrap();
    let answer: ChatResponse = response.json().await.unwrap();
    assert_eq!(answer.route.choice.rule, "hint-quality");
    assert_eq!(answer.route.model, "premium");

    // An explicit model wins over the hint.
    let (answer, _) = chat_json(
        &harness,
        "/v1/chat",
        json!({"messages": [{"role": "user", "content": "hi"}], "model": "plain", "routing_hint": "fast"}),
    )
    .await;
    assert_eq!(
        (
            answer.route.model.as_str(),
            answer.route.choice.rule.as_str()
        ),
        ("plain", "explicit-model")
    );

    // The content class: demanding code goes to the premium model, and the class is reported.
    let (answer, header) = chat_json(&harness, "/v1/chat", prompt(HARD_CODE)).await;
    assert_eq!(answer.route.choice.rule, "hard-code", "{:?}", answer.route);
    assert_eq!(answer.route.model, "premium");
    let class = answer.route.choice.class.unwrap();
    assert_eq!(
        (class.domain, class.complexity),
        (Domain::Code, Complexity::High)
    );
    assert!(header.contains("class=code/high"), "{header}");

    // The quality requirement.
    let (answer, _) = chat_json(
        &harness,
        "/v1/chat",
        json!({"messages": [{"role": "user", "content": "hi"}], "quality_requirement": "highest"}),
    )
    .await;
    assert_eq!(answer.route.choice.rule, "highest");

    // A hint no rule names is a 400 naming the field, listing the hints.
    let response = harness
        .post(
            "/v1/chat",
            json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "cheap"})
                .to_string(),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["field"], "routing_hint");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("fast, quality"), "{message}");

    // The stream's start event carries the decision too.
    let response = harness
        .post(
            "/v1/chat/stream",
            json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "fast"})
                .to_string(),
        )
        .await;
    assert_eq!(
        response.headers()["x-fm-route"],
        "rule=hint-fast; model=fast"
    );
    let events = sse_events(response).await;
    let StreamEvent::Start { model, route, .. } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!((model.as_str(), route.rule.as_str()), ("fast", "hint-fast"));
    let Some(StreamEvent::Done { route, .. }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(route.choice.rule, "hint-fast");

    // /v1/models lists the hints a request may give.
    let models: Value = harness.get_json("/v1/models").await;
    assert_eq!(models["hints"], json!(["fast", "quality"]));
}

#[tokio::test]
async fn a_key_rule_and_the_key_s_own_models_shape_the_plan() {
    let dir = temp_dir("routing-keys");
    let keys_file = dir.join("keys.toml");
    let vip_key = "fmr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let narrow_key = "fmr_fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let digest = |key: &str| hex::encode(fm_relay::auth::key_digest(key));
    std::fs::write(
        &keys_file,
        format!(
            "[[keys]]\nname = \"vip\"\nkey_sha256 = \"{}\"\n\n[[keys]]\nname = \"narrow\"\nkey_sha256 = \"{}\"\nmodels = [\"plain\"]\n",
            digest(vip_key),
            digest(narrow_key)
        ),
    )
    .unwrap();
    let harness = start_with(sim_config(), |config| {
        policy(config);
        config.auth.keys_file = keys_file.clone();
    })
    .await;
    let send = |key: &'static str, body: Value| {
        harness
            .http
            .post(harness.url("/v1/chat"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(body.to_string())
            .send()
    };
    let answer = |key: &'static str, body: Value| {
        let sent = send(key, body);
        async move {
            let answer: ChatResponse = sent.await.unwrap().json().await.unwrap();
            answer
        }
    };
    let hi = json!({"messages": [{"role": "user", "content": "hi"}]});
    let answer_of_vip = answer(vip_key, hi.clone()).await;
    let answer = &answer;
    let vip = answer_of_vip;
    assert_eq!(
        (vip.route.model.as_str(), vip.route.choice.rule.as_str()),
        ("premium", "vip-key")
    );
    // A key limited to `plain` asking for `fast`: the rule's other candidate serves it, and the
    // decision says why `fast` was left out.
    let hinted = json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "fast"});
    let narrow = answer(narrow_key, hinted).await;
    assert_eq!(narrow.route.model, "plain");
    let fast = &narrow.route.choice.candidates[0];
    assert_eq!(fast.model, "fast");
    assert!(
        fast.passed_over.as_deref().unwrap().contains("may not use"),
        "{fast:?}"
    );
    // A rule whose model the key may not use: its fallback the key may use answers.
    let quality =
        json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "quality"});
    let fallback = answer(narrow_key, quality).await;
    assert_eq!(
        (
            fallback.route.model.as_str(),
            fallback.route.choice.rule.as_str()
        ),
        ("plain", "hint-quality")
    );
    // A model the key may not use, named: 403.
    let named = json!({"messages": [{"role": "user", "content": "hi"}], "model": "premium"});
    let response = send(narrow_key, named).await.unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn a_purpose_built_route_answers_as_json_or_as_a_stream() {
    let harness = start_with(sim_config(), policy).await;
    let body = json!({"messages": [{"role": "user", "content": "A long text to summarize."}]});
    let (answer, header) = chat_json(&harness, "/v1/summarize", body.clone()).await;
    assert_eq!(answer.route.model, "plain");
    assert_eq!(answer.route.choice.rule, "route:/v1/summarize");
    assert_eq!(header, "rule=route:/v1/summarize; model=plain");
    // Chat rules do not reach a route's requests; a rule naming the route does.
    let hinted = json!({"messages": [{"role": "user", "content": "text"}], "routing_hint": "fast"});
    let (answer, _) = chat_json(&harness, "/v1/summarize", hinted).await;
    assert_eq!(answer.route.choice.rule, "summaries-fast");
    let (answer, _) = chat_json(
        &harness,
        "/v1/summarize",
        json!({"messages": [{"role": "user", "content": HARD_CODE}]}),
    )
    .await;
    assert_eq!(answer.route.choice.rule, "route:/v1/summarize");
    // The stream, by query and by Accept.
    let response = harness
        .post("/v1/summarize?stream=true", body.to_string())
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_events(response).await;
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { .. })),
        "{events:?}"
    );
    let response = harness
        .http
        .post(harness.url("/v1/summarize"))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(matches!(
        sse_events(response).await.first(),
        Some(StreamEvent::Start { .. })
    ));
    // Past the route's bound: a 400 naming max_tokens.
    let greedy = json!({"messages": [{"role": "user", "content": "text"}], "max_tokens": 201});
    let (status, code, field) =
        error_of(harness.post("/v1/summarize", greedy.to_string()).await).await;
    assert_eq!(
        (status, field.as_deref()),
        (400, Some("max_tokens")),
        "{code}"
    );
    let (status, _, field) = error_of(
        harness
            .post("/v1/summarize?stream=maybe", body.to_string())
            .await,
    )
    .await;
    assert_eq!((status, field.as_deref()), (400, Some("stream")));
}

#[tokio::test]
async fn explain_agrees_with_the_decision_real_requests_get() {
    let harness = start_with(sim_config(), policy).await;
    for (path, body) in [
        (
            "/v1/chat",
            json!({"messages": [{"role": "user", "content": "hello"}]}),
        ),
        (
            "/v1/chat",
            json!({"messages": [{"role": "user", "content": HARD_CODE}]}),
        ),
        (
            "/v1/chat",
            json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "fast"}),
        ),
        (
            "/v1/summarize",
            json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "fast"}),
        ),
        (
            "/v1/summarize",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let explained = explain(&harness, path, body.clone()).await;
        let (answer, _) = chat_json(&harness, path, body.clone()).await;
        assert_eq!(explained.route, answer.route.choice, "{path} {body}");
        assert_eq!(explained.model, answer.route.model, "{path} {body}");
        assert_eq!(explained.plan[0].model, explained.model);
        assert!(
            answer.route.reason.starts_with(&explained.reason),
            "{} / {}",
            answer.route.reason,
            explained.reason
        );
    }
    // Explain refuses what a request would be refused for, and paths that call no model.
    let (status, _, field) = error_of(
        harness
            .post("/v1/route/explain", json!({"messages": []}).to_string())
            .await,
    )
    .await;
    assert_eq!((status, field.as_deref()), (400, Some("messages")));
    let (status, _, field) = error_of(
        harness
            .post(
                "/v1/route/explain?path=/v1/models",
                json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
            )
            .await,
    )
    .await;
    assert_eq!((status, field.as_deref()), (400, Some("path")));
    // Explaining calls no model.
    let before = harness.sim.stats().requests;
    explain(
        &harness,
        "/v1/chat",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(harness.sim.stats().requests, before);
}

/// A policy of one rule, `premium` then `plain`, with a short window for the live figures.
fn watched(config: &mut RelayConfig) {
    policy(config);
    config.routing.rules = vec![rule(
        "premium-first",
        Conditions::default(),
        &["premium", "plain"],
    )];
    config.routing.window_secs = 2;
    config.routing.min_samples = 3;
    config.routing.refresh_ms = 20;
    config.routing.probe_every_ms = 1000;
}

/// Sends requests for `run`; where each answer came from (`model@region`), in order, with when.
async fn traffic(harness: &Harness, body: &Value, run: Duration) -> Vec<(Duration, String)> {
    let start = Instant::now();
    let mut answers = Vec::new();
    while start.elapsed() < run {
        let (answer, _) = chat_json(harness, "/v1/chat", body.clone()).await;
        let from = format!("{}@{}", answer.route.model, answer.route.region);
        answers.push((start.elapsed(), from));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answers
}

/// The share of the answers after `after_ms` that came from `from` (`model@region`).
fn share_after(answers: &[(Duration, String)], after_ms: u64, from: &str) -> f64 {
    let later: Vec<_> = answers
        .iter()
        .filter(|(at, _)| *at > Duration::from_millis(after_ms))
        .collect();
    later.iter().filter(|(_, m)| m == from).count() as f64 / later.len().max(1) as f64
}

#[tokio::test]
async fn a_slow_model_loses_its_traffic_and_gets_it_back_after_it_recovers() {
    let harness = start_with(sim_config(), watched).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_latency_ms": 150});
    // Slow for 2.5 s from now: 300 ms to the first token, above the 150 ms target.
    let slow = FaultRule {
        for_ms: Some(2500),
        ..FaultRule::always("slow@300".parse().unwrap()).for_model(PREMIUM)
    };
    harness.sim.set_faults(vec![slow]).unwrap();
    let during = traffic(&harness, &body, Duration::from_millis(2500)).await;
    // Once its p99 is known, most requests go to the alternate; a few probe the slow one.
    assert!(
        share_after(&during, 1500, "plain@us-east-1") > 0.7,
        "{during:?}"
    );
    let explained = explain(&harness, "/v1/chat", body.clone()).await;
    let premium = &explained.route.candidates[0];
    if let Some(why) = &premium.passed_over {
        assert!(why.contains("p99"), "{why}");
    }
    // Recovered: the probes see it, the window forgets the slow answers, and traffic returns.
    let after = traffic(&harness, &body, Duration::from_millis(3500)).await;
    assert!(
        share_after(&after, 2500, "premium@us-east-1") > 0.9,
        "{after:?}"
    );
}

#[tokio::test]
async fn a_slow_region_loses_its_traffic_to_the_model_s_other_region_and_gets_it_back() {
    let harness = start_with(sim_config(), |config| {
        watched(config);
        let premium = config
            .models
            .iter_mut()
            .find(|m| m.id == "premium")
            .unwrap();
        premium.failover = vec![FailoverTarget {
            region: "us-west-2".into(),
            upstream_id: None,
            endpoint: None,
        }];
    })
    .await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_latency_ms": 150});
    // Slow in us-east-1 only, for 2.5 s from now.
    let slow = FaultRule {
        for_ms: Some(2500),
        ..FaultRule::always("slow@300".parse().unwrap())
            .for_model(PREMIUM)
            .in_region("us-east-1")
    };
    harness.sim.set_faults(vec![slow]).unwrap();
    let during = traffic(&harness, &body, Duration::from_millis(2500)).await;
    // The model keeps its traffic, served from its healthy region (not by the fallback model);
    // a few probes find out whether the slow region recovered.
    assert!(
        during.iter().all(|(_, from)| from.starts_with("premium@")),
        "{during:?}"
    );
    assert!(
        share_after(&during, 1500, "premium@us-west-2") > 0.7,
        "{during:?}"
    );
    let (answer, header) = chat_json(&harness, "/v1/chat", body.clone()).await;
    let premium = &answer.route.choice.candidates[0];
    assert_eq!(
        (premium.model.as_str(), premium.passed_over.as_deref()),
        ("premium", None)
    );
    if let [passed] = premium.targets_passed_over.as_slice() {
        // (Unless this request was the region's probe.)
        assert_eq!(passed.region, "us-east-1");
        assert!(passed.reason.contains("p99"), "{passed:?}");
        assert!(header.contains("passed_over=premium@us-east-1"), "{header}");
        assert_eq!(
            (answer.route.region.as_str(), answer.route.source),
            ("us-west-2", fm_protocol::ResponseSource::FallbackRegion)
        );
    }
    // `/v1/stats` shows each region's own figures: the slow one's calls took 300 ms.
    let stats: fm_protocol::StatsResponse = harness
        .get("/v1/stats?window_secs=60")
        .await
        .json()
        .await
        .unwrap();
    let premium = stats.models.iter().find(|m| m.model == "premium").unwrap();
    let [east, west] = premium.targets.as_slice() else {
        panic!("{premium:?}")
    };
    assert!(east.calls >= 3, "{east:?}");
    assert!(east.total_ms.unwrap().p99 >= 250.0, "{east:?}");
    assert!(west.calls > east.calls, "{west:?} {east:?}");
    assert!(west.total_ms.unwrap().p50 < 150.0, "{west:?}");
    assert_eq!((east.failures, west.failures), (0, 0));
    // Recovered: the probes see it, the window forgets the slow calls, and traffic returns.
    let after = traffic(&harness, &body, Duration::from_millis(3500)).await;
    assert!(
        share_after(&after, 2500, "premium@us-east-1") > 0.9,
        "{after:?}"
    );
}

#[tokio::test]
async fn a_failing_model_is_passed_over_until_its_error_rate_recovers() {
    let harness = start_with(sim_config(), |config| {
        watched(config);
        // Errors as errors: the failed attempt counts against the model, the fallback answers.
        config.retry.max_attempts = 1;
    })
    .await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let failing = FaultRule {
        for_ms: Some(2000),
        ..FaultRule::always("unavailable".parse().unwrap()).for_model(PREMIUM)
    };
    harness.sim.set_faults(vec![failing]).unwrap();
    let during = traffic(&harness, &body, Duration::from_millis(2000)).await;
    // Every answer came (the plan's next model took over); soon the failing model is not even
    // tried first, which the explanation says.
    assert!(
        during.iter().all(|(_, m)| m == "plain@us-east-1"),
        "{during:?}"
    );
    let explained = explain(&harness, "/v1/chat", body.clone()).await;
    let reasons: Vec<_> = explained
        .route
        .candidates
        .iter()
        .filter_map(|c| c.passed_over.clone())
        .collect();
    let metrics = harness.metrics().await;
    assert!(
        explained.reason.contains("error rate") || reasons.iter().any(|r| r.contains("error rate")),
        "{explained:?}\n{metrics}"
    );
    let after = traffic(&harness, &body, Duration::from_millis(3500)).await;
    assert!(
        share_after(&after, 2500, "premium@us-east-1") > 0.9,
        "{after:?}"
    );
}

#[tokio::test]
async fn a_spent_daily_budget_downgrades_until_the_next_day() {
    let harness = start_with(sim_config(), |config| {
        policy(config);
        config.routing.rules.insert(
            0,
            rule(
                "budget",
                Conditions {
                    spend: Some(SpendCondition {
                        scope: SpendScope::Model,
                        model: Some("premium".into()),
                        daily_usd_above: 0.0001,
                    }),
                    ..Conditions::default()
                },
                &["fast"],
            ),
        );
        config.routing.spend_refresh_ms = 20;
    })
    .await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "quality"});
    // Under budget: the premium model. Each answer costs a little; soon the budget is spent.
    let (answer, _) = chat_json(&harness, "/v1/chat", body.clone()).await;
    assert_eq!(answer.route.model, "premium");
    let start = Instant::now();
    loop {
        let (answer, _) = chat_json(&harness, "/v1/chat", body.clone()).await;
        if answer.route.choice.rule == "budget" {
            assert_eq!(answer.route.model, "fast");
            assert!(
                answer.route.reason.contains("spend today"),
                "{}",
                answer.route.reason
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the budget never applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next day the budget is fresh.
    harness
        .relay
        .state()
        .limits()
        .clock()
        .advance(Duration::from_secs(86_400));
    let start = Instant::now();
    loop {
        let (answer, _) = chat_json(&harness, "/v1/chat", body.clone()).await;
        if answer.route.model == "premium" {
            assert_eq!(answer.route.choice.rule, "hint-quality");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the budget never reset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
