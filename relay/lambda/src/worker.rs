//! The job worker function: an SQS event source mapping on the job queues (and the callbacks
//! queue) delivers a batch of messages per invocation; each runs through
//! [`fm_relay::jobs::Jobs::handle_delivery`] — the same code as the relay's own workers: one
//! attempt of the message's job, its hold renewed and its message kept hidden for
//! `jobs.visibility_timeout_secs`, its result stored, its notice published, its message
//! deleted when the job ends. The answer lists the messages that are due again (a failed attempt
//! with attempts left, a job not due yet, a callback to try again) as the batch's item failures,
//! so SQS keeps those alone (the mapping needs `ReportBatchItemFailures`); a job whose attempts
//! are spent ends dead-lettered by the relay itself.
//!
//! The invocation's deadline is honoured: [`GIVE_BACK_MARGIN`] before it, the jobs still running
//! stop and are given back at once, due again for the next invocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use fm_relay::RelayConfig;
use fm_relay::api::jobs::JobCalls;
use fm_relay::jobs::{AfterDelivery, Jobs, ModelCalls, QueueDelivery};
use fm_relay::shutdown::{Phase, Shutdown};
use futures_util::StreamExt;
use lambda_runtime::{LambdaEvent, service_fn};

use crate::error::LambdaError;

/// How long before the invocation's deadline running jobs are given back: time for the writes
/// that give a job back (a table update, the message shown again) and the answer.
pub const GIVE_BACK_MARGIN: Duration = Duration::from_secs(5);

/// Assembles the relay's job service and runs the batches the Lambda runtime delivers.
pub async fn serve(config: RelayConfig, started: Instant) -> Result<(), LambdaError> {
    let concurrency = config.jobs.workers.max(1);
    let fm_relay::server::Assembled {
        state,
        simulator: _simulator,
        ..
    } = crate::assemble(config).await?;
    let jobs = state.jobs().cloned().ok_or(LambdaError::UnfitSetting {
        setting: "jobs.enabled",
        why: "the job worker function needs jobs.enabled = true",
    })?;
    let calls: Arc<dyn ModelCalls> = Arc::new(JobCalls(state.downgrade()));
    tracing::info!(
        init_ms = started.elapsed().as_millis() as u64,
        concurrency,
        "fm-relay-lambda: the job worker function is ready"
    );
    let handler = service_fn(|event: LambdaEvent<SqsEvent>| {
        let (jobs, calls) = (jobs.clone(), calls.clone());
        async move {
            let time_left = time_left(event.context.deadline, since_epoch());
            Ok::<_, std::convert::Infallible>(
                handle_batch(&jobs, &calls, event.payload, time_left, concurrency).await,
            )
        }
    });
    lambda_runtime::run(handler)
        .await
        .map_err(LambdaError::Runtime)
}

/// The longest a Lambda invocation may run.
const MAX_INVOCATION: Duration = Duration::from_secs(15 * 60);

fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The invocation's time left at `now` (since the Unix epoch), from its deadline: Lambda gives
/// the deadline in milliseconds since the epoch; `cargo lambda watch` gives the time allowed
/// instead, a value no deadline since the epoch can have (at most Lambda's 15 minutes).
fn time_left(deadline_ms: u64, now: Duration) -> Duration {
    let deadline = Duration::from_millis(deadline_ms);
    match deadline <= MAX_INVOCATION {
        true => deadline,
        false => deadline.saturating_sub(now),
    }
}

/// Handles a batch, `concurrency` messages at a time, until [`GIVE_BACK_MARGIN`] before the
/// invocation's `time_left` runs out: the messages due again as the answer's item failures.
async fn handle_batch(
    jobs: &Jobs,
    calls: &Arc<dyn ModelCalls>,
    event: SqsEvent,
    time_left: Duration,
    concurrency: usize,
) -> SqsBatchResponse {
    let stop = Shutdown::default();
    let time_left = time_left.saturating_sub(GIVE_BACK_MARGIN);
    tracing::info!(
        messages = event.records.len(),
        give_back_in_ms = time_left.as_millis() as u64,
        "a batch of messages"
    );
    let give_back = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(time_left).await;
            tracing::warn!("the invocation's time runs out: the jobs still running are given back");
            stop.advance(Phase::Stopped);
        })
    };
    let outcomes: Vec<(String, AfterDelivery)> = futures_util::stream::iter(event.records)
        .filter_map(|record| async move { delivery_of(record) })
        .map(|(message_id, delivery)| {
            let (calls, stop) = (calls.clone(), &stop);
            async move {
                let after = match jobs.handle_delivery(calls, &delivery, stop).await {
                    Ok(after) => after,
                    Err(err) => {
                        tracing::error!(%message_id, error = %err, "a delivered message could not be handled; it is due again");
                        AfterDelivery::Again
                    }
                };
                (message_id, after)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    give_back.abort();
    let mut response = SqsBatchResponse::default();
    for (message_id, after) in outcomes {
        if after == AfterDelivery::Again {
            response.add_failure(message_id);
        }
    }
    response
}

/// A record's message id and what the relay needs of it; a record without an id cannot be
/// reported and is left to SQS (logged).
fn delivery_of(record: SqsMessage) -> Option<(String, QueueDelivery)> {
    let Some(message_id) = record.message_id else {
        tracing::error!("an SQS record without a message id is ignored");
        return None;
    };
    let delivery = QueueDelivery {
        queue_arn: record.event_source_arn.unwrap_or_default(),
        body: record.body.unwrap_or_default(),
        receipt_handle: record.receipt_handle.unwrap_or_default(),
    };
    Some((message_id, delivery))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_reads_a_deadline_or_the_emulators_allowance() {
        let now = Duration::from_millis(1_796_495_959_507);
        // Lambda: ms since the epoch.
        assert_eq!(
            time_left(1_796_495_959_507 + 30_000, now),
            Duration::from_secs(30)
        );
        assert_eq!(time_left(1_796_495_959_000, now), Duration::ZERO);
        // cargo lambda watch: the time allowed.
        assert_eq!(time_left(600_000, now), Duration::from_secs(600));
    }
}
