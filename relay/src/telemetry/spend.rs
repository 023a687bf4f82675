//! What a request's upstream calls spent, reported as they end: the hook through which the
//! usage ledger and token limits (`limits`) learn the real usage without `resilience` knowing
//! them. Each attempt that consumed tokens is reported — the answer that finished, and also a
//! stream that broke off, was cancelled by its client or was taken over by another target (with
//! estimated counts where the upstream said none). When the request ends, the meter is dropped,
//! which is when its reservation settles.

use fm_protocol::Usage;

/// The tokens one upstream call consumed, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptSpend<'a> {
    /// The relay's id of the model that was called.
    pub model: &'a str,
    /// The region (or endpoint name) of the target.
    pub region: &'a str,
    pub usage: Usage,
}

/// Receives the spend of a request's upstream calls.
pub trait SpendMeter: Send + Sync + std::fmt::Debug {
    /// One call ended having consumed `spend`.
    fn record(&self, spend: AttemptSpend<'_>);
    /// The model that answered the request in the end (or the one it was routed to, when none
    /// did): the request is counted under it.
    fn answered_by(&self, model: &str, region: &str);
}
