//! Streaming an [`Answer`] as event-stream frames, in the shape of ConverseStream or of
//! InvokeModelWithResponseStream (Anthropic events, base64 inside `chunk` frames), or as the
//! Server-Sent Events of OpenAI chat completions, paced by the model's profile and interrupted
//! where a scripted fault says so.
//!
//! A tool call follows the text as its own content block (Converse `toolUse`, OpenAI
//! `tool_calls`), its input JSON in a few pieces; a fault's `after_tokens` counts those pieces
//! after the text's tokens, so a stream can be cut in the middle of a call.
//!
//! A producer task writes frames into a small channel that backs the HTTP body. When the client
//! goes away, hyper drops the body, the channel closes, and the producer notices at its next send
//! or while it waits, and records the stream as cancelled.

use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use crate::answer::{Answer, PlannedToolCall};
use crate::eventstream::{chunk_frame, event_frame, exception_frame};
use crate::fault::{Fault, HttpFault};
use crate::stats::SimStats;

/// Which operation's event shapes to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Converse,
    /// Anthropic Messages events inside InvokeModelWithResponseStream chunks.
    Invoke,
    /// OpenAI `chat.completion.chunk` SSE events, then `data: [DONE]`; with `include_usage` a
    /// usage chunk before it.
    OpenAi {
        include_usage: bool,
    },
}

/// The client hung up.
struct Closed;

/// What the producer hands the body.
enum Frame {
    Data(Bytes),
    /// Tear the connection down once what came before is on the wire.
    Reset,
}

struct Producer {
    tx: mpsc::Sender<Frame>,
    format: StreamFormat,
    request_id: String,
}

/// Starts producing `answer` and returns the body that carries it.
pub fn spawn_stream(
    answer: Answer,
    fault: Option<Fault>,
    format: StreamFormat,
    request_id: String,
    stats: Arc<SimStats>,
) -> Body {
    let (tx, mut rx) = mpsc::channel(16);
    stats.record_stream_start();
    tokio::spawn(async move {
        let producer = Producer {
            tx,
            format,
            request_id,
        };
        let outcome = producer.run(&answer, fault).await;
        stats.record_stream_end(outcome.is_err());
    });
    let mut resetting = false;
    Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        if resetting {
            // A failing body makes hyper drop the connection without the closing chunk.
            let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            return Poll::Ready(Some(Err(reset)));
        }
        match ready!(rx.poll_recv(cx)) {
            Some(Frame::Data(bytes)) => Poll::Ready(Some(Ok(bytes))),
            Some(Frame::Reset) => {
                // Pending once first, so hyper flushes the frames it holds before it fails.
                resetting = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Ready(None),
        }
    }))
}

impl Producer {
    async fn send(&self, frame: Bytes) -> Result<(), Closed> {
        self.tx.send(Frame::Data(frame)).await.map_err(|_| Closed)
    }

    /// Tears the connection down mid-body.
    async fn reset(&self) -> Result<(), Closed> {
        self.tx.send(Frame::Reset).await.map_err(|_| Closed)
    }

    async fn wait_until(&self, due: Instant) -> Result<(), Closed> {
        if due <= Instant::now() {
            return if self.tx.is_closed() {
                Err(Closed)
            } else {
                Ok(())
            };
        }
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => Ok(()),
            () = self.tx.closed() => Err(Closed),
        }
    }

    async fn run(&self, answer: &Answer, fault: Option<Fault>) -> Result<(), Closed> {
        let started = Instant::now();
        let first_token_at = started + answer.profile.first_token_delay();
        let interval = answer.profile.token_interval();
        let fault_at = fault.and_then(|f| match f {
            Fault::Http(_)
            | Fault::RejectPrefill
            | Fault::NoResponse
            | Fault::Slow { .. }
            | Fault::HangAfterStop
            | Fault::HangUp { .. }
            | Fault::ThrottleWait { .. }
            | Fault::NoUsage => None,
            Fault::StreamException { after_tokens, .. }
            | Fault::Stall { after_tokens }
            | Fault::Cut { after_tokens }
            | Fault::Reset { after_tokens }
            | Fault::Garbage { after_tokens } => {
                Some((after_tokens as usize).min(answer.output_tokens() as usize))
            }
        });
        let pieces = answer
            .tool_call
            .as_ref()
            .map(PlannedToolCall::input_pieces)
            .unwrap_or_default();
        let text_tokens = answer.tokens.len();

        self.wait_until(first_token_at).await?;
        for frame in self.opening(answer) {
            self.send(frame).await?;
        }
        for index in 0..=text_tokens + pieces.len() {
            if fault_at == Some(index) {
                return self.fail(fault).await;
            }
            let frame = if let Some(token) = answer.tokens.get(index) {
                self.delta(answer, token)
            } else if let (Some(call), Some(piece)) =
                (&answer.tool_call, pieces.get(index - text_tokens))
            {
                if index == text_tokens {
                    for frame in self.tool_call_start(answer, call) {
                        self.send(frame).await?;
                    }
                }
                self.tool_input_delta(answer, piece)
            } else {
                break;
            };
            self.wait_until(first_token_at + interval * index as u32)
                .await?;
            self.send(frame).await?;
        }
        let latency_ms = started.elapsed().as_millis() as u64;
        let with_usage = fault != Some(Fault::NoUsage);
        let mut closing = self.closing(answer, latency_ms, started, first_token_at, with_usage);
        let hang = fault == Some(Fault::HangAfterStop);
        if hang {
            // Everything up to the stop event; the last frame never comes.
            closing.pop();
        }
        for frame in closing {
            self.send(frame).await?;
        }
        if hang {
            self.tx.closed().await;
            return Err(Closed);
        }
        Ok(())
    }

    async fn fail(&self, fault: Option<Fault>) -> Result<(), Closed> {
        if let Some(Fault::Reset { .. }) = fault {
            return self.reset().await;
        }
        if let StreamFormat::OpenAi { .. } = self.format {
            return self.fail_openai(fault).await;
        }
        match fault {
            Some(Fault::StreamException { exception, .. }) => {
                self.send(exception_frame(
                    exception.exception_type(),
                    exception.message(),
                ))
                .await
            }
            Some(Fault::Stall { .. }) => {
                self.tx.closed().await;
                Err(Closed)
            }
            Some(Fault::Garbage { .. }) => {
                // A well-formed frame with one payload byte flipped: the message CRC fails.
                let mut frame = event_frame(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": "corrupt"}}),
                )
                .to_vec();
                let middle = frame.len() / 2;
                frame[middle] ^= 0xff;
                self.send(Bytes::from(frame)).await?;
                self.tx.closed().await;
                Err(Closed)
            }
            // A cut stream simply ends: dropping the sender ends the body.
            _ => Ok(()),
        }
    }

    /// OpenAI streams fail the way OpenAI-compatible servers do: an `error` object as the last
    /// event, a line that is not JSON, silence, or an end without `[DONE]`.
    async fn fail_openai(&self, fault: Option<Fault>) -> Result<(), Closed> {
        match fault {
            Some(Fault::StreamException { exception, .. }) => {
                let error = openai_error_body(exception.as_http());
                self.send(sse_data(&error.to_string())).await
            }
            Some(Fault::Stall { .. }) => {
                self.tx.closed().await;
                Err(Closed)
            }
            Some(Fault::Garbage { .. }) => {
                self.send(Bytes::from_static(b"data: {\"choices\": [{\"delta\": \n\n"))
                    .await?;
                self.tx.closed().await;
                Err(Closed)
            }
            _ => Ok(()),
        }
    }

    /// One `chat.completion.chunk`.
    fn openai_chunk(&self, answer: &Answer, choices: serde_json::Value) -> serde_json::Value {
        json!({
            "id": format!("chatcmpl-{}", self.request_id),
            "object": "chat.completion.chunk",
            "created": unix_seconds(),
            "model": answer.model,
            "choices": choices,
        })
    }

    fn opening(&self, answer: &Answer) -> Vec<Bytes> {
        match self.format {
            StreamFormat::OpenAi { .. } => {
                let first = self.openai_chunk(
                    answer,
                    json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
                );
                vec![sse_data(&first.to_string())]
            }
            StreamFormat::Converse => {
                vec![event_frame("messageStart", &json!({"role": "assistant"}))]
            }
            StreamFormat::Invoke => vec![
                chunk_frame(&json!({
                    "type": "message_start",
                    "message": {
                        "id": format!("msg_bdrk_{}", self.request_id),
                        "type": "message",
                        "role": "assistant",
                        "model": answer.model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": {"input_tokens": answer.input_tokens, "output_tokens": 1},
                    },
                })),
                chunk_frame(&json!({
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                })),
            ],
        }
    }

    fn delta(&self, answer: &Answer, token: &str) -> Bytes {
        match self.format {
            StreamFormat::OpenAi { .. } => sse_data(
                &self
                    .openai_chunk(
                        answer,
                        json!([{"index": 0, "delta": {"content": token}, "finish_reason": null}]),
                    )
                    .to_string(),
            ),
            StreamFormat::Converse => event_frame(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 0, "delta": {"text": token}}),
            ),
            StreamFormat::Invoke => chunk_frame(&json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": token},
            })),
        }
    }

    /// The frames that end the text block and open the tool call's block.
    fn tool_call_start(&self, answer: &Answer, call: &PlannedToolCall) -> Vec<Bytes> {
        match self.format {
            StreamFormat::OpenAi { .. } => vec![sse_data(
                &self
                    .openai_chunk(
                        answer,
                        json!([{"index": 0, "delta": {"tool_calls": [{
                            "index": 0,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }]}, "finish_reason": null}]),
                    )
                    .to_string(),
            )],
            StreamFormat::Converse => vec![
                event_frame("contentBlockStop", &json!({"contentBlockIndex": 0})),
                event_frame(
                    "contentBlockStart",
                    &json!({
                        "contentBlockIndex": 1,
                        "start": {"toolUse": {"toolUseId": call.id, "name": call.name}},
                    }),
                ),
            ],
            StreamFormat::Invoke => vec![
                chunk_frame(&json!({"type": "content_block_stop", "index": 0})),
                chunk_frame(&json!({
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
                })),
            ],
        }
    }

    /// One piece of the tool call's input JSON.
    fn tool_input_delta(&self, answer: &Answer, piece: &str) -> Bytes {
        match self.format {
            StreamFormat::OpenAi { .. } => sse_data(
                &self
                    .openai_chunk(
                        answer,
                        json!([{"index": 0, "delta": {"tool_calls": [{
                            "index": 0,
                            "function": {"arguments": piece},
                        }]}, "finish_reason": null}]),
                    )
                    .to_string(),
            ),
            StreamFormat::Converse => event_frame(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": piece}}}),
            ),
            StreamFormat::Invoke => chunk_frame(&json!({
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            })),
        }
    }

    fn closing(
        &self,
        answer: &Answer,
        latency_ms: u64,
        started: Instant,
        first_token_at: Instant,
        with_usage: bool,
    ) -> Vec<Bytes> {
        let output_tokens = answer.output_tokens();
        // The block open at the end: the tool call's when there is one.
        let last_block = usize::from(answer.tool_call.is_some());
        match self.format {
            StreamFormat::OpenAi { include_usage } => {
                let mut frames = vec![sse_data(
                    &self
                        .openai_chunk(
                            answer,
                            json!([{"index": 0, "delta": {}, "finish_reason": answer.stop.openai_finish_reason()}]),
                        )
                        .to_string(),
                )];
                if include_usage && with_usage {
                    let mut usage = self.openai_chunk(answer, json!([]));
                    usage["usage"] = openai_usage(answer);
                    frames.push(sse_data(&usage.to_string()));
                }
                frames.push(sse_data("[DONE]"));
                frames
            }
            StreamFormat::Converse => {
                let mut frames = vec![
                    event_frame(
                        "contentBlockStop",
                        &json!({"contentBlockIndex": last_block}),
                    ),
                    event_frame("messageStop", &json!({"stopReason": answer.stop.as_str()})),
                ];
                if with_usage {
                    frames.push(event_frame(
                        "metadata",
                        &json!({
                            "usage": {
                                "inputTokens": answer.input_tokens,
                                "outputTokens": output_tokens,
                                "totalTokens": answer.input_tokens + output_tokens,
                            },
                            "metrics": {"latencyMs": latency_ms},
                        }),
                    ));
                }
                frames
            }
            StreamFormat::Invoke => vec![
                chunk_frame(&json!({"type": "content_block_stop", "index": last_block})),
                chunk_frame(&json!({
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": answer.stop.as_str(),
                        "stop_sequence": answer.stop.stop_sequence(),
                    },
                    "usage": {"output_tokens": output_tokens},
                })),
                chunk_frame(&json!({
                    "type": "message_stop",
                    "amazon-bedrock-invocationMetrics": {
                        "inputTokenCount": answer.input_tokens,
                        "outputTokenCount": output_tokens,
                        "invocationLatency": latency_ms,
                        "firstByteLatency": first_token_at.duration_since(started).as_millis() as u64,
                    },
                })),
            ],
        }
    }
}

/// One SSE event with only a `data:` field.
fn sse_data(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The `usage` object of an OpenAI answer.
pub fn openai_usage(answer: &Answer) -> serde_json::Value {
    let output = answer.output_tokens();
    json!({
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": output,
        "total_tokens": answer.input_tokens + output,
    })
}

/// The body of an OpenAI error answer for `fault`.
pub fn openai_error_body(fault: HttpFault) -> serde_json::Value {
    let (kind, code) = match fault {
        HttpFault::Throttle => ("requests", "rate_limit_exceeded"),
        HttpFault::Unavailable | HttpFault::NotReady => ("server_error", "service_unavailable"),
        HttpFault::Internal => ("server_error", "internal_error"),
        HttpFault::ModelTimeout => ("server_error", "timeout"),
        HttpFault::Validation | HttpFault::PrefillRejected => {
            ("invalid_request_error", "invalid_request")
        }
        HttpFault::NotFound => ("invalid_request_error", "model_not_found"),
        HttpFault::ContextTooLong => ("invalid_request_error", "context_length_exceeded"),
    };
    json!({"error": {"message": fault.message(), "type": kind, "param": null, "code": code}})
}
