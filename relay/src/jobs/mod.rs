//! Async document jobs: a submission is stored and queued durably and answered at once (202 and
//! a job id); a pool of workers takes jobs from the queue, reads each document as text
//! ([`documents`]), splits it to fit the model and runs the analysis ([`analysis`]) — every model
//! call through the same routing, limits, resilience and cache as a chat request, by way of
//! [`ModelCalls`], which the API implements — and stores the result.
//!
//! Where jobs are kept is a [`backend::JobBackend`]: the embedded one (the default, one
//! machine) — the job table and queue in SQLite ([`store`]) and the documents and results in a
//! local folder — or the AWS one ([`aws`]) — SQS queues, a DynamoDB table, SNS notices and an S3
//! bucket — which relays on many machines share ([`objects`] is either store of documents).
//! Priorities order the queue without starving low ones; a worker holds a job for
//! `jobs.visibility_timeout_secs` and renews the hold while it works, so the job of a killed
//! process is taken over when the hold runs out; a failed attempt is retried with exponential
//! backoff and jitter, and dead-lettered after `jobs.max_attempts`; results are written under
//! the job's id (a repeated write replaces the same object) before the job is marked completed,
//! and only by the worker that holds it — a job ends exactly once. On AWS Lambda the queue's
//! messages arrive in the function's events instead of a poll: [`Jobs::handle_delivery`] runs
//! each through the same worker code.

pub mod analysis;
pub mod aws;
pub mod backend;
pub mod callbacks;
pub mod documents;
pub mod objects;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fm_protocol::{
    ChatRequest, ChatResponse, DocumentFormat, JobError, JobInfo, JobList, JobProgress, JobRequest,
    JobResult, JobStatus, Message, Usage,
};
use object_store::path::Path as ObjectPath;
use tokio::sync::Notify;

use crate::config::{JobsBackend, JobsConfig};
use crate::error::{DocumentError, RelayError};
use crate::shutdown::{Phase, Shutdown};
use analysis::Analysis;
use aws::DeliveredFrom;
use backend::{AfterFailure, Claim, Delivery, JobBackend, JobRecord, NewJob, Receipt, now_ms};
use objects::Objects;

/// A boxed future of a model call.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<ChatResponse, RelayError>> + Send>>;

/// How a job makes its model calls: as a request of the job's API key to the jobs path gets
/// them — routed, admitted by the key's limits, run through resilience and the cache.
pub trait ModelCalls: Send + Sync + std::fmt::Debug {
    /// One model call for a job of the key named `key`.
    fn complete(&self, key: &str, request: ChatRequest) -> CallFuture;
    /// The most characters of a document one call should read: what fits the smallest context
    /// window among the models beside the prompt and the answer.
    fn piece_chars(&self) -> usize;
}

/// The document of a new job, and how it is written.
#[derive(Debug)]
pub enum Document {
    /// Bytes sent with the submission, in the request's field `field` (`text`, or `file` of
    /// an upload): a refused document names it.
    Upload {
        bytes: bytes::Bytes,
        format: DocumentFormat,
        field: &'static str,
    },
    /// An object already in the store.
    Reference {
        location: String,
        format: DocumentFormat,
    },
}

/// The job service: submission, status, results, cancel, and the workers.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<JobsInner>,
}

#[derive(Debug)]
struct JobsInner {
    config: JobsConfig,
    backend: JobBackend,
    objects: Objects,
    /// Wakes idle workers when a job is submitted.
    submitted: Notify,
    /// The jobs running in this process, each with the signal that stops it (a cancel).
    running: Mutex<HashMap<String, Arc<Notify>>>,
}

/// The folder of documents under the object store.
const DOCUMENTS: &str = "documents";
/// The folder of results.
const RESULTS: &str = "results";
/// The most jobs one page of `GET /v1/jobs` lists.
pub const MAX_PAGE: u32 = 100;

impl Jobs {
    /// Opens the configured backend: the job table and the object folder under `dir`
    /// (embedded), or the queues, table, topic and bucket of `jobs.aws`.
    pub async fn open(config: &JobsConfig, dir: &std::path::Path) -> Result<Jobs, RelayError> {
        let (backend, objects) = match config.backend {
            JobsBackend::Embedded => (
                JobBackend::Embedded(store::JobStore::open(dir, config.priority_step_secs)?),
                Objects::local(&dir.join("objects"))?,
            ),
            JobsBackend::Aws => {
                let (store, objects) = aws::AwsJobStore::connect(&config.aws).await?;
                (JobBackend::Aws(store), objects)
            }
        };
        Ok(Jobs {
            inner: Arc::new(JobsInner {
                config: config.clone(),
                backend,
                objects,
                submitted: Notify::new(),
                running: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &JobsConfig {
        &self.inner.config
    }

    /// Stores the document and queues the job (validated already) for `key`, which may have at
    /// most `max_unfinished` jobs queued or running: the job as queued. A document that is too
    /// large, empty or unreadable is refused here, before it is queued.
    pub async fn submit(
        &self,
        key: &str,
        max_unfinished: u32,
        request: JobRequest,
        document: Document,
    ) -> Result<JobInfo, RelayError> {
        let inner = &self.inner;
        if let Some(url) = &request.callback_url {
            self.check_callback(url).await?;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let refused = |field: &'static str| {
            move |err| match err {
                RelayError::Document(error) => RelayError::DocumentRefused { field, error },
                err => err,
            }
        };
        let (location, format) = match document {
            Document::Upload {
                bytes,
                format,
                field,
            } => {
                let size = bytes.len() as u64;
                if size > inner.config.max_document_bytes {
                    return Err(RelayError::DocumentRefused {
                        field,
                        error: DocumentError::TooLarge {
                            size,
                            max: inner.config.max_document_bytes,
                        },
                    });
                }
                // Read now: an unreadable document is the caller's to know at once.
                documents::extract_text(format, &bytes).map_err(refused(field))?;
                let location = format!("{DOCUMENTS}/{id}");
                inner.objects.put(&location, bytes).await?;
                (location, format)
            }
            Document::Reference { location, format } => {
                let path = reference_path(&location)?.to_string();
                let refused = |error| RelayError::DocumentRefused {
                    field: "document_ref",
                    error,
                };
                let size =
                    inner.objects.size(&path).await?.ok_or_else(|| {
                        refused(DocumentError::MissingReference(location.clone()))
                    })?;
                if size > inner.config.max_document_bytes {
                    return Err(refused(DocumentError::TooLarge {
                        size,
                        max: inner.config.max_document_bytes,
                    }));
                }
                (path, format)
            }
        };
        let analysis = request
            .analysis_type
            .unwrap_or(fm_protocol::AnalysisType::Summarize);
        // The stored request carries no document text: that is in the object store.
        let stored = JobRequest {
            text: None,
            format: Some(format),
            ..request
        };
        let new = NewJob {
            id: id.clone(),
            key: key.to_string(),
            analysis,
            priority: stored.priority,
            format,
            request: stored,
            document: location.clone(),
        };
        let Some(job) = inner.backend.insert(new, max_unfinished).await? else {
            if location.starts_with(&format!("{DOCUMENTS}/{id}")) {
                let _ = inner.objects.delete(&location).await;
            }
            return Err(RelayError::TooManyJobs {
                key: key.to_string(),
                max: max_unfinished,
            });
        };
        inner.submitted.notify_one();
        Ok(info(&job))
    }

    /// A callback URL must be one deliveries may go to, and the relay must have a secret to sign
    /// them with.
    async fn check_callback(&self, url: &str) -> Result<(), RelayError> {
        let invalid = |message: String| {
            RelayError::Invalid(fm_protocol::ValidationError::new("callback_url", message))
        };
        if self.inner.config.callback_secret().is_none() {
            return Err(invalid(format!(
                "this relay has no secret to sign callbacks with: set `jobs.callback_secret` or {}",
                crate::config::jobs::CALLBACK_SECRET_ENV
            )));
        }
        let url =
            reqwest::Url::parse(url).map_err(|err| invalid(format!("is not a URL: {err}")))?;
        callbacks::check_target(&url, &self.inner.config)
            .await
            .map(|_| ())
            .map_err(|refusal| invalid(refusal.to_string()))
    }

    /// `key`'s job `id`.
    pub async fn get(&self, key: &str, id: &str) -> Result<JobInfo, RelayError> {
        Ok(info(&self.record(key, id).await?))
    }

    async fn record(&self, key: &str, id: &str) -> Result<JobRecord, RelayError> {
        self.inner
            .backend
            .get(key, id)
            .await?
            .ok_or_else(|| RelayError::JobNotFound { id: id.to_string() })
    }

    /// `key`'s completed job's result.
    pub async fn result(&self, key: &str, id: &str) -> Result<JobResult, RelayError> {
        let job = self.record(key, id).await?;
        if job.status != JobStatus::Completed {
            return Err(RelayError::JobNotFinished {
                id: id.to_string(),
                status: job.status.as_str(),
            });
        }
        let location = result_location(id);
        let bytes = self.inner.objects.get(&location).await?.ok_or_else(|| {
            RelayError::Internal(format!("job {id} is completed but its result is missing"))
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|err| RelayError::Internal(format!("the stored result of job {id}: {err}")))
    }

    /// `key`'s jobs, newest first, `limit` (at most [`MAX_PAGE`]) a page, after the page that
    /// ended at `before` (as its `next_before` gave it), with `status` when given.
    pub async fn list(
        &self,
        key: &str,
        status: Option<JobStatus>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<JobList, RelayError> {
        let page = self
            .inner
            .backend
            .list(key, status, before, limit.clamp(1, MAX_PAGE))
            .await?;
        Ok(JobList {
            jobs: page.jobs.iter().map(info).collect(),
            next_before: page.next_before,
        })
    }

    /// Cancels `key`'s job `id`: a queued job never runs; a running one stops its model call
    /// (here at once, in another process at its next heartbeat). An ended job stays as it is.
    pub async fn cancel(&self, key: &str, id: &str) -> Result<JobInfo, RelayError> {
        let job = self
            .inner
            .backend
            .cancel(key, id)
            .await?
            .ok_or_else(|| RelayError::JobNotFound { id: id.to_string() })?;
        if job.status == JobStatus::Cancelled
            && let Some(stop) = self.running_signal(id)
        {
            stop.notify_one();
        }
        Ok(info(&job))
    }

    fn running_signal(&self, id: &str) -> Option<Arc<Notify>> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Starts `jobs.workers` workers that run jobs until the relay shuts down, and — when a
    /// callback secret is set — the delivery of callbacks.
    pub fn spawn_workers(&self, calls: Arc<dyn ModelCalls>, shutdown: &Shutdown) {
        if let Some(secret) = self.inner.config.callback_secret() {
            tokio::spawn(callbacks::run(self.clone(), secret, shutdown.clone()));
        }
        for _ in 0..self.inner.config.workers {
            let worker = Worker {
                jobs: self.clone(),
                calls: calls.clone(),
                shutdown: shutdown.clone(),
            };
            tokio::spawn(worker.run());
        }
    }
}

/// A message SQS delivered to a Lambda function (the AWS backend): the ARN of the queue it came
/// from, its body and its receipt handle, as the SQS event's record carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDelivery {
    pub queue_arn: String,
    pub body: String,
    pub receipt_handle: String,
}

/// What handling a delivered message leaves of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterDelivery {
    /// Done with: its job ended (or it names none), its callback was delivered or given up. The
    /// message may be deleted.
    Done,
    /// Due again: its job is queued for another attempt (or not due yet, or held by another
    /// worker), its callback waits for another try. The message stays in its queue, hidden until
    /// then.
    Again,
}

impl Jobs {
    /// Handles one message SQS delivered to a Lambda function — the Lambda runtime received it,
    /// no worker of this process polls — as a worker that received it would. A job's message
    /// runs one attempt of its job through the pollers' own code: the job held and its message
    /// hidden for `jobs.visibility_timeout_secs`, renewed every `jobs.heartbeat_secs`, until the
    /// attempt ends or `stop` reaches [`Phase::Stopped`] (the invocation's time runs out: the job
    /// is given back at once). A message of the callbacks queue delivers its callback. Says
    /// whether the message is done with.
    pub async fn handle_delivery(
        &self,
        calls: Arc<dyn ModelCalls>,
        delivery: &QueueDelivery,
        stop: &Shutdown,
    ) -> Result<AfterDelivery, RelayError> {
        let unknown = || RelayError::UnknownQueue {
            queue_arn: delivery.queue_arn.clone(),
        };
        let JobBackend::Aws(store) = &self.inner.backend else {
            return Err(unknown());
        };
        let receipt = |queue_url: String| Receipt {
            queue_url,
            handle: delivery.receipt_handle.clone(),
        };
        match store
            .queue_of_arn(&delivery.queue_arn)
            .ok_or_else(unknown)?
        {
            DeliveredFrom::Callbacks(queue_url) => {
                let Some(secret) = self.inner.config.callback_secret() else {
                    tracing::warn!(
                        "a callback is due but no callback secret is set (jobs.callback_secret, FM_RELAY_CALLBACK_SECRET): it waits"
                    );
                    return Ok(AfterDelivery::Again);
                };
                let Some(callback) = store
                    .callback_of(&delivery.body, receipt(queue_url))
                    .await?
                else {
                    return Ok(AfterDelivery::Done);
                };
                Ok(match callbacks::settle(self, &callback, &secret).await? {
                    Delivery::RetryAt(_) => AfterDelivery::Again,
                    Delivery::Delivered | Delivery::Failed => AfterDelivery::Done,
                })
            }
            DeliveredFrom::Jobs(queue_url) => {
                let config = &self.inner.config;
                let visibility_ms = config.visibility_timeout_secs * 1000;
                let lease = uuid::Uuid::new_v4().simple().to_string();
                let taken = store
                    .take(
                        &delivery.body,
                        receipt(queue_url),
                        &lease,
                        visibility_ms,
                        config.max_attempts,
                    )
                    .await?;
                let claim = match taken {
                    aws::Taken::Claim(claim) => *claim,
                    aws::Taken::Deleted => return Ok(AfterDelivery::Done),
                    aws::Taken::Hidden => return Ok(AfterDelivery::Again),
                };
                // Lambda received the message with the queue's own visibility timeout; the job's
                // hold is the one to keep.
                self.inner.backend.heartbeat(&claim, visibility_ms).await?;
                let (key, id) = (claim.job.key.clone(), claim.job.id.clone());
                let worker = Worker {
                    jobs: self.clone(),
                    calls,
                    shutdown: stop.clone(),
                };
                worker.run_job(claim).await;
                Ok(match self.inner.backend.get(&key, &id).await? {
                    Some(job) if !job.status.is_final() => AfterDelivery::Again,
                    _ => AfterDelivery::Done,
                })
            }
        }
    }
}

/// A store key given by a caller, checked: under `documents/`, no `..`.
fn reference_path(location: &str) -> Result<ObjectPath, RelayError> {
    let invalid = || {
        RelayError::Invalid(fm_protocol::ValidationError::new(
            "document_ref",
            format!("`{location}` is not a document's key: documents/NAME"),
        ))
    };
    let path = ObjectPath::parse(location).map_err(|_| invalid())?;
    let mut parts = path.parts();
    match (parts.next(), parts.next()) {
        (Some(first), Some(_)) if first.as_ref() == DOCUMENTS => Ok(path),
        _ => Err(invalid()),
    }
}

fn result_location(id: &str) -> String {
    format!("{RESULTS}/{id}.json")
}

/// The refusal of a page cursor the backend did not make.
fn bad_cursor(cursor: &str) -> RelayError {
    RelayError::InvalidQuery {
        field: "before".into(),
        message: format!(
            "`{cursor}` is not a page cursor (pass the `next_before` of the last page)"
        ),
    }
}

/// A job as the API shows it.
pub(crate) fn info(job: &JobRecord) -> JobInfo {
    let status_url = format!("/v1/jobs/{}", job.id);
    JobInfo {
        job_id: job.id.clone(),
        document_name: job.request.document_name.clone(),
        status: job.status,
        analysis_type: job.analysis,
        priority: job.priority,
        format: job.format,
        result_url: (job.status == JobStatus::Completed).then(|| format!("{status_url}/result")),
        status_url,
        created_at: job.created_ms,
        started_at: job.started_ms,
        finished_at: job.finished_ms,
        attempts: job.attempts,
        progress: job.progress,
        error: job.error.clone(),
        callback: job
            .callback
            .clone()
            .map(|(state, attempts)| fm_protocol::CallbackStatus { state, attempts }),
    }
}

/// One worker of the pool.
#[derive(Debug)]
struct Worker {
    jobs: Jobs,
    calls: Arc<dyn ModelCalls>,
    shutdown: Shutdown,
}

impl Worker {
    async fn run(self) {
        let inner = self.jobs.inner.clone();
        let poll = Duration::from_millis(inner.config.poll_ms);
        let visibility_ms = inner.config.visibility_timeout_secs * 1000;
        while self.shutdown.phase() == Phase::Running {
            let lease = uuid::Uuid::new_v4().simple().to_string();
            match inner
                .backend
                .claim(&lease, visibility_ms, inner.config.max_attempts)
                .await
            {
                Ok(Some(claim)) => self.run_job(claim).await,
                Ok(None) => {
                    tokio::select! {
                        () = inner.backend.idle(&inner.submitted, poll) => {}
                        () = self.shutdown.reached(Phase::Draining) => {}
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "a job worker cannot read the queue");
                    tokio::time::sleep(poll).await;
                }
            }
        }
    }

    /// Runs a claimed job to its end, or until the worker loses it (a cancel, a takeover,
    /// shutdown): a lost job's work is dropped, which cancels its model call.
    async fn run_job(&self, claim: Claim) {
        let inner = &self.jobs.inner;
        let job = &claim.job;
        let stop = Arc::new(Notify::new());
        inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.id.clone(), stop.clone());
        let span = tracing::info_span!("job", job_id = %job.id, attempt = job.attempts);
        tracing::info!(parent: &span, analysis = job.analysis.as_str(), "job started");
        let outcome = tokio::select! {
            outcome = self.analyse(&claim) => Some(outcome),
            () = self.held_while_running(&claim, &stop) => None,
        };
        inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id);
        let Some(outcome) = outcome else {
            tracing::info!(parent: &span, "job stopped: cancelled, taken over or shutting down");
            if self.shutdown.phase() != Phase::Running {
                // Shutting down: give the job back at once for the next process.
                let error = JobError {
                    code: "shutting_down".into(),
                    message: "the relay shut down while the job ran".into(),
                };
                let _ = inner
                    .backend
                    .fail(&claim, error, AfterFailure::RetryAt(now_ms()))
                    .await;
            }
            return;
        };
        let result = match outcome {
            Ok(result) => self.finish(&claim, result).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            self.failed(&claim, &err).await;
        }
        tracing::info!(parent: &span, "job attempt ended");
    }

    /// Renews the hold every `jobs.heartbeat_secs` and returns when the worker no longer holds
    /// the job (cancelled here or elsewhere, taken over) or the relay stops.
    async fn held_while_running(&self, claim: &Claim, stop: &Notify) {
        let inner = &self.jobs.inner;
        let every = Duration::from_secs(inner.config.heartbeat_secs);
        let visibility_ms = inner.config.visibility_timeout_secs * 1000;
        loop {
            tokio::select! {
                () = stop.notified() => return,
                () = self.shutdown.reached(Phase::Stopped) => return,
                () = tokio::time::sleep(every) => {}
            }
            match inner.backend.heartbeat(claim, visibility_ms).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(error = %err, job_id = %claim.job.id, "cannot renew a job's hold")
                }
            }
        }
    }

    /// Reads the document, splits it and runs the analysis over its pieces.
    async fn analyse(&self, claim: &Claim) -> Result<JobResult, RelayError> {
        let job = &claim.job;
        let bytes = self
            .jobs
            .inner
            .objects
            .get(&job.document)
            .await?
            .ok_or_else(|| {
                RelayError::Document(DocumentError::MissingReference(job.document.clone()))
            })?;
        let text = documents::extract_text(job.format, &bytes)?;
        let document_chars = text.chars().count() as u64;
        let piece_chars = self
            .jobs
            .inner
            .config
            .chunk_chars
            .min(self.calls.piece_chars());
        let pieces = documents::split(&text, piece_chars);
        if pieces.is_empty() {
            return Err(RelayError::Document(DocumentError::Empty));
        }
        let analysis = Analysis::of(&job.request);
        let count = pieces.len();
        let mut progress = JobProgress {
            done: 0,
            total: u32::try_from(count).unwrap_or(u32::MAX)
                + u32::from(count > 1 && analysis.reduces_by_call()),
        };
        self.jobs.inner.backend.progress(claim, progress).await?;
        let mut usage = Usage::default();
        let mut answers = Vec::with_capacity(count);
        let mut model = String::new();
        for (index, piece) in pieces.iter().enumerate() {
            let (system, user) = analysis.map_prompt(piece, index, count);
            let answer = self.call(job, system, user, &mut usage).await?;
            model = answer.model;
            answers.push(answer.text);
            progress.done += 1;
            self.jobs.inner.backend.progress(claim, progress).await?;
        }
        let (text, data) = match &analysis {
            Analysis::Extract { fields } => {
                let parts = answers
                    .iter()
                    .map(|answer| analysis::read_fields(answer, fields))
                    .collect::<Result<Vec<_>, _>>()?;
                let merged = serde_json::Value::Object(analysis::merge_fields(parts, fields));
                (merged.to_string(), Some(merged))
            }
            Analysis::Classify { labels } => {
                let chosen = answers
                    .iter()
                    .map(|answer| analysis::read_label(answer, labels))
                    .collect::<Result<Vec<_>, _>>()?;
                let label = analysis::vote(&chosen, labels);
                (label.clone(), Some(serde_json::Value::String(label)))
            }
            Analysis::Summarize | Analysis::Qa { .. } => {
                let mut notes = answers;
                while notes.len() > 1 {
                    notes = self
                        .reduce(job, &analysis, notes, piece_chars, &mut usage, &mut model)
                        .await?;
                }
                (notes.pop().unwrap_or_default(), None)
            }
        };
        Ok(JobResult {
            job_id: job.id.clone(),
            analysis_type: job.analysis,
            model,
            text,
            data,
            chunks: u32::try_from(count).unwrap_or(u32::MAX),
            document_chars,
            usage,
        })
    }

    /// One level of combining: `notes` in groups that fit a call (two at least), each group
    /// combined by one call.
    async fn reduce(
        &self,
        job: &JobRecord,
        analysis: &Analysis,
        notes: Vec<String>,
        piece_chars: usize,
        usage: &mut Usage,
        model: &mut String,
    ) -> Result<Vec<String>, RelayError> {
        let mut groups: Vec<Vec<String>> = Vec::new();
        for note in notes {
            let chars = note.chars().count();
            match groups.last_mut() {
                Some(group)
                    if group.len() < 2
                        || group.iter().map(|n| n.chars().count()).sum::<usize>() + chars
                            <= piece_chars =>
                {
                    group.push(note)
                }
                _ => groups.push(vec![note]),
            }
        }
        let mut combined = Vec::with_capacity(groups.len());
        for group in groups {
            if group.len() == 1 {
                combined.extend(group);
                continue;
            }
            let (system, user) = analysis.reduce_prompt(&group);
            let answer = self.call(job, system, user, usage).await?;
            *model = answer.model;
            combined.push(answer.text);
        }
        Ok(combined)
    }

    /// One model call of `job`; a degraded answer (no model could answer) is a failure.
    async fn call(
        &self,
        job: &JobRecord,
        system: String,
        user: String,
        usage: &mut Usage,
    ) -> Result<ChatResponse, RelayError> {
        let request = ChatRequest {
            messages: vec![Message::user(user)],
            system: Some(system),
            model: job.request.model.clone(),
            routing_hint: job.request.routing_hint.clone(),
            max_tokens: Some(self.jobs.inner.config.max_tokens),
            ..ChatRequest::default()
        };
        let answer = self.calls.complete(&job.key, request).await?;
        if answer.degraded {
            return Err(RelayError::UnusableAnswer {
                expected: "a model's answer (every model failed; the relay's stand-in answer is not one)",
            });
        }
        if let Some(spent) = answer.usage {
            usage.input_tokens += spent.input_tokens;
            usage.output_tokens += spent.output_tokens;
            usage.total_tokens += spent.total_tokens;
            usage.estimated |= spent.estimated;
        }
        Ok(answer)
    }

    /// Stores the result (under the job's id: a repeated write replaces it), then marks the
    /// job completed if this worker still holds it.
    async fn finish(&self, claim: &Claim, result: JobResult) -> Result<(), RelayError> {
        let job = &claim.job;
        let body = serde_json::to_vec(&result)
            .map_err(|err| RelayError::Internal(format!("a job result as JSON: {err}")))?;
        self.jobs
            .inner
            .objects
            .put(&result_location(&job.id), body.into())
            .await?;
        if self.jobs.inner.backend.complete(claim).await? {
            tracing::info!(job_id = %job.id, chunks = result.chunks, "job completed");
        } else {
            tracing::info!(job_id = %job.id, "job finished after it was cancelled or taken over; its end stands");
        }
        Ok(())
    }

    /// Ends an attempt that failed with `err`: retried after a backoff when another attempt may
    /// succeed and it has attempts left, dead-lettered when it has none, failed when no attempt
    /// would help.
    async fn failed(&self, claim: &Claim, err: &RelayError) {
        let job = &claim.job;
        let config = &self.jobs.inner.config;
        let retryable = err.is_retryable() || err.is_job_backend_failure();
        let after = match (retryable, job.attempts < config.max_attempts) {
            (true, true) => AfterFailure::RetryAt(now_ms() + backoff_ms(config, job.attempts)),
            (true, false) => AfterFailure::End(JobStatus::DeadLetter),
            (false, _) => AfterFailure::End(JobStatus::Failed),
        };
        let code = serde_json::to_value(err.code())
            .ok()
            .and_then(|code| code.as_str().map(str::to_string))
            .unwrap_or_else(|| "internal".into());
        let error = JobError {
            code,
            message: err.to_string(),
        };
        tracing::warn!(job_id = %job.id, attempt = job.attempts, error = %err, ?after, "job attempt failed");
        if let Err(store_error) = self.jobs.inner.backend.fail(claim, error, after).await {
            // The hold runs out and another attempt takes the job.
            tracing::error!(job_id = %job.id, error = %store_error, "cannot record a job's failure");
        }
    }
}

/// The wait before attempt `attempts + 1`: `retry_base_ms` doubled per attempt, at most
/// `retry_max_ms`, with full jitter in its upper half.
fn backoff_ms(config: &JobsConfig, attempts: u32) -> u64 {
    let doubled = config
        .retry_base_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
    let ceiling = doubled.min(config.retry_max_ms);
    ceiling / 2 + fastrand::u64(0..=ceiling / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_bounds() {
        let config = JobsConfig {
            retry_base_ms: 1000,
            retry_max_ms: 5000,
            ..JobsConfig::default()
        };
        for _ in 0..50 {
            assert!((500..=1000).contains(&backoff_ms(&config, 1)));
            assert!((1000..=2000).contains(&backoff_ms(&config, 2)));
            assert!((2500..=5000).contains(&backoff_ms(&config, 9)));
        }
    }

    #[test]
    fn references_stay_under_documents() {
        assert!(reference_path("documents/report.pdf").is_ok());
        assert!(reference_path("results/x.json").is_err());
        assert!(reference_path("documents/../results/x").is_err());
        assert!(reference_path("documents").is_err());
    }
}
