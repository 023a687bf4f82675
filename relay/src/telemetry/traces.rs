//! Traces over OTLP: when `tracing.otlp_endpoint` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, the `tracing` spans — one `request` span per request, with child spans for the route
//! decision, the cache lookup and each upstream attempt — are exported as OpenTelemetry spans
//! (OTLP over HTTP with protobuf, in batches from a background thread), a share
//! `tracing.sample_ratio` of new traces kept; a request whose client sent a W3C `traceparent`
//! joins the client's trace (and keeps its sampling decision), and calls to OpenAI-compatible
//! upstreams carry the attempt's `traceparent` on ([`inject`]).
//!
//! Sampling is decided once per request, at the edge ([`sampled`]): a sampled request's span has
//! the target [`TRACED`], any other's [`UNTRACED`], and the OpenTelemetry layer sees only the
//! spans under a traced request (a per-layer filter), so an unsampled request costs the exporter
//! nothing.
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
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::TracingConfig;
use crate::error::RelayError;

/// The exporting provider, once installed (for [`flush`] and [`shutdown`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The share of new traces kept, once the exporter is installed.
static SAMPLE_RATIO: OnceLock<f64> = OnceLock::new();

/// The target of a sampled request's span: it and the spans under it are exported.
pub const TRACED: &str = "fm_relay::traced";
/// The target of every other request's span.
pub const UNTRACED: &str = "fm_relay::untraced";

/// Whether a request with `headers` is traced: never without an exporter; as its client's
/// `traceparent` says when it has one; otherwise a share `tracing.sample_ratio` of requests.
pub fn sampled(headers: &axum::http::HeaderMap) -> bool {
    let Some(&ratio) = SAMPLE_RATIO.get() else {
        return false;
    };
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        // version-traceid-parentid-flags; bit 0 of the flags: sampled.
        return parent
            .rsplit('-')
            .next()
            .and_then(|flags| u8::from_str_radix(flags, 16).ok())
            .is_some_and(|flags| flags & 1 == 1);
    }
    fastrand::f64() < ratio
}

/// Whether the OpenTelemetry layer sees a span: a traced request's, and those under it.
fn under_traced_request<S>(
    metadata: &tracing::Metadata<'_>,
    context: &tracing_subscriber::layer::Context<'_, S>,
) -> bool
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !metadata.is_span() {
        return false;
    }
    match metadata.target() {
        TRACED => true,
        UNTRACED => false,
        _ => context.lookup_current().is_some_and(|current| {
            current
                .scope()
                .from_root()
                .next()
                .is_some_and(|root| root.metadata().target() == TRACED)
        }),
    }
}

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
        // The edge samples ([`sampled`]); what reaches the layer is kept.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("fm-relay");
    let _ = PROVIDER.set(provider);
    let _ = SAMPLE_RATIO.set(config.sample_ratio);
    let traced = tracing_subscriber::filter::dynamic_filter_fn(under_traced_request);
    let _ = registry
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(traced),
        )
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
