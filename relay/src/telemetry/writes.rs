//! [`StreamWrites`]: how many events the streaming surfaces (SSE and WebSocket) sent and in how
//! many writes. Events per write says how well bursts of tokens are batched (`GET /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since start-up.
#[derive(Debug, Default)]
pub struct StreamWrites {
    events: AtomicU64,
    writes: AtomicU64,
}

impl StreamWrites {
    /// One write (an SSE body chunk, a WebSocket flush) that carried `events` events.
    pub fn record(&self, events: usize) {
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Events sent so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Writes that carried them.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
