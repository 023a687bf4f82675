//! Model routing: from a request to a [`RouteDecision`] — an ordered plan of targets and the
//! reason for it.
//!
//! The catalog holds the configured models; each model has one or more
//! [`Target`](crate::upstream::Target)s (its region, then its failover regions or inference
//! profiles), each with its own provider client, circuit breaker and adaptive rate limiter (in
//! `upstream`, which routing reads and `resilience` drives). A request's plan is its model's
//! targets, then the targets of the model's fallback models; the executor walks it in order. Today the first model is static: the one the request names, or the default. The
//! decision always carries a sentence that explains it, which reaches the client in
//! `RouteInfo::reason`.

use std::collections::HashMap;
use std::sync::Arc;

use fm_protocol::{ChatRequest, ModelInfo, ModelList, ResponseSource};

use crate::config::ModelConfig;
use crate::provider::ChatProvider;
use crate::upstream::Target;

/// A configured model and its targets, in failover order (the configured region first).
#[derive(Debug)]
pub struct ModelEntry {
    pub config: ModelConfig,
    pub targets: Vec<Arc<Target>>,
}

/// One step of a plan: a target, the model it serves, and what answering from it means.
#[derive(Debug, Clone)]
pub struct PlanStep {
    pub model: Arc<ModelEntry>,
    pub target: Arc<Target>,
    pub source: ResponseSource,
}

/// Where one request may go, in order, and why.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    pub plan: Arc<[PlanStep]>,
    pub reason: String,
}

impl RouteDecision {
    /// The model the plan starts with.
    pub fn first_model(&self) -> &Arc<ModelEntry> {
        &self.plan[0].model
    }
}

/// Every model the relay serves.
#[derive(Debug)]
pub struct ModelCatalog {
    models: Vec<Arc<ModelEntry>>,
    by_id: HashMap<String, usize>,
    default_index: usize,
    /// Each model's plan, built once: routing a request only picks one.
    plans: Vec<Arc<[PlanStep]>>,
}

impl ModelCatalog {
    /// Builds the catalog; `default_model` and every fallback must be one of `entries`, and every
    /// entry must have a target (the config guarantees both).
    pub fn new(entries: Vec<ModelEntry>, default_model: &str) -> ModelCatalog {
        let models: Vec<Arc<ModelEntry>> = entries.into_iter().map(Arc::new).collect();
        let by_id: HashMap<String, usize> = models
            .iter()
            .enumerate()
            .map(|(index, entry)| (entry.config.id.clone(), index))
            .collect();
        let default_index = by_id.get(default_model).copied().unwrap_or(0);
        let plans = models
            .iter()
            .map(|model| Self::plan_for(model, &models, &by_id))
            .collect();
        ModelCatalog {
            models,
            by_id,
            default_index,
            plans,
        }
    }

    /// `model`'s targets, then those of its fallback models.
    fn plan_for(
        model: &Arc<ModelEntry>,
        models: &[Arc<ModelEntry>],
        by_id: &HashMap<String, usize>,
    ) -> Arc<[PlanStep]> {
        let own = model
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| PlanStep {
                model: model.clone(),
                target: target.clone(),
                source: if index == 0 {
                    ResponseSource::Primary
                } else {
                    ResponseSource::FallbackRegion
                },
            });
        let fallbacks = model
            .config
            .fallback_models
            .iter()
            .filter_map(|id| by_id.get(id).map(|&index| &models[index]))
            .flat_map(|fallback| {
                fallback.targets.iter().map(|target| PlanStep {
                    model: fallback.clone(),
                    target: target.clone(),
                    source: ResponseSource::FallbackModel,
                })
            });
        own.chain(fallbacks).collect()
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
                    provider: entry.targets[0].provider.kind().to_string(),
                    region: entry.config.region.clone(),
                    input_price_per_1k: entry.config.input_price_per_1k,
                    output_price_per_1k: entry.config.output_price_per_1k,
                    context_window: entry.config.context_window,
                    default: index == self.default_index,
                })
                .collect(),
        }
    }

    /// Chooses the plan for a validated request.
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
            plan: self.plans[index].clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayConfig;
    use crate::provider::bedrock::{BedrockEndpoint, http_client};
    use crate::provider::{BedrockProvider, Provider};

    async fn catalog() -> ModelCatalog {
        let config = RelayConfig::embedded_default();
        let http = http_client();
        let mut entries = Vec::new();
        for model in &config.models {
            let mut targets = Vec::new();
            for spec in model.targets() {
                let provider = BedrockProvider::connect(
                    &BedrockEndpoint::Url("http://127.0.0.1:9".into()),
                    spec.region,
                    http.clone(),
                    config.timeouts.connect(),
                )
                .await;
                targets.push(Arc::new(Target::new(
                    spec.upstream_id,
                    Provider::Bedrock(provider),
                    config.breaker,
                    true,
                )));
            }
            entries.push(ModelEntry {
                config: model.clone(),
                targets,
            });
        }
        ModelCatalog::new(entries, &config.default_model)
    }

    #[tokio::test]
    async fn a_plan_is_the_model_in_each_region_then_its_fallbacks() {
        let catalog = catalog().await;
        let decision = catalog.route(&ChatRequest {
            model: Some("claude-sonnet-4".into()),
            ..ChatRequest::from_prompt("hi")
        });
        let steps: Vec<_> = decision
            .plan
            .iter()
            .map(|step| {
                (
                    step.model.config.id.as_str(),
                    step.target.region(),
                    step.source,
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                ("claude-sonnet-4", "us-east-1", ResponseSource::Primary),
                (
                    "claude-sonnet-4",
                    "us-west-2",
                    ResponseSource::FallbackRegion
                ),
                (
                    "claude-3-5-haiku",
                    "us-east-1",
                    ResponseSource::FallbackModel
                ),
                (
                    "claude-3-5-haiku",
                    "us-west-2",
                    ResponseSource::FallbackModel
                ),
            ]
        );
        assert!(decision.reason.contains("claude-sonnet-4"));
        let default = catalog.route(&ChatRequest::from_prompt("hi"));
        assert_eq!(default.first_model().config.id, "claude-3-5-haiku");
    }
}
