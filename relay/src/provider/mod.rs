//! Upstream model providers behind one trait: [`ChatProvider`] turns one chat call into either a
//! complete answer or a stream of [`ProviderEvent`]s. A provider knows neither HTTP surfaces nor
//! routing; it only speaks to its upstream and converts the upstream's formats at this edge, so
//! no SDK type leaves this module.
//!
//! Dispatch is an enum ([`Provider`]) chosen by the model's configured `provider` kind: no boxed
//! futures on the hot path.

pub mod bedrock;
pub mod openai;

use std::future::Future;
use std::pin::Pin;

use fm_protocol::{ChatRequest, StopReason, Usage};
use futures_util::Stream;

use crate::error::RelayError;

pub use bedrock::BedrockProvider;
pub use openai::OpenAiProvider;

/// A complete answer from one upstream call.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderAnswer {
    pub text: String,
    pub stop_reason: StopReason,
    /// As the upstream reported it; `None` when it reported none.
    pub usage: Option<Usage>,
}

/// One piece of a streaming answer, in upstream order. A complete stream carries a `Stop`
/// (and usually a `Usage`) before it ends; a stream that ends without `Stop` was cut off.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    TextDelta(String),
    Usage(Usage),
    Stop(StopReason),
}

/// The events of one streaming call; an `Err` item ends the stream.
pub type ProviderStream = Pin<Box<dyn Stream<Item = Result<ProviderEvent, RelayError>> + Send>>;

/// What every provider can do.
pub trait ChatProvider {
    /// The provider kind, as shown in route info (`"bedrock"`).
    fn kind(&self) -> &'static str;

    /// Where calls go: a region or an endpoint.
    fn location(&self) -> &str;

    /// One non-streaming call.
    fn complete(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> impl Future<Output = Result<ProviderAnswer, RelayError>> + Send;

    /// Opens a streaming call; resolves once the upstream accepted it (headers received).
    fn open_stream(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> impl Future<Output = Result<ProviderStream, RelayError>> + Send;
}

/// The configured providers.
#[derive(Debug, Clone)]
pub enum Provider {
    Bedrock(BedrockProvider),
    OpenAi(OpenAiProvider),
}

impl ChatProvider for Provider {
    fn kind(&self) -> &'static str {
        match self {
            Provider::Bedrock(p) => p.kind(),
            Provider::OpenAi(p) => p.kind(),
        }
    }

    fn location(&self) -> &str {
        match self {
            Provider::Bedrock(p) => p.location(),
            Provider::OpenAi(p) => p.location(),
        }
    }

    async fn complete(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> Result<ProviderAnswer, RelayError> {
        // Boxed: the SDK's call future is ~7 KiB, and inline it made every future around it as
        // large (the executor's one-shot future: 8.9 KiB; 1.8 KiB with the box), copied whenever
        // a layer moves it. A/B in BENCHMARKS.md ("Allocations and copies").
        match self {
            Provider::Bedrock(p) => Box::pin(p.complete(upstream_id, request)).await,
            Provider::OpenAi(p) => Box::pin(p.complete(upstream_id, request)).await,
        }
    }

    async fn open_stream(
        &self,
        upstream_id: &str,
        request: &ChatRequest,
    ) -> Result<ProviderStream, RelayError> {
        // Not boxed like `complete`: a box per stream opening (freed on whichever worker
        // finishes it) left the relay 2.8 KiB more resident per open idle stream with mimalloc,
        // for the same live heap (massif); see BENCHMARKS.md ("Allocations and copies").
        match self {
            Provider::Bedrock(p) => p.open_stream(upstream_id, request).await,
            Provider::OpenAi(p) => p.open_stream(upstream_id, request).await,
        }
    }
}
