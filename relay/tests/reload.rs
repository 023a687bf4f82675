//! Configuration reload: a changed file is validated and its routing rules put in force at once
//! while an open stream finishes under the rules it started with; a file that changes the models
//! (prices, regions, a new default) is put in force with the targets it still declares kept as
//! they were; an invalid file, or one that changes what only a restart applies, is refused (409
//! `reload_refused`, saying why) and the running configuration stays.

mod common;

use common::*;
use fm_protocol::{ChatResponse, StreamEvent};
use fm_relay::RelayConfig;
use fm_relay::config::routing::{Conditions, RuleConfig};
use serde_json::{Value, json};

fn rule_to(model: &str) -> RuleConfig {
    RuleConfig {
        name: "hinted".into(),
        when: Conditions {
            hints: vec!["x".into()],
            ..Conditions::default()
        },
        models: vec![model.into()],
    }
}

fn write(path: &std::path::Path, config: &RelayConfig) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

/// Writes `config` to `file` and reloads: the refusal's message (the reload must be refused).
async fn refused(harness: &Harness, file: &std::path::Path, config: &RelayConfig) -> String {
    write(file, config);
    let (status, body) = reload(harness).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("reload_refused")),
        "{body}"
    );
    body["error"]["message"].as_str().unwrap().to_string()
}

/// The model the hinted request is answered by now.
async fn hinted_model(harness: &Harness) -> String {
    let answer: ChatResponse = harness
        .post("/v1/chat", hinted())
        .await
        .json()
        .await
        .unwrap();
    answer.route.model
}

async fn reload(harness: &Harness) -> (u16, Value) {
    let response = harness.post("/v1/admin/reload", "{}").await;
    (response.status().as_u16(), response.json().await.unwrap())
}

fn hinted() -> String {
    json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "x"}).to_string()
}

#[tokio::test]
async fn a_reload_applies_new_rules_while_open_streams_keep_theirs() {
    let dir = temp_dir("reload");
    let file = dir.join("relay.toml");
    let sim = fm_sim::spawn(sim_config()).await.unwrap();
    let mut config = relay_config(&sim);
    config.routing.rules = vec![rule_to("paced")];
    // Reloads by the endpoint only (the watch has its own test).
    config.server.watch_config_ms = 0;
    write(&file, &config);
    let config = RelayConfig::load(Some(&file)).unwrap();
    let relay = fm_relay::start(config.clone()).await.unwrap();
    let harness = Harness {
        relay,
        sim,
        http: http_client(),
    };

    // A stream under the first rules: `paced` takes seconds to answer.
    let stream = harness.post("/v1/chat/stream", hinted()).await;
    assert_eq!(stream.status(), 200);
    let mut stream = SseReader::new(stream);
    let Some(StreamEvent::Start { model, .. }) = stream.next_event().await else {
        panic!("no start event")
    };
    assert_eq!(model, "paced");

    // The file now sends the hint to `plain`: reloaded, in force for the next request.
    let mut changed = config.clone();
    changed.routing.rules = vec![rule_to("plain")];
    write(&file, &changed);
    let (status, body) = reload(&harness).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rules"], json!(["hinted"]));
    assert_eq!(hinted_model(&harness).await, "plain");

    // The open stream finishes under the rules it started with.
    let events = stream.rest().await;
    let Some(StreamEvent::Done { route, .. }) = events.last() else {
        panic!("the open stream did not finish: {events:?}")
    };
    assert_eq!(
        (route.model.as_str(), route.choice.rule.as_str()),
        ("paced", "hinted")
    );

    // An invalid file is refused, and the running rules stay.
    let mut invalid = changed.clone();
    invalid.routing.rules = vec![rule_to("no-such-model")];
    let message = refused(&harness, &file, &invalid).await;
    assert!(
        message.contains("no-such-model") && message.contains("kept"),
        "{message}"
    );
    assert_eq!(hinted_model(&harness).await, "plain");

    // So is a file that changes what only a restart applies.
    let mut restart = changed.clone();
    restart.timeouts.total_ms += 1;
    restart.routing.rules = vec![rule_to("paced")];
    let message = refused(&harness, &file, &restart).await;
    assert!(
        message.contains("[timeouts]") && message.contains("restart"),
        "{message}"
    );
    assert_eq!(hinted_model(&harness).await, "plain");

    // A file that is not TOML at all.
    std::fs::write(&file, "routing = [").unwrap();
    assert_eq!(reload(&harness).await.0, 409);
}

#[tokio::test]
async fn a_watched_file_is_reloaded_when_it_changes() {
    let dir = temp_dir("reload-watch");
    let file = dir.join("relay.toml");
    let sim = fm_sim::spawn(sim_config()).await.unwrap();
    let mut config = relay_config(&sim);
    config.routing.rules = vec![rule_to("paced")];
    config.server.watch_config_ms = 50;
    write(&file, &config);
    let config = RelayConfig::load(Some(&file)).unwrap();
    let relay = fm_relay::start(config.clone()).await.unwrap();
    let harness = Harness {
        relay,
        sim,
        http: http_client(),
    };
    assert_eq!(hinted_model(&harness).await, "paced");
    let mut changed = config.clone();
    changed.routing.rules = vec![rule_to("plain")];
    write(&file, &changed);
    // No signal, no endpoint: the watch sees the new file within a few of its checks.
    let start = std::time::Instant::now();
    while hinted_model(&harness).await != "plain" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the changed file was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // An invalid file is refused by the watch too, and the running rules stay.
    std::fs::write(&file, "routing = [").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(hinted_model(&harness).await, "plain");
}

#[tokio::test]
async fn a_relay_started_without_a_file_says_there_is_nothing_to_reload() {
    let harness = start().await;
    let (status, body) = reload(&harness).await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--config"),
        "{body}"
    );
}

/// The anonymous caller's spend on `model` today, in dollars.
async fn spent_on(harness: &Harness, model: &str) -> f64 {
    let usage: fm_protocol::KeyUsage = harness.get("/v1/usage").await.json().await.unwrap();
    usage
        .today_by_model
        .iter()
        .find(|m| m.model == model)
        .map_or(0.0, |m| m.totals.cost_usd)
}

/// `model`'s targets in `/v1/stats`: (region, calls).
async fn target_calls(harness: &Harness, model: &str) -> Vec<(String, u64)> {
    let stats: fm_protocol::StatsResponse = harness
        .get("/v1/stats?window_secs=600")
        .await
        .json()
        .await
        .unwrap();
    stats
        .models
        .iter()
        .find(|m| m.model == model)
        .unwrap_or_else(|| panic!("{model} not in {stats:?}"))
        .targets
        .iter()
        .map(|t| (t.region.clone(), t.calls))
        .collect()
}

#[tokio::test]
async fn a_reload_changes_the_models_and_keeps_the_targets_it_still_declares() {
    let dir = temp_dir("reload-models");
    let file = dir.join("relay.toml");
    let sim = fm_sim::spawn(sim_config()).await.unwrap();
    let mut config = relay_config(&sim);
    config.server.watch_config_ms = 0;
    write(&file, &config);
    let config = RelayConfig::load(Some(&file)).unwrap();
    let relay = fm_relay::start(config.clone()).await.unwrap();
    let harness = Harness {
        relay,
        sim,
        http: http_client(),
    };
    for model in ["plain", "plain", "paced"] {
        harness.chat(Some(model), "hi").await;
    }
    assert_eq!(
        target_calls(&harness, "plain").await,
        [("us-east-1".into(), 2)]
    );

    // The new file: `plain` costs ten times as much, `paced` moves to another region, a new
    // model `extra` is the default.
    let mut changed = config.clone();
    let plain = changed.models.iter_mut().find(|m| m.id == "plain").unwrap();
    plain.input_price_per_1k *= 10.0;
    plain.output_price_per_1k *= 10.0;
    let (input_price, output_price) = (plain.input_price_per_1k, plain.output_price_per_1k);
    changed
        .models
        .iter_mut()
        .find(|m| m.id == "paced")
        .unwrap()
        .region = "us-west-2".into();
    changed.models.push(model("extra", UPSTREAM.into()));
    changed.default_model = "extra".into();
    write(&file, &changed);
    let (status, body) = reload(&harness).await;
    assert_eq!(status, 200, "{body}");
    let targets = changed.models.len() as u64;
    assert_eq!(
        (body["targets_kept"].as_u64(), body["targets_new"].as_u64()),
        (Some(targets - 2), Some(2)),
        "{body}"
    );

    // The new default answers a request that names no model, and the listing says so.
    assert_eq!(harness.chat(None, "hi").await.model, "extra");
    let models: fm_protocol::ModelList = harness.get("/v1/models").await.json().await.unwrap();
    let extra = models.data.iter().find(|m| m.id == "extra").unwrap();
    assert!(extra.default, "{models:?}");
    // The kept target keeps its window; the moved one starts afresh in its new region.
    assert_eq!(
        target_calls(&harness, "plain").await,
        [("us-east-1".into(), 2)]
    );
    assert_eq!(
        target_calls(&harness, "paced").await,
        [("us-west-2".into(), 0)]
    );
    // The new prices are what the ledger charges.
    let before = spent_on(&harness, "plain").await;
    let answer = harness.chat(Some("plain"), "hi").await;
    let usage = answer.usage.unwrap();
    let expected = (f64::from(usage.input_tokens) * input_price
        + f64::from(usage.output_tokens) * output_price)
        / 1000.0;
    let charged = spent_on(&harness, "plain").await - before;
    assert!((charged - expected).abs() < 2e-6, "{charged} vs {expected}");

    // A key (in the keys file) that may use a model the new file drops: refused, as a restart
    // would be, and the running models stay.
    fm_relay::auth::keys_file::add(
        &changed.auth.keys_file,
        fm_relay::config::ApiKeyConfig {
            name: "team".into(),
            key_sha256: "ab".repeat(32),
            admin: false,
            revoked: false,
            models: vec!["extra".into()],
            routes: Vec::new(),
            limits: Default::default(),
        },
    )
    .unwrap();
    let mut dropped = changed.clone();
    dropped.models.retain(|m| m.id != "extra");
    dropped.default_model = "plain".into();
    let message = refused(&harness, &file, &dropped).await;
    assert!(
        message.contains("team") && message.contains("extra"),
        "{message}"
    );
    assert_eq!(harness.chat(None, "hi").await.model, "extra");
}
