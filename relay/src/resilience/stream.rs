//! [`ChatEventStream`]: a request's plan walked into the client-facing event sequence — `start`,
//! text deltas and usage as they arrive, `failover` when another target takes over mid-answer,
//! then exactly one terminal event.
//!
//! **Breaks.** The plan is walked by [`Walk`](super::walk::Walk). Before any text reached the
//! client, a failure moves on silently. After text was sent, the next target continues from the
//! partial answer as an assistant prefill when its model accepts one, otherwise it starts again
//! and a `failover` event with `discard_partial` tells the client to drop what it has. When
//! no target is left the stream ends with the typed error of the last failure — or, if no text was
//! sent yet and degradation is on, with the configured degraded answer, marked as such. A stream
//! that ends without the upstream's stop event is a failure like any other: a truncated answer is
//! never a success. One that sent its stop event but not its closing frames (the usage) is
//! complete: it is finished after a short grace with the usage that arrived, not held until the
//! idle timeout.
//!
//! **Tool calls** reach the client whole (the provider holds a call's pieces until it is
//! complete). After one was sent, a restart cannot continue from a prefill (a prefill is text):
//! the next target starts again and the `failover` event's `discard_partial` drops the calls
//! with the text; on a surface that cannot take them back the stream ends with the error.
//!
//! **Restarts on a surface that cannot take text back.** With [`Restart::Replay`] (the OpenAI
//! surface) no `failover` event announces a restart: the restarted answer is held back until it
//! has reproduced the text the client has, then continues from there, or the stream ends with an
//! error where it diverges ([`replay`](super::replay)); the first-token deadline applies until
//! the client gets new text.
//!
//! **Timers.** Each read waits for the earliest of: the total deadline, the current target's
//! first-token deadline (until it sent text), and the idle timeout since the last upstream event.
//! One timer per stream serves all three: it is moved only when the next deadline comes earlier
//! than it is set, and when it fires early (activity pushed the idle deadline back) it is re-armed
//! — so a burst of tokens costs no timer work at all. Dropping the stream (the client went away)
//! drops the upstream call with it.
//!
//! **Bursts.** Writers take one event with [`next`](futures_util::StreamExt::next) and then
//! [`gather`](ChatEventStream::gather) the ones that can share its write. Each upstream event
//! comes from the upstream connection's own task, one HTTP chunk at a time, so when tokens arrive
//! faster than they can be written one by one (a fast model, or tokens that queued up in the
//! network) only one is ever ready at the moment of asking. In such a burst — events less than
//! [`BURST_GAP`] apart, after the client already has its first text — `gather` lets the other
//! tasks run between events so the upstream connection can hand over the next one, for at most
//! `server.stream_batch_wait_us` per write. Tokens that trickle in at a model's pace, the `start`
//! event and the first text are written the moment they are ready.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fm_protocol::{ChatRequest, StopReason, StreamEvent, Timings, ToolCall, Usage};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

use super::replay::{Progress, Replay};
use super::walk::{CallKind, Called, Reply, Walk};
use super::{DeadlineKind, Executor, RequestContext, earliest, outcome};
use crate::cache::Hit;
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::{ProviderEvent, ProviderStream};
use crate::routing::{PlanStep, RouteDecision};
use crate::shutdown::Phase;
use crate::telemetry::{Ending, Outcome, ReplayOutcome};
use crate::upstream::breaker::Permit;

/// How a surface takes an answer that must start again from scratch after its client got text
/// (the next target takes no prefill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// A `failover` event with `discard_partial` tells the client to drop its text (the native
    /// SSE and WebSocket surfaces).
    Announce,
    /// The client cannot drop text: the restart is held back until it has reproduced it (see the
    /// module docs).
    Replay,
}

/// The target answering now, and what it has sent so far.
struct Attempt {
    step: PlanStep,
    upstream: ProviderStream,
    /// The breaker's leave for this call, settled when the call ends (dropped unsettled when the
    /// client leaves first).
    permit: Option<Permit>,
    first_token_deadline: Instant,
    /// The last event from this call (or its start): the idle timeout counts from here.
    last_activity: Instant,
    /// Whether this call continues the partial answer from a prefill.
    continues: bool,
    /// Whitespace the prefill left out that the client has already; dropped if the continuation
    /// repeats it.
    sent_whitespace: String,
    /// When this call's first text came (`None`: none yet).
    first_text_at: Option<Instant>,
    /// When the call started: its own times (for its target's window) count from here.
    started: Instant,
    /// Characters of text the upstream sent on this call (replayed text included): its output
    /// tokens are estimated from them when it reports no usage.
    received_chars: usize,
    stop: Option<StopReason>,
    usage: Option<Usage>,
}

impl Attempt {
    fn new(called: Called) -> Result<Attempt, RelayError> {
        let Reply::Stream(upstream) = called.reply else {
            return Err(RelayError::Internal(
                "a stream call returned a one-shot answer".into(),
            ));
        };
        Ok(Attempt {
            step: called.step,
            upstream,
            permit: Some(called.permit),
            first_token_deadline: called.first_token_deadline,
            last_activity: Instant::now(),
            continues: called.continues,
            sent_whitespace: called.sent_whitespace,
            first_text_at: None,
            started: called.started,
            received_chars: 0,
            stop: None,
            usage: None,
        })
    }

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

/// The walk's next stream, as an [`Attempt`].
async fn open_next(walk: &mut Walk, partial: &str) -> Result<Attempt, RelayError> {
    Attempt::new(walk.call_next(CallKind::Stream, partial).await?)
}

/// How long to wait for the closing frames (usage) after the upstream's stop event.
const AFTER_STOP_GRACE: Duration = Duration::from_millis(500);

/// Events that follow each other closer than this are a burst (see the module docs).
pub const BURST_GAP: Duration = Duration::from_micros(250);

/// How many times in a row a burst lets the other tasks run without an event coming of it before
/// the write goes out: the upstream connection's task hands over its next event within two.
const MAX_IDLE_YIELDS: u32 = 4;

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
    finished: bool,
    ttft_ms: Option<f64>,
    /// The text the client has of the current answer.
    partial: String,
    /// The tool calls the client has of the current answer.
    tool_calls: Vec<ToolCall>,
    restart: Restart,
    /// The restart being held back until it reproduces `partial` (with [`Restart::Replay`]).
    replay: Option<Replay>,
}

/// The client-facing events of one answer.
pub struct ChatEventStream {
    request_id: String,
    inner: Pin<Box<dyn Stream<Item = Item> + Send>>,
    /// When the last event was taken.
    last_taken: Option<Instant>,
    /// Whether the last event came less than [`BURST_GAP`] after the one before.
    in_burst: bool,
    /// Text deltas taken so far.
    texts_taken: usize,
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
        restart: Restart,
    ) -> Result<ChatEventStream, RelayError> {
        let request_id = ctx.request_id.clone();
        let choice = decision.choice.clone();
        let shutdown = executor.shutdown().subscribe();
        let walk = Walk::new(executor, ctx, decision, request);
        let mut state = StreamState {
            attempt: None,
            pending: VecDeque::with_capacity(3),
            timer: Box::pin(tokio::time::sleep_until(walk.ctx.received.into())),
            shutdown,
            finished: false,
            ttft_ms: None,
            partial: String::new(),
            tool_calls: Vec::new(),
            restart,
            replay: None,
            walk,
        };
        let start = |model: &str| {
            Ok(StreamEvent::Start {
                request_id: request_id.clone(),
                model: model.to_string(),
                route: choice.clone(),
            })
        };
        if let Some(hit) = state.walk.cached(false).await {
            state.pending.push_back(start(&hit.answer.model));
            state.serve_cached(hit);
        } else {
            match open_next(&mut state.walk, "").await {
                Ok(attempt) => {
                    state
                        .pending
                        .push_back(start(&attempt.step.model.config.id));
                    state.attempt = Some(attempt);
                }
                Err(err) => {
                    let stale = match Walk::upstreams_fault(&err) {
                        true => state.walk.cached(true).await,
                        false => None,
                    };
                    if let Some(hit) = stale {
                        state.record(Ending::Error);
                        state.pending.push_back(start(&hit.answer.model));
                        state.serve_cached(hit);
                    } else if state.walk.degrades(&err, false) {
                        let model = state.walk.decision.first_model().config.id.clone();
                        state.pending.push_back(start(&model));
                        state.fail(err);
                    } else {
                        state.finished = true;
                        state.record(Ending::Error);
                        return Err(err);
                    }
                }
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
            last_taken: None,
            in_burst: false,
            texts_taken: 0,
        })
    }
}

impl Stream for ChatEventStream {
    type Item = StreamEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        let item = match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => item,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let event = item.unwrap_or_else(|err| err.to_event());
        let now = Instant::now();
        self.in_burst = self
            .last_taken
            .is_some_and(|last| now.duration_since(last) < BURST_GAP);
        self.last_taken = Some(now);
        if matches!(event, StreamEvent::TextDelta { .. }) {
            self.texts_taken += 1;
        }
        Poll::Ready(Some(event))
    }
}

impl ChatEventStream {
    /// Appends to `batch` (which holds the events just taken) the events that can share their
    /// write, up to `max` in all: every event ready now and, in a burst, the ones the upstream
    /// connection hands over while the first waits at most `wait` (see the module docs). Stops
    /// at the end of the stream.
    pub async fn gather(&mut self, batch: &mut Vec<StreamEvent>, max: usize, wait: Duration) {
        let texts_in_batch = batch
            .iter()
            .filter(|event| matches!(event, StreamEvent::TextDelta { .. }))
            .count();
        // The answer's first text is never held back.
        let may_wait = self.texts_taken > texts_in_batch;
        let mut waiting_since = None;
        let mut idle_yields = 0;
        while batch.len() < max {
            match self.next().now_or_never() {
                Some(Some(event)) => {
                    batch.push(event);
                    idle_yields = 0;
                    continue;
                }
                Some(None) => return,
                None => {}
            }
            if !may_wait || !self.in_burst || idle_yields == MAX_IDLE_YIELDS {
                return;
            }
            let now = Instant::now();
            if now.duration_since(*waiting_since.get_or_insert(now)) >= wait {
                return;
            }
            let_other_tasks_run().await;
            idle_yields += 1;
        }
    }
}

/// Returns to the scheduler once, with the task queued again behind the ones already waiting
/// (among them the upstream connection's task, woken when its last event was taken).
///
/// Not `tokio::task::yield_now`: that defers the wake-up until the worker next polls its I/O
/// driver, a system call per yield on a busy relay; measured, streams took more CPU with it.
async fn let_other_tasks_run() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
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
                    attempt.last_activity = Instant::now();
                    match event {
                        ProviderEvent::TextDelta(text) => {
                            attempt.received_chars += text.chars().count();
                            let mut text = attempt.client_text(text);
                            if let Some(replay) = self.replay.as_mut() {
                                match replay.feed(&text) {
                                    Progress::Behind => continue,
                                    Progress::CaughtUp(rest) => {
                                        self.replay = None;
                                        self.walk.executor.replays().record(ReplayOutcome::Resumed);
                                        // The replay is over: from here the first-token
                                        // deadline is met.
                                        attempt.first_text_at.get_or_insert_with(Instant::now);
                                        text = rest;
                                    }
                                    stopped => {
                                        let how = replay.describe(&stopped);
                                        self.replay_diverged(&how);
                                        continue;
                                    }
                                }
                            }
                            if text.is_empty() {
                                continue;
                            }
                            attempt.first_text_at.get_or_insert_with(Instant::now);
                            self.ttft_ms
                                .get_or_insert_with(|| self.walk.ctx.elapsed_ms());
                            self.partial.push_str(&text);
                            return Some(Ok(StreamEvent::TextDelta { text }));
                        }
                        ProviderEvent::ToolCall(call) => {
                            attempt.received_chars += call.input.to_string().len();
                            if self.replay.is_some() {
                                self.replay_diverged(
                                    "called a tool before it had reproduced the text already sent",
                                );
                                continue;
                            }
                            attempt.first_text_at.get_or_insert_with(Instant::now);
                            self.tool_calls.push(call.clone());
                            return Some(Ok(StreamEvent::ToolCall { call }));
                        }
                        ProviderEvent::Usage(usage) => {
                            attempt.usage = Some(usage);
                            return Some(Ok(StreamEvent::Usage { usage }));
                        }
                        ProviderEvent::Stop(reason) => attempt.stop = Some(reason),
                    }
                }
                Step::Event(None) => match attempt.stop {
                    Some(stop_reason) => return self.end(stop_reason),
                    None => {
                        let err = attempt.step.target.upstream_error(
                            UpstreamFailure::Protocol,
                            "the stream ended before the answer was complete".into(),
                        );
                        Box::pin(self.recover(err)).await;
                    }
                },
                // The answer was complete: what breaks after the stop event cannot take it back.
                Step::Event(Some(Err(_))) | Step::Deadline(DeadlineKind::Idle)
                    if attempt.stop.is_some() =>
                {
                    let stop_reason = attempt.stop.unwrap_or(StopReason::Other);
                    return self.end(stop_reason);
                }
                Step::Event(Some(Err(err))) => Box::pin(self.recover(err)).await,
                Step::Deadline(kind) => {
                    let err = self
                        .walk
                        .executor
                        .deadline_error(kind, &attempt.step.target);
                    Box::pin(self.recover(err)).await;
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
        // After the stop event only the closing frames (usage) are missing: wait for them
        // briefly, then finish with what arrived.
        let idle_limit = match attempt.stop {
            Some(_) => timeouts.idle().min(AFTER_STOP_GRACE),
            None => timeouts.idle(),
        };
        let idle = (attempt.last_activity + idle_limit, DeadlineKind::Idle);
        if attempt.first_text_at.is_some() {
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
    ///
    /// Callers box this future: it holds a whole upstream call (the SDK's futures are large), and
    /// inline it would size every waiting stream's state for it.
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
        self.meter(&attempt);
        if self.replay.take().is_some() {
            self.replayed(ReplayOutcome::Failed);
        }
        if !self.tool_calls.is_empty() && self.restart == Restart::Replay {
            // Only a restart could go on, and this surface cannot take the calls back.
            drop(attempt);
            return self.fail(err);
        }
        let reason = err.to_string();
        if let Err(err) = self.walk.move_on(&attempt.step, err) {
            return self.give_up(err).await;
        }
        drop(attempt);
        // A prefill carries text only: after a tool call the next target starts again.
        let prefill = match self.tool_calls.is_empty() {
            true => self.partial.as_str(),
            false => "",
        };
        match open_next(&mut self.walk, prefill).await {
            Ok(next)
                if !self.partial.is_empty()
                    && !next.continues
                    && self.restart == Restart::Replay =>
            {
                tracing::info!(
                    request_id = %self.walk.ctx.request_id, target = %next.step.target.name,
                    %reason, "the answer restarts; replaying the text the client has before going on"
                );
                self.replay = Some(Replay::new(&self.partial));
                self.attempt = Some(next);
            }
            Ok(next) => {
                if self.delivered() {
                    let discard_partial = !next.continues;
                    if discard_partial {
                        self.partial.clear();
                        self.tool_calls.clear();
                    }
                    self.pending.push_back(Ok(StreamEvent::Failover {
                        model: next.step.model.config.id.clone(),
                        region: next.step.target.region().to_string(),
                        reason,
                        discard_partial,
                    }));
                }
                self.attempt = Some(next);
            }
            Err(err) => self.give_up(err).await,
        }
    }

    /// No target can go on after `err`: a stale cached answer when the client has no text yet
    /// and the failure is the upstreams', else [`fail`](Self::fail).
    async fn give_up(&mut self, err: RelayError) {
        if !self.delivered()
            && Walk::upstreams_fault(&err)
            && let Some(hit) = self.walk.cached(true).await
        {
            tracing::warn!(
                request_id = %self.walk.ctx.request_id, error = %err,
                "every target failed; answering from the cache"
            );
            if let Some(attempt) = self.attempt.take() {
                self.meter(&attempt);
            }
            self.record(Ending::Error);
            self.serve_cached(hit);
            return;
        }
        self.fail(err);
    }

    /// Ends the stream with a cached answer. Its usage is zero: no tokens were spent on it.
    fn serve_cached(&mut self, hit: Hit) {
        self.finished = true;
        self.walk.ctx.settle();
        let route = self.walk.cache_route(&hit);
        let elapsed = self.walk.ctx.elapsed_ms();
        if !hit.answer.text.is_empty() {
            self.pending.push_back(Ok(StreamEvent::TextDelta {
                text: hit.answer.text,
            }));
        }
        self.pending.push_back(Ok(StreamEvent::Done {
            stop_reason: hit.answer.stop_reason,
            usage: Some(Usage::default()),
            timings: Timings {
                ttft_ms: Some(elapsed),
                total_ms: elapsed,
            },
            route,
            degraded: false,
        }));
    }

    /// Ends the stream after `err`: with the degraded answer when that applies, else the error.
    fn fail(&mut self, err: RelayError) {
        self.finished = true;
        if let Some(attempt) = self.attempt.take() {
            self.meter(&attempt);
        }
        self.walk.ctx.settle();
        self.record(Ending::Error);
        if self.walk.degrades(&err, self.delivered()) {
            tracing::warn!(
                request_id = %self.walk.ctx.request_id, error = %err,
                "every target failed; answering with the degraded answer"
            );
            let route = self.walk.degraded_route(&err);
            self.walk.executor.window().metrics().answered(&route);
            self.pending.push_back(Ok(StreamEvent::TextDelta {
                text: self.walk.degraded_text(),
            }));
            self.pending.push_back(Ok(StreamEvent::Done {
                stop_reason: StopReason::EndTurn,
                usage: Some(Usage::default()),
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

    /// The current target's answer ended with `stop_reason`: the end of the stream, unless a
    /// replay had not yet reproduced the text the client has (the restart said less).
    fn end(&mut self, stop_reason: StopReason) -> Option<Item> {
        match self.replay.take() {
            Some(replay) if !replay.complete() => {
                // The restart said less than the client has.
                self.replay_diverged(&replay.describe(&Progress::Behind));
                return self.pending.pop_front();
            }
            Some(_) => self.replayed(ReplayOutcome::Resumed),
            None => {}
        }
        Some(Ok(self.finish(stop_reason)))
    }

    /// Whether the client has any of the current answer: text or tool calls.
    fn delivered(&self) -> bool {
        !self.partial.is_empty() || !self.tool_calls.is_empty()
    }

    /// Ends a stream whose restart did not reproduce the text the client has with an error;
    /// `how` says what the restart did instead.
    fn replay_diverged(&mut self, how: &str) {
        self.replay = None;
        self.replayed(ReplayOutcome::Diverged);
        let message = format!(
            "the upstream broke off, and the answer restarted on this target {how}; the partial \
             answer cannot be taken back: send the request again"
        );
        let err = match &self.attempt {
            Some(attempt) => attempt
                .step
                .target
                .upstream_error(UpstreamFailure::Protocol, message),
            None => RelayError::Internal(message),
        };
        self.fail(err);
    }

    fn replayed(&self, outcome: ReplayOutcome) {
        self.walk.executor.replays().record(outcome);
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
        let since_start =
            |at: Instant| at.saturating_duration_since(attempt.started).as_secs_f64() * 1000.0;
        attempt.step.target.calls.record(Outcome {
            ending: Ending::Ok,
            ttft_ms: attempt.first_text_at.map(since_start),
            total_ms: since_start(Instant::now()),
        });
        let route = self.walk.route_info(&attempt.step);
        self.walk.executor.window().metrics().answered(&route);
        let usage = attempt.usage;
        self.meter(&attempt);
        self.walk
            .ctx
            .answered_by(&route.model, attempt.step.target.region());
        // An answer that calls tools is not cached (see `AnswerCache::is_cacheable`).
        self.walk
            .remember(&attempt.step, &self.partial, stop_reason, usage);
        // One clock reading for the live window and the answer, so they agree.
        let ended = outcome(Ending::Ok, self.ttft_ms, &self.walk.ctx);
        let timings = Timings {
            ttft_ms: self.ttft_ms,
            total_ms: ended.total_ms,
        };
        self.walk.executor.window().record(&route.model, ended);
        self.walk.ctx.settle();
        StreamEvent::Done {
            stop_reason,
            usage,
            timings,
            route,
            degraded: false,
        }
    }

    /// Reports what `attempt` — a call its target accepted — spent to the request's meter: the
    /// usage it reported, else an estimate from the prompt and the text it sent.
    fn meter(&self, attempt: &Attempt) {
        let usage = attempt
            .usage
            .unwrap_or_else(|| self.walk.estimate_usage(attempt.received_chars));
        self.walk.spent(&attempt.step, usage);
    }

    /// Records the request's end against the model it was routed to (see also the `Drop` impl).
    fn record(&self, ending: Ending) {
        let model = &self.walk.decision.first_model().config.id;
        self.walk
            .executor
            .window()
            .record(model, outcome(ending, self.ttft_ms, &self.walk.ctx));
    }
}

/// A stream dropped before its end — its client went away (a closed connection, a stopped
/// answer), or while its first target was being found — is counted as cancelled.
impl Drop for StreamState {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Ending::Cancelled);
        }
        // The call in progress consumed tokens too (a cancelled stream's).
        if let Some(attempt) = self.attempt.take() {
            self.meter(&attempt);
        }
    }
}
