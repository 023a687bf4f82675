//! [`Walk`]: one request's way through its plan of targets, shared by the one-shot and the
//! streaming paths.
//!
//! [`Walk::call_next`] calls the next target that may answer: it skips targets whose model's
//! context window is not larger than one that already found the conversation too long, retries a
//! target that said "not now" ([`Retrier`](super::Retrier)), and moves on after any other
//! upstream failure, an attempt deadline that passed (no first token on a stream, no answer on a
//! one-shot call), or an open circuit. A client error (the upstream rejected the request itself)
//! and the total deadline end the walk at once. A call that continues a broken-off answer sends
//! the partial answer as the assistant's prefill where the model accepts one; a prefill the
//! upstream refuses is retried once, on the same target, as a restart.

use std::sync::Arc;
use std::time::Instant;

use fm_protocol::{ChatRequest, Message, ResponseSource, RouteInfo, StopReason, Usage};

use super::retry::{NextTarget, RetryAfter};
use super::{DeadlineKind, Executor, RequestContext, earliest, guarded_call};
use crate::cache::{CacheKeys, Hit};
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::{ChatProvider, ProviderAnswer, ProviderStream};
use crate::routing::{PlanStep, RouteDecision};
use crate::upstream::breaker::Permit;
use tracing::Instrument;

/// Which call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// ConverseStream: accepted once the upstream sent its headers.
    Stream,
    /// Converse: the whole answer at once.
    OneShot,
}

/// What a call returned.
pub(crate) enum Reply {
    Stream(ProviderStream),
    Answer(ProviderAnswer),
}

/// A target that accepted the call.
pub(crate) struct Called {
    pub step: PlanStep,
    pub reply: Reply,
    /// The breaker's leave for this call, to settle when the answer is complete.
    pub permit: Permit,
    /// When the call to this target started (its retries there included).
    pub started: Instant,
    /// When the call must have produced its first token (streams).
    pub first_token_deadline: Instant,
    /// Whether this call continues the partial answer from a prefill.
    pub continues: bool,
    /// Whitespace cut from the end of the prefill (upstreams refuse a prefill that ends in
    /// whitespace); the client has it already.
    pub sent_whitespace: String,
}

/// The walk through a request's plan: which step comes next, and what the steps so far taught.
pub(crate) struct Walk {
    pub executor: Executor,
    pub ctx: RequestContext,
    pub decision: RouteDecision,
    request: ChatRequest,
    next_step: usize,
    /// Targets whose model's context window is not larger than this are skipped: a model with
    /// this window found the conversation too long.
    too_long_for: u32,
    /// An upstream refused a prefill: continue by restarting from now on.
    prefill_refused: bool,
    /// Upstream calls made so far, failed ones included.
    pub attempts: u32,
    /// The failure that made the walk move on last.
    last_error: Option<RelayError>,
    /// What the walk decided along the way that the route should explain (waits honoured or
    /// not), in order.
    notes: Vec<String>,
    /// Where the answer is in the cache; `None` when the cache is off or the request opted out.
    cache_keys: Option<CacheKeys>,
}

impl Walk {
    pub fn new(
        executor: Executor,
        ctx: RequestContext,
        decision: RouteDecision,
        request: ChatRequest,
    ) -> Self {
        let cache_keys = match &executor.cache {
            Some(cache) if !request.no_cache => {
                Some(cache.keys(&decision.first_model().config.id, &request))
            }
            _ => None,
        };
        Walk {
            cache_keys,
            executor,
            ctx,
            decision,
            request,
            next_step: 0,
            too_long_for: 0,
            prefill_refused: false,
            attempts: 0,
            last_error: None,
            notes: Vec::new(),
        }
    }

    /// What the plan holds after `step`: the same model at a target that is not refusing calls
    /// (its breaker open), or only other models, or nothing.
    fn next_target(&self, step: &PlanStep) -> NextTarget {
        let rest = self.decision.plan.get(self.next_step..).unwrap_or_default();
        let same_model = |next: &&PlanStep| Arc::ptr_eq(&next.model, &step.model);
        if rest
            .iter()
            .filter(same_model)
            .any(|next| !next.target.breaker.is_open())
        {
            NextTarget::SameModel
        } else if rest.is_empty() {
            NextTarget::None
        } else {
            NextTarget::OtherModel
        }
    }

    /// Calls the next target of the plan that accepts the call; `partial` is the text the client
    /// already has of the answer.
    pub async fn call_next(&mut self, kind: CallKind, partial: &str) -> Result<Called, RelayError> {
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
            let (attempt_limit, attempt_kind) = match kind {
                CallKind::Stream => (timeouts.first_token(), DeadlineKind::FirstToken),
                CallKind::OneShot => (timeouts.one_shot(), DeadlineKind::OneShot),
            };
            let first_token_deadline = now + attempt_limit;
            let (deadline, deadline_kind) = earliest(&[
                (total, DeadlineKind::Total),
                (first_token_deadline, attempt_kind),
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
            let next = self.next_target(&step);
            let max_limiter_wait = self.executor.max_limiter_wait;
            let retrier = &self.executor.retrier;
            let calls = retrier.run(deadline, next, |_| {
                // Another target could take the call: do not wait long for this one.
                let limiter_wait = match next {
                    NextTarget::None => deadline,
                    _ => deadline.min(tokio::time::Instant::now() + max_limiter_wait),
                };
                guarded_call(target, retrier, limiter_wait, || {
                    let span = tracing::info_span!(
                        "upstream_attempt",
                        model = %step.model.config.id,
                        target = %target.name,
                    );
                    async {
                        let upstream_id = &target.upstream_id;
                        match kind {
                            CallKind::Stream => target
                                .provider
                                .open_stream(upstream_id, request)
                                .await
                                .map(Reply::Stream),
                            CallKind::OneShot => target
                                .provider
                                .complete(upstream_id, request)
                                .await
                                .map(Reply::Answer),
                        }
                    }
                    .instrument(span)
                })
            });
            let (result, mut attempts) = match tokio::time::timeout_at(deadline, calls).await {
                Ok(attempted) => {
                    for retry_after in attempted.retry_afters {
                        self.notes.push(retry_after_note(&step, retry_after));
                    }
                    (attempted.result, attempted.attempts)
                }
                Err(_) => (Err(self.executor.deadline_error(deadline_kind, target)), 1),
            };
            if let Err(RelayError::Upstream { failure, .. }) = &result
                && failure.is_local()
            {
                // The last try was refused by the relay itself: no upstream call was made.
                attempts -= 1;
            }
            self.attempts += attempts;
            match result {
                Ok((reply, permit)) => {
                    let (continues, sent_whitespace) = match prefill {
                        Some((_, whitespace)) => (true, whitespace),
                        None => (false, String::new()),
                    };
                    return Ok(Called {
                        step,
                        reply,
                        permit,
                        started: now,
                        first_token_deadline,
                        continues,
                        sent_whitespace,
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
    pub fn move_on(&mut self, step: &PlanStep, err: RelayError) -> Result<(), RelayError> {
        if !err.next_target_may_help() {
            return Err(err.after_attempts(self.attempts));
        }
        let throttled = matches!(
            err,
            RelayError::Upstream {
                failure: UpstreamFailure::Throttled | UpstreamFailure::RateLimited,
                ..
            }
        );
        self.executor
            .window()
            .record_failed_attempt(&step.model.config.id, throttled);
        step.target.calls.record_failed_attempt(throttled);
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

    /// The decision's reason with what the walk noted along the way.
    fn reason(&self) -> String {
        let mut reason = self.decision.reason.clone();
        for note in &self.notes {
            reason.push_str("; ");
            reason.push_str(note);
        }
        reason
    }

    /// How the answer from `step` was reached.
    pub fn route_info(&self, step: &PlanStep) -> RouteInfo {
        let mut reason = self.reason();
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
            choice: self.decision.choice.clone(),
        }
    }

    /// The route of the degraded answer that stands in after `err` ended the walk.
    pub fn degraded_route(&self, err: &RelayError) -> RouteInfo {
        RouteInfo {
            model: self.decision.first_model().config.id.clone(),
            provider: "fm-relay".into(),
            region: "local".into(),
            source: ResponseSource::Degraded,
            attempts: self.attempts,
            reason: format!(
                "{}; every target failed (last: {err}), so the relay answered with its degraded answer",
                self.reason()
            ),
            choice: self.decision.choice.clone(),
        }
    }

    /// Whether `err` is the upstreams' (or the clock's) failure rather than the request's: only
    /// then may a stale cached answer or the degraded answer stand in.
    pub fn upstreams_fault(err: &RelayError) -> bool {
        match err {
            RelayError::Upstream { failure, .. } => !matches!(
                failure,
                UpstreamFailure::Rejected | UpstreamFailure::ContextTooLong
            ),
            RelayError::DeadlineExceeded(_) => true,
            _ => false,
        }
    }

    /// Whether `err` ends the request with the degraded answer rather than an error, given
    /// whether the client has text already: degradation is on, the client has none, and the
    /// failure is the upstreams'.
    pub fn degrades(&self, err: &RelayError, client_has_text: bool) -> bool {
        self.executor.degradation.enabled && !client_has_text && Self::upstreams_fault(err)
    }

    /// The cached answer to this request, if any; a stale one only when `allow_stale`.
    pub async fn cached(&self, allow_stale: bool) -> Option<Hit> {
        self.cache_lookup(allow_stale)
            .instrument(tracing::info_span!("cache_lookup", stale = allow_stale))
            .await
    }

    async fn cache_lookup(&self, allow_stale: bool) -> Option<Hit> {
        let (cache, keys) = (self.executor.cache.as_ref()?, self.cache_keys.as_ref()?);
        cache.lookup(keys, &self.request, allow_stale).await
    }

    /// Stores a complete answer from `step`, when it is the requested model's, with its usage
    /// (estimated when the upstream reported none).
    pub fn remember(
        &self,
        step: &PlanStep,
        text: &str,
        stop_reason: StopReason,
        usage: Option<Usage>,
    ) {
        let (Some(cache), Some(keys)) = (&self.executor.cache, &self.cache_keys) else {
            return;
        };
        let model = &step.model.config.id;
        if *model == self.decision.first_model().config.id {
            cache.store(
                keys.clone(),
                &self.request,
                model,
                text.to_string(),
                stop_reason,
                usage.unwrap_or_else(|| Usage::estimate(&self.request, text)),
            );
        }
    }

    /// The usage of an answer of `answer_chars` characters to this request, estimated.
    pub fn estimate_usage(&self, answer_chars: usize) -> Usage {
        Usage::estimate_from_chars(self.request.prompt_chars(), answer_chars)
    }

    /// Reports what a call to `step` spent: to the request's meter, and to the token and cost
    /// metrics.
    pub fn spent(&self, step: &PlanStep, usage: Usage) {
        let model = &step.model.config;
        let cost_usd = (f64::from(usage.input_tokens) * model.input_price_per_1k
            + f64::from(usage.output_tokens) * model.output_price_per_1k)
            / 1000.0;
        self.executor
            .window()
            .metrics()
            .spent(&model.id, usage, cost_usd);
        self.ctx.spent(step, usage);
    }

    /// How a cached answer was reached.
    pub fn cache_route(&self, hit: &Hit) -> RouteInfo {
        RouteInfo {
            model: hit.answer.model.clone(),
            provider: "cache".into(),
            region: "local".into(),
            source: ResponseSource::Cache,
            attempts: self.attempts,
            reason: format!("{}; {}", self.decision.reason, hit.describe()),
            choice: self.decision.choice.clone(),
        }
    }

    /// The configured degraded answer's text.
    pub fn degraded_text(&self) -> String {
        self.executor.degradation.message.clone()
    }
}

/// What the route says about a wait `step`'s target asked for.
fn retry_after_note(step: &PlanStep, retry_after: RetryAfter) -> String {
    let target = format!("`{}` in {}", step.model.config.id, step.target.region());
    match retry_after {
        RetryAfter::Waited(wait) => format!(
            "{target} was throttled and asked to wait {:.1} s, which the relay did before calling it again",
            wait.as_secs_f64()
        ),
        RetryAfter::TooLong(wait) => format!(
            "{target} was throttled and asked to wait {:.1} s, longer than the relay waits for it              (`retry.max_retry_after_ms`, within the request's deadline), so it moved on",
            wait.as_secs_f64()
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefill_drops_trailing_whitespace_and_keeps_it_to_skip_later() {
        let request = ChatRequest::from_prompt("hi");
        let (continued, whitespace) = prefilled(&request, "The relay \n").unwrap();
        assert_eq!(continued.messages.len(), 2);
        assert_eq!(continued.messages[1], Message::assistant("The relay"));
        assert_eq!(whitespace, " \n");
        assert!(prefilled(&request, "  ").is_none());
    }
}
