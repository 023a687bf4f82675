//! A target's health as routing last judged it, kept with the target so that it outlives a
//! configuration reload that keeps the target: its figures over the live window (refreshed by
//! routing from the target's own [`Series`](crate::telemetry::Series) of calls), the latches of
//! its health gates ([`Trip`], hysteresis), and when it last got a probe request.
//!
//! Routing reads and writes these through atomics, without a lock on the request path; nothing
//! here decides anything: the thresholds are routing's.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::telemetry::HealthFigures;

/// A hysteresis latch: a figure above its threshold trips it; a tripped latch holds until the
/// figure falls below `recover_ratio` of the threshold, or until there is too little evidence
/// to say (the figure left the window), so traffic does not flap around a threshold.
#[derive(Debug, Default)]
pub struct Trip(AtomicBool);

impl Trip {
    /// Whether `value` holds against `threshold`: above it trips the latch; a tripped latch
    /// holds until `value` is below `recover_ratio` × `threshold`. No value (too little
    /// evidence) releases it.
    pub fn holds(&self, value: Option<f64>, threshold: f64, recover_ratio: f64) -> bool {
        // Written only when it changes: every request of every thread reads the latch, and a
        // store on each would bounce its cache line between the cores.
        let tripped = self.0.load(Ordering::Relaxed);
        let holds = match value {
            None => false,
            Some(value) if value > threshold => true,
            Some(value) => tripped && value >= threshold * recover_ratio,
        };
        if holds != tripped {
            self.0.store(holds, Ordering::Relaxed);
        }
        holds
    }

    pub fn is_tripped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the first call in this process (never 0): the clock probe times are kept
/// on, shared by every routing table a reload makes.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let since = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(since).unwrap_or(u64::MAX).max(1)
}

/// One target's figures and gates; see the module's documentation.
#[derive(Debug, Default)]
pub struct TargetHealth {
    pub figures: SharedFigures,
    pub latency_gate: Trip,
    pub error_gate: Trip,
    /// When ([`now_ms`]) the target last went first as a probe while passed over; 0 never.
    pub last_probe_ms: AtomicU64,
}

/// [`HealthFigures`] that one writer replaces and many read, without a lock.
#[derive(Debug)]
pub struct SharedFigures {
    samples: AtomicU32,
    /// `f64` bits; NaN when nothing succeeded in the window.
    p99_latency_ms: AtomicU64,
    error_rate: AtomicU64,
    throttle_rate: AtomicU64,
}

impl Default for SharedFigures {
    fn default() -> Self {
        SharedFigures {
            samples: AtomicU32::new(0),
            p99_latency_ms: AtomicU64::new(f64::NAN.to_bits()),
            error_rate: AtomicU64::new(0f64.to_bits()),
            throttle_rate: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl SharedFigures {
    /// Replaces the figures.
    pub fn set(&self, figures: HealthFigures) {
        self.samples.store(figures.samples, Ordering::Relaxed);
        self.p99_latency_ms.store(
            figures.p99_latency_ms.unwrap_or(f64::NAN).to_bits(),
            Ordering::Relaxed,
        );
        self.error_rate
            .store(figures.error_rate.to_bits(), Ordering::Relaxed);
        self.throttle_rate
            .store(figures.throttle_rate.to_bits(), Ordering::Relaxed);
    }

    /// The figures as last set.
    pub fn figures(&self) -> HealthFigures {
        let p99 = f64::from_bits(self.p99_latency_ms.load(Ordering::Relaxed));
        HealthFigures {
            samples: self.samples.load(Ordering::Relaxed),
            p99_latency_ms: (!p99.is_nan()).then_some(p99),
            error_rate: f64::from_bits(self.error_rate.load(Ordering::Relaxed)),
            throttle_rate: f64::from_bits(self.throttle_rate.load(Ordering::Relaxed)),
        }
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

    #[test]
    fn figures_read_back_as_set() {
        let health = SharedFigures::default();
        assert_eq!(health.figures().p99_latency_ms, None);
        let figures = HealthFigures {
            samples: 7,
            p99_latency_ms: Some(12.5),
            error_rate: 0.25,
            throttle_rate: 0.125,
        };
        health.set(figures);
        assert_eq!(health.figures(), figures);
    }
}
