//! Property tests: the SSE decoder yields the same events however the bytes are chunked, and
//! every wire type survives a JSON round trip unchanged.

use fm_protocol::*;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    // Mix ASCII, multi-byte characters and JSON-hostile characters.
    prop::string::string_regex("[a-zA-Z0-9 é漢🚀\"\\\\{}:\t]{0,24}").unwrap()
}

fn usage() -> impl Strategy<Value = Usage> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(i, o, t, e)| Usage {
        input_tokens: i,
        output_tokens: o,
        total_tokens: t,
        estimated: e,
    })
}

fn stop_reason() -> impl Strategy<Value = StopReason> {
    prop_oneof![
        Just(StopReason::EndTurn),
        Just(StopReason::MaxTokens),
        Just(StopReason::StopSequence),
        Just(StopReason::ContentFiltered),
        Just(StopReason::ToolUse),
        Just(StopReason::Other),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::InvalidRequest),
        Just(ErrorCode::MalformedJson),
        Just(ErrorCode::PayloadTooLarge),
        Just(ErrorCode::UnknownModel),
        Just(ErrorCode::UpstreamThrottled),
        Just(ErrorCode::UpstreamStalled),
        Just(ErrorCode::ContextTooLong),
        Just(ErrorCode::DeadlineExceeded),
        Just(ErrorCode::Internal),
        Just(ErrorCode::Unknown),
    ]
}

fn finite_ms() -> impl Strategy<Value = f64> {
    0.0f64..1.0e7
}

fn timings() -> impl Strategy<Value = Timings> {
    (prop::option::of(finite_ms()), finite_ms())
        .prop_map(|(ttft_ms, total_ms)| Timings { ttft_ms, total_ms })
}

fn route() -> impl Strategy<Value = RouteInfo> {
    (
        text(),
        text(),
        text(),
        prop_oneof![
            Just(ResponseSource::Primary),
            Just(ResponseSource::FallbackRegion),
            Just(ResponseSource::FallbackModel),
            Just(ResponseSource::Cache),
            Just(ResponseSource::Degraded),
        ],
        any::<u32>(),
        text(),
        route_choice(),
    )
        .prop_map(
            |(model, provider, region, source, attempts, reason, choice)| RouteInfo {
                model,
                provider,
                region,
                source,
                attempts,
                reason,
                choice,
            },
        )
}

fn route_choice() -> impl Strategy<Value = RouteChoice> {
    let domain = prop_oneof![
        Just(Domain::Code),
        Just(Domain::Legal),
        Just(Domain::Math),
        Just(Domain::General)
    ];
    let complexity = prop_oneof![Just(Complexity::Simple), Just(Complexity::High)];
    (
        text(),
        prop::option::of((domain, complexity)),
        prop::collection::vec((text(), prop::option::of(text())), 0..4),
    )
        .prop_map(|(rule, class, candidates)| RouteChoice {
            rule,
            class: class.map(|(domain, complexity)| ContentClass { domain, complexity }),
            candidates: candidates
                .into_iter()
                .map(|(model, passed_over)| RouteCandidate {
                    targets_passed_over: passed_over
                        .iter()
                        .map(|reason| TargetPassedOver {
                            target: format!("{model}-1 in us-west-2"),
                            region: "us-west-2".into(),
                            reason: reason.clone(),
                        })
                        .collect(),
                    model,
                    passed_over,
                })
                .collect(),
        })
}

fn stream_event() -> impl Strategy<Value = StreamEvent> {
    prop_oneof![
        (text(), text(), route_choice()).prop_map(|(request_id, model, route)| {
            StreamEvent::Start {
                request_id,
                model,
                route,
            }
        }),
        text().prop_map(|text| StreamEvent::TextDelta { text }),
        usage().prop_map(|usage| StreamEvent::Usage { usage }),
        (
            stop_reason(),
            prop::option::of(usage()),
            timings(),
            route(),
            any::<bool>()
        )
            .prop_map(
                |(stop_reason, usage, timings, route, degraded)| StreamEvent::Done {
                    stop_reason,
                    usage,
                    timings,
                    route,
                    degraded,
                }
            ),
        (text(), text(), text(), any::<bool>()).prop_map(
            |(model, region, reason, discard_partial)| StreamEvent::Failover {
                model,
                region,
                reason,
                discard_partial,
            }
        ),
        (error_code(), text(), any::<bool>()).prop_map(|(code, message, retryable)| {
            StreamEvent::Error {
                code,
                message,
                retryable,
            }
        }),
    ]
}

fn tool_call() -> impl Strategy<Value = ToolCall> {
    ("[A-Za-z0-9_-]{1,12}", "[A-Za-z0-9_-]{1,12}", text()).prop_map(|(id, name, value)| ToolCall {
        id,
        name,
        input: serde_json::json!({ "q": value, "n": [1, -2, 0.5] }),
    })
}

fn tool_result() -> impl Strategy<Value = ToolResult> {
    ("[A-Za-z0-9_-]{1,12}", text(), any::<bool>()).prop_map(|(tool_call_id, content, is_error)| {
        ToolResult {
            tool_call_id,
            content,
            is_error,
        }
    })
}

fn tool_definition() -> impl Strategy<Value = ToolDefinition> {
    ("[A-Za-z0-9_-]{1,12}", prop::option::of(text())).prop_map(|(name, description)| {
        ToolDefinition {
            name,
            description,
            input_schema: serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        }
    })
}

fn tool_choice() -> impl Strategy<Value = ToolChoice> {
    prop_oneof![
        Just(ToolChoice::Auto),
        Just(ToolChoice::Any),
        Just(ToolChoice::None),
        "[A-Za-z0-9_-]{1,12}".prop_map(|name| ToolChoice::Tool { name }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<bool>(),
        text(),
        prop::collection::vec(tool_call(), 0..2),
        prop::collection::vec(tool_result(), 0..2),
    )
        .prop_map(|(user, content, tool_calls, tool_results)| Message {
            role: if user { Role::User } else { Role::Assistant },
            content,
            tool_calls,
            tool_results,
        })
}

fn chat_request() -> impl Strategy<Value = ChatRequest> {
    (
        prop::collection::vec(message(), 0..5),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(0.0f32..1.0),
        prop::collection::vec(text(), 0..3),
        any::<bool>(),
        prop::collection::vec(tool_definition(), 0..3),
        prop::option::of(tool_choice()),
    )
        .prop_map(
            |(
                messages,
                system,
                model,
                max_tokens,
                routing_hint,
                temperature,
                stop_sequences,
                no_cache,
                tools,
                tool_choice,
            )| {
                ChatRequest {
                    messages,
                    system,
                    model,
                    max_tokens,
                    routing_hint,
                    temperature,
                    stop_sequences,
                    no_cache,
                    tools,
                    tool_choice,
                    ..ChatRequest::default()
                }
            },
        )
}

fn round_trips<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    prop_assert_eq!(&back, value, "through {}", json);
    Ok(())
}

/// Encodes events with a chosen line terminator, as a server might.
fn encode_all(events: &[StreamEvent], terminator: &str, comments: bool) -> Vec<u8> {
    let mut out = String::new();
    for event in events {
        if comments {
            out.push_str(": keep-alive\n\n");
        }
        out.push_str(&encode_sse_frame(event.name(), &event.to_json()));
    }
    out.replace('\n', terminator).into_bytes()
}

fn decode_in_chunks(bytes: &[u8], cuts: &[usize]) -> Vec<SseFrame> {
    let mut decoder = SseDecoder::new();
    let mut frames = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts {
        frames.extend(decoder.feed(&bytes[start..cut]).unwrap());
        start = cut;
    }
    frames.extend(decoder.feed(&bytes[start..]).unwrap());
    frames
}

proptest! {
    #[test]
    fn sse_decoding_ignores_chunk_boundaries(
        events in prop::collection::vec(stream_event(), 0..8),
        terminator in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        comments in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let bytes = encode_all(&events, terminator, comments);
        let whole = decode_in_chunks(&bytes, &[]);
        let chunked = decode_in_chunks(&bytes, &cuts);
        prop_assert_eq!(&chunked, &whole);
        let byte_by_byte: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(&decode_in_chunks(&bytes, &byte_by_byte), &whole);
        let decoded: Vec<StreamEvent> = whole.iter().map(|f| f.stream_event().unwrap()).collect();
        prop_assert_eq!(&decoded, &events);
        for (frame, event) in whole.iter().zip(&events) {
            prop_assert_eq!(frame.event.as_str(), event.name());
        }
    }

    #[test]
    fn sse_multiline_data_survives_any_split(
        lines in prop::collection::vec(text(), 1..5),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let data = lines.join("\n");
        let bytes = encode_sse_frame("x", &data).into_bytes();
        let frames = decode_in_chunks(&bytes, &cuts);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(&frames[0].data, &data);
    }

    #[test]
    fn stream_events_round_trip(event in stream_event()) {
        round_trips(&event)?;
    }

    #[test]
    fn chat_requests_round_trip(request in chat_request()) {
        round_trips(&request)?;
    }

    #[test]
    fn chat_responses_round_trip(
        request_id in text(), model in text(), text_ in text(),
        stop_reason in stop_reason(), usage in prop::option::of(usage()), route in route(),
        timings in timings(),
        degraded in any::<bool>(),
        tool_calls in prop::collection::vec(tool_call(), 0..3),
    ) {
        round_trips(&ChatResponse {
            request_id, degraded, model, text: text_, tool_calls, stop_reason, usage, route,
            timings,
        })?;
    }

    #[test]
    fn error_bodies_round_trip(
        code in error_code(), message in text(), field in prop::option::of(text()),
        retryable in any::<bool>(), request_id in prop::option::of(text()),
    ) {
        round_trips(&ApiErrorBody { error: ApiError { code, message, field, retryable, request_id } })?;
    }

    #[test]
    fn model_lists_round_trip(
        id in text(), provider in text(), region in text(),
        prices in (0.0f64..10.0, 0.0f64..10.0), context_window in any::<u32>(), default in any::<bool>(),
    ) {
        round_trips(&ModelList { object: "list".into(), data: vec![ModelInfo {
            id, object: "model".into(), created: 1_700_000_000, owned_by: provider.clone(),
            provider, region, input_price_per_1k: prices.0, output_price_per_1k: prices.1,
            context_window, default, tier: Tier::Premium, capabilities: vec![Capability::Code],
        }], hints: vec!["fast".into()] })?;
    }
}

proptest! {
    #[test]
    fn stats_round_trip(
        model in text(), requests in any::<u64>(), errors in any::<u64>(),
        failed_attempts in any::<u64>(), target in text(), region in text(),
        ttft in prop::option::of((finite_ms(), finite_ms(), finite_ms())),
        total in prop::option::of((finite_ms(), finite_ms(), finite_ms())),
        window_secs in any::<u64>(),
        open_ms in prop::option::of(any::<u64>()), openings in any::<u32>(),
    ) {
        let percentiles = |(p50, p95, p99)| Percentiles { p50, p95, p99 };
        round_trips(&StatsResponse {
            window_secs,
            cache: ttft.map(|_| CacheStats { exact_hits: requests, misses: errors, ..CacheStats::default() }),
            models: vec![ModelStats {
                model, requests, errors, failed_attempts, cancelled: errors / 2,
                ttft_ms: ttft.map(percentiles),
                total_ms: total.map(percentiles),
                targets: vec![TargetStats {
                    target,
                    region,
                    circuit: CircuitStatus {
                        state: CircuitState::HalfOpen,
                        reason: Some("probe".into()),
                        open_ms,
                        probe_in_ms: open_ms.map(|ms| ms / 2),
                        openings,
                        open_time_reason: open_ms.map(|ms| format!("open for {ms} ms")),
                    },
                    client_rate_limit: ttft.map(|t| t.0),
                    calls: requests,
                    failures: errors,
                    throttles: errors / 2,
                    ttft_ms: ttft.map(percentiles),
                    total_ms: total.map(percentiles),
                    passed_over: open_ms.map(|ms| format!("p99 {ms} ms")),
                }],
            }],
        })?;
    }
}

#[test]
fn unknown_codes_and_stop_reasons_decode_as_catch_alls() {
    let code: ErrorCode = serde_json::from_str("\"quota_exceeded_in_2030\"").unwrap();
    assert_eq!(code, ErrorCode::Unknown);
    let reason: StopReason = serde_json::from_str("\"guardrail_intervened\"").unwrap();
    assert_eq!(reason, StopReason::Other);
}

#[test]
fn unknown_request_fields_are_rejected() {
    let err = serde_json::from_str::<ChatRequest>(
        r#"{"messages":[{"role":"user","content":"hi"}],"max_token":5}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_token"), "{err}");
}
