//! The bare pass-through, the floor a relay is measured against: axum + reqwest, TCP_NODELAY on
//! both sides as the relay, forwarding every `POST` (a Bedrock `/model/{id}/{operation}`, an
//! OpenAI `/v1/chat/completions`) to the same path upstream and streaming the answer back as it
//! arrives — no parsing, no policy. Used by the overhead bench (bench/benches/overhead.rs) on a
//! runtime of its own, and as a process of its own ([`PassThroughProcess`]) by the
//! concurrent-streams bench (relay/benches/streams.rs) and the peer bench (bench/benches/peer.rs).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;

/// The bare pass-through's state: where it forwards to, and its client.
struct PassThrough {
    upstream: String,
    client: reqwest::Client,
}

/// Forwards one `POST` with its body to the same path upstream and streams the answer back as it
/// arrives: no parsing, no policy.
async fn forward(State(pass_through): State<Arc<PassThrough>>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let sent = pass_through
        .client
        .post(format!("{}{path}", pass_through.upstream))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(upstream) => {
            let mut response = Response::builder().status(upstream.status());
            if let Some(content_type) = upstream.headers().get(CONTENT_TYPE) {
                response = response.header(CONTENT_TYPE, content_type);
            }
            response
                .body(Body::from_stream(upstream.bytes_stream()))
                .unwrap_or_else(|err| (StatusCode::BAD_GATEWAY, err.to_string()).into_response())
        }
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}

/// Starts the bare pass-through (axum + reqwest, TCP_NODELAY on both sides, as the relay) in
/// front of `upstream` (an origin: scheme, host and port), on the current runtime; returns its base URL. DESIGN.md's floor of a
/// hop, measured here beside the relay on the same machine and load.
pub async fn spawn(upstream: String) -> std::io::Result<String> {
    fm_relay::provider::openai::install_crypto_provider();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(std::io::Error::other)?;
    let router = Router::new()
        .route("/{*path}", post(forward))
        .with_state(Arc::new(PassThrough { upstream, client }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router.into_make_service()).await });
    Ok(format!("http://{address}"))
}

/// Set in the pass-through's own process: the origin it forwards to.
const PASS_THROUGH_ENV: &str = "FM_BENCH_PASS_THROUGH_TO";

/// The pass-through as a process of its own, so that `/proc/<pid>` shows its CPU and memory
/// alone: the calling bench's own binary run again, whose `main` first calls
/// [`serve_if_asked`]. Killed when dropped.
pub struct PassThroughProcess {
    pub child: Child,
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub url: String,
}

impl PassThroughProcess {
    /// Starts it in front of `upstream` (an origin: scheme, host and port).
    pub fn start(upstream: &str) -> PassThroughProcess {
        let mut child = Command::new(std::env::current_exe().expect("the bench's own path"))
            .env(PASS_THROUGH_ENV, upstream)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the pass-through starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("the pass-through prints its URL");
        PassThroughProcess {
            child,
            url: line.trim().to_string(),
        }
    }
}

impl Drop for PassThroughProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a process [`PassThroughProcess::start`] made: serves the pass-through, prints its URL and
/// never returns. Anywhere else: returns at once.
pub async fn serve_if_asked() {
    if let Ok(upstream) = std::env::var(PASS_THROUGH_ENV) {
        let url = spawn(upstream).await.expect("the pass-through listens");
        println!("{url}");
        std::future::pending::<()>().await;
    }
}
