//! Where calls go, and how each place is doing: a [`Target`] is one place a model is served (a
//! provider client for a region or endpoint and the upstream model id there) with its own
//! circuit [`breaker`] and adaptive [`rate_limit`]er, and [`Target::stats`] is the read-only view
//! of its health. A neutral home for both sides: `routing` puts targets in plans and reads their
//! health; `resilience` drives calls through their breakers and limiters; neither imports the
//! other for it.

pub mod breaker;
pub mod rate_limit;

use std::sync::Arc;

use fm_protocol::TargetStats;

use crate::config::BreakerConfig;
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::{ChatProvider, Provider};
use breaker::CircuitBreaker;
use rate_limit::AdaptiveRateLimiter;

/// One place a model is served: a provider client for a region (or endpoint), the upstream model
/// or inference-profile id there, and the target's own breaker and rate limiter.
#[derive(Debug)]
pub struct Target {
    /// As logs and errors name it: `upstream-id in region`.
    pub name: String,
    pub upstream_id: String,
    pub provider: Provider,
    pub breaker: Arc<CircuitBreaker>,
    pub limiter: AdaptiveRateLimiter,
}

impl Target {
    pub fn new(
        upstream_id: &str,
        provider: Provider,
        breaker: BreakerConfig,
        adaptive_rate_limit: bool,
    ) -> Self {
        let name = format!("{upstream_id} in {}", provider.location());
        Target {
            breaker: CircuitBreaker::new(name.clone(), breaker),
            limiter: AdaptiveRateLimiter::new(name.clone(), adaptive_rate_limit),
            name,
            upstream_id: upstream_id.to_string(),
            provider,
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

    /// The target's health, as `GET /v1/stats` shows it.
    pub fn stats(&self) -> TargetStats {
        TargetStats {
            target: self.name.clone(),
            region: self.region().to_string(),
            circuit: self.breaker.status(),
            client_rate_limit: self.limiter.allowed_rate(),
        }
    }
}
