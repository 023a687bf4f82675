//! What routing knows about health and the day's spend, read without a lock on the request
//! path. [`HealthBoard`] holds each model's figures over the live window (p99 latency, error
//! rate, throttle rate, how many requests) for the policy's metric conditions, and refreshes
//! each target's own figures from the calls made to it ([`HealthBoard::refresh`], every
//! `routing.refresh_ms`); it holds today's spend per key and model, set every
//! `routing.spend_refresh_ms` from the usage ledger ([`HealthBoard::set_spend`]).
//!
//! The gates that pass a target over are per target — a model slow in one region still serves
//! from the others — and hold with hysteresis ([`Trip`]): a figure above its threshold trips the
//! gate; it opens again only when the figure falls below `recover_ratio` of the threshold, or
//! when the evidence has left the window (too few calls to say), so traffic does not flap around
//! a threshold. The gates, like the figures, live with the target (`upstream::health`), so a
//! reload that keeps a target keeps them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::ModelCatalog;
use crate::config::RoutingConfig;
use crate::telemetry::{HealthFigures as Figures, LiveWindow};
use crate::upstream::Target;
use crate::upstream::health::{SharedFigures, now_ms};

/// What the board says of a candidate target.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitness {
    Fit,
    /// Passed over, for this reason.
    PassOver(String),
    /// Would be passed over for this reason, but goes first as the probe that finds out
    /// whether it recovered (at most one per target every `routing.probe_every_ms`).
    Probe(String),
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
    /// Each model's figures, by catalog index.
    models: Vec<SharedFigures>,
    index: HashMap<String, usize>,
    spend: RwLock<Arc<Spend>>,
    window: Duration,
    min_samples: u32,
    probe_every_ms: u64,
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
        HealthBoard {
            models: (0..index.len()).map(|_| SharedFigures::default()).collect(),
            index,
            spend: RwLock::default(),
            window: Duration::from_secs(config.window_secs),
            min_samples: config.min_samples,
            probe_every_ms: config.probe_every_ms,
            max_error_rate: config.max_error_rate,
            recover_ratio: config.recover_ratio,
        }
    }

    /// Recomputes every model's figures from the live window, and every target's from the
    /// calls made to it.
    pub fn refresh(&self, window: &LiveWindow, catalog: &ModelCatalog) {
        for (model, &index) in &self.index {
            self.models[index].set(window.health(model, self.window));
        }
        for model in catalog.models() {
            for target in &model.targets {
                target.health.figures.set(target.calls.health(self.window));
            }
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
        Some(self.models[*self.index.get(model)?].figures())
    }

    /// Whether there are enough requests in the window to judge by.
    pub fn enough(&self, figures: &Figures) -> bool {
        figures.samples >= self.min_samples
    }

    /// Whether `target` may go first for a request with latency target `max_latency_ms`: not
    /// when its p99 is above the target or its error rate above `routing.max_error_rate` (each
    /// with hysteresis) — except as a probe, one every `routing.probe_every_ms`, so that its
    /// recovery shows in its figures while the others carry the traffic.
    pub fn fitness(&self, target: &Target, max_latency_ms: Option<u32>) -> Fitness {
        let Some(why) = self.pass_over_reason(target, max_latency_ms) else {
            return Fitness::Fit;
        };
        let last_probe = &target.health.last_probe_ms;
        let now = now_ms();
        let last = last_probe.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.probe_every_ms;
        if due
            && last_probe
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Fitness::Probe(why);
        }
        Fitness::PassOver(why)
    }

    /// Which of `target`'s gates holds now, in words (for `/v1/stats`; judges nothing).
    pub fn tripped(&self, target: &Target) -> Option<String> {
        let health = &target.health;
        let figures = health.figures.figures();
        if health.error_gate.is_tripped() {
            return Some(format!(
                "error rate {:.0}% (passed over above {:.0}%)",
                figures.error_rate * 100.0,
                self.max_error_rate * 100.0
            ));
        }
        health.latency_gate.is_tripped().then(|| {
            format!(
                "p99 latency {:.0} ms, above a request's latency target",
                figures.p99_latency_ms.unwrap_or_default()
            )
        })
    }

    /// Why `target` is passed over now for a request with latency target `max_latency_ms`,
    /// when it is.
    pub fn pass_over_reason(&self, target: &Target, max_latency_ms: Option<u32>) -> Option<String> {
        let health = &target.health;
        let figures = health.figures.figures();
        let enough = self.enough(&figures);
        let window = self.window.as_secs();
        let error_rate = enough.then_some(figures.error_rate);
        if health
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
        if let Some(latency_target) = max_latency_ms {
            let latency_target = f64::from(latency_target);
            let latency = figures.p99_latency_ms.filter(|_| enough);
            if health
                .latency_gate
                .holds(latency, latency_target, self.recover_ratio)
            {
                return Some(format!(
                    "p99 latency {:.0} ms over the last {window} s, above the {latency_target:.0} ms target (back below {:.0} ms)",
                    latency.unwrap_or_default(),
                    latency_target * self.recover_ratio
                ));
            }
        }
        None
    }
}
