//! The API function: the relay's router — every surface behind the same edge layers as
//! `fm-relay serve` — driven by the Lambda runtime instead of a listener. Each invocation is one
//! HTTP request (a function URL's or API Gateway's event, turned into an `http::Request` by
//! `lambda_http`). Answers stream: each body chunk the relay writes (an SSE event, a token) goes
//! out as it is made, which needs the function URL's `RESPONSE_STREAM` invoke mode; with
//! `FM_LAMBDA_RESPONSE=buffered` the answer is sent whole (API Gateway's REST proxy, a URL in
//! `BUFFERED` mode), which still suits JSON but holds a stream until its end.
//!
//! What does not fit: `/v1/ws` (a function URL does not upgrade connections: the relay answers
//! `400 invalid_request`, pointing at SSE), and anything that must run between requests — the
//! job workers (the `jobs` function runs jobs), reloads on a file change or `SIGHUP` (a new
//! version of the function is the reload). The refresh of routing's figures runs while the function serves.

use std::time::Instant;

use fm_relay::RelayConfig;
use tower::ServiceExt;

use crate::error::LambdaError;

/// How answers leave the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseMode {
    /// Each chunk as it is made (the function URL's `RESPONSE_STREAM` invoke mode).
    Stream,
    /// The whole answer at its end.
    Buffered,
}

impl ResponseMode {
    /// `FM_LAMBDA_RESPONSE`: `stream` (the default) or `buffered`.
    fn from_env() -> Result<ResponseMode, LambdaError> {
        match std::env::var("FM_LAMBDA_RESPONSE").as_deref() {
            Err(_) | Ok("") | Ok("stream") => Ok(ResponseMode::Stream),
            Ok("buffered") => Ok(ResponseMode::Buffered),
            Ok(_) => Err(LambdaError::UnfitSetting {
                setting: "FM_LAMBDA_RESPONSE",
                why: "must be `stream` (a function URL in RESPONSE_STREAM mode) or `buffered`",
            }),
        }
    }
}

/// Assembles the relay and serves its API to the Lambda runtime until the runtime stops.
pub async fn serve(config: RelayConfig, started: Instant) -> Result<(), LambdaError> {
    let mode = ResponseMode::from_env()?;
    let fm_relay::server::Assembled {
        app,
        simulator: _simulator,
        ..
    } = crate::assemble(config).await?;
    tracing::info!(
        init_ms = started.elapsed().as_millis() as u64,
        ?mode,
        "fm-relay-lambda: the API function is ready"
    );
    let app = app.map_request(|request: lambda_http::Request| request.map(axum::body::Body::new));
    match mode {
        ResponseMode::Stream => lambda_http::run_with_streaming_response(app).await,
        ResponseMode::Buffered => lambda_http::run(app).await,
    }
    .map_err(LambdaError::Runtime)
}
