//! The answer of `GET /v1/stats`: the relay's own view of latency per model over a recent window,
//! so a client can set its measured time to first token beside the server's and see how much of
//! the wait is network and rendering.

use serde::{Deserialize, Serialize};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    /// The nearest-rank percentiles of `values` (the relay's `/v1/stats` and the web dashboard
    /// both use this, so their figures compare); `None` when there are none.
    pub fn nearest_rank(mut values: Vec<f64>) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[index.clamp(1, values.len()) - 1]
        };
        Some(Percentiles {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
        })
    }
}

/// The state of a model's circuit breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls go through.
    #[default]
    Closed,
    /// Calls fail at once until a cool-down ends.
    Open,
    /// A few probe calls test whether the target recovered.
    HalfOpen,
}

/// A circuit breaker's state and, unless closed, why it tripped and how long it stays open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CircuitStatus {
    pub state: CircuitState,
    /// Why it tripped (absent while closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long this opening keeps calls away, in milliseconds (absent while closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_ms: Option<u64>,
    /// Milliseconds until probe calls are let through (only while open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_in_ms: Option<u64>,
    /// Times it opened in a row without closing in between (0 while closed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub openings: u32,
    /// Why it stays open that long, in words for people (absent while closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_time_reason: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// One target of a model (a region or inference profile) and its health now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetStats {
    /// The target as logs and errors name it: `upstream-id in region`.
    pub target: String,
    pub region: String,
    /// The target's circuit breaker.
    #[serde(default)]
    pub circuit: CircuitStatus,
    /// Calls per second the relay allows itself to this target while it throttles (absent when
    /// not limiting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rate_limit: Option<f64>,
    /// Calls to this target that ended in the window: answers and failures (a call whose client
    /// went away counts in neither).
    #[serde(default)]
    pub calls: u64,
    /// Calls that failed (the request moved on, or ended with the error).
    #[serde(default)]
    pub failures: u64,
    /// Failed calls that were throttled (counted in `failures` too).
    #[serde(default)]
    pub throttles: u64,
    /// Time to first token of the streamed answers, from the call's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<Percentiles>,
    /// Total time of the answers, from the call's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<Percentiles>,
    /// Why routing passes this target over now (its p99 or error rate out of bounds, held with
    /// hysteresis); absent while routing puts it in plans as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_over: Option<String>,
}

/// One model's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelStats {
    pub model: String,
    /// Requests that ended in the window, failed ones included.
    pub requests: u64,
    /// Requests that ended with an error.
    pub errors: u64,
    /// Requests whose client went away before the answer was complete (counted in `requests`,
    /// not in `errors`).
    #[serde(default)]
    pub cancelled: u64,
    /// Upstream calls to this model that failed and were answered elsewhere (another region or
    /// model), counted apart from the requests: they are not completions.
    #[serde(default)]
    pub failed_attempts: u64,
    /// Server-side time to first token of the streamed answers that had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<Percentiles>,
    /// Server-side total time of the successful answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<Percentiles>,
    /// The model's targets in failover order, with their breakers and rate limits now.
    #[serde(default)]
    pub targets: Vec<TargetStats>,
}

/// The answer cache's counters since the relay started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CacheStats {
    /// Answers served for the same request.
    pub exact_hits: u64,
    /// Answers served for a similar request.
    pub semantic_hits: u64,
    /// Answers past their freshness, served because every target failed.
    pub stale_hits: u64,
    pub misses: u64,
    /// Answers stored.
    pub stored: u64,
    /// Lookups and writes that failed (counted as misses for the request).
    pub errors: u64,
}

/// The answer of `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsResponse {
    /// How far back the figures reach.
    pub window_secs: u64,
    pub models: Vec<ModelStats>,
    /// The answer cache, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::nearest_rank(values).unwrap();
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        let one = Percentiles::nearest_rank(vec![7.0]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Percentiles::nearest_rank(Vec::new()), None);
    }
}
