//! The `fm-relay` command: `fm-relay serve` runs the relay; `fm-relay keys add NAME` makes an API
//! key; `fm-relay --print-config` prints the documented default configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fm_relay::config::{ApiKeyConfig, DEFAULT_CONFIG_TOML, KeyLimits, ServeArgs};
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
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new API key: prints it once and stores only its SHA-256 in the keys file.
    Add(AddKeyArgs),
}

#[derive(Debug, clap::Args)]
struct AddKeyArgs {
    /// The key's name, which its usage is filed under.
    name: String,
    /// The keys file [default: the config's auth.keys_file, data/keys.toml].
    #[arg(long)]
    file: Option<PathBuf>,
    /// The configuration whose auth.keys_file to use.
    #[arg(long, env = "FM_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// May read every key's usage (/v1/admin/*).
    #[arg(long)]
    admin: bool,
    /// A model the key may use (repeat for more; none: every model).
    #[arg(long = "model")]
    models: Vec<String>,
    /// A route the key may call, with everything under it (repeat; none: every route).
    #[arg(long = "route")]
    routes: Vec<String>,
    /// Requests a minute [limits.per_key when left out].
    #[arg(long)]
    requests_per_minute: Option<u32>,
    /// Tokens a minute.
    #[arg(long)]
    tokens_per_minute: Option<u64>,
    /// Requests a month.
    #[arg(long)]
    monthly_requests: Option<u64>,
    /// Dollars a day.
    #[arg(long)]
    daily_usd: Option<f64>,
    /// Dollars a month.
    #[arg(long)]
    monthly_usd: Option<f64>,
}

/// `fm-relay keys add`: the key is printed on stdout (once), the rest on stderr.
fn add_key(args: AddKeyArgs) -> Result<(), fm_relay::RelayError> {
    let config = RelayConfig::load(args.config.as_deref())?;
    let file = args.file.unwrap_or_else(|| config.auth.keys_file.clone());
    let key = fm_relay::auth::new_key()?;
    let entry = ApiKeyConfig {
        name: args.name.clone(),
        key_sha256: hex::encode(fm_relay::auth::key_digest(&key)),
        admin: args.admin,
        revoked: false,
        models: args.models,
        routes: args.routes,
        limits: KeyLimits {
            requests_per_minute: args.requests_per_minute,
            tokens_per_minute: args.tokens_per_minute,
            monthly_requests: args.monthly_requests,
            daily_usd: args.daily_usd,
            monthly_usd: args.monthly_usd,
            ..KeyLimits::default()
        },
    };
    let declared = config
        .models
        .iter()
        .map(|model| model.id.as_str())
        .collect();
    entry
        .validate(&declared)
        .map_err(|message| fm_relay::RelayError::Config {
            origin: "the command line".into(),
            message,
        })?;
    fm_relay::auth::keys_file::add(&file, entry)?;
    println!("{key}");
    eprintln!(
        "fm-relay: key `{}` added to {}; it is shown only now. Send it as `Authorization: Bearer <key>` or `x-api-key`; restart the relay to load it.",
        args.name,
        file.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Keys(KeysCommand::Add(args))) => {
            return match add_key(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("fm-relay: {err}");
                    ExitCode::from(2)
                }
            };
        }
        None => return ExitCode::SUCCESS,
    };
    let config = match RelayConfig::load(args.config.as_deref())
        .and_then(|config| config.apply(&args.overrides()))
        .and_then(|config| telemetry::traces::init(&config.tracing).map(|()| config))
    {
        Ok(config) => config,
        Err(err) => {
            eprintln!("fm-relay: {err}");
            return ExitCode::from(2);
        }
    };
    server::run_to_exit("fm-relay", server::run_until_signal(config))
}
