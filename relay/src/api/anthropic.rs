//! `POST /v1/messages`: Anthropic's Messages API, so that code written with the Anthropic SDKs
//! works against the relay with only its base URL changed — with every policy of the native
//! routes (keys, limits, routing, failover, cache) behind it. The key may come as `x-api-key`
//! (what the SDKs send) or `Authorization: Bearer`; `anthropic-version` is accepted and not
//! needed.
//!
//! Requests: `model` (a relay model id; the routing default when absent), `messages` (`user` /
//! `assistant`, content as a string or `text`, `tool_use` and `tool_result` blocks), `system` (a
//! string or `text` blocks), `max_tokens`, `temperature`, `stop_sequences`, `stream`, `tools`
//! (client tools: `name`, `description`, `input_schema`) and `tool_choice` (`auto`, `any`,
//! `tool`, `none`). Fields the relay does not use (`metadata`, `top_p`, `top_k`, …) are ignored;
//! what it cannot honour (server tools, image and document blocks) is a 400 naming the field.
//!
//! Answers: a `message` object (a `text` block, then a `tool_use` block per call), or the named
//! SSE events (`message_start`, `content_block_start`, `ping`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`; a tool call is a `tool_use` block whose
//! input comes whole in one `input_json_delta`), plus an
//! `fm_relay` object with the route, timings and the degraded flag. Errors use Anthropic's body
//! (`{"type": "error", "error": {"type", "message"}}`) with the relay's status codes; a stream
//! that fails after it started ends with an `error` event. As for OpenAI clients, an answer that
//! another target must restart is resumed by replay and never spliced.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use fm_protocol::{
    ChatRequest, ChatResponse, ErrorCode, StopReason, StreamEvent, ToolCall, ToolChoice,
    ToolDefinition, ToolResult, Usage,
};
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
    #[serde(default)]
    tools: Vec<AnthropicTool>,
    tool_choice: Option<AnthropicToolChoice>,
}

/// A client tool; a server tool (`web_search_…`, …) has a `type` other than `custom`.
#[derive(Debug, Deserialize)]
struct AnthropicTool {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    description: Option<String>,
    input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct AnthropicToolChoice {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
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

/// A content block: `text`, `tool_use` (`id`, `name`, `input`) or `tool_result`
/// (`tool_use_id`, `content`, `is_error`).
#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
    input: Option<Value>,
    tool_use_id: Option<String>,
    content: Option<Content>,
    #[serde(default)]
    is_error: bool,
}

/// A message's content as the relay carries it.
#[derive(Debug, Default)]
struct Turn {
    text: String,
    tool_calls: Vec<ToolCall>,
    tool_results: Vec<ToolResult>,
}

impl Content {
    /// The text, tool calls and tool results of a message's content; `field` names the content
    /// in a refusal.
    fn turn(&self, field: &str) -> Result<Turn, RelayError> {
        let Content::Blocks(blocks) = self else {
            return Ok(Turn {
                text: self.text(field)?,
                ..Turn::default()
            });
        };
        let mut turn = Turn::default();
        let mut texts = Vec::new();
        for (index, block) in blocks.iter().enumerate() {
            let missing = |name: &str| {
                compat::unsupported(
                    format!("{field}[{index}].{name}"),
                    format!("a `{}` block needs `{name}`", block.kind),
                )
            };
            match block.kind.as_str() {
                "text" => texts.extend(block.text.clone()),
                "tool_use" => turn.tool_calls.push(ToolCall {
                    id: block.id.clone().ok_or_else(|| missing("id"))?,
                    name: block.name.clone().ok_or_else(|| missing("name"))?,
                    input: block.input.clone().ok_or_else(|| missing("input"))?,
                }),
                "tool_result" => turn.tool_results.push(ToolResult {
                    tool_call_id: block
                        .tool_use_id
                        .clone()
                        .ok_or_else(|| missing("tool_use_id"))?,
                    content: match &block.content {
                        Some(content) => content.text(&format!("{field}[{index}].content"))?,
                        None => String::new(),
                    },
                    is_error: block.is_error,
                }),
                other => {
                    return Err(compat::unsupported(
                        format!("{field}[{index}].type"),
                        format!(
                            "only text, tool_use and tool_result blocks are supported, got `{other}`"
                        ),
                    ));
                }
            }
        }
        turn.text = texts.join("\n");
        Ok(turn)
    }

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
        let mut messages = Vec::with_capacity(self.messages.len());
        for (index, message) in self.messages.iter().enumerate() {
            let turn = message
                .content
                .turn(&format!("messages[{index}].content"))?;
            let mut relayed = compat::message(index, &message.role, turn.text)?;
            relayed.tool_calls = turn.tool_calls;
            relayed.tool_results = turn.tool_results;
            messages.push(relayed);
        }
        Ok(ChatRequest {
            messages,
            system: self.system.as_ref().map(|s| s.text("system")).transpose()?,
            model: self.model.clone(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            stop_sequences: self.stop_sequences.clone().unwrap_or_default(),
            tools: self.tool_definitions()?,
            tool_choice: self.tool_choice.as_ref().map(tool_choice).transpose()?,
            ..ChatRequest::default()
        })
    }

    /// The client tools.
    fn tool_definitions(&self) -> Result<Vec<ToolDefinition>, RelayError> {
        self.tools
            .iter()
            .enumerate()
            .map(|(index, tool)| {
                if let Some(kind) = tool.kind.as_deref().filter(|kind| *kind != "custom") {
                    return Err(compat::unsupported(
                        format!("tools[{index}].type"),
                        format!("only client tools are supported, got the server tool `{kind}`"),
                    ));
                }
                Ok(ToolDefinition {
                    name: tool.name.clone(),
                    description: tool.description.clone(),
                    input_schema: tool.input_schema.clone().ok_or_else(|| {
                        compat::unsupported(
                            format!("tools[{index}].input_schema"),
                            "a tool needs the JSON Schema of its input",
                        )
                    })?,
                })
            })
            .collect()
    }
}

/// `tool_choice`: `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name"}`.
fn tool_choice(choice: &AnthropicToolChoice) -> Result<ToolChoice, RelayError> {
    match (choice.kind.as_str(), &choice.name) {
        ("auto", _) => Ok(ToolChoice::Auto),
        ("any", _) => Ok(ToolChoice::Any),
        ("none", _) => Ok(ToolChoice::None),
        ("tool", Some(name)) => Ok(ToolChoice::Tool { name: name.clone() }),
        ("tool", None) => Err(compat::unsupported(
            "tool_choice.name",
            "a `tool` choice names the tool",
        )),
        (other, _) => Err(compat::unsupported(
            "tool_choice.type",
            format!("is not `auto`, `any`, `tool` or `none`: `{other}`"),
        )),
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
    let mut content = Vec::with_capacity(1 + answer.tool_calls.len());
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": answer.text}));
    }
    content.extend(answer.tool_calls.iter().map(
        |call| json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}),
    ));
    let answer_chars = answer.text.chars().count()
        + answer
            .tool_calls
            .iter()
            .map(|call| call.input.to_string().len())
            .sum::<usize>();
    json!({
        "id": format!("msg_{}", answer.request_id),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop_reason(answer.stop_reason),
        "stop_sequence": null,
        "usage": usage_body(answer.usage, prompt_chars, answer_chars),
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
    /// The index of the content block open now (the text block, 0, until a tool call);
    /// `None` once it was stopped.
    open_block: Option<usize>,
    /// The index the next content block takes.
    next_block: usize,
}

impl AnthropicEvents {
    pub(super) fn new(id: String, prompt_chars: usize) -> AnthropicEvents {
        AnthropicEvents {
            id,
            prompt_chars,
            answer_chars: 0,
            sent_text: false,
            open_block: None,
            next_block: 0,
        }
    }

    /// Stops the open content block, if one is.
    fn stop_block(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if let Some(index) = self.open_block.take() {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
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
                self.open_block = Some(0);
                self.next_block = 1;
                out.push(("ping", json!({"type": "ping"})));
            }
            StreamEvent::TextDelta { text } => {
                self.sent_text = true;
                self.answer_chars += text.chars().count();
                if self.open_block.is_none() {
                    // Text after a tool call opens a new text block.
                    out.push((
                        "content_block_start",
                        json!({"type": "content_block_start", "index": self.next_block,
                        "content_block": {"type": "text", "text": ""}}),
                    ));
                    self.open_block = Some(self.next_block);
                    self.next_block += 1;
                }
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta",
                    "index": self.open_block, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            StreamEvent::ToolCall { call } => {
                self.sent_text = true;
                let input = call.input.to_string();
                self.answer_chars += input.len();
                self.stop_block(out);
                let index = self.next_block;
                self.next_block += 1;
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {
                        "type": "tool_use", "id": call.id, "name": call.name, "input": {},
                    }}),
                ));
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": input}}),
                ));
                out.push((
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
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
                self.stop_block(out);
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
        let tools = parse(json!({"model": "m", "messages": [],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
        .unwrap_err();
        assert_eq!(field(tools), "tools[0].type");
        let schema = parse(json!({"messages": [], "tools": [{"name": "f"}]})).unwrap_err();
        assert_eq!(field(schema), "tools[0].input_schema");
        let choice = parse(json!({"messages": [], "tool_choice": {"type": "tool"}})).unwrap_err();
        assert_eq!(field(choice), "tool_choice.name");
        let image = parse(json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image"}]}]}))
        .unwrap_err();
        assert_eq!(field(image), "messages[0].content[1].type");
        let role = parse(json!({"messages": [{"role": "system", "content": "x"}]})).unwrap_err();
        assert_eq!(field(role), "messages[0].role");
    }

    #[test]
    fn tool_use_and_tool_result_blocks_become_relay_tool_use() {
        let request = parse(json!({
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "sunny"}], "is_error": false},
                ]},
            ],
            "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
        }))
        .unwrap();
        assert_eq!(request.messages[1].content, "Let me look.");
        assert_eq!(
            request.messages[1].tool_calls[0].input,
            json!({"city": "Paris"})
        );
        assert_eq!(request.messages[2].tool_results[0].content, "sunny");
        assert_eq!(request.tool_choice, Some(ToolChoice::Any));
        fm_protocol::validate_chat_request(&request, |_| true).unwrap();
    }

    #[test]
    fn a_streamed_tool_call_is_a_tool_use_block_after_the_text() {
        let mut events = AnthropicEvents::new("msg_1".into(), 10);
        let mut out = Vec::new();
        let start = StreamEvent::Start {
            request_id: "r".into(),
            model: "m".into(),
            route: fm_protocol::RouteChoice::default(),
        };
        events.next(&start, &mut out);
        events.next(&StreamEvent::TextDelta { text: "Hi".into() }, &mut out);
        let call = ToolCall {
            id: "toolu_1".into(),
            name: "weather".into(),
            input: json!({"city": "Paris"}),
        };
        events.next(&StreamEvent::ToolCall { call }, &mut out);
        let names: Vec<_> = out.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
            ]
        );
        assert_eq!(out[4].1["index"], 0);
        assert_eq!(out[5].1["content_block"]["type"], "tool_use");
        assert_eq!(out[6].1["delta"]["partial_json"], r#"{"city":"Paris"}"#);
        assert_eq!(out[7].1["index"], 1);
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
