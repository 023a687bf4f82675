//! [`ChatEventStream`]: a request's plan walked into the client-facing event sequence — `start`,
//! text deltas and usage as they arrive, `failover` when another target takes over mid-answer,
//! then exactly one terminal event.
//!
//! **Walking the plan.** [`Walk`] opens the next target that may answer: it skips targets whose
//! context window is not larger than one that already found the conversation too long, retries
//! a target that said "not now" ([`Retrier`](super::Retrier)), and moves on after any other
//! upstream failure, a first-token deadline that passed, or an open circuit. A client error (the
//! upstream rejected the request itself) and the total deadline end the walk at once.
//!
//! **Breaks.** Before any text reached the client, a failure moves on silently. After text was
//! sent, the next target continues from the partial answer as an assistant prefill when its model
//! accepts one (a prefill the upstream refuses is retried once as a restart), otherwise it starts
//! again and a `failover` event with `discard_partial` tells the client to drop what it has. When
//! no target is left the stream ends with the typed error of the last failure — or, if no text was
//! sent yet and degradation is on, with the configured degraded answer, marked as such. A stream
//! that ends without the upstream's stop event is a failure like any other: a truncated answer is
//! never a success.
//!
//! **Timers.** Each read waits for the earliest of: the total deadline, the current target's
//! first-token deadline (until it sent text), and the idle timeout since the last upstream event.
//! One timer per stream serves all three: it is moved only when the next deadline comes earlier
//! than it is set, and when it fires early (activity pushed the idle deadline back) it is re-armed
//! — so a burst of tokens costs no timer work at all. Dropping the stream (the client went away)
//! drops the upstream call with it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use fm_protocol::{
    ChatRequest, ChatResponse, Message, ResponseSource, RouteInfo, StopReason, StreamEvent,
    Timings, Usage,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::breaker::Permit;
use super::{DeadlineKind, Executor, RequestContext, earliest, guarded_call, outcome};
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::{ChatProvider, ProviderEvent, ProviderStream};
use crate::routing::{PlanStep, RouteDecision};
use crate::shutdown::Phase;

/// The walk through a request's plan: which step comes next, and what the steps so far taught.
struct Walk {
    executor: Executor,
    ctx: RequestContext,
    decision: RouteDecision,
    request: ChatRequest,
    next_step: usize,
    /// Targets whose model's context window is not larger than this are skipped: a model with
    /// this window found the conversation too long.
    too_long_for: u32,
    /// An upstream refused a prefill: continue by restarting from now on.
    prefill_refused: bool,
    /// Upstream calls made so far, failed ones included.
    attempts: u32,
    /// The failure that made the walk move on last.
    last_error: Option<RelayError>,
}

/// A target that accepted the call, and what it has sent so far.
struct Attempt {
    step: PlanStep,
    upstream: ProviderStream,
    /// The breaker's leave for this call, settled when the call ends (dropped unsettled when the
    /// client leaves first).
    permit: Option<Permit>,
    first_token_deadline: Instant,
    /// Whether this call continues the partial answer from a prefill.
    continues: bool,
    /// Whitespace cut from the end of the prefill (upstreams refuse a prefill that ends in
    /// whitespace); the client has it already, so it is dropped if the continuation repeats it.
    sent_whitespace: String,
    got_text: bool,
    stop: Option<StopReason>,
    usage: Option<Usage>,
}

impl Attempt {
    /// A text delta as the client should see it.
    fn client_text(&mut self, text: String) -> String {
        if self.sent_whitespace.is_empty() {
            return text;
        }
        let whitespace = std::mem::take(&mut self.sent_whitespace);
        match text.strip_prefix(whitespace.as_str()) {
            Some(rest) => rest.to_string(),
            None => text,
        }
    }
}

/// `request` with `partial` as the assistant's prefill, and the trailing whitespace cut from it;
/// `None` when the partial answer is only whitespace.
fn prefilled(request: &ChatRequest, partial: &str) -> Option<(ChatRequest, String)> {
    let trimmed = partial.trim_end();
    if trimmed.is_empty() {
        return None;
    }
    let mut continued = request.clone();
    continued.messages.push(Message::assistant(trimmed));
    Some((continued, partial[trimmed.len()..].to_string()))
}

impl Walk {
    /// Opens the next target of the plan that accepts the call; `partial` is the text the client
    /// already has.
    async fn open_next(&mut self, partial: &str) -> Result<Attempt, RelayError> {
        let timeouts = self.executor.timeouts;
        let total = self.ctx.received + timeouts.total();
        while let Some(step) = self.decision.plan.get(self.next_step).cloned() {
            self.next_step += 1;
            if step.model.config.context_window <= self.too_long_for {
                continue;
            }
            let now = Instant::now();
            if total <= now {
                return Err(RelayError::DeadlineExceeded(timeouts.total()));
            }
            let first_token_deadline = now + timeouts.first_token();
            let (deadline, kind) = earliest(&[
                (total, DeadlineKind::Total),
                (first_token_deadline, DeadlineKind::FirstToken),
            ]);
            let prefill =
                if partial.is_empty() || self.prefill_refused || !step.model.config.accepts_prefill
                {
                    None
                } else {
                    prefilled(&self.request, partial)
                };
            let request = prefill.as_ref().map_or(&self.request, |(r, _)| r);
            let target = &step.target;
            let deadline = tokio::time::Instant::from(deadline);
            let calls = self.executor.retrier.run(deadline, |_| {
                guarded_call(target, deadline, || {
                    target.provider.open_stream(&target.upstream_id, request)
                })
            });
            let (result, attempts) = match tokio::time::timeout_at(deadline, calls).await {
                Ok(attempted) => (attempted.result, attempted.attempts),
                Err(_) => (Err(self.executor.deadline_error(kind, target)), 1),
            };
            self.attempts += attempts;
            match result {
                Ok((upstream, permit)) => {
                    let (continues, sent_whitespace) = match prefill {
                        Some((_, whitespace)) => (true, whitespace),
                        None => (false, String::new()),
                    };
                    return Ok(Attempt {
                        step,
                        upstream,
                        permit: Some(permit),
                        first_token_deadline,
                        continues,
                        sent_whitespace,
                        got_text: false,
                        stop: None,
                        usage: None,
                    });
                }
                Err(err) if prefill.is_some() && is_rejection(&err) => {
                    tracing::info!(
                        request_id = %self.ctx.request_id, target = %step.target.name, error = %err,
                        "the upstream refused the prefill; restarting the answer instead"
                    );
                    self.prefill_refused = true;
                    self.next_step -= 1;
                }
                Err(err) => self.move_on(&step, err)?,
            }
        }
        Err(self.last_error.take().unwrap_or_else(|| {
            RelayError::Internal("the route's plan has no target left to try".into())
        }))
    }

    /// Notes that `step` failed with `err`; an error when no other target can help.
    fn move_on(&mut self, step: &PlanStep, err: RelayError) -> Result<(), RelayError> {
        if !err.next_target_may_help() {
            return Err(err.after_attempts(self.attempts));
        }
        self.executor
            .window()
            .record_failed_attempt(&step.model.config.id);
        if is_context_too_long(&err) {
            self.too_long_for = self.too_long_for.max(step.model.config.context_window);
        }
        tracing::info!(
            request_id = %self.ctx.request_id, target = %step.target.name, error = %err,
            "target failed; moving on to the next one of the plan"
        );
        self.last_error = Some(err.after_attempts(self.attempts));
        Ok(())
    }

    /// How the answer from `step` was reached.
    fn route_info(&self, step: &PlanStep) -> RouteInfo {
        let mut reason = self.decision.reason.clone();
        if step.source != ResponseSource::Primary
            && let Some(err) = &self.last_error
        {
            reason.push_str(&format!(
                "; answered by `{}` in {} because earlier targets failed (last: {err})",
                step.model.config.id,
                step.target.region()
            ));
        }
        RouteInfo {
            model: step.model.config.id.clone(),
            provider: step.target.provider.kind().to_string(),
            region: step.target.region().to_string(),
            source: step.source,
            attempts: self.attempts,
            reason,
        }
    }
}

fn is_rejection(err: &RelayError) -> bool {
    matches!(
        err,
        RelayError::Upstream {
            failure: UpstreamFailure::Rejected,
            ..
        }
    )
}

fn is_context_too_long(err: &RelayError) -> bool {
    matches!(
        err,
        RelayError::Upstream {
            failure: UpstreamFailure::ContextTooLong,
            ..
        }
    )
}

/// An item of the stream: an event, or the error that ends it.
type Item = Result<StreamEvent, RelayError>;

/// The state of one streaming answer.
struct StreamState {
    walk: Walk,
    /// The target answering now; `None` once finished.
    attempt: Option<Attempt>,
    /// Events decided but not yet yielded.
    pending: VecDeque<Item>,
    /// Fires at (or before) the earliest deadline; see the module docs.
    timer: Pin<Box<tokio::time::Sleep>>,
    shutdown: watch::Receiver<Phase>,
    last_activity: Instant,
    finished: bool,
    ttft_ms: Option<f64>,
    /// The text the client has of the current answer.
    partial: String,
}

/// The client-facing events of one answer.
pub struct ChatEventStream {
    request_id: String,
    inner: Pin<Box<dyn Stream<Item = Item> + Send>>,
}

impl std::fmt::Debug for ChatEventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatEventStream")
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl ChatEventStream {
    /// Walks the plan until a target accepts the call. When none does, the error — or, when
    /// degradation applies, a stream holding the degraded answer.
    pub(super) async fn open(
        executor: Executor,
        ctx: RequestContext,
        decision: RouteDecision,
        request: ChatRequest,
    ) -> Result<ChatEventStream, RelayError> {
        let request_id = ctx.request_id.clone();
        let shutdown = executor.shutdown().subscribe();
        let mut walk = Walk {
            executor,
            ctx,
            decision,
            request,
            next_step: 0,
            too_long_for: 0,
            prefill_refused: false,
            attempts: 0,
            last_error: None,
        };
        let opened = walk.open_next("").await;
        let mut state = StreamState {
            attempt: None,
            pending: VecDeque::with_capacity(2),
            timer: Box::pin(tokio::time::sleep_until(walk.ctx.received.into())),
            shutdown,
            last_activity: Instant::now(),
            finished: false,
            ttft_ms: None,
            partial: String::new(),
            walk,
        };
        match opened {
            Ok(attempt) => {
                state.pending.push_back(Ok(StreamEvent::Start {
                    request_id: request_id.clone(),
                    model: attempt.step.model.config.id.clone(),
                }));
                state.attempt = Some(attempt);
            }
            Err(err) if state.degrades(&err) => {
                state.pending.push_back(Ok(StreamEvent::Start {
                    request_id: request_id.clone(),
                    model: state.walk.decision.first_model().config.id.clone(),
                }));
                state.fail(err);
            }
            Err(err) => {
                state.record(false);
                return Err(err);
            }
        }
        let inner = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        });
        Ok(ChatEventStream {
            request_id,
            // Fused: polling again after the end yields `None` again (batching writers do).
            inner: Box::pin(inner.fuse()),
        })
    }

    /// The whole answer, as `POST /v1/chat` returns it.
    pub async fn collect(mut self) -> Result<ChatResponse, RelayError> {
        let mut text = String::new();
        while let Some(item) = self.inner.next().await {
            match item? {
                StreamEvent::TextDelta { text: delta } => text.push_str(&delta),
                StreamEvent::Failover {
                    discard_partial: true,
                    ..
                } => text.clear(),
                StreamEvent::Done {
                    stop_reason,
                    usage,
                    timings,
                    route,
                    degraded,
                } => {
                    return Ok(ChatResponse {
                        request_id: self.request_id,
                        degraded,
                        model: route.model.clone(),
                        text,
                        stop_reason,
                        usage,
                        route,
                        timings,
                    });
                }
                _ => {}
            }
        }
        Err(RelayError::Internal(
            "the answer's stream ended without a terminal event".into(),
        ))
    }
}

impl Stream for ChatEventStream {
    type Item = StreamEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        self.inner
            .poll_next_unpin(cx)
            .map(|item| item.map(|item| item.unwrap_or_else(|err| err.to_event())))
    }
}

/// What one wait on the upstream produced.
enum Step {
    Event(Option<Result<ProviderEvent, RelayError>>),
    Deadline(DeadlineKind),
    Stopped,
}

impl StreamState {
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let step = self.wait_upstream().await;
            let attempt = self.attempt.as_mut()?;
            match step {
                Step::Event(Some(Ok(event))) => {
                    self.last_activity = Instant::now();
                    match event {
                        ProviderEvent::TextDelta(text) => {
                            let text = attempt.client_text(text);
                            if text.is_empty() {
                                continue;
                            }
                            attempt.got_text = true;
                            self.ttft_ms
                                .get_or_insert_with(|| self.walk.ctx.elapsed_ms());
                            self.partial.push_str(&text);
                            return Some(Ok(StreamEvent::TextDelta { text }));
                        }
                        ProviderEvent::Usage(usage) => {
                            attempt.usage = Some(usage);
                            return Some(Ok(StreamEvent::Usage { usage }));
                        }
                        ProviderEvent::Stop(reason) => attempt.stop = Some(reason),
                    }
                }
                Step::Event(None) => match attempt.stop {
                    Some(stop_reason) => return Some(Ok(self.finish(stop_reason))),
                    None => {
                        let err = attempt.step.target.upstream_error(
                            UpstreamFailure::Protocol,
                            "the stream ended before the answer was complete".into(),
                        );
                        self.recover(err).await;
                    }
                },
                Step::Event(Some(Err(err))) => self.recover(err).await,
                Step::Deadline(kind) => {
                    let err = self
                        .walk
                        .executor
                        .deadline_error(kind, &attempt.step.target);
                    self.recover(err).await;
                }
                Step::Stopped => self.fail(RelayError::ShuttingDown),
            }
        }
    }

    /// The earliest deadline that applies now.
    fn next_deadline(&self, attempt: &Attempt) -> (Instant, DeadlineKind) {
        let timeouts = &self.walk.executor.timeouts;
        let total = (
            self.walk.ctx.received + timeouts.total(),
            DeadlineKind::Total,
        );
        let idle = (self.last_activity + timeouts.idle(), DeadlineKind::Idle);
        if attempt.got_text {
            earliest(&[total, idle])
        } else {
            earliest(&[
                total,
                idle,
                (attempt.first_token_deadline, DeadlineKind::FirstToken),
            ])
        }
    }

    async fn wait_upstream(&mut self) -> Step {
        loop {
            let Some(attempt) = self.attempt.as_ref() else {
                return Step::Stopped;
            };
            let (deadline, kind) = self.next_deadline(attempt);
            if deadline <= Instant::now() {
                return Step::Deadline(kind);
            }
            let deadline = tokio::time::Instant::from(deadline);
            if self.timer.is_elapsed() || self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            let Some(attempt) = self.attempt.as_mut() else {
                return Step::Stopped;
            };
            tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|phase| *phase >= Phase::Stopped) => return Step::Stopped,
                item = attempt.upstream.next() => return Step::Event(item),
                // Early or on time: the loop decides which.
                () = self.timer.as_mut() => {}
            }
        }
    }

    /// The current target failed with `err`: continue on the next one, or end the stream.
    async fn recover(&mut self, err: RelayError) {
        let Some(mut attempt) = self.attempt.take() else {
            return self.fail(err);
        };
        if matches!(
            err,
            RelayError::Upstream {
                failure: UpstreamFailure::Throttled,
                ..
            }
        ) {
            // Throttling inside the stream slows the target down like throttling before it.
            attempt.step.target.limiter.update(true);
        }
        if let Some(permit) = attempt.permit.take() {
            permit.failure(&err);
        }
        let reason = err.to_string();
        if let Err(err) = self.walk.move_on(&attempt.step, err) {
            return self.fail(err);
        }
        drop(attempt);
        match self.walk.open_next(&self.partial).await {
            Ok(next) => {
                if !self.partial.is_empty() {
                    let discard_partial = !next.continues;
                    if discard_partial {
                        self.partial.clear();
                    }
                    self.pending.push_back(Ok(StreamEvent::Failover {
                        model: next.step.model.config.id.clone(),
                        region: next.step.target.region().to_string(),
                        reason,
                        discard_partial,
                    }));
                }
                self.last_activity = Instant::now();
                self.attempt = Some(next);
            }
            Err(err) => self.fail(err),
        }
    }

    /// Whether `err` ends the request with the degraded answer rather than an error: degradation
    /// is on, the client has no text yet, and the failure is the upstreams' (or the clock's), not
    /// the request's.
    fn degrades(&self, err: &RelayError) -> bool {
        let upstreams_fault = match err {
            RelayError::Upstream { failure, .. } => !matches!(
                failure,
                UpstreamFailure::Rejected | UpstreamFailure::ContextTooLong
            ),
            RelayError::DeadlineExceeded(_) => true,
            _ => false,
        };
        self.walk.executor.degradation.enabled && self.partial.is_empty() && upstreams_fault
    }

    /// Ends the stream after `err`: with the degraded answer when that applies, else the error.
    fn fail(&mut self, err: RelayError) {
        self.finished = true;
        self.attempt = None;
        self.record(false);
        if self.degrades(&err) {
            tracing::warn!(
                request_id = %self.walk.ctx.request_id, error = %err,
                "every target failed; answering with the degraded answer"
            );
            let message = self.walk.executor.degradation.message.clone();
            let route = RouteInfo {
                model: self.walk.decision.first_model().config.id.clone(),
                provider: "fm-relay".into(),
                region: "local".into(),
                source: ResponseSource::Degraded,
                attempts: self.walk.attempts,
                reason: format!(
                    "{}; every target failed (last: {err}), so the relay answered with its degraded answer",
                    self.walk.decision.reason
                ),
            };
            self.pending
                .push_back(Ok(StreamEvent::TextDelta { text: message }));
            self.pending.push_back(Ok(StreamEvent::Done {
                stop_reason: StopReason::EndTurn,
                usage: Usage::default(),
                timings: Timings {
                    ttft_ms: None,
                    total_ms: self.walk.ctx.elapsed_ms(),
                },
                route,
                degraded: true,
            }));
        } else {
            tracing::warn!(request_id = %self.walk.ctx.request_id, error = %err, "request failed");
            self.pending.push_back(Err(err));
        }
    }

    /// The current target finished its answer.
    fn finish(&mut self, stop_reason: StopReason) -> StreamEvent {
        self.finished = true;
        let Some(mut attempt) = self.attempt.take() else {
            return RelayError::Internal("finished without a target".into()).to_event();
        };
        if let Some(permit) = attempt.permit.take() {
            permit.success();
        }
        let route = self.walk.route_info(&attempt.step);
        self.walk
            .executor
            .window()
            .record(&route.model, outcome(true, self.ttft_ms, &self.walk.ctx));
        StreamEvent::Done {
            stop_reason,
            usage: attempt.usage.unwrap_or_default(),
            timings: Timings {
                ttft_ms: self.ttft_ms,
                total_ms: self.walk.ctx.elapsed_ms(),
            },
            route,
            degraded: false,
        }
    }

    /// Records the request's end against the model it was routed to.
    fn record(&self, ok: bool) {
        let model = &self.walk.decision.first_model().config.id;
        self.walk
            .executor
            .window()
            .record(model, outcome(ok, self.ttft_ms, &self.walk.ctx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefill_drops_trailing_whitespace_and_the_continuation_repeats_none_of_it() {
        let request = ChatRequest::from_prompt("hi");
        let (continued, whitespace) = prefilled(&request, "The relay \n").unwrap();
        assert_eq!(continued.messages.len(), 2);
        assert_eq!(continued.messages[1], Message::assistant("The relay"));
        assert_eq!(whitespace, " \n");
        assert!(prefilled(&request, "  ").is_none());
    }
}
