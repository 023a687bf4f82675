//! `fm-sim`: the Bedrock Runtime emulator as a standalone server, for testing any Bedrock
//! application locally (`--port 4010`, then `endpoint_url = http://127.0.0.1:4010`; with
//! `--tls-ca-out ca.pem`, HTTPS and HTTP/2 at `https://127.0.0.1:4010`).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use fm_sim::SimConfig;

/// A Bedrock Runtime emulator: Converse, ConverseStream, InvokeModel and
/// InvokeModelWithResponseStream with generated answers, scripted latency and faults.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 4010, env = "FM_SIM_PORT")]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1", env = "FM_SIM_HOST")]
    host: std::net::IpAddr,
    /// A TOML file with the simulator's configuration (seed, default_model, models.<id>).
    #[arg(long, env = "FM_SIM_CONFIG")]
    config: Option<PathBuf>,
    /// Milliseconds before the first token, for models without their own profile.
    #[arg(long)]
    first_token_ms: Option<u64>,
    /// Tokens per second after the first (0 = as fast as possible), for models without a profile.
    #[arg(long)]
    tokens_per_second: Option<f64>,
    /// Seed mixed into every generated answer.
    #[arg(long)]
    seed: Option<u64>,
    /// Serve HTTPS — HTTP/2 or HTTP/1.1 by ALPN, as Bedrock does — with a certificate for
    /// localhost and 127.0.0.1 from a certificate authority made at start-up, whose certificate
    /// (PEM) is written to this file for clients to trust (the relay's `bedrock.ca_file`, boto3's
    /// `verify=`).
    #[arg(long, env = "FM_SIM_TLS_CA_OUT")]
    tls_ca_out: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str::<SimConfig>(&text)
                .map_err(|e| format!("invalid config {}: {e}", path.display()))?
        }
        None => SimConfig::default(),
    };
    if let Some(ms) = args.first_token_ms {
        config.default_model.first_token_ms = ms;
    }
    if let Some(tps) = args.tokens_per_second {
        config.default_model.tokens_per_second = tps;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if args.print_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    let addr = SocketAddr::new(args.host, args.port);
    let sim = match &args.tls_ca_out {
        Some(path) => {
            let tls = fm_sim::LocalTls::generate()?;
            std::fs::write(path, tls.ca_pem())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(ca = %path.display(), "serving HTTPS; clients trust this certificate");
            fm_sim::spawn_https_on(addr, config, std::sync::Arc::new(tls)).await?
        }
        None => fm_sim::spawn_on(addr, config).await?,
    };
    tracing::info!(endpoint = %sim.endpoint_url(), "fm-sim listening");
    tokio::signal::ctrl_c().await?;
    tracing::info!("fm-sim shutting down");
    Ok(())
}
