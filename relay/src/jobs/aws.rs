//! The AWS job backend (`jobs.backend = "aws"`), which relays on many machines share: one SQS
//! queue per priority, the job table in DynamoDB, documents and results in S3 ([`Objects::S3`]),
//! a notice on SNS when a job ends, and the callbacks due in an SQS queue of their own.
//!
//! A queue message only names its job; the job's truth is its DynamoDB item. A worker that
//! receives a message takes the job with one conditional write (queued and due, or running under
//! a hold that ran out) that sets its hold, and keeps the message hidden while it holds the job
//! (heartbeats renew both). Every later write names the hold, so a worker that lost the job
//! (cancelled, taken over after its process died) changes nothing: a job ends exactly once.
//! A job's end and its key's count of unfinished jobs change in one transaction, which is how
//! `max_unfinished_jobs` holds across relays. A message whose job has ended is deleted by
//! whoever receives it; one whose job was never stored (the submission failed after queueing)
//! is dropped after [`ORPHAN_GRACE_MS`]. Notices and callbacks are delivered at least once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, ReturnValue, ScalarAttributeType, TableStatus,
    TransactWriteItem, Update,
};
use aws_smithy_http_client::tls::{Provider as TlsProvider, rustls_provider::CryptoMode};
use fm_protocol::{JobError, JobProgress, JobRequest, JobStatus, Priority};
use serde::{Deserialize, Serialize};

use super::backend::{
    AfterFailure, Claim, Delivery, DueCallback, JobPage, JobRecord, NewJob, Receipt, now_ms,
};
use super::objects::Objects;
use crate::config::JobsAwsConfig;
use crate::error::RelayError;

/// How long a queue message may name a job that is not stored before it is dropped: a
/// submission queues its message, then stores the job; one that failed in between leaves it.
pub const ORPHAN_GRACE_MS: u64 = 5 * 60 * 1000;
/// The index of a key's jobs, newest first.
const BY_KEY: &str = "by_key";
/// Tries of a transaction that met another on the same items (a key's count).
const TRANSACTION_TRIES: u32 = 8;
/// SQS hides a message for at most this long (seconds).
const MAX_HIDE_SECS: u64 = crate::config::jobs::MAX_SQS_WAIT_SECS;

/// What became of a received job message ([`AwsJobStore::take`]).
#[derive(Debug)]
pub enum Taken {
    /// The job, held by the taker.
    Claim(Box<Claim>),
    /// The message is deleted: its job has ended, or it names none.
    Deleted,
    /// The message is hidden until its job may be taken.
    Hidden,
}

/// Which of the store's queues a delivered message came from, with the queue's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveredFrom {
    /// One of the job queues (a priority's).
    Jobs(String),
    /// The queue of callbacks due.
    Callbacks(String),
}

/// What a queue message carries.
#[derive(Debug, Serialize, Deserialize)]
struct QueueMessage {
    job_id: String,
    /// When it was sent (ms): an orphan is dropped once it is old enough.
    sent_ms: u64,
}

/// The queues, table and topic.
#[derive(Debug)]
pub struct AwsJobStore {
    sqs: aws_sdk_sqs::Client,
    dynamo: aws_sdk_dynamodb::Client,
    sns: aws_sdk_sns::Client,
    table: String,
    /// Queue URLs of the priorities: high, normal, low.
    queues: [String; 3],
    callbacks_queue: String,
    topic_arn: Option<String>,
    wait_secs: u32,
    /// Claims so far: which queue a claim looks at first turns with it.
    looks: AtomicU64,
}

impl AwsJobStore {
    /// Connects to the configured queues, table, topic and bucket (making them first when
    /// `create_resources` says so): the job store and the object store.
    pub async fn connect(config: &JobsAwsConfig) -> Result<(AwsJobStore, Objects), RelayError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(TlsProvider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(http);
        if !config.endpoint_url.is_empty() {
            loader = loader.endpoint_url(&config.endpoint_url);
        }
        let shared = loader.load().await;
        let sqs = aws_sdk_sqs::Client::new(&shared);
        let dynamo = aws_sdk_dynamodb::Client::new(&shared);
        let sns = aws_sdk_sns::Client::new(&shared);
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(!config.endpoint_url.is_empty())
                .build(),
        );
        if config.create_resources {
            create_table(&dynamo, &config.table).await?;
            create_bucket(&s3, &config.bucket, &config.region).await?;
        }
        let queue = |suffix: &str| {
            let name = format!("{}-{suffix}", config.queue_prefix);
            let sqs = &sqs;
            async move { queue_url(sqs, &name, config.create_resources).await }
        };
        // Looked up together: on Lambda this is part of every cold start.
        let (high, normal, low, callbacks_queue) = tokio::try_join!(
            queue("high"),
            queue("normal"),
            queue("low"),
            queue("callbacks")
        )?;
        let queues = [high, normal, low];
        let topic_arn = match config.topic.as_str() {
            "" => None,
            arn if arn.starts_with("arn:") => Some(arn.to_string()),
            name => sns
                .create_topic()
                .name(name)
                .send()
                .await
                .map_err(sns_failed("CreateTopic"))?
                .topic_arn()
                .map(str::to_string),
        };
        let store = AwsJobStore {
            sqs,
            dynamo,
            sns,
            table: config.table.clone(),
            queues,
            callbacks_queue,
            topic_arn,
            wait_secs: config.wait_secs,
            looks: AtomicU64::new(fastrand::u64(..)),
        };
        let objects = Objects::S3 {
            client: s3,
            bucket: config.bucket.clone(),
        };
        Ok((store, objects))
    }

    /// Queues the job's message, then stores the job and counts it for its key in one
    /// transaction: the job as stored — unless the key has `max_unfinished` jobs unfinished
    /// (`Ok(None)`).
    pub async fn insert(
        &self,
        job: NewJob,
        max_unfinished: u32,
    ) -> Result<Option<JobRecord>, RelayError> {
        let counter = counter_id(&job.key);
        // Refused before anything is queued when the count is already there.
        if let Some(item) = self.item(&counter).await?
            && number(&item, "unfinished").unwrap_or(0) >= u64::from(max_unfinished)
        {
            return Ok(None);
        }
        let now = now_ms();
        let message = serde_json::to_string(&QueueMessage {
            job_id: job.id.clone(),
            sent_ms: now,
        })
        .map_err(|err| RelayError::Internal(format!("a queue message as JSON: {err}")))?;
        self.sqs
            .send_message()
            .queue_url(&self.queues[queue_of(job.priority)])
            .message_body(message)
            .send()
            .await
            .map_err(sqs_failed("SendMessage"))?;
        let request = serde_json::to_string(&job.request)
            .map_err(|err| RelayError::Internal(format!("a job request as JSON: {err}")))?;
        let mut item = HashMap::from([
            ("id".to_string(), text(&job.id)),
            ("key_name".to_string(), text(&job.key)),
            ("seq".to_string(), text(seq_of(now, &job.id))),
            ("job_status".to_string(), text(JobStatus::Queued.as_str())),
            ("analysis_type".to_string(), text(job.analysis.as_str())),
            ("priority_name".to_string(), text(job.priority.as_str())),
            ("doc_format".to_string(), text(job.format.as_str())),
            ("request_json".to_string(), text(request)),
            ("document_key".to_string(), text(&job.document)),
            ("created_ms".to_string(), num(now)),
            ("run_after_ms".to_string(), num(now)),
            ("attempt_count".to_string(), num(0)),
            ("progress_done".to_string(), num(0)),
            ("progress_total".to_string(), num(0)),
            ("callback_attempts".to_string(), num(0)),
        ]);
        if let Some(url) = &job.request.callback_url {
            item.insert("callback_url".into(), text(url));
        }
        let stored = record_of(&item)?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(id)")
            .build()
            .map_err(built)?;
        let count = Update::builder()
            .table_name(&self.table)
            .key("id", text(&counter))
            .update_expression(
                "SET unfinished = if_not_exists(unfinished, :zero) + :one, counted_key = :key",
            )
            .condition_expression("attribute_not_exists(unfinished) OR unfinished < :max")
            .expression_attribute_values(":zero", num(0))
            .expression_attribute_values(":one", num(1))
            .expression_attribute_values(":key", text(&job.key))
            .expression_attribute_values(":max", num(u64::from(max_unfinished)))
            .build()
            .map_err(built)?;
        let written = self
            .transact(
                vec![
                    TransactWriteItem::builder().put(put).build(),
                    TransactWriteItem::builder().update(count).build(),
                ],
                "TransactWriteItems (a new job)",
            )
            .await?;
        // A refused job leaves its message: dropped as an orphan.
        Ok(written.then_some(stored))
    }

    /// The job `id` of `key`.
    pub async fn get(&self, key: &str, id: &str) -> Result<Option<JobRecord>, RelayError> {
        if !is_job_id(id) {
            return Ok(None);
        }
        match self.item(id).await? {
            Some(item) => {
                let job = record_of(&item)?;
                Ok((job.key == key).then_some(job))
            }
            None => Ok(None),
        }
    }

    /// `key`'s jobs, newest first, from the index `by_key`.
    pub async fn list(
        &self,
        key: &str,
        status: Option<JobStatus>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<JobPage, RelayError> {
        let before = match before {
            None => "~".to_string(),
            Some(cursor) if is_seq(cursor) => cursor.to_string(),
            Some(cursor) => return Err(super::bad_cursor(cursor)),
        };
        let wanted = limit as usize + 1;
        let mut jobs = Vec::with_capacity(wanted);
        let mut start = None;
        // Where reading stopped with items left unread (a status filter may leave pages empty).
        let mut unread_from = None;
        // A status filter may leave pages empty: at most this many are read for one page.
        for page in 0..10 {
            let mut query = self
                .dynamo
                .query()
                .table_name(&self.table)
                .index_name(BY_KEY)
                .key_condition_expression("key_name = :key AND seq < :before")
                .expression_attribute_values(":key", text(key))
                .expression_attribute_values(":before", text(&before))
                .scan_index_forward(false)
                .limit(i32::try_from(wanted).unwrap_or(i32::MAX).max(25))
                .set_exclusive_start_key(start.take());
            if let Some(status) = status {
                query = query
                    .filter_expression("job_status = :status")
                    .expression_attribute_values(":status", text(status.as_str()));
            }
            let answer = query.send().await.map_err(dynamo_failed("Query"))?;
            for item in answer.items() {
                jobs.push(record_of(item)?);
            }
            match answer.last_evaluated_key() {
                Some(last) if jobs.len() < wanted => {
                    if page == 9 {
                        unread_from = last.get("seq").and_then(|seq| seq.as_s().ok()).cloned();
                    }
                    start = Some(last.clone());
                }
                _ => break,
            }
        }
        let mut page = JobPage::of(jobs, limit);
        page.next_before = page.next_before.or(unread_from);
        Ok(page)
    }

    /// Looks at the queues for a job, `high` first most of the time (see [`look_order`]);
    /// when none has one, waits on one of them (their turns rotate across workers) up to
    /// `jobs.aws.wait_secs`.
    pub async fn claim(
        &self,
        lease: &str,
        visibility_ms: u64,
        max_attempts: u32,
    ) -> Result<Option<Claim>, RelayError> {
        let look = self.looks.fetch_add(1, Ordering::Relaxed);
        for queue in look_order(look) {
            if let Some(claim) = self
                .receive_job(queue, 0, lease, visibility_ms, max_attempts)
                .await?
            {
                return Ok(Some(claim));
            }
        }
        let queue = (look % 3) as usize;
        self.receive_job(queue, self.wait_secs, lease, visibility_ms, max_attempts)
            .await
    }

    /// Receives one message of queue `queue` (waiting up to `wait_secs`) and takes its job.
    async fn receive_job(
        &self,
        queue: usize,
        wait_secs: u32,
        lease: &str,
        visibility_ms: u64,
        max_attempts: u32,
    ) -> Result<Option<Claim>, RelayError> {
        let queue_url = &self.queues[queue];
        let Some((body, receipt)) = self
            .receive(queue_url, wait_secs, visibility_ms.div_ceil(1000))
            .await?
        else {
            return Ok(None);
        };
        match self
            .take(&body, receipt, lease, visibility_ms, max_attempts)
            .await?
        {
            Taken::Claim(claim) => Ok(Some(*claim)),
            Taken::Deleted | Taken::Hidden => Ok(None),
        }
    }

    /// The queue a message delivered by SQS to a Lambda function came from, by the queue's
    /// ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`): one of the job queues, the callbacks queue, or
    /// none of this store's.
    pub fn queue_of_arn(&self, arn: &str) -> Option<DeliveredFrom> {
        let name = arn.rsplit(':').next()?;
        let named = |url: &str| url.rsplit('/').next() == Some(name);
        if let Some(url) = self.queues.iter().find(|url| named(url)) {
            return Some(DeliveredFrom::Jobs(url.clone()));
        }
        named(&self.callbacks_queue).then(|| DeliveredFrom::Callbacks(self.callbacks_queue.clone()))
    }

    /// Takes the job a received message names (with one conditional write), or says what became
    /// of the message: deleted (its job ended, or it names none), or hidden until its job may
    /// be taken (not due yet, held by a live worker, taken by another worker first, or not
    /// stored yet).
    pub async fn take(
        &self,
        body: &str,
        receipt: Receipt,
        lease: &str,
        visibility_ms: u64,
        max_attempts: u32,
    ) -> Result<Taken, RelayError> {
        let Some(message) = self.message_of(body, &receipt).await? else {
            return Ok(Taken::Deleted);
        };
        let now = now_ms();
        let Some(item) = self.item(&message.job_id).await? else {
            if now.saturating_sub(message.sent_ms) > ORPHAN_GRACE_MS {
                tracing::warn!(job_id = %message.job_id, "a queued job was never stored; its message is dropped");
                self.delete(&receipt).await?;
                return Ok(Taken::Deleted);
            }
            // Its submission may still be storing it.
            self.hide(&receipt, 5_000).await?;
            return Ok(Taken::Hidden);
        };
        let job = record_of(&item)?;
        let lease_until = number(&item, "lease_until_ms").unwrap_or(0);
        let run_after = number(&item, "run_after_ms").unwrap_or(0);
        match job.status {
            status if status.is_final() => {
                if status != JobStatus::Cancelled && !item.contains_key("announced") {
                    // Its worker stopped between the end and its notices.
                    self.announce(&job).await?;
                }
                self.delete(&receipt).await?;
                return Ok(Taken::Deleted);
            }
            JobStatus::Queued if run_after > now => {
                self.hide(&receipt, run_after - now).await?;
                return Ok(Taken::Hidden);
            }
            JobStatus::Running if lease_until >= now => {
                self.hide(&receipt, lease_until - now + 1_000).await?;
                return Ok(Taken::Hidden);
            }
            _ => {}
        }
        let taken = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("id", text(&job.id))
            .update_expression(
                "SET job_status = :running, attempt_count = attempt_count + :one, \
                 lease_id = :lease, lease_until_ms = :until, \
                 started_ms = if_not_exists(started_ms, :now)",
            )
            .condition_expression(
                "(job_status = :queued AND run_after_ms <= :now) \
                 OR (job_status = :running AND lease_until_ms < :now)",
            )
            .expression_attribute_values(":running", text(JobStatus::Running.as_str()))
            .expression_attribute_values(":queued", text(JobStatus::Queued.as_str()))
            .expression_attribute_values(":one", num(1))
            .expression_attribute_values(":lease", text(lease))
            .expression_attribute_values(":until", num(now + visibility_ms))
            .expression_attribute_values(":now", num(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let taken = match taken {
            Ok(taken) => taken,
            // Another worker took it first: its message comes back when that hold runs out.
            Err(err) if is_condition_failure(&err) => return Ok(Taken::Hidden),
            Err(err) => return Err(dynamo_failed("UpdateItem (claim)")(err)),
        };
        let job = record_of(taken.attributes().unwrap_or(&HashMap::new()))?;
        let claim = Claim {
            job,
            lease: lease.to_string(),
            receipt: Some(receipt),
        };
        if claim.job.attempts > max_attempts {
            // Its last attempt died with its worker.
            let error = JobError {
                code: "worker_lost".into(),
                message: format!(
                    "every one of its {max_attempts} attempts ended without an answer (the worker stopped)"
                ),
            };
            self.fail(&claim, error, AfterFailure::End(JobStatus::DeadLetter))
                .await?;
            return Ok(Taken::Deleted);
        }
        Ok(Taken::Claim(Box::new(claim)))
    }

    /// Renews the hold (and keeps the message hidden): whether the worker still holds the job.
    pub async fn heartbeat(&self, claim: &Claim, visibility_ms: u64) -> Result<bool, RelayError> {
        let renewed = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("id", text(&claim.job.id))
            .update_expression("SET lease_until_ms = :until")
            .condition_expression("lease_id = :lease AND job_status = :running")
            .expression_attribute_values(":until", num(now_ms() + visibility_ms))
            .expression_attribute_values(":lease", text(&claim.lease))
            .expression_attribute_values(":running", text(JobStatus::Running.as_str()))
            .send()
            .await;
        match renewed {
            Ok(_) => {}
            Err(err) if is_condition_failure(&err) => return Ok(false),
            Err(err) => return Err(dynamo_failed("UpdateItem (heartbeat)")(err)),
        }
        if let Some(receipt) = &claim.receipt
            && let Err(err) = self.hide(receipt, visibility_ms).await
        {
            // The table's hold decides; a message seen again meanwhile is hidden by its receiver.
            tracing::warn!(job_id = %claim.job.id, error = %err, "cannot keep a held job's message hidden");
        }
        Ok(true)
    }

    /// Records progress while the worker holds the job.
    pub async fn progress(&self, claim: &Claim, progress: JobProgress) -> Result<(), RelayError> {
        let written = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("id", text(&claim.job.id))
            .update_expression("SET progress_done = :done, progress_total = :total")
            .condition_expression("lease_id = :lease AND job_status = :running")
            .expression_attribute_values(":done", num(u64::from(progress.done)))
            .expression_attribute_values(":total", num(u64::from(progress.total)))
            .expression_attribute_values(":lease", text(&claim.lease))
            .expression_attribute_values(":running", text(JobStatus::Running.as_str()))
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(err) if is_condition_failure(&err) => Ok(()),
            Err(err) => Err(dynamo_failed("UpdateItem (progress)")(err)),
        }
    }

    /// Ends the held job as completed; then its notices, then its message is deleted.
    pub async fn complete(&self, claim: &Claim) -> Result<bool, RelayError> {
        self.end(claim, JobStatus::Completed, None).await
    }

    /// Ends an attempt that failed: queued again (the message comes back when the retry is due)
    /// or ended.
    pub async fn fail(
        &self,
        claim: &Claim,
        error: JobError,
        after: AfterFailure,
    ) -> Result<bool, RelayError> {
        let at = match after {
            AfterFailure::End(status) => return self.end(claim, status, Some(error)).await,
            AfterFailure::RetryAt(at) => at,
        };
        let queued = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("id", text(&claim.job.id))
            .update_expression(
                "SET job_status = :queued, run_after_ms = :at, error_code = :code, \
                 error_message = :message REMOVE lease_id, lease_until_ms",
            )
            .condition_expression("lease_id = :lease AND job_status = :running")
            .expression_attribute_values(":queued", text(JobStatus::Queued.as_str()))
            .expression_attribute_values(":at", num(at))
            .expression_attribute_values(":code", text(error.code))
            .expression_attribute_values(":message", text(error.message))
            .expression_attribute_values(":lease", text(&claim.lease))
            .expression_attribute_values(":running", text(JobStatus::Running.as_str()))
            .send()
            .await;
        match queued {
            Ok(_) => {}
            Err(err) if is_condition_failure(&err) => return Ok(false),
            Err(err) => return Err(dynamo_failed("UpdateItem (retry)")(err)),
        }
        if let Some(receipt) = &claim.receipt {
            self.hide(receipt, at.saturating_sub(now_ms())).await?;
        }
        Ok(true)
    }

    /// Ends a held job with `status` (and `error`), and uncounts it for its key, in one
    /// transaction; then publishes its notices and deletes its message.
    async fn end(
        &self,
        claim: &Claim,
        status: JobStatus,
        error: Option<JobError>,
    ) -> Result<bool, RelayError> {
        let mut set = vec!["job_status = :status", "finished_ms = :now"];
        let mut remove = vec!["lease_id", "lease_until_ms"];
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("id", text(&claim.job.id))
            .condition_expression("lease_id = :lease AND job_status = :running")
            .expression_attribute_values(":status", text(status.as_str()))
            .expression_attribute_values(":now", num(now_ms()))
            .expression_attribute_values(":lease", text(&claim.lease))
            .expression_attribute_values(":running", text(JobStatus::Running.as_str()));
        match error {
            Some(error) => {
                set.extend(["error_code = :code", "error_message = :message"]);
                update = update
                    .expression_attribute_values(":code", text(error.code))
                    .expression_attribute_values(":message", text(error.message));
            }
            None => {
                set.push("progress_done = progress_total");
                remove.extend(["error_code", "error_message"]);
            }
        }
        if claim.job.request.callback_url.is_some() {
            set.push("callback_state = :pending");
            update = update.expression_attribute_values(":pending", text("pending"));
        }
        let update = update
            .update_expression(format!(
                "SET {} REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .build()
            .map_err(built)?;
        let ended = self
            .transact(
                vec![
                    TransactWriteItem::builder().update(update).build(),
                    TransactWriteItem::builder()
                        .update(self.uncount(&claim.job.key)?)
                        .build(),
                ],
                "TransactWriteItems (a job's end)",
            )
            .await?;
        if !ended {
            return Ok(false);
        }
        if let Some(item) = self.item(&claim.job.id).await? {
            self.announce(&record_of(&item)?).await?;
        }
        if let Some(receipt) = &claim.receipt {
            self.delete(receipt).await?;
        }
        Ok(true)
    }

    /// Cancels `key`'s job `id` if it has not ended (its message is deleted by whoever
    /// receives it next).
    pub async fn cancel(&self, key: &str, id: &str) -> Result<Option<JobRecord>, RelayError> {
        if !is_job_id(id) {
            return Ok(None);
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key("id", text(id))
            .update_expression(
                "SET job_status = :cancelled, finished_ms = :now REMOVE lease_id, lease_until_ms",
            )
            .condition_expression("key_name = :key AND job_status IN (:queued, :running)")
            .expression_attribute_values(":cancelled", text(JobStatus::Cancelled.as_str()))
            .expression_attribute_values(":now", num(now_ms()))
            .expression_attribute_values(":key", text(key))
            .expression_attribute_values(":queued", text(JobStatus::Queued.as_str()))
            .expression_attribute_values(":running", text(JobStatus::Running.as_str()))
            .build()
            .map_err(built)?;
        self.transact(
            vec![
                TransactWriteItem::builder().update(update).build(),
                TransactWriteItem::builder()
                    .update(self.uncount(key)?)
                    .build(),
            ],
            "TransactWriteItems (a cancel)",
        )
        .await?;
        self.get(key, id).await
    }

    /// Receives up to `limit` (at most 10) callbacks due, each hidden for `hold_ms`; waits up to
    /// `jobs.aws.wait_secs` for one.
    pub async fn due_callbacks(
        &self,
        limit: u32,
        hold_ms: u64,
    ) -> Result<Vec<DueCallback>, RelayError> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.callbacks_queue)
            .max_number_of_messages(i32::try_from(limit.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(self.wait_secs).unwrap_or(20))
            .visibility_timeout(hide_secs(hold_ms))
            .send()
            .await
            .map_err(sqs_failed("ReceiveMessage (callbacks)"))?;
        let mut due = Vec::new();
        for message in received.messages() {
            let receipt = Receipt {
                queue_url: self.callbacks_queue.clone(),
                handle: message.receipt_handle().unwrap_or_default().to_string(),
            };
            if let Some(callback) = self
                .callback_of(message.body().unwrap_or_default(), receipt)
                .await?
            {
                due.push(callback);
            }
        }
        Ok(due)
    }

    /// The callback a received message of the callbacks queue names, if it is still due; a
    /// message of a callback delivered or given up already (a repeated notice), or of no job,
    /// is deleted (`None`).
    pub async fn callback_of(
        &self,
        body: &str,
        receipt: Receipt,
    ) -> Result<Option<DueCallback>, RelayError> {
        let Some(body) = self.message_of(body, &receipt).await? else {
            return Ok(None);
        };
        let item = self.item(&body.job_id).await?;
        let job = item.as_ref().map(record_of).transpose()?;
        match job {
            Some(job) if job.callback.as_ref().is_some_and(|c| c.0 == "pending") => {
                let Some(url) = job.request.callback_url.clone() else {
                    self.delete(&receipt).await?;
                    return Ok(None);
                };
                let attempts = job.callback.as_ref().map_or(0, |c| c.1);
                Ok(Some(DueCallback {
                    job,
                    url,
                    attempts,
                    receipt: Some(receipt),
                }))
            }
            _ => {
                self.delete(&receipt).await?;
                Ok(None)
            }
        }
    }

    /// Records a delivery; the message is deleted, or hidden until the next try.
    pub async fn delivered(
        &self,
        callback: &DueCallback,
        outcome: Delivery,
    ) -> Result<(), RelayError> {
        let state = match outcome {
            Delivery::Delivered => "delivered",
            Delivery::Failed => "failed",
            Delivery::RetryAt(_) => "pending",
        };
        self.dynamo
            .update_item()
            .table_name(&self.table)
            .key("id", text(&callback.job.id))
            .update_expression(
                "SET callback_state = :state, callback_attempts = callback_attempts + :one",
            )
            .expression_attribute_values(":state", text(state))
            .expression_attribute_values(":one", num(1))
            .send()
            .await
            .map_err(dynamo_failed("UpdateItem (callback)"))?;
        let Some(receipt) = &callback.receipt else {
            return Ok(());
        };
        match outcome {
            Delivery::RetryAt(at) => self.hide(receipt, at.saturating_sub(now_ms())).await,
            Delivery::Delivered | Delivery::Failed => self.delete(receipt).await,
        }
    }

    /// After a job ended: its notice on the topic and its callback queued, then the job marked
    /// `announced` (a job whose worker stopped before that is announced by whoever receives its
    /// message next: at least once).
    async fn announce(&self, job: &JobRecord) -> Result<(), RelayError> {
        if let Some(topic) = &self.topic_arn {
            let status = serde_json::to_string(&super::info(job))
                .map_err(|err| RelayError::Internal(format!("a job's status as JSON: {err}")))?;
            let attribute = |value: &str| {
                aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(built)
            };
            self.sns
                .publish()
                .topic_arn(topic)
                .message(status)
                .message_attributes("status", attribute(job.status.as_str())?)
                .message_attributes("job_id", attribute(&job.id)?)
                .send()
                .await
                .map_err(sns_failed("Publish"))?;
        }
        if job.request.callback_url.is_some() && job.status != JobStatus::Cancelled {
            let message = serde_json::to_string(&QueueMessage {
                job_id: job.id.clone(),
                sent_ms: now_ms(),
            })
            .map_err(|err| RelayError::Internal(format!("a queue message as JSON: {err}")))?;
            self.sqs
                .send_message()
                .queue_url(&self.callbacks_queue)
                .message_body(message)
                .send()
                .await
                .map_err(sqs_failed("SendMessage (callback)"))?;
        }
        self.dynamo
            .update_item()
            .table_name(&self.table)
            .key("id", text(&job.id))
            .update_expression("SET announced = :now")
            .expression_attribute_values(":now", num(now_ms()))
            .send()
            .await
            .map_err(dynamo_failed("UpdateItem (announced)"))?;
        Ok(())
    }

    /// The update that uncounts a job of `key` (in the transaction that ends it).
    fn uncount(&self, key: &str) -> Result<Update, RelayError> {
        Update::builder()
            .table_name(&self.table)
            .key("id", text(counter_id(key)))
            .update_expression("ADD unfinished :minus_one")
            .expression_attribute_values(":minus_one", AttributeValue::N("-1".into()))
            .build()
            .map_err(built)
    }

    /// Runs a transaction: `Ok(false)` when a condition of it failed; tried again when it met
    /// another transaction.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        operation: &'static str,
    ) -> Result<bool, RelayError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let written = self
                .dynamo
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match written {
                Ok(_) => return Ok(true),
                Err(err) => err,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                err.as_service_error()
            {
                let condition_failed = cancelled
                    .cancellation_reasons()
                    .iter()
                    .any(|reason| reason.code() == Some("ConditionalCheckFailed"));
                if condition_failed || cancelled.cancellation_reasons().is_empty() {
                    return Ok(false);
                }
                if tries < TRANSACTION_TRIES {
                    tokio::time::sleep(std::time::Duration::from_millis(
                        fastrand::u64(10..=50) * u64::from(tries),
                    ))
                    .await;
                    continue;
                }
            }
            return Err(dynamo_failed(operation)(err));
        }
    }

    /// An item of the table, read consistently.
    async fn item(&self, id: &str) -> Result<Option<HashMap<String, AttributeValue>>, RelayError> {
        Ok(self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key("id", text(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo_failed("GetItem"))?
            .item)
    }

    /// One message of `queue_url`, hidden for `hide_secs`: its body and receipt.
    async fn receive(
        &self,
        queue_url: &str,
        wait_secs: u32,
        hide_secs_for: u64,
    ) -> Result<Option<(String, Receipt)>, RelayError> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(1)
            .wait_time_seconds(i32::try_from(wait_secs).unwrap_or(20))
            .visibility_timeout(i32::try_from(hide_secs_for.min(MAX_HIDE_SECS)).unwrap_or(60))
            .send()
            .await
            .map_err(sqs_failed("ReceiveMessage"))?;
        Ok(received.messages().first().map(|message| {
            (
                message.body().unwrap_or_default().to_string(),
                Receipt {
                    queue_url: queue_url.to_string(),
                    handle: message.receipt_handle().unwrap_or_default().to_string(),
                },
            )
        }))
    }

    /// A message's body read; one that is not ours is deleted (`None`).
    async fn message_of(
        &self,
        body: &str,
        receipt: &Receipt,
    ) -> Result<Option<QueueMessage>, RelayError> {
        match serde_json::from_str::<QueueMessage>(body) {
            Ok(message) => Ok(Some(message)),
            Err(err) => {
                tracing::warn!(queue = %receipt.queue_url, error = %err, "a queue message that names no job is dropped");
                self.delete(receipt).await?;
                Ok(None)
            }
        }
    }

    /// Hides a received message for `ms` more (at most SQS's 12 hours).
    async fn hide(&self, receipt: &Receipt, ms: u64) -> Result<(), RelayError> {
        self.sqs
            .change_message_visibility()
            .queue_url(&receipt.queue_url)
            .receipt_handle(&receipt.handle)
            .visibility_timeout(hide_secs(ms))
            .send()
            .await
            .map(|_| ())
            .map_err(sqs_failed("ChangeMessageVisibility"))
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), RelayError> {
        self.sqs
            .delete_message()
            .queue_url(&receipt.queue_url)
            .receipt_handle(&receipt.handle)
            .send()
            .await
            .map(|_| ())
            .map_err(sqs_failed("DeleteMessage"))
    }
}

/// The queues in the order a claim looks at them: `high` first in five looks of eight, `normal`
/// in two, `low` in one — priorities are honoured, and a backlog of `high` jobs still leaves
/// `low` one look in eight.
fn look_order(look: u64) -> [usize; 3] {
    match look % 8 {
        7 => [2, 0, 1],
        5 | 6 => [1, 0, 2],
        _ => [0, 1, 2],
    }
}

fn queue_of(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// Seconds to hide a message for `ms` (rounded up, at most 12 hours).
fn hide_secs(ms: u64) -> i32 {
    i32::try_from(ms.div_ceil(1000).min(MAX_HIDE_SECS)).unwrap_or(i32::MAX)
}

/// The item that counts `key`'s unfinished jobs (job ids are hex: no clash).
fn counter_id(key: &str) -> String {
    format!("key#{key}")
}

/// A job's place in its key's index: its submission time, then its id (unique, ordered).
fn seq_of(created_ms: u64, id: &str) -> String {
    format!("{created_ms:013}-{id}")
}

fn is_job_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_seq(cursor: &str) -> bool {
    cursor.split_once('-').is_some_and(|(ms, id)| {
        ms.len() == 13 && ms.bytes().all(|b| b.is_ascii_digit()) && is_job_id(id)
    })
}

fn text(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn num(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn string<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

/// An item as a [`JobRecord`].
fn record_of(item: &HashMap<String, AttributeValue>) -> Result<JobRecord, RelayError> {
    let id = string(item, "id").unwrap_or_default().to_string();
    let unreadable = |reason: &'static str| RelayError::JobRecordUnreadable {
        id: id.clone(),
        reason,
    };
    let named =
        |name: &str| string(item, name).map(|value| serde_json::Value::String(value.into()));
    fn parse<T: serde::de::DeserializeOwned>(value: Option<serde_json::Value>) -> Option<T> {
        serde_json::from_value(value?).ok()
    }
    let request: JobRequest = string(item, "request_json")
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| unreadable("its request"))?;
    let counted = |name: &str| number(item, name).and_then(|n| u32::try_from(n).ok());
    Ok(JobRecord {
        key: string(item, "key_name")
            .ok_or_else(|| unreadable("its key"))?
            .to_string(),
        status: string(item, "job_status")
            .and_then(JobStatus::parse)
            .ok_or_else(|| unreadable("its status"))?,
        analysis: parse(named("analysis_type")).ok_or_else(|| unreadable("its analysis type"))?,
        priority: parse(named("priority_name")).ok_or_else(|| unreadable("its priority"))?,
        format: parse(named("doc_format")).ok_or_else(|| unreadable("its format"))?,
        request,
        document: string(item, "document_key")
            .ok_or_else(|| unreadable("its document"))?
            .to_string(),
        created_ms: number(item, "created_ms").ok_or_else(|| unreadable("its creation time"))?,
        started_ms: number(item, "started_ms"),
        finished_ms: number(item, "finished_ms"),
        attempts: counted("attempt_count").unwrap_or(0),
        progress: JobProgress {
            done: counted("progress_done").unwrap_or(0),
            total: counted("progress_total").unwrap_or(0),
        },
        error: string(item, "error_code").map(|code| JobError {
            code: code.to_string(),
            message: string(item, "error_message")
                .unwrap_or_default()
                .to_string(),
        }),
        lease: string(item, "lease_id").map(str::to_string),
        cursor: string(item, "seq").unwrap_or_default().to_string(),
        callback: string(item, "callback_state")
            .map(|state| (state.to_string(), counted("callback_attempts").unwrap_or(0))),
        id,
    })
}

fn is_condition_failure<R>(
    err: &SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError, R>,
) -> bool {
    err.as_service_error()
        .is_some_and(|e| e.is_conditional_check_failed_exception())
}

/// The queue named `name`'s URL (made first when `create`).
async fn queue_url(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    create: bool,
) -> Result<String, RelayError> {
    let url = match create {
        true => {
            sqs.create_queue()
                .queue_name(name)
                .send()
                .await
                .map_err(sqs_failed("CreateQueue"))?
                .queue_url
        }
        false => {
            sqs.get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(sqs_failed("GetQueueUrl"))?
                .queue_url
        }
    };
    url.ok_or_else(|| RelayError::Startup(format!("SQS gave no URL for the queue `{name}`")))
}

/// Makes the job table with its index (on-demand capacity), unless it is there, and waits until
/// it is active.
async fn create_table(dynamo: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), RelayError> {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(built)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(built)
    };
    let index = GlobalSecondaryIndex::builder()
        .index_name(BY_KEY)
        .key_schema(key("key_name", KeyType::Hash)?)
        .key_schema(key("seq", KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        )
        .build()
        .map_err(built)?;
    let created = dynamo
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute("id")?)
        .attribute_definitions(attribute("key_name")?)
        .attribute_definitions(attribute("seq")?)
        .key_schema(key("id", KeyType::Hash)?)
        .global_secondary_indexes(index)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) => {}
        Err(err) => return Err(dynamo_failed("CreateTable")(err)),
    }
    for _ in 0..120 {
        let described = dynamo
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(dynamo_failed("DescribeTable"))?;
        if described
            .table()
            .and_then(|table| table.table_status())
            .is_some_and(|status| *status == TableStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(RelayError::Startup(format!(
        "the DynamoDB table `{table}` did not become active within a minute"
    )))
}

/// Makes the bucket unless this account has it.
async fn create_bucket(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    region: &str,
) -> Result<(), RelayError> {
    let mut create = s3.create_bucket().bucket(bucket);
    if region != "us-east-1" {
        create = create.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
        {
            Ok(())
        }
        Err(source) => Err(RelayError::JobS3 {
            location: bucket.to_string(),
            source: Box::new(source.into()),
        }),
    }
}

fn built(source: aws_smithy_types::error::operation::BuildError) -> RelayError {
    RelayError::JobAwsRequest { source }
}

fn sqs_failed<E, R>(
    operation: &'static str,
) -> impl FnOnce(aws_sdk_sqs::error::SdkError<E, R>) -> RelayError
where
    aws_sdk_sqs::Error: From<aws_sdk_sqs::error::SdkError<E, R>>,
{
    move |source| RelayError::JobQueue {
        operation,
        source: Box::new(source.into()),
    }
}

fn dynamo_failed<E, R>(operation: &'static str) -> impl FnOnce(SdkError<E, R>) -> RelayError
where
    aws_sdk_dynamodb::Error: From<SdkError<E, R>>,
{
    move |source| RelayError::JobTable {
        operation,
        source: Box::new(source.into()),
    }
}

fn sns_failed<E, R>(
    operation: &'static str,
) -> impl FnOnce(aws_sdk_sns::error::SdkError<E, R>) -> RelayError
where
    aws_sdk_sns::Error: From<aws_sdk_sns::error::SdkError<E, R>>,
{
    move |source| RelayError::JobNotice {
        operation,
        source: Box::new(source.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priority_leads_some_looks() {
        let firsts: Vec<usize> = (0..8).map(|look| look_order(look)[0]).collect();
        assert_eq!(firsts.iter().filter(|&&q| q == 0).count(), 5);
        assert_eq!(firsts.iter().filter(|&&q| q == 1).count(), 2);
        assert_eq!(firsts.iter().filter(|&&q| q == 2).count(), 1);
        for look in 0..8 {
            let mut order = look_order(look);
            order.sort_unstable();
            assert_eq!(order, [0, 1, 2], "each look sees every queue");
        }
    }

    #[test]
    fn cursors_and_ids_are_checked() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(is_job_id(id));
        assert!(!is_job_id("key#alice"));
        let seq = seq_of(1_700_000_000_000, id);
        assert!(is_seq(&seq));
        assert!(seq_of(999, id) < seq, "older sorts first");
        assert!(!is_seq("42"));
        assert!(!is_seq(&format!("1700000000000-{}", "x".repeat(32))));
        assert_eq!(hide_secs(1), 1);
        assert_eq!(hide_secs(0), 0);
        assert_eq!(hide_secs(u64::MAX), 43_200);
    }
}
