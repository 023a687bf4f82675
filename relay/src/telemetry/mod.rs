//! What the relay knows about itself: logging ([`logging`]), the live window of recent request
//! outcomes per model ([`window`]), which `GET /v1/stats` reports and routing reads, and the
//! streaming surfaces' write counters ([`writes`]).

pub mod logging;
pub mod window;
pub mod writes;

pub use logging::init_logging;
pub use window::{LiveWindow, Outcome};
pub use writes::StreamWrites;
