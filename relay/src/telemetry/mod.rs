//! What the relay knows about itself: logging ([`logging`]) and the live window of recent
//! request outcomes per model ([`window`]), which `GET /v1/stats` reports and which routing will
//! read.

pub mod logging;
pub mod window;

pub use logging::init_logging;
pub use window::{LiveWindow, Outcome};
