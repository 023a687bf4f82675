//! Traces over OTLP: when `tracing.otlp_endpoint` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, the `tracing` spans — one `request` span per request, with child spans for the route
//! decision, the cache lookup and each upstream attempt — are exported as OpenTelemetry spans
//! (OTLP over HTTP with protobuf, in batches from a background thread), a share
//! `tracing.sample_ratio` of new traces kept; a request whose client sent a W3C `traceparent`
//! joins the client's trace (and keeps its sampling decision), and calls to OpenAI-compatible
//! upstreams carry the attempt's `traceparent` on ([`inject`]).
//!
//! Logging goes through the same subscriber: every line inside a request's span carries the
//! request id.

use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TracingConfig;
use crate::error::RelayError;

/// The exporting provider, once installed (for [`flush`] and [`shutdown`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The endpoint traces go to: the environment's, else the configuration's; none when empty.
pub fn endpoint(config: &TracingConfig) -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| Some(config.otlp_endpoint.clone()).filter(|e| !e.trim().is_empty()))
}

/// Installs the global subscriber: logging to standard error (filtered by `RUST_LOG`, default
/// `info`), and the OTLP exporter when an endpoint is configured. A second call is a no-op.
pub fn init(config: &TracingConfig) -> Result<(), RelayError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    let Some(endpoint) = endpoint(config) else {
        let _ = registry.try_init();
        return Ok(());
    };
    if PROVIDER.get().is_some() {
        return Ok(());
    }
    // The exporter's HTTP client (reqwest with rustls) needs the process's crypto provider; an
    // error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|err| RelayError::Startup(format!("the OTLP exporter for {endpoint}: {err}")))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("fm-relay");
    let _ = PROVIDER.set(provider);
    let _ = registry
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    tracing::info!(
        endpoint,
        sample_ratio = config.sample_ratio,
        "traces exported over OTLP"
    );
    Ok(())
}

/// Sends the spans that are waiting now.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}

/// Sends what is waiting and stops the exporter (at the end of `serve`).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// Makes `span` a child of the client's trace when `headers` carry a W3C `traceparent`.
pub fn adopt_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let context =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(context);
}

/// The `traceparent` (and `tracestate`) of the current span, for a call to an upstream.
pub fn inject(headers: &mut axum::http::HeaderMap) {
    if PROVIDER.get().is_none() {
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new()
        .inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
}
