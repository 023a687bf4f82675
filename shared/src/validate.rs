//! The request limits of FM Relay, as one function that the browser, the IDE panel and the relay
//! all call, so a request is rejected with the same words wherever it is checked.
//!
//! The rules (see the project's DESIGN.md, "Request limits"): 1 to 50 messages; roles alternate
//! starting with `user`; each content 1 to 100 000 characters and not blank; `max_tokens` 1 to
//! 4096; `temperature` 0 to 2 (the widest range a provider takes; the relay holds each model to
//! its own — Bedrock's 0 to 1); at most 4 stop sequences of 1 to 200 characters; a system prompt,
//! when given, 1 to 100 000 characters; the model, when given, one the relay declares. The 1 MiB
//! body limit is enforced by whoever reads the body ([`limits::MAX_BODY_BYTES`]).

use std::fmt;

#[cfg(feature = "tools")]
use crate::chat::ToolChoice;
use crate::chat::{ChatRequest, Message, Role};
use crate::error::ErrorCode;

/// The numbers behind the rules.
pub mod limits {
    /// Fewest messages in a request.
    pub const MIN_MESSAGES: usize = 1;
    /// Most messages in a request.
    pub const MAX_MESSAGES: usize = 50;
    /// Most characters (Unicode scalar values) in one message or in the system prompt.
    pub const MAX_CONTENT_CHARS: usize = 100_000;
    /// Largest `max_tokens` a client may ask for.
    pub const MAX_TOKENS: u32 = 4096;
    /// `max_tokens` when the request leaves it out.
    pub const DEFAULT_MAX_TOKENS: u32 = 1024;
    /// The highest `temperature` any model takes (OpenAI's range is 0 to 2; Bedrock's models
    /// take 0 to 1, which the relay checks once it knows the model).
    pub const MAX_TEMPERATURE: f32 = 2.0;
    /// Most stop sequences in a request.
    pub const MAX_STOP_SEQUENCES: usize = 4;
    /// Most characters in one stop sequence.
    pub const MAX_STOP_SEQUENCE_CHARS: usize = 200;
    /// Largest request body, in bytes.
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    /// Most characters in a routing hint.
    pub const MAX_ROUTING_HINT_CHARS: usize = 64;
    /// Most tool definitions in a request, and most tool calls in one message.
    pub const MAX_TOOLS: usize = 64;
    /// Most characters in a tool's name or a tool call's id (letters, digits, `_` and `-`: what
    /// every provider accepts).
    pub const MAX_TOOL_NAME_CHARS: usize = 64;
    /// Most characters in a tool's description.
    pub const MAX_TOOL_DESCRIPTION_CHARS: usize = 10_000;
}

/// A broken rule: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The field's path in the request, e.g. `messages[2].content`.
    pub field: String,
    /// What is wrong, in words for people.
    pub message: String,
    /// [`ErrorCode::UnknownModel`] for a model the relay does not serve,
    /// [`ErrorCode::InvalidRequest`] for every other broken rule.
    pub code: ErrorCode,
}

impl ValidationError {
    /// An [`ErrorCode::InvalidRequest`] for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
            code: ErrorCode::InvalidRequest,
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// Checks `request` against the limits. `is_known_model` says whether a model id is one the relay
/// serves; a client that has not fetched the model list yet can pass `|_| true`.
pub fn validate_chat_request(
    request: &ChatRequest,
    is_known_model: impl Fn(&str) -> bool,
) -> Result<(), ValidationError> {
    use limits::*;

    let count = request.messages.len();
    if !(MIN_MESSAGES..=MAX_MESSAGES).contains(&count) {
        return Err(ValidationError::new(
            "messages",
            format!("must hold {MIN_MESSAGES} to {MAX_MESSAGES} messages, got {count}"),
        ));
    }
    for (index, message) in request.messages.iter().enumerate() {
        let expected = if index % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if message.role != expected {
            let why = if index == 0 {
                "the first message must come from the user".to_string()
            } else {
                format!(
                    "roles must alternate between user and assistant; expected {} here",
                    expected.as_str()
                )
            };
            return Err(ValidationError::new(format!("messages[{index}].role"), why));
        }
        check_message(request, index, message)?;
    }
    if let Some(last) = request.messages.last()
        && last.role != Role::User
    {
        return Err(ValidationError::new(
            format!("messages[{}].role", count - 1),
            "the last message must come from the user",
        ));
    }
    if let Some(system) = &request.system {
        check_text("system", system, MAX_CONTENT_CHARS)?;
    }
    if let Some(model) = &request.model
        && !is_known_model(model)
    {
        return Err(ValidationError {
            code: ErrorCode::UnknownModel,
            ..ValidationError::new(
                "model",
                format!("unknown model `{model}`; GET /v1/models lists the models served"),
            )
        });
    }
    if let Some(max_tokens) = request.max_tokens
        && !(1..=MAX_TOKENS).contains(&max_tokens)
    {
        return Err(ValidationError::new(
            "max_tokens",
            format!("must be between 1 and {MAX_TOKENS}, got {max_tokens}"),
        ));
    }
    if let Some(temperature) = request.temperature
        && !(0.0..=limits::MAX_TEMPERATURE).contains(&temperature)
    {
        return Err(ValidationError::new(
            "temperature",
            format!(
                "must be between 0.0 and {}, got {temperature}",
                limits::MAX_TEMPERATURE
            ),
        ));
    }
    if request.stop_sequences.len() > MAX_STOP_SEQUENCES {
        return Err(ValidationError::new(
            "stop_sequences",
            format!(
                "at most {MAX_STOP_SEQUENCES} stop sequences, got {}",
                request.stop_sequences.len()
            ),
        ));
    }
    for (index, stop) in request.stop_sequences.iter().enumerate() {
        let chars = stop.chars().count();
        if !(1..=MAX_STOP_SEQUENCE_CHARS).contains(&chars) {
            return Err(ValidationError::new(
                format!("stop_sequences[{index}]"),
                format!("must be 1 to {MAX_STOP_SEQUENCE_CHARS} characters, got {chars}"),
            ));
        }
    }
    if let Some(hint) = &request.routing_hint {
        let chars = hint.chars().count();
        if chars > MAX_ROUTING_HINT_CHARS {
            return Err(ValidationError::new(
                "routing_hint",
                format!("at most {MAX_ROUTING_HINT_CHARS} characters, got {chars}"),
            ));
        }
    }
    #[cfg(feature = "tools")]
    check_tools(request)?;
    if request.max_latency_ms == Some(0) {
        return Err(ValidationError::new(
            "max_latency_ms",
            "must be greater than 0 (leave it out for no latency target)",
        ));
    }
    Ok(())
}

/// One message's text, tool calls and tool results (its role is checked already).
fn check_message(
    request: &ChatRequest,
    index: usize,
    message: &Message,
) -> Result<(), ValidationError> {
    use limits::*;

    let field = format!("messages[{index}].content");
    #[cfg(feature = "tools")]
    let carries_tools = !message.tool_calls.is_empty() || !message.tool_results.is_empty();
    #[cfg(not(feature = "tools"))]
    let carries_tools = false;
    if carries_tools {
        // The text may be empty beside tool calls or results, but is bounded all the same.
        if message.content.chars().take(MAX_CONTENT_CHARS + 1).count() > MAX_CONTENT_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_CONTENT_CHARS} characters"),
            ));
        }
    } else {
        check_text(&field, &message.content, MAX_CONTENT_CHARS)?;
    }
    #[cfg(feature = "tools")]
    check_tool_turn(request, index, message)?;
    #[cfg(not(feature = "tools"))]
    let _ = request;
    Ok(())
}

/// One message's tool calls and tool results: the calls of the turn before must each get one
/// result in this message, and nothing else.
#[cfg(feature = "tools")]
fn check_tool_turn(
    request: &ChatRequest,
    index: usize,
    message: &Message,
) -> Result<(), ValidationError> {
    use limits::*;

    let field = |name: &str| format!("messages[{index}].{name}");
    if !message.tool_calls.is_empty() && message.role != Role::Assistant {
        return Err(ValidationError::new(
            field("tool_calls"),
            "only assistant messages carry tool calls",
        ));
    }
    if message.tool_calls.len() > MAX_TOOLS {
        return Err(ValidationError::new(
            field("tool_calls"),
            format!(
                "at most {MAX_TOOLS} tool calls, got {}",
                message.tool_calls.len()
            ),
        ));
    }
    for (at, call) in message.tool_calls.iter().enumerate() {
        let call_field = |name: &str| format!("messages[{index}].tool_calls[{at}].{name}");
        check_name(&call_field("id"), &call.id)?;
        check_name(&call_field("name"), &call.name)?;
        if !call.input.is_object() {
            return Err(ValidationError::new(
                call_field("input"),
                "must be a JSON object",
            ));
        }
    }
    if !message.tool_results.is_empty() && message.role != Role::User {
        return Err(ValidationError::new(
            field("tool_results"),
            "only user messages carry tool results",
        ));
    }
    // The calls of the turn before must each get one result here, and nothing else.
    let calls = match index.checked_sub(1) {
        Some(previous) => request.messages[previous].tool_calls.as_slice(),
        None => &[],
    };
    for (at, result) in message.tool_results.iter().enumerate() {
        let result_field = |name: &str| format!("messages[{index}].tool_results[{at}].{name}");
        if !calls.iter().any(|call| call.id == result.tool_call_id) {
            return Err(ValidationError::new(
                result_field("tool_call_id"),
                format!(
                    "`{}` is not a tool call of the previous message",
                    result.tool_call_id
                ),
            ));
        }
        if message.tool_results[..at]
            .iter()
            .any(|earlier| earlier.tool_call_id == result.tool_call_id)
        {
            return Err(ValidationError::new(
                result_field("tool_call_id"),
                format!("`{}` has a result already", result.tool_call_id),
            ));
        }
        if result.content.chars().take(MAX_CONTENT_CHARS + 1).count() > MAX_CONTENT_CHARS {
            return Err(ValidationError::new(
                result_field("content"),
                format!("must be at most {MAX_CONTENT_CHARS} characters"),
            ));
        }
    }
    if let Some(unanswered) = calls.iter().find(|call| {
        !message
            .tool_results
            .iter()
            .any(|r| r.tool_call_id == call.id)
    }) {
        return Err(ValidationError::new(
            field("tool_results"),
            format!(
                "the tool call `{}` of the previous message has no result",
                unanswered.id
            ),
        ));
    }
    Ok(())
}

/// The tool definitions and the tool choice.
#[cfg(feature = "tools")]
fn check_tools(request: &ChatRequest) -> Result<(), ValidationError> {
    use limits::*;

    if request.tools.len() > MAX_TOOLS {
        return Err(ValidationError::new(
            "tools",
            format!("at most {MAX_TOOLS} tools, got {}", request.tools.len()),
        ));
    }
    for (index, tool) in request.tools.iter().enumerate() {
        check_name(&format!("tools[{index}].name"), &tool.name)?;
        if request.tools[..index].iter().any(|t| t.name == tool.name) {
            return Err(ValidationError::new(
                format!("tools[{index}].name"),
                format!("`{}` is defined twice", tool.name),
            ));
        }
        if let Some(description) = &tool.description {
            check_text(
                &format!("tools[{index}].description"),
                description,
                MAX_TOOL_DESCRIPTION_CHARS,
            )?;
        }
        if tool.input_schema.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(ValidationError::new(
                format!("tools[{index}].input_schema"),
                r#"must be a JSON Schema object with "type": "object""#,
            ));
        }
    }
    if request.tools.is_empty() && request.uses_tools() {
        return Err(ValidationError::new(
            "tools",
            "the conversation has tool calls or results: give the tools' definitions too",
        ));
    }
    match &request.tool_choice {
        Some(ToolChoice::Any) if request.tools.is_empty() => Err(ValidationError::new(
            "tool_choice",
            "asks for a tool call, but the request has no `tools`",
        )),
        Some(ToolChoice::Tool { name }) if !request.tools.iter().any(|t| &t.name == name) => {
            Err(ValidationError::new(
                "tool_choice.name",
                format!("`{name}` is not one of the request's `tools`"),
            ))
        }
        _ => Ok(()),
    }
}

/// A tool's name or a call's id: 1 to [`limits::MAX_TOOL_NAME_CHARS`] letters, digits, `_` or
/// `-`.
#[cfg(feature = "tools")]
fn check_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > limits::MAX_TOOL_NAME_CHARS || !name.chars().all(allowed) {
        return Err(ValidationError::new(
            field,
            format!(
                "must be 1 to {} letters, digits, `_` or `-`, got `{}`",
                limits::MAX_TOOL_NAME_CHARS,
                name.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

fn check_text(field: &str, text: &str, max_chars: usize) -> Result<(), ValidationError> {
    if text.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty or blank"));
    }
    // Count only as far as needed: a 1 MiB body cannot make this quadratic.
    let chars = text.chars().take(max_chars + 1).count();
    if chars > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Message;

    fn known(model: &str) -> bool {
        model == "claude"
    }

    fn field_of(request: &ChatRequest) -> String {
        validate_chat_request(request, known).unwrap_err().field
    }

    #[test]
    fn a_minimal_request_is_valid() {
        validate_chat_request(&ChatRequest::from_prompt("Hi"), known).unwrap();
    }

    #[test]
    fn message_count_is_bounded() {
        let empty = ChatRequest::default();
        assert_eq!(field_of(&empty), "messages");
        let mut long = ChatRequest::default();
        for i in 0..=limits::MAX_MESSAGES {
            long.messages.push(if i % 2 == 0 {
                Message::user("q")
            } else {
                Message::assistant("a")
            });
        }
        assert_eq!(long.messages.len(), 51);
        assert_eq!(field_of(&long), "messages");
        long.messages.truncate(49);
        validate_chat_request(&long, known).unwrap();
    }

    #[test]
    fn roles_alternate_starting_and_ending_with_the_user() {
        let mut request = ChatRequest {
            messages: vec![Message::assistant("hello")],
            ..ChatRequest::default()
        };
        assert_eq!(field_of(&request), "messages[0].role");
        request.messages = vec![Message::user("a"), Message::user("b")];
        assert_eq!(field_of(&request), "messages[1].role");
        request.messages = vec![Message::user("a"), Message::assistant("b")];
        assert_eq!(field_of(&request), "messages[1].role");
    }

    #[test]
    fn content_must_be_present_and_bounded() {
        assert_eq!(
            field_of(&ChatRequest::from_prompt("  \n")),
            "messages[0].content"
        );
        let exact = "é".repeat(limits::MAX_CONTENT_CHARS);
        validate_chat_request(&ChatRequest::from_prompt(exact.clone()), known).unwrap();
        let over = format!("{exact}x");
        assert_eq!(
            field_of(&ChatRequest::from_prompt(over)),
            "messages[0].content"
        );
    }

    fn weather_tool() -> crate::chat::ToolDefinition {
        crate::chat::ToolDefinition {
            name: "get_weather".into(),
            description: Some("The weather in a city".into()),
            input_schema: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }
    }

    /// A conversation with one tool round: a call, its result, and the question that follows.
    fn tool_round() -> ChatRequest {
        let call = crate::chat::ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            input: serde_json::json!({"city": "Paris"}),
        };
        ChatRequest {
            messages: vec![
                Message::user("Weather in Paris?"),
                Message {
                    tool_calls: vec![call],
                    ..Message::assistant("")
                },
                Message {
                    tool_results: vec![crate::chat::ToolResult {
                        tool_call_id: "call_1".into(),
                        content: "18 C".into(),
                        is_error: false,
                    }],
                    ..Message::user("")
                },
            ],
            tools: vec![weather_tool()],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn a_tool_round_is_valid_and_its_links_are_checked() {
        validate_chat_request(&tool_round(), known).unwrap();

        let mut unanswered = tool_round();
        unanswered.messages[2] = Message::user("and tomorrow?");
        assert_eq!(field_of(&unanswered), "messages[2].tool_results");

        let mut stray = tool_round();
        stray.messages[2].tool_results[0].tool_call_id = "call_9".into();
        assert_eq!(field_of(&stray), "messages[2].tool_results[0].tool_call_id");

        let mut twice = tool_round();
        let again = twice.messages[2].tool_results[0].clone();
        twice.messages[2].tool_results.push(again);
        assert_eq!(field_of(&twice), "messages[2].tool_results[1].tool_call_id");

        let mut from_user = tool_round();
        from_user.messages[0].tool_calls = from_user.messages[1].tool_calls.clone();
        assert_eq!(field_of(&from_user), "messages[0].tool_calls");

        let mut bad_input = tool_round();
        bad_input.messages[1].tool_calls[0].input = serde_json::json!("Paris");
        assert_eq!(field_of(&bad_input), "messages[1].tool_calls[0].input");

        let mut bad_id = tool_round();
        bad_id.messages[1].tool_calls[0].id = "call 1".into();
        assert_eq!(field_of(&bad_id), "messages[1].tool_calls[0].id");

        let mut no_tools = tool_round();
        no_tools.tools.clear();
        assert_eq!(field_of(&no_tools), "tools");
    }

    #[test]
    fn tool_definitions_and_the_choice_are_checked() {
        let with =
            |tools: Vec<crate::chat::ToolDefinition>, choice: Option<ToolChoice>| ChatRequest {
                tools,
                tool_choice: choice,
                ..ChatRequest::from_prompt("Weather?")
            };
        validate_chat_request(&with(vec![weather_tool()], Some(ToolChoice::Any)), known).unwrap();
        let mut schema = weather_tool();
        schema.input_schema = serde_json::json!({"type": "string"});
        assert_eq!(field_of(&with(vec![schema], None)), "tools[0].input_schema");
        let mut name = weather_tool();
        name.name = "get weather".into();
        assert_eq!(field_of(&with(vec![name], None)), "tools[0].name");
        assert_eq!(
            field_of(&with(vec![weather_tool(), weather_tool()], None)),
            "tools[1].name"
        );
        assert_eq!(
            field_of(&with(vec![weather_tool(); limits::MAX_TOOLS + 1], None)),
            "tools"
        );
        assert_eq!(
            field_of(&with(vec![], Some(ToolChoice::Any))),
            "tool_choice"
        );
        let named = ToolChoice::Tool {
            name: "get_time".into(),
        };
        assert_eq!(
            field_of(&with(vec![weather_tool()], Some(named))),
            "tool_choice.name"
        );
    }

    #[test]
    fn numeric_and_model_fields_are_checked() {
        let base = ChatRequest::from_prompt("Hi");
        for (request, field) in [
            (
                ChatRequest {
                    max_tokens: Some(0),
                    ..base.clone()
                },
                "max_tokens",
            ),
            (
                ChatRequest {
                    max_tokens: Some(4097),
                    ..base.clone()
                },
                "max_tokens",
            ),
            (
                ChatRequest {
                    temperature: Some(2.5),
                    ..base.clone()
                },
                "temperature",
            ),
            (
                ChatRequest {
                    model: Some("gpt-9".into()),
                    ..base.clone()
                },
                "model",
            ),
            (
                ChatRequest {
                    system: Some(String::new()),
                    ..base.clone()
                },
                "system",
            ),
            (
                ChatRequest {
                    stop_sequences: vec!["a".into(); 5],
                    ..base.clone()
                },
                "stop_sequences",
            ),
            (
                ChatRequest {
                    stop_sequences: vec![String::new()],
                    ..base.clone()
                },
                "stop_sequences[0]",
            ),
        ] {
            assert_eq!(field_of(&request), field, "{request:?}");
        }
        let ok = ChatRequest {
            max_tokens: Some(4096),
            temperature: Some(0.0),
            model: Some("claude".into()),
            ..base
        };
        validate_chat_request(&ok, known).unwrap();
    }
}
