//! Outside input that is not what it should be, for the relay's own parsers: request bodies of
//! any shape — JSON near each surface's request, and bytes that are not JSON — sent to every
//! surface that reads one (each is served, or answered with a 4xx JSON error; never a 5xx, a
//! panic or a dropped connection), the config loader fed mutations of the embedded default file,
//! and request extraction fed arbitrary bytes. The upstream's stream readers have their own
//! properties beside them (`provider::openai`, `provider::bedrock`); the AWS event-stream framing
//! the Bedrock provider reads is the AWS SDK's.
//!
//! Each property runs proptest's default 256 cases in the test command; a longer run:
//! `PROPTEST_CASES=20000 cargo test --release -p fm-relay --test hostile_input`.

mod common;

use fm_relay::RelayConfig;
use fm_relay::api::extract::parse_json;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};

/// The paths that read a JSON body, one per surface, each with a request it serves.
const SURFACES: &[(&str, &str)] = &[
    (
        "/v1/chat",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1/chat/stream",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1/route/explain",
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1/chat/completions",
        r#"{"model":"plain","messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/v1/messages",
        r#"{"model":"plain","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
    ),
    (
        "/model/plain/converse",
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    ),
    (
        "/model/plain/converse-stream",
        r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#,
    ),
    (
        "/model/plain/invoke",
        r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
    ),
];

/// JSON of any shape whose keys and leaves are often what the surfaces look for.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("messages"),
        Just("role"),
        Just("content"),
        Just("text"),
        Just("type"),
        Just("model"),
        Just("system"),
        Just("max_tokens"),
        Just("temperature"),
        Just("stream"),
        Just("stream_options"),
        Just("include_usage"),
        Just("n"),
        Just("tools"),
        Just("tool_choice"),
        Just("tool_calls"),
        Just("tool_call_id"),
        Just("toolUse"),
        Just("toolResult"),
        Just("toolConfig"),
        Just("inferenceConfig"),
        Just("maxTokens"),
        Just("function"),
        Just("name"),
        Just("arguments"),
        Just("input"),
        Just("input_schema"),
        Just("response_format"),
        Just("anthropic_version"),
        Just("x"),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u32..5000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from("user")),
        Just(Value::from("assistant")),
        Just(Value::from("tool")),
        Just(Value::from("plain")),
        Just(Value::from("auto")),
        Just(Value::from("text")),
        Just(Value::from("json_object")),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..7).prop_map(|map| {
                Value::Object(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// One change to a request: a top-level field set or removed, the first message's field set,
/// a message added, or the first message's content replaced.
#[derive(Debug, Clone)]
enum Mutation {
    Set(&'static str, Value),
    Remove(&'static str),
    SetInMessage(&'static str, Value),
    AddMessage(Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let key = prop::sample::select(vec![
        "messages",
        "model",
        "system",
        "max_tokens",
        "temperature",
        "stream",
        "n",
        "tools",
        "tool_choice",
        "response_format",
        "stop",
        "top_p",
        "inferenceConfig",
        "toolConfig",
        "anthropic_version",
        "routing_hint",
        "role",
        "content",
        "tool_calls",
        "x",
    ]);
    prop_oneof![
        (key.clone(), json_value()).prop_map(|(key, value)| Mutation::Set(key, value)),
        key.clone().prop_map(Mutation::Remove),
        (key, json_value()).prop_map(|(key, value)| Mutation::SetInMessage(key, value)),
        json_value().prop_map(Mutation::AddMessage),
    ]
}

/// `base` with `mutations` applied.
fn mutated(base: &str, mutations: &[Mutation]) -> Value {
    let mut body: Value = serde_json::from_str(base).unwrap();
    for mutation in mutations {
        let object = body.as_object_mut().unwrap();
        match mutation {
            Mutation::Set(key, value) => {
                object.insert(key.to_string(), value.clone());
            }
            Mutation::Remove(key) => {
                object.remove(*key);
            }
            Mutation::SetInMessage(key, value) => {
                if let Some(Value::Object(first)) = object
                    .get_mut("messages")
                    .and_then(|messages| messages.get_mut(0))
                {
                    first.insert(key.to_string(), value.clone());
                }
            }
            Mutation::AddMessage(value) => {
                if let Some(Value::Array(messages)) = object.get_mut("messages") {
                    messages.push(value.clone());
                }
            }
        }
    }
    body
}

/// A surface and a body for it: its request changed in a few places (none, at times: then it is
/// served), or, now and then, bytes that may not be JSON at all.
fn surface_and_body() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let surface = prop::sample::select(SURFACES);
    prop_oneof![
        8 => (surface.clone(), prop::collection::vec(mutation(), 0..3)).prop_map(
            |((path, base), mutations)| (path, mutated(base, &mutations).to_string().into_bytes())
        ),
        1 => (surface, prop::collection::vec(any::<u8>(), 0..256))
            .prop_map(|((path, _), bytes)| (path, bytes)),
    ]
}

#[test]
fn request_bodies_of_any_shape_get_an_answer_or_a_4xx_on_every_surface() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let harness = runtime.block_on(common::start());
    // (No regression file: the runner is not the macro's, so it has no source file to put it by.)
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let served = AtomicU32::new(0);
    let refused = AtomicU32::new(0);
    let outcome = runner.run(&surface_and_body(), |(path, body)| {
        let (status, answer) = runtime.block_on(async {
            let response = harness
                .http
                .post(harness.url(path))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("the relay answered");
            let status = response.status();
            (status, response.bytes().await.expect("the whole answer"))
        });
        let shown = String::from_utf8_lossy(&body);
        prop_assert!(
            status.is_success() || status.is_client_error(),
            "{path} answered {status} to {shown}: {}",
            String::from_utf8_lossy(&answer)
        );
        let counter = if status.is_success() {
            &served
        } else {
            &refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if status.is_client_error() {
            prop_assert!(
                serde_json::from_slice::<Value>(&answer).is_ok(),
                "{path}'s {status} to {shown} is not JSON: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    });
    runtime.block_on(async move { drop(harness) });
    outcome.unwrap();
    // The generator reaches both: requests served (the checks past parsing, the model call) and
    // requests refused.
    assert!(served.into_inner() > 0 && refused.into_inner() > 0);
}

/// The embedded default file with lines dropped, repeated or cut short, and bytes replaced.
fn mutated_config() -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = fm_relay::config::DEFAULT_CONFIG_TOML.lines().collect();
    let count = lines.len();
    (
        prop::collection::vec((0..count, 0u8..4, any::<u8>(), 0usize..80), 1..8),
        prop::sample::select(vec![
            "",
            "x",
            "-1",
            "1e400",
            "\"",
            "[",
            "[[models]]",
            "99999999999999999999",
        ]),
    )
        .prop_map(move |(edits, splice)| {
            let mut lines: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
            for (index, kind, byte, at) in edits {
                let index = index % lines.len().max(1);
                let Some(line) = lines.get_mut(index) else {
                    continue;
                };
                let at = (0..=at.min(line.len()))
                    .rev()
                    .find(|at| line.is_char_boundary(*at))
                    .unwrap_or(0);
                match kind {
                    0 => line.truncate(at),
                    1 => line.insert_str(at, splice),
                    2 => line.insert(at, char::from(byte)),
                    _ => {
                        let copy = line.clone();
                        lines.insert(index, copy);
                    }
                }
            }
            lines.join("\n")
        })
}

proptest! {
    #[test]
    fn the_config_loader_reads_any_mutation_of_the_default_without_panic(text in mutated_config()) {
        // A valid file or an error that says where; never a panic.
        if let Err(err) = RelayConfig::from_toml(&text, "mutated.toml") {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn request_extraction_of_any_bytes_is_a_request_or_a_client_error(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Err(err) = parse_json::<fm_protocol::ChatRequest>(&bytes) {
            prop_assert!(err.status().is_client_error(), "{err}");
        }
    }
}
