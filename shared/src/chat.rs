//! Chat requests and answers: what a client sends to `/v1/chat` (and the streaming routes) and
//! the JSON answer the synchronous route returns.
//!
//! Optional fields are omitted from the JSON when unset, and default when absent, so a minimal
//! request is just `{"messages":[{"role":"user","content":"Hi"}]}`.

use serde::{Deserialize, Serialize};

/// Who wrote a message. The conversation alternates, starting with the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    /// The lower-case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    /// The message's text; may be empty in a message that carries tool calls or tool results.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::message_content))]
    pub content: String,
    /// The tools the assistant called in this turn (assistant messages only), in order.
    #[cfg(feature = "tools")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_calls))]
    pub tool_calls: Vec<ToolCall>,
    /// What the calls of the assistant's previous turn returned (user messages only): one
    /// result per call.
    #[cfg(feature = "tools")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_results: Vec<ToolResult>,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
            #[cfg(feature = "tools")]
            tool_calls: Vec::new(),
            #[cfg(feature = "tools")]
            tool_results: Vec::new(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            ..Message::user(content)
        }
    }

    /// Characters of the text, the tool calls' inputs and the tool results: what a usage
    /// estimate counts.
    pub fn chars(&self) -> usize {
        self.content.chars().count() + self.tool_chars()
    }

    #[cfg(feature = "tools")]
    fn tool_chars(&self) -> usize {
        self.tool_calls
            .iter()
            .map(|call| call.name.len() + call.input.to_string().len())
            .sum::<usize>()
            + self
                .tool_results
                .iter()
                .map(|result| result.content.chars().count())
                .sum::<usize>()
    }

    #[cfg(not(feature = "tools"))]
    fn tool_chars(&self) -> usize {
        0
    }
}

/// A tool the model may call: its name, what it does, and the JSON Schema of its input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ToolDefinition {
    /// 1 to 64 letters, digits, `_` or `-`; unique in the request.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_name))]
    pub name: String,
    /// What the tool does and when to call it, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_description))]
    pub description: Option<String>,
    /// A JSON Schema of `"type": "object"` that the call's input follows.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_input_schema))]
    pub input_schema: serde_json::Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToolChoice {
    /// The model decides (the default when tools are given).
    Auto,
    /// The model must call one of the tools.
    Any,
    /// The model must call this tool.
    Tool {
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_name))]
        name: String,
    },
    /// The model must not call a tool (only models that can be told so: OpenAI-compatible).
    None,
}

/// A tool call the model made: the tool's name and its input, a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The call's id, which its result names in [`ToolResult::tool_call_id`].
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_call_id))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_name))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_call_input))]
    pub input: serde_json::Value,
}

/// What a tool call returned, sent back in the next user message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ToolResult {
    /// The [`ToolCall::id`] this answers.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_call_id))]
    pub tool_call_id: String,
    /// The tool's output as text (JSON output as its text).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tool_result_content))]
    pub content: String,
    /// True when the tool failed and `content` says why.
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_error: bool,
}

/// A chat request, the same on every route and transport.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = crate::openapi::chat_request_example))]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// The conversation so far; the last message is the one to answer.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::messages))]
    pub messages: Vec<Message>,
    /// Instructions that frame the whole conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::system_prompt))]
    pub system: Option<String>,
    /// A model id from `GET /v1/models`; the relay's default model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Upper bound on the answer's length in tokens (default
    /// [`limits::DEFAULT_MAX_TOKENS`](crate::limits::DEFAULT_MAX_TOKENS)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::max_tokens))]
    pub max_tokens: Option<u32>,
    /// One of the relay's routing hints (`GET /v1/models` lists them; by default `fast`,
    /// `balanced` and `quality`); also taken from the `x-fm-route-hint` header. An explicit
    /// `model` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::routing_hint))]
    pub routing_hint: Option<String>,
    /// The latency the caller needs, in milliseconds (a stream's time to first token, a one-shot
    /// answer's total time): a model whose recent p99 is above it is passed over for the next
    /// candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::max_latency_ms))]
    pub max_latency_ms: Option<u32>,
    /// `"highest"` asks for the premium tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_requirement: Option<crate::route::QualityRequirement>,
    /// Sampling temperature, 0.0 to 2.0 and within the answering model's range (Bedrock's
    /// models take 0.0 to 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::temperature))]
    pub temperature: Option<f32>,
    /// The answer's form, for models that take one (OpenAI-compatible upstreams): any JSON
    /// object, or JSON matching a schema. A model that cannot honour it refuses the request (a
    /// 400 naming the field) rather than answer in another form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Strings that end the answer when the model produces them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::stop_sequences))]
    pub stop_sequences: Vec<String>,
    /// Tools the model may call; a call ends the answer with `stop_reason: "tool_use"` and the
    /// calls in `tool_calls`.
    #[cfg(feature = "tools")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::tools))]
    pub tools: Vec<ToolDefinition>,
    /// Whether and which tool the model must call (needs `tools`; `auto` when absent).
    #[cfg(feature = "tools")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Neither serve this request from the relay's answer cache nor store its answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}

/// The form an answer must take (OpenAI's `response_format`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Plain text: what every model answers anyway.
    Text,
    /// One JSON object.
    JsonObject,
    /// JSON matching `json_schema` (OpenAI's `{"name", "schema", "strict"}`).
    JsonSchema { json_schema: serde_json::Value },
}

impl ResponseFormat {
    /// Whether it asks for more than plain text.
    pub fn constrains(&self) -> bool {
        !matches!(self, ResponseFormat::Text)
    }
}

impl ChatRequest {
    /// A one-message request from the user.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        ChatRequest {
            messages: vec![Message::user(prompt)],
            ..ChatRequest::default()
        }
    }

    /// Characters of the system prompt, the messages and the tool definitions: what a usage
    /// estimate counts.
    pub fn prompt_chars(&self) -> usize {
        self.system.as_deref().map_or(0, |s| s.chars().count())
            + self.messages.iter().map(Message::chars).sum::<usize>()
            + self.tool_definition_chars()
    }

    #[cfg(feature = "tools")]
    fn tool_definition_chars(&self) -> usize {
        self.tools
            .iter()
            .map(|tool| {
                tool.name.len()
                    + tool.description.as_deref().map_or(0, |d| d.chars().count())
                    + tool.input_schema.to_string().len()
            })
            .sum()
    }

    #[cfg(not(feature = "tools"))]
    fn tool_definition_chars(&self) -> usize {
        0
    }

    /// Whether the conversation uses tools: definitions, or calls and results in its messages.
    #[cfg(feature = "tools")]
    pub fn uses_tools(&self) -> bool {
        !self.tools.is_empty()
            || self
                .messages
                .iter()
                .any(|m| !m.tool_calls.is_empty() || !m.tool_results.is_empty())
    }

    /// `max_tokens`, or the default when the client left it out.
    pub fn max_tokens_or_default(&self) -> u32 {
        self.max_tokens.unwrap_or(crate::limits::DEFAULT_MAX_TOKENS)
    }
}

/// Token counts of one answer, as the upstream reported them — or, marked `estimated`, as the
/// relay estimated them where it needs counts the upstream did not report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub total_tokens: u32,
    /// True when these are the relay's estimate ([`Usage::estimate`]), not the upstream's count.
    #[serde(default, skip_serializing_if = "is_false")]
    pub estimated: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Characters per token in [`Usage::estimate`]: the usual rule of thumb for English text with
/// the tokenizers of today's models.
pub const CHARS_PER_TOKEN: usize = 4;

impl Usage {
    pub fn new(input_tokens: u32, output_tokens: u32) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens.saturating_add(output_tokens),
            estimated: false,
        }
    }

    /// An estimate of the tokens `request` and the answer `text` take, for an upstream that
    /// reported none: one token per [`CHARS_PER_TOKEN`] characters (rounded up) of the system
    /// prompt and messages, and of the answer. Marked `estimated`.
    pub fn estimate(request: &ChatRequest, text: &str) -> Usage {
        Usage::estimate_from_chars(request.prompt_chars(), text.chars().count())
    }

    /// [`Usage::estimate`] from character counts: of the prompt ([`ChatRequest::prompt_chars`])
    /// and of the answer.
    pub fn estimate_from_chars(prompt_chars: usize, answer_chars: usize) -> Usage {
        let tokens =
            |chars: usize| u32::try_from(chars.div_ceil(CHARS_PER_TOKEN)).unwrap_or(u32::MAX);
        Usage {
            estimated: true,
            ..Usage::new(tokens(prompt_chars), tokens(answer_chars))
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model finished its answer.
    EndTurn,
    /// The answer reached `max_tokens`.
    MaxTokens,
    /// The model produced one of the stop sequences.
    StopSequence,
    /// A content filter or guardrail cut the answer.
    ContentFiltered,
    /// The model asked to call a tool.
    ToolUse,
    /// Any reason this version does not know; clients should show the answer as complete.
    #[serde(other)]
    Other,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResponseSource {
    /// The first target of the route answered.
    Primary,
    /// The same model answered from another region or inference profile.
    FallbackRegion,
    /// A configured downgrade model answered.
    FallbackModel,
    /// The answer was served from the cache.
    Cache,
    /// No model could answer; this is the relay's clearly-marked stand-in answer.
    Degraded,
}

/// How the relay reached the answer: which target answered and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteInfo {
    /// The model id (as configured in the relay) that produced the answer.
    pub model: String,
    /// The provider kind that served it (for example `"bedrock"`).
    pub provider: String,
    /// The region or endpoint that served it.
    pub region: String,
    pub source: ResponseSource,
    /// How many upstream calls this answer took, the answering one included.
    pub attempts: u32,
    /// A human-readable explanation of the routing decision.
    pub reason: String,
    /// The decision: which rule fired, the content class, the candidates.
    #[serde(flatten)]
    pub choice: crate::route::RouteChoice,
}

/// Server-side timings, in milliseconds since the relay received the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timings {
    /// Time to the first text token; absent when the answer had no text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Time to the end of the answer.
    pub total_ms: f64,
}

/// The answer of `POST /v1/chat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatResponse {
    pub request_id: String,
    /// True when no model could answer and `text` is the relay's stand-in message, not a model's
    /// answer (`route.source` is then `degraded`).
    #[serde(default)]
    pub degraded: bool,
    /// The model that actually answered (see `route` for how it was reached).
    pub model: String,
    pub text: String,
    /// The tools the model called, in order (then `stop_reason` is `tool_use`): run them and
    /// send their results back in the next user message's `tool_results`.
    #[cfg(feature = "tools")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    pub stop_reason: StopReason,
    /// The tokens the answer took, as the upstream reported them; absent when it reported none
    /// (zero for a cached or degraded answer: no tokens were spent on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub route: RouteInfo,
    pub timings: Timings,
}

/// One model the relay can route to, as listed by `GET /v1/models`: OpenAI's model object
/// (`id`, `object`, `created`, `owned_by`) with the relay's own fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelInfo {
    /// The id clients put in [`ChatRequest::model`].
    pub id: String,
    /// Always `model` (OpenAI's object type).
    #[serde(default = "model_object")]
    pub object: String,
    /// When the relay's catalog of models was loaded, in Unix seconds (OpenAI's `created`).
    #[serde(default)]
    pub created: u64,
    /// Who serves it: the provider (OpenAI's `owned_by`).
    #[serde(default)]
    pub owned_by: String,
    pub provider: String,
    pub region: String,
    /// US dollars per 1 000 input tokens.
    pub input_price_per_1k: f64,
    /// US dollars per 1 000 output tokens.
    pub output_price_per_1k: f64,
    /// The most tokens (prompt and answer) the model accepts.
    pub context_window: u32,
    /// Whether requests without a `model` go here.
    pub default: bool,
    #[serde(default)]
    pub tier: crate::route::Tier,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<crate::route::Capability>,
}

fn model_object() -> String {
    "model".into()
}

fn list_object() -> String {
    "list".into()
}

/// The answer of `GET /v1/models`: OpenAI's list shape (`object: "list"`, `data`), which the
/// OpenAI SDKs read, with the relay's routing hints beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelList {
    /// Always `list`.
    #[serde(default = "list_object")]
    pub object: String,
    pub data: Vec<ModelInfo>,
    /// The routing hints a request may give (`routing_hint`, `x-fm-route-hint`).
    #[serde(default)]
    pub hints: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_counts_a_token_per_four_characters_and_says_it_is_one() {
        let request = ChatRequest {
            system: Some("Be brief.".into()),
            ..ChatRequest::from_prompt("How does a relay work?")
        };
        let usage = Usage::estimate(&request, "It forwards calls.");
        // 9 + 22 prompt characters, 18 answer characters, rounded up.
        assert_eq!((usage.input_tokens, usage.output_tokens), (8, 5));
        assert_eq!(usage.total_tokens, 13);
        assert!(usage.estimated && !Usage::new(1, 2).estimated);
        let json = serde_json::to_value(usage).unwrap();
        assert_eq!(json["estimated"], true);
        let reported = serde_json::to_value(Usage::new(1, 2)).unwrap();
        assert!(reported.get("estimated").is_none(), "{reported}");
    }
}
