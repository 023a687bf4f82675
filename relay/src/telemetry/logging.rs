//! Logging without the relay's configuration (tests, tools): [`init_logging`] installs the same
//! subscriber as [`traces::init`](super::traces::init) with the default `[tracing]` section —
//! `tracing` to standard error in a compact human format (colours only on a terminal), filtered
//! by `RUST_LOG` (default `info`), and OTLP export only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! is set.

/// Installs the global subscriber; a second call (as in tests) is a no-op.
pub fn init_logging() {
    if let Err(err) = super::traces::init(&crate::config::TracingConfig::default()) {
        eprintln!("fm-relay: {err}");
    }
}
