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

use fm_protocol::{ChatRequest, StopReason, ToolCall, Usage};
use futures_util::Stream;

use crate::error::RelayError;

pub use bedrock::BedrockProvider;
pub use openai::OpenAiProvider;

/// A complete answer from one upstream call.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderAnswer {
    pub text: String,
    /// The tools the model called, in order.
    pub tool_calls: Vec<ToolCall>,
    pub stop_reason: StopReason,
    /// As the upstream reported it; `None` when it reported none.
    pub usage: Option<Usage>,
}

/// One piece of a streaming answer, in upstream order. A complete stream carries a `Stop`
/// (and usually a `Usage`) before it ends; a stream that ends without `Stop` was cut off.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    TextDelta(String),
    /// A tool call, once its last piece arrived (see [`PartialToolCall`]).
    ToolCall(ToolCall),
    Usage(Usage),
    Stop(StopReason),
}

/// The most input JSON one streamed tool call may carry: an upstream that sends more is broken.
const MAX_TOOL_INPUT_BYTES: usize = 1 << 20;

/// A tool call whose input JSON arrives in pieces. It is held until its block ends and passed
/// on whole, so a stream cut in the middle of a call never delivers half of one.
#[derive(Debug)]
pub(crate) struct PartialToolCall {
    id: String,
    name: String,
    input_json: String,
}

impl PartialToolCall {
    pub(crate) fn new(id: String, name: String) -> Self {
        PartialToolCall {
            id,
            name,
            input_json: String::new(),
        }
    }

    /// Appends the next piece of the input; an error (for the caller's protocol failure) once
    /// the input outgrows [`MAX_TOOL_INPUT_BYTES`].
    pub(crate) fn push(&mut self, piece: &str) -> Result<(), String> {
        if self.input_json.len() + piece.len() > MAX_TOOL_INPUT_BYTES {
            return Err(format!(
                "the input of tool call `{}` outgrew {MAX_TOOL_INPUT_BYTES} bytes",
                self.id
            ));
        }
        self.input_json.push_str(piece);
        Ok(())
    }

    /// The whole call; an error when its input is not a JSON object (an empty input is `{}`).
    pub(crate) fn finish(self) -> Result<ToolCall, String> {
        let input = if self.input_json.trim().is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_str(&self.input_json)
                .map_err(|err| format!("tool call `{}`: its input is not JSON: {err}", self.id))?
        };
        if !input.is_object() {
            return Err(format!(
                "tool call `{}`: its input is not a JSON object",
                self.id
            ));
        }
        Ok(ToolCall {
            id: self.id,
            name: self.name,
            input,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_call_is_whole_only_when_its_input_is_a_json_object() {
        let mut call = PartialToolCall::new("t1".into(), "search".into());
        for piece in [r#"{"q""#, r#": "relay"#, r#"s"}"#] {
            call.push(piece).unwrap();
        }
        let call = call.finish().unwrap();
        assert_eq!(call.input, serde_json::json!({"q": "relays"}));

        let empty = PartialToolCall::new("t2".into(), "now".into());
        assert_eq!(empty.finish().unwrap().input, serde_json::json!({}));
        let mut cut = PartialToolCall::new("t3".into(), "search".into());
        cut.push(r#"{"q": "rel"#).unwrap();
        assert!(cut.finish().unwrap_err().contains("not JSON"));
        let mut array = PartialToolCall::new("t4".into(), "search".into());
        array.push("[1]").unwrap();
        assert!(array.finish().unwrap_err().contains("not a JSON object"));
        let mut huge = PartialToolCall::new("t5".into(), "search".into());
        let piece = "x".repeat(MAX_TOOL_INPUT_BYTES / 2 + 1);
        huge.push(&piece).unwrap();
        assert!(huge.push(&piece).is_err());
    }
}
