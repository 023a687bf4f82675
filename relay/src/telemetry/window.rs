//! Recent outcomes, kept for [`MAX_WINDOW`] (and at most [`MAX_SAMPLES`] per series) and
//! summarised on demand. A [`Series`] holds one stream of outcomes — when each ended, whether it
//! succeeded, its time to first token and total time, and the failed upstream calls that other
//! targets made up for. [`LiveWindow`] keeps one per model (the requests routed to it, behind
//! `GET /v1/stats` and the policy's metric conditions); each upstream target keeps one of the
//! calls made to it (behind its health gate in routing, and its line in `/v1/stats`).
//!
//! Recording is one uncontended lock and a push: each series has its own buffer, so requests to
//! different models or targets never wait on each other. Percentiles are computed only when
//! someone asks, by sorting the window's samples (nearest rank).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

/// A series' counters since start-up (for `GET /metrics`).
#[derive(Debug, Default)]
pub struct Totals {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed_attempts: AtomicU64,
}

impl Totals {
    /// Outcomes that ended with `ending`.
    pub fn ended(&self, ending: Ending) -> u64 {
        self.counter(Some(ending)).load(Ordering::Relaxed)
    }

    /// The counter of outcomes that ended with `ending`, or of failed attempts (`None`).
    fn counter(&self, ending: Option<Ending>) -> &AtomicU64 {
        match ending {
            Some(Ending::Ok) => &self.ok,
            Some(Ending::Error) => &self.errors,
            Some(Ending::Cancelled) => &self.cancelled,
            None => &self.failed_attempts,
        }
    }
}

/// One series of outcomes kept over the window: a model's requests (in [`LiveWindow`]), or the
/// calls to one target (each upstream target keeps its own).
#[derive(Debug, Default)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
    totals: Totals,
}

/// A series' figures over a window, as `GET /v1/stats` shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesSummary {
    /// Outcomes that ended in the window (cancelled ones included).
    pub ended: u64,
    pub errors: u64,
    pub cancelled: u64,
    /// Failed calls after which the request moved on.
    pub failed_attempts: u64,
    pub throttled: u64,
    pub ttft_ms: Option<Percentiles>,
    pub total_ms: Option<Percentiles>,
}

impl Series {
    /// Records how a request (or a call) ended.
    pub fn record(&self, outcome: Outcome) {
        self.push(Some(outcome), false);
    }

    /// Records a failed upstream call (`throttled` or not) after which the request moved on.
    pub fn record_failed_attempt(&self, throttled: bool) {
        self.push(None, throttled);
    }

    /// The counters since start-up.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    fn push(&self, outcome: Option<Outcome>, throttled: bool) {
        self.totals
            .counter(outcome.map(|outcome| outcome.ending))
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut buffer = self.samples.lock().unwrap_or_else(|e| e.into_inner());
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

    /// The health over the last `window`: one pass over the samples, the p99 by selection.
    pub fn health(&self, window: Duration) -> HealthFigures {
        let now = Instant::now();
        let (mut samples, mut failed, mut throttled) = (0u32, 0u32, 0u32);
        let mut latencies = Vec::new();
        for sample in self
            .samples
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

    /// The figures over the last `window`, with percentiles of the successful outcomes' times.
    pub fn summary(&self, window: Duration) -> SeriesSummary {
        let now = Instant::now();
        let mut summary = SeriesSummary::default();
        let (mut ttfts, mut totals) = (Vec::new(), Vec::new());
        for sample in self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| now - s.at <= window)
        {
            let Some(outcome) = sample.outcome else {
                summary.failed_attempts += 1;
                summary.throttled += u64::from(sample.throttled);
                continue;
            };
            summary.ended += 1;
            match outcome.ending {
                Ending::Error => summary.errors += 1,
                Ending::Cancelled => summary.cancelled += 1,
                Ending::Ok => {
                    ttfts.extend(outcome.ttft_ms);
                    totals.push(outcome.total_ms);
                }
            }
        }
        summary.ttft_ms = Percentiles::nearest_rank(ttfts);
        summary.total_ms = Percentiles::nearest_rank(totals);
        summary
    }
}

/// Recent outcomes per model, their counters since start-up, and the histograms they feed.
#[derive(Debug)]
pub struct LiveWindow {
    /// The same outcomes as histograms, and the other per-request metrics.
    metrics: super::RelayMetrics,
    /// The configured models in configuration order, each with its series; a reload that adds
    /// models adds their series ([`LiveWindow::track`]), and one that keeps a model keeps its
    /// series.
    series: RwLock<Vec<(String, Arc<Series>)>>,
    by_model: RwLock<HashMap<String, Arc<Series>>>,
}

impl LiveWindow {
    pub fn new(models: impl IntoIterator<Item = String>) -> Self {
        let window = LiveWindow {
            metrics: super::RelayMetrics::default(),
            series: RwLock::default(),
            by_model: RwLock::default(),
        };
        window.track(models);
        window
    }

    /// Makes `models` (in configuration order) the ones [`LiveWindow::stats`] and
    /// [`LiveWindow::totals`] report; a model tracked before keeps its series.
    pub fn track(&self, models: impl IntoIterator<Item = String>) {
        let mut by_model = self.by_model.write().unwrap_or_else(|e| e.into_inner());
        let listed = models
            .into_iter()
            .map(|model| {
                let series = by_model.entry(model.clone()).or_default().clone();
                (model, series)
            })
            .collect();
        *self.series.write().unwrap_or_else(|e| e.into_inner()) = listed;
    }

    /// The per-request histograms and counters.
    pub fn metrics(&self) -> &super::RelayMetrics {
        &self.metrics
    }

    fn series_of(&self, model: &str) -> Option<Arc<Series>> {
        self.by_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    /// The tracked models in configuration order, each with its series.
    pub fn totals(&self) -> Vec<(String, Arc<Series>)> {
        self.series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the outcome of a request to `model` (ignored for a model not configured).
    pub fn record(&self, model: &str, outcome: Outcome) {
        let Some(series) = self.series_of(model) else {
            return;
        };
        self.metrics.ended(model, &outcome);
        series.record(outcome);
    }

    /// Records a failed upstream call to `model` (`throttled` or not) after which the request
    /// moved on.
    pub fn record_failed_attempt(&self, model: &str, throttled: bool) {
        if let Some(series) = self.series_of(model) {
            series.record_failed_attempt(throttled);
        }
    }

    /// `model`'s health over the last `window`.
    pub fn health(&self, model: &str, window: Duration) -> HealthFigures {
        self.series_of(model)
            .map_or_else(HealthFigures::default, |series| series.health(window))
    }

    /// Every tracked model's figures over the last `window` (the targets left for the caller to
    /// fill).
    pub fn stats(&self, window: Duration) -> Vec<ModelStats> {
        self.totals()
            .into_iter()
            .map(|(model, series)| {
                let summary = series.summary(window);
                ModelStats {
                    model,
                    requests: summary.ended,
                    errors: summary.errors,
                    cancelled: summary.cancelled,
                    failed_attempts: summary.failed_attempts,
                    ttft_ms: summary.ttft_ms,
                    total_ms: summary.total_ms,
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
        let totals = window.totals();
        assert_eq!(totals[0].1.totals().ended(Ending::Cancelled), 1);
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
