//! The routing policy compiled from config: ordered [`Rule`]s (conditions on path, hint, content
//! class, key, quality requirement, a model's live figures and today's spend, each leading to a
//! list of models) and the purpose-built routes' own model lists. [`Policy::choose`] walks the
//! rules like a state machine's choice state: the first rule whose conditions all hold gives the
//! candidates; the content classifier runs only when a rule asks for a class.

use std::collections::{BTreeSet, HashMap, HashSet};

use fm_protocol::{ChatRequest, ContentClass, QualityRequirement};

use super::classify::classify;
use super::health::HealthBoard;
use crate::config::RelayConfig;
use crate::config::routing::{CHAT_PATHS, Conditions, RouteConfig, RuleConfig, SpendScope};
use crate::upstream::health::Trip;

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    when: Conditions,
    /// Catalog indices of the rule's models.
    pub models: Vec<usize>,
    /// The paths it applies to.
    paths: HashSet<String>,
    /// The conditions in words, for the decision's reason.
    pub summary: String,
    /// Hysteresis of the metric condition: p99, error rate, throttle rate.
    metric_trips: [Trip; 3],
}

/// A purpose-built route.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    pub models: Vec<usize>,
}

/// Who chose the candidates.
#[derive(Debug, Clone, Copy)]
pub enum Chooser<'a> {
    Rule(&'a Rule),
    Route(&'a Route),
    Default,
}

/// What a rule may look at besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub request: &'a ChatRequest,
    pub path: &'a str,
    pub hint: Option<&'a str>,
    pub key: &'a str,
}

#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    routes: HashMap<String, Route>,
    hints: BTreeSet<String>,
}

impl Policy {
    /// Compiles a validated config's policy against the catalog's model indices.
    pub fn new(config: &RelayConfig, index_of: impl Fn(&str) -> Option<usize>) -> Policy {
        let indices = |models: &[String]| models.iter().filter_map(|m| index_of(m)).collect();
        let rules = config
            .routing
            .rules
            .iter()
            // A validated config names only known models; one that was not cannot route here.
            .filter(|rule| rule.models.iter().any(|m| index_of(m).is_some()))
            .map(|rule| Rule {
                name: rule.name.clone(),
                models: indices(&rule.models),
                paths: match rule.when.paths.is_empty() {
                    true => CHAT_PATHS.iter().map(|p| p.to_string()).collect(),
                    false => rule.when.paths.iter().cloned().collect(),
                },
                summary: summary(rule),
                when: rule.when.clone(),
                metric_trips: Default::default(),
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .filter(|route| route.models.iter().any(|m| index_of(m).is_some()))
            .map(|route| {
                let entry = Route {
                    config: route.clone(),
                    models: indices(&route.models),
                };
                (route.path.clone(), entry)
            })
            .collect();
        let hints = config
            .routing
            .hints()
            .into_iter()
            .map(str::to_string)
            .collect();
        Policy {
            rules,
            routes,
            hints,
        }
    }

    /// Whether some rule asks for the content class.
    pub fn reads_class(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| !rule.when.domains.is_empty() || rule.when.complexity.is_some())
    }

    /// Whether some rule budgets spend (so today's spend must be read).
    pub fn reads_spend(&self) -> bool {
        self.rules.iter().any(|rule| rule.when.spend.is_some())
    }

    /// The hints some rule names.
    pub fn hints(&self) -> &BTreeSet<String> {
        &self.hints
    }

    /// The purpose-built route at `path`.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.get(path)
    }

    /// Every purpose-built route.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }

    /// The first rule whose conditions hold, else the route's own models, else the default;
    /// with the content class when a rule needed it.
    pub fn choose<'a>(
        &'a self,
        facts: &Facts<'_>,
        board: &HealthBoard,
    ) -> (Chooser<'a>, Option<ContentClass>) {
        let mut class = None;
        for rule in &self.rules {
            if rule.holds(facts, board, &mut class) {
                return (Chooser::Rule(rule), class);
            }
        }
        match self.routes.get(facts.path) {
            Some(route) => (Chooser::Route(route), class),
            None => (Chooser::Default, class),
        }
    }
}

impl Rule {
    fn holds(
        &self,
        facts: &Facts<'_>,
        board: &HealthBoard,
        class: &mut Option<ContentClass>,
    ) -> bool {
        let when = &self.when;
        if !self.paths.contains(facts.path) {
            return false;
        }
        if !when.hints.is_empty()
            && !facts
                .hint
                .is_some_and(|h| when.hints.iter().any(|w| w == h))
        {
            return false;
        }
        if !when.keys.is_empty() && !when.keys.iter().any(|k| k == facts.key) {
            return false;
        }
        if let Some(quality) = when.quality {
            let asked = facts
                .request
                .quality_requirement
                .unwrap_or(QualityRequirement::Standard);
            if asked != quality {
                return false;
            }
        }
        if !when.domains.is_empty() || when.complexity.is_some() {
            let class = *class.get_or_insert_with(|| classify(facts.request));
            if !when.domains.is_empty() && !when.domains.contains(&class.domain) {
                return false;
            }
            if when.complexity.is_some_and(|c| c != class.complexity) {
                return false;
            }
        }
        if let Some(spend) = &when.spend {
            let today = board.spend();
            let spent = match spend.scope {
                SpendScope::Global => today.global_usd,
                SpendScope::Key => today.by_key_usd.get(facts.key).copied().unwrap_or(0.0),
                SpendScope::Model => spend
                    .model
                    .as_ref()
                    .and_then(|m| today.by_model_usd.get(m))
                    .copied()
                    .unwrap_or(0.0),
            };
            if spent <= spend.daily_usd_above {
                return false;
            }
        }
        if let Some(metric) = &when.metric {
            let Some(figures) = board.figures(&metric.model) else {
                return false;
            };
            let enough = board.enough(&figures);
            let ratio = board.recover_ratio;
            let checks = [
                (metric.p99_ms_above, figures.p99_latency_ms),
                (metric.error_rate_above, Some(figures.error_rate)),
                (metric.throttle_rate_above, Some(figures.throttle_rate)),
            ];
            let mut any = false;
            for ((threshold, value), trip) in checks.into_iter().zip(&self.metric_trips) {
                if let Some(threshold) = threshold {
                    any |= trip.holds(value.filter(|_| enough), threshold, ratio);
                }
            }
            if !any {
                return false;
            }
        }
        true
    }
}

/// A rule's conditions in words.
fn summary(rule: &RuleConfig) -> String {
    let when = &rule.when;
    let mut parts = Vec::new();
    if !when.paths.is_empty() {
        parts.push(format!("path {}", when.paths.join(" or ")));
    }
    if !when.hints.is_empty() {
        parts.push(format!("hint {}", when.hints.join(" or ")));
    }
    if !when.domains.is_empty() {
        let domains: Vec<&str> = when.domains.iter().map(|d| d.as_str()).collect();
        parts.push(format!("domain {}", domains.join(" or ")));
    }
    if let Some(complexity) = when.complexity {
        parts.push(format!("complexity {}", complexity.as_str()));
    }
    if !when.keys.is_empty() {
        parts.push(format!("key {}", when.keys.join(" or ")));
    }
    if let Some(quality) = when.quality {
        parts.push(format!("quality {quality:?}").to_lowercase());
    }
    if let Some(metric) = &when.metric {
        let mut figures = Vec::new();
        if let Some(v) = metric.p99_ms_above {
            figures.push(format!("p99 above {v} ms"));
        }
        if let Some(v) = metric.error_rate_above {
            figures.push(format!("error rate above {:.0}%", v * 100.0));
        }
        if let Some(v) = metric.throttle_rate_above {
            figures.push(format!("throttle rate above {:.0}%", v * 100.0));
        }
        parts.push(format!("`{}` {}", metric.model, figures.join(" or ")));
    }
    if let Some(spend) = &when.spend {
        let whose = match (spend.scope, &spend.model) {
            (SpendScope::Global, _) => "today's spend".to_string(),
            (SpendScope::Key, _) => "the key's spend today".to_string(),
            (SpendScope::Model, model) => {
                format!("`{}`'s spend today", model.as_deref().unwrap_or(""))
            }
        };
        parts.push(format!("{whose} above ${}", spend.daily_usd_above));
    }
    if parts.is_empty() {
        "every request".into()
    } else {
        parts.join(", ")
    }
}
