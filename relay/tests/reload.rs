//! Configuration reload: a changed file is validated and its routing rules put in force at once
//! while an open stream finishes under the rules it started with; an invalid file, or one that
//! changes what only a restart applies, is refused (409 `reload_refused`, saying why) and the
//! running rules stay.

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
