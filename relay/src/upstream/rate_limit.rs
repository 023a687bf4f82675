//! Adaptive client-side rate limiting per target, the algorithm the AWS SDKs use in their
//! "adaptive" retry mode: nothing is limited until the upstream throttles; then a token bucket
//! sends at β = 0.7 times the rate measured when the throttle came, and the allowed rate recovers
//! along a CUBIC curve (slowly near the old maximum, faster past it) while calls succeed. A
//! throttled target is therefore sent less, not more.
//!
//! The SDK's own `ClientRateLimiter` keeps the methods this needs crate-private, so the algorithm
//! is written out here, with the SDK's constants. Time is tokio's clock, so tests run it on
//! paused time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{RelayError, UpstreamFailure};

/// Fraction of the measured rate allowed right after a throttle.
const BETA: f64 = 0.7;
/// How fast the allowed rate grows back (the CUBIC scale constant).
const SCALE_CONSTANT: f64 = 0.4;
/// Weight of the newest half-second in the measured sending rate.
const SMOOTH: f64 = 0.8;
/// Slowest refill of the bucket, in calls per second.
const MIN_FILL_RATE: f64 = 0.5;
/// Smallest bucket.
const MIN_CAPACITY: f64 = 1.0;

#[derive(Debug)]
struct State {
    /// Seconds since `started` of the last refill.
    last_refill: f64,
    enabled: bool,
    fill_rate: f64,
    max_capacity: f64,
    capacity: f64,
    measured_rate: f64,
    last_rate_bucket: f64,
    calls_in_bucket: u64,
    last_max_rate: f64,
    last_throttle: f64,
    /// The CUBIC curve's K: seconds after a throttle at which the rate is back at its old maximum.
    time_window: f64,
}

/// One target's limiter.
#[derive(Debug)]
pub struct AdaptiveRateLimiter {
    target: String,
    /// Off by configuration: never limits.
    adaptive: bool,
    started: Instant,
    state: Mutex<State>,
}

impl AdaptiveRateLimiter {
    pub fn new(target: String, adaptive: bool) -> Self {
        AdaptiveRateLimiter {
            target,
            adaptive,
            started: Instant::now(),
            state: Mutex::new(State {
                last_refill: 0.0,
                enabled: false,
                fill_rate: 0.0,
                max_capacity: 0.0,
                capacity: 0.0,
                measured_rate: 0.0,
                last_rate_bucket: 0.0,
                calls_in_bucket: 0,
                last_max_rate: 0.0,
                last_throttle: 0.0,
                time_window: 0.0,
            }),
        }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for leave to send one call. Fails at once, without waiting, when the wait would
    /// pass `deadline`.
    pub async fn acquire(&self, deadline: Instant) -> Result<(), RelayError> {
        loop {
            let wait = {
                let mut state = self.lock();
                if !state.enabled {
                    return Ok(());
                }
                let now = self.now();
                state.refill(now);
                if state.capacity >= 1.0 {
                    state.capacity -= 1.0;
                    return Ok(());
                }
                Duration::from_secs_f64((1.0 - state.capacity) / state.fill_rate)
            };
            if Instant::now() + wait > deadline {
                return Err(RelayError::Upstream {
                    failure: UpstreamFailure::RateLimited,
                    provider: "relay",
                    target: self.target.clone(),
                    message: format!(
                        "the upstream is throttling and the client-side rate limit would delay this call by {wait:?}, longer than it may wait"
                    ),
                    retry_after: Some(wait),
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Feeds the outcome of a call the upstream answered: throttled or not.
    pub fn update(&self, throttled: bool) {
        if !self.adaptive {
            return;
        }
        let now = self.now();
        let mut state = self.lock();
        state.update_measured_rate(now);
        let calculated = if throttled {
            let rate = if state.enabled {
                state.measured_rate.min(state.fill_rate)
            } else {
                state.measured_rate
            };
            state.last_max_rate = rate;
            state.compute_time_window();
            state.last_throttle = now;
            if !state.enabled {
                tracing::info!(target = %self.target, rate, "throttled: client-side rate limiting on");
            }
            state.enabled = true;
            rate * BETA
        } else {
            state.compute_time_window();
            state.cubic_success(now)
        };
        let new_rate = calculated.min(2.0 * state.measured_rate);
        state.set_fill_rate(now, new_rate);
    }

    /// Feeds the result of an upstream call: throttled, answered, or not sent at all (the
    /// relay's own refusals, such as an open circuit, teach nothing about the upstream's rate).
    pub fn observe<T>(&self, result: &Result<T, RelayError>) {
        match result {
            Ok(_) => self.update(false),
            Err(RelayError::Upstream {
                provider: "relay", ..
            }) => {}
            Err(RelayError::Upstream {
                failure: UpstreamFailure::Throttled,
                ..
            }) => self.update(true),
            Err(RelayError::Upstream { .. }) => self.update(false),
            Err(_) => {}
        }
    }

    /// The allowed rate in calls per second, once limiting is on.
    pub fn allowed_rate(&self) -> Option<f64> {
        let state = self.lock();
        state.enabled.then_some(state.fill_rate)
    }
}

impl State {
    fn refill(&mut self, now: f64) {
        let added = (now - self.last_refill).max(0.0) * self.fill_rate;
        self.capacity = (self.capacity + added).min(self.max_capacity);
        self.last_refill = now;
    }

    fn set_fill_rate(&mut self, now: f64, rate: f64) {
        self.refill(now);
        self.fill_rate = rate.max(MIN_FILL_RATE);
        self.max_capacity = rate.max(MIN_CAPACITY);
        self.capacity = self.capacity.min(self.max_capacity);
    }

    fn compute_time_window(&mut self) {
        self.time_window = (self.last_max_rate * (1.0 - BETA) / SCALE_CONSTANT).cbrt();
    }

    fn cubic_success(&self, now: f64) -> f64 {
        let t = now - self.last_throttle - self.time_window;
        SCALE_CONSTANT * t.powi(3) + self.last_max_rate
    }

    /// The sending rate, measured in half-second buckets and smoothed.
    fn update_measured_rate(&mut self, now: f64) {
        let bucket = (now * 2.0).floor() / 2.0;
        self.calls_in_bucket += 1;
        if bucket > self.last_rate_bucket {
            let current = self.calls_in_bucket as f64 / (bucket - self.last_rate_bucket);
            self.measured_rate = current * SMOOTH + self.measured_rate * (1.0 - SMOOTH);
            self.calls_in_bucket = 0;
            self.last_rate_bucket = bucket;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `per_second` successful calls a second for `seconds`.
    async fn steady(limiter: &AdaptiveRateLimiter, per_second: u32, seconds: u32) {
        let gap = Duration::from_secs_f64(1.0 / f64::from(per_second));
        for _ in 0..per_second * seconds {
            limiter
                .acquire(Instant::now() + Duration::from_secs(60))
                .await
                .unwrap();
            limiter.update(false);
            tokio::time::sleep(gap).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_limited_until_the_first_throttle() {
        let limiter = AdaptiveRateLimiter::new("t".into(), true);
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire(start).await.unwrap();
            limiter.update(false);
        }
        assert_eq!(Instant::now(), start);
        assert_eq!(limiter.allowed_rate(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_cuts_the_rate_by_beta_and_it_recovers_along_the_cubic_curve() {
        let limiter = AdaptiveRateLimiter::new("t".into(), true);
        steady(&limiter, 20, 3).await;
        limiter.update(true);
        let cut = limiter.allowed_rate().unwrap();
        // The measured rate was about 20/s: the allowed rate is about 0.7 × 20.
        assert!((12.0..=15.0).contains(&cut), "{cut}");

        // Calls now wait for the bucket: after the ~14 tokens it holds, 16 more at ~14-17/s take
        // about a second (without limiting they would take no time at all).
        let start = Instant::now();
        for _ in 0..30 {
            limiter
                .acquire(Instant::now() + Duration::from_secs(60))
                .await
                .unwrap();
            limiter.update(false);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");

        // Successes over the following seconds bring the rate back up.
        steady(&limiter, 10, 5).await;
        let recovered = limiter.allowed_rate().unwrap();
        assert!(recovered > cut, "{recovered} after {cut}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_turned_off_never_limits() {
        let limiter = AdaptiveRateLimiter::new("t".into(), false);
        limiter.update(true);
        assert_eq!(limiter.allowed_rate(), None);
        limiter.acquire(Instant::now()).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_fails_at_once_as_rate_limited() {
        let limiter = AdaptiveRateLimiter::new("t".into(), true);
        steady(&limiter, 2, 2).await;
        limiter.update(true);
        // Empty the bucket, then ask with a deadline too close to wait for a token.
        while limiter.acquire(Instant::now()).await.is_ok() {}
        let start = Instant::now();
        let err = limiter
            .acquire(Instant::now() + Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(Instant::now(), start);
        assert!(matches!(
            err,
            RelayError::Upstream {
                failure: UpstreamFailure::RateLimited,
                ..
            }
        ));
        assert_eq!(err.code(), fm_protocol::ErrorCode::UpstreamThrottled);
    }
}
