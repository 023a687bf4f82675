//! [`ChatEventStream`]: a provider stream turned into the client-facing event sequence —
//! `start`, text deltas and usage as they arrive, then exactly one terminal event.
//!
//! Each read of the upstream waits for the earliest of: the total deadline, the first-token
//! deadline (until a token arrived), and the idle timeout since the last upstream event. One timer
//! per stream serves all three: it is moved only when the next deadline comes earlier than it is
//! set, and when it fires early (activity pushed the idle deadline back) it is re-armed — so a
//! burst of tokens costs no timer work at all.
//!
//! A stream that ends without the upstream's stop event ends with an `upstream_error` event,
//! never `done`: a truncated answer is not a success. Dropping the stream (the client went away)
//! drops the upstream call with it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use fm_protocol::{StopReason, StreamEvent, Timings, Usage};
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::breaker::Permit;
use super::{DeadlineKind, Executor, RequestContext, earliest, route_info};
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::{ProviderEvent, ProviderStream};
use crate::routing::RouteDecision;
use crate::shutdown::Phase;
use crate::telemetry::Outcome;

/// The state of one streaming answer.
struct StreamState {
    upstream: ProviderStream,
    /// The breaker's leave for this call, settled when the stream ends (dropped unsettled when
    /// the client leaves first).
    permit: Option<Permit>,
    /// Fires at (or before) the earliest deadline; see the module docs.
    timer: Pin<Box<tokio::time::Sleep>>,
    shutdown: watch::Receiver<Phase>,
    ctx: RequestContext,
    decision: RouteDecision,
    executor: Executor,
    first_token_deadline: Instant,
    /// Upstream calls it took to open the stream.
    attempts: u32,
    last_activity: Instant,
    started: bool,
    finished: bool,
    ttft_ms: Option<f64>,
    usage: Option<Usage>,
    stop: Option<StopReason>,
}

/// The client-facing events of one streaming answer.
pub struct ChatEventStream {
    inner: Pin<Box<dyn Stream<Item = StreamEvent> + Send>>,
}

impl std::fmt::Debug for ChatEventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatEventStream").finish_non_exhaustive()
    }
}

impl ChatEventStream {
    pub(super) fn new(
        upstream: ProviderStream,
        permit: Permit,
        ctx: RequestContext,
        decision: RouteDecision,
        executor: Executor,
        first_token_deadline: Instant,
        attempts: u32,
    ) -> Self {
        let shutdown = executor.shutdown().subscribe();
        let state = StreamState {
            upstream,
            permit: Some(permit),
            timer: Box::pin(tokio::time::sleep_until(first_token_deadline.into())),
            shutdown,
            ctx,
            decision,
            executor,
            first_token_deadline,
            attempts,
            last_activity: Instant::now(),
            started: false,
            finished: false,
            ttft_ms: None,
            usage: None,
            stop: None,
        };
        let inner = futures_util::stream::unfold(state, |mut state| async move {
            let event = state.next_event().await?;
            Some((event, state))
        });
        ChatEventStream {
            // Fused: polling again after the end yields `None` again (batching writers do).
            inner: Box::pin(inner.fuse()),
        }
    }
}

impl Stream for ChatEventStream {
    type Item = StreamEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// What one wait on the upstream produced.
enum Step {
    Event(Option<Result<ProviderEvent, RelayError>>),
    Deadline(DeadlineKind),
    Stopped,
}

impl StreamState {
    async fn next_event(&mut self) -> Option<StreamEvent> {
        if self.finished {
            return None;
        }
        if !self.started {
            self.started = true;
            return Some(StreamEvent::Start {
                request_id: self.ctx.request_id.clone(),
                model: self.decision.model.config.id.clone(),
            });
        }
        loop {
            let step = self.wait_upstream().await;
            let event = match step {
                Step::Event(Some(Ok(event))) => {
                    self.last_activity = Instant::now();
                    match event {
                        ProviderEvent::TextDelta(text) => {
                            self.ttft_ms.get_or_insert_with(|| self.ctx.elapsed_ms());
                            StreamEvent::TextDelta { text }
                        }
                        ProviderEvent::Usage(usage) => {
                            self.usage = Some(usage);
                            StreamEvent::Usage { usage }
                        }
                        ProviderEvent::Stop(reason) => {
                            self.stop = Some(reason);
                            continue;
                        }
                    }
                }
                Step::Event(None) => self.finish_at_end(),
                Step::Event(Some(Err(err))) => self.fail(err),
                Step::Deadline(kind) => {
                    let err = self.executor.deadline_error(kind, &self.decision);
                    self.fail(err)
                }
                Step::Stopped => self.fail(RelayError::ShuttingDown),
            };
            return Some(event);
        }
    }

    /// The earliest deadline that applies now.
    fn next_deadline(&self) -> (Instant, DeadlineKind) {
        let total = (
            self.ctx.received + self.executor.timeouts.total(),
            DeadlineKind::Total,
        );
        let idle = (
            self.last_activity + self.executor.timeouts.idle(),
            DeadlineKind::Idle,
        );
        if self.ttft_ms.is_none() {
            earliest(&[
                total,
                idle,
                (self.first_token_deadline, DeadlineKind::FirstToken),
            ])
        } else {
            earliest(&[total, idle])
        }
    }

    async fn wait_upstream(&mut self) -> Step {
        loop {
            let (deadline, kind) = self.next_deadline();
            if deadline <= Instant::now() {
                return Step::Deadline(kind);
            }
            let deadline = tokio::time::Instant::from(deadline);
            if self.timer.is_elapsed() || self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|phase| *phase >= Phase::Stopped) => return Step::Stopped,
                item = self.upstream.next() => return Step::Event(item),
                // Early or on time: the loop decides which.
                () = self.timer.as_mut() => {}
            }
        }
    }

    /// The upstream ended: `done` if it said why, an error if it was cut off.
    fn finish_at_end(&mut self) -> StreamEvent {
        match self.stop {
            Some(stop_reason) => {
                self.finished = true;
                if let Some(permit) = self.permit.take() {
                    permit.success();
                }
                let total_ms = self.ctx.elapsed_ms();
                self.executor.record(
                    &self.decision,
                    Outcome {
                        ok: true,
                        ttft_ms: self.ttft_ms,
                        total_ms,
                    },
                );
                StreamEvent::Done {
                    stop_reason,
                    usage: self.usage.unwrap_or_default(),
                    timings: Timings {
                        ttft_ms: self.ttft_ms,
                        total_ms,
                    },
                    route: route_info(&self.decision, self.attempts),
                }
            }
            None => {
                let err = self.decision.model.upstream_error(
                    UpstreamFailure::Protocol,
                    "the stream ended before the answer was complete".into(),
                );
                self.fail(err)
            }
        }
    }

    fn fail(&mut self, err: RelayError) -> StreamEvent {
        self.finished = true;
        if matches!(
            err,
            RelayError::Upstream {
                failure: UpstreamFailure::Throttled,
                ..
            }
        ) {
            // Throttling inside the stream slows the target down like throttling before it.
            self.decision.model.limiter.update(true);
        }
        if let Some(permit) = self.permit.take() {
            permit.failure(&err);
        }
        self.executor.record(
            &self.decision,
            Outcome {
                ok: false,
                ttft_ms: self.ttft_ms,
                total_ms: self.ctx.elapsed_ms(),
            },
        );
        tracing::warn!(request_id = %self.ctx.request_id, error = %err, "stream failed");
        err.to_event()
    }
}
