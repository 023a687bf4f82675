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

use std::time::Duration;

use fm_protocol::{ChatRequest, Role, SseDecoder, StopReason, Usage};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatProvider, ProviderAnswer, ProviderEvent, ProviderStream};
use crate::error::{RelayError, UpstreamFailure};

const KIND: &str = "openai";

/// An OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    /// The API's base URL, e.g. `http://127.0.0.1:11434/v1`, without a trailing slash.
    base_url: String,
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
        OpenAiProvider {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
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
        let mut call = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
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
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": message.content}));
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
        Ok(ProviderAnswer {
            text: choice
                .message
                .and_then(|message| message.content)
                .unwrap_or_default(),
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
            for frame in self.decoder.feed(&chunk) {
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
            if let Some(text) = choice.delta.and_then(|delta| delta.content)
                && !text.is_empty()
            {
                events.push(Ok(ProviderEvent::TextDelta(text)));
            }
            if let Some(reason) = choice.finish_reason {
                events.push(Ok(ProviderEvent::Stop(stop_reason(&reason))));
            }
        }
        if let Some(usage) = chunk.usage {
            events.push(Ok(ProviderEvent::Usage(usage.into())));
        }
        events
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
}
