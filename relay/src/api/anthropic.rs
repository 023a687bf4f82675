//! `POST /v1/messages`: Anthropic's Messages API, so that code written with the Anthropic SDKs
//! works against the relay with only its base URL changed — with every policy of the native
//! routes (keys, limits, routing, failover, cache) behind it. The key may come as `x-api-key`
//! (what the SDKs send) or `Authorization: Bearer`; `anthropic-version` is accepted and not
//! needed.
//!
//! Requests: `model` (a relay model id; the routing default when absent), `messages` (`user` /
//! `assistant`, content as a string or `text` blocks), `system` (a string or `text` blocks),
//! `max_tokens`, `temperature`, `stop_sequences`, `stream`. Fields the relay does not use
//! (`metadata`, `top_p`, `top_k`, …) are ignored; what it cannot honour yet (`tools`, image and
//! document blocks) is a 400 naming the field.
//!
//! Answers: a `message` object, or the named SSE events (`message_start`, `content_block_start`,
//! `ping`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`), plus an
//! `fm_relay` object with the route, timings and the degraded flag. Errors use Anthropic's body
//! (`{"type": "error", "error": {"type", "message"}}`) with the relay's status codes; a stream
//! that fails after it started ends with an `error` event. As for OpenAI clients, an answer that
//! another target must restart is resumed by replay and never spliced.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use fm_protocol::{ChatRequest, ChatResponse, ErrorCode, StopReason, StreamEvent, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::edge::Edge;
use super::extract::ApiJson;
use super::sse::StreamEncoder;
use super::{AppState, compat};
use crate::error::{RelayError, RequestError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/messages", post(messages))
}

/// The request, as far as the relay reads it (also the body of Bedrock's InvokeModel).
#[derive(Debug, Deserialize)]
pub(super) struct MessagesRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<AnthropicMessage>,
    system: Option<Content>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: bool,
    tools: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct AnthropicMessage {
    role: String,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

impl Content {
    /// The text of a string or of `text` blocks; `field` names the content in a refusal.
    fn text(&self, field: &str) -> Result<String, RelayError> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Blocks(blocks) => {
                if let Some((index, block)) = blocks
                    .iter()
                    .enumerate()
                    .find(|(_, block)| block.kind != "text")
                {
                    return Err(compat::unsupported(
                        format!("{field}[{index}].type"),
                        format!("only text blocks are supported, got `{}`", block.kind),
                    ));
                }
                Ok(blocks
                    .iter()
                    .filter_map(|block| block.text.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        }
    }
}

impl MessagesRequest {
    /// The relay's request for this one.
    pub(super) fn to_chat_request(&self) -> Result<ChatRequest, RelayError> {
        if self.tools.is_some() {
            return Err(compat::unsupported(
                "tools",
                "tool use is not supported by the relay yet",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (index, message) in self.messages.iter().enumerate() {
            let text = message
                .content
                .text(&format!("messages[{index}].content"))?;
            messages.push(compat::message(index, &message.role, text)?);
        }
        Ok(ChatRequest {
            messages,
            system: self.system.as_ref().map(|s| s.text("system")).transpose()?,
            model: self.model.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            stop_sequences: self.stop_sequences.clone().unwrap_or_default(),
            ..ChatRequest::default()
        })
    }
}

async fn messages(
    State(state): State<AppState>,
    edge: Edge,
    body: Result<ApiJson<MessagesRequest>, RequestError>,
) -> Response {
    let request_id = &edge.request_id;
    let answer = async {
        let ApiJson(asked) = body.map_err(|rejection| rejection.error)?;
        let request = asked.to_chat_request()?;
        let prompt_chars = request.prompt_chars();
        let stream = asked.stream.then(|| {
            SseEvents(AnthropicEvents::new(
                format!("msg_{request_id}"),
                prompt_chars,
            ))
        });
        compat::answer(&state, &edge, request, stream, |answer| {
            message_body(answer, prompt_chars)
        })
        .await
    }
    .await;
    answer.unwrap_or_else(|err: RelayError| {
        compat::error_response(err, request_id, |error, status| {
            error_body(error_type(error.code, status.as_u16()), &error.message)
        })
    })
}

fn stop_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::Other => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::ContentFiltered => "refusal",
    }
}

/// Anthropic's `usage`: the upstream's counts, or the relay's estimate (marked
/// `"estimated": true`) when it reported none.
fn usage_body(usage: Option<Usage>, prompt_chars: usize, answer_chars: usize) -> Value {
    let usage = compat::usage_or_estimate(usage, prompt_chars, answer_chars);
    let mut body = json!({
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    });
    if usage.estimated {
        body["estimated"] = true.into();
    }
    body
}

/// A `message` for the relay's answer.
pub(super) fn message_body(answer: &ChatResponse, prompt_chars: usize) -> Value {
    json!({
        "id": format!("msg_{}", answer.request_id),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": stop_reason(answer.stop_reason),
        "stop_sequence": null,
        "usage": usage_body(answer.usage, prompt_chars, answer.text.chars().count()),
        "fm_relay": {
            "route": answer.route,
            "timings": answer.timings,
            "degraded": answer.degraded,
        },
    })
}

/// Anthropic's error type for a relay error of `code` answered with `status`.
fn error_type(code: ErrorCode, status: u16) -> &'static str {
    match (code, status) {
        (ErrorCode::UpstreamUnavailable | ErrorCode::ShuttingDown, _) => "overloaded_error",
        (_, 401) => "authentication_error",
        (_, 403) => "permission_error",
        (_, 404) => "not_found_error",
        (_, 413) => "request_too_large",
        (_, 429) => "rate_limit_error",
        (_, 400..=499) => "invalid_request_error",
        _ => "api_error",
    }
}

fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's stream events for the relay's, in order: what `/v1/messages` sends as named SSE
/// events and InvokeModelWithResponseStream (the Bedrock surface) inside `chunk` frames.
pub(super) struct AnthropicEvents {
    id: String,
    /// Characters of the prompt and of the answer so far, for a usage estimate.
    prompt_chars: usize,
    answer_chars: usize,
    sent_text: bool,
}

impl AnthropicEvents {
    pub(super) fn new(id: String, prompt_chars: usize) -> AnthropicEvents {
        AnthropicEvents {
            id,
            prompt_chars,
            answer_chars: 0,
            sent_text: false,
        }
    }

    /// Appends the events (name, data) for `event` to `out`; `false` ends the stream after them.
    pub(super) fn next(
        &mut self,
        event: &StreamEvent,
        out: &mut Vec<(&'static str, Value)>,
    ) -> bool {
        match event {
            StreamEvent::Start { model, .. } => {
                let input = Usage::estimate_from_chars(self.prompt_chars, 0).input_tokens;
                out.push((
                    "message_start",
                    json!({"type": "message_start", "message": {
                        "id": self.id, "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": input, "output_tokens": 0},
                    }}),
                ));
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start",
                    "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                out.push(("ping", json!({"type": "ping"})));
            }
            StreamEvent::TextDelta { text } => {
                self.sent_text = true;
                self.answer_chars += text.chars().count();
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": 0, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            StreamEvent::Usage { .. } => {}
            StreamEvent::Failover {
                discard_partial, ..
            } => {
                if *discard_partial && self.sent_text {
                    out.push(("error", error_body("api_error", compat::CANNOT_TAKE_BACK)));
                    return false;
                }
            }
            StreamEvent::Done {
                stop_reason: stop,
                usage,
                route,
                timings,
                degraded,
            } => {
                out.push((
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                out.push((
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(*stop), "stop_sequence": null},
                    "usage": usage_body(*usage, self.prompt_chars, self.answer_chars),
                    "fm_relay": {"route": route, "timings": timings, "degraded": degraded}}),
                ));
                out.push(("message_stop", json!({"type": "message_stop"})));
                return false;
            }
            StreamEvent::Error { code, message, .. } => {
                let status = RelayError::status_of(*code).as_u16();
                out.push(("error", error_body(error_type(*code, status), message)));
                return false;
            }
        }
        true
    }
}

/// `/v1/messages` streams: each event as a named SSE event.
struct SseEvents(AnthropicEvents);

impl StreamEncoder for SseEvents {
    fn encode(&mut self, event: &StreamEvent, chunk: &mut Vec<u8>) -> bool {
        let mut events = Vec::new();
        let go_on = self.0.next(event, &mut events);
        for (name, data) in events {
            chunk.extend_from_slice(b"event: ");
            chunk.extend_from_slice(name.as_bytes());
            chunk.extend_from_slice(b"\ndata: ");
            chunk.extend_from_slice(data.to_string().as_bytes());
            chunk.extend_from_slice(b"\n\n");
        }
        go_on
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fm_protocol::Message;

    fn parse(body: Value) -> Result<ChatRequest, RelayError> {
        serde_json::from_value::<MessagesRequest>(body)
            .unwrap()
            .to_chat_request()
    }

    #[test]
    fn anthropic_requests_become_relay_requests() {
        let request = parse(json!({
            "model": "m",
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
                {"role": "user", "content": "More"},
            ],
            "max_tokens": 20,
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "metadata": {"user_id": "ignored"},
            "top_k": 5,
        }))
        .unwrap();
        assert_eq!(request.system.as_deref(), Some("Be brief."));
        assert_eq!(
            request.messages,
            [
                Message::user("Hi"),
                Message::assistant("Hello."),
                Message::user("More")
            ]
        );
        assert_eq!(request.max_tokens, Some(20));
        assert_eq!(request.stop_sequences, ["END"]);
        assert_eq!(request.temperature, Some(0.3));
    }

    #[test]
    fn what_the_relay_cannot_honour_is_refused_by_name() {
        let field = |err: RelayError| match err {
            RelayError::Invalid(invalid) => invalid.field,
            other => panic!("{other}"),
        };
        let tools = parse(json!({"model": "m", "messages": [], "tools": []})).unwrap_err();
        assert_eq!(field(tools), "tools");
        let image = parse(json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image"}]}]}))
        .unwrap_err();
        assert_eq!(field(image), "messages[0].content[1].type");
        let role = parse(json!({"messages": [{"role": "system", "content": "x"}]})).unwrap_err();
        assert_eq!(field(role), "messages[0].role");
    }

    #[test]
    fn errors_take_anthropic_s_types() {
        assert_eq!(
            error_type(ErrorCode::InvalidRequest, 400),
            "invalid_request_error"
        );
        assert_eq!(
            error_type(ErrorCode::Unauthorized, 401),
            "authentication_error"
        );
        assert_eq!(error_type(ErrorCode::RateLimited, 429), "rate_limit_error");
        assert_eq!(
            error_type(ErrorCode::UpstreamUnavailable, 503),
            "overloaded_error"
        );
        assert_eq!(error_type(ErrorCode::Internal, 500), "api_error");
    }
}
