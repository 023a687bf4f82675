//! Graceful shutdown in two phases, watched by every part that must react:
//!
//! 1. **Draining** (on SIGTERM / Ctrl-C): the listener stops accepting connections, new requests
//!    get `503 shutting_down`, `/healthz` reports draining, open streams go on.
//! 2. **Stopped** (when the grace period ends): streams still open end with a `shutting_down`
//!    error event — never a silent cut — and their upstream calls are dropped.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Stopped,
}

/// A handle on the shutdown phase; clones share it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: watch::Sender<Phase>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            sender: watch::Sender::new(Phase::Running),
        }
    }
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        *self.sender.borrow()
    }

    /// Moves to `phase` unless already there or beyond.
    pub fn advance(&self, phase: Phase) {
        self.sender.send_if_modified(|current| {
            let advanced = phase > *current;
            if advanced {
                *current = phase;
            }
            advanced
        });
    }

    /// A receiver of phase changes, for loops that wait on it repeatedly.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.sender.subscribe()
    }

    /// Resolves once the phase is `phase` or later.
    pub async fn reached(&self, phase: Phase) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|current| *current >= phase).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward() {
        let shutdown = Shutdown::default();
        assert_eq!(shutdown.phase(), Phase::Running);
        shutdown.advance(Phase::Stopped);
        shutdown.advance(Phase::Draining);
        assert_eq!(shutdown.phase(), Phase::Stopped);
        shutdown.reached(Phase::Draining).await;
    }
}
