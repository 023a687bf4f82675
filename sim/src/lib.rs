//! # fm-sim — a Bedrock Runtime emulator
//!
//! Serves the four Bedrock Runtime model operations the way AWS does, so the real
//! `aws-sdk-bedrockruntime` client (or boto3, or any SDK) can be pointed at it with
//! `endpoint_url`:
//!
//! | route | operation |
//! |---|---|
//! | `POST /model/{modelId}/converse` | Converse (JSON) |
//! | `POST /model/{modelId}/converse-stream` | ConverseStream (AWS event-stream frames) |
//! | `POST /model/{modelId}/invoke` | InvokeModel, Anthropic Messages body |
//! | `POST /model/{modelId}/invoke-with-response-stream` | InvokeModelWithResponseStream |
//! | `POST /v1/chat/completions` | OpenAI chat completions, JSON or SSE (`stream`, `stream_options.include_usage`) |
//! | `GET /_sim/stats` | what the simulator saw (see [`StatsSnapshot`]) |
//! | `GET`, `PUT`, `DELETE /_sim/faults` | the fault schedule (see [`schedule`]) |
//!
//! Answers are generated text, deterministic for a given seed, model and prompt ([`text`]), of a
//! seeded natural length capped by `max_tokens`, honouring stop sequences, with usage counts.
//! Time to first token and tokens per second are set per model ([`SimConfig`]). Faults are
//! chosen per request ([`fault`]) or scheduled per model and region ([`schedule`]) and come back
//! exactly as Bedrock sends them, so SDKs raise their typed errors. Request signatures are not
//! checked; their credential scope tells the request's region.
//!
//! A conversation that ends with an assistant message is a prefill: the answer continues it (when
//! the prefill is the start of the answer the full conversation would get, the continuation is
//! exactly the rest of that answer).
//!
//! Modules: [`config`] (behaviour), [`fault`] (fault grammar), [`wire`] (request bodies),
//! [`answer`] (planning one answer), [`stream`] + [`eventstream`] (streaming and framing),
//! [`service`] (routes), [`stats`] (what was seen), [`error`] (Bedrock-shaped errors), [`tls`]
//! (HTTPS with HTTP/2, as Bedrock serves it: [`spawn_https`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = fm_sim::spawn(fm_sim::SimConfig::instant()).await?;
//! println!("point the SDK at {}", sim.endpoint_url());
//! # Ok(()) }
//! ```

pub mod answer;
pub mod config;
pub mod error;
pub mod eventstream;
pub mod fault;
pub mod schedule;
pub mod service;
pub mod stats;
pub mod stream;
pub mod text;
pub mod tls;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{ModelProfile, SimConfig};
pub use fault::Fault;
pub use schedule::FaultRule;
pub use service::FAULT_HEADER;
pub use stats::{SimStats, StatsSnapshot};
pub use tls::{LocalTls, TlsError};

/// A running simulator. Dropping the handle stops it.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    /// "https" when served over TLS, else "http".
    scheme: &'static str,
    stats: Arc<SimStats>,
    state: Arc<service::SimState>,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give an SDK as `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// What the simulator has seen so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Replaces the fault schedule, as `PUT /_sim/faults` does; the rules' windows count from
    /// now.
    pub fn set_faults(&self, rules: Vec<FaultRule>) -> Result<(), String> {
        self.state.schedule.replace(rules)
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a simulator on a free loopback port.
pub async fn spawn(config: SimConfig) -> std::io::Result<SimHandle> {
    spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
}

/// Starts a simulator on `addr`.
pub async fn spawn_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<SimHandle> {
    spawn_with(addr, config, None).await
}

/// Starts a simulator on a free loopback port that speaks HTTPS, HTTP/2 or HTTP/1.1 as the
/// client's ALPN chooses, with a certificate from `tls` (clients trust [`LocalTls::ca_pem`]).
pub async fn spawn_https(config: SimConfig, tls: Arc<LocalTls>) -> std::io::Result<SimHandle> {
    spawn_https_on(SocketAddr::from(([127, 0, 0, 1], 0)), config, tls).await
}

/// [`spawn_https`] on `addr`.
pub async fn spawn_https_on(
    addr: SocketAddr,
    config: SimConfig,
    tls: Arc<LocalTls>,
) -> std::io::Result<SimHandle> {
    spawn_with(addr, config, Some(tls)).await
}

async fn spawn_with(
    addr: SocketAddr,
    config: SimConfig,
    tls: Option<Arc<LocalTls>>,
) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    config
        .validate()
        .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
    let stats = Arc::new(SimStats::default());
    let state = Arc::new(service::SimState::new(config, stats.clone()));
    let app = service::router(state.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = match tls {
        Some(tls) => {
            let stats = stats.clone();
            tokio::spawn(async move { tls::serve(listener, app, &tls, stats).await })
        }
        None => {
            // Small frames must leave at once: no Nagle delay on token-sized writes.
            let listener = listener.tap_io(|tcp| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::warn!(%err, "could not set TCP_NODELAY");
                }
            });
            // `into_make_service`: the route table is readied once, not for every connection.
            tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, app.into_make_service()).await {
                    tracing::error!(%err, "fm-sim server stopped");
                }
            })
        }
    };
    Ok(SimHandle {
        addr,
        scheme,
        stats,
        state,
        task,
    })
}
