//! [`StreamEvent`]: what a streaming answer is made of, on every transport.
//!
//! A stream is `start`, then any number of `text_delta` and `tool_call` (and possibly `usage`),
//! then exactly one terminal event: `done` for a complete answer or `error` when it could not be
//! completed. A stream that ends without a terminal event was cut off and must not be shown as
//! complete.
//!
//! On SSE the event's [`name`](StreamEvent::name) is the `event:` field and the JSON (which also
//! carries the name in `type`) is the `data:` field; on WebSocket each event is one JSON text
//! frame.

use serde::{Deserialize, Serialize};

#[cfg(feature = "tools")]
use crate::chat::ToolCall;
use crate::chat::{RouteInfo, StopReason, Timings, Usage};
use crate::error::ErrorCode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The relay accepted the request and chose a model.
    Start {
        request_id: String,
        model: String,
        /// Why this model: the rule that fired and the candidates considered.
        #[serde(default)]
        route: crate::route::RouteChoice,
    },
    /// The next piece of the answer's text.
    TextDelta { text: String },
    /// A tool call, whole: the relay holds the upstream's pieces of a call until it is
    /// complete, so a call cut off mid-stream is never half-delivered.
    #[cfg(feature = "tools")]
    ToolCall { call: ToolCall },
    /// Token counts, as soon as the upstream reports them.
    Usage { usage: Usage },
    /// The upstream broke off after text was sent and another target takes over. With
    /// `discard_partial` the new target starts the answer again: throw away the text received
    /// so far. Without it the new target continues the text where it broke off.
    Failover {
        /// The model (as configured in the relay) that takes over.
        model: String,
        /// Its region or endpoint.
        region: String,
        /// What went wrong, in words for people.
        reason: String,
        discard_partial: bool,
    },
    /// The answer is complete.
    Done {
        stop_reason: StopReason,
        /// The tokens the answer took, as the upstream reported them; absent when it reported
        /// none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        timings: Timings,
        route: RouteInfo,
        /// True when the text is the relay's stand-in message because no model could answer.
        #[serde(default)]
        degraded: bool,
    },
    /// The answer could not be completed; any text received so far is incomplete.
    Error {
        code: ErrorCode,
        message: String,
        /// Whether sending the same request again could succeed.
        retryable: bool,
    },
}

impl StreamEvent {
    /// The event's name: the SSE `event:` field and the JSON `type` field.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Start { .. } => "start",
            StreamEvent::TextDelta { .. } => "text_delta",
            #[cfg(feature = "tools")]
            StreamEvent::ToolCall { .. } => "tool_call",
            StreamEvent::Usage { .. } => "usage",
            StreamEvent::Failover { .. } => "failover",
            StreamEvent::Done { .. } => "done",
            StreamEvent::Error { .. } => "error",
        }
    }

    /// Whether this event ends the stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, StreamEvent::Done { .. } | StreamEvent::Error { .. })
    }

    /// The event as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string and every float is
        // produced by the relay from finite durations.
        serde_json::to_string(self).unwrap_or_else(|err| {
            format!(
                r#"{{"type":"error","code":"internal","message":"event encoding failed: {err}","retryable":false}}"#
            )
        })
    }
}
