//! Model routing: from a request to a [`RouteDecision`] — which configured model answers and why.
//!
//! The catalog holds the configured models with their provider clients. Today a route is static:
//! the model the request names, or the default model. The decision always carries a sentence
//! that explains it, which reaches the client in `RouteInfo::reason`.

use std::collections::HashMap;
use std::sync::Arc;

use fm_protocol::{ChatRequest, ModelInfo, ModelList};

use crate::config::{BreakerConfig, ModelConfig};
use crate::error::{RelayError, UpstreamFailure};
use crate::provider::{ChatProvider, Provider};
use crate::resilience::breaker::CircuitBreaker;
use crate::resilience::rate_limit::AdaptiveRateLimiter;

/// A configured model, the client that reaches it, and its breaker and rate limiter (a model is
/// one target: one account, region and model).
#[derive(Debug)]
pub struct ModelEntry {
    pub config: ModelConfig,
    /// The upstream call's target, as logs and errors name it: `upstream-id in region`.
    pub target: String,
    pub provider: Provider,
    pub breaker: Arc<CircuitBreaker>,
    pub limiter: AdaptiveRateLimiter,
}

impl ModelEntry {
    pub fn new(
        config: ModelConfig,
        provider: Provider,
        breaker: BreakerConfig,
        adaptive_rate_limit: bool,
    ) -> Self {
        let target = format!("{} in {}", config.upstream_id(), provider.location());
        ModelEntry {
            breaker: CircuitBreaker::new(target.clone(), breaker),
            limiter: AdaptiveRateLimiter::new(target.clone(), adaptive_rate_limit),
            target,
            config,
            provider,
        }
    }

    /// An upstream failure of a call to this model.
    pub fn upstream_error(&self, failure: UpstreamFailure, message: String) -> RelayError {
        RelayError::Upstream {
            failure,
            provider: self.provider.kind(),
            target: self.target.clone(),
            message,
            retry_after: None,
        }
    }
}

/// Every model the relay serves.
#[derive(Debug)]
pub struct ModelCatalog {
    models: Vec<Arc<ModelEntry>>,
    by_id: HashMap<String, usize>,
    default_index: usize,
}

/// Where one request goes, and why.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    pub model: Arc<ModelEntry>,
    pub reason: String,
}

impl ModelCatalog {
    /// Builds the catalog; `default_model` must be one of `entries` (the config guarantees it).
    pub fn new(entries: Vec<ModelEntry>, default_model: &str) -> ModelCatalog {
        let models: Vec<Arc<ModelEntry>> = entries.into_iter().map(Arc::new).collect();
        let by_id: HashMap<String, usize> = models
            .iter()
            .enumerate()
            .map(|(index, entry)| (entry.config.id.clone(), index))
            .collect();
        let default_index = by_id.get(default_model).copied().unwrap_or(0);
        ModelCatalog {
            models,
            by_id,
            default_index,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<ModelEntry>> {
        self.by_id.get(id).map(|&index| &self.models[index])
    }

    /// The listing of `GET /v1/models`.
    pub fn list(&self) -> ModelList {
        ModelList {
            models: self
                .models
                .iter()
                .enumerate()
                .map(|(index, entry)| ModelInfo {
                    id: entry.config.id.clone(),
                    provider: entry.provider.kind().to_string(),
                    region: entry.config.region.clone(),
                    input_price_per_1k: entry.config.input_price_per_1k,
                    output_price_per_1k: entry.config.output_price_per_1k,
                    context_window: entry.config.context_window,
                    default: index == self.default_index,
                })
                .collect(),
        }
    }

    /// Chooses the model for a validated request.
    pub fn route(&self, request: &ChatRequest) -> RouteDecision {
        let (index, mut reason) = match request
            .model
            .as_deref()
            .and_then(|id| self.by_id.get(id).map(|&index| (id, index)))
        {
            Some((id, index)) => (index, format!("the request named model `{id}`")),
            None => {
                let id = &self.models[self.default_index].config.id;
                (
                    self.default_index,
                    format!("the request named no model; `{id}` is the default"),
                )
            }
        };
        if let Some(hint) = &request.routing_hint {
            reason.push_str(&format!(
                "; routing hint `{hint}` noted, but no hint rules are configured"
            ));
        }
        RouteDecision {
            model: self.models[index].clone(),
            reason,
        }
    }
}
