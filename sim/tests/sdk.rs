//! The real `aws-sdk-bedrockruntime` client against fm-sim: all four operations, every typed
//! error before the stream and inside it, stalls, cuts, and cancellation seen by the simulator.

use std::time::Duration;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::operation::converse_stream::{
    ConverseStreamError, ConverseStreamOutput as ConverseStreamResponse,
};
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::error::{ConverseStreamOutputError, ResponseStreamError};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseStreamOutput, InferenceConfiguration, Message,
    ResponseStream, StopReason,
};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use fm_sim::{FaultRule, SimConfig, SimHandle};

/// Whether an SDK error is the expected variant.
type IsError<E> = fn(&E) -> bool;

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const PROMPT: &str = "Explain what a relay does.";

async fn sim() -> SimHandle {
    fm_sim::spawn(SimConfig::instant()).await.unwrap()
}

fn client(sim: &SimHandle) -> Client {
    client_in(sim, "us-east-1")
}

/// A client that signs its requests for `region`.
fn client_in(sim: &SimHandle, region: &'static str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(sim.endpoint_url())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .retry_partition(RetryPartition::new(format!("sim-test-{}", fastrand_id())))
        .build();
    Client::from_conf(config)
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn user(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.into()))
        .build()
        .unwrap()
}

fn anthropic_body(max_tokens: u32) -> Blob {
    Blob::new(
        serde_json::to_vec(&serde_json::json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        }))
        .unwrap(),
    )
}

async fn converse_text(client: &Client, model: &str, max_tokens: i32) -> (String, StopReason, i32) {
    let output = client
        .converse()
        .model_id(model)
        .messages(user(PROMPT))
        .inference_config(
            InferenceConfiguration::builder()
                .max_tokens(max_tokens)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let message = output.output().unwrap().as_message().unwrap();
    let text = message.content()[0].as_text().unwrap().clone();
    let usage = output.usage().unwrap();
    assert_eq!(
        usage.total_tokens(),
        usage.input_tokens() + usage.output_tokens()
    );
    (text, output.stop_reason().clone(), usage.output_tokens())
}

/// The service error of a Converse call of the test prompt that must fail.
async fn converse_error(client: &Client, model: &str) -> ConverseError {
    client
        .converse()
        .model_id(model)
        .messages(user(PROMPT))
        .send()
        .await
        .unwrap_err()
        .into_service_error()
}

/// Starts a ConverseStream of the test prompt.
async fn open_stream(client: &Client, model: &str) -> ConverseStreamResponse {
    client
        .converse_stream()
        .model_id(model)
        .messages(user(PROMPT))
        .send()
        .await
        .unwrap()
}

/// Collects a ConverseStream: text, stop reason, output tokens, and the in-stream error if any.
async fn converse_stream(
    client: &Client,
    model: &str,
) -> (
    String,
    Option<StopReason>,
    Option<i32>,
    Option<ConverseStreamOutputError>,
) {
    let mut output = open_stream(client, model).await;
    let (mut text, mut stop, mut tokens) = (String::new(), None, None);
    loop {
        match output.stream.recv().await {
            Ok(Some(ConverseStreamOutput::ContentBlockDelta(delta))) => {
                text.push_str(delta.delta().unwrap().as_text().unwrap());
            }
            Ok(Some(ConverseStreamOutput::MessageStop(message_stop))) => {
                stop = Some(message_stop.stop_reason().clone());
            }
            Ok(Some(ConverseStreamOutput::Metadata(metadata))) => {
                tokens = metadata.usage().map(|u| u.output_tokens());
            }
            Ok(Some(_)) => {}
            Ok(None) => return (text, stop, tokens, None),
            Err(err) => return (text, stop, tokens, Some(err.into_service_error())),
        }
    }
}

#[tokio::test]
async fn converse_and_converse_stream_give_the_same_deterministic_answer() {
    let sim = sim().await;
    let client = client(&sim);
    let (text, stop, tokens) = converse_text(&client, MODEL, 1024).await;
    assert_eq!(stop, StopReason::EndTurn);
    assert!((40..=160).contains(&tokens), "{tokens}");
    assert!(text.split(' ').count() >= 40, "{text}");
    assert_eq!(converse_text(&client, MODEL, 1024).await.0, text);

    let (streamed, stream_stop, stream_tokens, error) = converse_stream(&client, MODEL).await;
    assert!(error.is_none());
    assert_eq!(streamed, text);
    assert_eq!(stream_stop, Some(StopReason::EndTurn));
    assert_eq!(stream_tokens, Some(tokens));

    let (short, short_stop, short_tokens) = converse_text(&client, MODEL, 7).await;
    assert_eq!(short_stop, StopReason::MaxTokens);
    assert_eq!(short_tokens, 7);
    assert!(text.starts_with(&short));
}

#[tokio::test]
async fn invoke_and_invoke_stream_speak_anthropic_messages() {
    let sim = sim().await;
    let client = client(&sim);
    let output = client
        .invoke_model()
        .model_id(MODEL)
        .content_type("application/json")
        .body(anthropic_body(1024))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(output.body().as_ref()).unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["stop_reason"], "end_turn");
    let text = body["content"][0]["text"].as_str().unwrap().to_string();
    // The same prompt through Converse gives the same answer.
    assert_eq!(converse_text(&client, MODEL, 1024).await.0, text);

    let mut stream = client
        .invoke_model_with_response_stream()
        .model_id(MODEL)
        .content_type("application/json")
        .body(anthropic_body(1024))
        .send()
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let mut streamed = String::new();
    while let Some(event) = stream.body.recv().await.unwrap() {
        let ResponseStream::Chunk(part) = event else {
            panic!("unexpected event {event:?}")
        };
        let json: serde_json::Value =
            serde_json::from_slice(part.bytes().unwrap().as_ref()).unwrap();
        let kind = json["type"].as_str().unwrap().to_string();
        if kind == "content_block_delta" {
            streamed.push_str(json["delta"]["text"].as_str().unwrap());
        }
        if kind == "message_delta" {
            assert_eq!(json["delta"]["stop_reason"], "end_turn");
        }
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
}

#[tokio::test]
async fn pre_stream_faults_raise_the_sdk_typed_errors() {
    let sim = sim().await;
    let client = client(&sim);
    let cases: [(&str, IsError<ConverseError>, IsError<ConverseStreamError>); 7] = [
        (
            "throttle",
            |e| matches!(e, ConverseError::ThrottlingException(_)),
            |e| matches!(e, ConverseStreamError::ThrottlingException(_)),
        ),
        (
            "unavailable",
            |e| matches!(e, ConverseError::ServiceUnavailableException(_)),
            |e| matches!(e, ConverseStreamError::ServiceUnavailableException(_)),
        ),
        (
            "internal",
            |e| matches!(e, ConverseError::InternalServerException(_)),
            |e| matches!(e, ConverseStreamError::InternalServerException(_)),
        ),
        (
            "model-timeout",
            |e| matches!(e, ConverseError::ModelTimeoutException(_)),
            |e| matches!(e, ConverseStreamError::ModelTimeoutException(_)),
        ),
        (
            "not-ready",
            |e| matches!(e, ConverseError::ModelNotReadyException(_)),
            |e| matches!(e, ConverseStreamError::ModelNotReadyException(_)),
        ),
        (
            "validation",
            |e| matches!(e, ConverseError::ValidationException(_)),
            |e| matches!(e, ConverseStreamError::ValidationException(_)),
        ),
        (
            "not-found",
            |e| matches!(e, ConverseError::ResourceNotFoundException(_)),
            |e| matches!(e, ConverseStreamError::ResourceNotFoundException(_)),
        ),
    ];
    for (fault, is_converse_error, is_stream_error) in cases {
        let model = format!("{MODEL}~{fault}");
        let err = converse_error(&client, &model).await;
        assert!(is_converse_error(&err), "{fault}: {err:?}");
        let err = client
            .converse_stream()
            .model_id(&model)
            .messages(user(PROMPT))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(is_stream_error(&err), "{fault}: {err:?}");
    }
    let err = client
        .invoke_model()
        .model_id(format!("{MODEL}~throttle"))
        .body(anthropic_body(10))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, InvokeModelError::ThrottlingException(_)),
        "{err:?}"
    );
    assert_eq!(sim.stats().errors, 15);
}

#[tokio::test]
async fn the_fault_header_works_like_the_model_suffix() {
    let sim = sim().await;
    let client = client(&sim);
    let err = client
        .converse()
        .model_id(MODEL)
        .messages(user(PROMPT))
        .customize()
        .mutate_request(|request| {
            request
                .headers_mut()
                .insert(fm_sim::FAULT_HEADER, "unavailable");
        })
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, ConverseError::ServiceUnavailableException(_)),
        "{err:?}"
    );
    assert_eq!(sim.stats().recent[0].fault.as_deref(), Some("unavailable"));
}

#[tokio::test]
async fn in_stream_exceptions_arrive_after_the_text_sent_before_them() {
    let sim = sim().await;
    let client = client(&sim);
    let (full, ..) = converse_text(&client, MODEL, 1024).await;
    let cases: [(&str, IsError<ConverseStreamOutputError>); 5] = [
        ("stream-throttle@3", |e| {
            matches!(e, ConverseStreamOutputError::ThrottlingException(_))
        }),
        ("stream-error@3", |e| {
            matches!(e, ConverseStreamOutputError::ModelStreamErrorException(_))
        }),
        ("stream-internal@3", |e| {
            matches!(e, ConverseStreamOutputError::InternalServerException(_))
        }),
        ("stream-unavailable@3", |e| {
            matches!(e, ConverseStreamOutputError::ServiceUnavailableException(_))
        }),
        ("stream-validation@3", |e| {
            matches!(e, ConverseStreamOutputError::ValidationException(_))
        }),
    ];
    for (fault, is_expected) in cases {
        let (text, stop, _, error) = converse_stream(&client, &format!("{MODEL}~{fault}")).await;
        let error = error.unwrap_or_else(|| panic!("{fault}: no error"));
        assert!(is_expected(&error), "{fault}: {error:?}");
        assert_eq!(stop, None, "{fault}");
        let first_three: String = full.split_inclusive(' ').take(3).collect();
        assert_eq!(text, first_three.trim_end(), "{fault}");
    }

    let mut stream = client
        .invoke_model_with_response_stream()
        .model_id(format!("{MODEL}~stream-throttle@1"))
        .body(anthropic_body(100))
        .send()
        .await
        .unwrap();
    let err = loop {
        match stream.body.recv().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without the exception"),
            Err(err) => break err.into_service_error(),
        }
    };
    assert!(
        matches!(err, ResponseStreamError::ThrottlingException(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cut_stream_ends_without_its_closing_events() {
    let sim = sim().await;
    let client = client(&sim);
    let (text, stop, tokens, error) = converse_stream(&client, &format!("{MODEL}~cut@5")).await;
    assert!(error.is_none());
    assert_eq!((stop, tokens), (None, None));
    assert_eq!(text.split_inclusive(' ').count(), 5);
}

#[tokio::test]
async fn a_stalled_stream_goes_quiet_and_the_sim_sees_the_client_leave() {
    let sim = sim().await;
    let client = client(&sim);
    let mut output = open_stream(&client, &format!("{MODEL}~stall@2")).await;
    let mut deltas = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), output.stream.recv()).await {
            Ok(Ok(Some(ConverseStreamOutput::ContentBlockDelta(_)))) => deltas += 1,
            Ok(Ok(Some(_))) => {}
            Ok(other) => panic!("stream ended instead of stalling: {other:?}"),
            Err(_elapsed) => break,
        }
    }
    assert_eq!(deltas, 2);
    assert_eq!(sim.stats().streams_cancelled, 0);
    drop(output);
    let mut waited = 0;
    while sim.stats().streams_cancelled == 0 {
        assert!(waited < 200, "the simulator never saw the client leave");
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    let stats = sim.stats();
    assert_eq!((stats.streams_started, stats.streams_completed), (1, 0));
}

#[tokio::test]
async fn invalid_bodies_are_validation_exceptions() {
    let sim = sim().await;
    let client = client(&sim);
    let assistant_first = Message::builder()
        .role(ConversationRole::Assistant)
        .content(ContentBlock::Text("hello".into()))
        .build()
        .unwrap();
    let err = client
        .converse()
        .model_id(MODEL)
        .messages(assistant_first)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, ConverseError::ValidationException(_)),
        "{err:?}"
    );
    let err = client
        .invoke_model()
        .model_id(MODEL)
        .body(Blob::new(
            &br#"{"anthropic_version":"bedrock-2023-05-31","messages":[]}"#[..],
        ))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(&err, InvokeModelError::ValidationException(e) if e.message().unwrap_or_default().contains("max_tokens")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_limited_fault_applies_to_the_first_requests_only() {
    let sim = sim().await;
    let client = client(&sim);
    let model = format!("{MODEL}~throttle*2");
    for _ in 0..2 {
        let err = converse_error(&client, &model).await;
        assert!(
            matches!(err, ConverseError::ThrottlingException(_)),
            "{err:?}"
        );
    }
    let (text, ..) = converse_text(&client, &model, 1024).await;
    assert!(!text.is_empty());
    let stats = sim.stats();
    assert_eq!((stats.requests, stats.errors), (3, 2));
}

#[tokio::test]
async fn a_corrupt_frame_fails_the_stream_in_the_sdk() {
    let sim = sim().await;
    let client = client(&sim);
    let mut output = open_stream(&client, &format!("{MODEL}~garbage@2")).await;
    let mut deltas = 0;
    let err = loop {
        match output.stream.recv().await {
            Ok(Some(ConverseStreamOutput::ContentBlockDelta(_))) => deltas += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an error"),
            Err(err) => break err,
        }
    };
    assert_eq!(deltas, 2);
    assert!(err.as_service_error().is_none(), "{err:?}");
}

#[tokio::test]
async fn scheduled_faults_hit_their_region_only() {
    let sim = sim().await;
    sim.set_faults(vec![
        FaultRule::always("throttle".parse().unwrap()).in_region("us-east-1"),
    ])
    .unwrap();
    let east = client_in(&sim, "us-east-1")
        .converse()
        .model_id(MODEL)
        .messages(user(PROMPT))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(east, ConverseError::ThrottlingException(_)),
        "{east:?}"
    );
    let (text, _, _) = converse_text(&client_in(&sim, "us-west-2"), MODEL, 64).await;
    assert!(!text.is_empty());
    let stats = sim.stats();
    assert_eq!(stats.requests_by_region["us-east-1"], 1);
    assert_eq!(stats.requests_by_region["us-west-2"], 1);
    assert_eq!(stats.recent[0].region.as_deref(), Some("us-east-1"));
    assert_eq!(stats.recent[0].fault.as_deref(), Some("throttle"));
}

#[tokio::test]
async fn the_admin_endpoint_replaces_lists_and_clears_the_schedule() {
    let sim = sim().await;
    // rustls needs its crypto provider chosen before a client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!("{}/_sim/faults", sim.endpoint_url());
    let rules = serde_json::json!({"rules": [
        {"fault": "unavailable", "model": MODEL, "rate": 1.0, "for_ms": 600000},
    ]});
    let put = http.put(&url).json(&rules).send().await.unwrap();
    assert_eq!(put.status(), 200);
    let listed: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["rules"][0]["fault"], "unavailable");
    let err = client(&sim)
        .converse()
        .model_id(MODEL)
        .messages(user(PROMPT))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, ConverseError::ServiceUnavailableException(_)),
        "{err:?}"
    );

    let bad = http
        .put(&url)
        .json(&serde_json::json!({"rules": [{"fault": "melt"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let message: serde_json::Value = bad.json().await.unwrap();
    assert!(
        message["message"].as_str().unwrap().contains("melt"),
        "{message}"
    );
    let bad_rate = http
        .put(&url)
        .json(&serde_json::json!({"rules": [{"fault": "throttle", "rate": 2.0}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_rate.status(), 400);

    assert_eq!(http.delete(&url).send().await.unwrap().status(), 204);
    let (text, _, _) = converse_text(&client(&sim), MODEL, 64).await;
    assert!(!text.is_empty());
}

fn assistant(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::Assistant)
        .content(ContentBlock::Text(text.into()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_prefilled_conversation_is_continued_unless_the_model_rejects_prefill() {
    let sim = sim().await;
    let client = client(&sim);
    let (whole, _, _) = converse_text(&client, MODEL, 1024).await;
    let start = whole[..whole.len() / 3].trim_end();
    let continue_from = |model: &str| {
        client
            .converse()
            .model_id(model)
            .messages(user(PROMPT))
            .messages(assistant(start))
            .inference_config(InferenceConfiguration::builder().max_tokens(1024).build())
            .send()
    };
    let output = continue_from(MODEL).await.unwrap();
    let rest = output.output().unwrap().as_message().unwrap().content()[0]
        .as_text()
        .unwrap()
        .clone();
    assert_eq!(format!("{start}{rest}"), whole);

    let err = continue_from(&format!("{MODEL}~reject-prefill"))
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(&err, ConverseError::ValidationException(e) if e.message().unwrap_or_default().contains("prefill")),
        "{err:?}"
    );
    // Without a prefill the same model answers.
    let (text, _, _) = converse_text(&client, &format!("{MODEL}~reject-prefill"), 64).await;
    assert!(!text.is_empty());
}
