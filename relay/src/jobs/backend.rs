//! Where jobs are kept, behind one interface: [`JobBackend`] is the embedded SQLite table and
//! queue ([`super::store`]) or the AWS one — SQS, DynamoDB, SNS ([`super::aws`]). The job
//! service and its workers speak only these records, claims and deliveries; every change a worker
//! makes names its [`Claim`], so a worker that lost its job (cancelled, taken over) changes
//! nothing, and a job ends exactly once in either backend.

use fm_protocol::{
    AnalysisType, DocumentFormat, JobError, JobProgress, JobRequest, JobStatus, Priority,
};
use tokio::sync::Notify;

use super::aws::AwsJobStore;
use super::store::JobStore;
use crate::error::RelayError;

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    /// The API key's name that submitted it: only that key sees it.
    pub key: String,
    pub status: JobStatus,
    pub analysis: AnalysisType,
    pub priority: Priority,
    pub format: DocumentFormat,
    /// The submission without its document (analysis, fields, labels, question, model, hint,
    /// callback).
    pub request: JobRequest,
    /// Where the document is in the object store.
    pub document: String,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub attempts: u32,
    pub progress: JobProgress,
    pub error: Option<JobError>,
    /// The hold of the worker running it (while running).
    pub lease: Option<String>,
    /// Its place in its key's list, newest first: a page that ends with it continues after this.
    pub cursor: String,
    /// Its callback's delivery: `pending`, `delivered` or `failed`, and the tries so far.
    pub callback: Option<(String, u32)>,
}

/// What a new job is stored with.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub key: String,
    pub analysis: AnalysisType,
    pub priority: Priority,
    pub format: DocumentFormat,
    pub request: JobRequest,
    pub document: String,
}

/// How a failed attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queued again, to run after this time (ms).
    RetryAt(u64),
    /// Ended for good with this status (failed, dead-lettered).
    End(JobStatus),
}

/// A queue message a worker holds (the AWS backend): where it is and the handle that changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub queue_url: String,
    pub handle: String,
}

/// A job a worker took: the job as it was taken and the worker's hold on it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: JobRecord,
    pub lease: String,
    /// The queue message of the job (AWS), kept hidden while the worker holds the job.
    pub receipt: Option<Receipt>,
}

/// A callback due for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DueCallback {
    pub job: JobRecord,
    pub url: String,
    /// Deliveries tried before this one.
    pub attempts: u32,
    /// The callback's queue message (AWS).
    pub receipt: Option<Receipt>,
}

/// How a callback delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Try again at this time (ms).
    RetryAt(u64),
    /// Given up.
    Failed,
}

/// One page of a key's jobs, and where the next page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    pub next_before: Option<String>,
}

impl JobPage {
    /// A page of at most `limit` of `jobs`, read one past it to know whether more follow.
    pub fn of(mut jobs: Vec<JobRecord>, limit: u32) -> JobPage {
        let more = jobs.len() > limit as usize;
        jobs.truncate(limit as usize);
        let next_before = more
            .then(|| jobs.last().map(|job| job.cursor.clone()))
            .flatten();
        JobPage { jobs, next_before }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Where jobs are kept.
#[derive(Debug)]
pub enum JobBackend {
    Embedded(JobStore),
    Aws(AwsJobStore),
}

impl JobBackend {
    /// Stores a new job, queued: the job as stored (still queued) — unless the key already has
    /// `max_unfinished` queued or running jobs (then `Ok(None)`, nothing queued).
    pub async fn insert(
        &self,
        job: NewJob,
        max_unfinished: u32,
    ) -> Result<Option<JobRecord>, RelayError> {
        match self {
            JobBackend::Embedded(store) => store.insert(job, max_unfinished).await,
            JobBackend::Aws(store) => store.insert(job, max_unfinished).await,
        }
    }

    /// The job `id` of `key` (`None` for another key's job or no job).
    pub async fn get(&self, key: &str, id: &str) -> Result<Option<JobRecord>, RelayError> {
        match self {
            JobBackend::Embedded(store) => store.get(key, id).await,
            JobBackend::Aws(store) => store.get(key, id).await,
        }
    }

    /// `key`'s jobs, newest first: at most `limit`, after the page that ended at `before` (as
    /// its `next_before` gave it), with `status` when given. A cursor this backend did not make
    /// is a 400 naming `before`.
    pub async fn list(
        &self,
        key: &str,
        status: Option<JobStatus>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<JobPage, RelayError> {
        match self {
            JobBackend::Embedded(store) => store.list(key, status, before, limit).await,
            JobBackend::Aws(store) => store.list(key, status, before, limit).await,
        }
    }

    /// Takes the next due job for a worker, held under `lease` for `visibility_ms`; `None` when
    /// there is none. The embedded queue answers at once (the worker then waits for a
    /// submission or `jobs.poll_ms`); the AWS queue waits up to `jobs.aws.wait_secs` for one.
    pub async fn claim(
        &self,
        lease: &str,
        visibility_ms: u64,
        max_attempts: u32,
    ) -> Result<Option<Claim>, RelayError> {
        match self {
            JobBackend::Embedded(store) => Ok(store
                .claim(lease, visibility_ms, max_attempts)
                .await?
                .map(|job| Claim {
                    job,
                    lease: lease.to_string(),
                    receipt: None,
                })),
            JobBackend::Aws(store) => store.claim(lease, visibility_ms, max_attempts).await,
        }
    }

    /// Waits for work after a claim found none: a submission in this process or `poll`
    /// (embedded); nothing more for the AWS queue, whose claim already waited.
    pub async fn idle(&self, submitted: &Notify, poll: std::time::Duration) {
        if let JobBackend::Embedded(_) = self {
            tokio::select! {
                () = submitted.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Renews the hold on a running job: whether the worker still holds it (not when the job
    /// was cancelled or taken over).
    pub async fn heartbeat(&self, claim: &Claim, visibility_ms: u64) -> Result<bool, RelayError> {
        match self {
            JobBackend::Embedded(store) => {
                store
                    .heartbeat(&claim.job.id, &claim.lease, visibility_ms)
                    .await
            }
            JobBackend::Aws(store) => store.heartbeat(claim, visibility_ms).await,
        }
    }

    /// Records progress (while the worker holds the job).
    pub async fn progress(&self, claim: &Claim, progress: JobProgress) -> Result<(), RelayError> {
        match self {
            JobBackend::Embedded(store) => {
                store.progress(&claim.job.id, &claim.lease, progress).await
            }
            JobBackend::Aws(store) => store.progress(claim, progress).await,
        }
    }

    /// Ends a job its worker holds as completed: whether it did (not when another worker took
    /// it over, or it was cancelled meanwhile).
    pub async fn complete(&self, claim: &Claim) -> Result<bool, RelayError> {
        match self {
            JobBackend::Embedded(store) => store.complete(&claim.job.id, &claim.lease).await,
            JobBackend::Aws(store) => store.complete(claim).await,
        }
    }

    /// Ends an attempt that failed with `error`: queued again or ended, as `after` says.
    /// Whether the worker still held the job.
    pub async fn fail(
        &self,
        claim: &Claim,
        error: JobError,
        after: AfterFailure,
    ) -> Result<bool, RelayError> {
        match self {
            JobBackend::Embedded(store) => {
                store.fail(&claim.job.id, &claim.lease, error, after).await
            }
            JobBackend::Aws(store) => store.fail(claim, error, after).await,
        }
    }

    /// Cancels `key`'s job `id` if it has not ended: the job as it is afterwards (`None`: no
    /// such job of this key).
    pub async fn cancel(&self, key: &str, id: &str) -> Result<Option<JobRecord>, RelayError> {
        match self {
            JobBackend::Embedded(store) => store.cancel(key, id).await,
            JobBackend::Aws(store) => store.cancel(key, id).await,
        }
    }

    /// Takes up to `limit` callbacks that are due, each for `hold_ms` (no other process
    /// delivers it meanwhile).
    pub async fn due_callbacks(
        &self,
        limit: u32,
        hold_ms: u64,
    ) -> Result<Vec<DueCallback>, RelayError> {
        match self {
            JobBackend::Embedded(store) => store.due_callbacks(limit, hold_ms).await,
            JobBackend::Aws(store) => store.due_callbacks(limit, hold_ms).await,
        }
    }

    /// Records how a callback delivery ended.
    pub async fn delivered(
        &self,
        callback: &DueCallback,
        outcome: Delivery,
    ) -> Result<(), RelayError> {
        match self {
            JobBackend::Embedded(store) => store.delivered(&callback.job.id, outcome).await,
            JobBackend::Aws(store) => store.delivered(callback, outcome).await,
        }
    }
}
