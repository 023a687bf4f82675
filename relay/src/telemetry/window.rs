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
}

/// Recent outcomes per model, and counters since start-up.
#[derive(Debug)]
pub struct LiveWindow {
    /// Fixed at start-up: the configured models, in configuration order.
    models: Vec<String>,
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
            samples,
            totals,
        }
    }

    /// Each model's counters since start-up, in configuration order.
    pub fn totals(&self) -> impl Iterator<Item = (&str, &Totals)> {
        self.models
            .iter()
            .filter_map(|model| Some((model.as_str(), self.totals.get(model)?)))
    }

    /// Records the outcome of a request to `model` (ignored for a model not configured).
    pub fn record(&self, model: &str, outcome: Outcome) {
        self.push(model, Some(outcome));
    }

    /// Records a failed upstream call to `model` after which the request moved on.
    pub fn record_failed_attempt(&self, model: &str) {
        self.push(model, None);
    }

    fn push(&self, model: &str, outcome: Option<Outcome>) {
        let Some(buffer) = self.samples.get(model) else {
            return;
        };
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
        buffer.push_back(Sample { at: now, outcome });
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
    fn the_buffer_is_bounded() {
        let window = LiveWindow::new(["a".to_string()]);
        for i in 0..MAX_SAMPLES + 10 {
            window.record("a", ok(None, i as f64));
        }
        let stats = window.stats(MAX_WINDOW);
        assert_eq!(stats[0].requests, MAX_SAMPLES as u64);
    }
}
