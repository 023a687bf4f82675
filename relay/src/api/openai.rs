//! `POST /v1/chat/completions`: the OpenAI chat-completions API, so that existing OpenAI clients
//! and SDKs work against the relay with only a base URL changed — with every policy of the
//! native routes (routing, failover, cache, degradation) behind it.
//!
//! Requests: `model` (a relay model id), `messages` (`system` / `developer` messages become the
//! system prompt; content as a string or text parts), `max_tokens` or `max_completion_tokens`,
//! `temperature` (OpenAI's 0 to 2 where the model takes it: Bedrock's models take 0 to 1),
//! `response_format` (passed to OpenAI-compatible models; a 400 for others), `stop`, `stream`,
//! `stream_options.include_usage`, `tools` (functions), `tool_choice` (`auto`, `none`,
//! `required` or one function), assistant messages' `tool_calls` and `tool` messages (their
//! results; consecutive ones, and a user message after them, make one relay user turn).
//! Fields the relay does not use are ignored, as OpenAI-compatible servers do; `n` above 1 and
//! what else the relay cannot honour (image parts, tools other than functions) is a 400 naming
//! the field.
//!
//! Answers: `chat.completion` objects (with `message.tool_calls` when the model called tools,
//! their input as the JSON string `arguments`), or SSE `chat.completion.chunk`s (a tool call
//! whole in one chunk) ending with
//! `data: [DONE]` (a usage chunk before it when asked), plus an `fm_relay` object with the route,
//! timings and the degraded flag. Errors use OpenAI's body (`{"error": {"message", "type",
//! "param", "code"}}`) with the relay's status codes and codes. A stream that fails after it
//! started ends with an `error` object and no `[DONE]`. Text an OpenAI client received cannot be
//! taken back, so an answer that another target must restart from scratch is resumed by replay
//! (`resilience::replay`): held back until it has reproduced that text, it continues seamlessly
//! when it does and ends with an error when it diverges — never a spliced text.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use fm_protocol::{
    ChatRequest, ChatResponse, ErrorCode, Message, StopReason, StreamEvent, ToolCall, ToolChoice,
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
    Router::new().route("/v1/chat/completions", post(chat_completions))
}

/// The request, as far as the relay reads it.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<CompletionMessage>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    #[serde(default)]
    tools: Vec<CompletionTool>,
    tool_choice: Option<Value>,
    response_format: Option<Value>,
}

/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
#[derive(Debug, Deserialize)]
struct CompletionTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionDefinition>,
}

#[derive(Debug, Deserialize)]
struct FunctionDefinition {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CompletionMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Vec<CompletionToolCall>,
    tool_call_id: Option<String>,
}

/// An assistant's call: `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Deserialize)]
struct CompletionToolCall {
    id: String,
    function: FunctionCall,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    name: String,
    /// The input, as a JSON string.
    arguments: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl CompletionRequest {
    /// The relay's request for this one.
    fn to_chat_request(&self) -> Result<ChatRequest, RelayError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(compat::unsupported(
                "n",
                "the relay answers with one choice; send n = 1",
            ));
        }
        let mut system = Vec::new();
        let mut messages: Vec<Message> = Vec::with_capacity(self.messages.len());
        for (index, message) in self.messages.iter().enumerate() {
            let text = match &message.content {
                Some(Content::Text(text)) => text.clone(),
                Some(Content::Parts(parts)) => {
                    if let Some(part) = parts.iter().find(|part| part.kind != "text") {
                        return Err(compat::unsupported(
                            format!("messages[{index}].content"),
                            format!("only text parts are supported, got `{}`", part.kind),
                        ));
                    }
                    parts
                        .iter()
                        .filter_map(|part| part.text.clone())
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                None => String::new(),
            };
            // The open user turn that holds tool results, which a `tool` or `user` message
            // after them joins.
            let results_turn = messages
                .last_mut()
                .filter(|last| !last.tool_results.is_empty() && last.content.is_empty());
            match message.role.as_str() {
                "system" | "developer" => system.push(text),
                "user" => match results_turn {
                    Some(turn) => turn.content = text,
                    None => messages.push(Message::user(text)),
                },
                "assistant" => {
                    let mut answer = Message::assistant(text);
                    answer.tool_calls = tool_calls(index, &message.tool_calls)?;
                    messages.push(answer);
                }
                "tool" => {
                    let result = ToolResult {
                        tool_call_id: message.tool_call_id.clone().ok_or_else(|| {
                            compat::unsupported(
                                format!("messages[{index}].tool_call_id"),
                                "a `tool` message needs the id of the call it answers",
                            )
                        })?,
                        content: text,
                        is_error: false,
                    };
                    match results_turn {
                        Some(turn) => turn.tool_results.push(result),
                        None => messages.push(Message {
                            tool_results: vec![result],
                            ..Message::user("")
                        }),
                    }
                }
                other => {
                    return Err(compat::unsupported(
                        format!("messages[{index}].role"),
                        format!(
                            "role `{other}` is not supported; use system, user, assistant or tool"
                        ),
                    ));
                }
            }
        }
        Ok(ChatRequest {
            messages,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            model: self.model.clone(),
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            response_format: self
                .response_format
                .as_ref()
                .map(|format| {
                    serde_json::from_value(format.clone()).map_err(|err| {
                        compat::unsupported(
                            "response_format",
                            format!("is not `text`, `json_object` or `json_schema`: {err}"),
                        )
                    })
                })
                .transpose()?,
            stop_sequences: match &self.stop {
                Some(Stop::One(stop)) => vec![stop.clone()],
                Some(Stop::Many(stops)) => stops.clone(),
                None => Vec::new(),
            },
            tools: self.tool_definitions()?,
            tool_choice: self.tool_choice.as_ref().map(tool_choice).transpose()?,
            ..ChatRequest::default()
        })
    }

    /// The function tools.
    fn tool_definitions(&self) -> Result<Vec<ToolDefinition>, RelayError> {
        self.tools
            .iter()
            .enumerate()
            .map(|(index, tool)| match (&tool.function, tool.kind.as_str()) {
                (Some(function), "function") => Ok(ToolDefinition {
                    name: function.name.clone(),
                    description: function.description.clone(),
                    input_schema: function
                        .parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                }),
                (None, "function") => Err(compat::unsupported(
                    format!("tools[{index}].function"),
                    "a function tool needs its `function`",
                )),
                (_, other) => Err(compat::unsupported(
                    format!("tools[{index}].type"),
                    format!("only `function` tools are supported, got `{other}`"),
                )),
            })
            .collect()
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage)
    }
}

async fn chat_completions(
    State(state): State<AppState>,
    edge: Edge,
    body: Result<ApiJson<CompletionRequest>, RequestError>,
) -> Response {
    let request_id = &edge.request_id;
    let answer = async {
        let ApiJson(completion) = body.map_err(|rejection| rejection.error)?;
        let request = completion.to_chat_request()?;
        // An OpenAI client expects usage; when the upstream reports none, it gets an estimate.
        let prompt_chars = request.prompt_chars();
        let stream = completion.stream.then(|| ChunkEncoder {
            id: format!("chatcmpl-{request_id}"),
            created: unix_seconds(),
            model: String::new(),
            include_usage: completion.include_usage(),
            prompt_chars,
            answer_chars: 0,
            sent_text: false,
            tool_calls_sent: 0,
        });
        compat::answer(&state, &edge, request, stream, |answer| {
            completion_body(answer, prompt_chars)
        })
        .await
    }
    .await;
    answer.unwrap_or_else(|err: RelayError| {
        compat::error_response(err, request_id, |error, _| {
            error_body(error.code, &error.message, error.field.as_deref())
        })
    })
}

/// An assistant message's calls, their `arguments` read as JSON.
fn tool_calls(index: usize, calls: &[CompletionToolCall]) -> Result<Vec<ToolCall>, RelayError> {
    calls
        .iter()
        .enumerate()
        .map(|(call_index, call)| {
            let input = serde_json::from_str(&call.function.arguments).map_err(|err| {
                compat::unsupported(
                    format!("messages[{index}].tool_calls[{call_index}].function.arguments"),
                    format!("is not JSON: {err}"),
                )
            })?;
            Ok(ToolCall {
                id: call.id.clone(),
                name: call.function.name.clone(),
                input,
            })
        })
        .collect()
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"` or `{"type": "function", "function":
/// {"name"}}`.
fn tool_choice(choice: &Value) -> Result<ToolChoice, RelayError> {
    match choice {
        Value::String(mode) if mode == "auto" => Ok(ToolChoice::Auto),
        Value::String(mode) if mode == "none" => Ok(ToolChoice::None),
        Value::String(mode) if mode == "required" => Ok(ToolChoice::Any),
        _ => match choice["function"]["name"].as_str() {
            Some(name) if choice["type"] == "function" => Ok(ToolChoice::Tool {
                name: name.to_string(),
            }),
            _ => Err(compat::unsupported(
                "tool_choice",
                "is not `auto`, `none`, `required` or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )),
        },
    }
}

/// The `tool_calls` of an answer, or of a stream chunk (`index` counting from `first`).
fn tool_calls_body(calls: &[ToolCall], first: usize) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(offset, call)| {
            json!({
                "index": first + offset,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.input.to_string()},
            })
        })
        .collect()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::StopSequence | StopReason::Other => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ContentFiltered => "content_filter",
        StopReason::ToolUse => "tool_calls",
    }
}

/// OpenAI's `usage` object: the upstream's counts, or (marked `"estimated": true`) the relay's
/// estimate from the prompt's and the answer's characters when it reported none.
fn usage_body(usage: Option<Usage>, prompt_chars: usize, answer_chars: usize) -> Value {
    let usage = compat::usage_or_estimate(usage, prompt_chars, answer_chars);
    let mut body = json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    });
    if usage.estimated {
        body["estimated"] = true.into();
    }
    body
}

/// A `chat.completion` for the relay's answer to a prompt of `prompt_chars` characters.
fn completion_body(answer: &ChatResponse, prompt_chars: usize) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.text});
    if !answer.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls_body(&answer.tool_calls, 0);
        if answer.text.is_empty() {
            message["content"] = Value::Null;
        }
    }
    let answer_chars = answer.text.chars().count()
        + answer
            .tool_calls
            .iter()
            .map(|call| call.input.to_string().len())
            .sum::<usize>();
    json!({
        "id": format!("chatcmpl-{}", answer.request_id),
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(answer.stop_reason),
        }],
        "usage": usage_body(answer.usage, prompt_chars, answer_chars),
        "fm_relay": {
            "route": answer.route,
            "timings": answer.timings,
            "degraded": answer.degraded,
        },
    })
}

/// OpenAI's error body for `code`.
fn error_body(code: ErrorCode, message: &str, field: Option<&str>) -> Value {
    let kind = match code {
        ErrorCode::UpstreamThrottled => "rate_limit_error",
        ErrorCode::Internal | ErrorCode::Unknown => "api_error",
        code if code.is_retryable() => "server_error",
        _ => "invalid_request_error",
    };
    let code = serde_json::to_value(code).unwrap_or(Value::Null);
    json!({"error": {"message": message, "type": kind, "param": field, "code": code}})
}

/// Writes stream events as `chat.completion.chunk`s.
struct ChunkEncoder {
    id: String,
    created: u64,
    /// The model answering, from the `start` event.
    model: String,
    include_usage: bool,
    /// Characters of the prompt and of the answer so far, for a usage estimate.
    prompt_chars: usize,
    answer_chars: usize,
    sent_text: bool,
    /// Tool calls sent so far: the next one's `index`.
    tool_calls_sent: usize,
}

impl ChunkEncoder {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn push(chunk: &mut Vec<u8>, data: &str) {
        chunk.extend_from_slice(b"data: ");
        chunk.extend_from_slice(data.as_bytes());
        chunk.extend_from_slice(b"\n\n");
    }
}

impl StreamEncoder for ChunkEncoder {
    fn encode(&mut self, event: &StreamEvent, chunk: &mut Vec<u8>) -> bool {
        match event {
            StreamEvent::Start { model, .. } => {
                self.model = model.clone();
                let first = self.chunk(json!([{
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": null,
                }]));
                Self::push(chunk, &first.to_string());
            }
            StreamEvent::TextDelta { text } => {
                self.sent_text = true;
                self.answer_chars += text.chars().count();
                let delta = self.chunk(json!([{
                    "index": 0,
                    "delta": {"content": text},
                    "finish_reason": null,
                }]));
                Self::push(chunk, &delta.to_string());
            }
            StreamEvent::ToolCall { call } => {
                self.sent_text = true;
                self.answer_chars += call.input.to_string().len();
                let delta = self.chunk(json!([{
                    "index": 0,
                    "delta": {"tool_calls": tool_calls_body(std::slice::from_ref(call), self.tool_calls_sent)},
                    "finish_reason": null,
                }]));
                self.tool_calls_sent += 1;
                Self::push(chunk, &delta.to_string());
            }
            StreamEvent::Usage { .. } => {}
            StreamEvent::Failover {
                discard_partial, ..
            } => {
                if *discard_partial && self.sent_text {
                    let error =
                        error_body(ErrorCode::UpstreamError, compat::CANNOT_TAKE_BACK, None);
                    Self::push(chunk, &error.to_string());
                    return false;
                }
            }
            StreamEvent::Done {
                stop_reason,
                usage,
                route,
                timings,
                degraded,
            } => {
                let mut last = self.chunk(json!([{
                    "index": 0,
                    "delta": {},
                    "finish_reason": finish_reason(*stop_reason),
                }]));
                last["fm_relay"] =
                    json!({"route": route, "timings": timings, "degraded": degraded});
                Self::push(chunk, &last.to_string());
                if self.include_usage {
                    let mut usage_chunk = self.chunk(json!([]));
                    usage_chunk["usage"] = usage_body(*usage, self.prompt_chars, self.answer_chars);
                    Self::push(chunk, &usage_chunk.to_string());
                }
                Self::push(chunk, "[DONE]");
                return false;
            }
            StreamEvent::Error { code, message, .. } => {
                Self::push(chunk, &error_body(*code, message, None).to_string());
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fm_protocol::Role;

    fn parse(body: Value) -> Result<ChatRequest, RelayError> {
        serde_json::from_value::<CompletionRequest>(body)
            .unwrap()
            .to_chat_request()
    }

    #[test]
    fn openai_requests_become_relay_requests() {
        let request = parse(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "Answer in English."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
            "max_completion_tokens": 20,
            "max_tokens": 99,
            "stop": "END",
            "temperature": 0.3,
            "user": "ignored",
            "top_p": 1,
        }))
        .unwrap();
        assert_eq!(
            request.system.as_deref(),
            Some("Be brief.\n\nAnswer in English.")
        );
        assert_eq!(request.messages, [Message::user("Hi")]);
        assert_eq!(request.max_tokens, Some(20));
        assert_eq!(request.stop_sequences, ["END"]);
        assert_eq!(request.temperature, Some(0.3));
    }

    #[test]
    fn tools_tool_calls_and_tool_messages_become_relay_tool_use() {
        let request = parse(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "time"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
        }))
        .unwrap();
        assert_eq!(request.messages.len(), 3);
        assert_eq!(request.messages[1].role, Role::Assistant);
        assert_eq!(
            request.messages[1].tool_calls[0].input,
            json!({"city": "Paris"})
        );
        let results = &request.messages[2];
        assert_eq!(
            (results.role, results.content.as_str()),
            (Role::User, "Thanks")
        );
        assert_eq!(results.tool_results.len(), 2);
        assert_eq!(results.tool_results[1].tool_call_id, "call_2");
        assert_eq!(request.tools[1].input_schema["type"], "object");
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::Tool {
                name: "weather".into()
            })
        );
        fm_protocol::validate_chat_request(&request, |_| true).unwrap();
        assert_eq!(tool_choice(&json!("required")).unwrap(), ToolChoice::Any);
    }

    #[test]
    fn what_the_relay_cannot_honour_is_refused_by_name() {
        let tool = parse(json!({"model": "m", "messages": [], "tools": [{"type": "web_search"}]}))
            .unwrap_err();
        assert!(tool.to_string().starts_with("tools[0].type:"), "{tool}");
        let arguments = parse(json!({"model": "m", "messages": [{"role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}]}]}))
        .unwrap_err();
        assert!(
            arguments
                .to_string()
                .starts_with("messages[0].tool_calls[0].function.arguments:"),
            "{arguments}"
        );
        let choice =
            parse(json!({"model": "m", "messages": [], "tool_choice": "sometimes"})).unwrap_err();
        assert!(choice.to_string().starts_with("tool_choice:"), "{choice}");
        let many = parse(json!({"model": "m", "messages": [], "n": 2})).unwrap_err();
        assert!(many.to_string().starts_with("n:"), "{many}");
        let image = parse(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url"}]}]}))
        .unwrap_err();
        assert!(image.to_string().contains("image_url"), "{image}");
        let tool_role =
            parse(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
                .unwrap_err();
        assert!(
            tool_role
                .to_string()
                .starts_with("messages[0].tool_call_id:"),
            "{tool_role}"
        );
        let function_role =
            parse(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}))
                .unwrap_err();
        assert!(
            function_role.to_string().contains("role `function`"),
            "{function_role}"
        );
    }
}
