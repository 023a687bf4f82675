//! Outside input that is not what it should be, for the parsers in `fm-protocol`: the SSE decoder
//! fed arbitrary bytes split anywhere, and request decoding and validation fed arbitrary JSON
//! shaped like a request. No panic, no hang, nothing held past its bound.
//!
//! Each property runs proptest's default 256 cases in the test command; a longer run:
//! `PROPTEST_CASES=100000 cargo test --release -p fm-protocol --test hostile_input`.

use fm_protocol::*;
use proptest::prelude::*;
use serde_json::Value;

/// Bytes that look like an event stream often enough to reach every branch: field names,
/// separators, line ends of every kind, a BOM, and anything else.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"id: ".to_vec()),
        Just(b"retry: 5".to_vec()),
        Just(b": comment".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\0".to_vec()),
        Just("é漢🚀".as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(piece, 0..64).prop_map(|pieces| pieces.concat())
}

/// `bytes` cut at `cuts` (taken modulo its length), fed in order.
fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(&bytes[start..cut]);
        start = cut;
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// JSON values of any shape, with the request's own field names and values near its limits
/// among the keys and leaves.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("messages".to_string()),
        Just("role".to_string()),
        Just("content".to_string()),
        Just("model".to_string()),
        Just("system".to_string()),
        Just("max_tokens".to_string()),
        Just("temperature".to_string()),
        Just("routing_hint".to_string()),
        Just("max_latency_ms".to_string()),
        Just("quality_requirement".to_string()),
        Just("response_format".to_string()),
        Just("tools".to_string()),
        Just("tool_choice".to_string()),
        Just("tool_calls".to_string()),
        Just("tool_call_id".to_string()),
        Just("name".to_string()),
        Just("input_schema".to_string()),
        Just("type".to_string()),
        "[a-z_]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from("user")),
        Just(Value::from("assistant")),
        Just(Value::from("tool")),
        Just(Value::from("auto")),
        Just(Value::from("json_object")),
        Just(Value::from("x".repeat(limits::MAX_BODY_BYTES / 8))),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A request-shaped object: the top level always an object with some of the request's fields.
fn request_value() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(json_value(), 0..6),
        json_value(),
        json_value(),
    )
        .prop_map(|(messages, extra, tools)| {
            serde_json::json!({ "messages": messages, "max_tokens": extra, "tools": tools })
        })
}

proptest! {
    #[test]
    fn sse_decoding_of_any_bytes_ignores_chunk_boundaries(
        bytes in stream_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..32),
    ) {
        let whole = SseDecoder::new().feed(&bytes).unwrap();
        let mut decoder = SseDecoder::new();
        let mut chunked = Vec::new();
        for piece in pieces(&bytes, &cuts) {
            chunked.extend(decoder.feed(piece).unwrap());
        }
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn sse_decoding_holds_no_event_past_its_bound(
        bytes in stream_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..32),
        bound in 1usize..64,
    ) {
        let mut decoder = SseDecoder::with_max_event_bytes(bound);
        let mut failed = false;
        for piece in pieces(&bytes, &cuts) {
            match decoder.feed(piece) {
                Ok(frames) => {
                    prop_assert!(!failed, "a failed stream went on");
                    // What an event holds is checked after each chunk: a frame is at most the
                    // bound plus the chunk that completed it (three times over, as each byte
                    // that is not UTF-8 reads as U+FFFD).
                    for frame in frames {
                        let limit = 3 * (bound + piece.len()) + "message".len();
                        prop_assert!(frame.data.len() + frame.event.len() <= limit);
                    }
                }
                Err(err) => {
                    prop_assert_eq!(err.limit, bound);
                    failed = true;
                }
            }
        }
    }

    #[test]
    fn an_endless_sse_line_fails_at_the_bound(
        line in prop::collection::vec(any::<u8>().prop_filter("no line end", |b| *b != b'\n' && *b != b'\r'), 65..400),
        piece in 1usize..32,
    ) {
        let mut decoder = SseDecoder::with_max_event_bytes(64);
        let outcome: Result<Vec<Vec<SseFrame>>, EventTooLarge> =
            line.chunks(piece).map(|chunk| decoder.feed(chunk)).collect();
        prop_assert_eq!(outcome, Err(EventTooLarge { limit: 64 }));
    }

    #[test]
    fn request_decoding_and_validation_of_any_json_never_panic(value in request_value()) {
        let body = value.to_string();
        if let Ok(request) = serde_json::from_str::<ChatRequest>(&body) {
            // Ok or a broken rule that names a field; never a panic.
            if let Err(err) = validate_chat_request(&request, |model| model == "m") {
                prop_assert!(!err.field.is_empty());
            }
        }
    }

    #[test]
    fn request_decoding_of_any_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = serde_json::from_slice::<ChatRequest>(&bytes);
        let _ = serde_json::from_slice::<StreamEvent>(&bytes);
        let _ = serde_json::from_slice::<ApiErrorBody>(&bytes);
    }
}
