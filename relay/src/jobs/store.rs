//! The durable job table and queue, in SQLite (`jobs.sqlite`, WAL): one row per job with its
//! status, priority, attempts, progress, error and the worker's hold on it.
//!
//! A worker [`claim`](JobStore::claim)s the first due job — queued and past its retry wait, or
//! running under a hold that expired (its worker died) — in one `UPDATE ... RETURNING`, so two
//! workers never take the same job, and holds it for `jobs.visibility_timeout_secs`, renewing the
//! hold while it works ([`heartbeat`](JobStore::heartbeat)). Every change a worker makes to a job
//! names its hold (`lease`): once another worker took the job over, the first one's writes change
//! nothing, so a job ends exactly once. The queue is ordered by `order_ms`: the submission time
//! less the priority's head start (see `jobs.priority_step_secs`), so priorities are honoured
//! and a low-priority job is never starved.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fm_protocol::{JobError, JobProgress, JobRequest, JobStatus, Priority};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::backend::{AfterFailure, Delivery, DueCallback, JobPage, JobRecord, NewJob, now_ms};
use crate::error::RelayError;

/// The SQLite job table.
#[derive(Debug, Clone)]
pub struct JobStore {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
    /// Head start of each priority step, in ms.
    priority_step_ms: u64,
}

const COLUMNS: &str = "id, key, status, analysis, priority, format, request, document, created_ms, \
     started_ms, finished_ms, attempts, progress_done, progress_total, error_code, error_message, \
     lease, rowid, callback_state, callback_attempts";

/// What ending a job sets: its callback, when it has one, becomes due now.
const ENDED_CALLBACK: &str = "callback_state = CASE WHEN callback_url IS NULL THEN NULL \
     ELSE 'pending' END, callback_next_ms = 0";

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl JobStore {
    /// The job table in `dir` (made when missing).
    pub fn open(dir: &Path, priority_step_secs: u64) -> Result<JobStore, RelayError> {
        std::fs::create_dir_all(dir).map_err(|err| {
            RelayError::Startup(format!(
                "cannot make the jobs folder {} (`jobs.dir`): {err}",
                dir.display()
            ))
        })?;
        let path = dir.join("jobs.sqlite");
        let failed = |source| RelayError::JobStore {
            path: path.display().to_string(),
            source,
        };
        let connection = Connection::open(&path).map_err(failed)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(failed)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS jobs (
                     id TEXT PRIMARY KEY,
                     key TEXT NOT NULL,
                     status TEXT NOT NULL,
                     analysis TEXT NOT NULL,
                     priority TEXT NOT NULL,
                     format TEXT NOT NULL,
                     request TEXT NOT NULL,
                     document TEXT NOT NULL,
                     created_ms INTEGER NOT NULL,
                     order_ms INTEGER NOT NULL,
                     run_after_ms INTEGER NOT NULL,
                     started_ms INTEGER,
                     finished_ms INTEGER,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     progress_done INTEGER NOT NULL DEFAULT 0,
                     progress_total INTEGER NOT NULL DEFAULT 0,
                     error_code TEXT,
                     error_message TEXT,
                     lease TEXT,
                     lease_until_ms INTEGER,
                     callback_url TEXT,
                     callback_state TEXT,
                     callback_attempts INTEGER NOT NULL DEFAULT 0,
                     callback_next_ms INTEGER
                 );
",
            )
            .map_err(failed)?;
        add_missing_columns(&connection).map_err(failed)?;
        connection
            .execute_batch(
                "CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs (callback_state, callback_next_ms);
                 CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, order_ms);
                 CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key);",
            )
            .map_err(failed)?;
        Ok(JobStore {
            path,
            connection: Arc::new(Mutex::new(connection)),
            priority_step_ms: priority_step_secs.saturating_mul(1000),
        })
    }

    /// Runs `work` on the connection, off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, RelayError> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        let failed = move |source| RelayError::JobStore {
            path: path.display().to_string(),
            source,
        };
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|err| RelayError::Internal(format!("the job store's task: {err}")))?
        .map_err(failed)
    }

    /// Stores a new job, queued: the job as stored — unless the key already has
    /// `max_unfinished` queued or running jobs (then `Ok(None)`, nothing stored).
    pub async fn insert(
        &self,
        job: NewJob,
        max_unfinished: u32,
    ) -> Result<Option<JobRecord>, RelayError> {
        let request = serde_json::to_string(&job.request)
            .map_err(|err| RelayError::Internal(format!("a job request as JSON: {err}")))?;
        let head_start = match job.priority {
            Priority::High => 2 * self.priority_step_ms,
            Priority::Normal => self.priority_step_ms,
            Priority::Low => 0,
        };
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let unfinished: u32 = transaction.query_row(
                "SELECT COUNT(*) FROM jobs WHERE key = ?1 AND status IN ('QUEUED', 'RUNNING')",
                [&job.key],
                |row| row.get(0),
            )?;
            if unfinished >= max_unfinished {
                return Ok(None);
            }
            let now = now_ms();
            let stored = transaction.query_row(
                &format!("INSERT INTO jobs (id, key, status, analysis, priority, format, request, document,
                     created_ms, order_ms, run_after_ms, callback_url)
                 VALUES (?1, ?2, 'QUEUED', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?8, ?10)
                 RETURNING {COLUMNS}"),
                params![
                    job.id,
                    job.key,
                    job.analysis.as_str(),
                    job.priority.as_str(),
                    job.format.as_str(),
                    request,
                    job.document,
                    to_i64(now),
                    to_i64(now) - to_i64(head_start),
                    job.request.callback_url,
                ],
                record,
            )?;
            transaction.commit()?;
            Ok(Some(stored))
        })
        .await
    }

    /// The job `id` of `key` (`None` for another key's job or no job).
    pub async fn get(&self, key: &str, id: &str) -> Result<Option<JobRecord>, RelayError> {
        let (key, id) = (key.to_string(), id.to_string());
        self.with(move |connection| job_of(connection, &key, &id))
            .await
    }

    /// `key`'s jobs, newest first: at most `limit`, submitted before the job whose rowid is
    /// `before` (the last of the page before), with `status` when given.
    pub async fn list(
        &self,
        key: &str,
        status: Option<JobStatus>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<JobPage, RelayError> {
        let before = match before {
            None => i64::MAX,
            Some(cursor) => cursor
                .parse()
                .ok()
                .filter(|seq: &i64| *seq > 0)
                .ok_or_else(|| super::bad_cursor(cursor))?,
        };
        let key = key.to_string();
        let jobs = self
            .with(move |connection| {
                let mut statement = connection.prepare(&format!(
                    "SELECT {COLUMNS} FROM jobs
                     WHERE key = ?1 AND (?2 IS NULL OR status = ?2) AND rowid < ?3
                     ORDER BY rowid DESC LIMIT ?4"
                ))?;
                let rows = statement.query_map(
                    params![key, status.map(JobStatus::as_str), before, limit + 1],
                    record,
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(JobPage::of(jobs, limit))
    }

    /// Takes the first due job for a worker, held under `lease` until `now +
    /// visibility_ms`: a queued job past its retry wait, or a running one whose hold expired.
    /// A job taken over that has had its `max_attempts` is dead-lettered instead, and the next
    /// one looked at.
    pub async fn claim(
        &self,
        lease: &str,
        visibility_ms: u64,
        max_attempts: u32,
    ) -> Result<Option<JobRecord>, RelayError> {
        let lease = lease.to_string();
        self.with(move |connection| {
            loop {
                let now = to_i64(now_ms());
                let claimed = connection
                    .query_row(
                        &format!(
                            "UPDATE jobs SET status = 'RUNNING', attempts = attempts + 1,
                                 lease = ?1, lease_until_ms = ?2,
                                 started_ms = COALESCE(started_ms, ?3)
                             WHERE id = (
                                 SELECT id FROM jobs
                                 WHERE (status = 'QUEUED' AND run_after_ms <= ?3)
                                    OR (status = 'RUNNING' AND lease_until_ms < ?3)
                                 ORDER BY order_ms, id LIMIT 1)
                             RETURNING {COLUMNS}"
                        ),
                        params![lease, now + to_i64(visibility_ms), now],
                        record,
                    )
                    .optional()?;
                match claimed {
                    Some(job) if job.attempts > max_attempts => {
                        // Its last attempt died with its worker.
                        connection.execute(
                            &format!(
                                "UPDATE jobs SET status = 'DEAD_LETTER', lease = NULL,
                                     finished_ms = ?2, error_code = 'worker_lost',
                                     error_message = ?3, {ENDED_CALLBACK}
                                 WHERE id = ?1 AND lease = ?4"
                            ),
                            params![
                                job.id,
                                now,
                                format!(
                                    "every one of its {max_attempts} attempts ended without an answer (the worker stopped)"
                                ),
                                lease
                            ],
                        )?;
                    }
                    other => return Ok(other),
                }
            }
        })
        .await
    }

    /// Renews the hold on a running job: whether the worker still holds it (not when the job
    /// was cancelled or taken over).
    pub async fn heartbeat(
        &self,
        id: &str,
        lease: &str,
        visibility_ms: u64,
    ) -> Result<bool, RelayError> {
        let (id, lease) = (id.to_string(), lease.to_string());
        self.with(move |connection| {
            let changed = connection.execute(
                "UPDATE jobs SET lease_until_ms = ?3
                 WHERE id = ?1 AND lease = ?2 AND status = 'RUNNING'",
                params![id, lease, to_i64(now_ms() + visibility_ms)],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Records progress (while the worker holds the job).
    pub async fn progress(
        &self,
        id: &str,
        lease: &str,
        progress: JobProgress,
    ) -> Result<(), RelayError> {
        let (id, lease) = (id.to_string(), lease.to_string());
        self.with(move |connection| {
            connection.execute(
                "UPDATE jobs SET progress_done = ?3, progress_total = ?4
                 WHERE id = ?1 AND lease = ?2 AND status = 'RUNNING'",
                params![id, lease, progress.done, progress.total],
            )?;
            Ok(())
        })
        .await
    }

    /// Ends a job its worker holds as completed: whether it did (not when another worker took
    /// it over, or it was cancelled meanwhile).
    pub async fn complete(&self, id: &str, lease: &str) -> Result<bool, RelayError> {
        let (id, lease) = (id.to_string(), lease.to_string());
        self.with(move |connection| {
            let changed = connection.execute(
                &format!(
                    "UPDATE jobs SET status = 'COMPLETED', finished_ms = ?3, lease = NULL,
                         error_code = NULL, error_message = NULL,
                         progress_done = progress_total, {ENDED_CALLBACK}
                     WHERE id = ?1 AND lease = ?2 AND status = 'RUNNING'"
                ),
                params![id, lease, to_i64(now_ms())],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Ends an attempt that failed with `error`: queued again or ended, as `after` says.
    /// Whether the worker still held the job.
    pub async fn fail(
        &self,
        id: &str,
        lease: &str,
        error: JobError,
        after: AfterFailure,
    ) -> Result<bool, RelayError> {
        let (id, lease) = (id.to_string(), lease.to_string());
        self.with(move |connection| {
            let changed = match after {
                AfterFailure::RetryAt(at) => connection.execute(
                    "UPDATE jobs SET status = 'QUEUED', run_after_ms = ?3, lease = NULL,
                         lease_until_ms = NULL, error_code = ?4, error_message = ?5
                     WHERE id = ?1 AND lease = ?2 AND status = 'RUNNING'",
                    params![id, lease, to_i64(at), error.code, error.message],
                )?,
                AfterFailure::End(status) => connection.execute(
                    &format!("UPDATE jobs SET status = ?3, finished_ms = ?4, lease = NULL,
                         lease_until_ms = NULL, error_code = ?5, error_message = ?6, {ENDED_CALLBACK}
                     WHERE id = ?1 AND lease = ?2 AND status = 'RUNNING'"),
                    params![
                        id,
                        lease,
                        status.as_str(),
                        to_i64(now_ms()),
                        error.code,
                        error.message
                    ],
                )?,
            };
            Ok(changed == 1)
        })
        .await
    }

    /// Cancels `key`'s job `id` if it has not ended: the job as it is afterwards (`None`: no
    /// such job of this key).
    pub async fn cancel(&self, key: &str, id: &str) -> Result<Option<JobRecord>, RelayError> {
        let (key, id) = (key.to_string(), id.to_string());
        self.with(move |connection| {
            connection.execute(
                "UPDATE jobs SET status = 'CANCELLED', finished_ms = ?3, lease = NULL,
                     lease_until_ms = NULL
                 WHERE id = ?1 AND key = ?2 AND status IN ('QUEUED', 'RUNNING')",
                params![id, key, to_i64(now_ms())],
            )?;
            job_of(connection, &key, &id)
        })
        .await
    }

    /// Takes up to `limit` callbacks that are due, each for `hold_ms` (another process does not
    /// deliver it meanwhile).
    pub async fn due_callbacks(
        &self,
        limit: u32,
        hold_ms: u64,
    ) -> Result<Vec<DueCallback>, RelayError> {
        self.with(move |connection| {
            let now = to_i64(now_ms());
            let transaction = connection.transaction()?;
            let due: Vec<(String, u32, String)> = {
                let mut statement = transaction.prepare(
                    "SELECT id, callback_attempts, callback_url FROM jobs
                     WHERE callback_state = 'pending' AND callback_next_ms <= ?1
                     ORDER BY callback_next_ms LIMIT ?2",
                )?;
                let rows = statement.query_map(params![now, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut taken = Vec::with_capacity(due.len());
            for (id, attempts, url) in due {
                transaction.execute(
                    "UPDATE jobs SET callback_next_ms = ?2 WHERE id = ?1",
                    params![id, now + to_i64(hold_ms)],
                )?;
                let job = transaction.query_row(
                    &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                    [&id],
                    record,
                )?;
                taken.push(DueCallback {
                    job,
                    url,
                    attempts,
                    receipt: None,
                });
            }
            transaction.commit()?;
            Ok(taken)
        })
        .await
    }

    /// Records how a callback delivery ended.
    pub async fn delivered(&self, id: &str, outcome: Delivery) -> Result<(), RelayError> {
        let id = id.to_string();
        self.with(move |connection| {
            let (state, next) = match outcome {
                Delivery::Delivered => ("delivered", None),
                Delivery::Failed => ("failed", None),
                Delivery::RetryAt(at) => ("pending", Some(to_i64(at))),
            };
            connection.execute(
                "UPDATE jobs SET callback_state = ?2, callback_next_ms = ?3,
                     callback_attempts = callback_attempts + 1
                 WHERE id = ?1",
                params![id, state, next],
            )?;
            Ok(())
        })
        .await
    }
}

/// Columns added since the job table was first made, with their definitions: a table made by
/// an earlier version gets them (its jobs carry on).
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("callback_url", "TEXT"),
    ("callback_state", "TEXT"),
    ("callback_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("callback_next_ms", "INTEGER"),
];

fn add_missing_columns(connection: &Connection) -> rusqlite::Result<()> {
    let existing: Vec<String> = connection
        .prepare("SELECT name FROM pragma_table_info('jobs')")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, definition) in ADDED_COLUMNS {
        if !existing.iter().any(|column| column == name) {
            connection
                .execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {name} {definition};"))?;
        }
    }
    Ok(())
}

/// The job `id` of `key`, if there is one.
fn job_of(connection: &Connection, key: &str, id: &str) -> rusqlite::Result<Option<JobRecord>> {
    connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1 AND key = ?2"),
            [id, key],
            record,
        )
        .optional()
}

/// A row as a [`JobRecord`].
fn record(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let text = |index: usize| row.get::<_, String>(index);
    let invalid = |index: usize, what: &str, value: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown {what} `{value}`").into(),
        )
    };
    let status = text(2)?;
    let analysis = text(3)?;
    let priority = text(4)?;
    let format = text(5)?;
    let request: JobRequest = serde_json::from_str(&text(6)?).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, err.into())
    })?;
    // The enums are stored as their serde names.
    fn enumerated<T: serde::de::DeserializeOwned>(
        index: usize,
        what: &str,
        value: &str,
    ) -> rusqlite::Result<T> {
        serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                format!("unknown {what} `{value}`").into(),
            )
        })
    }
    let error_code: Option<String> = row.get(14)?;
    let error_message: Option<String> = row.get(15)?;
    let optional_ms = |index: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row
            .get::<_, Option<i64>>(index)?
            .map(|ms| u64::try_from(ms).unwrap_or(0)))
    };
    Ok(JobRecord {
        id: text(0)?,
        key: text(1)?,
        status: JobStatus::parse(&status).ok_or_else(|| invalid(2, "status", &status))?,
        analysis: enumerated(3, "analysis type", &analysis)?,
        priority: enumerated(4, "priority", &priority)?,
        format: enumerated(5, "format", &format)?,
        request,
        document: text(7)?,
        created_ms: u64::try_from(row.get::<_, i64>(8)?).unwrap_or(0),
        started_ms: optional_ms(9)?,
        finished_ms: optional_ms(10)?,
        attempts: row.get(11)?,
        progress: JobProgress {
            done: row.get(12)?,
            total: row.get(13)?,
        },
        error: error_code.map(|code| JobError {
            code,
            message: error_message.unwrap_or_default(),
        }),
        lease: row.get(16)?,
        cursor: row.get::<_, i64>(17)?.to_string(),
        callback: row
            .get::<_, Option<String>>(18)?
            .map(|state| Ok::<_, rusqlite::Error>((state, row.get(19)?)))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fm_protocol::{AnalysisType, DocumentFormat};

    #[tokio::test]
    async fn a_table_of_an_earlier_version_gets_the_new_columns() {
        let dir = std::env::temp_dir().join(format!("fm-jobs-store-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Connection::open(dir.join("jobs.sqlite"))
            .unwrap()
            .execute_batch(
                "CREATE TABLE jobs (id TEXT PRIMARY KEY, key TEXT NOT NULL, status TEXT NOT NULL,
                     analysis TEXT NOT NULL, priority TEXT NOT NULL, format TEXT NOT NULL,
                     request TEXT NOT NULL, document TEXT NOT NULL, created_ms INTEGER NOT NULL,
                     order_ms INTEGER NOT NULL, run_after_ms INTEGER NOT NULL, started_ms INTEGER,
                     finished_ms INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
                     progress_done INTEGER NOT NULL DEFAULT 0,
                     progress_total INTEGER NOT NULL DEFAULT 0, error_code TEXT,
                     error_message TEXT, lease TEXT, lease_until_ms INTEGER);",
            )
            .unwrap();
        let store = JobStore::open(&dir, 300).unwrap();
        let request = JobRequest {
            analysis_type: Some(AnalysisType::Summarize),
            callback_url: Some("https://example.com/hook".into()),
            ..JobRequest::default()
        };
        let job = NewJob {
            id: "a".into(),
            key: "k".into(),
            analysis: AnalysisType::Summarize,
            priority: Priority::Normal,
            format: DocumentFormat::Text,
            request,
            document: "documents/a".into(),
        };
        assert!(store.insert(job, 10).await.unwrap().is_some());
        let claimed = store.claim("lease", 60_000, 3).await.unwrap().unwrap();
        assert!(store.complete(&claimed.id, "lease").await.unwrap());
        let due = store.due_callbacks(10, 1000).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].url, "https://example.com/hook");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
