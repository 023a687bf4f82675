//! A circuit breaker per target: after a run of failures, or a high failure rate over a window,
//! the target is **open** — calls fail fast with a `503` that says why and when to come back,
//! instead of piling onto a struggling upstream. After a cool-down it is **half-open**: a bounded
//! number of probe calls go through; if they all succeed it **closes**, if one fails it opens
//! again.
//!
//! **The cool-down grows with the outage.** The first opening lasts `min_open_ms` (about a
//! second); each re-opening lasts `open_share_of_outage` of the time since that first opening,
//! between `min_open_ms` and `max_open_ms`. A flap of a few seconds is probed every second, so
//! traffic is back on the target about a second after it recovers; a long outage is probed at an
//! interval that grows by a tenth each time (with the default share) up to the cap, so a dead
//! upstream sees few probes. Closing forgets the outage: the next opening is short again. A
//! fixed cool-down cannot do both — the earlier 10 s kept a primary that flapped for six seconds
//! away for five more.
//!
//! Only failures that say something about the target's health count: unavailability, timeouts,
//! stalls and broken streams. Throttling does not (the rate limiter's business), nor do requests
//! the upstream rejected or misconfiguration. Every change of state is logged with its reason,
//! and [`CircuitBreaker::status`] shows it (in `GET /v1/stats`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fm_protocol::{CircuitState, CircuitStatus};
use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::error::{RelayError, UpstreamFailure};

#[derive(Debug)]
enum State {
    Closed {
        consecutive: u32,
        window: Window,
    },
    Open {
        until: Instant,
        reason: String,
        opening: Opening,
    },
    HalfOpen {
        in_flight: u32,
        succeeded: u32,
        reason: String,
        opening: Opening,
    },
}

/// One opening of the breaker and the outage it belongs to: the openings since it last closed.
#[derive(Debug, Clone, Copy)]
struct Opening {
    /// When the first opening of this outage began.
    outage_since: Instant,
    /// Openings in a row, this one included.
    count: u32,
    /// How long the target had been failing when this opening began.
    failing_for: Duration,
    /// How long this opening keeps calls away.
    cool_down: Duration,
}

/// Outcomes of the last `window_secs`, in one-second buckets.
#[derive(Debug)]
struct Window {
    /// `(second, successes, failures)`, oldest first.
    buckets: std::collections::VecDeque<(u64, u32, u32)>,
}

impl Window {
    fn new() -> Self {
        Window {
            buckets: Default::default(),
        }
    }

    fn add(&mut self, second: u64, span: u64, failed: bool) {
        while self
            .buckets
            .front()
            .is_some_and(|(s, ..)| second.saturating_sub(*s) >= span)
        {
            self.buckets.pop_front();
        }
        match self.buckets.back_mut() {
            Some((s, ok, fail)) if *s == second => {
                if failed {
                    *fail += 1;
                } else {
                    *ok += 1;
                }
            }
            _ => self
                .buckets
                .push_back((second, u32::from(!failed), u32::from(failed))),
        }
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets
            .iter()
            .fold((0, 0), |(ok, fail), (_, o, f)| (ok + o, fail + f))
    }
}

/// One target's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    target: String,
    config: BreakerConfig,
    started: Instant,
    state: Mutex<State>,
}

/// Leave to make one call. Settle it with [`Permit::success`] or [`Permit::failure`]; a permit
/// dropped unsettled (the client went away) frees its probe slot without a verdict.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    settled: bool,
}

impl CircuitBreaker {
    pub fn new(target: String, config: BreakerConfig) -> Arc<Self> {
        Arc::new(CircuitBreaker {
            target,
            config,
            started: Instant::now(),
            state: Mutex::new(State::Closed {
                consecutive: 0,
                window: Window::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make a call: a permit, or the fail-fast error while open.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, RelayError> {
        let mut state = self.lock();
        let now = Instant::now();
        let probe = match &mut *state {
            State::Closed { .. } => false,
            State::Open {
                until,
                reason,
                opening,
            } if now >= *until => {
                tracing::info!(target = %self.target, "circuit half-open: sending probes");
                let reason = std::mem::take(reason);
                let opening = *opening;
                *state = State::HalfOpen {
                    in_flight: 1,
                    succeeded: 0,
                    reason,
                    opening,
                };
                true
            }
            State::Open { until, reason, .. } => {
                return Err(self.open_error(reason, *until - now));
            }
            State::HalfOpen {
                in_flight,
                succeeded,
                reason,
                ..
            } => {
                if *in_flight + *succeeded >= self.config.half_open_probes {
                    return Err(self.open_error(reason, Duration::ZERO));
                }
                *in_flight += 1;
                true
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            settled: false,
        })
    }

    fn open_error(&self, reason: &str, wait: Duration) -> RelayError {
        RelayError::Upstream {
            failure: UpstreamFailure::CircuitOpen,
            provider: "relay",
            target: self.target.clone(),
            message: format!("circuit open ({reason}); calls resume after a cool-down"),
            retry_after: Some(wait.max(Duration::from_secs(1))),
        }
    }

    /// Whether the breaker refuses calls now (open, its cool-down not over).
    pub fn is_open(&self) -> bool {
        matches!(&*self.lock(), State::Open { until, .. } if Instant::now() < *until)
    }

    /// Whether a failure counts against the target's health.
    pub fn counts_as_failure(err: &RelayError) -> bool {
        matches!(
            err,
            RelayError::Upstream {
                failure: UpstreamFailure::Unavailable
                    | UpstreamFailure::Timeout
                    | UpstreamFailure::Stalled
                    | UpstreamFailure::Protocol,
                ..
            }
        )
    }

    /// The next opening at `now`: the first of an outage, or the one after `previous`.
    fn next_opening(&self, now: Instant, previous: Option<Opening>) -> Opening {
        let min = Duration::from_millis(self.config.min_open_ms);
        let max = Duration::from_millis(self.config.max_open_ms);
        match previous {
            None => Opening {
                outage_since: now,
                count: 1,
                failing_for: Duration::ZERO,
                cool_down: min,
            },
            Some(previous) => {
                let failing_for = now - previous.outage_since;
                Opening {
                    outage_since: previous.outage_since,
                    count: previous.count + 1,
                    failing_for,
                    cool_down: failing_for
                        .mul_f64(self.config.open_share_of_outage)
                        .clamp(min, max),
                }
            }
        }
    }

    /// Why `opening` lasts as long as it does.
    fn cool_down_reason(&self, opening: &Opening) -> String {
        let cool_down = seconds(opening.cool_down);
        if opening.count == 1 {
            return format!(
                "open for {cool_down}: the first opening since the target last recovered waits the shortest cool-down"
            );
        }
        let failing_for = seconds(opening.failing_for);
        let bound = match opening.cool_down.as_millis() as u64 {
            ms if ms <= self.config.min_open_ms => " (the shortest)",
            ms if ms >= self.config.max_open_ms => " (the longest)",
            _ => "",
        };
        format!(
            "open for {cool_down}{bound}: opening {} in a row; the target had been failing for {failing_for}, and a re-opening waits {:.0}% of that, between {} and {}",
            opening.count,
            self.config.open_share_of_outage * 100.0,
            seconds(Duration::from_millis(self.config.min_open_ms)),
            seconds(Duration::from_millis(self.config.max_open_ms)),
        )
    }

    fn settle(&self, probe: bool, failure: Option<&RelayError>) {
        let mut state = self.lock();
        let now = Instant::now();
        match &mut *state {
            State::Closed {
                consecutive,
                window,
            } => {
                let second = (now - self.started).as_secs();
                window.add(second, self.config.window_secs, failure.is_some());
                let Some(err) = failure else {
                    *consecutive = 0;
                    return;
                };
                *consecutive += 1;
                let (ok, failed) = window.totals();
                let total = ok + failed;
                let rate = f64::from(failed) * 100.0 / f64::from(total.max(1));
                let reason = if *consecutive >= self.config.consecutive_failures {
                    Some(format!("{consecutive} failures in a row, the last: {err}"))
                } else if total >= self.config.min_requests
                    && rate >= f64::from(self.config.failure_rate_percent)
                {
                    Some(format!(
                        "{failed} of the last {total} calls failed ({rate:.0}%), the last: {err}"
                    ))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    let opening = self.next_opening(now, None);
                    tracing::warn!(
                        target = %self.target, %reason, cool_down = ?opening.cool_down,
                        "circuit opened"
                    );
                    *state = State::Open {
                        until: now + opening.cool_down,
                        reason,
                        opening,
                    };
                }
            }
            State::HalfOpen {
                in_flight,
                succeeded,
                opening,
                ..
            } if probe => {
                *in_flight = in_flight.saturating_sub(1);
                match failure {
                    Some(err) => {
                        let reason = format!("a probe failed: {err}");
                        let opening = self.next_opening(now, Some(*opening));
                        tracing::warn!(
                            target = %self.target, %reason, cool_down = ?opening.cool_down,
                            openings = opening.count, "circuit opened again"
                        );
                        *state = State::Open {
                            until: now + opening.cool_down,
                            reason,
                            opening,
                        };
                    }
                    None => {
                        *succeeded += 1;
                        if *succeeded >= self.config.half_open_probes {
                            tracing::info!(target = %self.target, "circuit closed: probes succeeded");
                            *state = State::Closed {
                                consecutive: 0,
                                window: Window::new(),
                            };
                        }
                    }
                }
            }
            // Calls admitted before the state changed say nothing about the new state.
            State::HalfOpen { .. } | State::Open { .. } => {}
        }
    }

    fn release(&self) {
        if let State::HalfOpen { in_flight, .. } = &mut *self.lock() {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// The breaker's state and, unless closed, why it tripped and how long it stays open.
    pub fn status(&self) -> CircuitStatus {
        let (state, reason, opening, probe_in) = match &*self.lock() {
            State::Closed { .. } => return CircuitStatus::default(),
            State::Open {
                until,
                reason,
                opening,
            } => (
                CircuitState::Open,
                reason.clone(),
                *opening,
                Some(until.saturating_duration_since(Instant::now())),
            ),
            State::HalfOpen {
                reason, opening, ..
            } => (CircuitState::HalfOpen, reason.clone(), *opening, None),
        };
        CircuitStatus {
            state,
            reason: Some(reason),
            open_ms: Some(opening.cool_down.as_millis() as u64),
            probe_in_ms: probe_in.map(|wait| wait.as_millis() as u64),
            openings: opening.count,
            open_time_reason: Some(self.cool_down_reason(&opening)),
        }
    }
}

/// A duration as people read it in status texts: `1.6 s`.
fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, None);
    }

    /// The call failed; only failures that say something about the target count.
    pub fn failure(mut self, err: &RelayError) {
        if CircuitBreaker::counts_as_failure(err) {
            self.settled = true;
            self.breaker.settle(self.probe, Some(err));
        }
        // Otherwise not the target's fault: dropping frees a probe slot without a verdict.
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> RelayError {
        RelayError::Upstream {
            failure: UpstreamFailure::Unavailable,
            provider: "test",
            target: "m".into(),
            message: "503".into(),
            retry_after: None,
        }
    }

    fn breaker() -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            "m in r".into(),
            BreakerConfig {
                consecutive_failures: 3,
                failure_rate_percent: 50.0,
                min_requests: 10,
                window_secs: 10,
                min_open_ms: 1000,
                max_open_ms: 8000,
                open_share_of_outage: 0.5,
                half_open_probes: 2,
            },
        )
    }

    fn fail(breaker: &Arc<CircuitBreaker>) {
        breaker.acquire().unwrap().failure(&unavailable());
    }

    fn succeed(breaker: &Arc<CircuitBreaker>) {
        breaker.acquire().unwrap().success();
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_then_probes_close() {
        let breaker = breaker();
        fail(&breaker);
        fail(&breaker);
        succeed(&breaker);
        fail(&breaker);
        fail(&breaker);
        assert_eq!(breaker.status().state, CircuitState::Closed);
        fail(&breaker);
        let status = breaker.status();
        assert_eq!(status.state, CircuitState::Open);
        assert!(status.reason.unwrap().contains("3 failures in a row"));
        let err = breaker.acquire().unwrap_err();
        assert!(matches!(
            err,
            RelayError::Upstream {
                failure: UpstreamFailure::CircuitOpen,
                retry_after: Some(_),
                ..
            }
        ));

        tokio::time::advance(Duration::from_millis(1000)).await;
        let first = breaker.acquire().unwrap();
        let second = breaker.acquire().unwrap();
        assert!(breaker.acquire().is_err(), "only two probes at once");
        assert_eq!(breaker.status().state, CircuitState::HalfOpen);
        first.success();
        assert!(
            breaker.acquire().is_err(),
            "still bounded by the probe count"
        );
        second.success();
        assert_eq!(breaker.status().state, CircuitState::Closed);
        succeed(&breaker);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again_and_a_dropped_probe_frees_its_slot() {
        let breaker = breaker();
        for _ in 0..3 {
            fail(&breaker);
        }
        tokio::time::advance(Duration::from_millis(1000)).await;
        let dropped = breaker.acquire().unwrap();
        drop(dropped);
        let probe = breaker.acquire().unwrap();
        let _other = breaker.acquire().unwrap();
        probe.failure(&unavailable());
        let status = breaker.status();
        assert_eq!(status.state, CircuitState::Open);
        assert!(status.reason.unwrap().contains("a probe failed"));
        assert!(breaker.acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_failure_rate_opens_and_other_errors_do_not_count() {
        let breaker = breaker();
        for _ in 0..5 {
            succeed(&breaker);
            fail(&breaker);
        }
        let status = breaker.status();
        assert_eq!(status.state, CircuitState::Open);
        assert!(status.reason.unwrap().contains("5 of the last 10"));

        let breaker = self::breaker();
        for _ in 0..10 {
            let throttled = RelayError::Upstream {
                failure: UpstreamFailure::Throttled,
                provider: "test",
                target: "m".into(),
                message: "429".into(),
                retry_after: None,
            };
            breaker.acquire().unwrap().failure(&throttled);
        }
        assert_eq!(breaker.status().state, CircuitState::Closed);
    }

    /// Waits out the open breaker's cool-down and fails its first probe.
    async fn fail_a_probe(breaker: &Arc<CircuitBreaker>) {
        // `probe_in_ms` is rounded down to the millisecond.
        let wait = breaker.status().probe_in_ms.unwrap() + 1;
        tokio::time::advance(Duration::from_millis(wait)).await;
        fail(breaker);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cool_down_grows_with_the_outage_and_is_short_again_after_closing() {
        let breaker = breaker();
        for _ in 0..3 {
            fail(&breaker);
        }
        let first = breaker.status();
        assert_eq!((first.open_ms, first.probe_in_ms), (Some(1000), Some(1000)));
        assert_eq!(first.openings, 1);
        assert!(first.open_time_reason.unwrap().contains("first opening"));

        // Half the time failing so far, between 1 s and 8 s: 1, 1, 1, 1.5, 2.25, ... 8.
        let mut cool_downs = vec![1000];
        for _ in 0..10 {
            fail_a_probe(&breaker).await;
            cool_downs.push(breaker.status().open_ms.unwrap());
        }
        let expected = [
            1000, 1000, 1000, 1500, 2250, 3375, 5062, 7593, 8000, 8000, 8000,
        ];
        // Each wait above is a millisecond long (rounding), so the outage is a little longer.
        assert!(
            cool_downs
                .iter()
                .zip(expected)
                .all(|(got, want)| got.abs_diff(want) <= 15),
            "{cool_downs:?}"
        );
        let status = breaker.status();
        assert_eq!(status.state, CircuitState::Open);
        assert_eq!(status.openings, 11);
        let why = status.open_time_reason.unwrap();
        assert!(why.contains("open for 8.0 s (the longest)"), "{why}");
        assert!(why.contains("opening 11 in a row"), "{why}");
        assert!(why.contains("50% of that"), "{why}");

        // The probes succeed: closed, and the outage is forgotten.
        tokio::time::advance(Duration::from_millis(8000)).await;
        succeed(&breaker);
        succeed(&breaker);
        assert_eq!(breaker.status(), CircuitStatus::default());
        for _ in 0..3 {
            fail(&breaker);
        }
        let again = breaker.status();
        assert_eq!((again.open_ms, again.openings), (Some(1000), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window() {
        // Nine calls, four failed: below `min_requests` (10), so closed. One more failure makes
        // ten with five failed — 50%, which opens the breaker — unless the nine have left the
        // window (10 s) first: then one call is below `min_requests`.
        let history = |breaker: &Arc<CircuitBreaker>| {
            for _ in 0..4 {
                fail(breaker);
                succeed(breaker);
            }
            succeed(breaker);
            assert_eq!(breaker.status().state, CircuitState::Closed);
        };
        let kept = breaker();
        history(&kept);
        fail(&kept);
        assert_eq!(
            kept.status().state,
            CircuitState::Open,
            "within the window they count"
        );
        let aged = breaker();
        history(&aged);
        tokio::time::advance(Duration::from_secs(11)).await;
        fail(&aged);
        assert_eq!(aged.status().state, CircuitState::Closed);
    }
}
