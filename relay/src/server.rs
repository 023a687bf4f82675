//! Starting and stopping the relay: resolve where Bedrock calls go (starting the embedded
//! simulator when there is no AWS configuration), build the provider clients and the catalog,
//! bind the listener (TCP_NODELAY on every accepted socket), serve, and shut down gracefully.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::auth::KeyRing;
use crate::cache::AnswerCache;
use crate::config::{AuthMode, BedrockMode, RelayConfig};
use crate::connections;
use crate::error::RelayError;
use crate::limits::Limits;
use crate::provider::bedrock::BedrockEndpoint;
use crate::routing::ModelCatalog;
use crate::shutdown::{Phase, Shutdown};
use crate::upstream::TargetBuilder;

/// How long after the grace period the relay waits for streams to send their final event.
const FINAL_EVENT_MARGIN: Duration = Duration::from_secs(2);

/// A relay bound to its port and serving.
#[derive(Debug)]
pub struct RunningRelay {
    addr: SocketAddr,
    shutdown: Shutdown,
    state: AppState,
    task: JoinHandle<()>,
    /// Where Bedrock calls go, for the start-up log and tests.
    pub bedrock_endpoint: BedrockEndpoint,
    /// The embedded simulator, when the relay started one; it lives as long as the relay.
    pub simulator: Option<fm_sim::SimHandle>,
}

impl RunningRelay {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the handlers share (its limits' clock, its routing board), for tests and embedders.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The base URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Begins a graceful shutdown, as SIGTERM does.
    pub fn begin_shutdown(&self) {
        self.shutdown.advance(Phase::Draining);
    }

    /// Waits until the relay has stopped.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Whether this process has AWS configuration the SDK would use.
pub fn aws_configured() -> bool {
    const VARIABLES: &[&str] = &[
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    ];
    if VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
    {
        return true;
    }
    std::env::var_os("HOME").is_some_and(|home| {
        let aws = Path::new(&home).join(".aws");
        aws.join("config").is_file() || aws.join("credentials").is_file()
    })
}

/// Resolves the Bedrock endpoint, starting the simulator if that is where calls go.
async fn bedrock_endpoint(
    config: &RelayConfig,
) -> Result<(BedrockEndpoint, Option<fm_sim::SimHandle>), RelayError> {
    let mode = match (config.bedrock.mode, &config.bedrock.endpoint) {
        (BedrockMode::Auto, Some(_)) => BedrockMode::Endpoint,
        (BedrockMode::Auto, None) if aws_configured() => BedrockMode::Aws,
        (BedrockMode::Auto, None) => BedrockMode::Sim,
        (mode, _) => mode,
    };
    Ok(match mode {
        BedrockMode::Aws => (BedrockEndpoint::Aws, None),
        BedrockMode::Endpoint => {
            let url = config.bedrock.endpoint.clone().ok_or_else(|| {
                RelayError::Startup("bedrock mode \"endpoint\" needs `bedrock.endpoint`".into())
            })?;
            (BedrockEndpoint::Url(url), None)
        }
        BedrockMode::Sim | BedrockMode::Auto => {
            let sim_config = fm_sim::SimConfig {
                seed: config.simulator.seed,
                default_model: fm_sim::ModelProfile {
                    first_token_ms: config.simulator.first_token_ms,
                    tokens_per_second: config.simulator.tokens_per_second,
                    answer_tokens: None,
                },
                models: Default::default(),
                faults: config.simulator.faults.clone(),
            };
            let sim = fm_sim::spawn(sim_config)
                .await
                .map_err(|err| RelayError::Startup(format!("the embedded simulator: {err}")))?;
            (BedrockEndpoint::Url(sim.endpoint_url()), Some(sim))
        }
    })
}

/// The configured web UI folder.
fn config_web_dir(state: &AppState) -> Option<std::path::PathBuf> {
    state.config().server.web_dir.clone()
}

/// The relay's parts, assembled but not yet serving: the app (every route behind the edge's
/// layers, ready for `Router::oneshot` in tests), its state, and where Bedrock calls go.
#[derive(Debug)]
pub struct Assembled {
    pub app: axum::Router,
    pub state: AppState,
    pub shutdown: Shutdown,
    pub bedrock_endpoint: BedrockEndpoint,
    pub simulator: Option<fm_sim::SimHandle>,
}

/// Builds the app, binds `config.server.host:port` (port 0 picks one) and starts serving.
pub async fn start(config: RelayConfig) -> Result<RunningRelay, RelayError> {
    let addr = SocketAddr::new(config.server.host, config.server.port);
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let assembled = assemble(config).await?;
    let listener = connections::bind(addr, assembled.state.config().server.listen_backlog)?;
    let addr = listener
        .local_addr()
        .map_err(|err| RelayError::Startup(err.to_string()))?;
    let state = assembled.state;
    match config_web_dir(&state) {
        Some(dir) if dir.is_dir() => {
            tracing::info!(dir = %dir.display(), "chat UI served at /")
        }
        Some(dir) => tracing::info!(
            dir = %dir.display(),
            "no chat UI there: build it with `trunk build --release` (scripts/run.sh does)"
        ),
        None => {}
    }
    let task = tokio::spawn(serve(listener, assembled.app, state.clone(), grace));
    tracing::info!(url = %format!("http://{addr}"), "fm-relay listening");
    Ok(RunningRelay {
        addr,
        state,
        shutdown: assembled.shutdown,
        task,
        bedrock_endpoint: assembled.bedrock_endpoint,
        simulator: assembled.simulator,
    })
}

/// Resolves where calls go (starting the simulator when that is where), builds the provider
/// clients, the catalog, the cache, the keys and the limits, and the app over them; starts the
/// background tasks: the job workers, the refresh of routing's figures, and reloads on `SIGHUP`
/// and on a change of the file.
pub async fn assemble(config: RelayConfig) -> Result<Assembled, RelayError> {
    let assembled = assemble_without_tasks(config).await?;
    let state = &assembled.state;
    api::jobs::spawn_workers(state);
    api::spawn_routing_refresh(state);
    api::reload::reload_on_hangup(state);
    api::reload::reload_on_change(state);
    Ok(assembled)
}

/// What [`assemble`] builds, with no background task started: for a host that runs the work
/// itself (a Lambda function: its events bring the jobs, and nothing runs between them).
pub async fn assemble_without_tasks(config: RelayConfig) -> Result<Assembled, RelayError> {
    // Every reqwest client of the relay — job callbacks too, even with no OpenAI-compatible
    // model configured — takes rustls's process-wide provider.
    crate::provider::openai::install_crypto_provider();
    let (endpoint, simulator) = bedrock_endpoint(&config).await?;
    match (&endpoint, &simulator) {
        (BedrockEndpoint::Url(url), Some(_)) => tracing::info!(
            endpoint = %url,
            "no AWS configuration found: Bedrock calls go to the embedded simulator (fm-sim)"
        ),
        (BedrockEndpoint::Url(url), None) => {
            tracing::info!(endpoint = %url, "Bedrock calls go to a custom endpoint")
        }
        (BedrockEndpoint::Aws, _) => tracing::info!("Bedrock calls go to AWS"),
    }

    let builder = TargetBuilder::new(&config, endpoint.clone())?;
    let catalog = ModelCatalog::build(&config, &builder, None).await?;
    let cache = AnswerCache::connect(&config.cache).await?;
    if cache.is_some() {
        tracing::info!(
            backend = ?config.cache.backend,
            semantic = config.cache.semantic,
            "answer cache on"
        );
    }

    let keys = KeyRing::load(&config)?;
    match keys.mode() {
        AuthMode::Open => tracing::info!(
            keys = keys.len(),
            "auth.mode = \"open\": requests without an API key are served (as `anonymous`); set auth.mode = \"keys\" to require keys"
        ),
        AuthMode::Keys => tracing::info!(
            keys = keys.len(),
            "auth.mode = \"keys\": every API request needs a key"
        ),
    }
    let limits = Limits::open(&config).await?;
    tracing::info!(
        backend = ?config.limits.backend,
        "limits and usage ledger ready"
    );

    let jobs = match config.jobs.enabled {
        true => {
            let dir = config.jobs.dir(&config.limits.data_dir);
            let jobs = crate::jobs::Jobs::open(&config.jobs, &dir).await?;
            tracing::info!(dir = %dir.display(), workers = config.jobs.workers, "document jobs on");
            Some(jobs)
        }
        false => None,
    };
    let shutdown = Shutdown::default();
    let state = AppState::new(api::Parts {
        config,
        targets: builder,
        catalog,
        cache,
        shutdown: shutdown.clone(),
        keys,
        limits,
        jobs,
    });
    let app = api::app(state.clone());
    Ok(Assembled {
        app,
        state,
        shutdown,
        bedrock_endpoint: endpoint,
        simulator,
    })
}

async fn serve(listener: TcpListener, app: axum::Router, state: AppState, grace: Duration) {
    let shutdown = state.shutdown().clone();
    let draining = shutdown.clone();
    let stop = async move {
        draining.reached(Phase::Draining).await;
        tracing::info!(
            ?grace,
            "shutting down: no new work; open streams may finish"
        );
    };
    let server = connections::serve(
        listener,
        app,
        &state.config().server,
        state.connections().clone(),
        stop,
    );
    let mut server = std::pin::pin!(server);
    // Phase 2: when the grace period ends, streams still open end with an error event.
    let grace_over = async {
        shutdown.reached(Phase::Draining).await;
        tokio::time::sleep(grace).await;
    };
    let finished = tokio::select! {
        () = &mut server => true,
        () = grace_over => false,
    };
    if !finished {
        tracing::info!("grace period over: ending the streams still open");
        shutdown.advance(Phase::Stopped);
        if tokio::time::timeout(FINAL_EVENT_MARGIN, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period: closing them");
        }
    }
    // WebSocket sessions are not HTTP requests: wait for them too, within the same bounds.
    let sessions = state.ws_tracker().clone();
    sessions.close();
    let last_call = async {
        shutdown.reached(Phase::Stopped).await;
        tokio::time::sleep(FINAL_EVENT_MARGIN).await;
    };
    tokio::select! {
        () = sessions.wait() => {}
        () = last_call => tracing::warn!("some WebSocket sessions did not close in time"),
    }
    // Every request has settled: write the last of the usage ledger.
    if let Err(err) = state.limits().flush().await {
        tracing::error!(%err, "could not write the last of the usage ledger");
    }
    tracing::info!("fm-relay stopped");
}

/// A binary's last step once its configuration is loaded (`fm-relay serve`, the Lambda
/// functions): runs `serving` to its end on a multi-threaded runtime made here, then sends the
/// spans of the last requests out before the process ends. An error is printed as
/// `{program}: {err}` and ends the process with exit code 1.
pub fn run_to_exit<E: std::fmt::Display>(
    program: &str,
    serving: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{program}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serving);
    crate::telemetry::traces::shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{program}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Loads nothing, starts the relay and serves until SIGTERM or Ctrl-C, then shuts down.
pub async fn run_until_signal(config: RelayConfig) -> Result<(), RelayError> {
    let relay = start(config).await?;
    wait_for_signal().await;
    relay.begin_shutdown();
    relay.stopped().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
