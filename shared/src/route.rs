//! How the relay chose a model, as clients see it: the [`RouteChoice`] in the stream's `start`
//! event, in `route` of every answer and from `POST /v1/route/explain`; and the catalog's words
//! for models ([`Tier`], [`Capability`]) and for content ([`Domain`], [`Complexity`]).

use serde::{Deserialize, Serialize};

/// A model's quality tier: what a route or hint asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Quick and cheap: moderation, classification, short answers.
    Fast,
    /// The everyday model.
    #[default]
    Balanced,
    /// The most capable (and most expensive).
    Premium,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Balanced => "balanced",
            Tier::Premium => "premium",
        }
    }
}

/// What a model can do beyond plain chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Strong at reading and writing code.
    Code,
    /// A context window of 100 000 tokens or more, used well.
    LongContext,
    /// Continues a partial assistant message (what mid-stream failover resumes with).
    Prefill,
    /// Calls tools.
    Tools,
}

/// What a request is about, as the relay's content classifier reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Code,
    Legal,
    Math,
    General,
}

impl Domain {
    pub const ALL: [Domain; 4] = [Domain::Code, Domain::Legal, Domain::Math, Domain::General];

    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Code => "code",
            Domain::Legal => "legal",
            Domain::Math => "math",
            Domain::General => "general",
        }
    }
}

/// How demanding a request is, as the relay's content classifier reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Complexity {
    /// A direct question or small task a fast model answers well.
    Simple,
    /// Multi-step reasoning, analysis, design, long or multi-part output.
    High,
}

impl Complexity {
    pub const ALL: [Complexity; 2] = [Complexity::Simple, Complexity::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Complexity::Simple => "simple",
            Complexity::High => "high",
        }
    }
}

/// The classifier's labels for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContentClass {
    pub domain: Domain,
    pub complexity: Complexity,
}

/// What a caller asks of the answer's quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum QualityRequirement {
    /// Whatever the policy picks.
    Standard,
    /// The best model there is: the premium tier.
    Highest,
}

/// One model the decision considered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteCandidate {
    pub model: String,
    /// Why the model was passed over (kept at the end of the plan, as a last resort); absent
    /// for the models the plan tries first, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_over: Option<String>,
    /// The model's targets (regions, inference profiles) that were passed over while others
    /// of its targets were not: they come after every target that is fit, in the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets_passed_over: Vec<TargetPassedOver>,
}

/// A target of a candidate model that the decision passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TargetPassedOver {
    /// The target as logs and `/v1/stats` name it: `upstream-id in region`.
    pub target: String,
    pub region: String,
    pub reason: String,
}

/// The routing decision for one request: the rule that fired, what the content classifier read
/// (when a rule asked), and every candidate with why it was or was not put first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteChoice {
    /// The rule's name: `explicit-model` when the request named a model, a configured rule's
    /// name, `route:PATH` for a route's own models, or `default`.
    #[serde(default)]
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ContentClass>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<RouteCandidate>,
}

impl RouteChoice {
    /// The compact form of the `x-fm-route` header:
    /// `rule=NAME; model=ID[; class=DOMAIN/COMPLEXITY][; passed_over=ID,ID]`.
    pub fn header_value(&self, model: &str) -> String {
        let mut value = format!("rule={}; model={model}", self.rule);
        if let Some(class) = self.class {
            value.push_str(&format!(
                "; class={}/{}",
                class.domain.as_str(),
                class.complexity.as_str()
            ));
        }
        let mut passed: Vec<String> = Vec::new();
        for candidate in &self.candidates {
            if candidate.passed_over.is_some() {
                passed.push(candidate.model.clone());
            }
            for target in &candidate.targets_passed_over {
                passed.push(format!("{}@{}", candidate.model, target.region));
            }
        }
        if !passed.is_empty() {
            value.push_str("; passed_over=");
            value.push_str(&passed.join(","));
        }
        value
    }
}

/// One step of a plan, as `POST /v1/route/explain` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedTarget {
    pub model: String,
    pub region: String,
    pub source: crate::ResponseSource,
}

/// The answer of `POST /v1/route/explain`: the decision a request would get now, without
/// calling a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteExplanation {
    /// The surface the request was explained for (`?path=`, default `/v1/chat`).
    pub path: String,
    /// The model the plan starts with.
    pub model: String,
    pub route: RouteChoice,
    /// The decision in words (the `reason` of the answer's `route`).
    pub reason: String,
    /// Every target the request would try, in order.
    pub plan: Vec<PlannedTarget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_rule_model_class_and_the_passed_over() {
        let choice = RouteChoice {
            rule: "code-high".into(),
            class: Some(ContentClass {
                domain: Domain::Code,
                complexity: Complexity::High,
            }),
            candidates: vec![
                RouteCandidate {
                    model: "a".into(),
                    passed_over: Some("slow".into()),
                    targets_passed_over: Vec::new(),
                },
                RouteCandidate {
                    model: "b".into(),
                    passed_over: None,
                    targets_passed_over: vec![TargetPassedOver {
                        target: "b-1 in us-east-1".into(),
                        region: "us-east-1".into(),
                        reason: "slow".into(),
                    }],
                },
            ],
        };
        assert_eq!(
            choice.header_value("b"),
            "rule=code-high; model=b; class=code/high; passed_over=a,b@us-east-1"
        );
        assert_eq!(
            RouteChoice {
                rule: "default".into(),
                ..RouteChoice::default()
            }
            .header_value("m"),
            "rule=default; model=m"
        );
    }
}
