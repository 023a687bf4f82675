//! `GET /openapi.json`: the relay's OpenAPI 3.1 document, generated from the code.
//!
//! - The native operations come from their handlers' `#[utoipa::path]` annotations and the wire
//!   types' `ToSchema` derives (fm-protocol's `openapi` feature). Every bounded request field
//!   takes its limits from the constants the validation reads ([`fm_protocol::openapi`], and the
//!   query parameters' schemas beside their handlers), so a changed limit changes the document.
//! - The answers the edge gives around a handler (403 for a refused origin or key; 401, 429,
//!   500 and 503 under the guarded prefixes; 413 and 415 on a POST; 502 and 504 from the
//!   upstream on the routes that call a model) are added to every native operation here, by the
//!   predicates the edge itself uses (`edge::is_guarded`, `edge::calls_a_model`), where the
//!   handler's annotation does not give them already.
//! - A `text/event-stream` answer is described by its events (`event` and `data`, the data's
//!   JSON schema as the data's `contentSchema`), the layout OpenAPI 3.2 gives event streams.
//! - The drop-in surfaces (OpenAI, Anthropic, Bedrock Runtime) are operations with a free-form
//!   JSON body and a link to the official API they mirror: their schemas are the vendors', and
//!   a partial copy here would only be wrong somewhere.
//! - The purpose-built `[[routes]]` of the configuration are listed as they are served (a
//!   reload keeps the set of paths), and the job routes only when jobs are on.
//!
//! The document is public, like `/healthz`: tools and code generators fetch it before they hold
//! a key, and it tells nothing a key protects — the limits are the code's constants, and no
//! model, key or upstream of the configuration appears in it (only the paths of `[[routes]]`,
//! which any caller could find by calling them). It still passes the edge's request id, span,
//! origin check and CORS.
//!
//! It is built once, with the router, and served as the same bytes to every request.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fm_protocol::{ApiErrorBody, ChatRequest, ChatResponse, Message, StreamEvent, ToolCall};
use fm_protocol::{ToolDefinition, ToolResult};
use utoipa::openapi::path::{
    Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    Components, Content, ExternalDocs, HttpMethod, OpenApi as Document, Ref, RefOr, Required,
    Response as Answer, ResponseBuilder,
};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AppState;
use super::edge;
use super::extract::RequestId;
use crate::config::routing::JOBS_PATH;
use crate::error::{RelayError, RequestError};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

/// The tag of the drop-in surfaces' operations (the native ones have one per concern).
pub const DROP_IN_TAG: &str = "drop-in";

/// The security schemes' names (the derive's `security(...)` repeats the first two as literals).
const BEARER: &str = "bearer";
const API_KEY: &str = "api_key";
const SIGV4: &str = "sigv4";

/// What the document says about the relay as a whole.
const DESCRIPTION: &str = "\
A relay in front of foundation-model APIs: routing, limits, retries and failover, a cache, \
and async document jobs, behind one API key.

**Native API.** `POST /v1/chat` (one JSON answer), `POST /v1/chat/stream` (Server-Sent Events), \
`GET /v1/ws` (the same events over a WebSocket: each text frame a `ChatRequest`, each answer \
frame a `StreamEvent`; not described below, as OpenAPI has no WebSocket operations), the \
purpose-built routes, models, stats, usage and jobs. The request limits in the schemas are the \
ones the validation applies. What a schema cannot say stays with the validation and is a 400 \
whose `field` names the field: roles alternate starting and ending with `user`; a message's \
text is not blank unless it carries tool calls or results; tool results answer the previous \
message's calls; a model the relay declares; a body of at most 1 MiB (413 over).

**Drop-in surfaces.** OpenAI's `POST /v1/chat/completions`, Anthropic's `POST /v1/messages` and \
Bedrock Runtime's `POST /model/{modelId}/converse`, `/converse-stream`, `/invoke` and \
`/invoke-with-response-stream` take the vendors' request shapes and answer in them (errors too): \
see the official API each operation links.

**Keys.** `Authorization: Bearer <key>` or `x-api-key: <key>`; on the Bedrock routes also the \
access key id of an AWS SigV4 signature. `/healthz` and this document need none.";

#[derive(OpenApi)]
#[openapi(
    info(title = "FM Relay", description = DESCRIPTION),
    paths(
        super::chat::chat,
        super::sse::chat_stream,
        super::explain::explain,
        super::meta::models,
        super::meta::model,
        super::meta::stats,
        super::usage::own_usage,
        super::jobs::submit,
        super::jobs::list,
        super::jobs::status,
        super::jobs::result,
        super::jobs::cancel,
        super::jobs::events,
        super::usage::every_usage,
        super::reload::reload_now,
        super::meta::health,
        super::meta::metrics,
        serve,
    ),
    // Named by `schema_with` functions, which the derive does not follow.
    components(schemas(Message, ToolCall, ToolResult, ToolDefinition, ApiErrorBody)),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "chat", description = "Chat answers: one JSON object or a stream of events."),
        (name = "models", description = "The models the relay routes to."),
        (name = "jobs", description = "Async document jobs: summarize, extract, classify, answer a question."),
        (name = "usage", description = "What keys spent."),
        (name = "meta", description = "Health, figures and this document."),
        (name = "admin", description = "Operations that need an admin key."),
        (name = DROP_IN_TAG, description = "The vendors' APIs, for their SDKs: point the SDK's base URL at the relay."),
    ),
)]
struct ApiDoc;

/// The ways a key is presented.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Components::new);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some("A relay API key (`fmr_…`) as a bearer token.".into());
        components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "A relay API key (what the Anthropic SDKs send).",
            ))),
        );
        components.add_security_scheme(
            SIGV4,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "An AWS SigV4 signature whose access key id is a relay API key (boto3 and the \
                 AWS SDKs with `aws_access_key_id` set to the key; the secret is anything and \
                 the signature is not checked: the key is the credential).",
            ))),
        );
    }
}

/// What every relay serves, whatever its configuration: the native operations as their
/// handlers describe them and the drop-in surfaces.
fn common_document() -> Document {
    let mut document = ApiDoc::openapi();
    describe_event_streams(&mut document);
    add_drop_ins(&mut document);
    document
}

/// The document of the relay `state` serves: its job routes only when jobs are on, its
/// purpose-built routes, and the edge's answers.
pub fn document(state: &AppState) -> Document {
    let mut document = common_document();
    if state.jobs().is_none() {
        document
            .paths
            .paths
            .retain(|path, _| !path.starts_with(JOBS_PATH));
    }
    add_purpose_routes(&mut document, state);
    add_edge_answers(&mut document, state);
    document
}

/// The route that serves the document, built once.
pub fn routes(state: &AppState) -> Router<AppState> {
    let served: Result<Bytes, Arc<str>> = document(state)
        .to_json()
        .map(Bytes::from)
        .map_err(|err| Arc::from(err.to_string()));
    if let Err(err) = &served {
        tracing::error!(error = %err, "the OpenAPI document could not be encoded");
    }
    Router::new().route(PATH, get(move |id: RequestId| serve(served.clone(), id)))
}

/// This document
///
/// The relay's OpenAPI 3.1 document, generated from its code. Needs no key.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The document.", body = Object)),
)]
async fn serve(
    served: Result<Bytes, Arc<str>>,
    RequestId(id): RequestId,
) -> Result<Response, RequestError> {
    let json = served.map_err(|err| {
        RelayError::Internal(format!("the OpenAPI document could not be encoded: {err}"))
            .with_request_id(&id)
    })?;
    let content_type = HeaderValue::from_static("application/json");
    Ok(([(header::CONTENT_TYPE, content_type)], json).into_response())
}

/// A query parameter's schema: a whole number of 1 to `max`, `default` when left out (the
/// description says so too).
pub(super) fn whole_number_from_one(max: u64, default: u64, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(max))
        .default(Some(default.into()))
        .description(Some(format!("{description} (default {default}).")))
        .into()
}

/// The media type of Server-Sent Events.
const EVENT_STREAM: &str = "text/event-stream";

/// Describes each `text/event-stream` answer by its events: an object of `event` (the event's
/// name) and `data` (JSON text of the schema the handler's annotation names for the stream) —
/// the layout OpenAPI 3.2 gives an event stream's `itemSchema` (written here as the media type's
/// `schema`, which is all 3.1 has), and what Schemathesis checks each event of an answer against.
fn describe_event_streams(document: &mut Document) {
    for item in document.paths.paths.values_mut() {
        for (_, operation) in operations(item) {
            let answers = operation.responses.responses.values_mut();
            for answer in answers.filter_map(|answer| match answer {
                RefOr::T(answer) => Some(answer),
                RefOr::Ref(_) => None,
            }) {
                let Some(RefOr::T(content)) = answer.content.get_mut(EVENT_STREAM) else {
                    continue;
                };
                if let Some(data) = content.schema.take() {
                    content.schema = Some(sse_event(data));
                }
            }
        }
    }
}

/// One Server-Sent Event whose `data` is JSON of `data`.
fn sse_event(data: RefOr<Schema>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "The event's name (its JSON's `type`, where it has one).",
                )),
        )
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json")
                .content_schema(Some(data))
                .description(Some("The event, as one line of JSON.")),
        )
        .required("event")
        .required("data")
        .into()
}

/// A JSON error answer of the relay.
fn error_answer(description: &str) -> Answer {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(ApiErrorBody::name()))),
        )
        .build()
}

/// The HTTP methods of a path item, with their operations.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Put, &mut item.put),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Delete, &mut item.delete),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|operation| (method, operation)))
}

/// Adds to every native operation what the edge may answer before (or around) its handler,
/// where the handler's own annotation does not say it already.
fn add_edge_answers(document: &mut Document, state: &AppState) {
    for (path, item) in document.paths.paths.iter_mut() {
        let guarded = edge::is_guarded(path);
        let calls_a_model = edge::calls_a_model(state, path);
        for (method, operation) in operations(item) {
            // The drop-in surfaces answer every error in their vendor's body.
            if is_drop_in(operation) {
                continue;
            }
            let mut answers: Vec<(&str, &str)> = vec![(
                "403",
                "Refused (`forbidden`): a page from an origin the relay does not allow, or a key \
                 that may not call this route or use the model it asked for (`/v1/admin/` needs \
                 an admin key).",
            )];
            if guarded {
                answers.extend([
                    (
                        "401",
                        "No API key, or one the relay does not accept (`unauthorized`).",
                    ),
                    (
                        "429",
                        "A rate limit is used up for now (`rate_limited`; `Retry-After` says when \
                         to try again), a quota or budget for its period (`quota_exceeded`), or \
                         the upstream throttles (`upstream_throttled`).",
                    ),
                    (
                        "500",
                        "The relay failed (`internal`): a store it keeps (the usage ledger, the \
                         job store) or a bug.",
                    ),
                    (
                        "503",
                        "The relay cannot take the request now: it cannot reach the store of its \
                         limits (`limits_unavailable`), is shutting down (`shutting_down`), or \
                         no upstream is available (`upstream_unavailable`).",
                    ),
                ]);
            }
            if method == HttpMethod::Post {
                answers.extend([
                    (
                        "413",
                        "The body is larger than the relay takes (`payload_too_large`).",
                    ),
                    (
                        "415",
                        "The body is not `application/json` (`unsupported_media_type`).",
                    ),
                ]);
            }
            if calls_a_model {
                answers.extend([
                    (
                        "502",
                        "The upstream's answer broke off or could not be understood \
                         (`upstream_error`), or the configuration does not match it \
                         (`upstream_misconfigured`).",
                    ),
                    (
                        "504",
                        "The upstream did not answer in time (`upstream_timeout`, \
                         `upstream_stalled`), or the request's deadline passed \
                         (`deadline_exceeded`).",
                    ),
                ]);
            }
            for (status, description) in answers {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_answer(description).into());
            }
        }
    }
}

fn is_drop_in(operation: &Operation) -> bool {
    operation
        .tags
        .as_ref()
        .is_some_and(|tags| tags.iter().any(|tag| tag == DROP_IN_TAG))
}

/// The purpose-built `[[routes]]`: `/v1/chat`'s request and answer (and `/v1/chat/stream`'s
/// events with `?stream=true`), framed by the route's system prompt and `max_tokens`.
fn add_purpose_routes(document: &mut Document, state: &AppState) {
    let table = state.routing().table();
    for route in table.policy().routes() {
        let config = &route.config;
        let stream = ParameterBuilder::new()
            .name("stream")
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(
                "`true` (or an `Accept: text/event-stream`) answers with Server-Sent Events, as \
                 `/v1/chat/stream` does.",
            ))
            .schema(Some(ObjectBuilder::new().schema_type(Type::Boolean)))
            .build();
        let answer = ResponseBuilder::new()
            .description("The answer: one JSON object, or the stream's events.")
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name(ChatResponse::name()))),
            )
            .content(
                EVENT_STREAM,
                Content::new(Some(sse_event(
                    Ref::from_schema_name(<StreamEvent as ToSchema>::name()).into(),
                ))),
            )
            .build();
        let operation = OperationBuilder::new()
            .operation_id(Some(format!(
                "route_{}",
                config.path.trim_start_matches("/v1/").replace('/', "_")
            )))
            .summary(Some(format!("The purpose-built route {}", config.path)))
            .description(Some(format!(
                "A chat request framed by the route's system prompt, its `max_tokens` at most \
                 {} (and that when not given); routed by the rules that name the path, then \
                 the route's own models.",
                config.max_tokens
            )))
            .tag("chat")
            .parameter(stream)
            .request_body(Some(json_body(Ref::from_schema_name(ChatRequest::name()))))
            .response("200", answer)
            .response(
                "400",
                error_answer(
                    "The request breaks a rule (`invalid_request`, `malformed_json`, \
                     `unknown_model`; `field` names the field), or the upstream refused it.",
                ),
            );
        document
            .paths
            .add_path_operation(&config.path, vec![HttpMethod::Post], operation.build());
    }
}

/// A required JSON request body of `schema`.
fn json_body(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content("application/json", Content::new(Some(schema)))
        .build()
}

/// A drop-in operation: the vendor API it mirrors.
struct DropIn {
    path: &'static str,
    operation_id: &'static str,
    summary: &'static str,
    description: &'static str,
    /// The official reference of the API.
    docs: &'static str,
    /// Where the key goes: the schemes the vendor's SDK uses.
    security: &'static [&'static str],
}

const BEDROCK_KEYS: &[&str] = &[SIGV4, API_KEY];

/// The drop-in surfaces, as the vendors' SDKs call them.
const DROP_INS: &[DropIn] = &[
    DropIn {
        path: "/v1/chat/completions",
        operation_id: "openai_chat_completions",
        summary: "OpenAI's chat completions",
        description: "OpenAI's request and answer (`chat.completion`, or with `\"stream\": true` \
            SSE `chat.completion.chunk`s ending with `data: [DONE]`), tools included, plus an \
            `fm_relay` object with the route and timings. Errors in OpenAI's body. What the \
            relay cannot honour (`n` above 1, image parts) is a 400 naming the field.",
        docs: "https://platform.openai.com/docs/api-reference/chat/create",
        security: &[BEARER],
    },
    DropIn {
        path: "/v1/messages",
        operation_id: "anthropic_messages",
        summary: "Anthropic's Messages API",
        description: "Anthropic's request and answer (a `message`, or with `\"stream\": true` \
            the named SSE events `message_start` … `message_stop`), tools included, plus an \
            `fm_relay` object with the route and timings. Errors in Anthropic's body.",
        docs: "https://docs.anthropic.com/en/api/messages",
        security: &[API_KEY, BEARER],
    },
    DropIn {
        path: "/model/{modelId}/converse",
        operation_id: "bedrock_converse",
        summary: "Bedrock Runtime's Converse",
        description: "Bedrock's Converse request and answer, tools included. Errors as Bedrock's \
            (`x-amzn-errortype` and `{\"message\": ...}`).",
        docs: "https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html",
        security: BEDROCK_KEYS,
    },
    DropIn {
        path: "/model/{modelId}/converse-stream",
        operation_id: "bedrock_converse_stream",
        summary: "Bedrock Runtime's ConverseStream",
        description: "Bedrock's Converse request; the answer as AWS event-stream frames \
            (`application/vnd.amazon.eventstream`). Errors as Bedrock's.",
        docs: "https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html",
        security: BEDROCK_KEYS,
    },
    DropIn {
        path: "/model/{modelId}/invoke",
        operation_id: "bedrock_invoke_model",
        summary: "Bedrock Runtime's InvokeModel",
        description: "An Anthropic Messages body, as Bedrock's Claude models take it, and its \
            answer. Errors as Bedrock's.",
        docs: "https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html",
        security: BEDROCK_KEYS,
    },
    DropIn {
        path: "/model/{modelId}/invoke-with-response-stream",
        operation_id: "bedrock_invoke_model_with_response_stream",
        summary: "Bedrock Runtime's InvokeModelWithResponseStream",
        description: "An Anthropic Messages body; the answer's events as AWS event-stream \
            `chunk` frames. Errors as Bedrock's.",
        docs: "https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModelWithResponseStream.html",
        security: BEDROCK_KEYS,
    },
];

fn add_drop_ins(document: &mut Document) {
    let free_form = || ObjectBuilder::new().schema_type(Type::Object);
    for drop_in in DROP_INS {
        let mut operation = OperationBuilder::new()
            .operation_id(Some(drop_in.operation_id))
            .summary(Some(drop_in.summary))
            .description(Some(drop_in.description))
            .tag(DROP_IN_TAG)
            .request_body(Some(json_body(free_form().description(Some(
                "The vendor's request body (see the linked reference).",
            )))))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The vendor's answer (see the linked reference).")
                    .build(),
            )
            .response(
                "4XX",
                ResponseBuilder::new()
                    .description("The request was refused: the vendor's error body.")
                    .build(),
            )
            .response(
                "5XX",
                ResponseBuilder::new()
                    .description("No upstream could answer: the vendor's error body.")
                    .build(),
            )
            .securities(Some(drop_in.security.iter().map(|scheme| {
                SecurityRequirement::new(*scheme, Vec::<String>::new())
            })));
        if drop_in.path.contains("{modelId}") {
            operation = operation.parameter(model_id());
        }
        let mut operation = operation.build();
        let mut docs = ExternalDocs::new(drop_in.docs);
        docs.description = Some("The official API reference.".into());
        operation.external_docs = Some(docs);
        document
            .paths
            .add_path_operation(drop_in.path, vec![HttpMethod::Post], operation);
    }
}

/// Bedrock's `modelId` path segment.
fn model_id() -> Parameter {
    ParameterBuilder::new()
        .name("modelId")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(
            "A relay model id, or the upstream id (`anthropic.claude-…`) of one of the relay's \
             models; percent-encoded as the AWS SDKs send it.",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

#[cfg(test)]
mod tests {
    use fm_protocol::jobs::job_limits;
    use fm_protocol::limits;
    use serde_json::Value;

    use super::*;
    use crate::telemetry::window::MAX_WINDOW;

    fn common() -> Value {
        serde_json::to_value(common_document()).unwrap()
    }

    fn schema<'a>(document: &'a Value, name: &str) -> &'a Value {
        &document["components"]["schemas"][name]
    }

    /// The schema of query parameter `name` of `GET path`.
    fn query_parameter<'a>(document: &'a Value, path: &str, name: &str) -> &'a Value {
        document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == name)
            .map(|parameter| &parameter["schema"])
            .unwrap_or_else(|| panic!("GET {path} has no parameter {name}"))
    }

    #[test]
    fn the_limits_are_the_validation_s_constants() {
        let document = common();
        assert_eq!(document["openapi"], "3.1.0");
        let request = &schema(&document, "ChatRequest")["properties"];
        assert_eq!(request["messages"]["maxItems"], limits::MAX_MESSAGES);
        assert_eq!(request["messages"]["minItems"], limits::MIN_MESSAGES);
        assert_eq!(request["max_tokens"]["maximum"], limits::MAX_TOKENS);
        assert_eq!(request["max_tokens"]["minimum"], 1);
        assert_eq!(
            request["temperature"]["maximum"].as_f64(),
            Some(f64::from(limits::MAX_TEMPERATURE))
        );
        assert_eq!(
            request["stop_sequences"]["maxItems"],
            limits::MAX_STOP_SEQUENCES
        );
        assert_eq!(
            request["stop_sequences"]["items"]["maxLength"],
            limits::MAX_STOP_SEQUENCE_CHARS
        );
        assert_eq!(request["system"]["maxLength"], limits::MAX_CONTENT_CHARS);
        assert_eq!(
            request["routing_hint"]["maxLength"],
            limits::MAX_ROUTING_HINT_CHARS
        );
        assert_eq!(request["tools"]["maxItems"], limits::MAX_TOOLS);
        assert_eq!(
            schema(&document, "ChatRequest")["additionalProperties"],
            false
        );

        let tool = &schema(&document, "ToolDefinition")["properties"];
        assert_eq!(tool["name"]["maxLength"], limits::MAX_TOOL_NAME_CHARS);
        assert_eq!(
            tool["name"]["pattern"],
            fm_protocol::openapi::TOOL_NAME_PATTERN
        );
        assert_eq!(
            tool["description"]["maxLength"],
            limits::MAX_TOOL_DESCRIPTION_CHARS
        );
        let call = &schema(&document, "ToolCall")["properties"];
        assert_eq!(call["id"]["maxLength"], limits::MAX_TOOL_NAME_CHARS);
        assert_eq!(call["input"]["type"], "object");

        let job = &schema(&document, "JobRequest")["properties"];
        assert_eq!(job["question"]["maxLength"], job_limits::MAX_QUESTION_CHARS);
        assert_eq!(job["labels"]["maxItems"], job_limits::MAX_LABELS);
        assert_eq!(
            job["callback_url"]["maxLength"],
            job_limits::MAX_CALLBACK_URL_CHARS
        );

        let window = query_parameter(&document, "/v1/stats", "window_secs");
        assert_eq!(window["maximum"], MAX_WINDOW.as_secs());
        let page = query_parameter(&document, "/v1/jobs", "limit");
        assert_eq!(page["maximum"], crate::jobs::MAX_PAGE);
    }

    #[test]
    fn a_message_s_text_may_be_empty_beside_tool_calls_but_is_bounded() {
        let document = common();
        let message = &schema(&document, "Message")["properties"];
        assert_eq!(message["content"]["maxLength"], limits::MAX_CONTENT_CHARS);
        assert_eq!(message["content"]["minLength"], 0);
        assert!(message["content"].get("pattern").is_none(), "{message}");
        assert_eq!(message["tool_calls"]["maxItems"], limits::MAX_TOOLS);
        // Not required: `#[serde(default)]`.
        let required = &schema(&document, "Message")["required"];
        assert!(!required.as_array().unwrap().contains(&"content".into()));
    }

    #[test]
    fn the_requests_have_their_examples() {
        let document = common();
        let chat = &schema(&document, "ChatRequest")["example"];
        assert_eq!(chat["messages"][0]["role"], "user");
        let job = &schema(&document, "JobRequest")["example"];
        assert_eq!(job["analysis_type"], "summarize");
    }

    #[test]
    fn every_reference_names_a_schema_of_the_document() {
        let document = common();
        let text = document.to_string();
        let mut names: Vec<&str> = text
            .split(r##""$ref":"#/components/schemas/"##)
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.contains(&"Message") && names.contains(&"StreamEvent"));
        for name in names {
            assert!(
                schema(&document, name).is_object(),
                "`{name}` is referenced but not in components.schemas"
            );
        }
    }

    #[test]
    fn event_streams_are_described_by_their_events() {
        let document = common();
        let answer = &document["paths"]["/v1/chat/stream"]["post"]["responses"]["200"];
        let event = &answer["content"][EVENT_STREAM]["schema"];
        assert_eq!(event["required"], serde_json::json!(["event", "data"]));
        let data = &event["properties"]["data"];
        assert_eq!(data["contentMediaType"], "application/json");
        assert_eq!(
            data["contentSchema"]["$ref"],
            "#/components/schemas/StreamEvent"
        );
        let variants = schema(&document, "StreamEvent")["oneOf"].to_string();
        assert!(variants.contains(r#""tool_call""#), "{variants}");
    }

    #[test]
    fn the_drop_in_surfaces_have_free_form_bodies_and_link_the_official_api() {
        let document = common();
        for drop_in in DROP_INS {
            let operation = &document["paths"][drop_in.path]["post"];
            assert_eq!(operation["tags"], serde_json::json!([DROP_IN_TAG]));
            assert!(
                operation["externalDocs"]["url"]
                    .as_str()
                    .is_some_and(|url| url.starts_with("https://"))
            );
            let body = &operation["requestBody"]["content"]["application/json"]["schema"];
            assert_eq!(body["type"], "object");
            assert!(body.get("properties").is_none(), "{body}");
        }
        assert!(
            document["paths"]["/model/{modelId}/converse"]["post"]["parameters"][0]["name"]
                == "modelId"
        );
    }
}
