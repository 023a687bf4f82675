//! The Bedrock Runtime API on the relay, so that boto3 and the AWS SDKs work with their endpoint
//! set to it: `POST /model/{modelId}/converse`, `/converse-stream`, `/invoke` and
//! `/invoke-with-response-stream` (an Anthropic Messages body, as Bedrock's Claude models take),
//! with Bedrock's request and answer shapes, AWS event-stream framing for the streams, and
//! Bedrock's error types (see [`error_dialect`]) — every policy of the native routes behind them.
//!
//! The caller's relay key is the access key id of the SigV4 signature (`aws_access_key_id` =
//! the `fmr_…` key; the secret key is anything, and the signature is not checked — the key is
//! the credential) or an `x-api-key` header. The model id in the path is a relay model id, or the
//! upstream id (`anthropic.claude-…`) of one of the relay's models, so code written for Bedrock
//! keeps its model ids; the routing, limits, failover and cache then apply as for any request,
//! and the answer's `fm_relay` member (beside Bedrock's) says which model served it.
//!
//! Tool use: Converse's `toolConfig` (`toolSpec`s, `toolChoice`), `toolUse` and `toolResult`
//! blocks, and in streams a `toolUse` block (`contentBlockStart`, one `contentBlockDelta` with
//! the whole input, `contentBlockStop`) per call; InvokeModel takes Anthropic's tools (see
//! [`super::anthropic`]). What the relay cannot honour (image and document blocks, cache
//! points) is a `ValidationException` naming the field. A stream that another target must restart is
//! resumed by replay, as for the other drop-in surfaces: it continues seamlessly or ends with a
//! `modelStreamErrorException`, never a spliced answer.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use fm_protocol::{
    ChatRequest, ChatResponse, ErrorCode, StopReason, StreamEvent, ToolCall, ToolChoice,
    ToolDefinition, ToolResult, Usage,
};
use fm_sim::eventstream::{chunk_frame, event_frame, exception_frame};
use serde::Deserialize;
use serde_json::{Value, json};

use super::anthropic::{AnthropicEvents, MessagesRequest, message_body};
use super::edge::Edge;
use super::extract::parse_json;
use super::sse::StreamEncoder;
use super::{AppState, compat};
use crate::config::routing::BEDROCK_PREFIX;
use crate::error::RelayError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/model/{model_id}/{operation}", post(model_operation))
}

/// The Converse request, as far as the relay reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest {
    #[serde(default)]
    messages: Vec<ConverseMessage>,
    #[serde(default)]
    system: Vec<ConverseBlock>,
    inference_config: Option<InferenceConfig>,
    tool_config: Option<ToolConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    #[serde(default)]
    tools: Vec<ConverseTool>,
    tool_choice: Option<ConverseToolChoice>,
}

/// A tool: `{"toolSpec": ...}`, or one the relay does not take (a `cachePoint`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseTool {
    tool_spec: Option<ToolSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec {
    name: String,
    description: Option<String>,
    input_schema: InputSchema,
}

#[derive(Debug, Deserialize)]
struct InputSchema {
    json: Value,
}

/// `{"auto": {}}`, `{"any": {}}` or `{"tool": {"name"}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
enum ConverseToolChoice {
    Auto(serde::de::IgnoredAny),
    Any(serde::de::IgnoredAny),
    Tool(NamedTool),
}

#[derive(Debug, Deserialize)]
struct NamedTool {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ConverseMessage {
    role: String,
    #[serde(default)]
    content: Vec<ConverseBlock>,
}

/// A content block: text, a tool call or a tool result, or one the relay does not read (its one
/// key names its kind).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseBlock {
    text: Option<String>,
    tool_use: Option<ToolUseBlock>,
    tool_result: Option<ToolResultBlock>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseBlock {
    tool_use_id: String,
    name: String,
    input: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolResultBlock {
    tool_use_id: String,
    #[serde(default)]
    content: Vec<ToolResultPart>,
    /// `success` or `error`.
    status: Option<String>,
}

/// A part of a tool's result: `{"text"}` or `{"json"}` (the relay carries JSON as its text).
#[derive(Debug, Deserialize)]
struct ToolResultPart {
    text: Option<String>,
    json: Option<Value>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// A message's content as the relay carries it.
#[derive(Debug, Default)]
struct Turn {
    text: String,
    tool_calls: Vec<ToolCall>,
    tool_results: Vec<ToolResult>,
}

/// The text, tool calls and tool results of `blocks`; `field` names them in a refusal.
fn turn_of(blocks: &[ConverseBlock], field: &str) -> Result<Turn, RelayError> {
    let mut turn = Turn::default();
    let mut texts = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        if let Some(call) = &block.tool_use {
            turn.tool_calls.push(ToolCall {
                id: call.tool_use_id.clone(),
                name: call.name.clone(),
                input: call.input.clone(),
            });
        } else if let Some(result) = &block.tool_result {
            let mut parts = Vec::with_capacity(result.content.len());
            for (part_index, part) in result.content.iter().enumerate() {
                match (&part.text, &part.json) {
                    (Some(text), _) => parts.push(text.clone()),
                    (None, Some(json)) => parts.push(json.to_string()),
                    (None, None) => {
                        return Err(compat::unsupported(
                            format!("{field}[{index}].toolResult.content[{part_index}]"),
                            format!(
                                "only text and json results are supported, got `{}`",
                                part.other.keys().next().map_or("nothing", String::as_str)
                            ),
                        ));
                    }
                }
            }
            turn.tool_results.push(ToolResult {
                tool_call_id: result.tool_use_id.clone(),
                content: parts.join("\n"),
                is_error: result.status.as_deref() == Some("error"),
            });
        } else {
            texts.push(text_block(block, index, field)?);
        }
    }
    turn.text = texts.join("\n");
    Ok(turn)
}

/// The text of a block that must be text.
fn text_block<'b>(
    block: &'b ConverseBlock,
    index: usize,
    field: &str,
) -> Result<&'b str, RelayError> {
    match (&block.text, block.other.keys().next()) {
        (Some(text), _) => Ok(text.as_str()),
        (None, kind) => Err(compat::unsupported(
            format!("{field}[{index}]"),
            format!(
                "only text, toolUse and toolResult blocks are supported, got `{}`",
                kind.map_or("an empty block", String::as_str)
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    #[serde(default)]
    stop_sequences: Vec<String>,
}

impl ConverseRequest {
    fn to_chat_request(&self) -> Result<ChatRequest, RelayError> {
        let mut messages = Vec::with_capacity(self.messages.len());
        for (index, message) in self.messages.iter().enumerate() {
            let turn = turn_of(&message.content, &format!("messages[{index}].content"))?;
            let mut relayed = compat::message(index, &message.role, turn.text)?;
            relayed.tool_calls = turn.tool_calls;
            relayed.tool_results = turn.tool_results;
            messages.push(relayed);
        }
        let system = self
            .system
            .iter()
            .enumerate()
            .map(|(index, block)| text_block(block, index, "system"))
            .collect::<Result<Vec<_>, _>>()?
            .join("\n");
        let config = self.inference_config.as_ref();
        let (tools, tool_choice) = match &self.tool_config {
            Some(tool_config) => tool_config.to_relay()?,
            None => (Vec::new(), None),
        };
        Ok(ChatRequest {
            messages,
            system: (!system.is_empty()).then_some(system),
            max_tokens: config.and_then(|c| c.max_tokens),
            temperature: config.and_then(|c| c.temperature),
            stop_sequences: config.map(|c| c.stop_sequences.clone()).unwrap_or_default(),
            tools,
            tool_choice,
            ..ChatRequest::default()
        })
    }
}

impl ToolConfig {
    /// The tool specs and the choice.
    fn to_relay(&self) -> Result<(Vec<ToolDefinition>, Option<ToolChoice>), RelayError> {
        let tools = self
            .tools
            .iter()
            .enumerate()
            .map(|(index, tool)| match &tool.tool_spec {
                Some(spec) => Ok(ToolDefinition {
                    name: spec.name.clone(),
                    description: spec.description.clone(),
                    input_schema: spec.input_schema.json.clone(),
                }),
                None => Err(compat::unsupported(
                    format!("toolConfig.tools[{index}]"),
                    "only toolSpec tools are supported",
                )),
            })
            .collect::<Result<_, _>>()?;
        let choice = self.tool_choice.as_ref().map(|choice| match choice {
            ConverseToolChoice::Auto(_) => ToolChoice::Auto,
            ConverseToolChoice::Any(_) => ToolChoice::Any,
            ConverseToolChoice::Tool(tool) => ToolChoice::Tool {
                name: tool.name.clone(),
            },
        });
        Ok((tools, choice))
    }
}

/// The relay model a path's model id names: a relay model id, or a model's upstream id.
fn resolve_model(state: &AppState, model_id: &str) -> Result<String, RelayError> {
    let table = state.routing().table();
    let catalog = table.catalog();
    if catalog.get(model_id).is_some() {
        return Ok(model_id.to_string());
    }
    catalog
        .models()
        .iter()
        .find(|entry| entry.config.upstream_id.as_deref() == Some(model_id))
        .map(|entry| entry.config.id.clone())
        .ok_or_else(|| RelayError::ModelNotFound {
            id: model_id.to_string(),
        })
}

async fn model_operation(
    State(state): State<AppState>,
    edge: Edge,
    Path((model_id, operation)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request_id = edge.request_id.clone();
    let answer = async {
        let model = resolve_model(&state, &model_id)?;
        match operation.as_str() {
            "converse" | "converse-stream" => {
                let converse: ConverseRequest = parse_json(&body)?;
                let request = ChatRequest {
                    model: Some(model),
                    ..converse.to_chat_request()?
                };
                let prompt_chars = request.prompt_chars();
                let stream = (operation == "converse-stream").then_some(ConverseFrames {
                    prompt_chars,
                    answer_chars: 0,
                    sent_text: false,
                    open_text: Some(0),
                    next_block: 1,
                });
                compat::answer(&state, &edge, request, stream, |answer| {
                    converse_body(answer, prompt_chars)
                })
                .await
            }
            "invoke" | "invoke-with-response-stream" => {
                let asked: MessagesRequest = parse_json(&body)?;
                let request = ChatRequest {
                    model: Some(model),
                    ..asked.to_chat_request()?
                };
                let prompt_chars = request.prompt_chars();
                let stream = (operation == "invoke-with-response-stream").then(|| {
                    InvokeFrames(AnthropicEvents::new(format!("msg_{request_id}"), prompt_chars))
                });
                compat::answer(&state, &edge, request, stream, |answer| {
                    message_body(answer, prompt_chars)
                })
                .await
            }
            other => Err(RelayError::Invalid(fm_protocol::ValidationError::new(
                "operation",
                format!(
                    "`{other}` is not one of converse, converse-stream, invoke, invoke-with-response-stream"
                ),
            ))),
        }
    }
    .await;
    // The relay's own error answer: the error dialect layer rewrites it in Bedrock's, as it does
    // the edge's.
    answer.unwrap_or_else(|err| err.with_request_id(&request_id).into_response())
}

fn stop_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::Other => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::ContentFiltered => "content_filtered",
    }
}

/// Bedrock's `usage`: the upstream's counts, or the relay's estimate when it reported none.
fn usage_body(usage: Option<Usage>, prompt_chars: usize, answer_chars: usize) -> Value {
    let usage = compat::usage_or_estimate(usage, prompt_chars, answer_chars);
    json!({
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.total_tokens,
    })
}

/// Converse's answer: a text block, then a `toolUse` block per call.
fn converse_body(answer: &ChatResponse, prompt_chars: usize) -> Value {
    let mut content = Vec::with_capacity(1 + answer.tool_calls.len());
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        content.push(json!({"text": answer.text}));
    }
    content.extend(answer.tool_calls.iter().map(
        |call| json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.input}}),
    ));
    let answer_chars = answer.text.chars().count()
        + answer
            .tool_calls
            .iter()
            .map(|call| call.input.to_string().len())
            .sum::<usize>();
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason(answer.stop_reason),
        "usage": usage_body(answer.usage, prompt_chars, answer_chars),
        "metrics": {"latencyMs": answer.timings.total_ms.round() as u64},
        "fm_relay": {"route": answer.route, "timings": answer.timings, "degraded": answer.degraded},
    })
}

/// The exception type of a stream that fails with `code` after it started.
fn stream_exception(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UpstreamThrottled | ErrorCode::RateLimited | ErrorCode::QuotaExceeded => {
            "throttlingException"
        }
        ErrorCode::UpstreamUnavailable | ErrorCode::ShuttingDown => "serviceUnavailableException",
        ErrorCode::UpstreamTimeout | ErrorCode::UpstreamStalled | ErrorCode::DeadlineExceeded => {
            "modelTimeoutException"
        }
        ErrorCode::Internal | ErrorCode::Unknown => "internalServerException",
        code if !code.is_retryable() && code != ErrorCode::UpstreamError => "validationException",
        _ => "modelStreamErrorException",
    }
}

/// ConverseStream's frames.
struct ConverseFrames {
    prompt_chars: usize,
    answer_chars: usize,
    sent_text: bool,
    /// The index of the open text block (0 from the start, until a tool call).
    open_text: Option<usize>,
    /// The index the next content block takes.
    next_block: usize,
}

impl ConverseFrames {
    fn stop_text(&mut self, chunk: &mut Vec<u8>) {
        if let Some(index) = self.open_text.take() {
            chunk.extend(event_frame(
                "contentBlockStop",
                &json!({"contentBlockIndex": index}),
            ));
        }
    }
}

impl StreamEncoder for ConverseFrames {
    fn encode(&mut self, event: &StreamEvent, chunk: &mut Vec<u8>) -> bool {
        match event {
            StreamEvent::Start { .. } => {
                chunk.extend(event_frame("messageStart", &json!({"role": "assistant"})));
            }
            StreamEvent::TextDelta { text } => {
                self.sent_text = true;
                self.answer_chars += text.chars().count();
                let index = *self.open_text.get_or_insert_with(|| {
                    self.next_block += 1;
                    self.next_block - 1
                });
                let delta = json!({"contentBlockIndex": index, "delta": {"text": text}});
                chunk.extend(event_frame("contentBlockDelta", &delta));
            }
            StreamEvent::ToolCall { call } => {
                self.sent_text = true;
                let input = call.input.to_string();
                self.answer_chars += input.len();
                self.stop_text(chunk);
                let index = self.next_block;
                self.next_block += 1;
                chunk.extend(event_frame(
                    "contentBlockStart",
                    &json!({"contentBlockIndex": index,
                    "start": {"toolUse": {"toolUseId": call.id, "name": call.name}}}),
                ));
                chunk.extend(event_frame(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": input}}}),
                ));
                chunk.extend(event_frame(
                    "contentBlockStop",
                    &json!({"contentBlockIndex": index}),
                ));
            }
            StreamEvent::Usage { .. } => {}
            StreamEvent::Failover {
                discard_partial, ..
            } => {
                if *discard_partial && self.sent_text {
                    let frame =
                        exception_frame("modelStreamErrorException", compat::CANNOT_TAKE_BACK);
                    chunk.extend(frame);
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
                self.stop_text(chunk);
                chunk.extend(event_frame(
                    "messageStop",
                    &json!({"stopReason": stop_reason(*stop)}),
                ));
                let metadata = json!({
                    "usage": usage_body(*usage, self.prompt_chars, self.answer_chars),
                    "metrics": {"latencyMs": timings.total_ms.round() as u64},
                    "fm_relay": {"route": route, "timings": timings, "degraded": degraded},
                });
                chunk.extend(event_frame("metadata", &metadata));
                return false;
            }
            StreamEvent::Error { code, message, .. } => {
                chunk.extend(exception_frame(stream_exception(*code), message));
                return false;
            }
        }
        true
    }

    fn content_type(&self) -> &'static str {
        EVENT_STREAM
    }

    fn keep_alive(&self) -> Option<&'static [u8]> {
        None
    }
}

const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// InvokeModelWithResponseStream's frames: Anthropic's events, each in a `chunk`; an error as
/// an exception frame.
struct InvokeFrames(AnthropicEvents);

impl StreamEncoder for InvokeFrames {
    fn encode(&mut self, event: &StreamEvent, chunk: &mut Vec<u8>) -> bool {
        let mut events = Vec::new();
        let go_on = self.0.next(event, &mut events);
        for (name, data) in events {
            if name == "error" {
                let exception = match event {
                    StreamEvent::Error { code, .. } => stream_exception(*code),
                    _ => "modelStreamErrorException",
                };
                let message = data["error"]["message"].as_str().unwrap_or_default();
                chunk.extend(exception_frame(exception, message));
            } else {
                chunk.extend(chunk_frame(&data));
            }
        }
        go_on
    }

    fn content_type(&self) -> &'static str {
        EVENT_STREAM
    }

    fn keep_alive(&self) -> Option<&'static [u8]> {
        None
    }
}

/// Bedrock's error type and status for a relay error of `code`.
fn error_type(code: ErrorCode, status: StatusCode) -> (&'static str, StatusCode) {
    match code {
        ErrorCode::UpstreamThrottled
        | ErrorCode::RateLimited
        | ErrorCode::QuotaExceeded
        | ErrorCode::OverCapacity => ("ThrottlingException", StatusCode::TOO_MANY_REQUESTS),
        ErrorCode::Unauthorized => ("UnrecognizedClientException", StatusCode::FORBIDDEN),
        ErrorCode::Forbidden => ("AccessDeniedException", StatusCode::FORBIDDEN),
        ErrorCode::NotFound => ("ResourceNotFoundException", StatusCode::NOT_FOUND),
        ErrorCode::UpstreamUnavailable | ErrorCode::ShuttingDown | ErrorCode::LimitsUnavailable => {
            (
                "ServiceUnavailableException",
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
        ErrorCode::UpstreamTimeout | ErrorCode::UpstreamStalled | ErrorCode::DeadlineExceeded => {
            ("ModelTimeoutException", StatusCode::REQUEST_TIMEOUT)
        }
        ErrorCode::UpstreamError | ErrorCode::UpstreamMisconfigured => {
            ("ModelErrorException", StatusCode::FAILED_DEPENDENCY)
        }
        _ if status.is_client_error() => ("ValidationException", status),
        _ => ("InternalServerException", StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// Middleware for the Bedrock routes: an error answer — the relay's own, from the edge (key,
/// limits, content type, size) or the route — is rewritten in Bedrock's dialect: the type in
/// `x-amzn-ErrorType` (what boto3 raises: a relay rate limit is a `ThrottlingException`), the
/// message as `message`, the relay's error beside it as `fm_relay`.
pub async fn error_dialect(request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with(BEDROCK_PREFIX) {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Error bodies are the relay's own, a few hundred bytes.
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let native: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let error = &native["error"];
    let code: ErrorCode =
        serde_json::from_value(error["code"].clone()).unwrap_or(ErrorCode::Unknown);
    let message = error["message"]
        .as_str()
        .unwrap_or("the relay refused the request");
    let (kind, status) = error_type(code, status);
    let body = json!({"message": message, "fm_relay": error});
    parts.status = status;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert("x-amzn-ErrorType", HeaderValue::from_static(kind));
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body.to_string())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fm_protocol::Message;

    #[test]
    fn converse_requests_become_relay_requests() {
        let request: ConverseRequest = serde_json::from_value(json!({
            "messages": [
                {"role": "user", "content": [{"text": "Hi"}, {"text": "there"}]},
                {"role": "assistant", "content": [{"text": "Hello."}]},
                {"role": "user", "content": [{"text": "More"}]},
            ],
            "system": [{"text": "Be brief."}],
            "inferenceConfig": {"maxTokens": 20, "temperature": 0.3, "stopSequences": ["END"]},
            "additionalModelRequestFields": {"top_k": 5},
        }))
        .unwrap();
        let request = request.to_chat_request().unwrap();
        assert_eq!(request.system.as_deref(), Some("Be brief."));
        assert_eq!(request.messages[0], Message::user("Hi\nthere"));
        assert_eq!(request.max_tokens, Some(20));
        assert_eq!(request.temperature, Some(0.3));
        assert_eq!(request.stop_sequences, ["END"]);
    }

    #[test]
    fn what_the_relay_cannot_honour_is_refused_by_name() {
        let field = |body: Value| {
            let request: ConverseRequest = serde_json::from_value(body).unwrap();
            match request.to_chat_request().unwrap_err() {
                RelayError::Invalid(invalid) => invalid.field,
                other => panic!("{other}"),
            }
        };
        assert_eq!(
            field(json!({"toolConfig": {"tools": [{"cachePoint": {"type": "default"}}]}})),
            "toolConfig.tools[0]"
        );
        assert_eq!(
            field(
                json!({"messages": [{"role": "user", "content": [{"text": "x"}, {"image": {}}]}]})
            ),
            "messages[0].content[1]"
        );
    }

    #[test]
    fn tool_config_tool_use_and_tool_results_become_relay_tool_use() {
        let request: ConverseRequest = serde_json::from_value(json!({
            "messages": [
                {"role": "user", "content": [{"text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Paris"}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_1", "content": [{"json": {"sky": "clear"}}], "status": "error"}},
                ]},
            ],
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}],
                "toolChoice": {"tool": {"name": "weather"}},
            },
        }))
        .unwrap();
        let request = request.to_chat_request().unwrap();
        assert_eq!(request.messages[1].tool_calls[0].id, "tooluse_1");
        let result = &request.messages[2].tool_results[0];
        assert_eq!(
            (result.content.as_str(), result.is_error),
            (r#"{"sky":"clear"}"#, true)
        );
        assert_eq!(request.tools[0].input_schema, json!({"type": "object"}));
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::Tool {
                name: "weather".into()
            })
        );
        fm_protocol::validate_chat_request(&request, |_| true).unwrap();
    }

    #[test]
    fn relay_errors_take_bedrock_s_types() {
        assert_eq!(
            error_type(ErrorCode::RateLimited, StatusCode::TOO_MANY_REQUESTS).0,
            "ThrottlingException"
        );
        assert_eq!(
            error_type(ErrorCode::InvalidRequest, StatusCode::BAD_REQUEST),
            ("ValidationException", StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            error_type(ErrorCode::NotFound, StatusCode::NOT_FOUND).0,
            "ResourceNotFoundException"
        );
        assert_eq!(
            stream_exception(ErrorCode::UpstreamThrottled),
            "throttlingException"
        );
        assert_eq!(
            stream_exception(ErrorCode::UpstreamError),
            "modelStreamErrorException"
        );
    }
}
