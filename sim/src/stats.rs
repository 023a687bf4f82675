//! What the simulator saw: counters and a bounded log of recent requests, so tests can assert how
//! many attempts reached the upstream, when, and whether a stream was cancelled by its client.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How many requests the log keeps.
const RECENT_CAPACITY: usize = 1024;

/// Live counters, shared by all handlers.
#[derive(Debug)]
pub struct SimStats {
    started: Instant,
    requests: AtomicU64,
    errors: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
    recent: Mutex<VecDeque<RequestRecord>>,
    by_region: Mutex<BTreeMap<String, u64>>,
    tls_connections: Mutex<BTreeMap<String, u64>>,
}

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Milliseconds since the simulator started.
    pub at_ms: f64,
    /// `converse`, `converse-stream`, `invoke` or `invoke-with-response-stream`.
    pub operation: String,
    /// The model id as requested, fault suffix included.
    pub model_id: String,
    /// The region the request was signed for, if it was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The fault injected, if any.
    pub fault: Option<String>,
}

/// A point-in-time copy of the counters, as `GET /_sim/stats` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    /// Requests answered with an error before any output.
    pub errors: u64,
    pub streams_started: u64,
    /// Streams that sent their last frame (including streams that ended in a scripted fault).
    pub streams_completed: u64,
    /// Streams whose client went away before the end.
    pub streams_cancelled: u64,
    /// Requests per region they were signed for (unsigned requests are not counted here).
    pub requests_by_region: BTreeMap<String, u64>,
    /// HTTPS connections accepted, by the protocol ALPN chose (`h2`, `http/1.1`, `none`).
    #[serde(default)]
    pub tls_connections: BTreeMap<String, u64>,
    /// The most recent requests, oldest first.
    pub recent: Vec<RequestRecord>,
}

impl Default for SimStats {
    fn default() -> Self {
        SimStats {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            streams_started: AtomicU64::new(0),
            streams_completed: AtomicU64::new(0),
            streams_cancelled: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY)),
            by_region: Mutex::new(BTreeMap::new()),
            tls_connections: Mutex::new(BTreeMap::new()),
        }
    }
}

impl SimStats {
    pub(crate) fn record_request(
        &self,
        operation: &str,
        model_id: &str,
        region: Option<&str>,
        fault: Option<String>,
    ) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(region) = region {
            let mut by_region = self.by_region.lock().unwrap_or_else(|e| e.into_inner());
            *by_region.entry(region.to_string()).or_default() += 1;
        }
        let record = RequestRecord {
            at_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            operation: operation.to_string(),
            model_id: model_id.to_string(),
            region: region.map(str::to_string),
            fault,
        };
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    pub(crate) fn record_tls_connection(&self, protocol: &str) {
        let mut connections = self
            .tls_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *connections.entry(protocol.to_string()).or_default() += 1;
    }

    pub(crate) fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_stream_start(&self) {
        self.streams_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_stream_end(&self, cancelled: bool) {
        let counter = if cancelled {
            &self.streams_cancelled
        } else {
            &self.streams_completed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            streams_started: self.streams_started.load(Ordering::Relaxed),
            streams_completed: self.streams_completed.load(Ordering::Relaxed),
            streams_cancelled: self.streams_cancelled.load(Ordering::Relaxed),
            requests_by_region: self
                .by_region
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            tls_connections: self
                .tls_connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            recent: self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}
