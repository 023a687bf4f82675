//! Retries of one upstream call: full-jitter exponential backoff, a retry budget, and a clear
//! rule for what is worth retrying.
//!
//! Only failures where the upstream answered "not now" are retried: throttling and
//! unavailability (5xx, model not ready, connection refused). A call that timed out is not — a
//! target that never answered should be failed over, not hammered — and neither is a request the
//! upstream rejected or a misconfiguration. A call that failed only after waiting longer than
//! `slow_failure_ms` for an answer (an upstream that accepted the connection, sent nothing and
//! closed it 15 s later; a 5xx that took as long) counts as a timeout: it is not retried on the
//! same target, so the next one answers after one such wait, not two. Backoff before retry n is
//! uniform in `[0, min(max_delay, base_delay * 2^(n-1))]` ("full jitter"), so synchronized
//! clients spread out. Retries draw on a budget shared by every request (tower's `TpsBudget`: a
//! percentage of recent requests plus a small floor per second), so an outage cannot multiply the
//! load on the upstream. A backoff that would pass the request's deadline is not started.
//!
//! **Throttling and what comes next.** Where the plan goes after this target decides how a
//! throttled call is treated ([`NextTarget`]): when the same model is served elsewhere (another
//! region or profile), the call moves there at once and the throttled target is sent less; when
//! only other models remain, a short `Retry-After` (`Retry-After`, `x-amz-retry-after`,
//! `retry-after-ms`; at most `max_retry_after_ms`, and within the deadline) is waited out and the
//! requested model tried again before the request is downgraded — a throttle without a wait, or
//! with a longer one, moves on at once. With no target left, throttling is retried with backoff,
//! each wait at least what the upstream asked, and a wait longer than `max_retry_after_ms` ends
//! the call with the upstream's `Retry-After` for the client. What was decided about a
//! `Retry-After` is reported ([`RetryAfter`]) so that the route can explain it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::RetryConfig;
use crate::error::{RelayError, UpstreamFailure};

/// Runs calls with retries under the configured policy and the shared budget.
#[derive(Debug)]
pub struct Retrier {
    config: RetryConfig,
    budget: TpsBudget,
}

/// What follows the target being called in the request's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextTarget {
    /// Nothing: this target is the last.
    None,
    /// The same model, served elsewhere.
    SameModel,
    /// Only other models.
    OtherModel,
}

/// What the retry policy did with a wait the upstream asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// The wait was honoured and the target called again.
    Waited(Duration),
    /// The wait was longer than the relay waits (`max_retry_after_ms`), or than the deadline
    /// allows: the call was not retried.
    TooLong(Duration),
}

/// How a retried call ended.
#[derive(Debug)]
pub struct Attempted<T> {
    pub result: Result<T, RelayError>,
    /// How many calls were made, the last included.
    pub attempts: u32,
    /// What became of the upstream's `Retry-After`s, in order.
    pub retry_afters: Vec<RetryAfter>,
}

impl Retrier {
    pub fn new(config: RetryConfig) -> Self {
        let budget = TpsBudget::new(
            Duration::from_secs(config.budget_window_secs),
            config.budget_min_per_sec,
            config.budget_percent / 100.0,
        );
        Retrier { config, budget }
    }

    /// Whether `err` is worth another attempt at the same target.
    pub fn is_retryable(err: &RelayError) -> bool {
        matches!(
            err,
            RelayError::Upstream {
                failure: UpstreamFailure::Throttled | UpstreamFailure::Unavailable,
                ..
            }
        )
    }

    /// Makes one upstream call (not the waits for the relay's own limits around it); a failure
    /// that came only after `slow_failure_ms` or longer becomes a timeout
    /// ([`RelayError::waited_for_nothing`]).
    pub async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, RelayError>>,
    ) -> Result<T, RelayError> {
        let started = Instant::now();
        call.await.map_err(|err| {
            let waited = started.elapsed();
            match waited >= Duration::from_millis(self.config.slow_failure_ms) {
                true => err.waited_for_nothing(waited),
                false => err,
            }
        })
    }

    /// The longest wait before retry `retry` (1 for the first retry).
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let base = Duration::from_millis(self.config.base_delay_ms);
        let cap = Duration::from_millis(self.config.max_delay_ms);
        base.saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(cap)
    }

    /// Calls `call(attempt)` until it succeeds, fails for good, runs out of attempts or budget,
    /// or the next wait would pass `deadline`; `next` is what the plan holds after this target
    /// (see the module docs for how it shapes the handling of throttling).
    pub async fn run<T, F, Fut>(
        &self,
        deadline: Instant,
        next: NextTarget,
        mut call: F,
    ) -> Attempted<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, RelayError>>,
    {
        self.budget.deposit();
        let mut attempt = 1;
        let mut retry_afters = Vec::new();
        loop {
            let err = match call(attempt).await {
                Ok(value) => {
                    return Attempted {
                        result: Ok(value),
                        attempts: attempt,
                        retry_afters,
                    };
                }
                Err(err) => err,
            };
            let ended = |err, retry_afters| Attempted {
                result: Err(err),
                attempts: attempt,
                retry_afters,
            };
            if !Self::is_retryable(&err) || attempt >= self.config.max_attempts {
                return ended(err, retry_afters);
            }
            let throttled = matches!(
                err,
                RelayError::Upstream {
                    failure: UpstreamFailure::Throttled,
                    ..
                }
            );
            let asked = err.retry_after();
            match next {
                // The same model elsewhere takes the call at once.
                NextTarget::SameModel if throttled => return ended(err, retry_afters),
                // Before another model: only a throttle that says how long to wait is waited.
                NextTarget::OtherModel if throttled && asked.is_none() => {
                    return ended(err, retry_afters);
                }
                _ => {}
            }
            let ceiling = self.backoff_ceiling(attempt);
            let mut wait = Duration::from_nanos(fastrand::u64(..=ceiling.as_nanos() as u64));
            if let Some(asked) = asked {
                let longest = Duration::from_millis(self.config.max_retry_after_ms);
                if asked > longest || Instant::now() + asked >= deadline {
                    tracing::debug!(%err, ?asked, "no retry: the upstream asks for a longer wait than the relay waits");
                    retry_afters.push(RetryAfter::TooLong(asked));
                    return ended(err, retry_afters);
                }
                wait = wait.max(asked);
            }
            if Instant::now() + wait >= deadline {
                tracing::debug!(%err, ?wait, "no retry: the wait would pass the deadline");
                return ended(err, retry_afters);
            }
            if !self.budget.withdraw() {
                tracing::warn!(%err, "no retry: the retry budget is spent");
                return ended(err, retry_afters);
            }
            if let Some(asked) = asked {
                retry_afters.push(RetryAfter::Waited(asked));
            }
            tracing::debug!(%err, attempt, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn upstream(failure: UpstreamFailure) -> RelayError {
        RelayError::Upstream {
            failure,
            provider: "test",
            target: "m".into(),
            message: "scripted".into(),
            retry_after: None,
        }
    }

    fn retrier(max_attempts: u32, budget_percent: f32, budget_min_per_sec: u32) -> Retrier {
        Retrier::new(RetryConfig {
            max_attempts,
            base_delay_ms: 100,
            max_delay_ms: 1000,
            budget_percent,
            budget_min_per_sec,
            budget_window_secs: 10,
            max_retry_after_ms: 3000,
            slow_failure_ms: 5000,
        })
    }

    /// Runs a call that fails with `failures` in order, then succeeds; returns the attempts
    /// made and the instants they started.
    async fn scripted(
        retrier: &Retrier,
        failures: Vec<UpstreamFailure>,
        deadline: Duration,
    ) -> (Attempted<&'static str>, Vec<Instant>) {
        let starts = Mutex::new(Vec::new());
        let outcome = retrier
            .run(Instant::now() + deadline, NextTarget::None, |attempt| {
                starts.lock().unwrap().push(Instant::now());
                let result = match failures.get(attempt as usize - 1) {
                    Some(&failure) => Err(upstream(failure)),
                    None => Ok("answer"),
                };
                async move { result }
            })
            .await;
        (outcome, starts.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_with_jittered_exponential_backoff() {
        let retrier = retrier(3, 20.0, 10);
        let (outcome, starts) = scripted(
            &retrier,
            vec![UpstreamFailure::Throttled, UpstreamFailure::Unavailable],
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(outcome.result.unwrap(), "answer");
        assert_eq!(outcome.attempts, 3);
        assert!(starts[1] - starts[0] <= Duration::from_millis(100));
        assert!(starts[2] - starts[1] <= Duration::from_millis(200));
        assert_eq!(retrier.backoff_ceiling(5), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_is_honoured_up_to_the_cap() {
        let retrier = retrier(3, 20.0, 10);
        let asking = |wait_ms: u64| RelayError::Upstream {
            failure: UpstreamFailure::Throttled,
            provider: "test",
            target: "m".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(wait_ms)),
        };
        for (asked_ms, expected_attempts) in [(700, 2), (2_500, 2), (5_000, 1)] {
            let starts = Mutex::new(Vec::new());
            let outcome = retrier
                .run(
                    Instant::now() + Duration::from_secs(60),
                    NextTarget::None,
                    |attempt| {
                        starts.lock().unwrap().push(Instant::now());
                        let result = if attempt == 1 {
                            Err(asking(asked_ms))
                        } else {
                            Ok("answer")
                        };
                        async move { result }
                    },
                )
                .await;
            let starts = starts.into_inner().unwrap();
            assert_eq!(outcome.attempts, expected_attempts, "asked {asked_ms} ms");
            if expected_attempts == 2 {
                // At least what the upstream asked, though the backoff alone is at most 100 ms.
                assert!(starts[1] - starts[0] >= Duration::from_millis(asked_ms));
                assert_eq!(outcome.result.unwrap(), "answer");
                let waited = Duration::from_millis(asked_ms);
                assert_eq!(outcome.retry_afters, [RetryAfter::Waited(waited)]);
            } else {
                // More than max_retry_after_ms (3 s): not waited here; the caller sees the error.
                let asked = Duration::from_millis(5_000);
                assert_eq!(outcome.retry_afters, [RetryAfter::TooLong(asked)]);
                assert_eq!(outcome.result.unwrap_err().retry_after(), Some(asked));
            }
        }
    }

    /// One throttle asking to wait `asked_ms` (or not saying), then an answer, with `next`
    /// after the target and a deadline `deadline_ms` away: the attempts and what became of the
    /// wait.
    async fn throttled_once(
        next: NextTarget,
        asked_ms: Option<u64>,
        deadline_ms: u64,
    ) -> (u32, Vec<RetryAfter>, Duration) {
        let retrier = retrier(3, 20.0, 10);
        let started = Instant::now();
        let outcome = retrier
            .run(
                Instant::now() + Duration::from_millis(deadline_ms),
                next,
                |attempt| {
                    let result = match attempt {
                        1 => Err(RelayError::Upstream {
                            failure: UpstreamFailure::Throttled,
                            provider: "test",
                            target: "m".into(),
                            message: "slow down".into(),
                            retry_after: asked_ms.map(Duration::from_millis),
                        }),
                        _ => Ok("answer"),
                    };
                    async move { result }
                },
            )
            .await;
        (outcome.attempts, outcome.retry_afters, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_is_waited_out_before_another_model_but_not_before_another_region()
    {
        let two_s = Duration::from_secs(2);
        // Only other models left: the requested model is tried again after the wait it asked.
        let (attempts, notes, took) =
            throttled_once(NextTarget::OtherModel, Some(2000), 30_000).await;
        assert_eq!((attempts, notes), (2, vec![RetryAfter::Waited(two_s)]));
        assert!(took >= two_s, "{took:?}");
        // A longer wait than max_retry_after_ms (3 s), or one past the deadline: downgrade now.
        let (attempts, notes, took) =
            throttled_once(NextTarget::OtherModel, Some(5000), 30_000).await;
        let five_s = Duration::from_secs(5);
        assert_eq!((attempts, notes), (1, vec![RetryAfter::TooLong(five_s)]));
        assert!(took < Duration::from_millis(10));
        let (attempts, notes, _) = throttled_once(NextTarget::OtherModel, Some(2000), 1500).await;
        assert_eq!((attempts, notes), (1, vec![RetryAfter::TooLong(two_s)]));
        // A throttle that does not say how long: nothing to honour, downgrade now.
        let (attempts, notes, _) = throttled_once(NextTarget::OtherModel, None, 30_000).await;
        assert_eq!((attempts, notes), (1, vec![]));
        // The same model elsewhere: move there at once, whatever the wait.
        let (attempts, notes, took) =
            throttled_once(NextTarget::SameModel, Some(1000), 30_000).await;
        assert_eq!((attempts, notes), (1, vec![]));
        assert!(took < Duration::from_millis(10));
        // Nothing else left: retried with backoff, as before.
        let (attempts, _, _) = throttled_once(NextTarget::None, None, 30_000).await;
        assert_eq!(attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_failed_after_a_long_wait_for_nothing_is_a_timeout_not_retried() {
        let retrier = retrier(3, 20.0, 10);
        for (silent_ms, expected_attempts) in [(100, 2), (6_000, 1)] {
            let outcome = retrier
                .run(
                    Instant::now() + Duration::from_secs(60),
                    NextTarget::None,
                    |attempt| {
                        retrier.timed(async move {
                            if attempt > 1 {
                                return Ok("answer");
                            }
                            tokio::time::sleep(Duration::from_millis(silent_ms)).await;
                            Err(upstream(UpstreamFailure::Unavailable))
                        })
                    },
                )
                .await;
            assert_eq!(outcome.attempts, expected_attempts, "{silent_ms} ms");
            if expected_attempts == 1 {
                let err = outcome.result.unwrap_err();
                assert!(
                    matches!(
                        err,
                        RelayError::Upstream {
                            failure: UpstreamFailure::Timeout,
                            ..
                        }
                    ),
                    "{err:?}"
                );
                assert!(err.to_string().contains("after 6.0 s"), "{err}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let retrier = retrier(3, 20.0, 10);
        let (outcome, starts) = scripted(
            &retrier,
            vec![UpstreamFailure::Throttled; 5],
            Duration::from_secs(60),
        )
        .await;
        assert!(matches!(
            outcome.result,
            Err(RelayError::Upstream {
                failure: UpstreamFailure::Throttled,
                ..
            })
        ));
        assert_eq!((outcome.attempts, starts.len()), (3, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_rejections_and_misconfiguration_are_not_retried() {
        let retrier = retrier(5, 20.0, 10);
        for failure in [
            UpstreamFailure::Timeout,
            UpstreamFailure::Stalled,
            UpstreamFailure::Rejected,
            UpstreamFailure::Misconfigured,
        ] {
            let (outcome, _) = scripted(&retrier, vec![failure], Duration::from_secs(60)).await;
            assert_eq!(outcome.attempts, 1, "{failure:?}");
            assert!(outcome.result.is_err(), "{failure:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_is_started_that_would_pass_the_deadline() {
        let retrier = Retrier::new(RetryConfig {
            base_delay_ms: 1000,
            max_delay_ms: 1000,
            ..RetryConfig::default()
        });
        // Full jitter can pick a short wait; with a 1 ns deadline every wait passes it.
        let (outcome, _) = scripted(
            &retrier,
            vec![UpstreamFailure::Throttled],
            Duration::from_nanos(1),
        )
        .await;
        assert_eq!(outcome.attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_a_retry_storm() {
        // No percentage and no floor: nothing may be retried.
        let no_budget = retrier(3, 0.0, 0);
        let (outcome, _) = scripted(
            &no_budget,
            vec![UpstreamFailure::Unavailable],
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(outcome.attempts, 1);
        // A 10% budget with no floor: of 100 failing requests, about 10 get a retry.
        let ten_percent = retrier(2, 10.0, 0);
        let mut retried = 0;
        for _ in 0..100 {
            let (outcome, _) = scripted(
                &ten_percent,
                vec![UpstreamFailure::Unavailable; 2],
                Duration::from_secs(60),
            )
            .await;
            retried += outcome.attempts - 1;
        }
        assert!((5..=15).contains(&retried), "{retried} retries");
    }
}
