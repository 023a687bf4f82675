//! `/v1/jobs`: async document jobs. `POST /v1/jobs` (JSON: the document inline as `text` with
//! its `format`, or a `document_ref` to an object in the store) answers 202 with the queued job;
//! `GET /v1/jobs/{id}` its status, progress, times, attempts and error; `GET
//! /v1/jobs/{id}/result` the result of a completed job (409 before); `GET /v1/jobs/{id}/events`
//! its status as Server-Sent Events (`status` events whenever it changes, until it ends);
//! `GET /v1/jobs?status=&limit=&before=` the caller's jobs, newest first, paged; `DELETE
//! /v1/jobs/{id}` cancels it. A key sees and cancels only its own jobs (404 for any other).
//! The work itself is the [`jobs`](crate::jobs) module's; its model calls come back here
//! ([`JobCalls`]) to be routed and admitted like any request of the job's key.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fm_protocol::{
    ApiErrorBody, ChatRequest, DocumentFormat, JobInfo, JobList, JobRequest, JobResult, JobStatus,
    encode_sse_frame, validate_job_request,
};
use utoipa::IntoParams;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use super::edge::Edge;
use super::extract::{RequestId, parse_json, query_param};
use super::sse::sse_response;
use super::{AppState, WeakAppState, admit};
use crate::auth::Caller;
use crate::config::routing::JOBS_PATH;
use crate::error::{RelayError, RequestError};
use crate::jobs::{CallFuture, Document, Jobs, ModelCalls};

/// The job routes, when jobs are on (`jobs.enabled`); without them `/v1/jobs` is the API's 404.
pub fn routes(state: &AppState) -> Router<AppState> {
    if state.jobs().is_none() {
        return Router::new();
    }
    Router::new()
        .route(
            "/v1/jobs",
            get(list)
                .post(submit)
                .layer(axum::extract::DefaultBodyLimit::max(submission_limit(
                    state,
                ))),
        )
        .route("/v1/jobs/{id}", get(status).delete(cancel))
        .route("/v1/jobs/{id}/result", get(result))
        .route("/v1/jobs/{id}/events", get(events))
}

/// The job service (the routes exist only when there is one).
fn jobs(state: &AppState) -> Result<&Jobs, RelayError> {
    state
        .jobs()
        .ok_or_else(|| RelayError::Internal("a job route without the job service".into()))
}

/// A handler's answer: the value as JSON, or the error with the request's id.
fn answer<T>(edge: &Edge, result: Result<T, RelayError>) -> Result<Json<T>, RequestError> {
    result
        .map(Json)
        .map_err(|error| error.with_request_id(&edge.request_id))
}

/// The body limit of `POST /v1/jobs`: the largest document and room for the rest of the form
/// (or for a JSON string's escapes).
fn submission_limit(state: &AppState) -> usize {
    usize::try_from(state.config().jobs.max_document_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(fm_protocol::limits::MAX_BODY_BYTES)
}

/// Submits a document job
///
/// The document inline (`text`, with its `format`) or by reference (`document_ref`) in JSON — or
/// uploaded as `multipart/form-data`: the document as the `file` part and the job as a `request`
/// part of JSON or one part per field. Answers 202 with the queued job; its status is at
/// `GET /v1/jobs/{id}`.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    request_body = JobRequest,
    responses(
        (status = 202, description = "Queued.", body = JobInfo, links(
            ("status" = (operation_id = "get_job", parameters(("id" = "$response.body#/job_id")), description = "The job's status.")),
            ("result" = (operation_id = "get_job_result", parameters(("id" = "$response.body#/job_id")), description = "The job's result, once it completed.")),
            ("events" = (operation_id = "job_events", parameters(("id" = "$response.body#/job_id")), description = "The job's status as it changes.")),
            ("cancel" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/job_id")), description = "Cancels the job.")),
        )),
        (status = 400, description = "The submission breaks a rule, or its document cannot be read (`invalid_request`, `malformed_json`, `unknown_model`, `unreadable_document`; `field` names the field).", body = ApiErrorBody),
        (status = 429, description = "A rate limit, or the key has as many unfinished jobs as it may have (`rate_limited`, `quota_exceeded`).", body = ApiErrorBody),
    ),
)]
async fn submit(
    State(state): State<AppState>,
    edge: Edge,
    request: axum::extract::Request,
) -> Result<(StatusCode, Json<JobInfo>), RequestError> {
    let result = async {
        let jobs = jobs(&state)?;
        let multipart = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            });
        let (job, document) = match multipart {
            true => read_upload(request, submission_limit(&state)).await?,
            false => {
                let limit = submission_limit(&state);
                let body = axum::body::to_bytes(request.into_body(), limit)
                    .await
                    .map_err(|_| RelayError::PayloadTooLarge { limit })?;
                let job: JobRequest = parse_json(&body)?;
                validate_job_request(&job, false).map_err(RelayError::Invalid)?;
                let format = job.format.unwrap_or_default();
                let document = match (&job.text, &job.document_ref) {
                    (Some(text), _) => Document::Upload {
                        bytes: bytes::Bytes::from(text.clone().into_bytes()),
                        format,
                        field: "text",
                    },
                    (None, location) => Document::Reference {
                        location: location.clone().unwrap_or_default(),
                        format,
                    },
                };
                (job, document)
            }
        };
        check_model(&state, &edge.caller, &job)?;
        // The key's own job quota, else the relay's.
        let max_unfinished = edge
            .caller
            .key()
            .limits
            .max_unfinished_jobs
            .unwrap_or(jobs.config().max_queued_per_key);
        jobs.submit(edge.caller.name(), max_unfinished, job, document)
            .await
    }
    .await;
    answer(&edge, result).map(|job| (StatusCode::ACCEPTED, job))
}

/// A `multipart/form-data` submission: the document as the `file` part (its format from
/// `format`, else the file's name or type), the job as a `request` part of JSON or as one part
/// per field (`analysis_type`, `question`, `priority`, `model`, `routing_hint`, `callback_url`,
/// `format`, `schema` as JSON, and `fields` / `labels` once per value).
async fn read_upload(
    request: axum::extract::Request,
    limit: usize,
) -> Result<(JobRequest, Document), RelayError> {
    use axum::extract::FromRequest;
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(RelayError::UploadRejected)?;
    let mut job = JobRequest::default();
    let mut file: Option<(bytes::Bytes, Option<String>, Option<String>)> = None;
    let invalid = |field: &str, message: String| {
        RelayError::Invalid(fm_protocol::ValidationError::new(field, message))
    };
    while let Some(part) = form.next_field().await.map_err(upload_error(limit))? {
        let name = part.name().unwrap_or_default().to_string();
        if name == "file" {
            let file_name = part.file_name().map(str::to_string);
            let media_type = part.content_type().map(str::to_string);
            let bytes = part.bytes().await.map_err(upload_error(limit))?;
            file = Some((bytes, file_name, media_type));
            continue;
        }
        let text = part.text().await.map_err(upload_error(limit))?;
        // An enum value, read as the JSON API reads it.
        let word = || serde_json::Value::String(text.trim().to_string());
        match name.as_str() {
            "request" => job = parse_json(text.as_bytes())?,
            "analysis_type" => {
                job.analysis_type = Some(serde_json::from_value(word()).map_err(|_| {
                    invalid(
                        &name,
                        format!("`{text}` is not one of summarize, extract, classify, qa"),
                    )
                })?)
            }
            "priority" => {
                job.priority = serde_json::from_value(word()).map_err(|_| {
                    invalid(&name, format!("`{text}` is not one of high, normal, low"))
                })?
            }
            "format" => {
                job.format = Some(serde_json::from_value(word()).map_err(|_| {
                    invalid(
                        &name,
                        format!("`{text}` is not one of text, markdown, html, pdf"),
                    )
                })?)
            }
            "question" => job.question = Some(text),
            "model" => job.model = Some(text),
            "routing_hint" => job.routing_hint = Some(text),
            "document_name" => job.document_name = Some(text),
            "callback_url" => job.callback_url = Some(text),
            "fields" => job.fields.push(text),
            "labels" => job.labels.push(text),
            "schema" => {
                job.schema = Some(
                    serde_json::from_str(&text)
                        .map_err(|err| invalid("schema", format!("is not JSON: {err}")))?,
                )
            }
            other => {
                return Err(invalid(
                    other,
                    "is not a part of a job upload: file, request, analysis_type, question, priority, model, routing_hint, callback_url, format, schema, fields, labels, document_name".into(),
                ));
            }
        }
    }
    let Some((bytes, file_name, media_type)) = file else {
        return Err(invalid(
            "file",
            "a multipart submission needs the document as its `file` part".into(),
        ));
    };
    // The file's name names the document unless the submission named it.
    if job.document_name.is_none() {
        job.document_name = file_name
            .as_deref()
            .map(|name| {
                name.chars()
                    .filter(|c| !c.is_control())
                    .take(fm_protocol::jobs::job_limits::MAX_NAME_CHARS)
                    .collect()
            })
            .filter(|name: &String| !name.trim().is_empty());
    }
    validate_job_request(&job, true).map_err(RelayError::Invalid)?;
    let format = job
        .format
        .or_else(|| {
            DocumentFormat::of_file(
                file_name.as_deref().unwrap_or_default(),
                media_type.as_deref().unwrap_or_default(),
            )
        })
        .ok_or_else(|| {
            invalid(
                "file",
                format!(
                    "`{}` ({}) is not a document the relay reads: text, Markdown, HTML or PDF (or say which with `format`)",
                    file_name.as_deref().unwrap_or("the file"),
                    media_type.as_deref().unwrap_or("no type")
                ),
            )
        })?;
    job.format = Some(format);
    Ok((
        job,
        Document::Upload {
            bytes,
            format,
            field: "file",
        },
    ))
}

/// A broken or oversized upload part.
fn upload_error(limit: usize) -> impl Fn(axum::extract::multipart::MultipartError) -> RelayError {
    move |err| match err.status() {
        StatusCode::PAYLOAD_TOO_LARGE => RelayError::PayloadTooLarge { limit },
        _ => RelayError::Upload(err),
    }
}

/// A named model must be one the relay serves and the key may use; a hint must be one the
/// rules name — refused now rather than on every attempt.
fn check_model(state: &AppState, caller: &Caller, request: &JobRequest) -> Result<(), RelayError> {
    let probe = ChatRequest {
        model: request.model.clone(),
        routing_hint: request.routing_hint.clone(),
        ..ChatRequest::from_prompt("job")
    };
    let table = state.routing().table();
    fm_protocol::validate_chat_request(&probe, |model| table.catalog().contains(model))
        .map_err(RelayError::Invalid)?;
    table
        .decide(&crate::routing::RouteInput {
            request: &probe,
            path: JOBS_PATH,
            hint_header: None,
            key: caller.key(),
        })
        .map(|_| ())
}

/// A job's status
///
/// Its status, progress, times, attempts and error; a key sees only its own jobs.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = JobInfo),
        (status = 404, description = "No such job of this key (`not_found`).", body = ApiErrorBody),
    ),
)]
async fn status(
    State(state): State<AppState>,
    edge: Edge,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, RequestError> {
    let result = async { jobs(&state)?.get(edge.caller.name(), &id).await }.await;
    answer(&edge, result)
}

/// A completed job's result
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/result",
    operation_id = "get_job_result",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The result.", body = JobResult),
        (status = 404, description = "No such job of this key (`not_found`).", body = ApiErrorBody),
        (status = 409, description = "The job has not completed (`job_not_finished`).", body = ApiErrorBody),
    ),
)]
async fn result(
    State(state): State<AppState>,
    edge: Edge,
    Path(id): Path<String>,
) -> Result<Json<JobResult>, RequestError> {
    let result = async { jobs(&state)?.result(edge.caller.name(), &id).await }.await;
    answer(&edge, result)
}

/// Cancels a job
///
/// A queued or running job ends `CANCELLED`; a job that has ended stays as it is. Answers with
/// the job.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job, as the cancel left it.", body = JobInfo),
        (status = 404, description = "No such job of this key (`not_found`).", body = ApiErrorBody),
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    edge: Edge,
    Path(id): Path<String>,
) -> Result<Json<JobInfo>, RequestError> {
    let result = async { jobs(&state)?.cancel(edge.caller.name(), &id).await }.await;
    answer(&edge, result)
}

/// The jobs a page lists when `limit` is not given.
const DEFAULT_PAGE: u32 = 20;

/// The query of `GET /v1/jobs` (read by [`list`]; this type describes it).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this status.
    #[param(inline)]
    pub status: Option<JobStatus>,
    #[param(schema_with = page_limit_schema)]
    pub limit: Option<u32>,
    /// The `next_before` of the page before: where this page starts.
    pub before: Option<String>,
}

/// `limit`: 1 to [`crate::jobs::MAX_PAGE`].
fn page_limit_schema() -> RefOr<Schema> {
    super::openapi::whole_number_from_one(
        crate::jobs::MAX_PAGE.into(),
        DEFAULT_PAGE.into(),
        "Jobs on one page",
    )
}

/// The caller's jobs, newest first, a page at a time
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs; `next_before` leads to the next.", body = JobList),
        (status = 400, description = "A query parameter out of range (`invalid_request`, naming it).", body = ApiErrorBody),
    ),
)]
async fn list(
    State(state): State<AppState>,
    edge: Edge,
    RawQuery(query): RawQuery,
) -> Result<Json<JobList>, RequestError> {
    let result = async {
        let jobs = jobs(&state)?;
        let query = query.as_deref();
        let status = query_param(query, "status")
            .map(|value| {
                JobStatus::parse(value).ok_or_else(|| RelayError::InvalidQuery {
                    field: "status".into(),
                    message: format!(
                        "`{value}` is not a job status: QUEUED, RUNNING, COMPLETED, FAILED, DEAD_LETTER or CANCELLED"
                    ),
                })
            })
            .transpose()?;
        let limit = query_param(query, "limit")
            .map(|value| {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=crate::jobs::MAX_PAGE).contains(n))
                    .ok_or_else(|| RelayError::InvalidQuery {
                        field: "limit".into(),
                        message: format!("must be 1 to {}", crate::jobs::MAX_PAGE),
                    })
            })
            .transpose()?
            .unwrap_or(DEFAULT_PAGE);
        jobs.list(edge.caller.name(), status, query_param(query, "before"), limit)
            .await
    }
    .await;
    answer(&edge, result)
}

/// How often the events stream looks at the job.
const EVENTS_POLL: Duration = Duration::from_millis(200);

/// `status` events: the job now, then whenever it changes, until it ends (or
/// `jobs.events_max_secs` pass; then the last status ends the stream and the client may open
/// another). A keep-alive comment every `server.sse_keep_alive_secs` while nothing changes.
/// A job's status as Server-Sent Events
///
/// A `status` event (data: the job) now and whenever it changes, until it ends (or
/// `jobs.events_max_secs` pass; then the last status ends the stream and the client may open
/// another); a keep-alive comment while nothing changes.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    operation_id = "job_events",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "`status` events; each event's data is the job.", body = JobInfo, content_type = "text/event-stream"),
        (status = 404, description = "No such job of this key (`not_found`).", body = ApiErrorBody),
    ),
)]
async fn events(
    State(state): State<AppState>,
    edge: Edge,
    Path(id): Path<String>,
) -> Result<Response, RequestError> {
    let jobs = jobs(&state)
        .map_err(|e| e.with_request_id(&edge.request_id))?
        .clone();
    let key = edge.caller.name().to_string();
    let first = jobs
        .get(&key, &id)
        .await
        .map_err(|e| e.with_request_id(&edge.request_id))?;
    let until = tokio::time::Instant::now() + Duration::from_secs(jobs.config().events_max_secs);
    let keep_alive = Duration::from_secs(state.config().server.sse_keep_alive_secs.max(1));
    struct Watch {
        jobs: Jobs,
        key: String,
        id: String,
        last: Option<JobInfo>,
        next: Option<JobInfo>,
        quiet_since: tokio::time::Instant,
        done: bool,
    }
    let watch = Watch {
        jobs,
        key,
        id,
        last: None,
        next: Some(first),
        quiet_since: tokio::time::Instant::now(),
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, move |mut watch| async move {
        loop {
            if watch.done {
                return None;
            }
            if let Some(job) = watch.next.take() {
                let changed = watch.last.as_ref() != Some(&job);
                if changed {
                    watch.done = job.status.is_final() || tokio::time::Instant::now() >= until;
                    let json = serde_json::to_string(&job).unwrap_or_default();
                    watch.last = Some(job);
                    watch.quiet_since = tokio::time::Instant::now();
                    let frame = encode_sse_frame("status", &json);
                    return Some((Ok::<_, std::io::Error>(frame.into_bytes()), watch));
                }
            }
            if tokio::time::Instant::now() >= until {
                // Out of time: the job as it is now ends the stream.
                let job = watch.jobs.get(&watch.key, &watch.id).await.ok()?;
                let json = serde_json::to_string(&job).unwrap_or_default();
                watch.done = true;
                return Some((Ok(encode_sse_frame("status", &json).into_bytes()), watch));
            }
            if watch.quiet_since.elapsed() >= keep_alive {
                watch.quiet_since = tokio::time::Instant::now();
                return Some((Ok(b": keep-alive\n\n".to_vec()), watch));
            }
            tokio::time::sleep(EVENTS_POLL).await;
            match watch.jobs.get(&watch.key, &watch.id).await {
                Ok(job) => watch.next = Some(job),
                // Gone (it cannot be, but the stream must end) or the store failed: end.
                Err(err) => {
                    tracing::warn!(error = %err, job_id = %watch.id, "job events: cannot read the job");
                    return None;
                }
            }
        }
    });
    Ok(sse_response(Body::from_stream(stream)).into_response())
}

/// The API's side of [`ModelCalls`]: a job's model call admitted and run like a request of the
/// job's key to `/v1/jobs` (routed by the rules that name that path, the key's models and
/// limits, resilience, cache). A key removed since the job was submitted fails the call.
#[derive(Debug)]
pub struct JobCalls(pub WeakAppState);

impl ModelCalls for JobCalls {
    fn complete(&self, key: &str, request: ChatRequest) -> CallFuture {
        let state = self.0.upgrade();
        let key = key.to_string();
        Box::pin(async move {
            let state = state.ok_or(RelayError::ShuttingDown)?;
            let caller = state
                .keys()
                .by_name(&key)
                .ok_or_else(|| RelayError::Unauthorized(crate::error::AuthFailure::Invalid))?;
            let request_id = RequestId::generate().0;
            let edge = Edge::internal(request_id, caller, JOBS_PATH);
            let (ctx, decision) = admit(&state, &edge, &request, false).await?;
            state.executor().complete(ctx, decision, request).await
        })
    }

    fn piece_chars(&self) -> usize {
        let Some(state) = self.0.upgrade() else {
            return usize::MAX;
        };
        let table = state.routing().table();
        let smallest = table
            .catalog()
            .models()
            .iter()
            .map(|model| model.config.context_window as usize)
            .min()
            .unwrap_or(0);
        // Half the window for the document: the prompt and the answer need the rest.
        smallest * fm_protocol::chat::CHARS_PER_TOKEN / 2
    }
}

/// Starts the workers of `state`'s job service, if it has one.
pub fn spawn_workers(state: &AppState) {
    if let Some(jobs) = state.jobs() {
        jobs.spawn_workers(Arc::new(JobCalls(state.downgrade())), state.shutdown());
    }
}
