//! One answer as the panel sees it: the relay's [`StreamEvent`]s in, [`Update`]s out — text as
//! it comes with the code blocks it changed, a `failover` that restarts the answer (the text so
//! far is dropped: the reader starts again), then exactly one end: `done` with the answer's
//! figures (time to first token and tokens per second measured here, beside the relay's own
//! times) or an error. A stream that ends without `done` is an error, never a complete answer;
//! after the end nothing more is reported, so a cancel racing the last event cannot report both.
//!
//! The clock is passed in (milliseconds), so the same logic runs under test and in the host.

use fm_protocol::{StopReason, StreamEvent, Usage};
use serde::Serialize;

use crate::blocks::{Block, BlockReader};
use crate::error::IdeError;

/// What the panel is told.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Update {
    /// The relay chose `model`.
    Start { model: String },
    /// New text, and the blocks it changed (by index; later ones replace earlier ones).
    Delta {
        text: String,
        changed: Vec<ChangedBlock>,
    },
    /// Another target took over. With `discard_partial` it starts the answer again: drop the
    /// text and blocks shown so far.
    Failover {
        model: String,
        reason: String,
        discard_partial: bool,
    },
    /// The answer is complete.
    Done(Summary),
}

/// A block and where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangedBlock {
    pub index: usize,
    #[serde(flatten)]
    pub block: Block,
}

/// A complete answer's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub model: String,
    pub stop_reason: StopReason,
    pub text: String,
    pub blocks: Vec<Block>,
    /// From sending the request to the first text, measured here.
    pub ttft_ms: Option<f64>,
    /// Output tokens per second from the first text to the end (the relay's count, or an
    /// estimate of a token per four characters when it has none).
    pub tokens_per_second: Option<f64>,
    pub usage: Option<Usage>,
    /// The relay's own time to first token and total time.
    pub server_ttft_ms: Option<f64>,
    pub server_total_ms: f64,
    /// The relay's stand-in answer: no model could answer.
    pub degraded: bool,
    /// Why the relay chose the model that answered.
    pub route_reason: String,
}

/// The state of one answer.
#[derive(Debug)]
pub struct Session {
    started_ms: f64,
    first_text_ms: Option<f64>,
    model: String,
    text: String,
    reader: BlockReader,
    ended: bool,
}

impl Session {
    /// An answer requested at `now_ms`.
    pub fn new(now_ms: f64) -> Session {
        Session {
            started_ms: now_ms,
            first_text_ms: None,
            model: String::new(),
            text: String::new(),
            reader: BlockReader::new(),
            ended: false,
        }
    }

    /// Whether the answer has ended (done, failed or cancelled).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Reads one event that arrived at `now_ms`: what to tell the panel, or the error that ends
    /// the answer.
    pub fn handle(&mut self, event: StreamEvent, now_ms: f64) -> Result<Option<Update>, IdeError> {
        if self.ended {
            return Ok(None);
        }
        match event {
            StreamEvent::Start { model, .. } => {
                self.model = model.clone();
                Ok(Some(Update::Start { model }))
            }
            StreamEvent::TextDelta { text } => {
                if text.is_empty() {
                    return Ok(None);
                }
                self.first_text_ms.get_or_insert(now_ms);
                self.text.push_str(&text);
                self.reader.push(&text);
                Ok(Some(Update::Delta {
                    text,
                    changed: self.changed(),
                }))
            }
            StreamEvent::Usage { .. } => Ok(None),
            StreamEvent::Failover {
                model,
                reason,
                discard_partial,
                ..
            } => {
                if discard_partial {
                    self.text.clear();
                    self.reader.clear();
                }
                self.model = model.clone();
                Ok(Some(Update::Failover {
                    model,
                    reason,
                    discard_partial,
                }))
            }
            StreamEvent::Done {
                stop_reason,
                usage,
                timings,
                route,
                degraded,
            } => {
                self.ended = true;
                self.reader.finish();
                let ttft_ms = self.first_text_ms.map(|at| at - self.started_ms);
                let output_tokens = usage.map_or_else(
                    || self.text.chars().count().div_ceil(4) as f64,
                    |usage| f64::from(usage.output_tokens),
                );
                let tokens_per_second = self
                    .first_text_ms
                    .map(|first| (now_ms - first) / 1000.0)
                    .filter(|seconds| *seconds > 0.0)
                    .map(|seconds| output_tokens / seconds);
                Ok(Some(Update::Done(Summary {
                    model: route.model,
                    stop_reason,
                    text: self.text.clone(),
                    blocks: self.reader.blocks(),
                    ttft_ms,
                    tokens_per_second,
                    usage,
                    server_ttft_ms: timings.ttft_ms,
                    server_total_ms: timings.total_ms,
                    degraded,
                    route_reason: route.reason,
                })))
            }
            StreamEvent::Error {
                code,
                message,
                retryable,
            } => {
                self.ended = true;
                Err(IdeError::Relay {
                    code,
                    message,
                    retryable,
                })
            }
            // Tool calls, with fm-protocol's `tools` feature (which a workspace build turns
            // on): the assistant offers the model no tools, so none is ever called.
            #[allow(unreachable_patterns)]
            _ => Ok(None),
        }
    }

    /// The stream ended (its body or socket closed): an error unless `done` came first.
    pub fn end_of_stream(&mut self) -> Result<(), IdeError> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        Err(IdeError::Protocol(
            "the stream ended before the answer was complete".into(),
        ))
    }

    /// The caller cancelled: the error that ends the answer, unless it ended already.
    pub fn cancel(&mut self) -> Option<IdeError> {
        if self.ended {
            return None;
        }
        self.ended = true;
        Some(IdeError::Cancelled)
    }

    /// The transport failed with `err`: it ends the answer, unless it ended already.
    pub fn fail(&mut self, err: IdeError) -> Option<IdeError> {
        if self.ended {
            return None;
        }
        self.ended = true;
        Some(err)
    }

    fn changed(&mut self) -> Vec<ChangedBlock> {
        self.reader
            .take_changed()
            .into_iter()
            .map(|(index, block)| ChangedBlock { index, block })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fm_protocol::{ErrorCode, RouteInfo, Timings};

    fn done(output_tokens: Option<u32>) -> StreamEvent {
        StreamEvent::Done {
            stop_reason: StopReason::EndTurn,
            usage: output_tokens.map(|n| Usage::new(10, n)),
            timings: Timings {
                ttft_ms: Some(40.0),
                total_ms: 900.0,
            },
            route: RouteInfo {
                model: "m".into(),
                provider: "bedrock".into(),
                region: "us-east-1".into(),
                source: fm_protocol::ResponseSource::Primary,
                attempts: 1,
                reason: "the default model".into(),
                choice: Default::default(),
            },
            degraded: false,
        }
    }

    fn text(text: &str) -> StreamEvent {
        StreamEvent::TextDelta { text: text.into() }
    }

    #[test]
    fn an_answer_reports_its_blocks_and_figures() {
        let mut session = Session::new(1000.0);
        let start = StreamEvent::Start {
            request_id: "r".into(),
            model: "m".into(),
            route: Default::default(),
        };
        assert_eq!(
            session.handle(start, 1010.0).unwrap(),
            Some(Update::Start { model: "m".into() })
        );
        let Some(Update::Delta { changed, .. }) = session
            .handle(text("Fix:\n```rust\nlet a = 1;\n"), 1200.0)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(changed.last().unwrap().index, 1);
        assert!(!changed.last().unwrap().block.complete);
        let Some(Update::Delta { changed, .. }) =
            session.handle(text("```\nDone."), 1300.0).unwrap()
        else {
            panic!()
        };
        assert!(changed.iter().any(|c| c.index == 1 && c.block.complete));
        let Some(Update::Done(summary)) = session.handle(done(Some(30)), 2200.0).unwrap() else {
            panic!()
        };
        assert_eq!(summary.ttft_ms, Some(200.0));
        assert_eq!(summary.tokens_per_second, Some(30.0));
        assert_eq!(summary.server_ttft_ms, Some(40.0));
        assert_eq!(summary.blocks.len(), 3);
        assert!(summary.blocks.iter().all(|b| b.complete));
        // After the end, nothing more.
        assert_eq!(session.handle(text("late"), 2300.0).unwrap(), None);
        assert_eq!(session.cancel(), None);
    }

    #[test]
    fn a_failover_that_restarts_drops_the_text_and_one_that_continues_keeps_it() {
        let mut session = Session::new(0.0);
        session.handle(text("First try"), 10.0).unwrap();
        let restart = StreamEvent::Failover {
            model: "other".into(),
            region: "us-west-2".into(),
            reason: "throttled".into(),
            discard_partial: true,
        };
        assert!(matches!(
            session.handle(restart, 20.0).unwrap(),
            Some(Update::Failover {
                discard_partial: true,
                ..
            })
        ));
        assert_eq!(session.text(), "");
        session.handle(text("Second"), 30.0).unwrap();
        let keep = StreamEvent::Failover {
            model: "third".into(),
            region: "eu-west-1".into(),
            reason: "cut".into(),
            discard_partial: false,
        };
        session.handle(keep, 40.0).unwrap();
        session.handle(text(" try"), 50.0).unwrap();
        let Some(Update::Done(summary)) = session.handle(done(None), 60.0).unwrap() else {
            panic!()
        };
        assert_eq!(summary.text, "Second try");
        // No usage from the relay: an estimate of a token per four characters.
        assert_eq!(summary.tokens_per_second, Some(3.0 / 0.05));
    }

    #[test]
    fn errors_cancels_and_cut_streams_end_the_answer_once() {
        let mut failed = Session::new(0.0);
        let error = StreamEvent::Error {
            code: ErrorCode::UpstreamThrottled,
            message: "slow down".into(),
            retryable: true,
        };
        let err = failed.handle(error, 5.0).unwrap_err();
        assert_eq!(err.kind(), "relay");
        assert!(err.retryable());
        assert_eq!(err.to_json()["code"], "upstream_throttled");
        assert_eq!(failed.end_of_stream(), Ok(()));

        let mut cut = Session::new(0.0);
        cut.handle(text("half an ans"), 1.0).unwrap();
        assert!(matches!(cut.end_of_stream(), Err(IdeError::Protocol(_))));

        let mut cancelled = Session::new(0.0);
        assert_eq!(cancelled.cancel(), Some(IdeError::Cancelled));
        assert_eq!(cancelled.cancel(), None);
        assert!(cancelled.fail(IdeError::Network("reset".into())).is_none());
        assert_eq!(cancelled.handle(done(Some(1)), 2.0).unwrap(), None);
    }
}
