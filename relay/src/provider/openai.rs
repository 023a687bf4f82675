//! OpenAI-compatible upstreams (OpenAI, Ollama, vLLM, llama.cpp server, ...) through their
//! chat-completions API: `POST {endpoint}/chat/completions`, one JSON answer or Server-Sent
//! Events of `chat.completion.chunk`s ending with `data: [DONE]`, with
//! `stream_options.include_usage` so the stream reports its usage.
//!
//! Errors are classified at this edge like Bedrock's: 429 throttled; 5xx unavailable; 408 timed
//! out; 401/403/404 misconfigured; 400 rejected, or a context-window failure when the error code
//! or message says the input is too long; connection failures unavailable. Inside a stream an
//! `error` object fails the call, a line that is not JSON is a protocol failure, and a stream that
//! ends without `[DONE]` or a finish reason is cut off (the relay never passes it as complete).
//!
//! Tools go as `tools` (functions) and `tool_choice`; an assistant's calls as `tool_calls` with
//! their input as a JSON string in `arguments`, and tool results as `role: "tool"` messages. A
//! streamed call's pieces (by `index`) are held until the finish reason and passed on whole.

use std::time::Duration;

use fm_protocol::{ChatRequest, Role, SseDecoder, StopReason, ToolCall, ToolChoice, Usage};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatProvider, PartialToolCall, ProviderAnswer, ProviderEvent, ProviderStream};
use crate::error::{RelayError, UpstreamFailure};

const KIND: &str = "openai";

/// The most tool calls one streamed answer may make: an upstream that numbers more is broken.
const MAX_STREAMED_TOOL_CALLS: usize = 128;

/// An OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    /// The API's base URL, e.g. `http://127.0.0.1:11434/v1`, without a trailing slash.
    base_url: String,
    /// `{base_url}/chat/completions`, parsed once (not per call); `None` when it is not a URL,
    /// which the config's validation refuses before a provider is made.
    chat_url: Option<reqwest::Url>,
    api_key: Option<String>,
    /// The label of this place in routes and logs (the model's `region`).
    location: String,
}

/// Makes rustls use the `ring` provider (as the AWS SDK's client does here) unless a provider is
/// installed already. Needed before building a [`reqwest::Client`].
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One HTTP client (one connection pool) for every OpenAI-compatible upstream.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, RelayError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|err| RelayError::Startup(format!("the OpenAI-compatible HTTP client: {err}")))
}

impl OpenAiProvider {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: Option<String>,
        location: &str,
    ) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        let chat_url = reqwest::Url::parse(&format!("{base_url}/chat/completions")).ok();
        OpenAiProvider {
            http,
            base_url,
            chat_url,
            api_key,
            location: location.to_string(),
        }
    }

    fn target(&self, upstream_id: &str) -> String {
        format!("{upstream_id} in {}", self.location)
    }

    fn error(&self, upstream_id: &str, failure: UpstreamFailure, message: String) -> RelayError {
        RelayError::Upstream {
            failure,
            provider: KIND,
            target: self.target(upstream_id),
            message,
            retry_after: None,
        }
    }

    /// Sends the request; a non-2xx answer becomes a classified error.
    async fn send(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, RelayError> {
        let Some(url) = &self.chat_url else {
            return Err(self.error(
                upstream_id,
                UpstreamFailure::Misconfigured,
                format!("the endpoint `{}` is not a URL", self.base_url),
            ));
        };
        let mut call = self
            .http
            .post(url.clone())
            .json(&body(upstream_id, request, stream));
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        // The attempt's trace context goes on to the upstream (when traces are exported).
        let mut trace_headers = axum::http::HeaderMap::new();
        crate::telemetry::traces::inject(&mut trace_headers);
        if !trace_headers.is_empty() {
            call = call.headers(trace_headers);
        }
        let response = call.send().await.map_err(|err| {
            let failure = if err.is_timeout() {
                UpstreamFailure::Timeout
            } else {
                UpstreamFailure::Unavailable
            };
            self.error(upstream_id, failure, format!("the call failed: {err}"))
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = super::bedrock::asked_wait(
            header("retry-after").as_deref(),
            header("retry-after-ms").as_deref(),
        );
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let (failure, message) = classify_error(status, &body);
        Err(RelayError::Upstream {
            failure,
            provider: KIND,
            target: self.target(upstream_id),
            message,
            retry_after,
        })
    }
}

/// The chat-completions request body.
fn body(upstream_id: &str, request: &ChatRequest, stream: bool) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        for result in &message.tool_results {
            messages.push(json!({
                "role": "tool",
                "tool_call_id": result.tool_call_id,
                "content": result.content,
            }));
        }
        match message.role {
            Role::Assistant if !message.tool_calls.is_empty() => {
                let calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.input.to_string()},
                        })
                    })
                    .collect();
                let content = (!message.content.is_empty()).then_some(&message.content);
                messages
                    .push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            }
            // A user turn of tool results alone is the `tool` messages above.
            Role::User if !message.tool_results.is_empty() && message.content.is_empty() => {}
            Role::User => messages.push(json!({"role": "user", "content": message.content})),
            Role::Assistant => {
                messages.push(json!({"role": "assistant", "content": message.content}));
            }
        }
    }
    let mut body = json!({
        "model": upstream_id,
        "messages": messages,
        "max_tokens": request.max_tokens_or_default(),
        "stream": stream,
    });
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(format) = &request.response_format {
        body["response_format"] = json!(format);
    }
    if !request.stop_sequences.is_empty() {
        body["stop"] = json!(request.stop_sequences);
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = json!({"name": tool.name, "parameters": tool.input_schema});
                if let Some(description) = &tool.description {
                    function["description"] = json!(description);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body["tools"] = json!(tools);
    }
    if let Some(choice) = &request.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::Any => json!("required"),
            ToolChoice::None => json!("none"),
            ToolChoice::Tool { name } => json!({"type": "function", "function": {"name": name}}),
        };
    }
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The failure an error answer describes, and its message.
fn classify_error(status: u16, body: &Value) -> (UpstreamFailure, String) {
    let error = &body["error"];
    let message = error["message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .unwrap_or("no message");
    let code = error["code"].as_str().unwrap_or_default();
    let failure = match status {
        429 => UpstreamFailure::Throttled,
        408 => UpstreamFailure::Timeout,
        401 | 403 | 404 => UpstreamFailure::Misconfigured,
        400..=499 if code == "context_length_exceeded" || mentions_context(message) => {
            UpstreamFailure::ContextTooLong
        }
        400..=499 => UpstreamFailure::Rejected,
        _ => UpstreamFailure::Unavailable,
    };
    let code = if code.is_empty() { "error" } else { code };
    (failure, format!("{code} (HTTP {status}): {message}"))
}

fn mentions_context(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("context length") || message.contains("too long")
}

#[derive(Debug, Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    #[serde(default)]
    delta: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallPart>,
}

/// A tool call in an answer, or a piece of one in a stream's delta (where only the first piece
/// has the id and name).
#[derive(Debug, Deserialize)]
struct ToolCallPart {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionPart>,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionPart {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl ToolCallPart {
    /// A whole call of a one-shot answer.
    fn whole(self) -> Result<ToolCall, String> {
        let function = self.function.unwrap_or_default();
        let mut call = PartialToolCall::new(
            self.id.ok_or("a tool call has no id")?,
            function.name.ok_or("a tool call has no function name")?,
        );
        call.push(function.arguments.as_deref().unwrap_or_default())?;
        call.finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl From<OpenAiUsage> for Usage {
    fn from(usage: OpenAiUsage) -> Self {
        Usage::new(usage.prompt_tokens, usage.completion_tokens)
    }
}

fn stop_reason(finish_reason: &str) -> StopReason {
    match finish_reason {
        "stop" => StopReason::EndTurn,
        "length" => StopReason::MaxTokens,
        "content_filter" => StopReason::ContentFiltered,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        _ => StopReason::Other,
    }
}

impl ChatProvider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn location(&self) -> &str {
        &self.location
    }

    async fn complete(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> Result<ProviderAnswer, RelayError> {
        let response = self.send(upstream_id, request, false).await?;
        let completion: Completion = response.json().await.map_err(|err| {
            self.error(
                upstream_id,
                UpstreamFailure::Protocol,
                format!("the answer is not a chat completion: {err}"),
            )
        })?;
        let choice = completion.choices.into_iter().next().ok_or_else(|| {
            self.error(
                upstream_id,
                UpstreamFailure::Protocol,
                "the answer has no choices".into(),
            )
        })?;
        let finish_reason = choice.finish_reason.ok_or_else(|| {
            self.error(
                upstream_id,
                UpstreamFailure::Protocol,
                "the answer has no finish_reason: it may be incomplete".into(),
            )
        })?;
        let (text, tool_calls) = match choice.message {
            Some(message) => (
                message.content.unwrap_or_default(),
                message
                    .tool_calls
                    .into_iter()
                    .map(ToolCallPart::whole)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|message| {
                        self.error(upstream_id, UpstreamFailure::Protocol, message)
                    })?,
            ),
            None => (String::new(), Vec::new()),
        };
        Ok(ProviderAnswer {
            text,
            tool_calls,
            stop_reason: stop_reason(&finish_reason),
            usage: completion.usage.map(Usage::from),
        })
    }

    async fn open_stream(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> Result<ProviderStream, RelayError> {
        let response = self.send(upstream_id, request, true).await?;
        let target = self.target(upstream_id);
        let state = ChunkReader {
            body: Box::pin(response.bytes_stream()),
            decoder: SseDecoder::new(),
            ready: std::collections::VecDeque::new(),
            tool_calls: Vec::new(),
            target,
            done: false,
        };
        let events = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(Box::pin(events))
    }
}

/// Reads `chat.completion.chunk` events into provider events.
struct ChunkReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    decoder: SseDecoder,
    ready: std::collections::VecDeque<Result<ProviderEvent, RelayError>>,
    /// The streamed tool calls by index, held until the finish reason.
    tool_calls: Vec<Option<PartialToolCall>>,
    target: String,
    /// `[DONE]` arrived or an error ended the stream.
    done: bool,
}

impl ChunkReader {
    fn fail(&mut self, failure: UpstreamFailure, message: String) -> RelayError {
        self.done = true;
        RelayError::Upstream {
            failure,
            provider: KIND,
            target: self.target.clone(),
            message,
            retry_after: None,
        }
    }

    async fn next(&mut self) -> Option<Result<ProviderEvent, RelayError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let chunk = match self.body.next().await? {
                Ok(chunk) => chunk,
                Err(err) => {
                    let failure = if err.is_timeout() {
                        UpstreamFailure::Timeout
                    } else {
                        UpstreamFailure::Protocol
                    };
                    return Some(Err(self.fail(failure, format!("the stream broke: {err}"))));
                }
            };
            let frames = match self.decoder.feed(&chunk) {
                Ok(frames) => frames,
                Err(err) => {
                    return Some(Err(self.fail(UpstreamFailure::Protocol, err.to_string())));
                }
            };
            for frame in frames {
                if self.done {
                    break;
                }
                let item = self.convert(&frame.data);
                self.ready.extend(item);
            }
        }
    }

    /// The provider events of one `data:` payload.
    fn convert(&mut self, data: &str) -> Vec<Result<ProviderEvent, RelayError>> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Vec::new();
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(err) => {
                return vec![Err(self.fail(
                    UpstreamFailure::Protocol,
                    format!("a stream event is not JSON: {err}"),
                ))];
            }
        };
        if value.get("error").is_some() {
            let (failure, message) = classify_error(500, &value);
            let failure = match value["error"]["code"].as_str() {
                Some("rate_limit_exceeded") => UpstreamFailure::Throttled,
                _ => failure,
            };
            return vec![Err(
                self.fail(failure, format!("in-stream error: {message}"))
            )];
        }
        let chunk: Completion = match serde_json::from_value(value) {
            Ok(chunk) => chunk,
            Err(err) => {
                return vec![Err(self.fail(
                    UpstreamFailure::Protocol,
                    format!("a stream event is not a chat.completion.chunk: {err}"),
                ))];
            }
        };
        let mut events = Vec::new();
        for choice in chunk.choices.into_iter().take(1) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content
                    && !text.is_empty()
                {
                    events.push(Ok(ProviderEvent::TextDelta(text)));
                }
                for part in delta.tool_calls {
                    if let Err(message) = self.add_tool_call_part(part) {
                        events.push(Err(self.fail(UpstreamFailure::Protocol, message)));
                        return events;
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                for call in std::mem::take(&mut self.tool_calls).into_iter().flatten() {
                    match call.finish() {
                        Ok(call) => events.push(Ok(ProviderEvent::ToolCall(call))),
                        Err(message) => {
                            events.push(Err(self.fail(UpstreamFailure::Protocol, message)));
                            return events;
                        }
                    }
                }
                events.push(Ok(ProviderEvent::Stop(stop_reason(&reason))));
            }
        }
        if let Some(usage) = chunk.usage {
            events.push(Ok(ProviderEvent::Usage(usage.into())));
        }
        events
    }
}

impl ChunkReader {
    /// Adds one streamed piece of a tool call: the first piece of an index opens the call.
    fn add_tool_call_part(&mut self, part: ToolCallPart) -> Result<(), String> {
        let index = part.index.unwrap_or(0);
        if index >= MAX_STREAMED_TOOL_CALLS {
            return Err(format!("tool call index {index} is out of range"));
        }
        if self.tool_calls.len() <= index {
            self.tool_calls.resize_with(index + 1, || None);
        }
        let function = part.function.unwrap_or_default();
        let slot = &mut self.tool_calls[index];
        if slot.is_none() {
            *slot = Some(PartialToolCall::new(
                part.id
                    .ok_or("a streamed tool call's first piece has no id")?,
                function.name.clone().unwrap_or_default(),
            ));
        }
        match (slot.as_mut(), function.arguments) {
            (Some(call), Some(arguments)) => call.push(&arguments),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_classified() {
        let body = |code: &str, message: &str| json!({"error": {"code": code, "message": message}});
        assert_eq!(
            classify_error(429, &body("rate_limit_exceeded", "slow down")).0,
            UpstreamFailure::Throttled
        );
        assert_eq!(
            classify_error(400, &body("context_length_exceeded", "too many")).0,
            UpstreamFailure::ContextTooLong
        );
        assert_eq!(
            classify_error(
                400,
                &body("", "This model's maximum context length is 8192 tokens")
            )
            .0,
            UpstreamFailure::ContextTooLong
        );
        assert_eq!(
            classify_error(400, &body("", "bad")).0,
            UpstreamFailure::Rejected
        );
        assert_eq!(
            classify_error(404, &Value::Null).0,
            UpstreamFailure::Misconfigured
        );
        assert_eq!(
            classify_error(502, &Value::Null).0,
            UpstreamFailure::Unavailable
        );
    }

    #[test]
    fn requests_carry_the_system_prompt_parameters_and_usage_option() {
        let request = ChatRequest {
            system: Some("be brief".into()),
            temperature: Some(0.2),
            stop_sequences: vec!["END".into()],
            max_tokens: Some(50),
            response_format: Some(fm_protocol::ResponseFormat::JsonObject),
            ..ChatRequest::from_prompt("hello")
        };
        let body = body("llama3", &request, true);
        assert_eq!(body["model"], "llama3");
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(body["messages"][1]["role"], "user");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn tools_and_tool_turns_become_chat_completion_messages() {
        let mut answer = fm_protocol::Message::assistant("");
        answer.tool_calls.push(ToolCall {
            id: "call_1".into(),
            name: "search".into(),
            input: json!({"q": "relays"}),
        });
        let mut results = fm_protocol::Message::user("");
        results.tool_results.push(fm_protocol::ToolResult {
            tool_call_id: "call_1".into(),
            content: "3 hits".into(),
            is_error: false,
        });
        let request = ChatRequest {
            messages: vec![fm_protocol::Message::user("find"), answer, results],
            tools: vec![fm_protocol::ToolDefinition {
                name: "search".into(),
                description: None,
                input_schema: json!({"type": "object"}),
            }],
            tool_choice: Some(ToolChoice::Any),
            ..ChatRequest::default()
        };
        let body = body("gpt", &request, false);
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["tools"][0]["function"]["name"], "search");
        assert_eq!(body["messages"][1]["content"], Value::Null);
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["arguments"],
            r#"{"q":"relays"}"#
        );
        assert_eq!(
            body["messages"][2],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "3 hits"})
        );
        assert_eq!(body["messages"].as_array().unwrap().len(), 3);
    }

    /// A reader over no body: `convert` is what the properties drive.
    fn reader() -> ChunkReader {
        ChunkReader {
            body: Box::pin(futures_util::stream::empty()),
            decoder: SseDecoder::new(),
            ready: Default::default(),
            tool_calls: Vec::new(),
            target: "openai/test".into(),
            done: false,
        }
    }

    /// `chat.completion.chunk` payloads, well-formed or not: the fields the reader looks at, with
    /// values of every type, and indexes and argument pieces out of range.
    fn chunk_payload() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            Just(Value::from("stop")),
            Just(Value::from("tool_calls")),
            Just(Value::from("{\"a\":")),
            Just(Value::from("1}")),
            ".{0,8}".prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("choices"),
            Just("delta"),
            Just("content"),
            Just("tool_calls"),
            Just("index"),
            Just("id"),
            Just("function"),
            Just("name"),
            Just("arguments"),
            Just("finish_reason"),
            Just("usage"),
            Just("prompt_tokens"),
            Just("completion_tokens"),
            Just("error"),
            Just("code"),
        ];
        let value = leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|map| {
                    Value::Object(map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        });
        prop_oneof![
            value.prop_map(|value| value.to_string()),
            Just("[DONE]".to_string()),
            ".{0,16}",
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_stream_of_chunks_reads_without_panic_or_unbounded_state(
            payloads in proptest::collection::vec(chunk_payload(), 0..12),
        ) {
            let mut reader = reader();
            for payload in payloads {
                if reader.done {
                    break;
                }
                let _ = reader.convert(&payload);
                proptest::prop_assert!(reader.tool_calls.len() <= MAX_STREAMED_TOOL_CALLS);
            }
        }
    }
}
