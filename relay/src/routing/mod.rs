//! Model routing: from a request to a [`RouteDecision`] — an ordered plan of targets, the
//! decision as clients see it ([`RouteChoice`]) and the reason in words.
//!
//! The [`ModelCatalog`] holds the configured models (tier, capabilities, prices, context
//! window); each model has one or more [`Target`](crate::upstream::Target)s (its region, then
//! its failover regions or inference profiles) in `upstream`, which routing reads and
//! `resilience` drives. [`Routing::decide`] picks the candidates — the model the request names
//! when the caller may use it, else the first [`policy`] rule whose conditions hold (path, hint,
//! the [`classify`]er's content class, key, quality, live figures, today's spend), else the
//! purpose-built route's models, else the default — then puts first those the [`health`] board
//! finds fit (p99 within the latency target, error rate within bounds, with hysteresis) and
//! after them their fallback models and, as a last resort, the passed-over ones. Every step of
//! that is said in the decision.

pub mod classify;
pub mod health;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;

use fm_protocol::{
    ChatRequest, ModelInfo, ModelList, ResponseSource, RouteCandidate, RouteChoice,
    TargetPassedOver, ValidationError,
};

use crate::auth::ApiKey;
use crate::config::{ModelConfig, RelayConfig};
use crate::error::{Refusal, RelayError};
use crate::provider::ChatProvider;
use crate::telemetry::LiveWindow;
use crate::upstream::{Target, TargetBuilder};
use health::{Fitness, HealthBoard};
use policy::{Chooser, Facts, Policy};

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
    pub choice: RouteChoice,
}

impl RouteDecision {
    /// The model the plan starts with.
    pub fn first_model(&self) -> &Arc<ModelEntry> {
        &self.plan[0].model
    }

    /// The `x-fm-route` header.
    pub fn header_value(&self) -> String {
        self.choice.header_value(&self.first_model().config.id)
    }
}

/// Every model the relay serves.
#[derive(Debug)]
pub struct ModelCatalog {
    models: Vec<Arc<ModelEntry>>,
    by_id: HashMap<String, usize>,
    default_index: usize,
    /// Each model's plan, built once: a request routed to one healthy model only picks one.
    plans: Vec<Arc<[PlanStep]>>,
    /// When it was built (Unix seconds): the models' `created` in `GET /v1/models`.
    built_secs: u64,
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
        let mut catalog = ModelCatalog {
            models,
            by_id,
            default_index,
            plans: Vec::new(),
            built_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        };
        catalog.plans = (0..catalog.models.len())
            .map(|index| catalog.plan_of(&catalog.with_fallbacks(&[index], |_| true)))
            .collect();
        catalog
    }

    /// `config`'s models with their targets from `builder`. A target `previous` (the catalog
    /// before a reload) has for the same model, declared the same way, is kept as it is.
    pub async fn build(
        config: &RelayConfig,
        builder: &TargetBuilder,
        previous: Option<&ModelCatalog>,
    ) -> Result<ModelCatalog, RelayError> {
        let mut entries = Vec::with_capacity(config.models.len());
        for model in &config.models {
            let before = previous
                .and_then(|catalog| catalog.get(&model.id))
                .map_or(&[][..], |entry| &entry.targets[..]);
            entries.push(ModelEntry {
                config: model.clone(),
                targets: builder.targets(model, before).await?,
            });
        }
        Ok(ModelCatalog::new(entries, &config.default_model))
    }

    /// `order`'s models, each followed by those of its fallback models not yet listed (and
    /// `allowed`), depth first.
    fn with_fallbacks(&self, order: &[usize], allowed: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut listed: Vec<usize> = Vec::with_capacity(order.len() + 2);
        for &index in order {
            if !listed.contains(&index) {
                listed.push(index);
            }
        }
        let mut next = 0;
        while next < listed.len() {
            let fallbacks = &self.models[listed[next]].config.fallback_models;
            for id in fallbacks {
                if let Some(&index) = self.by_id.get(id)
                    && !listed.contains(&index)
                    && allowed(index)
                {
                    listed.push(index);
                }
            }
            next += 1;
        }
        listed
    }

    /// The plan that tries `order`'s models in turn, each in every region.
    fn plan_of(&self, order: &[usize]) -> Arc<[PlanStep]> {
        let steps: Vec<(usize, usize)> = order
            .iter()
            .flat_map(|&index| (0..self.models[index].targets.len()).map(move |t| (index, t)))
            .collect();
        self.plan_of_steps(&steps)
    }

    /// The plan of `steps`, each a model's catalog index and the index of one of its targets:
    /// the first step's model answers as the primary in its first target and as a fallback
    /// region in its others; every other model is a fallback model.
    fn plan_of_steps(&self, steps: &[(usize, usize)]) -> Arc<[PlanStep]> {
        let first_model = steps.first().map(|&(index, _)| index);
        steps
            .iter()
            .map(|&(index, target)| {
                let model = &self.models[index];
                PlanStep {
                    model: model.clone(),
                    target: model.targets[target].clone(),
                    source: match (Some(index) == first_model, target) {
                        (true, 0) => ResponseSource::Primary,
                        (true, _) => ResponseSource::FallbackRegion,
                        (false, _) => ResponseSource::FallbackModel,
                    },
                }
            })
            .collect()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<ModelEntry>> {
        self.by_id.get(id).map(|&index| &self.models[index])
    }

    /// The catalog index of a model.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The models, in configuration order.
    pub fn models(&self) -> &[Arc<ModelEntry>] {
        &self.models
    }

    /// The default model.
    pub fn default_model(&self) -> &Arc<ModelEntry> {
        &self.models[self.default_index]
    }

    /// The listing of `GET /v1/models` (without the hints, which the policy knows).
    pub fn list(&self) -> ModelList {
        ModelList {
            object: "list".into(),
            data: self
                .models
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    let config = &entry.config;
                    let mut capabilities = config.capabilities.clone();
                    if config.accepts_prefill
                        && !capabilities.contains(&fm_protocol::Capability::Prefill)
                    {
                        capabilities.push(fm_protocol::Capability::Prefill);
                    }
                    let provider = entry.targets[0].provider.kind().to_string();
                    ModelInfo {
                        id: config.id.clone(),
                        object: "model".into(),
                        created: self.built_secs,
                        owned_by: provider.clone(),
                        provider,
                        region: config.region.clone(),
                        input_price_per_1k: config.input_price_per_1k,
                        output_price_per_1k: config.output_price_per_1k,
                        context_window: config.context_window,
                        default: index == self.default_index,
                        tier: config.tier,
                        capabilities,
                    }
                })
                .collect(),
            hints: Vec::new(),
        }
    }
}

/// What a decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub request: &'a ChatRequest,
    /// The surface: `/v1/chat`, `/v1/chat/stream`, `/v1/ws`, `/v1/chat/completions` or a
    /// purpose-built route's path.
    pub path: &'a str,
    /// The `x-fm-route-hint` header (the body's `routing_hint` wins).
    pub hint_header: Option<&'a str>,
    pub key: &'a ApiKey,
}

/// The catalog, the policy compiled against it, and the board of the figures it reads: what one
/// configuration routes by. A reload puts a new table in force whole; a request decides with the
/// one it read, and its plan holds the models and targets it was decided with.
#[derive(Debug)]
pub struct RoutingTable {
    catalog: ModelCatalog,
    policy: Policy,
    board: HealthBoard,
}

/// Where requests are routed: the table in force.
#[derive(Debug)]
pub struct Routing {
    table: std::sync::RwLock<Arc<RoutingTable>>,
}

impl Routing {
    pub fn new(config: &RelayConfig, catalog: ModelCatalog) -> Routing {
        Routing {
            table: std::sync::RwLock::new(Arc::new(RoutingTable::new(config, catalog))),
        }
    }

    /// The table in force.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `config`'s rules and routes over `catalog` in force (a reload). Today's spend
    /// carries over, and the new board reads the live figures before it takes a request; the
    /// targets `catalog` shares with the table before keep their breakers, limiters, windows
    /// and gates, since they are the same targets.
    pub fn replace(&self, config: &RelayConfig, catalog: ModelCatalog, window: &LiveWindow) {
        let table = RoutingTable::new(config, catalog);
        let mut current = self.table.write().unwrap_or_else(|e| e.into_inner());
        table.board.set_spend((*current.board.spend()).clone());
        table.board.refresh(window, &table.catalog);
        *current = Arc::new(table);
    }

    /// Decides with the table in force; see [`RoutingTable::decide`].
    pub fn decide(&self, input: &RouteInput<'_>) -> Result<RouteDecision, RelayError> {
        self.table().decide(input)
    }
}

impl RoutingTable {
    fn new(config: &RelayConfig, catalog: ModelCatalog) -> RoutingTable {
        let policy = Policy::new(config, |id| catalog.index_of(id));
        if policy.reads_class() {
            // Train the classifier's model now, not on the first request that needs it.
            classify::warm_up();
        }
        let board = HealthBoard::new(
            catalog.models().iter().map(|m| m.config.id.clone()),
            &config.routing,
        );
        RoutingTable {
            catalog,
            policy,
            board,
        }
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    /// The rules and routes.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn board(&self) -> &HealthBoard {
        &self.board
    }

    /// `GET /v1/models`: the catalog and the hints.
    pub fn list(&self) -> ModelList {
        ModelList {
            hints: self.policy.hints().iter().cloned().collect(),
            ..self.catalog.list()
        }
    }

    /// Decides where a validated request goes. A 400 for a hint no rule names, a 403 for a
    /// named model the key may not use or when the key may use none of the candidates.
    pub fn decide(&self, input: &RouteInput<'_>) -> Result<RouteDecision, RelayError> {
        let policy = &self.policy;
        let request = input.request;
        let (hint, hint_field) = match (&request.routing_hint, input.hint_header) {
            (Some(hint), _) => (Some(hint.as_str()), "routing_hint"),
            (None, header) => (header, "x-fm-route-hint"),
        };
        if let Some(hint) = hint
            && !policy.hints().contains(hint)
        {
            let known: Vec<&str> = policy.hints().iter().map(String::as_str).collect();
            return Err(RelayError::Invalid(ValidationError::new(
                hint_field,
                match known.is_empty() {
                    true => format!("`{hint}` is not a routing hint: no rule takes hints"),
                    false => format!("`{hint}` is not one of the hints: {}", known.join(", ")),
                },
            )));
        }
        let key = input.key;
        let facts = Facts {
            request,
            path: input.path,
            hint,
            key: &key.name,
        };
        let catalog = &self.catalog;
        let explicit = request.model.is_some();
        let (rule, mut reason, candidates, class): (String, String, &[usize], _) =
            match request.model.as_deref() {
                Some(id) => {
                    let index = catalog.by_id.get_key_value(id).ok_or_else(|| {
                        RelayError::Invalid(ValidationError::new(
                            "model",
                            format!("`{id}` is not one of the models"),
                        ))
                    })?;
                    if !key.may_use_model(id) {
                        return Err(RelayError::Forbidden(Refusal::Model {
                            key: key.name.clone(),
                            model: id.to_string(),
                        }));
                    }
                    (
                        "explicit-model".into(),
                        format!("the request named model `{id}`"),
                        std::slice::from_ref(index.1),
                        None,
                    )
                }
                None => match policy.choose(&facts, &self.board) {
                    (Chooser::Rule(rule), class) => (
                        rule.name.clone(),
                        format!("rule `{}` fired ({})", rule.name, rule.summary),
                        &rule.models,
                        class,
                    ),
                    (Chooser::Route(route), class) => (
                        format!("route:{}", route.config.path),
                        format!("no rule fired; the route {}'s models", route.config.path),
                        &route.models,
                        class,
                    ),
                    (Chooser::Default, class) => (
                        "default".into(),
                        format!(
                            "no rule fired; `{}` is the default",
                            catalog.default_model().config.id
                        ),
                        std::slice::from_ref(&catalog.default_index),
                        class,
                    ),
                },
            };
        if let Some(class) = class {
            reason.push_str(&format!(
                "; content read as {} / {}",
                class.domain.as_str(),
                class.complexity.as_str()
            ));
        }
        let latency_target = request.max_latency_ms.or_else(|| {
            policy
                .route(input.path)
                .and_then(|route| route.config.max_latency_ms)
        });
        let allowed = |index: usize| key.may_use_model(&catalog.models[index].config.id);
        let listed = catalog.with_fallbacks(candidates, allowed);
        // Steps (model, target) in the order they go: the fit first, the passed-over last.
        let mut fit: Vec<(usize, usize)> = Vec::with_capacity(listed.len() * 2);
        let mut passed: Vec<(usize, usize)> = Vec::new();
        let mut considered = Vec::with_capacity(listed.len());
        let mut left_out = false;
        for &index in &listed {
            let model = &catalog.models[index];
            let id = &model.config.id;
            if !allowed(index) {
                reason.push_str(&format!("; `{id}` left out: the API key may not use it"));
                considered.push(RouteCandidate {
                    model: id.clone(),
                    passed_over: Some("the API key may not use it".into()),
                    targets_passed_over: Vec::new(),
                });
                left_out = true;
                continue;
            }
            let mut targets_passed_over = Vec::new();
            for (position, target) in model.targets.iter().enumerate() {
                let fitness = match explicit {
                    true => Fitness::Fit,
                    false => self.board.fitness(target, latency_target),
                };
                match fitness {
                    Fitness::Fit => fit.push((index, position)),
                    Fitness::Probe(why) => {
                        reason.push_str(&format!(
                            "; `{id}` in {} tried as a probe although {why}",
                            target.region()
                        ));
                        fit.push((index, position));
                    }
                    Fitness::PassOver(why) => {
                        passed.push((index, position));
                        targets_passed_over.push(TargetPassedOver {
                            target: target.name.clone(),
                            region: target.region().to_string(),
                            reason: why,
                        });
                    }
                }
            }
            let passed_over = if targets_passed_over.len() < model.targets.len() {
                for target in &targets_passed_over {
                    reason.push_str(&format!(
                        "; `{id}` in {} passed over: {}",
                        target.region, target.reason
                    ));
                }
                None
            } else {
                // Every target of the model: the model is passed over.
                let why = match targets_passed_over.as_slice() {
                    [only] => only.reason.clone(),
                    all => all
                        .iter()
                        .map(|target| format!("in {}: {}", target.region, target.reason))
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                reason.push_str(&format!("; `{id}` passed over: {why}"));
                targets_passed_over.clear();
                Some(why)
            };
            considered.push(RouteCandidate {
                model: id.clone(),
                passed_over,
                targets_passed_over,
            });
        }
        if fit.is_empty() && passed.is_empty() {
            let first = candidates
                .first()
                .map_or(catalog.default_index, |&index| index);
            return Err(RelayError::Forbidden(Refusal::Model {
                key: key.name.clone(),
                model: catalog.models[first].config.id.clone(),
            }));
        }
        let plan = if candidates.len() == 1 && passed.is_empty() && !left_out {
            // The one model's own plan, built at start-up.
            catalog.plans[fit[0].0].clone()
        } else {
            fit.extend_from_slice(&passed);
            catalog.plan_of_steps(&fit)
        };
        Ok(RouteDecision {
            plan,
            reason,
            choice: RouteChoice {
                rule,
                class,
                candidates: considered,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ApiKey;
    use crate::config::KeyLimits;
    use crate::provider::bedrock::BedrockEndpoint;

    async fn routing(config: &RelayConfig) -> Routing {
        let builder =
            TargetBuilder::new(config, BedrockEndpoint::Url("http://127.0.0.1:9".into())).unwrap();
        let catalog = ModelCatalog::build(config, &builder, None).await.unwrap();
        Routing::new(config, catalog)
    }

    fn anonymous() -> ApiKey {
        ApiKey::anonymous(KeyLimits::default())
    }

    fn decide(routing: &Routing, request: &ChatRequest, path: &str) -> RouteDecision {
        routing
            .decide(&RouteInput {
                request,
                path,
                hint_header: None,
                key: &anonymous(),
            })
            .unwrap()
    }

    #[tokio::test]
    async fn a_plan_is_the_model_in_each_region_then_its_fallbacks() {
        let routing = routing(&RelayConfig::embedded_default()).await;
        let decision = decide(
            &routing,
            &ChatRequest {
                model: Some("claude-sonnet-4".into()),
                ..ChatRequest::from_prompt("hi")
            },
            "/v1/chat",
        );
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
                ("nova-lite", "us-east-1", ResponseSource::FallbackModel),
                ("nova-lite", "us-west-2", ResponseSource::FallbackModel),
            ]
        );
        assert_eq!(decision.choice.rule, "explicit-model");
        assert!(decision.reason.contains("claude-sonnet-4"));
    }
}
