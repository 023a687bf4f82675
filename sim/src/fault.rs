//! Faults a test can ask for, one per request: either in the `x-fm-sim-fault` header or as a
//! suffix of the model id after `~` (`anthropic.claude-3-haiku~stall@3`), which lets a client
//! that cannot set headers (such as the relay behind the AWS SDK) be pointed at a faulty model.
//!
//! | fault | effect |
//! |---|---|
//! | `throttle` | 429 `ThrottlingException` |
//! | `throttle-wait@MS` | 429 `ThrottlingException` asking to wait MS milliseconds: `Retry-After` (whole seconds, rounded up), `x-amz-retry-after` and `retry-after-ms` (milliseconds) |
//! | `unavailable` | 503 `ServiceUnavailableException` |
//! | `internal` | 500 `InternalServerException` |
//! | `model-timeout` | 408 `ModelTimeoutException` |
//! | `not-ready` | 429 `ModelNotReadyException` |
//! | `validation` | 400 `ValidationException` |
//! | `not-found` | 404 `ResourceNotFoundException` |
//! | `context-too-long` | 400 `ValidationException`: the input is too long for the model |
//! | `reject-prefill` | 400 `ValidationException` when the conversation ends with an assistant message (a model that takes no prefill); healthy otherwise |
//! | `no-response` | no answer at all, not even headers, until the client gives up |
//! | `hang-up@MS` | no answer for MS milliseconds, then the connection is closed without one (no status, no headers) |
//! | `no-usage` | a healthy answer without token counts (OpenAI: no `usage`; ConverseStream: no `metadata` frame), as some OpenAI-compatible servers send |
//! | `slow@MS` | the first token comes MS milliseconds after the request |
//! | `hang-after-stop` | the whole answer and its stop event, then silence: the stream's last frame (usage metadata, `message_stop` or `[DONE]`) never comes and the connection stays open |
//! | `stream-throttle@N` | N tokens, then an in-stream `throttlingException` |
//! | `stream-error@N` | N tokens, then an in-stream `modelStreamErrorException` |
//! | `stream-internal@N` | N tokens, then an in-stream `internalServerException` |
//! | `stream-unavailable@N` | N tokens, then an in-stream `serviceUnavailableException` |
//! | `stream-validation@N` | N tokens, then an in-stream `validationException` |
//! | `stall@N` | N tokens, then silence until the client gives up |
//! | `cut@N` | N tokens, then the stream ends without its closing events: the HTTP body itself ends cleanly |
//! | `reset@N` | N tokens, then the connection is torn down mid-body (no closing chunk): what a crashed upstream or a dropped network path looks like |
//! | `garbage@N` | N tokens, then a frame whose checksum is wrong, then silence |
//!
//! On the non-streaming operations an in-stream exception becomes the matching HTTP error,
//! `stall` never answers, `reset` closes the connection without an answer once the first token
//! is due, and `cut` and `garbage` have no effect.
//!
//! A `*K` suffix limits a fault to the first K requests that carry the same spec on the same
//! model id (`model~throttle*2`: throttled twice, then healthy), for testing retries.

use std::fmt;
use std::str::FromStr;

use axum::http::StatusCode;

/// An error Bedrock returns before any output, as HTTP status and error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFault {
    Throttle,
    Unavailable,
    Internal,
    ModelTimeout,
    NotReady,
    Validation,
    NotFound,
    ContextTooLong,
    PrefillRejected,
}

impl HttpFault {
    pub fn status(self) -> StatusCode {
        match self {
            HttpFault::Throttle | HttpFault::NotReady => StatusCode::TOO_MANY_REQUESTS,
            HttpFault::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            HttpFault::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            HttpFault::ModelTimeout => StatusCode::REQUEST_TIMEOUT,
            HttpFault::Validation | HttpFault::ContextTooLong | HttpFault::PrefillRejected => {
                StatusCode::BAD_REQUEST
            }
            HttpFault::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The `x-amzn-errortype` value, which the SDK maps to its typed error.
    pub fn error_type(self) -> &'static str {
        match self {
            HttpFault::Throttle => "ThrottlingException",
            HttpFault::Unavailable => "ServiceUnavailableException",
            HttpFault::Internal => "InternalServerException",
            HttpFault::ModelTimeout => "ModelTimeoutException",
            HttpFault::NotReady => "ModelNotReadyException",
            HttpFault::Validation | HttpFault::ContextTooLong | HttpFault::PrefillRejected => {
                "ValidationException"
            }
            HttpFault::NotFound => "ResourceNotFoundException",
        }
    }

    /// The fault's name in the spec grammar (`throttle`, `context-too-long`, ...).
    pub fn spec_name(self) -> &'static str {
        match self {
            HttpFault::Throttle => "throttle",
            HttpFault::Unavailable => "unavailable",
            HttpFault::Internal => "internal",
            HttpFault::ModelTimeout => "model-timeout",
            HttpFault::NotReady => "not-ready",
            HttpFault::Validation => "validation",
            HttpFault::NotFound => "not-found",
            HttpFault::ContextTooLong => "context-too-long",
            HttpFault::PrefillRejected => "reject-prefill",
        }
    }

    /// The message Bedrock sends with this error.
    pub fn message(self) -> &'static str {
        match self {
            HttpFault::Throttle => "Too many requests, please wait before trying again.",
            HttpFault::Unavailable => "Bedrock is unable to process your request.",
            HttpFault::Internal => "The server encountered an internal error.",
            HttpFault::ModelTimeout => "Model has timed out in processing the request.",
            HttpFault::NotReady => "Model is not ready to serve inference requests.",
            HttpFault::Validation => {
                "Malformed input request, please reformat your input and try again."
            }
            HttpFault::NotFound => "The provided model identifier is invalid.",
            HttpFault::ContextTooLong => "Input is too long for requested model.",
            HttpFault::PrefillRejected => {
                "This model does not support assistant message prefill. The conversation must end with a user message."
            }
        }
    }
}

/// An exception Bedrock sends inside an event stream after some output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamException {
    Throttling,
    ModelStreamError,
    InternalServer,
    ServiceUnavailable,
    Validation,
}

impl StreamException {
    /// The `:exception-type` header value (lower camel case, as on the wire).
    pub fn exception_type(self) -> &'static str {
        match self {
            StreamException::Throttling => "throttlingException",
            StreamException::ModelStreamError => "modelStreamErrorException",
            StreamException::InternalServer => "internalServerException",
            StreamException::ServiceUnavailable => "serviceUnavailableException",
            StreamException::Validation => "validationException",
        }
    }

    pub fn message(self) -> &'static str {
        self.as_http().message()
    }

    /// The exception's name in the spec grammar (`stream-throttle`, ...).
    pub fn spec_name(self) -> &'static str {
        match self {
            StreamException::Throttling => "stream-throttle",
            StreamException::ModelStreamError => "stream-error",
            StreamException::InternalServer => "stream-internal",
            StreamException::ServiceUnavailable => "stream-unavailable",
            StreamException::Validation => "stream-validation",
        }
    }

    /// The HTTP error the same condition produces on a non-streaming call.
    pub fn as_http(self) -> HttpFault {
        match self {
            StreamException::Throttling => HttpFault::Throttle,
            StreamException::ModelStreamError | StreamException::InternalServer => {
                HttpFault::Internal
            }
            StreamException::ServiceUnavailable => HttpFault::Unavailable,
            StreamException::Validation => HttpFault::Validation,
        }
    }
}

/// One requested fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail before any output.
    Http(HttpFault),
    /// Send `after_tokens` tokens, then an exception.
    StreamException {
        exception: StreamException,
        after_tokens: u32,
    },
    /// Send `after_tokens` tokens, then nothing more.
    Stall { after_tokens: u32 },
    /// Send `after_tokens` tokens, then end the stream without its closing events.
    Cut { after_tokens: u32 },
    /// Send `after_tokens` tokens, then tear the connection down mid-body.
    Reset { after_tokens: u32 },
    /// Send `after_tokens` tokens, then a corrupt frame, then nothing more.
    Garbage { after_tokens: u32 },
    /// Reject a conversation that ends with an assistant message; answer others normally.
    RejectPrefill,
    /// Never answer, not even with headers.
    NoResponse,
    /// Answer nothing for `after_ms`, then close the connection without an answer.
    HangUp { after_ms: u32 },
    /// 429 `ThrottlingException` that asks the client to wait `wait_ms`.
    ThrottleWait { wait_ms: u32 },
    /// Answer normally, but without token counts.
    NoUsage,
    /// Answer normally, but only `first_token_ms` after the request.
    Slow { first_token_ms: u32 },
    /// Stream the answer and its stop event, then hang without the last frame.
    HangAfterStop,
}

/// A fault specification that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault `{0}`; see the fm-sim docs for the list (e.g. `throttle`, `stall@3`)")]
pub struct UnknownFault(pub String);

impl FromStr for Fault {
    type Err = UnknownFault;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownFault(spec.to_string());
        let (name, count) = match spec.split_once('@') {
            Some((name, count)) => (name, Some(count.parse::<u32>().map_err(|_| unknown())?)),
            None => (spec, None),
        };
        let after_tokens = count.unwrap_or(0);
        let stream = |exception| {
            Ok(Fault::StreamException {
                exception,
                after_tokens,
            })
        };
        let http = |fault| {
            if count.is_some() {
                Err(unknown())
            } else {
                Ok(Fault::Http(fault))
            }
        };
        match name {
            "throttle" => http(HttpFault::Throttle),
            "unavailable" => http(HttpFault::Unavailable),
            "internal" => http(HttpFault::Internal),
            "model-timeout" => http(HttpFault::ModelTimeout),
            "not-ready" => http(HttpFault::NotReady),
            "validation" => http(HttpFault::Validation),
            "not-found" => http(HttpFault::NotFound),
            "context-too-long" => http(HttpFault::ContextTooLong),
            "reject-prefill" if count.is_none() => Ok(Fault::RejectPrefill),
            "no-response" if count.is_none() => Ok(Fault::NoResponse),
            "no-usage" if count.is_none() => Ok(Fault::NoUsage),
            "hang-up" if count.is_some() => Ok(Fault::HangUp {
                after_ms: after_tokens,
            }),
            "throttle-wait" if count.is_some() => Ok(Fault::ThrottleWait {
                wait_ms: after_tokens,
            }),
            "hang-after-stop" if count.is_none() => Ok(Fault::HangAfterStop),
            "slow" if count.is_some() => Ok(Fault::Slow {
                first_token_ms: after_tokens,
            }),
            "stream-throttle" => stream(StreamException::Throttling),
            "stream-error" => stream(StreamException::ModelStreamError),
            "stream-internal" => stream(StreamException::InternalServer),
            "stream-unavailable" => stream(StreamException::ServiceUnavailable),
            "stream-validation" => stream(StreamException::Validation),
            "stall" => Ok(Fault::Stall { after_tokens }),
            "cut" => Ok(Fault::Cut { after_tokens }),
            "reset" => Ok(Fault::Reset { after_tokens }),
            "garbage" => Ok(Fault::Garbage { after_tokens }),
            _ => Err(unknown()),
        }
    }
}

/// The spec grammar: `to_string` and `parse` round-trip.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Http(fault) => write!(f, "{}", fault.spec_name()),
            Fault::StreamException {
                exception,
                after_tokens,
            } => write!(f, "{}@{after_tokens}", exception.spec_name()),
            Fault::Stall { after_tokens } => write!(f, "stall@{after_tokens}"),
            Fault::Cut { after_tokens } => write!(f, "cut@{after_tokens}"),
            Fault::Reset { after_tokens } => write!(f, "reset@{after_tokens}"),
            Fault::Garbage { after_tokens } => write!(f, "garbage@{after_tokens}"),
            Fault::RejectPrefill => write!(f, "reject-prefill"),
            Fault::NoResponse => write!(f, "no-response"),
            Fault::HangUp { after_ms } => write!(f, "hang-up@{after_ms}"),
            Fault::ThrottleWait { wait_ms } => write!(f, "throttle-wait@{wait_ms}"),
            Fault::NoUsage => write!(f, "no-usage"),
            Fault::Slow { first_token_ms } => write!(f, "slow@{first_token_ms}"),
            Fault::HangAfterStop => write!(f, "hang-after-stop"),
        }
    }
}

/// A fault, possibly limited to the first `limit` requests that ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpec {
    pub fault: Fault,
    pub limit: Option<u32>,
}

impl FromStr for FaultSpec {
    type Err = UnknownFault;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (fault, limit) = match spec.rsplit_once('*') {
            Some((fault, limit)) => (
                fault,
                Some(
                    limit
                        .parse::<u32>()
                        .map_err(|_| UnknownFault(spec.to_string()))?,
                ),
            ),
            None => (spec, None),
        };
        Ok(FaultSpec {
            fault: fault.parse()?,
            limit,
        })
    }
}

/// Splits a model id into the base id and the fault spec of its `~suffix`, if any.
pub fn split_model_id(model_id: &str) -> Result<(&str, Option<FaultSpec>), UnknownFault> {
    match model_id.split_once('~') {
        Some((base, spec)) => Ok((base, Some(spec.parse()?))),
        None => Ok((model_id, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_fault() {
        assert_eq!("throttle".parse(), Ok(Fault::Http(HttpFault::Throttle)));
        assert_eq!(
            "stream-error@4".parse(),
            Ok(Fault::StreamException {
                exception: StreamException::ModelStreamError,
                after_tokens: 4
            })
        );
        assert_eq!("stall@0".parse(), Ok(Fault::Stall { after_tokens: 0 }));
        assert_eq!("cut@9".parse(), Ok(Fault::Cut { after_tokens: 9 }));
        assert_eq!("garbage@1".parse(), Ok(Fault::Garbage { after_tokens: 1 }));
        assert!("throttle@3".parse::<Fault>().is_err());
        assert!("stall@x".parse::<Fault>().is_err());
        assert!("melt".parse::<Fault>().is_err());
        assert_eq!(
            "slow@1500".parse(),
            Ok(Fault::Slow {
                first_token_ms: 1500
            })
        );
        assert!("slow".parse::<Fault>().is_err());
        assert_eq!("reset@2".parse(), Ok(Fault::Reset { after_tokens: 2 }));
        assert_eq!(
            "hang-up@15000".parse(),
            Ok(Fault::HangUp { after_ms: 15000 })
        );
        assert_eq!(
            "throttle-wait@2000".parse(),
            Ok(Fault::ThrottleWait { wait_ms: 2000 })
        );
        assert!("hang-up".parse::<Fault>().is_err());
        assert!("throttle-wait".parse::<Fault>().is_err());
        assert!("no-usage@1".parse::<Fault>().is_err());
        assert_eq!("no-response".parse(), Ok(Fault::NoResponse));
        assert_eq!("reject-prefill".parse(), Ok(Fault::RejectPrefill));
        assert_eq!(
            "context-too-long".parse(),
            Ok(Fault::Http(HttpFault::ContextTooLong))
        );
    }

    #[test]
    fn specs_round_trip_through_display() {
        for spec in [
            "throttle",
            "context-too-long",
            "stream-throttle@2",
            "stream-validation@0",
            "stall@3",
            "cut@1",
            "garbage@7",
            "reject-prefill",
            "no-response",
            "slow@250",
            "hang-after-stop",
            "reset@4",
            "hang-up@1500",
            "throttle-wait@2000",
            "no-usage",
        ] {
            let fault: Fault = spec.parse().unwrap();
            assert_eq!(fault.to_string(), spec);
        }
    }

    #[test]
    fn splits_model_ids() {
        assert_eq!(split_model_id("m").unwrap(), ("m", None));
        assert_eq!(
            split_model_id("m~not-found").unwrap(),
            (
                "m",
                Some(FaultSpec {
                    fault: Fault::Http(HttpFault::NotFound),
                    limit: None
                })
            )
        );
        assert_eq!(
            split_model_id("m~stall@2*3").unwrap().1,
            Some(FaultSpec {
                fault: Fault::Stall { after_tokens: 2 },
                limit: Some(3)
            })
        );
        assert!(split_model_id("m~nope").is_err());
        assert!(split_model_id("m~throttle*x").is_err());
    }
}
