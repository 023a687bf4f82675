//! `[jobs]`: the async document jobs — where they are kept, how many workers run them, how long
//! a worker holds a job before another may take it over, retries, how documents are split, and
//! the bounds on what a caller may submit. See the embedded default for each setting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The job queue, its workers and its bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Whether `/v1/jobs` is served and workers run.
    pub enabled: bool,
    /// The job table (`jobs.sqlite`) and the document and result objects; `<limits.data_dir>/jobs`
    /// when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Jobs run at once in this process.
    pub workers: usize,
    /// The largest document accepted, in bytes.
    pub max_document_bytes: u64,
    /// Attempts a job gets before it is dead-lettered.
    pub max_attempts: u32,
    /// How long a worker holds a job without renewing its hold; after that (a crashed or killed
    /// process) another worker takes the job over.
    pub visibility_timeout_secs: u64,
    /// How often a running job's hold is renewed (and a cancel from another process seen).
    pub heartbeat_secs: u64,
    /// The wait before a failed job's next attempt: doubles each time, from this, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// A `high` job is taken as if it had been submitted this much earlier than a `normal` one,
    /// a `normal` one this much earlier than a `low` one: priorities order the queue, and a job
    /// that has waited longer than that goes ahead of newer jobs of any priority.
    pub priority_step_secs: u64,
    /// The largest piece of a document one model call reads, in characters (smaller when the
    /// model's context window is); a longer document is split on paragraph boundaries and its
    /// pieces' answers combined.
    pub chunk_chars: usize,
    /// `max_tokens` of each model call a job makes.
    pub max_tokens: u32,
    /// Unfinished (queued or running) jobs an API key may have, unless its limits set
    /// `max_unfinished_jobs`.
    pub max_queued_per_key: u32,
    /// How often idle workers look for jobs that came due (a submission wakes them at once).
    pub poll_ms: u64,
    /// How long one `GET /v1/jobs/{id}/events` stream stays open at most (then it ends with the
    /// job's status; the client may open another).
    pub events_max_secs: u64,
    /// The secret callbacks are signed with (HMAC-SHA256); the environment's
    /// `FM_RELAY_CALLBACK_SECRET` when empty. Without one, a job with a `callback_url` is refused.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub callback_secret: String,
    /// Hosts callbacks may go to (exact names, or `*.example.com` for its subdomains); empty:
    /// any host whose addresses are public.
    pub callback_allowed_hosts: Vec<String>,
    /// Whether callbacks may go to private, loopback and link-local addresses (for a receiver on
    /// the same machine or network).
    pub callback_allow_private: bool,
    /// Deliveries of one callback before it is given up (each failure waits twice as long).
    pub callback_max_attempts: u32,
    /// How long one delivery may take.
    pub callback_timeout_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            enabled: true,
            dir: None,
            workers: 16,
            max_document_bytes: 10 * 1024 * 1024,
            max_attempts: 3,
            visibility_timeout_secs: 60,
            heartbeat_secs: 10,
            retry_base_ms: 2_000,
            retry_max_ms: 60_000,
            priority_step_secs: 300,
            chunk_chars: 24_000,
            max_tokens: 1_024,
            max_queued_per_key: 1_000,
            poll_ms: 500,
            events_max_secs: 3_600,
            callback_secret: String::new(),
            callback_allowed_hosts: Vec::new(),
            callback_allow_private: false,
            callback_max_attempts: 8,
            callback_timeout_ms: 10_000,
        }
    }
}

impl JobsConfig {
    /// The folder of the job table and objects.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("jobs"))
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.workers) {
            return Err("`jobs.workers` must be 1 to 64".into());
        }
        if self.max_document_bytes == 0 {
            return Err("`jobs.max_document_bytes` must be greater than 0".into());
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err("`jobs.max_attempts` must be 1 to 100".into());
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs * 2 > self.visibility_timeout_secs {
            return Err(
                "`jobs.heartbeat_secs` must be above 0 and at most half of `jobs.visibility_timeout_secs`, so a live worker never loses its job"
                    .into(),
            );
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err(
                "`jobs.retry_base_ms` must be above 0 and at most `jobs.retry_max_ms`".into(),
            );
        }
        if self.chunk_chars < 1_000 {
            return Err("`jobs.chunk_chars` must be at least 1000".into());
        }
        if !(1..=fm_protocol::limits::MAX_TOKENS).contains(&self.max_tokens) {
            return Err(format!(
                "`jobs.max_tokens` must be 1 to {}",
                fm_protocol::limits::MAX_TOKENS
            ));
        }
        if self.max_queued_per_key == 0 || self.poll_ms == 0 || self.events_max_secs == 0 {
            return Err(
                "`jobs.max_queued_per_key`, `jobs.poll_ms` and `jobs.events_max_secs` must be greater than 0"
                    .into(),
            );
        }
        if !(1..=50).contains(&self.callback_max_attempts) || self.callback_timeout_ms == 0 {
            return Err(
                "`jobs.callback_max_attempts` must be 1 to 50 and `jobs.callback_timeout_ms` above 0"
                    .into(),
            );
        }
        Ok(())
    }

    /// The callback signing secret: the configured one, else the environment's
    /// `FM_RELAY_CALLBACK_SECRET`; `None` when neither is set.
    pub fn callback_secret(&self) -> Option<String> {
        Some(self.callback_secret.clone())
            .filter(|secret| !secret.is_empty())
            .or_else(|| std::env::var(CALLBACK_SECRET_ENV).ok())
            .filter(|secret| !secret.is_empty())
    }
}

/// The environment variable a callback signing secret may come from.
pub const CALLBACK_SECRET_ENV: &str = "FM_RELAY_CALLBACK_SECRET";
