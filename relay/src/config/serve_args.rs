//! The settings the environment and the command line may give `fm-relay serve` (and the Lambda
//! functions, which read the same variables): each flag overrides its environment variable,
//! which overrides the configuration file. Applied to the file's values by [`Overrides`].

use std::net::IpAddr;
use std::path::PathBuf;

use super::{BedrockMode, Overrides};

/// Each flag overrides its environment variable, which overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); the embedded default when absent (see --print-config).
    #[arg(long, env = "FM_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [file: server.host].
    #[arg(long, env = "FM_RELAY_HOST")]
    pub host: Option<IpAddr>,
    /// Port to listen on; 0 picks a free one [file: server.port].
    #[arg(long, env = "FM_RELAY_PORT")]
    pub port: Option<u16>,
    /// Where Bedrock calls go [file: bedrock.mode].
    #[arg(long, env = "FM_RELAY_BEDROCK_MODE", value_enum)]
    pub bedrock_mode: Option<BedrockMode>,
    /// Send Bedrock calls to this URL (e.g. a standalone fm-sim) [file: bedrock.endpoint].
    #[arg(long, env = "FM_RELAY_BEDROCK_ENDPOINT")]
    pub bedrock_endpoint: Option<String>,
    /// Root certificates (PEM) trusted for Bedrock's endpoint besides the system's
    /// [file: bedrock.ca_file].
    #[arg(long, env = "FM_RELAY_BEDROCK_CA_FILE")]
    pub bedrock_ca_file: Option<std::path::PathBuf>,
    /// Upstream connect timeout in ms [file: timeouts.connect_ms].
    #[arg(long, env = "FM_RELAY_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Time-to-first-token deadline in ms [file: timeouts.first_token_ms].
    #[arg(long, env = "FM_RELAY_FIRST_TOKEN_TIMEOUT_MS")]
    pub first_token_timeout_ms: Option<u64>,
    /// Deadline of one non-streaming call to one target in ms [file: timeouts.one_shot_ms].
    #[arg(long, env = "FM_RELAY_ONE_SHOT_TIMEOUT_MS")]
    pub one_shot_timeout_ms: Option<u64>,
    /// Longest silence between stream chunks in ms [file: timeouts.idle_ms].
    #[arg(long, env = "FM_RELAY_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Whole-request deadline in ms [file: timeouts.total_ms].
    #[arg(long, env = "FM_RELAY_TOTAL_TIMEOUT_MS")]
    pub total_timeout_ms: Option<u64>,
    /// Seconds open streams may finish after SIGTERM [file: server.shutdown_grace_secs].
    #[arg(long, env = "FM_RELAY_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// The built chat UI to serve at / (Trunk's web/dist) [file: server.web_dir].
    #[arg(long, env = "FM_RELAY_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            host: self.host,
            port: self.port,
            bedrock_mode: self.bedrock_mode,
            bedrock_endpoint: self.bedrock_endpoint.clone(),
            bedrock_ca_file: self.bedrock_ca_file.clone(),
            connect_timeout_ms: self.connect_timeout_ms,
            first_token_timeout_ms: self.first_token_timeout_ms,
            one_shot_timeout_ms: self.one_shot_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            total_timeout_ms: self.total_timeout_ms,
            shutdown_grace_secs: self.shutdown_grace_secs,
            web_dir: self.web_dir.clone(),
        }
    }
}
