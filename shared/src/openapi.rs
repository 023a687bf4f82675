//! The JSON schemas of the request fields that [`validate`](crate::validate) bounds, built from
//! the same constants ([`limits`], [`job_limits`]) the validation reads: so the relay's OpenAPI
//! document (`GET /openapi.json`) states each limit, and a change of a limit changes the
//! document. The wire types name these functions in `#[schema(schema_with = ...)]` (the derive's
//! own `max_length = ...` takes literals only). Compiled with the `openapi` feature alone: the web
//! UI's WASM does not carry it.
//!
//! What a schema cannot say stays with the validation: roles that alternate, a model the relay
//! declares, and the 1 MiB body.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, Ref, RefOr};
use utoipa::{Number, ToSchema};

use crate::chat::{ChatRequest, Message, ToolCall, ToolDefinition};
use crate::jobs::{AnalysisType, DocumentFormat, JobRequest, job_limits};
use crate::validate::limits;

/// What a tool's name and a tool call's id are made of (see [`limits::MAX_TOOL_NAME_CHARS`]).
pub const TOOL_NAME_PATTERN: &str = "^[A-Za-z0-9_-]+$";

/// Text that is not blank: at least one character other than white space (the pattern matches
/// anywhere in the string).
const NOT_BLANK: &str = r"\S";

/// A string of `min` to `max` characters (JSON Schema counts characters, as the validation does).
fn text(min: usize, max: usize, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .description(Some(description))
}

/// The example of `ChatRequest`: a question, its answer bounded.
pub fn chat_request_example() -> serde_json::Value {
    example(&ChatRequest {
        max_tokens: Some(256),
        ..ChatRequest::from_prompt("What does a relay in front of model APIs do?")
    })
}

/// The example of `JobRequest`: a summary of an inline document.
pub fn job_request_example() -> serde_json::Value {
    example(&JobRequest {
        analysis_type: Some(AnalysisType::Summarize),
        text: Some(
            "FM Relay routes chat requests to foundation models.\n\nIt retries, \
                    fails over and caches answers."
                .into(),
        ),
        format: Some(DocumentFormat::Text),
        ..JobRequest::default()
    })
}

/// `value` as JSON: the wire type itself, so an example cannot drift from the type.
fn example(value: &impl serde::Serialize) -> serde_json::Value {
    // These types serialise to JSON whatever their values (string keys, finite numbers).
    serde_json::to_value(value).unwrap_or_default()
}

/// A reference to the component schema of `T` (the document registers it).
fn reference<T: ToSchema>() -> RefOr<Schema> {
    Ref::from_schema_name(T::name()).into()
}

/// A whole number of `min` to `max` (a `u32` field: at most `u32::MAX` when not bounded lower).
fn whole_number(min: u32, max: Option<u32>, description: &str) -> ObjectBuilder {
    let max = max.unwrap_or(u32::MAX);
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(Number::UInt(min as usize)))
        .maximum(Some(Number::UInt(max as usize)))
        .description(Some(description))
}

/// `ChatRequest.messages`.
pub fn messages() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(reference::<Message>())
        .min_items(Some(limits::MIN_MESSAGES))
        .max_items(Some(limits::MAX_MESSAGES))
        .description(Some(
            "The conversation so far, `user` first and the roles alternating; the last message \
             (from the user) is the one to answer.",
        ))
        .into()
}

/// `Message.content`: not blank in a plain message, but possibly empty beside tool calls or
/// results, which one schema of the field alone cannot tell apart.
pub fn message_content() -> RefOr<Schema> {
    text(
        0,
        limits::MAX_CONTENT_CHARS,
        "The message's text. Not blank, unless the message carries `tool_calls` or \
         `tool_results`: then it may be empty (or left out).",
    )
    .into()
}

/// `Message.tool_calls`.
pub fn tool_calls() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(reference::<ToolCall>())
        .max_items(Some(limits::MAX_TOOLS))
        .description(Some(
            "The tools the assistant called in this turn (assistant messages only), in order.",
        ))
        .into()
}

/// `ChatRequest.tools`.
pub fn tools() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(reference::<ToolDefinition>())
        .max_items(Some(limits::MAX_TOOLS))
        .description(Some(
            "Tools the model may call, each name once; a call ends the answer with \
             `stop_reason: \"tool_use\"` and the calls in `tool_calls`.",
        ))
        .into()
}

/// A tool's name: `ToolDefinition.name`, `ToolCall.name`, `ToolChoice`'s `name`.
pub fn tool_name() -> RefOr<Schema> {
    text(
        1,
        limits::MAX_TOOL_NAME_CHARS,
        "A tool's name: letters, digits, `_` or `-`.",
    )
    .pattern(Some(TOOL_NAME_PATTERN))
    .into()
}

/// A tool call's id: `ToolCall.id`, `ToolResult.tool_call_id`.
pub fn tool_call_id() -> RefOr<Schema> {
    text(
        1,
        limits::MAX_TOOL_NAME_CHARS,
        "A tool call's id (letters, digits, `_` or `-`); a result names the call of the \
         previous message it answers.",
    )
    .pattern(Some(TOOL_NAME_PATTERN))
    .into()
}

/// `ToolDefinition.description`.
pub fn tool_description() -> RefOr<Schema> {
    text(
        1,
        limits::MAX_TOOL_DESCRIPTION_CHARS,
        "What the tool does and when to call it, for the model; not blank.",
    )
    .pattern(Some(NOT_BLANK))
    .into()
}

/// `ToolDefinition.input_schema`: a JSON Schema object whose `type` is `object`.
pub fn tool_input_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["object"])),
        )
        .required("type")
        .description(Some(
            "A JSON Schema of `\"type\": \"object\"` that the call's input follows.",
        ))
        .into()
}

/// `ToolCall.input`.
pub fn tool_call_input() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("The call's input: a JSON object."))
        .into()
}

/// `ToolResult.content`.
pub fn tool_result_content() -> RefOr<Schema> {
    text(
        0,
        limits::MAX_CONTENT_CHARS,
        "The tool's output as text (JSON output as its text).",
    )
    .into()
}

/// `ChatRequest.system`.
pub fn system_prompt() -> RefOr<Schema> {
    text(
        1,
        limits::MAX_CONTENT_CHARS,
        "Instructions that frame the whole conversation; not blank.",
    )
    .pattern(Some(NOT_BLANK))
    .into()
}

/// `ChatRequest.max_tokens`.
pub fn max_tokens() -> RefOr<Schema> {
    whole_number(
        1,
        Some(limits::MAX_TOKENS),
        &format!(
            "Upper bound on the answer's length in tokens (default {}).",
            limits::DEFAULT_MAX_TOKENS
        ),
    )
    .into()
}

/// `ChatRequest.temperature`.
pub fn temperature() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Float)))
        .minimum(Some(Number::Float(0.0)))
        .maximum(Some(Number::Float(f64::from(limits::MAX_TEMPERATURE))))
        .description(Some(
            "Sampling temperature, within the answering model's range too (Bedrock's models \
             take 0.0 to 1.0; a higher value for one is a 400 naming the field).",
        ))
        .into()
}

/// `ChatRequest.stop_sequences`.
pub fn stop_sequences() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(text(
            1,
            limits::MAX_STOP_SEQUENCE_CHARS,
            "A string that ends the answer when the model produces it.",
        ))
        .max_items(Some(limits::MAX_STOP_SEQUENCES))
        .description(Some(
            "Strings that end the answer when the model produces them.",
        ))
        .into()
}

/// `ChatRequest.routing_hint`.
pub fn routing_hint() -> RefOr<Schema> {
    text(
        0,
        limits::MAX_ROUTING_HINT_CHARS,
        "One of the relay's routing hints (`GET /v1/models` lists them); also taken from the \
         `x-fm-route-hint` header. An explicit `model` wins over it.",
    )
    .into()
}

/// `ChatRequest.max_latency_ms`.
pub fn max_latency_ms() -> RefOr<Schema> {
    whole_number(
        1,
        None,
        "The latency the caller needs, in milliseconds: a model whose recent p99 is above it is \
         passed over for the next candidate.",
    )
    .into()
}

/// `JobRequest.fields`.
pub fn job_fields() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(text(1, job_limits::MAX_NAME_CHARS, "A field to read."))
        .max_items(Some(job_limits::MAX_FIELDS))
        .description(Some("`extract`: the fields to read."))
        .into()
}

/// `JobRequest.labels`.
pub fn job_labels() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(text(1, job_limits::MAX_NAME_CHARS, "A label."))
        .max_items(Some(job_limits::MAX_LABELS))
        .description(Some(
            "`classify`: the labels to choose from (2 or more when classifying).",
        ))
        .into()
}

/// `JobRequest.question`.
pub fn job_question() -> RefOr<Schema> {
    text(
        1,
        job_limits::MAX_QUESTION_CHARS,
        "`qa`: the question; not blank.",
    )
    .pattern(Some(NOT_BLANK))
    .into()
}

/// `JobRequest.document_name`.
pub fn job_document_name() -> RefOr<Schema> {
    text(
        1,
        job_limits::MAX_NAME_CHARS,
        "What to call the document (no control characters): an upload's file name when not \
         given. The job's status shows it.",
    )
    .pattern(Some(NOT_BLANK))
    .into()
}

/// `JobRequest.callback_url`.
pub fn job_callback_url() -> RefOr<Schema> {
    text(
        1,
        job_limits::MAX_CALLBACK_URL_CHARS,
        "Where the relay POSTs the job's status when it ends: an http:// or https:// URL.",
    )
    .pattern(Some("^https?://"))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{validate_chat_request, validate_job_request};

    #[test]
    fn the_examples_are_valid_requests() {
        let chat: ChatRequest = serde_json::from_value(chat_request_example()).unwrap();
        validate_chat_request(&chat, |_| true).unwrap();
        let job: JobRequest = serde_json::from_value(job_request_example()).unwrap();
        validate_job_request(&job, false).unwrap();
    }
}
