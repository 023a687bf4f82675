//! AWS event-stream framing (`application/vnd.amazon.eventstream`): the binary frames Bedrock's
//! streaming operations send, built with the smithy codec the SDK itself decodes with.

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use aws_smithy_types::str_bytes::StrBytes;
use bytes::Bytes;

fn header(name: &'static str, value: impl Into<StrBytes>) -> Header {
    Header::new(name, HeaderValue::String(value.into()))
}

fn encode(message: &Message) -> Bytes {
    let mut buffer = Vec::with_capacity(message.payload().len() + 128);
    // Writing to a Vec cannot run out of room; the only errors are oversized headers/payloads,
    // which our fixed header names and token-sized payloads never reach.
    write_message_to(message, &mut buffer).expect("event-stream frame within size limits");
    Bytes::from(buffer)
}

/// An `event` frame of type `event_type` with a JSON payload.
pub fn event_frame(event_type: &'static str, json: &serde_json::Value) -> Bytes {
    let message = Message::new(serde_json::to_vec(json).unwrap_or_default())
        .add_header(header(":message-type", "event"))
        .add_header(header(":event-type", event_type))
        .add_header(header(":content-type", "application/json"));
    encode(&message)
}

/// A `chunk` frame of InvokeModelWithResponseStream: the model's event `event` (Anthropic's, for
/// Claude) as base64 JSON in `bytes`.
pub fn chunk_frame(event: &serde_json::Value) -> Bytes {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(event).unwrap_or_default());
    event_frame("chunk", &serde_json::json!({ "bytes": encoded }))
}

/// An `exception` frame, as Bedrock sends when a stream fails after it started.
pub fn exception_frame(exception_type: &'static str, message: &str) -> Bytes {
    let payload = serde_json::json!({ "message": message });
    let frame = Message::new(serde_json::to_vec(&payload).unwrap_or_default())
        .add_header(header(":message-type", "exception"))
        .add_header(header(":exception-type", exception_type))
        .add_header(header(":content-type", "application/json"));
    encode(&frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::read_message_from;

    #[test]
    fn frames_decode_with_the_sdk_codec() {
        let bytes = event_frame("messageStart", &serde_json::json!({"role": "assistant"}));
        let message = read_message_from(&bytes[..]).unwrap();
        assert_eq!(&message.payload()[..], br#"{"role":"assistant"}"#);
        let names: Vec<&str> = message
            .headers()
            .iter()
            .map(|h| h.name().as_str())
            .collect();
        assert_eq!(names, [":message-type", ":event-type", ":content-type"]);
    }
}
