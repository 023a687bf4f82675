//! The HTTP surface: Bedrock Runtime's four model operations under `/model/{modelId}/{op}`,
//! `GET /_sim/stats` for tests, and the fault schedule's admin routes (`GET`, `PUT` and `DELETE`
//! `/_sim/faults`). The SDK percent-encodes the model id, so ids with `:` or `/` (inference
//! profiles, ARNs) arrive as one path segment that axum decodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::answer::Answer;
use crate::config::SimConfig;
use crate::error::SimError;
use crate::fault::{Fault, FaultSpec, HttpFault, split_model_id};
use crate::schedule::{FaultRule, FaultSchedule, signed_region};
use crate::stats::SimStats;
use crate::stream::{StreamFormat, openai_error_body, openai_usage, spawn_stream};
use crate::wire::{AnthropicRequest, ConverseRequest, OpenAiRequest, Prompt};

/// The header a client may set to ask for a fault on one request.
pub const FAULT_HEADER: &str = "x-fm-sim-fault";

#[derive(Debug)]
pub(crate) struct SimState {
    pub config: SimConfig,
    pub stats: Arc<SimStats>,
    /// How many requests asked for each limited fault (`*K`), keyed by model id and spec.
    pub limited_faults: Mutex<HashMap<String, u32>>,
    pub schedule: FaultSchedule,
}

impl SimState {
    pub fn new(config: SimConfig, stats: Arc<SimStats>) -> Self {
        SimState {
            schedule: FaultSchedule::new(config.faults.clone(), config.seed),
            config,
            stats,
            limited_faults: Mutex::new(HashMap::new()),
        }
    }

    /// The fault to inject for this request: a limited spec applies only to its first K uses,
    /// counted per model id and fault header.
    fn fault_for(
        &self,
        model_id: &str,
        header: Option<&str>,
        spec: Option<FaultSpec>,
    ) -> Option<Fault> {
        let spec = spec?;
        let Some(limit) = spec.limit else {
            return Some(spec.fault);
        };
        let key = format!("{model_id}|{}", header.unwrap_or_default());
        let mut counts = self
            .limited_faults
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let used = counts.entry(key).or_insert(0);
        *used += 1;
        (*used <= limit).then_some(spec.fault)
    }

    /// Admits a request for `model_id` (as requested, `~fault` suffix included) in `region`:
    /// picks its fault — its own (header or suffix) or else the schedule's — and records it under
    /// `operation`. A fault that fails the request before any answer does so here (an error, or
    /// no answer at all). Returns the base model id and the fault left for the answer.
    async fn admit<'m>(
        &self,
        operation: &str,
        model_id: &'m str,
        region: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(&'m str, Option<Fault>), SimError> {
        let (model, suffix_fault) =
            split_model_id(model_id).map_err(|e| SimError::Validation(e.to_string()))?;
        let header_value = headers
            .get(FAULT_HEADER)
            .map(|value| value.to_str().unwrap_or_default());
        let header_fault = header_value
            .map(|value| {
                value
                    .parse::<FaultSpec>()
                    .map_err(|e| SimError::Validation(e.to_string()))
            })
            .transpose()?;
        let requested = header_fault.or(suffix_fault);
        let fault = match requested {
            Some(_) => self.fault_for(model_id, header_value, requested),
            None => self.schedule.fault_for(model, region),
        };
        self.stats
            .record_request(operation, model_id, region, fault.map(|f| f.to_string()));
        match fault {
            Some(Fault::Http(http_fault)) => Err(SimError::Injected(http_fault)),
            Some(Fault::ThrottleWait { wait_ms }) => Err(SimError::ThrottledFor(wait_ms)),
            // Dropping the connection ends this wait.
            Some(Fault::NoResponse) => std::future::pending().await,
            Some(Fault::HangUp { after_ms }) => {
                tokio::time::sleep(Duration::from_millis(u64::from(after_ms))).await;
                Err(SimError::HungUp)
            }
            _ => Ok((model, fault)),
        }
    }

    /// The answer `model` gives `prompt`, shaped by the faults that act on it: a refused prefill,
    /// a slow first token.
    fn answer(
        &self,
        model: &str,
        prompt: &Prompt,
        fault: Option<Fault>,
    ) -> Result<Answer, SimError> {
        prompt.check().map_err(SimError::Validation)?;
        if fault == Some(Fault::RejectPrefill) && prompt.ends_with_assistant() {
            return Err(SimError::Injected(HttpFault::PrefillRejected));
        }
        let mut answer = Answer::plan(&self.config, model, prompt);
        if let Some(Fault::Slow { first_token_ms }) = fault {
            answer.profile.first_token_ms = u64::from(first_token_ms);
        }
        Ok(answer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Converse,
    ConverseStream,
    Invoke,
    InvokeStream,
}

impl Operation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "converse" => Operation::Converse,
            "converse-stream" => Operation::ConverseStream,
            "invoke" => Operation::Invoke,
            "invoke-with-response-stream" => Operation::InvokeStream,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Operation::Converse => "converse",
            Operation::ConverseStream => "converse-stream",
            Operation::Invoke => "invoke",
            Operation::InvokeStream => "invoke-with-response-stream",
        }
    }
}

pub(crate) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/model/{model_id}/{operation}", post(model_operation))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/_sim/stats", get(stats))
        .route(
            "/_sim/faults",
            get(get_faults).put(put_faults).delete(delete_faults),
        )
        .with_state(state)
}

/// `POST /v1/chat/completions`: the OpenAI chat-completions API, with the same answers, faults
/// (header, `model~fault` suffix, or the schedule's rules that name no region) and pacing as the
/// Bedrock operations, and OpenAI's error bodies.
async fn openai_chat(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve_openai(&state, &headers, &body).await {
        Ok(response) => response,
        Err(error) => {
            state.stats.record_error();
            if let SimError::HungUp = error {
                return crate::error::hang_up();
            }
            let (status, body) = match error.injected() {
                Some(fault) => (fault.status(), openai_error_body(fault)),
                None => (
                    StatusCode::BAD_REQUEST,
                    json!({"error": {"message": error.to_string(), "type": "invalid_request_error", "param": null, "code": null}}),
                ),
            };
            let mut response = (status, Json(body)).into_response();
            error.add_wait_headers(response.headers_mut());
            response
        }
    }
}

async fn serve_openai(
    state: &SimState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, SimError> {
    let request: OpenAiRequest = serde_json::from_slice(body)
        .map_err(|e| SimError::Validation(format!("invalid request body: {e}")))?;
    let (model, fault) = state
        .admit("chat-completions", &request.model, None, headers)
        .await?;
    let answer = state.answer(
        model,
        &Prompt::try_from(&request).map_err(SimError::Validation)?,
        fault,
    )?;
    let request_id = format!("{:016x}", fastrand::u64(..));
    if request.stream {
        let body = spawn_stream(
            answer,
            fault,
            StreamFormat::OpenAi {
                include_usage: request.include_usage(),
            },
            request_id,
            state.stats.clone(),
        );
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        return Ok(response);
    }
    wait_for_generation(&answer, fault).await?;
    let mut completion = json!({
        "id": format!("chatcmpl-{request_id}"),
        "object": "chat.completion",
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": openai_message(&answer),
            "finish_reason": answer.stop.openai_finish_reason(),
        }],
    });
    if fault != Some(Fault::NoUsage) {
        completion["usage"] = openai_usage(&answer);
    }
    Ok(Json(completion).into_response())
}

/// The `message` of an OpenAI completion: the text, and the tool call with its arguments as a
/// JSON string.
fn openai_message(answer: &Answer) -> serde_json::Value {
    let mut message = json!({"role": "assistant", "content": answer.text()});
    if let Some(call) = &answer.tool_call {
        message["tool_calls"] = json!([{
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.input.to_string()},
        }]);
    }
    message
}

/// The body of `GET` and `PUT /_sim/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRules {
    pub rules: Vec<FaultRule>,
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<FaultRules> {
    Json(FaultRules {
        rules: state.schedule.rules(),
    })
}

/// Replaces the schedule; the rules' windows count from now.
async fn put_faults(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let rules = match serde_json::from_slice::<FaultRules>(&body) {
        Ok(rules) => rules,
        Err(err) => return admin_error(format!("invalid fault rules: {err}")),
    };
    match state.schedule.replace(rules.rules.clone()) {
        Ok(()) => Json(rules).into_response(),
        Err(message) => admin_error(message),
    }
}

async fn delete_faults(State(state): State<Arc<SimState>>) -> StatusCode {
    // Replacing with no rules cannot fail validation.
    let _ = state.schedule.replace(Vec::new());
    StatusCode::NO_CONTENT
}

fn admin_error(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "message": message }))).into_response()
}

async fn stats(State(state): State<Arc<SimState>>) -> impl IntoResponse {
    Json(state.stats.snapshot())
}

async fn model_operation(
    State(state): State<Arc<SimState>>,
    Path((model_id, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve(&state, &model_id, &operation, &headers, &body).await {
        Ok(response) => response,
        Err(error) => {
            state.stats.record_error();
            error.into_response()
        }
    }
}

async fn serve(
    state: &SimState,
    model_id: &str,
    operation: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, SimError> {
    let operation = Operation::parse(operation)
        .ok_or_else(|| SimError::UnknownOperation(operation.to_string()))?;
    let region = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(signed_region);
    let (model, fault) = state
        .admit(operation.name(), model_id, region, headers)
        .await?;
    let answer = state.answer(model, &parse_prompt(operation, body)?, fault)?;
    let request_id = format!("{:016x}", fastrand::u64(..));

    let response = match operation {
        Operation::Converse | Operation::Invoke => {
            one_shot(operation, answer, fault, &request_id).await?
        }
        Operation::ConverseStream => stream_response(
            spawn_stream(
                answer,
                fault,
                StreamFormat::Converse,
                request_id.clone(),
                state.stats.clone(),
            ),
            false,
        ),
        Operation::InvokeStream => stream_response(
            spawn_stream(
                answer,
                fault,
                StreamFormat::Invoke,
                request_id.clone(),
                state.stats.clone(),
            ),
            true,
        ),
    };
    Ok(with_request_id(response, &request_id))
}

fn parse_prompt(operation: Operation, body: &[u8]) -> Result<Prompt, SimError> {
    let invalid =
        |e: serde_json::Error| SimError::Validation(format!("Malformed input request: {e}"));
    match operation {
        Operation::Converse | Operation::ConverseStream => {
            let request: ConverseRequest = serde_json::from_slice(body).map_err(invalid)?;
            Ok(request.into())
        }
        Operation::Invoke | Operation::InvokeStream => {
            let request: AnthropicRequest = serde_json::from_slice(body).map_err(invalid)?;
            Prompt::try_from(request).map_err(SimError::Validation)
        }
    }
}

/// Converse and InvokeModel: wait as long as generating the answer would take, then send it.
async fn one_shot(
    operation: Operation,
    answer: Answer,
    fault: Option<Fault>,
    request_id: &str,
) -> Result<Response, SimError> {
    let generation = wait_for_generation(&answer, fault).await?;
    let latency_ms = generation.as_millis() as u64;
    let output_tokens = answer.output_tokens();
    let text = answer.text();
    let response = if operation == Operation::Converse {
        let mut content = vec![json!({ "text": text })];
        if let Some(call) = &answer.tool_call {
            content.push(json!({"toolUse": {
                "toolUseId": call.id,
                "name": call.name,
                "input": call.input,
            }}));
        }
        Json(json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": answer.stop.as_str(),
            "usage": {
                "inputTokens": answer.input_tokens,
                "outputTokens": output_tokens,
                "totalTokens": answer.input_tokens + output_tokens,
            },
            "metrics": {"latencyMs": latency_ms},
        }))
        .into_response()
    } else {
        let mut content = vec![json!({"type": "text", "text": text})];
        if let Some(call) = &answer.tool_call {
            content.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": call.input,
            }));
        }
        let mut response = Json(json!({
            "id": format!("msg_bdrk_{request_id}"),
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": content,
            "stop_reason": answer.stop.as_str(),
            "stop_sequence": answer.stop.stop_sequence(),
            "usage": {"input_tokens": answer.input_tokens, "output_tokens": output_tokens},
        }))
        .into_response();
        let headers = response.headers_mut();
        headers.insert(
            "x-amzn-bedrock-input-token-count",
            answer.input_tokens.into(),
        );
        headers.insert("x-amzn-bedrock-output-token-count", output_tokens.into());
        headers.insert("x-amzn-bedrock-invocation-latency", latency_ms.into());
        response
    };
    Ok(response)
}

fn stream_response(body: Body, invoke: bool) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    if invoke {
        headers.insert(
            "x-amzn-bedrock-content-type",
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// A one-shot call's wait: as long as generating `answer` takes, which it returns. A stall never
/// ends; an in-stream exception becomes its HTTP error, and a reset a hang-up, after the first
/// token's delay.
async fn wait_for_generation(answer: &Answer, fault: Option<Fault>) -> Result<Duration, SimError> {
    match fault {
        Some(Fault::Stall { .. }) => std::future::pending::<()>().await,
        Some(Fault::StreamException { exception, .. }) => {
            tokio::time::sleep(answer.profile.first_token_delay()).await;
            return Err(SimError::Injected(exception.as_http()));
        }
        Some(Fault::Reset { .. }) => {
            tokio::time::sleep(answer.profile.first_token_delay()).await;
            return Err(SimError::HungUp);
        }
        _ => {}
    }
    let generation = generation_time(answer);
    // A zero sleep would still wait for the timer's next 1 ms tick.
    if !generation.is_zero() {
        tokio::time::sleep(generation).await;
    }
    Ok(generation)
}

/// How long generating `answer` takes: the first token's delay, then one interval per token.
fn generation_time(answer: &Answer) -> Duration {
    answer.profile.first_token_delay()
        + answer.profile.token_interval() * answer.output_tokens().saturating_sub(1)
}
