//! Running a routed request: walking its plan of targets under deadlines, with retries, circuit
//! breakers, adaptive rate limits and failover.
//!
//! Every request has a total deadline from its arrival; each call to a target has a first-token
//! deadline, and every read of a stream an idle timeout (the Bedrock SDK detects no stall on
//! event streams). Calls the upstream refused for now (throttled, unavailable) are retried on the
//! same target ([`retry`]); each target has a circuit breaker (`upstream::breaker`) that fails
//! calls fast while it is unhealthy, and an adaptive rate limiter (`upstream::rate_limit`) that
//! slows calls down once the target throttles: this module drives both. A target that still fails, or never answered, hands the request to the
//! next target of the plan: the same model in another region, then the fallback models.
//!
//! Sync and streaming chat walk the plan the same way ([`walk::Walk`]). [`Executor::complete`]
//! makes one-shot calls (Converse: a third of the CPU of decoding an event stream), each bounded
//! by the one-shot attempt deadline. [`Executor::open_stream`] returns a
//! [`stream::ChatEventStream`], which never ends a truncated answer as a success: a stream that
//! breaks after text was sent continues on the next target (from the partial answer as prefill
//! where the model accepts it, otherwise restarted with a `failover` event that tells the client
//! to discard the partial text — or, on a surface that cannot take text back, held back until
//! it has reproduced what the client has ([`replay`])) or ends with a typed error. When every
//! target failed before any text, the configured degraded answer stands in, clearly marked.

pub mod replay;
pub mod retry;
pub mod stream;
pub mod walk;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fm_protocol::{ChatRequest, ChatResponse, StopReason, Timings, Usage};

use crate::cache::{AnswerCache, Hit};
use crate::config::{DegradationConfig, RelayConfig, TimeoutConfig};
use crate::error::{RelayError, UpstreamFailure};
use crate::routing::{ModelEntry, PlanStep, RouteDecision};
use crate::shutdown::Shutdown;
use crate::telemetry::{AttemptSpend, Ending, LiveWindow, Outcome, SpendMeter, StreamReplays};
use crate::upstream::Target;
use crate::upstream::breaker::Permit;

pub use retry::{Attempted, Retrier};
pub use stream::{ChatEventStream, Restart};

/// One request's identity, clock and meter.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// When the relay received the request: every timing is measured from here.
    pub received: Instant,
    /// Where the request's upstream calls report what they spent (the usage ledger and token
    /// limits, when the edge metered the request).
    pub meter: Option<Arc<dyn SpendMeter>>,
}

impl RequestContext {
    pub fn new(request_id: String) -> Self {
        RequestContext {
            request_id,
            received: Instant::now(),
            meter: None,
        }
    }

    /// Reports a call's spend to the meter.
    pub(crate) fn spent(&self, step: &PlanStep, usage: Usage) {
        if let Some(meter) = &self.meter {
            meter.record(AttemptSpend {
                model: &step.model.config.id,
                region: step.target.region(),
                usage,
            });
        }
    }

    /// The request has ended: drops the meter, which settles its reservation now rather than
    /// when the stream's state is dropped (after the client has the last event, and may have
    /// sent its next request).
    pub(crate) fn settle(&mut self) {
        self.meter = None;
    }

    /// Tells the meter which model answered.
    pub(crate) fn answered_by(&self, model: &str, region: &str) {
        if let Some(meter) = &self.meter {
            meter.answered_by(model, region);
        }
    }

    pub fn elapsed_ms(&self) -> f64 {
        self.received.elapsed().as_secs_f64() * 1000.0
    }
}

/// Runs requests against their plans under the configured deadlines and retry policy.
#[derive(Debug, Clone)]
pub struct Executor {
    timeouts: TimeoutConfig,
    /// Shared by every request: its budget bounds retries across all of them.
    retrier: Arc<Retrier>,
    /// Where every request's outcome is recorded.
    window: Arc<LiveWindow>,
    shutdown: Shutdown,
    degradation: Arc<DegradationConfig>,
    /// Longest a call waits for a target's rate limiter while another target could take it.
    max_limiter_wait: Duration,
    /// The answer cache, when it is on.
    cache: Option<Arc<AnswerCache>>,
    /// How resumed-by-replay answers ended.
    replays: Arc<StreamReplays>,
}

/// Which deadline ends a wait first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadlineKind {
    Total,
    FirstToken,
    Idle,
    /// A one-shot call's whole answer.
    OneShot,
}

impl Executor {
    /// The executor of `config`'s policies.
    pub fn new(
        config: &RelayConfig,
        cache: Option<Arc<AnswerCache>>,
        window: Arc<LiveWindow>,
        shutdown: Shutdown,
    ) -> Self {
        Executor {
            cache,
            timeouts: config.timeouts,
            retrier: Arc::new(Retrier::new(config.retry)),
            max_limiter_wait: Duration::from_millis(config.rate_limit.max_wait_ms),
            window,
            shutdown,
            degradation: Arc::new(config.degradation.clone()),
            replays: Arc::default(),
        }
    }

    /// One complete answer: from the cache when it has a fresh one, else from the first target
    /// of the plan that gives one; when none does, a stale cached answer or the degraded answer
    /// where they apply.
    pub async fn complete(
        &self,
        ctx: RequestContext,
        decision: RouteDecision,
        request: ChatRequest,
    ) -> Result<ChatResponse, RelayError> {
        let request_id = ctx.request_id.clone();
        let mut recorder = OutcomeRecorder::new(&self.window, &decision, &ctx);
        let mut walk = walk::Walk::new(self.clone(), ctx, decision, request);
        if let Some(hit) = walk.cached(false).await {
            recorder.not_counted();
            return Ok(cached_response(&walk, request_id, hit));
        }
        let (answer, route, total_ms) = match walk.call_next(walk::CallKind::OneShot, "").await {
            Ok(called) => {
                let walk::Reply::Answer(answer) = called.reply else {
                    return Err(RelayError::Internal(
                        "a one-shot call returned a stream".into(),
                    ));
                };
                called.permit.success();
                called.step.target.calls.record(Outcome {
                    ending: Ending::Ok,
                    ttft_ms: None,
                    total_ms: called.started.elapsed().as_secs_f64() * 1000.0,
                });
                walk.spent(
                    &called.step,
                    answer
                        .usage
                        .unwrap_or_else(|| walk.estimate_usage(answer.text.chars().count())),
                );
                walk.remember(&called.step, &answer.text, answer.stop_reason, answer.usage);
                let route = walk.route_info(&called.step);
                self.window.metrics().answered(&route);
                walk.ctx
                    .answered_by(&route.model, called.step.target.region());
                // One clock reading for the live window and the answer, so they agree.
                let ended = outcome(Ending::Ok, None, &walk.ctx);
                let total_ms = ended.total_ms;
                recorder.record(&route.model, ended);
                (answer, route, total_ms)
            }
            Err(err) => {
                let first_model = &walk.decision.first_model().config.id;
                recorder.record(first_model, outcome(Ending::Error, None, &walk.ctx));
                if walk::Walk::upstreams_fault(&err)
                    && let Some(hit) = walk.cached(true).await
                {
                    tracing::warn!(request_id = %request_id, error = %err, "every target failed; answering from the cache");
                    return Ok(cached_response(&walk, request_id, hit));
                }
                if !walk.degrades(&err, false) {
                    return Err(err);
                }
                tracing::warn!(
                    request_id = %request_id, error = %err,
                    "every target failed; answering with the degraded answer"
                );
                let route = walk.degraded_route(&err);
                self.window.metrics().answered(&route);
                return Ok(ChatResponse {
                    request_id,
                    degraded: true,
                    model: first_model.clone(),
                    text: walk.degraded_text(),
                    tool_calls: Vec::new(),
                    stop_reason: StopReason::EndTurn,
                    usage: Some(Usage::default()),
                    route,
                    timings: Timings {
                        ttft_ms: None,
                        total_ms: walk.ctx.elapsed_ms(),
                    },
                });
            }
        };
        Ok(ChatResponse {
            request_id,
            degraded: false,
            model: route.model.clone(),
            text: answer.text,
            tool_calls: answer.tool_calls,
            stop_reason: answer.stop_reason,
            usage: answer.usage,
            route,
            timings: Timings {
                ttft_ms: None,
                total_ms,
            },
        })
    }

    /// Walks the plan until a target accepts the call (so that when every target fails before
    /// answering, the client gets an ordinary HTTP error, or the degraded answer), and returns
    /// the client-facing event stream, which starts with `start`. `restart` says how the
    /// surface takes an answer that must start again after text was sent.
    pub async fn open_stream(
        &self,
        ctx: RequestContext,
        decision: RouteDecision,
        request: ChatRequest,
        restart: Restart,
    ) -> Result<ChatEventStream, RelayError> {
        ChatEventStream::open(self.clone(), ctx, decision, request, restart).await
    }

    /// How resumed-by-replay answers ended, since start-up.
    pub fn replays(&self) -> &StreamReplays {
        &self.replays
    }

    /// The error for a passed deadline of a call to `target`.
    pub(crate) fn deadline_error(&self, kind: DeadlineKind, target: &Target) -> RelayError {
        let (failure, message) = match kind {
            DeadlineKind::Total => return RelayError::DeadlineExceeded(self.timeouts.total()),
            DeadlineKind::FirstToken => (
                UpstreamFailure::Timeout,
                format!("no first token within {:?}", self.timeouts.first_token()),
            ),
            DeadlineKind::OneShot => (
                UpstreamFailure::Timeout,
                format!("no answer within {:?}", self.timeouts.one_shot()),
            ),
            DeadlineKind::Idle => (
                UpstreamFailure::Stalled,
                format!(
                    "the stream stalled: nothing received for {:?}",
                    self.timeouts.idle()
                ),
            ),
        };
        target.upstream_error(failure, message)
    }

    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub(crate) fn window(&self) -> &LiveWindow {
        &self.window
    }
}

/// One call to `target` under its breaker and rate limiter: waits for the limiter (until
/// `wait_until` at the latest), makes the call (timed by `retrier`: a failure after a long wait
/// for nothing is a timeout), feeds the outcome to the limiter, and on failure to the breaker.
/// On success the breaker's permit is returned unsettled, for the caller to settle when the
/// answer is complete.
async fn guarded_call<T, Fut>(
    target: &Target,
    retrier: &Retrier,
    wait_until: tokio::time::Instant,
    call: impl FnOnce() -> Fut,
) -> Result<(T, Permit), RelayError>
where
    Fut: std::future::Future<Output = Result<T, RelayError>>,
{
    let permit = target.breaker.acquire()?;
    target.limiter.acquire(wait_until).await?;
    let result = retrier.timed(call()).await;
    target.limiter.observe(&result);
    match result {
        Ok(value) => Ok((value, permit)),
        Err(err) => {
            permit.failure(&err);
            Err(err)
        }
    }
}

/// The answer of `POST /v1/chat` from the cache. Its usage is zero: no tokens were spent on it.
fn cached_response(walk: &walk::Walk, request_id: String, hit: Hit) -> ChatResponse {
    let route = walk.cache_route(&hit);
    ChatResponse {
        request_id,
        degraded: false,
        model: route.model.clone(),
        text: hit.answer.text,
        tool_calls: Vec::new(),
        stop_reason: hit.answer.stop_reason,
        usage: Some(Usage::default()),
        route,
        timings: Timings {
            ttft_ms: None,
            total_ms: walk.ctx.elapsed_ms(),
        },
    }
}

/// The earliest of several deadlines, with its kind.
pub(crate) fn earliest(deadlines: &[(Instant, DeadlineKind)]) -> (Instant, DeadlineKind) {
    deadlines
        .iter()
        .copied()
        .min_by_key(|(at, _)| *at)
        .unwrap_or((Instant::now(), DeadlineKind::Total))
}

/// How a request ended, for the live window.
pub(crate) fn outcome(ending: Ending, ttft_ms: Option<f64>, ctx: &RequestContext) -> Outcome {
    Outcome {
        ending,
        ttft_ms,
        total_ms: ctx.elapsed_ms(),
    }
}

/// Records a one-shot request's end in the live window, and files it as cancelled when it is
/// dropped first: hyper drops the future of a request whose client went away, and such a request
/// must still be counted.
struct OutcomeRecorder<'a> {
    window: &'a LiveWindow,
    /// The model a request that ended without an answer is filed under.
    model: Arc<ModelEntry>,
    received: Instant,
    recorded: bool,
}

impl<'a> OutcomeRecorder<'a> {
    fn new(window: &'a LiveWindow, decision: &RouteDecision, ctx: &RequestContext) -> Self {
        OutcomeRecorder {
            window,
            model: decision.first_model().clone(),
            received: ctx.received,
            recorded: false,
        }
    }

    fn record(&mut self, model: &str, outcome: Outcome) {
        self.recorded = true;
        self.window.record(model, outcome);
    }

    /// The request ended in a way the window does not count (a fresh cache hit).
    fn not_counted(&mut self) {
        self.recorded = true;
    }
}

impl Drop for OutcomeRecorder<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let outcome = Outcome {
                ending: Ending::Cancelled,
                ttft_ms: None,
                total_ms: self.received.elapsed().as_secs_f64() * 1000.0,
            };
            self.window.record(&self.model.config.id, outcome);
        }
    }
}
