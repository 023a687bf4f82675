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
    /// Where jobs are kept: on this machine (SQLite and a folder) or in AWS (SQS, S3, DynamoDB,
    /// SNS), which relays on many machines share.
    pub backend: JobsBackend,
    /// The AWS backend's resources.
    pub aws: JobsAwsConfig,
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
            backend: JobsBackend::Embedded,
            aws: JobsAwsConfig::default(),
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
        if self.backend == JobsBackend::Aws {
            self.aws.validate()?;
            // SQS hides a message for at most 12 hours.
            if self.visibility_timeout_secs > MAX_SQS_WAIT_SECS
                || self.retry_max_ms / 1000 > MAX_SQS_WAIT_SECS
            {
                return Err(format!(
                    "with `jobs.backend = \"aws\"`, `jobs.visibility_timeout_secs` and `jobs.retry_max_ms` must be at most 12 hours ({MAX_SQS_WAIT_SECS} s)"
                ));
            }
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

/// The longest SQS hides a message (its visibility timeout's ceiling), in seconds.
pub const MAX_SQS_WAIT_SECS: u64 = 12 * 60 * 60;

/// Where jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobsBackend {
    /// SQLite and a local folder under `jobs.dir`: one machine.
    Embedded,
    /// SQS queues, an S3 bucket, a DynamoDB table and an SNS topic (`[jobs.aws]`).
    Aws,
}

/// The AWS job backend: which queues, bucket, table and topic, in which region, and where their
/// endpoint is (for a local stand-in such as moto or LocalStack). Credentials come from the
/// standard AWS chain (environment, profile, role).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsAwsConfig {
    pub region: String,
    /// One endpoint for all four services instead of AWS's (e.g. `http://127.0.0.1:5000` for
    /// `moto_server`); empty: AWS's own. S3 is then addressed by path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub endpoint_url: String,
    /// The SQS queues are `<prefix>-high`, `<prefix>-normal`, `<prefix>-low` (one per priority)
    /// and `<prefix>-callbacks` (callbacks due).
    pub queue_prefix: String,
    /// The S3 bucket of documents (`documents/…`) and results (`results/…`).
    pub bucket: String,
    /// The DynamoDB table of jobs (partition key `id`, a string; index `by_key` on `key` and
    /// `seq`, both strings) and of each key's count of unfinished jobs.
    pub table: String,
    /// The SNS topic each ended job's status is published to: an ARN, or a name (then made or
    /// found with `CreateTopic`); empty: no notices.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub topic: String,
    /// Make the queues, bucket, table and topic when they are missing (a local stand-in, a first
    /// try); in production they come from the deployment and the relay's role may not make them.
    pub create_resources: bool,
    /// How long an idle worker waits on a queue for a job (SQS long polling), 1 to 20 s.
    pub wait_secs: u32,
}

impl Default for JobsAwsConfig {
    fn default() -> Self {
        JobsAwsConfig {
            region: "us-east-1".into(),
            endpoint_url: String::new(),
            queue_prefix: "fm-relay-jobs".into(),
            bucket: "fm-relay-jobs".into(),
            table: "fm-relay-jobs".into(),
            topic: String::new(),
            create_resources: false,
            wait_secs: 10,
        }
    }
}

impl JobsAwsConfig {
    fn validate(&self) -> Result<(), String> {
        let named = |value: &str, field: &str| match value.is_empty() {
            true => Err(format!("`jobs.aws.{field}` must not be empty")),
            false => Ok(()),
        };
        named(&self.region, "region")?;
        named(&self.queue_prefix, "queue_prefix")?;
        named(&self.bucket, "bucket")?;
        named(&self.table, "table")?;
        if !(1..=20).contains(&self.wait_secs) {
            return Err("`jobs.aws.wait_secs` must be 1 to 20 (SQS long polling)".into());
        }
        let url = &self.endpoint_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "`jobs.aws.endpoint_url` `{}` must be an http:// or https:// URL",
                self.endpoint_url
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aws_backend_s_settings_are_checked_only_when_it_is_chosen() {
        let mut config = JobsConfig {
            aws: JobsAwsConfig {
                wait_secs: 0,
                endpoint_url: "127.0.0.1:5000".into(),
                ..JobsAwsConfig::default()
            },
            ..JobsConfig::default()
        };
        assert!(config.validate().is_ok(), "unused while embedded");
        config.backend = JobsBackend::Aws;
        assert!(config.validate().unwrap_err().contains("wait_secs"));
        config.aws.wait_secs = 20;
        assert!(config.validate().unwrap_err().contains("endpoint_url"));
        config.aws.endpoint_url = "http://127.0.0.1:5000".into();
        assert!(config.validate().is_ok());
        config.aws.table.clear();
        assert!(config.validate().unwrap_err().contains("jobs.aws.table"));
        config.aws.table = "jobs".into();
        config.visibility_timeout_secs = MAX_SQS_WAIT_SECS + 1;
        assert!(config.validate().unwrap_err().contains("12 hours"));
        let read: JobsConfig =
            toml::from_str("backend = \"aws\"\n[aws]\nregion = \"eu-west-1\"\ntopic = \"done\"")
                .unwrap();
        assert_eq!(
            (read.backend, read.aws.region.as_str()),
            (JobsBackend::Aws, "eu-west-1")
        );
        assert!(
            toml::from_str::<JobsConfig>("[aws]\nqueue = \"x\"").is_err(),
            "unknown keys"
        );
    }
}
