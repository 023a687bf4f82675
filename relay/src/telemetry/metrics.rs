//! The relay's Prometheus metrics that are distributions or per-request counts, through
//! `prometheus-client`: histograms of time to first token, total time, tokens and upstream
//! attempts per request — real histograms, so the buckets of several replicas add up and any
//! quantile can be computed over any set of them (which precomputed quantiles cannot) — and
//! counters of routing decisions by rule, of fallbacks by reason and of spend in dollars by
//! model. `GET /metrics` encodes them beside the figures the relay keeps elsewhere
//! ([`Families`], the counters and gauges of the other modules, read at each scrape).

use std::sync::atomic::AtomicU64;

use fm_protocol::{ResponseSource, RouteChoice, RouteInfo, Usage};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::window::{Ending, Outcome};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    /// `input` or `output`.
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 5 ms to about 82 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn token_counts() -> Histogram {
    // 16 to 65 536 tokens.
    Histogram::new(exponential_buckets(16.0, 2.0, 13))
}

fn attempt_counts() -> Histogram {
    Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
}

/// The per-request metrics.
#[derive(Debug)]
pub struct RelayMetrics {
    ttft: Histograms<ModelLabel>,
    duration: Histograms<OutcomeLabels>,
    tokens: Histograms<TokenLabels>,
    attempts: Histograms<ModelLabel>,
    decisions: Family<RuleLabel, Counter>,
    fallbacks: Family<ReasonLabel, Counter>,
    cost: Family<ModelLabel, Counter<f64, AtomicU64>>,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            ttft: Family::new_with_constructor(seconds),
            duration: Family::new_with_constructor(seconds),
            tokens: Family::new_with_constructor(token_counts),
            attempts: Family::new_with_constructor(attempt_counts),
            decisions: Family::default(),
            fallbacks: Family::default(),
            cost: Family::default(),
        }
    }
}

impl RelayMetrics {
    /// A request to `model` ended.
    pub fn ended(&self, model: &str, outcome: &Outcome) {
        let labels = OutcomeLabels {
            model: escape(model),
            outcome: outcome.ending.as_str(),
        };
        self.duration
            .get_or_create(&labels)
            .observe(outcome.total_ms / 1000.0);
        if let (Ending::Ok, Some(ttft)) = (outcome.ending, outcome.ttft_ms) {
            let model = ModelLabel {
                model: labels.model,
            };
            self.ttft.get_or_create(&model).observe(ttft / 1000.0);
        }
    }

    /// A request was answered by `route`: its attempts, and a fallback when it was one.
    pub fn answered(&self, route: &RouteInfo) {
        let model = ModelLabel {
            model: escape(&route.model),
        };
        self.attempts
            .get_or_create(&model)
            .observe(f64::from(route.attempts.max(1)));
        let reason = match route.source {
            ResponseSource::Primary | ResponseSource::Cache => return,
            ResponseSource::FallbackRegion => "fallback_region",
            ResponseSource::FallbackModel => "fallback_model",
            ResponseSource::Degraded => "degraded",
        };
        self.fallbacks.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A routing decision: the rule that made it, and the candidates it passed over.
    pub fn decided(&self, choice: &RouteChoice) {
        self.decisions
            .get_or_create(&RuleLabel {
                rule: escape(&choice.rule),
            })
            .inc();
        if choice.candidates.iter().any(|c| c.passed_over.is_some()) {
            self.fallbacks
                .get_or_create(&ReasonLabel {
                    reason: "passed_over",
                })
                .inc();
        }
    }

    /// A call to `model` spent `usage`, costing `cost_usd`.
    pub fn spent(&self, model: &str, usage: Usage, cost_usd: f64) {
        for (kind, tokens) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            let labels = TokenLabels {
                model: escape(model),
                kind,
            };
            self.tokens
                .get_or_create(&labels)
                .observe(f64::from(tokens));
        }
        self.cost
            .get_or_create(&ModelLabel {
                model: escape(model),
            })
            .inc_by(cost_usd);
    }

    /// Registers every metric (shared, not copied) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fm_relay_ttft_seconds",
            "Server-side time to first token of successful answers",
            self.ttft.clone(),
        );
        registry.register(
            "fm_relay_request_duration_seconds",
            "Server-side total time of requests, by the model they were routed to and outcome",
            self.duration.clone(),
        );
        registry.register(
            "fm_relay_tokens",
            "Tokens per upstream call, input and output, as reported (or estimated where the upstream reported none)",
            self.tokens.clone(),
        );
        registry.register(
            "fm_relay_attempts",
            "Upstream calls per answered request, the answering one included",
            self.attempts.clone(),
        );
        registry.register(
            "fm_relay_route_decisions",
            "Routing decisions by the rule that made them (explicit-model, a configured rule, route:PATH, default)",
            self.decisions.clone(),
        );
        registry.register(
            "fm_relay_fallbacks",
            "Requests that went elsewhere than first planned, by reason: passed_over (a candidate's live figures put it last), fallback_region, fallback_model, degraded",
            self.fallbacks.clone(),
        );
        registry.register(
            "fm_relay_cost_usd",
            "Dollars spent upstream, by model (at the configured prices)",
            self.cost.clone(),
        );
    }
}

/// The kind of a [`Families`] family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct FamilyOfFigures {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

/// Figures the relay keeps elsewhere (counters and gauges of connections, limits, circuits,
/// the cache), gathered at a scrape and encoded by `prometheus-client` with the rest.
#[derive(Debug, Default)]
pub struct Families {
    families: Vec<FamilyOfFigures>,
}

impl Families {
    /// Declares a family; a counter's name ends in `_total`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.families.push(FamilyOfFigures {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples: Vec::new(),
        });
    }

    /// Adds a sample to the family `name` (declared before).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        if let Some(family) = self.families.iter_mut().find(|f| f.name == name) {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), escape(v)))
                .collect();
            family.samples.push((labels, value));
        }
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let (name, metric_type) = match family.kind {
                // OpenMetrics names a counter family without the `_total` of its samples.
                Kind::Counter => (
                    family.name.strip_suffix("_total").unwrap_or(&family.name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (family.name.as_str(), MetricType::Gauge),
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, metric_type)?;
            /// Whole numbers as integers (`3`, not `3.0`).
            fn put(
                kind: Kind,
                value: f64,
                sample: MetricEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                let whole = value.fract() == 0.0 && value.abs() < 9e15;
                match (kind, whole) {
                    (Kind::Counter, true) => ConstCounter::new(value as u64).encode(sample),
                    (Kind::Counter, false) => ConstCounter::new(value).encode(sample),
                    (Kind::Gauge, true) => ConstGauge::new(value as i64).encode(sample),
                    (Kind::Gauge, false) => ConstGauge::new(value).encode(sample),
                }
            }
            match family.samples.as_slice() {
                // A family of one sample without labels: no `{}`.
                [(labels, value)] if labels.is_empty() => put(family.kind, *value, metric)?,
                samples => {
                    for (labels, value) in samples {
                        put(family.kind, *value, metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A label value as the text format needs it (`prometheus-client` writes values as they are).
pub fn escape(value: &str) -> String {
    if !value.contains(['\\', '"', '\n']) {
        // The usual case (model ids, rule names): one copy, not three.
        return value.to_string();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole `/metrics` text: `metrics` and `figures`, in the OpenMetrics text format.
pub fn encode(metrics: &RelayMetrics, figures: Families) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(figures));
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; the encoder only fails on its writer.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_and_histograms_encode_as_openmetrics() {
        let metrics = RelayMetrics::default();
        metrics.ended(
            "m",
            &Outcome {
                ending: Ending::Ok,
                ttft_ms: Some(12.0),
                total_ms: 250.0,
            },
        );
        let mut figures = Families::default();
        figures.family("fm_relay_things_total", Kind::Counter, "Things.");
        figures.sample("fm_relay_things_total", &[("a", "x\"y\\z\nw")], 3.0);
        figures.family("fm_relay_level", Kind::Gauge, "A level.");
        figures.sample("fm_relay_level", &[], 1.5);
        let text = encode(&metrics, figures);
        assert!(text.contains("# TYPE fm_relay_things counter\n"), "{text}");
        assert!(
            text.contains("fm_relay_things_total{a=\"x\\\"y\\\\z\\nw\"} 3"),
            "{text}"
        );
        assert!(text.contains("fm_relay_level 1.5\n"), "{text}");
        assert!(
            text.contains("fm_relay_ttft_seconds_bucket{le=\"0.02\",model=\"m\"} 1\n")
                || text.contains("fm_relay_ttft_seconds_bucket{model=\"m\",le=\"0.02\"} 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
