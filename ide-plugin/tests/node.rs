//! The core compiled to WASM and run under Node (`cargo test -p fm-ide --target
//! wasm32-unknown-unknown --test node`: wasm-bindgen-test-runner runs a test file that does not
//! ask for a browser in Node): what JavaScript sees of request building and its validation
//! errors, the Markdown reader on every split of a sample stream, and an answer's cancel, error
//! and failover events, through the same exported functions the extension calls.
#![cfg(target_arch = "wasm32")]

use fm_ide::{IdeError, MarkdownBlocks, RelayClient, Session, Update};
use fm_protocol::{ErrorCode, RouteInfo, StopReason, StreamEvent, Timings};
use js_sys::{Function, Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

fn get(value: &JsValue, name: &str) -> JsValue {
    Reflect::get(value, &JsValue::from_str(name)).unwrap()
}

fn string(value: &JsValue, name: &str) -> String {
    get(value, name)
        .as_string()
        .unwrap_or_else(|| panic!("`{name}` is not a string"))
}

fn json(value: &JsValue) -> serde_json::Value {
    serde_json::from_str(&String::from(js_sys::JSON::stringify(value).unwrap())).unwrap()
}

#[wasm_bindgen_test]
fn a_question_about_a_selection_becomes_a_validated_request() {
    let context = serde_json::json!({
        "task": "ask",
        "question": "What does this return for an empty list?",
        "selection": "fn first(xs: &[i32]) -> i32 { xs[0] }",
        "fileText": "// header\nfn first(xs: &[i32]) -> i32 { xs[0] }\n// footer\n",
        "selectionStartLine": 1,
        "selectionEndLine": 1,
        "language": "rust",
        "path": "src/lib.rs",
        "routingHint": "fast",
    });
    let request: serde_json::Value =
        serde_json::from_str(&fm_ide::build_request(&context.to_string()).unwrap()).unwrap();
    let content = request["messages"][0]["content"].as_str().unwrap();
    assert!(content.contains("src/lib.rs"), "{content}");
    assert!(content.contains("```rust"), "{content}");
    assert!(
        content.contains("// header"),
        "the lines around it: {content}"
    );
    assert!(content.contains("What does this return"), "{content}");
    assert!(
        request["system"]
            .as_str()
            .unwrap()
            .contains("code assistant")
    );
    assert_eq!(request["routing_hint"], "fast");
}

#[wasm_bindgen_test]
fn a_context_the_assistant_cannot_use_throws_an_error_naming_the_field() {
    let cases = [
        (
            serde_json::json!({"task": "ask", "question": "  "}),
            "question",
        ),
        (
            serde_json::json!({"task": "fix", "question": "why?"}),
            "selection",
        ),
        (
            serde_json::json!({"task": "ask", "question": "q", "maxTokens": 0}),
            "max_tokens",
        ),
        (serde_json::json!({"task": "explain"}), "context"),
    ];
    for (context, field) in cases {
        let error = fm_ide::build_request(&context.to_string()).unwrap_err();
        assert!(
            error.is_instance_of::<js_sys::Error>(),
            "an Error for {context}"
        );
        assert_eq!(string(&error, "kind"), "invalid", "{context}");
        assert_eq!(string(&error, "field"), field, "{context}");
        assert_eq!(get(&error, "retryable"), JsValue::FALSE);
        assert!(!string(&error, "message").is_empty());
    }
}

const SAMPLE: &str = "Here is the fix:\n\n```rust\nfn first(xs: &[i32]) -> Option<i32> {\n    \
                      xs.first().copied()\n}\n```\nIt returns `None` for an empty slice.\n";

#[wasm_bindgen_test]
fn every_split_of_a_sample_stream_reads_into_the_same_blocks() {
    let whole = {
        let mut reader = MarkdownBlocks::new();
        reader.push(SAMPLE);
        reader.finish();
        json(&reader.blocks())
    };
    assert_eq!(whole.as_array().unwrap().len(), 3, "{whole}");
    assert_eq!(whole[1]["kind"], "code");
    assert_eq!(whole[1]["language"], "rust");
    assert_eq!(whole[1]["complete"], true);
    assert!(!whole[1]["text"].as_str().unwrap().contains("```"));
    let boundaries: Vec<usize> = SAMPLE.char_indices().map(|(i, _)| i).collect();
    for &first in &boundaries {
        for &second in boundaries.iter().filter(|&&b| b >= first).step_by(7) {
            let mut reader = MarkdownBlocks::new();
            let mut code_complete_early = false;
            for piece in [&SAMPLE[..first], &SAMPLE[first..second], &SAMPLE[second..]] {
                let changed = json(&reader.push(piece));
                for block in changed.as_array().unwrap() {
                    assert!(
                        !block["text"].as_str().unwrap().contains("```"),
                        "a fence shown as code at {first}/{second}: {block}"
                    );
                    code_complete_early |= block["kind"] == "code" && block["complete"] == true;
                }
            }
            reader.finish();
            assert_eq!(
                json(&reader.blocks()),
                whole,
                "split at {first} and {second}"
            );
            assert!(
                code_complete_early || second > SAMPLE.find("}\n```\n").unwrap() + 5,
                "the code block is complete as soon as its fence closed ({first}/{second})"
            );
        }
    }
}

fn done_event() -> StreamEvent {
    StreamEvent::Done {
        stop_reason: StopReason::EndTurn,
        usage: None,
        timings: Timings {
            ttft_ms: Some(90.0),
            total_ms: 400.0,
        },
        route: RouteInfo {
            model: "claude-3-5-haiku".into(),
            provider: "bedrock".into(),
            region: "us-east-1".into(),
            source: fm_protocol::ResponseSource::Primary,
            attempts: 1,
            reason: "the default model".into(),
            choice: Default::default(),
        },
        degraded: false,
    }
}

#[wasm_bindgen_test]
fn a_failover_that_discards_the_partial_text_starts_the_answer_again() {
    let mut session = Session::new(0.0);
    session
        .handle(
            StreamEvent::TextDelta {
                text: "Half an ans".into(),
            },
            100.0,
        )
        .unwrap();
    let update = session
        .handle(
            StreamEvent::Failover {
                model: "claude-3-haiku".into(),
                region: "us-west-2".into(),
                reason: "the stream broke".into(),
                discard_partial: true,
            },
            150.0,
        )
        .unwrap();
    assert!(
        matches!(
            update,
            Some(Update::Failover {
                discard_partial: true,
                ..
            })
        ),
        "{update:?}"
    );
    assert_eq!(session.text(), "", "the partial text is dropped");
    session
        .handle(
            StreamEvent::TextDelta {
                text: "Whole.".into(),
            },
            200.0,
        )
        .unwrap();
    let Some(Update::Done(summary)) = session.handle(done_event(), 300.0).unwrap() else {
        panic!("done");
    };
    assert_eq!(summary.text, "Whole.");
    assert_eq!(summary.ttft_ms, Some(100.0), "measured from the request");
}

#[wasm_bindgen_test]
fn an_error_event_ends_the_answer_with_the_relays_typed_error() {
    let mut session = Session::new(0.0);
    let err = session
        .handle(
            StreamEvent::Error {
                code: ErrorCode::UpstreamThrottled,
                message: "slow down".into(),
                retryable: true,
            },
            10.0,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        IdeError::Relay {
            code: ErrorCode::UpstreamThrottled,
            retryable: true,
            ..
        }
    ));
    let js = JsValue::from(err);
    assert_eq!(string(&js, "kind"), "relay");
    assert_eq!(string(&js, "code"), "upstream_throttled");
    assert_eq!(get(&js, "retryable"), JsValue::TRUE);
    // Nothing after the end, not even a cancel.
    assert_eq!(session.handle(done_event(), 20.0).unwrap(), None);
    assert_eq!(session.cancel(), None);
}

fn relay_client(base_url: &str) -> RelayClient {
    let options = Object::new();
    Reflect::set(&options, &"baseUrl".into(), &base_url.into()).unwrap();
    RelayClient::new(&options).unwrap()
}

/// Callbacks that record what they were called with, in `log`.
fn recording_callbacks(log: &js_sys::Array) -> Object {
    let callbacks = Object::new();
    for name in ["onStart", "onDelta", "onFailover", "onDone", "onError"] {
        let record = Function::new_with_args("log, value", &format!("log.push(['{name}', value])"))
            .bind1(&JsValue::NULL, log);
        Reflect::set(&callbacks, &name.into(), &record).unwrap();
    }
    callbacks
}

fn request() -> String {
    fm_ide::build_request(r#"{"task": "ask", "question": "Why?"}"#).unwrap()
}

#[wasm_bindgen_test]
async fn cancel_ends_the_answer_at_once_with_a_cancelled_error() {
    // Nothing listens on port 9: the fetch is still pending or failing when the cancel comes.
    let log = js_sys::Array::new();
    let answer = relay_client("http://127.0.0.1:9")
        .start(&request(), &recording_callbacks(&log))
        .unwrap();
    answer.cancel();
    assert_eq!(log.length(), 1, "onError at once");
    let entry = log.get(0);
    assert_eq!(js_sys::Reflect::get_u32(&entry, 0).unwrap(), "onError");
    assert_eq!(
        string(&js_sys::Reflect::get_u32(&entry, 1).unwrap(), "kind"),
        "cancelled"
    );
    let outcome = JsFuture::from(answer.finished()).await.unwrap();
    assert_eq!(get(&outcome, "ok"), JsValue::FALSE);
    assert_eq!(string(&get(&outcome, "error"), "kind"), "cancelled");
    assert_eq!(
        log.length(),
        1,
        "the transport's failure after the cancel is not reported"
    );
    answer.cancel();
    assert_eq!(log.length(), 1, "a second cancel reports nothing");
}

#[wasm_bindgen_test]
async fn an_unreachable_relay_is_a_retryable_network_error() {
    let log = js_sys::Array::new();
    let answer = relay_client("http://127.0.0.1:9")
        .start(&request(), &recording_callbacks(&log))
        .unwrap();
    let outcome = JsFuture::from(answer.finished()).await.unwrap();
    assert_eq!(get(&outcome, "ok"), JsValue::FALSE);
    let error = get(&outcome, "error");
    assert_eq!(string(&error, "kind"), "network");
    assert_eq!(get(&error, "retryable"), JsValue::TRUE);
    assert_eq!(log.length(), 1, "exactly one end: {:?}", json(&log));
}

#[wasm_bindgen_test]
fn a_client_without_a_relay_url_or_with_an_unknown_transport_is_refused() {
    let refused = |options: serde_json::Value| {
        let options = js_sys::JSON::parse(&options.to_string()).unwrap();
        let error = RelayClient::new(&options).unwrap_err();
        (string(&error, "kind"), string(&error, "field"))
    };
    assert_eq!(
        refused(serde_json::json!({})),
        ("invalid".into(), "baseUrl".into())
    );
    assert_eq!(
        refused(serde_json::json!({"baseUrl": "ftp://x"})),
        ("invalid".into(), "baseUrl".into())
    );
    assert_eq!(
        refused(serde_json::json!({"baseUrl": "http://x", "transport": "carrier-pigeon"})),
        ("invalid".into(), "transport".into())
    );
    let bad_request = relay_client("http://127.0.0.1:9")
        .start(r#"{"messages": []}"#, &Object::new())
        .unwrap_err();
    assert_eq!(string(&bad_request, "kind"), "invalid");
    assert_eq!(string(&bad_request, "field"), "messages");
    let _ = JsCast::dyn_ref::<js_sys::Error>(&bad_request).expect("an Error");
}
