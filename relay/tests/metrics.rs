//! `GET /metrics` read by the reference OpenMetrics parser (the Python `prometheus_client`
//! package, installed into `.venv` by `scripts/setup.sh`): every family parses, the histograms
//! are whole (cumulative buckets that end at `+Inf` = `_count`), and the routing and spend
//! counters count what the requests did.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use fm_relay::config::routing::{Conditions, RuleConfig};
use serde_json::{Value, json};

/// The workspace's `.venv` Python (`FM_PYTHON` overrides it).
fn python() -> PathBuf {
    std::env::var_os("FM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// One sample: its name, labels and value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses `text` with the reference parser: each family's type and samples.
fn parse(text: &str) -> HashMap<String, (String, Vec<Sample>)> {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it makes the tests' Python virtualenv)",
        python.display()
    );
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = [family.type, [[s.name, s.labels, s.value] for s in family.samples]]
print(json.dumps(families))
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    parsed
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, family)| {
            let samples = family[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (
                        s[0].as_str().unwrap().to_string(),
                        labels,
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect();
            (
                name.clone(),
                (family[0].as_str().unwrap().to_string(), samples),
            )
        })
        .collect()
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_whole_histograms() {
    let harness = start_with(sim_config(), |config| {
        config.routing.rules = vec![RuleConfig {
            name: "hint-fast".into(),
            when: Conditions {
                hints: vec!["fast".into()],
                ..Conditions::default()
            },
            models: vec!["plain".into()],
        }];
        let throttled = config
            .models
            .iter_mut()
            .find(|m| m.id == "throttle")
            .unwrap();
        throttled.fallback_models = vec!["plain".into()];
    })
    .await;
    for _ in 0..3 {
        harness.chat(None, "hello").await;
    }
    let hinted = json!({"messages": [{"role": "user", "content": "hi"}], "routing_hint": "fast"});
    assert_eq!(
        harness.post("/v1/chat", hinted.to_string()).await.status(),
        200
    );
    let stream = harness
        .post("/v1/chat/stream", chat_body(None, "a stream"))
        .await;
    sse_events(stream).await;
    // A throttled model answered by its fallback, and an unavailable one that ends in an error.
    harness.chat(Some("throttle"), "hi").await;
    harness
        .post("/v1/chat", chat_body(Some("unavailable"), "hi"))
        .await;

    let families = parse(&harness.metrics().await);
    for (name, kind) in [
        ("fm_relay_ttft_seconds", "histogram"),
        ("fm_relay_request_duration_seconds", "histogram"),
        ("fm_relay_tokens", "histogram"),
        ("fm_relay_attempts", "histogram"),
        ("fm_relay_route_decisions", "counter"),
        ("fm_relay_fallbacks", "counter"),
        ("fm_relay_cost_usd", "counter"),
        ("fm_relay_requests", "counter"),
        ("fm_relay_circuit_state", "gauge"),
        ("fm_relay_connections_open", "gauge"),
    ] {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {families:?}"));
        assert_eq!(family.0, kind, "{name}");
    }
    // Every histogram series: cumulative buckets, the last `+Inf` and equal to `_count`.
    for (name, (kind, samples)) in &families {
        if kind != "histogram" {
            continue;
        }
        let mut series: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        let mut counts: HashMap<String, f64> = HashMap::new();
        for (sample, labels, value) in samples {
            let mut key: Vec<_> = labels.iter().filter(|(k, _)| *k != "le").collect();
            key.sort();
            let key = format!("{key:?}");
            if sample.ends_with("_bucket") {
                let le = labels["le"].replace("+Inf", "inf").parse::<f64>().unwrap();
                series.entry(key).or_default().push((le, *value));
            } else if sample.ends_with("_count") {
                counts.insert(key, *value);
            }
        }
        for (key, buckets) in series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name} {key}: {buckets:?}"
            );
            let last = buckets.last().unwrap();
            assert!(
                last.0.is_infinite() && Some(&last.1) == counts.get(&key),
                "{name} {key}"
            );
        }
    }
    let value = |family: &str, sample: &str, want: &[(&str, &str)]| -> f64 {
        families[family]
            .1
            .iter()
            .filter(|(name, labels, _)| {
                name == sample
                    && want
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| value)
            .sum()
    };
    let decisions = "fm_relay_route_decisions_total";
    assert_eq!(
        value(
            "fm_relay_route_decisions",
            decisions,
            &[("rule", "default")]
        ),
        4.0
    );
    assert_eq!(
        value(
            "fm_relay_route_decisions",
            decisions,
            &[("rule", "hint-fast")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "fm_relay_route_decisions",
            decisions,
            &[("rule", "explicit-model")]
        ),
        2.0
    );
    let fallbacks = "fm_relay_fallbacks_total";
    assert_eq!(
        value(
            "fm_relay_fallbacks",
            fallbacks,
            &[("reason", "fallback_model")]
        ),
        1.0
    );
    // Six answers from `plain` (five one-shot, one of them the fallback's, and one stream), one
    // error from `unavailable`.
    let durations = "fm_relay_request_duration_seconds_count";
    assert_eq!(
        value(
            "fm_relay_request_duration_seconds",
            durations,
            &[("model", "plain"), ("outcome", "ok")]
        ),
        6.0
    );
    assert_eq!(
        value(
            "fm_relay_request_duration_seconds",
            durations,
            &[("model", "unavailable"), ("outcome", "error")]
        ),
        1.0
    );
    let attempts = "fm_relay_attempts_sum";
    assert!(value("fm_relay_attempts", attempts, &[("model", "plain")]) >= 7.0);
    assert_eq!(
        value(
            "fm_relay_ttft_seconds",
            "fm_relay_ttft_seconds_count",
            &[("model", "plain")]
        ),
        1.0
    );
    assert!(
        value(
            "fm_relay_cost_usd",
            "fm_relay_cost_usd_total",
            &[("model", "plain")]
        ) > 0.0
    );
    assert_eq!(
        value(
            "fm_relay_tokens",
            "fm_relay_tokens_count",
            &[("model", "plain"), ("kind", "output")]
        ),
        6.0
    );
}
