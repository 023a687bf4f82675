//! What routing knows about the models' health and the day's spend, read without a lock on the
//! request path: [`HealthBoard`] holds each model's figures over the live window (p99 latency,
//! error rate, throttle rate, how many requests), recomputed every `routing.refresh_ms` from
//! [`LiveWindow`] by [`HealthBoard::refresh`], and today's spend per key and model, set every
//! `routing.spend_refresh_ms` from the usage ledger ([`HealthBoard::set_spend`]).
//!
//! The gates that pass a model over hold with hysteresis ([`Trip`]): a figure above its
//! threshold trips the gate; it opens again only when the figure falls below `recover_ratio` of
//! the threshold, or when the evidence has left the window (too few requests to say), so traffic
//! does not flap around a threshold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::RoutingConfig;
use crate::telemetry::{HealthFigures as Figures, LiveWindow};

/// A model's figures, stored as bits so the request path reads them without a lock.
#[derive(Debug, Default)]
struct ModelSlot {
    samples: AtomicU32,
    /// `f64` bits; NaN when there was no successful request.
    p99_latency_ms: AtomicU64,
    error_rate: AtomicU64,
    throttle_rate: AtomicU64,
    latency_gate: Trip,
    error_gate: Trip,
    /// When (ms on the board's clock) a passed-over model last got a probe.
    last_probe_ms: AtomicU64,
}

/// What the board says of a candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitness {
    Fit,
    /// Passed over, for this reason.
    PassOver(String),
    /// Would be passed over for this reason, but goes first as the probe that finds out
    /// whether it recovered (at most one per model every `routing.probe_every_ms`).
    Probe(String),
}

/// A hysteresis latch: see the module's documentation.
#[derive(Debug, Default)]
pub struct Trip(AtomicBool);

impl Trip {
    /// Whether `value` holds against `threshold`: above it trips the latch; a tripped latch
    /// holds until `value` is below `recover_ratio` × `threshold`. No value (too little
    /// evidence) releases it.
    pub fn holds(&self, value: Option<f64>, threshold: f64, recover_ratio: f64) -> bool {
        let Some(value) = value else {
            self.0.store(false, Ordering::Relaxed);
            return false;
        };
        if value > threshold {
            self.0.store(true, Ordering::Relaxed);
            return true;
        }
        if self.0.load(Ordering::Relaxed) {
            if value >= threshold * recover_ratio {
                return true;
            }
            self.0.store(false, Ordering::Relaxed);
        }
        false
    }

    pub fn is_tripped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Today's spend, in dollars.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spend {
    /// The UTC day the figures are of.
    pub day: String,
    pub global_usd: f64,
    pub by_key_usd: HashMap<String, f64>,
    pub by_model_usd: HashMap<String, f64>,
}

/// The live figures routing reads.
#[derive(Debug)]
pub struct HealthBoard {
    /// By catalog index.
    slots: Vec<ModelSlot>,
    index: HashMap<String, usize>,
    spend: RwLock<Arc<Spend>>,
    window: Duration,
    min_samples: u32,
    probe_every_ms: u64,
    /// The board's clock for probes.
    started: std::time::Instant,
    pub(crate) max_error_rate: f64,
    pub(crate) recover_ratio: f64,
}

impl HealthBoard {
    /// A board for `models` (in catalog order), every figure empty.
    pub fn new(models: impl IntoIterator<Item = String>, config: &RoutingConfig) -> HealthBoard {
        let index: HashMap<String, usize> = models
            .into_iter()
            .enumerate()
            .map(|(index, model)| (model, index))
            .collect();
        let slots = (0..index.len())
            .map(|_| {
                let slot = ModelSlot::default();
                slot.p99_latency_ms
                    .store(f64::NAN.to_bits(), Ordering::Relaxed);
                slot
            })
            .collect();
        HealthBoard {
            slots,
            index,
            spend: RwLock::default(),
            window: Duration::from_secs(config.window_secs),
            min_samples: config.min_samples,
            probe_every_ms: config.probe_every_ms,
            started: std::time::Instant::now(),
            max_error_rate: config.max_error_rate,
            recover_ratio: config.recover_ratio,
        }
    }

    /// Recomputes every model's figures from the live window.
    pub fn refresh(&self, window: &LiveWindow) {
        for (model, &index) in &self.index {
            let figures = window.health(model, self.window);
            let slot = &self.slots[index];
            slot.samples.store(figures.samples, Ordering::Relaxed);
            slot.p99_latency_ms.store(
                figures.p99_latency_ms.unwrap_or(f64::NAN).to_bits(),
                Ordering::Relaxed,
            );
            slot.error_rate
                .store(figures.error_rate.to_bits(), Ordering::Relaxed);
            slot.throttle_rate
                .store(figures.throttle_rate.to_bits(), Ordering::Relaxed);
        }
    }

    /// Replaces today's spend.
    pub fn set_spend(&self, spend: Spend) {
        *self.spend.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(spend);
    }

    /// Today's spend as last read.
    pub fn spend(&self) -> Arc<Spend> {
        self.spend.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A model's figures (`None` for a model not in the catalog).
    pub fn figures(&self, model: &str) -> Option<Figures> {
        Some(self.figures_at(*self.index.get(model)?))
    }

    fn figures_at(&self, index: usize) -> Figures {
        let slot = &self.slots[index];
        let p99 = f64::from_bits(slot.p99_latency_ms.load(Ordering::Relaxed));
        Figures {
            samples: slot.samples.load(Ordering::Relaxed),
            p99_latency_ms: (!p99.is_nan()).then_some(p99),
            error_rate: f64::from_bits(slot.error_rate.load(Ordering::Relaxed)),
            throttle_rate: f64::from_bits(slot.throttle_rate.load(Ordering::Relaxed)),
        }
    }

    /// Whether there are enough requests in the window to judge by.
    pub fn enough(&self, figures: &Figures) -> bool {
        figures.samples >= self.min_samples
    }

    /// Whether `model` may go first for a request with latency target `max_latency_ms`: not
    /// when its p99 is above the target or its error rate above `routing.max_error_rate` (each
    /// with hysteresis) — except as a probe, one every `routing.probe_every_ms`, so that its
    /// recovery shows in its figures while the others carry the traffic.
    pub fn fitness(&self, model: &str, max_latency_ms: Option<u32>) -> Fitness {
        let Some(&index) = self.index.get(model) else {
            return Fitness::Fit;
        };
        let Some(why) = self.pass_over_reason(index, max_latency_ms) else {
            return Fitness::Fit;
        };
        let slot = &self.slots[index];
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = slot.last_probe_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.probe_every_ms;
        if due
            && slot
                .last_probe_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Fitness::Probe(why);
        }
        Fitness::PassOver(why)
    }

    fn pass_over_reason(&self, index: usize, max_latency_ms: Option<u32>) -> Option<String> {
        let slot = &self.slots[index];
        let figures = self.figures_at(index);
        let enough = self.enough(&figures);
        let window = self.window.as_secs();
        let error_rate = enough.then_some(figures.error_rate);
        if slot
            .error_gate
            .holds(error_rate, self.max_error_rate, self.recover_ratio)
        {
            return Some(format!(
                "error rate {:.0}% over the last {window} s (passed over above {:.0}%, back below {:.0}%)",
                figures.error_rate * 100.0,
                self.max_error_rate * 100.0,
                self.max_error_rate * self.recover_ratio * 100.0
            ));
        }
        if let Some(target) = max_latency_ms {
            let target = f64::from(target);
            let latency = figures.p99_latency_ms.filter(|_| enough);
            if slot.latency_gate.holds(latency, target, self.recover_ratio) {
                return Some(format!(
                    "p99 latency {:.0} ms over the last {window} s, above the {target:.0} ms target (back below {:.0} ms)",
                    latency.unwrap_or_default(),
                    target * self.recover_ratio
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trip_holds_until_the_figure_is_well_below_its_threshold() {
        let trip = Trip::default();
        assert!(!trip.holds(Some(90.0), 100.0, 0.8));
        assert!(trip.holds(Some(120.0), 100.0, 0.8));
        // Back under the threshold but not under 80: still passed over (no flapping).
        assert!(trip.holds(Some(95.0), 100.0, 0.8));
        assert!(trip.holds(Some(81.0), 100.0, 0.8));
        assert!(!trip.holds(Some(79.0), 100.0, 0.8));
        assert!(!trip.holds(Some(95.0), 100.0, 0.8));
        // Evidence that left the window releases it.
        assert!(trip.holds(Some(120.0), 100.0, 0.8));
        assert!(!trip.holds(None, 100.0, 0.8));
        assert!(!trip.is_tripped());
    }
}
