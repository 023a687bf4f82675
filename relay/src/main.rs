//! The `fm-relay` command: `fm-relay serve` runs the relay; `fm-relay --print-config` prints the
//! documented default configuration.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fm_relay::config::{BedrockMode, DEFAULT_CONFIG_TOML, Overrides};
use fm_relay::{RelayConfig, server, telemetry};

/// mimalloc instead of glibc's malloc: with glibc, memory allocated on one worker thread and freed
/// on the other (request bodies, HTTP buffers, SDK state) made the workers wait on each other's
/// arena locks, two futex calls per sync request; mimalloc frees across threads without a lock
/// (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// FM Relay: a resilient relay in front of foundation-model APIs (AWS Bedrock first).
#[derive(Debug, Parser)]
#[command(version, arg_required_else_help = true)]
struct Cli {
    /// Print the embedded default configuration (TOML, with comments) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API. Without AWS configuration, Bedrock calls go to an embedded simulator.
    Serve(ServeArgs),
}

/// Each flag overrides its environment variable, which overrides the config file.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML); the embedded default when absent (see --print-config).
    #[arg(long, env = "FM_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [file: server.host].
    #[arg(long, env = "FM_RELAY_HOST")]
    host: Option<IpAddr>,
    /// Port to listen on; 0 picks a free one [file: server.port].
    #[arg(long, env = "FM_RELAY_PORT")]
    port: Option<u16>,
    /// Where Bedrock calls go [file: bedrock.mode].
    #[arg(long, env = "FM_RELAY_BEDROCK_MODE", value_enum)]
    bedrock_mode: Option<BedrockMode>,
    /// Send Bedrock calls to this URL (e.g. a standalone fm-sim) [file: bedrock.endpoint].
    #[arg(long, env = "FM_RELAY_BEDROCK_ENDPOINT")]
    bedrock_endpoint: Option<String>,
    /// Upstream connect timeout in ms [file: timeouts.connect_ms].
    #[arg(long, env = "FM_RELAY_CONNECT_TIMEOUT_MS")]
    connect_timeout_ms: Option<u64>,
    /// Time-to-first-token deadline in ms [file: timeouts.first_token_ms].
    #[arg(long, env = "FM_RELAY_FIRST_TOKEN_TIMEOUT_MS")]
    first_token_timeout_ms: Option<u64>,
    /// Deadline of one non-streaming call to one target in ms [file: timeouts.one_shot_ms].
    #[arg(long, env = "FM_RELAY_ONE_SHOT_TIMEOUT_MS")]
    one_shot_timeout_ms: Option<u64>,
    /// Longest silence between stream chunks in ms [file: timeouts.idle_ms].
    #[arg(long, env = "FM_RELAY_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// Whole-request deadline in ms [file: timeouts.total_ms].
    #[arg(long, env = "FM_RELAY_TOTAL_TIMEOUT_MS")]
    total_timeout_ms: Option<u64>,
    /// Seconds open streams may finish after SIGTERM [file: server.shutdown_grace_secs].
    #[arg(long, env = "FM_RELAY_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
    /// The built chat UI to serve at / (Trunk's web/dist) [file: server.web_dir].
    #[arg(long, env = "FM_RELAY_WEB_DIR")]
    web_dir: Option<std::path::PathBuf>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            host: self.host,
            port: self.port,
            bedrock_mode: self.bedrock_mode,
            bedrock_endpoint: self.bedrock_endpoint.clone(),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let Some(Command::Serve(args)) = cli.command else {
        return ExitCode::SUCCESS;
    };
    telemetry::init_logging();
    let config = match RelayConfig::load(args.config.as_deref())
        .and_then(|config| config.apply(&args.overrides()))
    {
        Ok(config) => config,
        Err(err) => {
            eprintln!("fm-relay: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fm-relay: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run_until_signal(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fm-relay: {err}");
            ExitCode::FAILURE
        }
    }
}
