//! Fault schedules: rules that inject faults into a share of the requests for a model, a region or
//! both, during a time window — a throttling rate, a quota (`above_per_sec`), a 5xx rate, a region
//! outage, slow first tokens, streams that break. Set in the configuration (`[[faults]]`) and replaced at run time through
//! `PUT /_sim/faults`, so a test or a benchmark can script an outage while a client is running.
//!
//! The region of a request is read from its SigV4 `Authorization` header (the credential scope
//! names it), exactly as AWS routes it; requests without a signature match only rules that name
//! no region. A fault asked for by the request itself (header or model suffix) wins over the
//! schedule. The random draws come from a generator seeded with the simulator's seed, so a run
//! with the same arrival order draws the same faults.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fault::Fault;

/// One rule of the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The fault, in the spec grammar of [`crate::fault`] (`throttle`, `cut@5`, `slow@3000`).
    #[serde(serialize_with = "fault_to_spec", deserialize_with = "fault_from_spec")]
    pub fault: Fault,
    /// The model id it applies to (without any `~fault` suffix); every model when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The region it applies to (from the request's signature); every region when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The share of matching requests that get the fault, 0.0 to 1.0.
    #[serde(default = "always")]
    pub rate: f64,
    /// The rule starts this many milliseconds after it was installed.
    #[serde(default)]
    pub after_ms: u64,
    /// The rule lasts this many milliseconds once started; forever when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// The rule injects at most this many faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// A quota: the first this-many matching requests of every second pass; the rule applies to
    /// the rest (`{"fault": "throttle", "above_per_sec": 50}` throttles above 50 requests/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above_per_sec: Option<u32>,
}

fn always() -> f64 {
    1.0
}

fn fault_to_spec<S: Serializer>(fault: &Fault, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(fault)
}

fn fault_from_spec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Fault, D::Error> {
    let spec = String::deserialize(deserializer)?;
    spec.parse().map_err(serde::de::Error::custom)
}

impl FaultRule {
    /// A rule that gives every request `fault`.
    pub fn always(fault: Fault) -> Self {
        FaultRule {
            fault,
            model: None,
            region: None,
            rate: 1.0,
            after_ms: 0,
            for_ms: None,
            limit: None,
            above_per_sec: None,
        }
    }

    pub fn for_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    pub fn in_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    pub fn at_rate(mut self, rate: f64) -> Self {
        self.rate = rate;
        self
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(format!(
                "fault rule `{}`: rate must be between 0.0 and 1.0, got {}",
                self.fault, self.rate
            ));
        }
        Ok(())
    }

    fn matches(&self, model: &str, region: Option<&str>) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
            && self.region.as_deref().is_none_or(|r| Some(r) == region)
    }

    fn active(&self, since_install: Duration) -> bool {
        let start = Duration::from_millis(self.after_ms);
        since_install >= start
            && self
                .for_ms
                .is_none_or(|length| since_install < start + Duration::from_millis(length))
    }
}

/// The rules in force, with their clocks and counters.
#[derive(Debug)]
pub struct FaultSchedule {
    inner: Mutex<Installed>,
}

#[derive(Debug)]
struct Installed {
    rules: Vec<FaultRule>,
    /// Faults each rule has injected.
    injected: Vec<u32>,
    /// Per rule: the second (since installation) being counted, and the matching requests seen
    /// in it (for quotas).
    per_second: Vec<(u64, u32)>,
    installed: Instant,
    random: fastrand::Rng,
}

impl FaultSchedule {
    pub fn new(rules: Vec<FaultRule>, seed: u64) -> Self {
        FaultSchedule {
            inner: Mutex::new(Installed {
                injected: vec![0; rules.len()],
                per_second: vec![(0, 0); rules.len()],
                rules,
                installed: Instant::now(),
                random: fastrand::Rng::with_seed(seed),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Installed> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the rules; their windows count from now.
    pub fn replace(&self, rules: Vec<FaultRule>) -> Result<(), String> {
        for rule in &rules {
            rule.validate()?;
        }
        let mut installed = self.lock();
        installed.injected = vec![0; rules.len()];
        installed.per_second = vec![(0, 0); rules.len()];
        installed.rules = rules;
        installed.installed = Instant::now();
        Ok(())
    }

    pub fn rules(&self) -> Vec<FaultRule> {
        self.lock().rules.clone()
    }

    /// The fault for a request to `model` in `region`: the first active matching rule that draws
    /// it (each rule draws on its own, in order).
    pub fn fault_for(&self, model: &str, region: Option<&str>) -> Option<Fault> {
        let mut installed = self.lock();
        if installed.rules.is_empty() {
            return None;
        }
        let since_install = installed.installed.elapsed();
        let second = since_install.as_secs();
        let Installed {
            rules,
            injected,
            per_second,
            random,
            ..
        } = &mut *installed;
        for ((rule, count), seen) in rules.iter().zip(injected.iter_mut()).zip(per_second) {
            if !rule.matches(model, region) || !rule.active(since_install) {
                continue;
            }
            if let Some(quota) = rule.above_per_sec {
                if seen.0 != second {
                    *seen = (second, 0);
                }
                seen.1 += 1;
                if seen.1 <= quota {
                    continue;
                }
            }
            if rule.limit.is_some_and(|limit| *count >= limit) {
                continue;
            }
            if rule.rate >= 1.0 || random.f64() < rule.rate {
                *count += 1;
                return Some(rule.fault);
            }
        }
        None
    }
}

/// The region in a SigV4 `Authorization` header's credential scope
/// (`Credential=AKID/20261127/us-west-2/bedrock/aws4_request`).
pub fn signed_region(authorization: &str) -> Option<&str> {
    let scope = authorization.split("Credential=").nth(1)?;
    let scope = scope.split([',', ' ']).next()?;
    let region = scope.split('/').nth(2)?;
    (!region.is_empty()).then_some(region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::HttpFault;

    const THROTTLE: Fault = Fault::Http(HttpFault::Throttle);

    #[test]
    fn reads_the_region_from_a_sigv4_header() {
        let header = "AWS4-HMAC-SHA256 Credential=AKID/20261127/eu-west-1/bedrock/aws4_request, \
                      SignedHeaders=host;x-amz-date, Signature=abc";
        assert_eq!(signed_region(header), Some("eu-west-1"));
        assert_eq!(signed_region("Bearer token"), None);
    }

    #[test]
    fn rules_match_model_and_region() {
        let schedule = FaultSchedule::new(
            vec![
                FaultRule::always(THROTTLE)
                    .for_model("m")
                    .in_region("us-east-1"),
            ],
            1,
        );
        assert_eq!(schedule.fault_for("m", Some("us-east-1")), Some(THROTTLE));
        assert_eq!(schedule.fault_for("m", Some("us-west-2")), None);
        assert_eq!(schedule.fault_for("other", Some("us-east-1")), None);
        assert_eq!(schedule.fault_for("m", None), None);
    }

    #[test]
    fn a_rate_injects_about_that_share() {
        let schedule = FaultSchedule::new(vec![FaultRule::always(THROTTLE).at_rate(0.2)], 7);
        let hits = (0..10_000)
            .filter(|_| schedule.fault_for("m", None).is_some())
            .count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
    }

    #[test]
    fn windows_and_limits_bound_a_rule() {
        let rule = FaultRule {
            after_ms: 100,
            for_ms: Some(50),
            ..FaultRule::always(THROTTLE)
        };
        assert!(!rule.active(Duration::from_millis(99)));
        assert!(rule.active(Duration::from_millis(100)));
        assert!(rule.active(Duration::from_millis(149)));
        assert!(!rule.active(Duration::from_millis(150)));

        let schedule = FaultSchedule::new(
            vec![FaultRule {
                limit: Some(2),
                ..FaultRule::always(THROTTLE)
            }],
            1,
        );
        let hits: Vec<_> = (0..4).map(|_| schedule.fault_for("m", None)).collect();
        assert_eq!(hits, [Some(THROTTLE), Some(THROTTLE), None, None]);
    }

    #[test]
    fn a_quota_lets_the_first_requests_of_each_second_pass() {
        let schedule = FaultSchedule::new(
            vec![FaultRule {
                above_per_sec: Some(3),
                ..FaultRule::always(THROTTLE)
            }],
            1,
        );
        let hits: Vec<_> = (0..5).map(|_| schedule.fault_for("m", None)).collect();
        assert_eq!(hits, [None, None, None, Some(THROTTLE), Some(THROTTLE)]);
    }

    #[test]
    fn rules_read_from_json_and_reject_bad_values() {
        let rule: FaultRule = serde_json::from_str(
            r#"{"fault":"cut@5","region":"us-east-1","rate":0.5,"for_ms":60000}"#,
        )
        .unwrap();
        assert_eq!(rule.fault, Fault::Cut { after_tokens: 5 });
        assert_eq!(
            serde_json::to_value(&rule).unwrap()["fault"],
            serde_json::json!("cut@5")
        );
        assert!(serde_json::from_str::<FaultRule>(r#"{"fault":"melt"}"#).is_err());
        assert!(serde_json::from_str::<FaultRule>(r#"{"fault":"throttle","typo":1}"#).is_err());
        let too_often = FaultRule {
            rate: 1.5,
            ..FaultRule::always(THROTTLE)
        };
        assert!(too_often.validate().is_err());
    }
}
