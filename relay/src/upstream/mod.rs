//! Where calls go, and how each place is doing: a [`Target`] is one place a model is served (a
//! provider client for a region or endpoint and the upstream model id there) with its own
//! circuit [`breaker`], adaptive [`rate_limit`]er, live window of the calls made to it
//! ([`Series`]) and the [`health`] routing last judged from that window; [`Target::stats`] is
//! the read-only view of all of it. The targets are made by the [`build`]er, which a reload asks
//! again and which hands back the targets that did not change.
//!
//! A neutral home for both sides: `routing` puts targets in plans and reads their health;
//! `resilience` drives calls through their breakers and limiters and records how each call went;
//! neither imports the other for it.

pub mod breaker;
pub mod build;
pub mod health;
pub mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use fm_protocol::TargetStats;

use crate::config::{BreakerConfig, ProviderKind};
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::{ChatProvider, Provider};
use crate::telemetry::Series;
use breaker::CircuitBreaker;
pub use build::TargetBuilder;
use health::TargetHealth;
use rate_limit::AdaptiveRateLimiter;

/// What makes a target the same one across a reload: where calls go and what they ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetIdentity {
    pub provider: ProviderKind,
    pub region: String,
    /// The OpenAI-compatible base URL (provider "openai" only).
    pub endpoint: Option<String>,
    pub upstream_id: String,
    /// The environment variable the OpenAI-compatible API key is read from.
    pub api_key_env: Option<String>,
}

/// One place a model is served: a provider client for a region (or endpoint), the upstream model
/// or inference-profile id there, and the target's own breaker and rate limiter.
#[derive(Debug)]
pub struct Target {
    /// As logs and errors name it: `upstream-id in region`.
    pub name: String,
    pub upstream_id: String,
    pub identity: TargetIdentity,
    pub provider: Provider,
    pub breaker: Arc<CircuitBreaker>,
    pub limiter: AdaptiveRateLimiter,
    /// The calls made to this target: answers (timed from the call's start) and failures.
    pub calls: Series,
    /// Its figures and gates as routing last judged them.
    pub health: TargetHealth,
}

impl Target {
    pub fn new(
        identity: TargetIdentity,
        provider: Provider,
        breaker: BreakerConfig,
        adaptive_rate_limit: bool,
    ) -> Self {
        let name = format!("{} in {}", identity.upstream_id, provider.location());
        Target {
            breaker: CircuitBreaker::new(name.clone(), breaker),
            limiter: AdaptiveRateLimiter::new(name.clone(), adaptive_rate_limit),
            name,
            upstream_id: identity.upstream_id.clone(),
            identity,
            provider,
            calls: Series::default(),
            health: TargetHealth::default(),
        }
    }

    /// The region or endpoint calls go to.
    pub fn region(&self) -> &str {
        self.provider.location()
    }

    /// An upstream failure of a call to this target.
    pub fn upstream_error(&self, failure: UpstreamFailure, message: String) -> RelayError {
        RelayError::Upstream {
            failure,
            provider: self.provider.kind(),
            target: self.name.clone(),
            message,
            retry_after: None,
        }
    }

    /// The target's health over the last `window`, as `GET /v1/stats` shows it; `passed_over`
    /// is why routing passes it over now, when it does.
    pub fn stats(&self, window: Duration, passed_over: Option<String>) -> TargetStats {
        let calls = self.calls.summary(window);
        let failures = calls.failed_attempts + calls.errors;
        TargetStats {
            target: self.name.clone(),
            region: self.region().to_string(),
            circuit: self.breaker.status(),
            client_rate_limit: self.limiter.allowed_rate(),
            calls: calls.ended - calls.cancelled + calls.failed_attempts,
            failures,
            throttles: calls.throttled,
            ttft_ms: calls.ttft_ms,
            total_ms: calls.total_ms,
            passed_over,
        }
    }
}
