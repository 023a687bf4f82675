//! AWS Bedrock through `aws-sdk-bedrockruntime`: Converse for one-shot answers, ConverseStream
//! for streams. The SDK's own retries are off (one attempt per call: the relay's resilience layer
//! decides about retries) and so is its stalled-stream protection (the relay wraps every read in
//! its own idle timeout, which also covers event streams, where the SDK has none).
//!
//! Tools map to Converse's `toolConfig` (`toolSpec`s with JSON input schemas, `toolChoice`),
//! tool calls and results to `toolUse` and `toolResult` content blocks; a streamed `toolUse`
//! block's input pieces are held until the block stops, and passed on as one whole call.
//!
//! Errors are classified here, at the edge, into [`UpstreamFailure`]s: by the Bedrock error code
//! (`ThrottlingException`, ...), the in-stream exception variant, or the transport failure.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::{RetryConfig, RetryPartition};
use aws_sdk_bedrockruntime::config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::config::{
    BehaviorVersion, Credentials, Region, SharedHttpClient, StalledStreamProtectionConfig,
};
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    self as bedrock, AnyToolChoice, AutoToolChoice, ContentBlock, ContentBlockStart,
    ConversationRole, ConverseStreamOutput, InferenceConfiguration, SpecificToolChoice,
    SystemContentBlock, TokenUsage, Tool, ToolConfiguration, ToolInputSchema, ToolResultBlock,
    ToolResultContentBlock, ToolResultStatus, ToolSpecification, ToolUseBlock,
};
use aws_smithy_http_client::tls::{
    Provider as TlsProvider, TlsContext, TrustStore, rustls_provider::CryptoMode,
};
use aws_smithy_types::{Document, Number};
use fm_protocol::{ChatRequest, Role, StopReason, ToolCall, ToolChoice, Usage};

use super::{ChatProvider, PartialToolCall, ProviderAnswer, ProviderEvent, ProviderStream};
use crate::error::{RelayError, UpstreamFailure};

const KIND: &str = "bedrock";

/// Where the SDK sends its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BedrockEndpoint {
    /// AWS itself, with the standard credential chain.
    Aws,
    /// A fixed URL (the embedded simulator, a standalone fm-sim, a VPC endpoint...).
    Url(String),
}

/// A Bedrock Runtime client for one region: an SDK client per HTTP client, taken in turn, so
/// calls spread over their connections.
#[derive(Debug, Clone)]
pub struct BedrockProvider {
    clients: Arc<[Client]>,
    next: Arc<AtomicUsize>,
    region: String,
}

/// The HTTP clients every Bedrock region's calls are spread over (`bedrock.http2_connections`,
/// at least one): hyper + rustls with the `ring` provider, TCP_NODELAY on every upstream
/// connection (the smithy default), HTTP/2 when the endpoint offers it by ALPN (as Bedrock does:
/// one connection carries many streams, up to the endpoint's cap), each client with connections
/// of its own.
#[derive(Debug, Clone)]
pub struct BedrockHttp {
    clients: Vec<SharedHttpClient>,
}

impl BedrockHttp {
    /// `count` clients (at least one) trusting the system's roots and, with `ca_file`, the PEM
    /// certificates in it (read and checked once, here).
    pub fn new(count: usize, ca_file: Option<&Path>) -> Result<BedrockHttp, RelayError> {
        let mut trust = TrustStore::default();
        if let Some(path) = ca_file {
            trust = trust.with_pem_certificate(checked_pem_roots(path)?);
        }
        let tls = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|err| {
                RelayError::Internal(format!("the TLS settings of the Bedrock client: {err}"))
            })?;
        let clients = (0..count.max(1))
            .map(|_| {
                aws_smithy_http_client::Builder::new()
                    .tls_provider(TlsProvider::Rustls(CryptoMode::Ring))
                    .tls_context(tls.clone())
                    .build_https()
            })
            .collect();
        Ok(BedrockHttp { clients })
    }

    /// The first client: the one the SDK's shared configuration (credentials) loads with.
    fn first(&self) -> SharedHttpClient {
        self.clients[0].clone()
    }
}

/// The PEM file at `path`, once every certificate in it was taken as a root the way the SDK's
/// rustls connector takes them (which panics on one it cannot use).
fn checked_pem_roots(path: &Path) -> Result<Vec<u8>, RelayError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|source| RelayError::CaFileUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |source| RelayError::CaFileInvalid {
        path: path.to_path_buf(),
        source,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid(None))?;
    if certificates.is_empty() {
        return Err(invalid(None));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|err| invalid(Some(err)))?;
    }
    Ok(pem)
}

impl BedrockProvider {
    /// Builds a client for `region` that sends its calls to `endpoint`, spread over `http`'s
    /// clients (their credentials and identity cache are shared).
    pub async fn connect(
        endpoint: &BedrockEndpoint,
        region: &str,
        http: &BedrockHttp,
        connect_timeout: Duration,
    ) -> BedrockProvider {
        let region_value = Region::new(region.to_string());
        let first_http = http.first();
        let mut builder = match endpoint {
            BedrockEndpoint::Aws => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(region_value)
                    .http_client(first_http)
                    .load()
                    .await;
                aws_sdk_bedrockruntime::config::Builder::from(&shared)
            }
            BedrockEndpoint::Url(url) => {
                let mut builder = aws_sdk_bedrockruntime::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .region(region_value)
                    .http_client(first_http)
                    .endpoint_url(url);
                builder = match env_credentials() {
                    Some(credentials) => builder.credentials_provider(credentials),
                    None => builder.credentials_provider(Credentials::new(
                        "fm-relay-local",
                        "fm-relay-local",
                        None,
                        None,
                        "fm-relay placeholder",
                    )),
                };
                builder
            }
        };
        builder = builder
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .retry_partition(RetryPartition::new(format!("fm-relay-{region}")))
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(connect_timeout)
                    .build(),
            );
        let clients: Vec<Client> = http
            .clients
            .iter()
            .map(|http| Client::from_conf(builder.clone().http_client(http.clone()).build()))
            .collect();
        BedrockProvider {
            clients: clients.into(),
            next: Arc::default(),
            region: region.to_string(),
        }
    }

    /// The SDK client for the next call.
    fn client(&self) -> &Client {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[turn % self.clients.len()]
    }
}

/// Static credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`).
fn env_credentials() -> Option<Credentials> {
    let key = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
    let token = std::env::var("AWS_SESSION_TOKEN").ok();
    Some(Credentials::new(key, secret, token, None, "environment"))
}

/// Fills a Converse or ConverseStream request builder — two SDK types with the same setters.
macro_rules! converse_input {
    ($builder:expr, $upstream_id:expr, $request:expr) => {{
        let (messages, system, inference, tools) = to_converse($request);
        $builder
            .model_id($upstream_id)
            .set_messages(Some(messages))
            .set_system(system)
            .inference_config(inference)
            .set_tool_config(tools)
    }};
}

impl ChatProvider for BedrockProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn location(&self) -> &str {
        &self.region
    }

    async fn complete(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> Result<ProviderAnswer, RelayError> {
        let output = converse_input!(self.client().converse(), upstream_id, request)
            .send()
            .await
            .map_err(|err| self.classify(upstream_id, err))?;
        let content = output
            .output()
            .and_then(|o| o.as_message().ok())
            .map(bedrock::Message::content)
            .unwrap_or_default();
        let text = content
            .iter()
            .filter_map(|block| block.as_text().ok())
            .map(String::as_str)
            .collect::<String>();
        let tool_calls = content
            .iter()
            .filter_map(|block| block.as_tool_use().ok())
            .map(|call| ToolCall {
                id: call.tool_use_id.clone(),
                name: call.name.clone(),
                input: json_from_document(&call.input),
            })
            .collect();
        Ok(ProviderAnswer {
            text,
            tool_calls,
            stop_reason: stop_reason(output.stop_reason()),
            usage: output.usage().map(usage),
        })
    }

    async fn open_stream(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> Result<ProviderStream, RelayError> {
        let output = converse_input!(self.client().converse_stream(), upstream_id, request)
            .send()
            .await
            .map_err(|err| self.classify(upstream_id, err))?;
        let target = self.target(upstream_id);
        // The tool call whose block is open, if one is.
        let state = Some((output.stream, None::<PartialToolCall>));
        let events = futures_util::stream::unfold(state, move |state| {
            let target = target.clone();
            async move {
                let (mut receiver, mut tool_call) = state?;
                loop {
                    let event = match receiver.recv().await {
                        Ok(Some(event)) => event,
                        Ok(None) => return None,
                        Err(err) => return Some((Err(classify_stream_error(target, err)), None)),
                    };
                    let converted = match event {
                        ConverseStreamOutput::ContentBlockStart(start) => {
                            if let Some(ContentBlockStart::ToolUse(call)) = start.start {
                                tool_call = Some(PartialToolCall::new(call.tool_use_id, call.name));
                            }
                            None
                        }
                        ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta {
                            Some(bedrock::ContentBlockDelta::Text(text)) => {
                                Some(ProviderEvent::TextDelta(text))
                            }
                            Some(bedrock::ContentBlockDelta::ToolUse(piece)) => {
                                let pushed = match tool_call.as_mut() {
                                    Some(call) => call.push(&piece.input),
                                    None => Err("a toolUse delta outside a toolUse block".into()),
                                };
                                if let Err(message) = pushed {
                                    return Some((Err(protocol_error(target, message)), None));
                                }
                                None
                            }
                            _ => None,
                        },
                        ConverseStreamOutput::ContentBlockStop(_) => match tool_call.take() {
                            Some(call) => match call.finish() {
                                Ok(call) => Some(ProviderEvent::ToolCall(call)),
                                Err(message) => {
                                    return Some((Err(protocol_error(target, message)), None));
                                }
                            },
                            None => None,
                        },
                        ConverseStreamOutput::MessageStop(stop) => {
                            Some(ProviderEvent::Stop(stop_reason(&stop.stop_reason)))
                        }
                        ConverseStreamOutput::Metadata(metadata) => {
                            metadata.usage().map(|u| ProviderEvent::Usage(usage(u)))
                        }
                        _ => None,
                    };
                    if let Some(event) = converted {
                        return Some((Ok(event), Some((receiver, tool_call))));
                    }
                }
            }
        });
        Ok(Box::pin(events))
    }
}

impl BedrockProvider {
    fn target(&self, upstream_id: &str) -> String {
        format!("{upstream_id} in {}", self.region)
    }

    /// Classifies an operation error (before any stream event).
    fn classify<E, R>(&self, upstream_id: &str, err: SdkError<E, R>) -> RelayError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + RawResponse,
    {
        let mut retry_after = None;
        let (failure, message) = match &err {
            SdkError::TimeoutError(_) => (UpstreamFailure::Timeout, "no response in time".into()),
            SdkError::DispatchFailure(failure) => {
                let kind = if failure.is_timeout() {
                    UpstreamFailure::Timeout
                } else {
                    UpstreamFailure::Unavailable
                };
                (kind, DisplayErrorContext(&err).to_string())
            }
            SdkError::ResponseError(_) => (
                UpstreamFailure::Protocol,
                DisplayErrorContext(&err).to_string(),
            ),
            SdkError::ServiceError(service) => {
                let status = service.raw().status();
                let failure = err
                    .code()
                    .and_then(failure_for_code)
                    .unwrap_or_else(|| failure_for_status(status));
                let code = err.code().unwrap_or("error");
                let detail = err.message().unwrap_or("no message");
                let raw = service.raw();
                retry_after =
                    asked_wait(raw.header("retry-after"), raw.header("x-amz-retry-after"));
                (
                    refine_rejection(failure, detail),
                    format!("{code} (HTTP {status}): {detail}"),
                )
            }
            _ => {
                return RelayError::Internal(format!(
                    "building the Bedrock request failed: {}",
                    DisplayErrorContext(&err)
                ));
            }
        };
        RelayError::Upstream {
            failure,
            provider: KIND,
            target: self.target(upstream_id),
            message,
            retry_after,
        }
    }
}

/// How long an error answer asks the caller to wait: `Retry-After` in seconds, or
/// `x-amz-retry-after` in milliseconds. A value that is not a wait (negative, not a number, past
/// what a `Duration` holds) asks for nothing.
pub(crate) fn asked_wait(seconds: Option<&str>, milliseconds: Option<&str>) -> Option<Duration> {
    milliseconds
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| {
            seconds
                .and_then(|s| s.trim().parse::<f64>().ok())
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
        })
}

/// What classification reads of a raw error response: the HTTP status (for errors without a
/// known code) and headers.
trait RawResponse {
    fn status(&self) -> u16;
    fn header(&self, name: &str) -> Option<&str>;
}

impl RawResponse for aws_smithy_runtime_api::http::Response {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers().get(name)
    }
}

fn failure_for_code(code: &str) -> Option<UpstreamFailure> {
    // In-stream exceptions are spelled in lower camel case; compare without case.
    let code = code.to_ascii_lowercase();
    Some(match code.as_str() {
        "throttlingexception" | "servicequotaexceededexception" | "toomanyrequestsexception" => {
            UpstreamFailure::Throttled
        }
        "serviceunavailableexception"
        | "internalserverexception"
        | "modelnotreadyexception"
        | "modelerrorexception"
        | "modelstreamerrorexception" => UpstreamFailure::Unavailable,
        "modeltimeoutexception" => UpstreamFailure::Timeout,
        "validationexception" => UpstreamFailure::Rejected,
        "resourcenotfoundexception"
        | "accessdeniedexception"
        | "unrecognizedclientexception"
        | "expiredtokenexception" => UpstreamFailure::Misconfigured,
        _ => return None,
    })
}

/// A rejection that says the input is too long for the model is a context-window failure, which
/// a model with a larger window may still answer.
fn refine_rejection(failure: UpstreamFailure, message: &str) -> UpstreamFailure {
    let message = message.to_ascii_lowercase();
    let too_long = [
        "too long",
        "too many input tokens",
        "too many tokens",
        "context length",
    ]
    .iter()
    .any(|phrase| message.contains(phrase));
    if failure == UpstreamFailure::Rejected && too_long {
        UpstreamFailure::ContextTooLong
    } else {
        failure
    }
}

fn failure_for_status(status: u16) -> UpstreamFailure {
    match status {
        429 => UpstreamFailure::Throttled,
        408 => UpstreamFailure::Timeout,
        401 | 403 | 404 => UpstreamFailure::Misconfigured,
        400..=499 => UpstreamFailure::Rejected,
        _ => UpstreamFailure::Unavailable,
    }
}

/// Classifies an error raised inside an event stream.
fn classify_stream_error<R: std::fmt::Debug>(
    target: String,
    err: SdkError<ConverseStreamOutputError, R>,
) -> RelayError {
    let (failure, message) = match &err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let failure = match inner {
                ConverseStreamOutputError::ThrottlingException(_) => UpstreamFailure::Throttled,
                ConverseStreamOutputError::ValidationException(_) => UpstreamFailure::Rejected,
                ConverseStreamOutputError::ServiceUnavailableException(_)
                | ConverseStreamOutputError::InternalServerException(_)
                | ConverseStreamOutputError::ModelStreamErrorException(_) => {
                    UpstreamFailure::Unavailable
                }
                _ => inner
                    .code()
                    .and_then(failure_for_code)
                    .unwrap_or(UpstreamFailure::Unavailable),
            };
            (
                refine_rejection(failure, inner.message().unwrap_or_default()),
                format!(
                    "in-stream {}: {}",
                    exception_name(inner),
                    inner.message().unwrap_or("no message")
                ),
            )
        }
        SdkError::TimeoutError(_) => (UpstreamFailure::Timeout, "stream timed out".into()),
        _ => (
            UpstreamFailure::Protocol,
            format!("the stream broke: {}", DisplayErrorContext(&err)),
        ),
    };
    RelayError::Upstream {
        failure,
        provider: KIND,
        target,
        message,
        retry_after: None,
    }
}

/// A stream whose events do not add up (a tool call's input that is not JSON, ...).
fn protocol_error(target: String, message: String) -> RelayError {
    RelayError::Upstream {
        failure: UpstreamFailure::Protocol,
        provider: KIND,
        target,
        message,
        retry_after: None,
    }
}

fn exception_name(err: &ConverseStreamOutputError) -> &'static str {
    match err {
        ConverseStreamOutputError::ThrottlingException(_) => "ThrottlingException",
        ConverseStreamOutputError::ValidationException(_) => "ValidationException",
        ConverseStreamOutputError::ServiceUnavailableException(_) => "ServiceUnavailableException",
        ConverseStreamOutputError::InternalServerException(_) => "InternalServerException",
        ConverseStreamOutputError::ModelStreamErrorException(_) => "ModelStreamErrorException",
        _ => "exception",
    }
}

type ConverseParts = (
    Vec<bedrock::Message>,
    Option<Vec<SystemContentBlock>>,
    InferenceConfiguration,
    Option<ToolConfiguration>,
);

/// The Converse request for a chat request.
fn to_converse(request: &ChatRequest) -> ConverseParts {
    let messages = request
        .messages
        .iter()
        .filter_map(|message| {
            bedrock::Message::builder()
                .role(match message.role {
                    Role::User => ConversationRole::User,
                    Role::Assistant => ConversationRole::Assistant,
                })
                .set_content(Some(content_blocks(message)))
                .build()
                .ok()
        })
        .collect();
    let system = request
        .system
        .as_ref()
        .map(|text| vec![SystemContentBlock::Text(text.clone())]);
    let inference = InferenceConfiguration::builder()
        .max_tokens(i32::try_from(request.max_tokens_or_default()).unwrap_or(i32::MAX))
        // A fallback from a model that takes more keeps to Bedrock's range.
        .set_temperature(
            request
                .temperature
                .map(|t| t.min(crate::config::ProviderKind::Bedrock.max_temperature())),
        )
        .set_stop_sequences(
            (!request.stop_sequences.is_empty()).then(|| request.stop_sequences.clone()),
        )
        .build();
    (messages, system, inference, tool_configuration(request))
}

/// A message's Converse content: its results, its text (unless blank: Bedrock refuses blank
/// text blocks), then its calls.
fn content_blocks(message: &fm_protocol::Message) -> Vec<ContentBlock> {
    let results = message.tool_results.iter().filter_map(|result| {
        ToolResultBlock::builder()
            .tool_use_id(&result.tool_call_id)
            .content(ToolResultContentBlock::Text(result.content.clone()))
            .set_status(result.is_error.then_some(ToolResultStatus::Error))
            .build()
            .ok()
            .map(ContentBlock::ToolResult)
    });
    let text =
        (!message.content.trim().is_empty()).then(|| ContentBlock::Text(message.content.clone()));
    let calls = message.tool_calls.iter().filter_map(|call| {
        ToolUseBlock::builder()
            .tool_use_id(&call.id)
            .name(&call.name)
            .input(document_from_json(&call.input))
            .build()
            .ok()
            .map(ContentBlock::ToolUse)
    });
    results.chain(text).chain(calls).collect()
}

/// Converse's `toolConfig`: absent without tools, or when the caller said `none` (Bedrock has
/// no such choice: a model without tools calls none; the relay refuses `none` for a
/// conversation that already uses tools).
fn tool_configuration(request: &ChatRequest) -> Option<ToolConfiguration> {
    if request.tools.is_empty() || request.tool_choice == Some(ToolChoice::None) {
        return None;
    }
    let tools = request
        .tools
        .iter()
        .filter_map(|tool| {
            ToolSpecification::builder()
                .name(&tool.name)
                .set_description(tool.description.clone())
                .input_schema(ToolInputSchema::Json(document_from_json(
                    &tool.input_schema,
                )))
                .build()
                .ok()
                .map(Tool::ToolSpec)
        })
        .collect();
    let choice = match &request.tool_choice {
        None | Some(ToolChoice::Auto | ToolChoice::None) => {
            bedrock::ToolChoice::Auto(AutoToolChoice::builder().build())
        }
        Some(ToolChoice::Any) => bedrock::ToolChoice::Any(AnyToolChoice::builder().build()),
        Some(ToolChoice::Tool { name }) => {
            bedrock::ToolChoice::Tool(SpecificToolChoice::builder().name(name).build().ok()?)
        }
    };
    ToolConfiguration::builder()
        .set_tools(Some(tools))
        .tool_choice(choice)
        .build()
        .ok()
}

/// A JSON value as the SDK's document type.
fn document_from_json(value: &serde_json::Value) -> Document {
    match value {
        serde_json::Value::Null => Document::Null,
        serde_json::Value::Bool(b) => Document::Bool(*b),
        serde_json::Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or_default())
        }),
        serde_json::Value::String(s) => Document::String(s.clone()),
        serde_json::Value::Array(items) => {
            Document::Array(items.iter().map(document_from_json).collect())
        }
        serde_json::Value::Object(fields) => Document::Object(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), document_from_json(value)))
                .collect(),
        ),
    }
}

/// The SDK's document type as a JSON value (a float JSON cannot hold becomes `null`).
fn json_from_document(document: &Document) -> serde_json::Value {
    match document {
        Document::Null => serde_json::Value::Null,
        Document::Bool(b) => serde_json::Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => (*u).into(),
        Document::Number(Number::NegInt(i)) => (*i).into(),
        Document::Number(Number::Float(f)) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Document::String(s) => serde_json::Value::String(s.clone()),
        Document::Array(items) => items.iter().map(json_from_document).collect(),
        Document::Object(fields) => serde_json::Value::Object(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), json_from_document(value)))
                .collect(),
        ),
    }
}

fn stop_reason(reason: &bedrock::StopReason) -> StopReason {
    match reason {
        bedrock::StopReason::EndTurn => StopReason::EndTurn,
        bedrock::StopReason::MaxTokens => StopReason::MaxTokens,
        bedrock::StopReason::StopSequence => StopReason::StopSequence,
        bedrock::StopReason::ContentFiltered | bedrock::StopReason::GuardrailIntervened => {
            StopReason::ContentFiltered
        }
        bedrock::StopReason::ToolUse => StopReason::ToolUse,
        _ => StopReason::Other,
    }
}

fn usage(usage: &TokenUsage) -> Usage {
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    Usage {
        total_tokens: count(usage.total_tokens()),
        ..Usage::new(count(usage.input_tokens()), count(usage.output_tokens()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify_case_insensitively() {
        assert_eq!(
            failure_for_code("ThrottlingException"),
            Some(UpstreamFailure::Throttled)
        );
        assert_eq!(
            failure_for_code("modelStreamErrorException"),
            Some(UpstreamFailure::Unavailable)
        );
        assert_eq!(
            failure_for_code("ValidationException"),
            Some(UpstreamFailure::Rejected)
        );
        assert_eq!(failure_for_code("SomethingNew"), None);
        assert_eq!(failure_for_status(503), UpstreamFailure::Unavailable);
        assert_eq!(failure_for_status(429), UpstreamFailure::Throttled);
        assert_eq!(failure_for_status(418), UpstreamFailure::Rejected);
        assert_eq!(
            refine_rejection(
                UpstreamFailure::Rejected,
                "Input is too long for requested model."
            ),
            UpstreamFailure::ContextTooLong
        );
        assert_eq!(
            refine_rejection(UpstreamFailure::Rejected, "Malformed input request"),
            UpstreamFailure::Rejected
        );
        assert_eq!(
            refine_rejection(UpstreamFailure::Unavailable, "too long"),
            UpstreamFailure::Unavailable
        );
    }

    #[test]
    fn waits_asked_for_are_read_from_either_header() {
        assert_eq!(asked_wait(Some("2"), None), Some(Duration::from_secs(2)));
        assert_eq!(
            asked_wait(Some("2"), Some("1500")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            asked_wait(Some("Wed, 21 Oct 2015 07:28:00 GMT"), None),
            None
        );
        assert_eq!(asked_wait(None, None), None);
        // Past what a `Duration` holds, negative, not a number: no wait asked, and no panic.
        for seconds in ["1e300", "-1", "NaN", "inf", "18446744073709551616"] {
            assert_eq!(asked_wait(Some(seconds), None), None, "{seconds}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_retry_after_header_reads_without_panic(
            seconds in proptest::option::of("[-+0-9.eEinfINFa ]{0,24}|.{0,24}"),
            milliseconds in proptest::option::of("[-+0-9 ]{0,24}|.{0,24}"),
        ) {
            let _ = asked_wait(seconds.as_deref(), milliseconds.as_deref());
        }
    }

    #[test]
    fn chat_requests_become_converse_requests() {
        let request = ChatRequest {
            system: Some("be brief".into()),
            max_tokens: Some(64),
            temperature: Some(0.5),
            stop_sequences: vec!["END".into()],
            ..ChatRequest::from_prompt("hello")
        };
        let (messages, system, inference, tools) = to_converse(&request);
        assert!(tools.is_none());
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].role(), &ConversationRole::User);
        assert_eq!(system.unwrap().len(), 1);
        assert_eq!(inference.max_tokens(), Some(64));
        assert_eq!(inference.temperature(), Some(0.5));
        assert_eq!(inference.stop_sequences(), ["END".to_string()]);
    }

    #[test]
    fn tools_calls_and_results_become_converse_blocks() {
        let input = serde_json::json!({"q": "relays", "limit": 2, "exact": false, "w": -1.5, "tags": ["a", null]});
        assert_eq!(json_from_document(&document_from_json(&input)), input);
        let call = ToolCall {
            id: "tooluse_1".into(),
            name: "search".into(),
            input: input.clone(),
        };
        let mut answer = fm_protocol::Message::assistant("");
        answer.tool_calls.push(call);
        let mut result = fm_protocol::Message::user("");
        result.tool_results.push(fm_protocol::ToolResult {
            tool_call_id: "tooluse_1".into(),
            content: "3 hits".into(),
            is_error: true,
        });
        let request = ChatRequest {
            messages: vec![fm_protocol::Message::user("find relays"), answer, result],
            tools: vec![fm_protocol::ToolDefinition {
                name: "search".into(),
                description: Some("Searches".into()),
                input_schema: serde_json::json!({"type": "object"}),
            }],
            tool_choice: Some(ToolChoice::Tool {
                name: "search".into(),
            }),
            ..ChatRequest::default()
        };
        let (messages, _, _, tools) = to_converse(&request);
        // A blank text is left out: Bedrock refuses blank text blocks.
        let call = messages[1].content()[0].as_tool_use().unwrap();
        assert_eq!((call.tool_use_id(), call.name()), ("tooluse_1", "search"));
        assert_eq!(messages[1].content().len(), 1);
        let result = messages[2].content()[0].as_tool_result().unwrap();
        assert_eq!(result.status(), Some(&ToolResultStatus::Error));
        let tools = tools.unwrap();
        assert_eq!(tools.tools()[0].as_tool_spec().unwrap().name(), "search");
        assert_eq!(
            tools.tool_choice().unwrap().as_tool().unwrap().name(),
            "search"
        );

        let told_none = ChatRequest {
            tool_choice: Some(ToolChoice::None),
            ..request
        };
        assert!(to_converse(&told_none).3.is_none());
    }
}
