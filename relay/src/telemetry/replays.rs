//! [`StreamReplays`]: how the restarted answers held back on a surface that cannot take text back
//! ended (resume by replay, `resilience::replay`), counted since start-up for `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// How one replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The restart reproduced the delivered text; the stream went on seamlessly.
    Resumed,
    /// The restart said something else (or ran past the bound, or ended early): the stream
    /// ended with an error.
    Diverged,
    /// The target failed during the replay; the stream moved on or ended.
    Failed,
}

impl ReplayOutcome {
    pub const ALL: [ReplayOutcome; 3] = [
        ReplayOutcome::Resumed,
        ReplayOutcome::Diverged,
        ReplayOutcome::Failed,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Resumed => "resumed",
            ReplayOutcome::Diverged => "diverged",
            ReplayOutcome::Failed => "failed",
        }
    }
}

/// Replays per outcome since start-up.
#[derive(Debug, Default)]
pub struct StreamReplays {
    counts: [AtomicU64; 3],
}

impl StreamReplays {
    pub fn record(&self, outcome: ReplayOutcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Replays that ended with `outcome`.
    pub fn count(&self, outcome: ReplayOutcome) -> u64 {
        self.counts[outcome as usize].load(Ordering::Relaxed)
    }
}
