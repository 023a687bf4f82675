//! Running a routed request against its upstream under deadlines.
//!
//! Every request has a total deadline from its arrival; a stream also has a first-token deadline
//! and an idle timeout on every read (the Bedrock SDK detects no stall on event streams). Calls
//! that the upstream refused for now (throttled, unavailable) are retried ([`retry`]), and each
//! target has a circuit breaker ([`breaker`]) that fails calls fast while it is unhealthy, and an
//! adaptive rate limiter ([`rate_limit`]) that slows calls down once the target throttles. The
//! [`Executor`] applies all of this around the provider calls and turns a provider stream into the
//! client-facing [`StreamEvent`](fm_protocol::StreamEvent) sequence ([`stream::ChatEventStream`]),
//! which never ends a truncated answer as a success.

pub mod breaker;
pub mod rate_limit;
pub mod retry;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use fm_protocol::{ChatRequest, ChatResponse, ResponseSource, RouteInfo, Timings};

use crate::config::{RetryConfig, TimeoutConfig};
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::ChatProvider;
use crate::routing::{ModelEntry, RouteDecision};
use crate::shutdown::Shutdown;
use crate::telemetry::{LiveWindow, Outcome};
use breaker::Permit;

pub use retry::{Attempted, Retrier};
pub use stream::ChatEventStream;

/// One request's identity and clock.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// When the relay received the request: every timing is measured from here.
    pub received: Instant,
}

impl RequestContext {
    pub fn new(request_id: String) -> Self {
        RequestContext {
            request_id,
            received: Instant::now(),
        }
    }

    pub fn elapsed_ms(&self) -> f64 {
        self.received.elapsed().as_secs_f64() * 1000.0
    }
}

/// Runs requests against providers under the configured deadlines and retry policy.
#[derive(Debug, Clone)]
pub struct Executor {
    timeouts: TimeoutConfig,
    /// Shared by every request: its budget bounds retries across all of them.
    retrier: Arc<Retrier>,
    /// Where every request's outcome is recorded.
    window: Arc<LiveWindow>,
    shutdown: Shutdown,
}

/// Which deadline ends a wait first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadlineKind {
    Total,
    FirstToken,
    Idle,
}

impl Executor {
    pub fn new(
        timeouts: TimeoutConfig,
        retry: RetryConfig,
        window: Arc<LiveWindow>,
        shutdown: Shutdown,
    ) -> Self {
        Executor {
            timeouts,
            retrier: Arc::new(Retrier::new(retry)),
            window,
            shutdown,
        }
    }

    /// Records how a request to `decision`'s model ended.
    pub(crate) fn record(&self, decision: &RouteDecision, outcome: Outcome) {
        self.window.record(&decision.model.config.id, outcome);
    }

    fn total_deadline(&self, ctx: &RequestContext) -> Instant {
        ctx.received + self.timeouts.total()
    }

    /// One-shot answer, with retries, under the total deadline.
    pub async fn complete(
        &self,
        ctx: &RequestContext,
        decision: &RouteDecision,
        request: &ChatRequest,
    ) -> Result<ChatResponse, RelayError> {
        let entry = &decision.model;
        let deadline = self.total_deadline(ctx).into();
        let calls = self.retrier.run(deadline, |_| async {
            let (answer, permit) = guarded_call(entry, deadline, || {
                entry.provider.complete(entry.config.upstream_id(), request)
            })
            .await?;
            permit.success();
            Ok(answer)
        });
        let answered = settle(
            tokio::time::timeout_at(deadline, calls)
                .await
                .map_err(|_| RelayError::DeadlineExceeded(self.timeouts.total())),
        );
        self.record(
            decision,
            Outcome {
                ok: answered.is_ok(),
                ttft_ms: None,
                total_ms: ctx.elapsed_ms(),
            },
        );
        let (answer, attempts) = answered?;
        Ok(ChatResponse {
            request_id: ctx.request_id.clone(),
            model: entry.config.id.clone(),
            text: answer.text,
            stop_reason: answer.stop_reason,
            usage: answer.usage,
            route: route_info(decision, attempts),
            timings: Timings {
                ttft_ms: None,
                total_ms: ctx.elapsed_ms(),
            },
        })
    }

    /// Opens the upstream stream, with retries (so that failures before the first event are
    /// ordinary HTTP errors), and returns the client-facing event stream, which starts with
    /// `start`.
    pub async fn open_stream(
        &self,
        ctx: RequestContext,
        decision: RouteDecision,
        request: &ChatRequest,
    ) -> Result<ChatEventStream, RelayError> {
        let entry = &decision.model;
        let first_token_deadline = ctx.received + self.timeouts.first_token();
        let (deadline, kind) = earliest(&[
            (self.total_deadline(&ctx), DeadlineKind::Total),
            (first_token_deadline, DeadlineKind::FirstToken),
        ]);
        let deadline = deadline.into();
        // The stream's end settles the breaker's permit.
        let opens = self.retrier.run(deadline, |_| {
            guarded_call(entry, deadline, || {
                entry
                    .provider
                    .open_stream(entry.config.upstream_id(), request)
            })
        });
        let opened = settle(
            tokio::time::timeout_at(deadline, opens)
                .await
                .map_err(|_| self.deadline_error(kind, &decision)),
        );
        let ((upstream, permit), attempts) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                self.record(
                    &decision,
                    Outcome {
                        ok: false,
                        ttft_ms: None,
                        total_ms: ctx.elapsed_ms(),
                    },
                );
                return Err(err);
            }
        };
        Ok(ChatEventStream::new(
            upstream,
            permit,
            ctx,
            decision,
            self.clone(),
            first_token_deadline,
            attempts,
        ))
    }

    /// The error for a passed deadline.
    pub(crate) fn deadline_error(
        &self,
        kind: DeadlineKind,
        decision: &RouteDecision,
    ) -> RelayError {
        let (failure, message) = match kind {
            DeadlineKind::Total => return RelayError::DeadlineExceeded(self.timeouts.total()),
            DeadlineKind::FirstToken => (
                UpstreamFailure::Timeout,
                format!("no first token within {:?}", self.timeouts.first_token()),
            ),
            DeadlineKind::Idle => (
                UpstreamFailure::Stalled,
                format!(
                    "the stream stalled: nothing received for {:?}",
                    self.timeouts.idle()
                ),
            ),
        };
        decision.model.upstream_error(failure, message)
    }

    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

/// One call to `entry` under its breaker and rate limiter: waits for the limiter, makes the call,
/// feeds the outcome to the limiter, and on failure to the breaker. On success the breaker's
/// permit is returned unsettled, for the caller to settle when the answer is complete.
async fn guarded_call<T, Fut>(
    entry: &ModelEntry,
    deadline: tokio::time::Instant,
    call: impl FnOnce() -> Fut,
) -> Result<(T, Permit), RelayError>
where
    Fut: std::future::Future<Output = Result<T, RelayError>>,
{
    let permit = entry.breaker.acquire()?;
    entry.limiter.acquire(deadline).await?;
    let result = call().await;
    entry.limiter.observe(&result);
    match result {
        Ok(value) => Ok((value, permit)),
        Err(err) => {
            permit.failure(&err);
            Err(err)
        }
    }
}

/// A retried call bounded by a deadline, as its value and the attempts it took; a final error
/// says how many attempts were made.
fn settle<T>(bounded: Result<Attempted<T>, RelayError>) -> Result<(T, u32), RelayError> {
    let attempted = bounded?;
    let attempts = attempted.attempts;
    attempted
        .result
        .map(|value| (value, attempts))
        .map_err(|err| err.after_attempts(attempts))
}

/// The earliest of several deadlines, with its kind.
pub(crate) fn earliest(deadlines: &[(Instant, DeadlineKind)]) -> (Instant, DeadlineKind) {
    deadlines
        .iter()
        .copied()
        .min_by_key(|(at, _)| *at)
        .unwrap_or((Instant::now(), DeadlineKind::Total))
}

/// How the answer was reached.
pub(crate) fn route_info(decision: &RouteDecision, attempts: u32) -> RouteInfo {
    let entry = &decision.model;
    RouteInfo {
        model: entry.config.id.clone(),
        provider: entry.provider.kind().to_string(),
        region: entry.provider.location().to_string(),
        source: ResponseSource::Primary,
        attempts,
        reason: decision.reason.clone(),
    }
}
