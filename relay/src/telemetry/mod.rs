//! What the relay knows about itself: logging ([`logging`]), the Prometheus histograms and
//! counters ([`metrics`]), the live windows of recent
//! outcomes per model and per target ([`window`]), which `GET /v1/stats` reports and routing reads, the
//! streaming surfaces' write counters ([`writes`]), how resumed-by-replay answers ended
//! ([`replays`]) and what each request's upstream calls spent ([`spend`]).

pub mod logging;
pub mod metrics;
pub mod replays;
pub mod spend;
pub mod traces;
pub mod window;
pub mod writes;

pub use logging::init_logging;
pub use metrics::RelayMetrics;
pub use replays::{ReplayOutcome, StreamReplays};
pub use spend::{AttemptSpend, SpendMeter};
pub use window::{Ending, HealthFigures, LiveWindow, Outcome, Series, SeriesSummary};
pub use writes::StreamWrites;
