//! The routing policy as configured: `[routing]` (the ordered rules and the health gates) and
//! `[[routes]]` (purpose-built endpoints such as `/v1/summarize`), with the checks that reject a
//! rule naming an unknown model or one that can never fire.

use std::collections::{BTreeSet, HashSet};

use fm_protocol::limits::MAX_TOKENS;
use fm_protocol::{Complexity, Domain, QualityRequirement};
use serde::{Deserialize, Serialize};

/// The chat surfaces: the paths a rule without `paths` applies to.
pub const CHAT_PATHS: &[&str] = &[
    "/v1/chat",
    "/v1/chat/stream",
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/ws",
];

/// Where the Bedrock Runtime routes live (`/model/{modelId}/converse`, ...): model calls, like
/// the chat paths.
pub const BEDROCK_PREFIX: &str = "/model/";

/// The path of async document jobs (`POST /v1/jobs`): its model calls are routed by the rules
/// that name it, else by the default model.
pub const JOBS_PATH: &str = "/v1/jobs";

/// Paths the relay serves itself, which a `[[routes]]` entry may not take.
const RESERVED_PREFIXES: &[&str] = &[
    "/v1/chat",
    "/v1/ws",
    "/v1/models",
    "/v1/stats",
    "/v1/usage",
    "/v1/admin",
    "/v1/route",
    "/v1/jobs",
];

/// How requests are routed among the models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The rules, tried in order; the first whose conditions all hold gives the candidates.
    pub rules: Vec<RuleConfig>,
    /// The live window the health figures cover, in seconds.
    pub window_secs: u64,
    /// Fewer requests than this in the window say nothing about a model's health.
    pub min_samples: u32,
    /// A candidate whose error rate (failed requests and failed upstream calls) is above this
    /// is passed over for the next one.
    pub max_error_rate: f64,
    /// Hysteresis: a model passed over for a figure comes back only when the figure is below
    /// this share of its threshold (or its evidence has left the window).
    pub recover_ratio: f64,
    /// A passed-over model still goes first for one request this often (milliseconds), as the
    /// probe that shows when it recovered.
    pub probe_every_ms: u64,
    /// How often the health figures are recomputed from the live window, in milliseconds.
    pub refresh_ms: u64,
    /// How often today's spend is read from the usage ledger, in milliseconds.
    pub spend_refresh_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            rules: Vec::new(),
            window_secs: 60,
            min_samples: 10,
            max_error_rate: 0.5,
            recover_ratio: 0.8,
            probe_every_ms: 1000,
            refresh_ms: 250,
            spend_refresh_ms: 1000,
        }
    }
}

/// One rule: when every condition holds, the request's candidates are `models`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in every decision the rule makes (`route.rule`, `x-fm-route`, metrics).
    pub name: String,
    #[serde(default)]
    pub when: Conditions,
    pub models: Vec<String>,
}

/// A rule's conditions; each one left out holds for every request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conditions {
    /// The request's path is one of these; left out: the chat surfaces ([`CHAT_PATHS`]). A
    /// `[[routes]]` path is routed only by rules that name it, then by its own `models`.
    pub paths: Vec<String>,
    /// The request's routing hint is one of these.
    pub hints: Vec<String>,
    /// The content classifier reads one of these domains.
    pub domains: Vec<Domain>,
    /// The content classifier reads this complexity.
    pub complexity: Option<Complexity>,
    /// The caller's API key is one of these (by name).
    pub keys: Vec<String>,
    /// The request's `quality_requirement`.
    pub quality: Option<QualityRequirement>,
    /// A model's live figures are above a threshold.
    pub metric: Option<MetricCondition>,
    /// Today's spend is above a budget.
    pub spend: Option<SpendCondition>,
}

/// Holds while one of the model's figures over the window is above its threshold (with
/// `recover_ratio` hysteresis: once it held, it holds until the figure is below that share).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricCondition {
    pub model: String,
    /// p99 latency (a stream's time to first token, a one-shot answer's total time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms_above: Option<f64>,
    /// Share of requests and upstream calls that failed, 0-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_above: Option<f64>,
    /// Share of upstream calls that were throttled, 0-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_rate_above: Option<f64>,
}

/// Whose spend a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendScope {
    /// Every caller, every model.
    Global,
    /// The caller's key, every model.
    Key,
    /// One model (`model`), every caller.
    Model,
}

/// Holds while today's (UTC) spend in `scope` is above `daily_usd_above` dollars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendCondition {
    pub scope: SpendScope,
    /// With scope "model": the model whose spend counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub daily_usd_above: f64,
}

/// A purpose-built endpoint: `POST path` takes a chat request, frames it with `system` and
/// bounds its `max_tokens`, and routes it to `models` unless a rule naming the path fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Under `/v1/`, and not one of the relay's own paths.
    pub path: String,
    /// Put before the request's own system prompt.
    pub system: String,
    /// The most tokens an answer may take; the request's `max_tokens` defaults to it, and a
    /// larger one is refused.
    pub max_tokens: u32,
    pub models: Vec<String>,
    /// The route's latency target (a request's own `max_latency_ms` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<u32>,
}

impl RoutingConfig {
    /// Every hint some rule names: the hints a request may give.
    pub fn hints(&self) -> BTreeSet<&str> {
        self.rules
            .iter()
            .flat_map(|rule| rule.when.hints.iter().map(String::as_str))
            .collect()
    }

    /// Checks the policy against the declared `models` and `routes`.
    pub fn validate(&self, models: &HashSet<&str>, routes: &[RouteConfig]) -> Result<(), String> {
        if self.window_secs == 0 || self.window_secs > 3600 {
            return Err("`routing.window_secs` must be 1 to 3600".into());
        }
        if self.refresh_ms == 0 || self.spend_refresh_ms == 0 || self.probe_every_ms == 0 {
            return Err(
                "`routing.refresh_ms`, `routing.spend_refresh_ms` and `routing.probe_every_ms` must be greater than 0".into(),
            );
        }
        if !(self.max_error_rate > 0.0 && self.max_error_rate <= 1.0) {
            return Err("`routing.max_error_rate` must be above 0 and at most 1".into());
        }
        if !(self.recover_ratio > 0.0 && self.recover_ratio <= 1.0) {
            return Err("`routing.recover_ratio` must be above 0 and at most 1".into());
        }
        let mut paths: HashSet<&str> = CHAT_PATHS.iter().copied().collect();
        paths.insert(JOBS_PATH);
        for route in routes {
            route.validate(models)?;
            if !paths.insert(route.path.as_str()) {
                return Err(format!("route `{}` is declared twice", route.path));
            }
        }
        let mut names = HashSet::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let name = &rule.name;
            if name.trim().is_empty() {
                return Err(format!("routing rule {} has an empty `name`", index + 1));
            }
            if !names.insert(name.as_str()) {
                return Err(format!("routing rule `{name}` is declared twice"));
            }
            if rule.models.is_empty() {
                return Err(format!("routing rule `{name}` has no `models`"));
            }
            check_models(&format!("routing rule `{name}`"), &rule.models, models)?;
            rule.when.validate(name, models, &paths)?;
            if let Some(earlier) = self.rules[..index]
                .iter()
                .find(|earlier| earlier.when.covers(&rule.when))
            {
                return Err(format!(
                    "routing rule `{name}` can never fire: rule `{}` before it takes every request it would",
                    earlier.name
                ));
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    fn validate(&self, models: &HashSet<&str>) -> Result<(), String> {
        let path = &self.path;
        let well_formed = path.starts_with("/v1/")
            && path.len() > 4
            && !path.ends_with('/')
            && path[1..]
                .split('/')
                .all(|segment| !segment.is_empty() && segment.bytes().all(is_path_byte));
        if !well_formed {
            return Err(format!(
                "route `{path}` must be a path under /v1/ of letters, digits, `-` and `_` (like /v1/summarize)"
            ));
        }
        if RESERVED_PREFIXES
            .iter()
            .any(|prefix| path == prefix || path.starts_with(&format!("{prefix}/")))
        {
            return Err(format!("route `{path}` is one of the relay's own paths"));
        }
        if self.system.trim().is_empty() {
            return Err(format!("route `{path}` has an empty `system` prompt"));
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS {
            return Err(format!(
                "route `{path}` has `max_tokens` {}; it must be 1 to {MAX_TOKENS}",
                self.max_tokens
            ));
        }
        if self.models.is_empty() {
            return Err(format!("route `{path}` has no `models`"));
        }
        if self.max_latency_ms == Some(0) {
            return Err(format!(
                "route `{path}` has `max_latency_ms` 0 (leave it out for no target)"
            ));
        }
        check_models(&format!("route `{path}`"), &self.models, models)
    }
}

fn is_path_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

fn check_models(owner: &str, list: &[String], models: &HashSet<&str>) -> Result<(), String> {
    for (index, model) in list.iter().enumerate() {
        if !models.contains(model.as_str()) {
            return Err(format!(
                "{owner} names model `{model}`, which is not one of the declared models"
            ));
        }
        if list[..index].contains(model) {
            return Err(format!("{owner} lists model `{model}` twice"));
        }
    }
    Ok(())
}

impl Conditions {
    fn validate(
        &self,
        rule: &str,
        models: &HashSet<&str>,
        paths: &HashSet<&str>,
    ) -> Result<(), String> {
        for path in &self.paths {
            if !paths.contains(path.as_str()) {
                return Err(format!(
                    "routing rule `{rule}` can never fire: path `{path}` is neither a chat surface nor a declared route"
                ));
            }
        }
        if self.hints.iter().any(|hint| hint.trim().is_empty()) {
            return Err(format!("routing rule `{rule}` has an empty hint"));
        }
        if let Some(metric) = &self.metric {
            if !models.contains(metric.model.as_str()) {
                return Err(format!(
                    "routing rule `{rule}` watches model `{}`, which is not one of the declared models",
                    metric.model
                ));
            }
            let thresholds = [
                metric.p99_ms_above.map(|v| (v, f64::MAX)),
                metric.error_rate_above.map(|v| (v, 1.0)),
                metric.throttle_rate_above.map(|v| (v, 1.0)),
            ];
            if thresholds.iter().all(Option::is_none) {
                return Err(format!(
                    "routing rule `{rule}`'s `metric` sets none of `p99_ms_above`, `error_rate_above`, `throttle_rate_above`"
                ));
            }
            if thresholds
                .iter()
                .flatten()
                .any(|(value, max)| !(value.is_finite() && *value >= 0.0 && value < max))
            {
                return Err(format!(
                    "routing rule `{rule}` has a metric threshold that can never be passed (rates are 0 to below 1, latencies 0 or more)"
                ));
            }
        }
        if let Some(spend) = &self.spend {
            if !(spend.daily_usd_above.is_finite() && spend.daily_usd_above >= 0.0) {
                return Err(format!(
                    "routing rule `{rule}` has a `daily_usd_above` that is not 0 or more"
                ));
            }
            match (spend.scope, &spend.model) {
                (SpendScope::Model, None) => {
                    return Err(format!(
                        "routing rule `{rule}` counts a model's spend but names no `model`"
                    ));
                }
                (SpendScope::Model, Some(model)) if !models.contains(model.as_str()) => {
                    return Err(format!(
                        "routing rule `{rule}` counts the spend of model `{model}`, which is not one of the declared models"
                    ));
                }
                (SpendScope::Global | SpendScope::Key, Some(_)) => {
                    return Err(format!(
                        "routing rule `{rule}` names a `model` for a spend scope that is not \"model\""
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The paths the conditions apply to.
    fn path_set(&self) -> BTreeSet<&str> {
        if self.paths.is_empty() {
            CHAT_PATHS.iter().copied().collect()
        } else {
            self.paths.iter().map(String::as_str).collect()
        }
    }

    /// Whether every request `later` matches is matched by `self` too (so a rule with `later`'s
    /// conditions after one with these can never fire). Conservative: only static conditions
    /// count, and a live condition (metric, spend) on `self` never covers.
    fn covers(&self, later: &Conditions) -> bool {
        fn list_covers<T: PartialEq>(earlier: &[T], later: &[T]) -> bool {
            earlier.is_empty() || (!later.is_empty() && later.iter().all(|v| earlier.contains(v)))
        }
        fn option_covers<T: PartialEq>(earlier: &Option<T>, later: &Option<T>) -> bool {
            earlier.is_none() || earlier == later
        }
        self.metric.is_none()
            && self.spend.is_none()
            && later.path_set().is_subset(&self.path_set())
            && list_covers(&self.hints, &later.hints)
            && list_covers(&self.domains, &later.domains)
            && list_covers(&self.keys, &later.keys)
            && option_covers(&self.complexity, &later.complexity)
            && option_covers(&self.quality, &later.quality)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, when: Conditions) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            when,
            models: vec!["a".into()],
        }
    }

    fn check(rules: Vec<RuleConfig>) -> Result<(), String> {
        let models: HashSet<&str> = ["a", "b"].into_iter().collect();
        RoutingConfig {
            rules,
            ..RoutingConfig::default()
        }
        .validate(&models, &[])
    }

    #[test]
    fn a_rule_behind_one_that_takes_its_requests_can_never_fire() {
        let code = Conditions {
            domains: vec![Domain::Code],
            ..Conditions::default()
        };
        let code_high = Conditions {
            complexity: Some(Complexity::High),
            ..code.clone()
        };
        let err = check(vec![
            rule("code", code.clone()),
            rule("code-high", code_high.clone()),
        ])
        .unwrap_err();
        assert!(err.contains("`code-high` can never fire"), "{err}");
        // The other way round both can fire.
        check(vec![
            rule("code-high", code_high),
            rule("code", code.clone()),
        ])
        .unwrap();
        // A live condition does not take every request.
        let over_budget = Conditions {
            spend: Some(SpendCondition {
                scope: SpendScope::Global,
                model: None,
                daily_usd_above: 1.0,
            }),
            ..Conditions::default()
        };
        check(vec![
            rule("budget", over_budget),
            rule("code", code.clone()),
        ])
        .unwrap();
        // A rule for the chat surfaces does not cover one for a declared route's path.
        let everything = Conditions::default();
        let err = check(vec![rule("all", everything.clone()), rule("code", code)]).unwrap_err();
        assert!(err.contains("rule `all` before it"), "{err}");
    }

    #[test]
    fn unknown_models_paths_and_impossible_thresholds_are_refused() {
        let mut unknown = rule("x", Conditions::default());
        unknown.models = vec!["nope".into()];
        assert!(check(vec![unknown]).unwrap_err().contains("`nope`"));
        let elsewhere = Conditions {
            paths: vec!["/v1/elsewhere".into()],
            ..Conditions::default()
        };
        assert!(
            check(vec![rule("x", elsewhere)])
                .unwrap_err()
                .contains("never fire")
        );
        let rate = Conditions {
            metric: Some(MetricCondition {
                model: "a".into(),
                p99_ms_above: None,
                error_rate_above: Some(1.5),
                throttle_rate_above: None,
            }),
            ..Conditions::default()
        };
        assert!(
            check(vec![rule("x", rate)])
                .unwrap_err()
                .contains("never be passed")
        );
    }

    #[test]
    fn routes_must_be_new_paths_under_v1() {
        let models: HashSet<&str> = ["a"].into_iter().collect();
        let route = |path: &str| RouteConfig {
            path: path.into(),
            system: "Be brief.".into(),
            max_tokens: 100,
            models: vec!["a".into()],
            max_latency_ms: None,
        };
        for (path, expected) in [
            ("/v1/chat/x", "own paths"),
            ("/v2/x", "under /v1/"),
            ("/v1/a b", "under /v1/"),
            ("/v1/models", "own paths"),
        ] {
            let err = RoutingConfig::default()
                .validate(&models, &[route(path)])
                .unwrap_err();
            assert!(err.contains(expected), "{path}: {err}");
        }
        RoutingConfig::default()
            .validate(&models, &[route("/v1/summarize")])
            .unwrap();
    }
}
