//! [`LiveWindow`]: the recent outcomes of each model — when a request ended, whether it succeeded,
//! its server-side time to first token and total time, and the failed upstream calls that other
//! targets made up for — kept for [`MAX_WINDOW`] (and at most
//! [`MAX_SAMPLES`] per model), summarised as percentiles on demand.
//!
//! Recording is one uncontended lock and a push per request: each model has its own buffer, so
//! requests to different models never wait on each other. Percentiles are computed only when
//! someone asks (`GET /v1/stats`), by sorting the window's samples (nearest rank).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fm_protocol::{ModelStats, Percentiles};

/// The longest window that can be asked for.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// The most samples kept per model.
pub const MAX_SAMPLES: usize = 10_000;

/// Whether a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A complete answer (the model's, or a cached one).
    Ok,
    /// An error, or the degraded answer.
    Error,
    /// The client went away before the answer was complete (a closed connection, a stopped
    /// stream): neither a success nor the upstream's failure.
    Cancelled,
}

impl Ending {
    /// The `outcome` label of `fm_relay_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Ok => "ok",
            Ending::Error => "error",
            Ending::Cancelled => "cancelled",
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub ending: Ending,
    /// Server-side time to first token, for answers that had text.
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// `None` for a failed upstream call whose request went on to another target.
    outcome: Option<Outcome>,
    /// A failed call that was throttled.
    throttled: bool,
}

/// A model's health over a window, as routing reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HealthFigures {
    /// Requests that ended, and upstream calls that failed before another target answered.
    pub samples: u32,
    /// p99 (nearest rank) of the successful requests' latency: a stream's time to first token,
    /// a one-shot answer's total time.
    pub p99_latency_ms: Option<f64>,
    /// Failed requests and failed upstream calls, over `samples` (cancelled requests count in
    /// neither).
    pub error_rate: f64,
    /// Throttled upstream calls, over `samples`.
    pub throttle_rate: f64,
}

/// Recent outcomes per model, and counters since start-up.
#[derive(Debug)]
pub struct LiveWindow {
    /// Fixed at start-up: the configured models, in configuration order.
    models: Vec<String>,
    /// The same outcomes as histograms, and the other per-request metrics.
    metrics: super::RelayMetrics,
    samples: HashMap<String, Mutex<VecDeque<Sample>>>,
    totals: HashMap<String, Totals>,
}

/// One model's counters since start-up (for `GET /metrics`).
#[derive(Debug, Default)]
pub struct Totals {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed_attempts: AtomicU64,
}

impl Totals {
    /// Requests that ended with `ending`.
    pub fn ended(&self, ending: Ending) -> u64 {
        self.counter(Some(ending)).load(Ordering::Relaxed)
    }

    /// The counter of requests that ended with `ending`, or of failed attempts (`None`).
    fn counter(&self, ending: Option<Ending>) -> &AtomicU64 {
        match ending {
            Some(Ending::Ok) => &self.ok,
            Some(Ending::Error) => &self.errors,
            Some(Ending::Cancelled) => &self.cancelled,
            None => &self.failed_attempts,
        }
    }
}

impl LiveWindow {
    pub fn new(models: impl IntoIterator<Item = String>) -> Self {
        let models: Vec<String> = models.into_iter().collect();
        let samples = models
            .iter()
            .map(|model| (model.clone(), Mutex::new(VecDeque::new())))
            .collect();
        let totals = models
            .iter()
            .map(|model| (model.clone(), Totals::default()))
            .collect();
        LiveWindow {
            models,
            metrics: super::RelayMetrics::default(),
            samples,
            totals,
        }
    }

    /// The per-request histograms and counters.
    pub fn metrics(&self) -> &super::RelayMetrics {
        &self.metrics
    }

    /// Each model's counters since start-up, in configuration order.
    pub fn totals(&self) -> impl Iterator<Item = (&str, &Totals)> {
        self.models
            .iter()
            .filter_map(|model| Some((model.as_str(), self.totals.get(model)?)))
    }

    /// Records the outcome of a request to `model` (ignored for a model not configured).
    pub fn record(&self, model: &str, outcome: Outcome) {
        self.push(model, Some(outcome), false);
    }

    /// Records a failed upstream call to `model` (`throttled` or not) after which the request
    /// moved on.
    pub fn record_failed_attempt(&self, model: &str, throttled: bool) {
        self.push(model, None, throttled);
    }

    fn push(&self, model: &str, outcome: Option<Outcome>, throttled: bool) {
        let Some(buffer) = self.samples.get(model) else {
            return;
        };
        if let Some(outcome) = &outcome {
            self.metrics.ended(model, outcome);
        }
        if let Some(totals) = self.totals.get(model) {
            totals
                .counter(outcome.map(|outcome| outcome.ending))
                .fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut buffer = buffer.lock().unwrap_or_else(|e| e.into_inner());
        while buffer
            .front()
            .is_some_and(|s| buffer.len() >= MAX_SAMPLES || now - s.at > MAX_WINDOW)
        {
            buffer.pop_front();
        }
        buffer.push_back(Sample {
            at: now,
            outcome,
            throttled,
        });
    }

    /// `model`'s health over the last `window`: one pass over its samples, the p99 by selection.
    pub fn health(&self, model: &str, window: Duration) -> HealthFigures {
        let Some(buffer) = self.samples.get(model) else {
            return HealthFigures::default();
        };
        let now = Instant::now();
        let (mut samples, mut failed, mut throttled) = (0u32, 0u32, 0u32);
        let mut latencies = Vec::new();
        for sample in buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .take_while(|s| now - s.at <= window)
        {
            match sample.outcome {
                None => {
                    samples += 1;
                    failed += 1;
                    throttled += u32::from(sample.throttled);
                }
                Some(outcome) => match outcome.ending {
                    Ending::Cancelled => {}
                    Ending::Error => {
                        samples += 1;
                        failed += 1;
                    }
                    Ending::Ok => {
                        samples += 1;
                        latencies.push(outcome.ttft_ms.unwrap_or(outcome.total_ms));
                    }
                },
            }
        }
        let p99_latency_ms = (!latencies.is_empty()).then(|| {
            let rank = (latencies.len() * 99).div_ceil(100).max(1) - 1;
            *latencies.select_nth_unstable_by(rank, f64::total_cmp).1
        });
        let share = |n: u32| {
            if samples == 0 {
                0.0
            } else {
                f64::from(n) / f64::from(samples)
            }
        };
        HealthFigures {
            samples,
            p99_latency_ms,
            error_rate: share(failed),
            throttle_rate: share(throttled),
        }
    }

    /// Every model's figures over the last `window` (the targets' health left for the caller to
    /// fill).
    pub fn stats(&self, window: Duration) -> Vec<ModelStats> {
        let now = Instant::now();
        self.models
            .iter()
            .map(|model| {
                let samples: Vec<Option<Outcome>> = self.samples[model]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|s| now - s.at <= window)
                    .map(|s| s.outcome)
                    .collect();
                let failed_attempts = samples.iter().filter(|s| s.is_none()).count();
                let recent: Vec<Outcome> = samples.into_iter().flatten().collect();
                let ended = |ending| recent.iter().filter(move |o| o.ending == ending);
                let ok = || ended(Ending::Ok);
                ModelStats {
                    model: model.clone(),
                    requests: recent.len() as u64,
                    errors: ended(Ending::Error).count() as u64,
                    cancelled: ended(Ending::Cancelled).count() as u64,
                    failed_attempts: failed_attempts as u64,
                    ttft_ms: Percentiles::nearest_rank(ok().filter_map(|o| o.ttft_ms).collect()),
                    total_ms: Percentiles::nearest_rank(ok().map(|o| o.total_ms).collect()),
                    targets: Vec::new(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ttft_ms: Option<f64>, total_ms: f64) -> Outcome {
        Outcome {
            ending: Ending::Ok,
            ttft_ms,
            total_ms,
        }
    }

    #[test]
    fn stats_count_errors_and_cancellations_and_keep_both_out_of_latency() {
        let window = LiveWindow::new(["a".to_string(), "b".to_string()]);
        window.record("a", ok(Some(10.0), 100.0));
        window.record("a", ok(None, 200.0));
        for ending in [Ending::Error, Ending::Cancelled] {
            window.record(
                "a",
                Outcome {
                    ending,
                    ttft_ms: Some(1.0),
                    total_ms: 5000.0,
                },
            );
        }
        window.record("unknown", ok(None, 1.0));
        let stats = window.stats(Duration::from_secs(60));
        assert_eq!(stats.len(), 2);
        let a = &stats[0];
        assert_eq!((a.model.as_str(), a.requests, a.errors), ("a", 4, 1));
        assert_eq!(a.cancelled, 1);
        let totals: Vec<_> = window.totals().collect();
        assert_eq!(totals[0].1.ended(Ending::Cancelled), 1);
        assert_eq!(a.ttft_ms.unwrap().p99, 10.0);
        assert_eq!(a.total_ms.unwrap().p50, 100.0);
        assert_eq!(a.total_ms.unwrap().p99, 200.0);
        assert_eq!((stats[1].requests, stats[1].total_ms), (0, None));
        assert_eq!(window.stats(Duration::ZERO)[0].requests, 0);
    }

    #[test]
    fn health_counts_failures_and_throttles_and_takes_the_p99() {
        let window = LiveWindow::new(["a".to_string()]);
        for i in 1..=100 {
            window.record("a", ok(Some(f64::from(i)), 1000.0));
        }
        window.record("a", ok(None, 500.0));
        window.record_failed_attempt("a", true);
        window.record_failed_attempt("a", false);
        window.record(
            "a",
            Outcome {
                ending: Ending::Error,
                ttft_ms: None,
                total_ms: 1.0,
            },
        );
        window.record(
            "a",
            Outcome {
                ending: Ending::Cancelled,
                ttft_ms: None,
                total_ms: 1.0,
            },
        );
        let health = window.health("a", Duration::from_secs(60));
        assert_eq!(health.samples, 104);
        // 101 latencies: 1..=100 and 500 (a one-shot answer's total); nearest-rank p99 is the 100th.
        assert_eq!(health.p99_latency_ms, Some(100.0));
        assert!((health.error_rate - 3.0 / 104.0).abs() < 1e-9);
        assert!((health.throttle_rate - 1.0 / 104.0).abs() < 1e-9);
        assert_eq!(window.health("a", Duration::ZERO).samples, 0);
        assert_eq!(
            window.health("b", Duration::from_secs(1)),
            HealthFigures::default()
        );
    }

    #[test]
    fn the_buffer_is_bounded() {
        let window = LiveWindow::new(["a".to_string()]);
        for i in 0..MAX_SAMPLES + 10 {
            window.record("a", ok(None, i as f64));
        }
        let stats = window.stats(MAX_WINDOW);
        assert_eq!(stats[0].requests, MAX_SAMPLES as u64);
    }
}
