//! The relay's configuration: one TOML file (a documented default is embedded in the binary and
//! printed by `fm-relay --print-config`), then environment variables, then flags. The env and
//! flag overrides are declared with clap in [`serve_args`] and applied here by [`Overrides`]. Unknown
//! keys are errors, and [`RelayConfig::validate`] checks what TOML types cannot (unique model
//! ids, a default model that exists, non-zero timeouts).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{RelayError, ReloadRefusal};

pub mod jobs;
pub mod routing;
pub mod serve_args;
pub use jobs::{JobsAwsConfig, JobsBackend, JobsConfig};
pub use routing::{RouteConfig, RoutingConfig};
pub use serve_args::ServeArgs;

/// The embedded default configuration, with comments.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// The longest `retry.max_retry_after_ms`: a request does not sit out longer waits.
pub const MAX_RETRY_AFTER_MS: u64 = 60_000;

/// The longest `server.stream_batch_wait_us`: past this, batching would show as stutter.
pub const MAX_STREAM_BATCH_WAIT_US: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The model that answers requests which name none.
    pub default_model: String,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub bedrock: BedrockConfig,
    #[serde(default)]
    pub simulator: SimulatorConfig,
    #[serde(default)]
    pub degradation: DegradationConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub edge: EdgeConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Purpose-built endpoints (`POST /v1/summarize`, ...).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    pub models: Vec<ModelConfig>,
    /// Where this configuration came from, for a reload: the file and the overrides applied.
    #[serde(skip)]
    pub source: ConfigSource,
}

/// A configuration's file (none for the embedded default) and the environment and flag
/// overrides applied to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSource {
    pub path: Option<std::path::PathBuf>,
    pub overrides: Overrides,
}

/// Traces over OTLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL (`http://127.0.0.1:4318/v1/traces`); empty: no
    /// export. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` overrides it.
    pub otlp_endpoint: String,
    /// The share of new traces exported, 0 to 1 (a client's sampled `traceparent` is honoured).
    pub sample_ratio: f64,
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            sample_ratio: 0.1,
            service_name: "fm-relay".into(),
        }
    }
}

/// Who may call the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may call (local use): a request without a key is the `anonymous` caller.
    Open,
    /// Every request needs a known, unrevoked API key.
    Keys,
}

/// API keys; see the embedded default for each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// A TOML file of `[[keys]]` (what `fm-relay keys add` writes); read when it exists.
    pub keys_file: std::path::PathBuf,
    /// Keys declared in the config itself, beside those of `keys_file`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<ApiKeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Open,
            keys_file: "data/keys.toml".into(),
            keys: Vec::new(),
        }
    }
}

/// One API key: its name, the SHA-256 of the key (never the key), what it may use and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: String,
    /// May read every key's usage (`/v1/admin/*`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// A revoked key is refused like an unknown one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Model ids the key may use; empty: every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Route paths the key may call (a path and everything under it, e.g. `/v1/chat`); empty:
    /// every route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// The key's own limits; those it leaves out come from `[limits.per_key]`.
    #[serde(default)]
    pub limits: KeyLimits,
}

/// Limits of one caller; an absent limit is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Requests that may come at once on top of the steady rate (default: a tenth of a minute's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Document jobs the key may have queued or running at once (`jobs.max_queued_per_key`
    /// when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unfinished_jobs: Option<u32>,
}

impl KeyLimits {
    /// These limits, with those left out taken from `defaults`.
    pub fn or(self, defaults: KeyLimits) -> KeyLimits {
        KeyLimits {
            requests_per_minute: self.requests_per_minute.or(defaults.requests_per_minute),
            burst: self.burst.or(defaults.burst),
            tokens_per_minute: self.tokens_per_minute.or(defaults.tokens_per_minute),
            monthly_requests: self.monthly_requests.or(defaults.monthly_requests),
            monthly_tokens: self.monthly_tokens.or(defaults.monthly_tokens),
            daily_usd: self.daily_usd.or(defaults.daily_usd),
            monthly_usd: self.monthly_usd.or(defaults.monthly_usd),
            max_concurrent_streams: self
                .max_concurrent_streams
                .or(defaults.max_concurrent_streams),
            max_unfinished_jobs: self.max_unfinished_jobs.or(defaults.max_unfinished_jobs),
        }
    }

    fn validate(&self, whose: &str) -> Result<(), String> {
        if self.requests_per_minute == Some(0) || self.burst == Some(0) {
            return Err(format!(
                "{whose}: `requests_per_minute` and `burst` must be at least 1 (leave them out for no limit)"
            ));
        }
        if self.tokens_per_minute == Some(0)
            || self.max_concurrent_streams == Some(0)
            || self.max_unfinished_jobs == Some(0)
        {
            return Err(format!(
                "{whose}: `tokens_per_minute`, `max_concurrent_streams` and `max_unfinished_jobs` must be at least 1 (leave them out for no limit)"
            ));
        }
        for (name, usd) in [
            ("daily_usd", self.daily_usd),
            ("monthly_usd", self.monthly_usd),
        ] {
            if usd.is_some_and(|usd| !(usd.is_finite() && usd >= 0.0)) {
                return Err(format!(
                    "{whose}: `{name}` must be a dollar amount of 0 or more"
                ));
            }
        }
        Ok(())
    }
}

/// Where limit counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitsBackend {
    /// This process's memory, the usage ledger in SQLite under `data_dir`.
    Memory,
    /// Redis at `redis_url`: every counter and the ledger, shared by every relay pointed there.
    Redis,
}

/// What the relay does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendFailure {
    /// Serve, warn, and count in this process until Redis is back.
    FailOpen,
    /// Refuse with 503 `limits_unavailable`.
    FailClosed,
}

/// Rate limits, token limits, quotas and the usage ledger; see the embedded default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub backend: LimitsBackend,
    pub redis_url: String,
    /// The longest an admission waits for Redis before `on_redis_error` applies.
    pub redis_timeout_ms: u64,
    pub on_redis_error: BackendFailure,
    /// The SQLite ledger (`usage.sqlite`) lives here (memory backend).
    pub data_dir: std::path::PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_requests_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_burst: Option<u32>,
    /// Limits of every key that does not set its own, and of the anonymous caller.
    pub per_key: KeyLimits,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: LimitsBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_timeout_ms: 250,
            on_redis_error: BackendFailure::FailOpen,
            data_dir: "data".into(),
            global_requests_per_minute: None,
            global_burst: None,
            per_key: KeyLimits::default(),
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), String> {
        self.per_key.validate("`limits.per_key`")?;
        if self.global_requests_per_minute == Some(0) || self.global_burst == Some(0) {
            return Err(
                "`limits.global_requests_per_minute` and `limits.global_burst` must be at least 1 (leave them out for no limit)"
                    .into(),
            );
        }
        if self.redis_timeout_ms == 0 {
            return Err("`limits.redis_timeout_ms` must be greater than 0".into());
        }
        if self.backend == LimitsBackend::Redis && !self.redis_url.starts_with("redis") {
            return Err(format!(
                "`limits.redis_url` must be a redis:// or rediss:// URL, got `{}`",
                self.redis_url
            ));
        }
        Ok(())
    }
}

/// What the edge lets in from browsers; see the embedded default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Origins (`scheme://host[:port]`) whose pages may call the API and open WebSockets; `*`
    /// allows any. The relay's own page is always allowed.
    pub allowed_origins: Vec<String>,
}

/// Where the answer cache keeps answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    Memory,
    Redis,
}

/// The answer cache; see the embedded default for each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    pub backend: CacheBackend,
    pub redis_url: String,
    pub ttl_secs: u64,
    pub stale_secs: u64,
    pub max_entries: u64,
    pub semantic: bool,
    pub semantic_threshold: f32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            backend: CacheBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            ttl_secs: 3600,
            stale_secs: 86_400,
            max_entries: 10_000,
            semantic: true,
            semantic_threshold: 0.95,
        }
    }
}

impl CacheConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    pub fn stale(&self) -> Duration {
        Duration::from_secs(self.stale_secs)
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.semantic_threshold > 0.0 && self.semantic_threshold <= 1.0) {
            return Err("`cache.semantic_threshold` must be above 0 and at most 1".into());
        }
        if self.max_entries == 0 {
            return Err("`cache.max_entries` must be at least 1".into());
        }
        if self.backend == CacheBackend::Redis && !self.redis_url.starts_with("redis") {
            return Err(format!(
                "`cache.redis_url` must be a redis:// or rediss:// URL, got `{}`",
                self.redis_url
            ));
        }
        Ok(())
    }
}

/// The stand-in answer when no model can answer; see the embedded default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DegradationConfig {
    pub enabled: bool,
    pub message: String,
}

impl Default for DegradationConfig {
    fn default() -> Self {
        DegradationConfig {
            enabled: true,
            message: "The assistant is unavailable right now: every model the relay could ask \
                      failed. Please try again in a minute."
                .into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    pub shutdown_grace_secs: u64,
    pub sse_keep_alive_secs: u64,
    pub ws_max_queued_requests: usize,
    /// In a burst of tokens, how long the first may wait for more to share its write (0: only
    /// those already there).
    pub stream_batch_wait_us: u64,
    /// The built chat UI (Trunk's `web/dist`), served at `/`; nothing is served when the folder
    /// does not exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_dir: Option<std::path::PathBuf>,
    /// A connection must send a request's headers within this long of being ready for one.
    pub header_read_timeout_ms: u64,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Requests one HTTP/2 client connection may have open at once.
    pub http2_max_streams: u32,
    pub listen_backlog: u32,
    /// A WebSocket with nothing to answer that sent nothing for this long is closed (1008).
    pub ws_idle_timeout_secs: u64,
    /// A write to a client's socket that makes no progress for this long closes the connection
    /// (a client that stopped reading its stream).
    pub write_timeout_secs: u64,
    /// `SO_SNDBUF` of accepted sockets, in bytes; 0 leaves the kernel's own (autotuned) size.
    pub send_buffer_bytes: usize,
    /// How often the config file's modification time is checked; a change reloads it, as
    /// `SIGHUP` does (0: only `SIGHUP` and `POST /v1/admin/reload`).
    pub watch_config_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            shutdown_grace_secs: 10,
            sse_keep_alive_secs: 15,
            ws_max_queued_requests: 8,
            stream_batch_wait_us: 100,
            web_dir: Some("web/dist".into()),
            header_read_timeout_ms: 10_000,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            http2_max_streams: 256,
            listen_backlog: 1024,
            ws_idle_timeout_secs: 300,
            write_timeout_secs: 30,
            send_buffer_bytes: 0,
            watch_config_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    pub connect_ms: u64,
    pub first_token_ms: u64,
    pub one_shot_ms: u64,
    pub idle_ms: u64,
    pub total_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect_ms: 3_000,
            first_token_ms: 10_000,
            one_shot_ms: 60_000,
            idle_ms: 15_000,
            total_ms: 120_000,
        }
    }
}

impl TimeoutConfig {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn first_token(&self) -> Duration {
        Duration::from_millis(self.first_token_ms)
    }
    pub fn one_shot(&self) -> Duration {
        Duration::from_millis(self.one_shot_ms)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
}

/// Retries of one upstream call; see the embedded default for each key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub budget_percent: f32,
    pub budget_min_per_sec: u32,
    pub budget_window_secs: u64,
    /// The longest wait an upstream may ask for (`Retry-After`) and still be retried.
    pub max_retry_after_ms: u64,
    /// A call that failed only after waiting this long for an answer is a timeout.
    pub slow_failure_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            base_delay_ms: 100,
            max_delay_ms: 2000,
            budget_percent: 20.0,
            budget_min_per_sec: 5,
            budget_window_secs: 10,
            max_retry_after_ms: 3000,
            slow_failure_ms: 5000,
        }
    }
}

impl RetryConfig {
    fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("`retry.max_attempts` must be at least 1".into());
        }
        if self.base_delay_ms > self.max_delay_ms {
            return Err("`retry.base_delay_ms` must not exceed `retry.max_delay_ms`".into());
        }
        if !(0.0..=1000.0).contains(&self.budget_percent) {
            return Err("`retry.budget_percent` must be between 0 and 1000".into());
        }
        if !(1..=60).contains(&self.budget_window_secs) {
            return Err("`retry.budget_window_secs` must be between 1 and 60".into());
        }
        if self.budget_min_per_sec >= i32::MAX as u32 {
            return Err("`retry.budget_min_per_sec` is too large".into());
        }
        if self.slow_failure_ms == 0 {
            return Err("`retry.slow_failure_ms` must be greater than 0".into());
        }
        if self.max_retry_after_ms > MAX_RETRY_AFTER_MS {
            return Err(format!(
                "`retry.max_retry_after_ms` must be at most {MAX_RETRY_AFTER_MS} (a minute), got {}",
                self.max_retry_after_ms
            ));
        }
        Ok(())
    }
}

/// Client-side rate limiting; see the embedded default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub adaptive: bool,
    pub max_wait_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            adaptive: true,
            max_wait_ms: 0,
        }
    }
}

/// When a target's circuit breaker opens and how it recovers; see the embedded default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate_percent: f32,
    pub min_requests: u32,
    pub window_secs: u64,
    /// The first opening's cool-down, and the shortest of any.
    pub min_open_ms: u64,
    /// The longest cool-down (`open_ms` before the cool-down grew with the outage).
    #[serde(alias = "open_ms")]
    pub max_open_ms: u64,
    /// Each re-opening's cool-down as a share of how long the target has been failing.
    pub open_share_of_outage: f64,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate_percent: 50.0,
            min_requests: 20,
            window_secs: 30,
            min_open_ms: 1_000,
            max_open_ms: 30_000,
            open_share_of_outage: 0.1,
            half_open_probes: 2,
        }
    }
}

impl BreakerConfig {
    fn validate(&self) -> Result<(), String> {
        if self.consecutive_failures == 0 {
            return Err("`breaker.consecutive_failures` must be at least 1".into());
        }
        if !(self.failure_rate_percent > 0.0 && self.failure_rate_percent <= 100.0) {
            return Err("`breaker.failure_rate_percent` must be above 0 and at most 100".into());
        }
        if !(1..=3600).contains(&self.window_secs) {
            return Err("`breaker.window_secs` must be between 1 and 3600".into());
        }
        if self.min_open_ms == 0 || self.half_open_probes == 0 {
            return Err(
                "`breaker.min_open_ms` and `breaker.half_open_probes` must be at least 1".into(),
            );
        }
        if self.max_open_ms < self.min_open_ms {
            return Err("`breaker.max_open_ms` must not be less than `breaker.min_open_ms`".into());
        }
        if !(self.open_share_of_outage >= 0.0 && self.open_share_of_outage <= 10.0) {
            return Err("`breaker.open_share_of_outage` must be between 0 and 10".into());
        }
        Ok(())
    }
}

/// Where Bedrock calls go; see the embedded default for the meaning of each mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BedrockMode {
    Auto,
    Aws,
    Sim,
    Endpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BedrockConfig {
    pub mode: BedrockMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Root certificates (PEM) trusted for Bedrock's endpoint besides the system's: a private
    /// endpoint's or a TLS-inspecting proxy's authority, or fm-sim's with `--tls-ca-out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// HTTP clients the calls are spread over, each with its own connections: over HTTP/2 an
    /// endpoint caps the streams one connection carries, so this many connections carry this
    /// many times that cap.
    pub http2_connections: usize,
}

impl Default for BedrockConfig {
    fn default() -> Self {
        BedrockConfig {
            mode: BedrockMode::Auto,
            endpoint: None,
            ca_file: None,
            http2_connections: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    pub first_token_ms: u64,
    pub tokens_per_second: f64,
    pub seed: u64,
    /// Faults the embedded simulator injects (fm-sim's fault schedule).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<fm_sim::FaultRule>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            first_token_ms: 200,
            tokens_per_second: 60.0,
            seed: 42,
            faults: Vec::new(),
        }
    }
}

/// The provider kinds a model can be served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Bedrock,
    /// Any server with the OpenAI chat-completions API (OpenAI, Ollama, vLLM, ...).
    #[serde(rename = "openai")]
    OpenAi,
}

impl ProviderKind {
    /// The highest sampling temperature its models take: Bedrock's 1, OpenAI's 2.
    pub fn max_temperature(self) -> f32 {
        match self {
            ProviderKind::Bedrock => 1.0,
            ProviderKind::OpenAi => fm_protocol::limits::MAX_TEMPERATURE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::OpenAi => "openai",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The id clients use.
    pub id: String,
    pub provider: ProviderKind,
    /// The provider's model or inference-profile id; defaults to `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// Where the model answers: the AWS region for Bedrock, a label of your choice for an
    /// OpenAI-compatible server (shown in routes).
    pub region: String,
    /// The API base URL of an OpenAI-compatible server (`http://127.0.0.1:11434/v1`); only for
    /// provider "openai" (Bedrock's endpoint is `[bedrock]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The environment variable holding the API key of an OpenAI-compatible server, sent as a
    /// bearer token; none is sent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    pub input_price_per_1k: f64,
    pub output_price_per_1k: f64,
    pub context_window: u32,
    /// Its quality tier: what routes and hints ask for.
    #[serde(default)]
    pub tier: fm_protocol::Tier,
    /// What it can do beyond chat (`prefill` is implied by `accepts_prefill`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<fm_protocol::Capability>,
    /// Whether the model continues an answer from an assistant prefill (the partial answer as
    /// the conversation's last message); a stream broken off mid-answer is then continued here
    /// instead of restarted.
    #[serde(default)]
    pub accepts_prefill: bool,
    /// Other regions or inference profiles serving the same model, tried in order after
    /// `region`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<FailoverTarget>,
    /// Models that answer instead, in order, when every target of this one failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_models: Vec<String>,
    /// Tokens per minute every caller together may spend on this model (reserved before the
    /// call, settled to the real usage after it); absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

/// Another place serving the same model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverTarget {
    pub region: String,
    /// The model or inference-profile id there; the model's own `upstream_id` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// For provider "openai": the server's base URL; the model's own `endpoint` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// One place serving a model, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetSpec<'a> {
    pub region: &'a str,
    pub upstream_id: &'a str,
    /// The OpenAI-compatible base URL (provider "openai" only).
    pub endpoint: Option<&'a str>,
}

impl ApiKeyConfig {
    /// Checks the key against the declared `models`.
    pub fn validate(&self, models: &HashSet<&str>) -> Result<(), String> {
        let whose = format!("API key `{}`", self.name);
        if self.name.trim().is_empty() {
            return Err("an API key has an empty `name`".into());
        }
        if self.key_sha256.len() != 64 || !self.key_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{whose}: `key_sha256` must be 64 hex digits (the SHA-256 of the key; `fm-relay keys add` writes it)"
            ));
        }
        if let Some(model) = self.models.iter().find(|m| !models.contains(m.as_str())) {
            return Err(format!(
                "{whose} may use model `{model}`, which is not one of the declared models"
            ));
        }
        if let Some(route) = self.routes.iter().find(|r| !r.starts_with('/')) {
            return Err(format!(
                "{whose}: route `{route}` must be a path starting with `/`"
            ));
        }
        self.limits.validate(&whose)
    }
}

impl ModelConfig {
    pub fn upstream_id(&self) -> &str {
        self.upstream_id.as_deref().unwrap_or(&self.id)
    }

    /// Every place serving this model, in failover order.
    pub fn targets(&self) -> Vec<TargetSpec<'_>> {
        std::iter::once(TargetSpec {
            region: &self.region,
            upstream_id: self.upstream_id(),
            endpoint: self.endpoint.as_deref(),
        })
        .chain(self.failover.iter().map(|target| TargetSpec {
            region: &target.region,
            upstream_id: target.upstream_id.as_deref().unwrap_or(self.upstream_id()),
            endpoint: target.endpoint.as_deref().or(self.endpoint.as_deref()),
        }))
        .collect()
    }
}

/// Values from the environment or the command line that replace the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub bedrock_mode: Option<BedrockMode>,
    pub bedrock_endpoint: Option<String>,
    pub bedrock_ca_file: Option<std::path::PathBuf>,
    pub connect_timeout_ms: Option<u64>,
    pub first_token_timeout_ms: Option<u64>,
    pub one_shot_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub web_dir: Option<std::path::PathBuf>,
}

impl RelayConfig {
    /// The embedded default.
    pub fn embedded_default() -> RelayConfig {
        Self::from_toml(DEFAULT_CONFIG_TOML, "the embedded default")
            .expect("the embedded default configuration is valid")
    }

    /// Parses and validates a configuration; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<RelayConfig, RelayError> {
        let config: RelayConfig = toml::from_str(text).map_err(|err| RelayError::Config {
            origin: origin.to_string(),
            message: err.to_string(),
        })?;
        config.validate().map_err(|message| RelayError::Config {
            origin: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Reads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<RelayConfig, RelayError> {
        match path {
            None => Ok(Self::embedded_default()),
            Some(path) => {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|err| RelayError::Config {
                    origin: origin.clone(),
                    message: format!("cannot read the file: {err}"),
                })?;
                let mut config = Self::from_toml(&text, &origin)?;
                config.source.path = Some(path.to_path_buf());
                Ok(config)
            }
        }
    }

    /// Reads this configuration's file again and applies the same overrides: what a reload
    /// would run with. An error when there is no file or the new one is invalid.
    pub fn reread(&self) -> Result<RelayConfig, RelayError> {
        let Some(path) = &self.source.path else {
            return Err(RelayError::ReloadRefused(ReloadRefusal::NoFile));
        };
        RelayConfig::load(Some(path))
            .and_then(|config| config.apply(&self.source.overrides))
            .map_err(|err| RelayError::ReloadRefused(ReloadRefusal::Invalid(Box::new(err))))
    }

    /// The sections `new` changes that a reload cannot apply (everything but the models, the
    /// default model, the `[routing]` section bar its refresh intervals, and the prompts, bounds
    /// and models of the routes already served).
    pub fn changes_needing_restart(&self, new: &RelayConfig) -> Vec<String> {
        let mut changed: Vec<String> = [
            ("[server]", self.server != new.server),
            ("[timeouts]", self.timeouts != new.timeouts),
            ("[retry]", self.retry != new.retry),
            ("[rate_limit]", self.rate_limit != new.rate_limit),
            ("[breaker]", self.breaker != new.breaker),
            ("[bedrock]", self.bedrock != new.bedrock),
            ("[simulator]", self.simulator != new.simulator),
            ("[degradation]", self.degradation != new.degradation),
            ("[cache]", self.cache != new.cache),
            ("[auth]", self.auth != new.auth),
            ("[limits]", self.limits != new.limits),
            ("[edge]", self.edge != new.edge),
            ("[tracing]", self.tracing != new.tracing),
            ("[jobs]", self.jobs != new.jobs),
        ]
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(section, _)| section.to_string())
        .collect();
        let intervals = |routing: &RoutingConfig| (routing.refresh_ms, routing.spend_refresh_ms);
        if intervals(&self.routing) != intervals(&new.routing) {
            changed.push("routing.refresh_ms or routing.spend_refresh_ms".into());
        }
        let paths = |config: &RelayConfig| {
            let mut paths: Vec<String> = config.routes.iter().map(|r| r.path.clone()).collect();
            paths.sort();
            paths
        };
        if paths(self) != paths(new) {
            changed.push("which [[routes]] paths are served".into());
        }
        changed
    }

    /// Applies environment and flag overrides, then validates again.
    pub fn apply(mut self, overrides: &Overrides) -> Result<RelayConfig, RelayError> {
        self.source.overrides = overrides.clone();
        let server = &mut self.server;
        set(&mut server.host, overrides.host);
        set(&mut server.port, overrides.port);
        set(
            &mut server.shutdown_grace_secs,
            overrides.shutdown_grace_secs,
        );
        if let Some(dir) = &overrides.web_dir {
            server.web_dir = Some(dir.clone());
        }
        let timeouts = &mut self.timeouts;
        set(&mut timeouts.connect_ms, overrides.connect_timeout_ms);
        set(
            &mut timeouts.first_token_ms,
            overrides.first_token_timeout_ms,
        );
        set(&mut timeouts.one_shot_ms, overrides.one_shot_timeout_ms);
        set(&mut timeouts.idle_ms, overrides.idle_timeout_ms);
        set(&mut timeouts.total_ms, overrides.total_timeout_ms);
        set(&mut self.bedrock.mode, overrides.bedrock_mode);
        if let Some(endpoint) = &overrides.bedrock_endpoint {
            self.bedrock.endpoint = Some(endpoint.clone());
        }
        if let Some(ca_file) = &overrides.bedrock_ca_file {
            self.bedrock.ca_file = Some(ca_file.clone());
        }
        self.validate().map_err(|message| RelayError::Config {
            origin: "the environment and flags".into(),
            message,
        })?;
        Ok(self)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.models.is_empty() {
            return Err("`models` must declare at least one model".into());
        }
        let mut seen = HashSet::new();
        for model in &self.models {
            if model.id.trim().is_empty() {
                return Err("a model has an empty `id`".into());
            }
            if !seen.insert(model.id.as_str()) {
                return Err(format!("model id `{}` is declared twice", model.id));
            }
            if model.region.trim().is_empty() {
                return Err(format!("model `{}` has an empty `region`", model.id));
            }
            let prices = [model.input_price_per_1k, model.output_price_per_1k];
            if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
                return Err(format!(
                    "model `{}` has a negative or invalid price",
                    model.id
                ));
            }
            if model.context_window == 0 {
                return Err(format!("model `{}` has a zero `context_window`", model.id));
            }
            let targets = model.targets();
            for (index, target) in targets.iter().enumerate() {
                let (region, upstream_id) = (target.region, target.upstream_id);
                if region.trim().is_empty() {
                    return Err(format!(
                        "model `{}` has a failover with an empty `region`",
                        model.id
                    ));
                }
                if targets[..index].contains(target) {
                    return Err(format!(
                        "model `{}` lists `{upstream_id}` in `{region}` twice",
                        model.id
                    ));
                }
                match (model.provider, target.endpoint) {
                    (ProviderKind::OpenAi, None) => {
                        return Err(format!(
                            "model `{}` has provider \"openai\" but no `endpoint` (the server's base URL, e.g. http://127.0.0.1:11434/v1)",
                            model.id
                        ));
                    }
                    (ProviderKind::OpenAi, Some(url))
                        if !(url.starts_with("http://") || url.starts_with("https://"))
                            || reqwest::Url::parse(url).is_err() =>
                    {
                        return Err(format!(
                            "model `{}` has `endpoint` `{url}`, which is not an http:// or https:// URL",
                            model.id
                        ));
                    }
                    (ProviderKind::Bedrock, Some(_)) => {
                        return Err(format!(
                            "model `{}` is a Bedrock model with an `endpoint`; Bedrock's endpoint is set under [bedrock]",
                            model.id
                        ));
                    }
                    _ => {}
                }
            }
        }
        for model in &self.models {
            for (index, fallback) in model.fallback_models.iter().enumerate() {
                if *fallback == model.id {
                    return Err(format!("model `{}` names itself as a fallback", model.id));
                }
                if !seen.contains(fallback.as_str()) {
                    return Err(format!(
                        "model `{}` falls back to `{fallback}`, which is not one of the declared models",
                        model.id
                    ));
                }
                if model.fallback_models[..index].contains(fallback) {
                    return Err(format!(
                        "model `{}` lists fallback `{fallback}` twice",
                        model.id
                    ));
                }
            }
        }
        if !seen.contains(self.default_model.as_str()) {
            return Err(format!(
                "`default_model` is `{}`, which is not one of the declared models",
                self.default_model
            ));
        }
        let t = &self.timeouts;
        for (name, value) in [
            ("connect_ms", t.connect_ms),
            ("first_token_ms", t.first_token_ms),
            ("one_shot_ms", t.one_shot_ms),
            ("idle_ms", t.idle_ms),
            ("total_ms", t.total_ms),
        ] {
            if value == 0 {
                return Err(format!("`timeouts.{name}` must be greater than 0"));
            }
        }
        self.retry.validate()?;
        self.cache.validate()?;
        self.limits.validate()?;
        for model in &self.models {
            if model.tokens_per_minute == Some(0) {
                return Err(format!(
                    "model `{}` has `tokens_per_minute` 0 (leave it out for no limit)",
                    model.id
                ));
            }
        }
        let mut names = HashSet::new();
        for key in &self.auth.keys {
            key.validate(&seen)?;
            if !names.insert(key.name.as_str()) {
                return Err(format!("API key name `{}` is declared twice", key.name));
            }
        }
        self.breaker.validate()?;
        self.routing.validate(&seen, &self.routes)?;
        self.jobs.validate()?;
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return Err("`tracing.sample_ratio` must be between 0 and 1".into());
        }
        let endpoint = self.tracing.otlp_endpoint.trim();
        let http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !(endpoint.is_empty() || http) {
            return Err(format!(
                "`tracing.otlp_endpoint` is `{endpoint}`, which is not an http:// or https:// URL"
            ));
        }
        if self.server.sse_keep_alive_secs == 0 {
            return Err("`server.sse_keep_alive_secs` must be greater than 0".into());
        }
        let server = &self.server;
        if server.header_read_timeout_ms == 0
            || server.write_timeout_secs == 0
            || server.max_connections == 0
            || server.http2_max_streams == 0
            || server.listen_backlog == 0
        {
            return Err(
                "`server.header_read_timeout_ms`, `server.write_timeout_secs`, `server.max_connections`, `server.http2_max_streams` and `server.listen_backlog` must be greater than 0"
                    .into(),
            );
        }
        if server.max_headers == 0 || server.max_header_bytes < 1024 {
            return Err(
                "`server.max_headers` must be at least 1 and `server.max_header_bytes` at least 1024".into(),
            );
        }
        if self.server.ws_max_queued_requests == 0 {
            return Err("`server.ws_max_queued_requests` must be greater than 0".into());
        }
        if self.server.stream_batch_wait_us > MAX_STREAM_BATCH_WAIT_US {
            return Err(format!(
                "`server.stream_batch_wait_us` must be at most {MAX_STREAM_BATCH_WAIT_US} (10 ms), got {}",
                self.server.stream_batch_wait_us
            ));
        }
        if !(1..=1024).contains(&self.bedrock.http2_connections) {
            return Err("`bedrock.http2_connections` must be 1 to 1024".into());
        }
        if self.bedrock.mode == BedrockMode::Endpoint && self.bedrock.endpoint.is_none() {
            return Err("`bedrock.mode` is \"endpoint\" but `bedrock.endpoint` is not set".into());
        }
        if self.degradation.enabled && self.degradation.message.trim().is_empty() {
            return Err(
                "`degradation.message` must not be empty while degradation is enabled".into(),
            );
        }
        self.simulator
            .faults
            .iter()
            .try_for_each(fm_sim::FaultRule::validate)?;
        if !(self.simulator.tokens_per_second.is_finite()
            && self.simulator.tokens_per_second >= 0.0)
        {
            return Err("`simulator.tokens_per_second` must be 0 or more".into());
        }
        Ok(())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid() {
        let config = RelayConfig::embedded_default();
        assert_eq!(config.default_model, "claude-3-5-haiku");
        assert_eq!(config.models.len(), 3);
        assert_eq!(config.timeouts, TimeoutConfig::default());
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.simulator, SimulatorConfig::default());
        assert_eq!(config.retry, RetryConfig::default());
        assert_eq!(config.breaker, BreakerConfig::default());
        assert_eq!(config.rate_limit, RateLimitConfig::default());
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let text = DEFAULT_CONFIG_TOML.replace("idle_ms = 15000", "idle_ms = 15000\nidel_ms = 3");
        let err = RelayConfig::from_toml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("idel_ms"), "{err}");
    }

    #[test]
    fn semantic_errors_are_reported() {
        let text = DEFAULT_CONFIG_TOML.replace(
            "default_model = \"claude-3-5-haiku\"",
            "default_model = \"nope\"",
        );
        let err = RelayConfig::from_toml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nope`"), "{err}");
        let text = DEFAULT_CONFIG_TOML.replace("id = \"nova-lite\"", "id = \"claude-sonnet-4\"");
        let err = RelayConfig::from_toml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("declared twice"), "{err}");
        let text = DEFAULT_CONFIG_TOML.replace("budget_window_secs = 10", "budget_window_secs = 0");
        let err = RelayConfig::from_toml(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("budget_window_secs"), "{err}");
        for (from, to, expected) in [
            (
                "stream_batch_wait_us = 100",
                "stream_batch_wait_us = 20000",
                "`server.stream_batch_wait_us` must be at most 10000",
            ),
            (
                "fallback_models = [\"nova-lite\"]",
                "fallback_models = [\"gpt-9\"]",
                "`gpt-9`, which is not one",
            ),
            (
                "fallback_models = [\"nova-lite\"]",
                "fallback_models = [\"claude-3-5-haiku\"]",
                "names itself",
            ),
            (
                "fallback_models = [\"nova-lite\"]",
                "fallback_models = [\"nova-lite\", \"nova-lite\"]",
                "twice",
            ),
            (
                "failover = [{ region = \"us-west-2\" }]\nfallback_models = [\"nova-lite\"]",
                "failover = [{ region = \"us-east-1\" }]",
                "twice",
            ),
            (
                "failover = [{ region = \"us-west-2\" }]\nfallback_models = [\"nova-lite\"]",
                "failover = [{ region = \"us-west-2\", upstream = \"x\" }]",
                "upstream",
            ),
            (
                "id = \"nova-lite\"\nprovider = \"bedrock\"",
                "id = \"nova-lite\"\nprovider = \"openai\"",
                "no `endpoint`",
            ),
            (
                "id = \"nova-lite\"\nprovider = \"bedrock\"",
                "id = \"nova-lite\"\nprovider = \"openai\"\nendpoint = \"localhost:11434\"",
                "not an http:// or https:// URL",
            ),
            (
                "id = \"nova-lite\"\nprovider = \"bedrock\"",
                "id = \"nova-lite\"\nprovider = \"openai\"\nendpoint = \"http://local host:11434/v1\"",
                "not an http:// or https:// URL",
            ),
            (
                "id = \"nova-lite\"\nprovider = \"bedrock\"",
                "id = \"nova-lite\"\nprovider = \"bedrock\"\nendpoint = \"http://x\"",
                "set under [bedrock]",
            ),
        ] {
            assert!(DEFAULT_CONFIG_TOML.contains(from), "{from}");
            let text = DEFAULT_CONFIG_TOML.replacen(from, to, 1);
            let err = RelayConfig::from_toml(&text, "test")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn overrides_replace_file_values() {
        let config = RelayConfig::embedded_default()
            .apply(&Overrides {
                port: Some(9999),
                idle_timeout_ms: Some(250),
                bedrock_endpoint: Some("http://127.0.0.1:1".into()),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!(config.server.port, 9999);
        assert_eq!(config.timeouts.idle_ms, 250);
        assert_eq!(
            config.bedrock.endpoint.as_deref(),
            Some("http://127.0.0.1:1")
        );
        let err = RelayConfig::embedded_default()
            .apply(&Overrides {
                total_timeout_ms: Some(0),
                ..Overrides::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("total_ms"), "{err}");
    }
}
