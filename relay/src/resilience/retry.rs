//! Retries of one upstream call: full-jitter exponential backoff, a retry budget, and a clear
//! rule for what is worth retrying.
//!
//! Only failures where the upstream answered "not now" are retried: throttling and
//! unavailability (5xx, model not ready, connection refused). A call that timed out is not — a
//! target that never answered should be failed over, not hammered — and neither is a request the
//! upstream rejected or a misconfiguration. Backoff before retry n is uniform in
//! `[0, min(max_delay, base_delay * 2^(n-1))]` ("full jitter"), so synchronized clients spread
//! out. Retries draw on a budget shared by every request (tower's `TpsBudget`: a percentage of
//! recent requests plus a small floor per second), so an outage cannot multiply the load on the
//! upstream. A backoff that would pass the request's deadline is not started. When the upstream
//! says how long to wait (`Retry-After`, `x-amz-retry-after`, `retry-after-ms`), the wait is at
//! least that; a wait longer than `max_delay_ms` is not waited here: the call fails over or the
//! client gets the error with the upstream's `Retry-After`.

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

/// How a retried call ended.
#[derive(Debug)]
pub struct Attempted<T> {
    pub result: Result<T, RelayError>,
    /// How many calls were made, the last included.
    pub attempts: u32,
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

    /// The longest wait before retry `retry` (1 for the first retry).
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let base = Duration::from_millis(self.config.base_delay_ms);
        let cap = Duration::from_millis(self.config.max_delay_ms);
        base.saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(cap)
    }

    /// Calls `call(attempt)` until it succeeds, fails for good, runs out of attempts or budget,
    /// or the next wait would pass `deadline`. With `failover_available` (another target could
    /// take the call) a throttled call is not retried here: the next target gets it at once, and
    /// the throttled one is sent less.
    pub async fn run<T, F, Fut>(
        &self,
        deadline: Instant,
        failover_available: bool,
        mut call: F,
    ) -> Attempted<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, RelayError>>,
    {
        self.budget.deposit();
        let mut attempt = 1;
        loop {
            let err = match call(attempt).await {
                Ok(value) => {
                    return Attempted {
                        result: Ok(value),
                        attempts: attempt,
                    };
                }
                Err(err) => err,
            };
            let give_up = |err| Attempted {
                result: Err(err),
                attempts: attempt,
            };
            let throttled = matches!(
                err,
                RelayError::Upstream {
                    failure: UpstreamFailure::Throttled,
                    ..
                }
            );
            if !Self::is_retryable(&err)
                || attempt >= self.config.max_attempts
                || (throttled && failover_available)
            {
                return give_up(err);
            }
            let ceiling = self.backoff_ceiling(attempt);
            let mut wait = Duration::from_nanos(fastrand::u64(..=ceiling.as_nanos() as u64));
            if let Some(asked) = err.retry_after() {
                if asked > Duration::from_millis(self.config.max_delay_ms) {
                    tracing::debug!(%err, ?asked, "no retry: the upstream asks for a longer wait than max_delay_ms");
                    return give_up(err);
                }
                wait = wait.max(asked);
            }
            if Instant::now() + wait >= deadline {
                tracing::debug!(%err, ?wait, "no retry: the wait would pass the deadline");
                return give_up(err);
            }
            if !self.budget.withdraw() {
                tracing::warn!(%err, "no retry: the retry budget is spent");
                return give_up(err);
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
            .run(Instant::now() + deadline, false, |attempt| {
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
        for (asked_ms, expected_attempts) in [(700, 2), (5_000, 1)] {
            let starts = Mutex::new(Vec::new());
            let outcome = retrier
                .run(Instant::now() + Duration::from_secs(60), false, |attempt| {
                    starts.lock().unwrap().push(Instant::now());
                    let result = if attempt == 1 {
                        Err(asking(asked_ms))
                    } else {
                        Ok("answer")
                    };
                    async move { result }
                })
                .await;
            let starts = starts.into_inner().unwrap();
            assert_eq!(outcome.attempts, expected_attempts, "asked {asked_ms} ms");
            if expected_attempts == 2 {
                // At least what the upstream asked, though the backoff alone is at most 100 ms.
                assert!(starts[1] - starts[0] >= Duration::from_millis(asked_ms));
                assert_eq!(outcome.result.unwrap(), "answer");
            } else {
                // More than max_delay_ms (1 s): not waited here; the caller sees the error.
                assert_eq!(
                    outcome.result.unwrap_err().retry_after(),
                    Some(Duration::from_millis(5_000))
                );
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
