//! The bare pass-through, the floor a relay is measured against: axum + reqwest, TCP_NODELAY on
//! both sides as the relay, forwarding every `POST` (a Bedrock `/model/{id}/{operation}`, an
//! OpenAI `/v1/chat/completions`) to the same path upstream and streaming the answer back as it
//! arrives — no parsing, no policy. Used by the overhead bench (bench/benches/overhead.rs), the
//! concurrent-streams bench (relay/benches/streams.rs) and the peer bench (bench/benches/peer.rs).

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
