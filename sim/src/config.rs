//! How the simulator behaves: per-model latency, token rate and answer length, and the seed that
//! makes every answer reproducible. Loaded from TOML (`fm-sim --config FILE`) or built in code.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::FaultRule;

/// The whole simulator configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Mixed into every answer's seed: the same seed, model and prompt give the same answer.
    pub seed: u64,
    /// The behaviour of models that have no entry in `models`.
    pub default_model: ModelProfile,
    /// Per-model behaviour, keyed by the model id (without any `~fault` suffix).
    pub models: HashMap<String, ModelProfile>,
    /// The fault schedule in force from the start (see [`crate::schedule`]); `PUT /_sim/faults`
    /// replaces it at run time.
    pub faults: Vec<FaultRule>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            default_model: ModelProfile::default(),
            models: HashMap::new(),
            faults: Vec::new(),
        }
    }
}

impl SimConfig {
    /// A configuration with no artificial latency: answers as fast as the machine allows.
    pub fn instant() -> Self {
        SimConfig {
            default_model: ModelProfile {
                first_token_ms: 0,
                tokens_per_second: 0.0,
                answer_tokens: None,
            },
            ..SimConfig::default()
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.faults.iter().try_for_each(FaultRule::validate)
    }

    /// The profile of `model`.
    pub fn profile(&self, model: &str) -> &ModelProfile {
        self.models.get(model).unwrap_or(&self.default_model)
    }
}

/// How one model behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelProfile {
    /// Milliseconds from the request to the first token (for non-streaming calls: to the start
    /// of generation).
    pub first_token_ms: u64,
    /// Tokens generated per second after the first; 0 means no pacing at all.
    pub tokens_per_second: f64,
    /// The length of a complete answer in tokens; when absent each prompt gets a seeded length
    /// between 40 and 160. `max_tokens` still caps it.
    pub answer_tokens: Option<u32>,
}

impl Default for ModelProfile {
    fn default() -> Self {
        ModelProfile {
            first_token_ms: 250,
            tokens_per_second: 80.0,
            answer_tokens: None,
        }
    }
}

impl ModelProfile {
    pub fn first_token_delay(&self) -> Duration {
        Duration::from_millis(self.first_token_ms)
    }

    /// The pause between two tokens, or zero when unpaced.
    pub fn token_interval(&self) -> Duration {
        if self.tokens_per_second > 0.0 && self.tokens_per_second.is_finite() {
            Duration::from_secs_f64(1.0 / self.tokens_per_second)
        } else {
            Duration::ZERO
        }
    }
}
