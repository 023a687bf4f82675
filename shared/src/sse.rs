//! Server-Sent Events: an incremental decoder that accepts the byte stream split anywhere (inside
//! a line, a CRLF pair or a UTF-8 character), and the encoder the relay writes with.
//!
//! The decoder follows the WHATWG "event stream interpretation" rules: lines end in CRLF, LF or
//! CR; a line starting with `:` is a comment (the relay's keep-alives); `event`, `data` and `id`
//! fields accumulate until a blank line dispatches them; several `data` lines join with `\n`; a
//! leading byte-order mark is dropped; an event still open when the stream ends is discarded.
//!
//! What the decoder holds is bounded: an event (its unfinished line, data and name) that grows
//! past [`SseDecoder::max_event_bytes`] without being dispatched fails the stream with
//! [`EventTooLarge`] (an endless line from a broken or hostile server would otherwise grow
//! without end), and every later chunk fails the same way.

use crate::event::StreamEvent;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The `event:` field, or `"message"` when the event had none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen in the stream so far, if any.
    pub id: Option<String>,
}

impl SseFrame {
    /// Decodes the frame's data as a [`StreamEvent`].
    pub fn stream_event(&self) -> Result<StreamEvent, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}

/// An SSE event grew past the decoder's bound without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge {
    /// The decoder's bound, [`SseDecoder::max_event_bytes`].
    pub limit: usize,
}

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an event of the stream grew past {} bytes without ending",
            self.limit
        )
    }
}

impl std::error::Error for EventTooLarge {}

/// The bound of [`SseDecoder::new`]: 1 MiB, the relay's largest request body; no event the relay
/// or an upstream model sends comes near it.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The incremental decoder. Feed it chunks as they arrive with [`SseDecoder::feed`].
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of a line whose terminator has not arrived yet.
    line: Vec<u8>,
    /// The previous chunk ended in CR, so an LF at the start of the next one is its pair.
    after_cr: bool,
    /// Whether the stream's first bytes (and a possible BOM) have been seen.
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    max_event_bytes: usize,
    /// An event outgrew the bound: the stream is over.
    failed: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseDecoder {
    /// A decoder whose events may hold up to [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder whose events may hold up to `max_event_bytes` (an unfinished line, the data
    /// lines and the event name together).
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            after_cr: false,
            started: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            max_event_bytes,
            failed: false,
        }
    }

    /// The bound on what one event may hold while it is read.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Consumes the next chunk of the stream and returns the events it completed, in order; an
    /// error once an event outgrew the bound (then and for every later chunk).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseFrame>, EventTooLarge> {
        let too_large = EventTooLarge {
            limit: self.max_event_bytes,
        };
        if self.failed {
            return Err(too_large);
        }
        let mut frames = Vec::new();
        let mut rest = chunk;
        if !self.started {
            // Hold back a partial BOM until we know whether it is one.
            self.line.extend_from_slice(rest);
            if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
                return Ok(frames);
            }
            self.started = true;
            let pending = std::mem::take(&mut self.line);
            let body = pending.strip_prefix(BOM).unwrap_or(&pending);
            self.scan(body, &mut frames);
        } else {
            if self.after_cr && !rest.is_empty() {
                self.after_cr = false;
                if let Some(stripped) = rest.strip_prefix(b"\n") {
                    rest = stripped;
                }
            }
            self.scan(rest, &mut frames);
        }
        let held = self.line.len() + self.data.len() + self.event.len();
        if held > self.max_event_bytes {
            // Let go of what the event held: nothing more is read from this stream.
            self.failed = true;
            self.line = Vec::new();
            self.data = String::new();
            self.event = String::new();
            return Err(too_large);
        }
        Ok(frames)
    }

    fn scan(&mut self, mut bytes: &[u8], frames: &mut Vec<SseFrame>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let terminator = bytes[end];
            if self.line.is_empty() {
                self.process_line(&bytes[..end], frames);
            } else {
                self.line.extend_from_slice(&bytes[..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, frames);
            }
            bytes = &bytes[end + 1..];
            if terminator == b'\r' {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(bytes);
    }

    fn process_line(&mut self, line: &[u8], frames: &mut Vec<SseFrame>) {
        if line.is_empty() {
            self.dispatch(frames);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            // `retry` and unknown fields are ignored, as the standard says.
            _ => {}
        }
    }

    fn dispatch(&mut self, frames: &mut Vec<SseFrame>) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return;
        }
        self.has_data = false;
        frames.push(SseFrame {
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        });
    }
}

/// Encodes one event: an `event:` line (omitted when `event` is empty), one `data:` line per line
/// of `data` (any of CRLF, CR or LF separates lines), and the blank line that dispatches it.
pub fn encode_sse_frame(event: &str, data: &str) -> String {
    let mut out = String::with_capacity(event.len() + data.len() + 16);
    if !event.is_empty() {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields_comments_and_multiline_data() {
        let mut decoder = SseDecoder::new();
        let frames = decoder
            .feed(b": keep-alive\n\nevent: a\ndata: one\ndata:two\nid: 7\n\ndata\n\n")
            .unwrap();
        assert_eq!(
            frames,
            vec![
                SseFrame {
                    event: "a".into(),
                    data: "one\ntwo".into(),
                    id: Some("7".into())
                },
                SseFrame {
                    event: "message".into(),
                    data: String::new(),
                    id: Some("7".into())
                },
            ]
        );
    }

    #[test]
    fn handles_cr_lf_split_across_chunks_and_bom() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"\xEF\xBB").unwrap().is_empty());
        assert!(decoder.feed(b"\xBFdata: x\r").unwrap().is_empty());
        assert!(decoder.feed(b"\n").unwrap().is_empty());
        let frames = decoder.feed(b"\r\n").unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, "x");
    }

    #[test]
    fn an_empty_chunk_between_cr_and_lf_changes_nothing() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"event: a\r").unwrap().is_empty());
        assert!(decoder.feed(b"").unwrap().is_empty());
        let frames = decoder.feed(b"\ndata: x\r\n\r\n").unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].event, "a");
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"data: partial\n").unwrap().is_empty());
    }

    #[test]
    fn an_event_past_the_bound_fails_the_stream() {
        let mut decoder = SseDecoder::with_max_event_bytes(16);
        assert_eq!(decoder.feed(b"data: 0123456789\n\n").unwrap().len(), 1);
        // A line that never ends, in small pieces.
        assert!(decoder.feed(b"data: 01234").unwrap().is_empty());
        assert_eq!(
            decoder.feed(b"56789abcdef"),
            Err(EventTooLarge { limit: 16 })
        );
        assert_eq!(
            decoder.feed(b"\n\n"),
            Err(EventTooLarge { limit: 16 }),
            "the stream stays failed"
        );
        // Many data lines of one event count together.
        let mut decoder = SseDecoder::with_max_event_bytes(16);
        assert!(decoder.feed(b"data: 01234567\ndata: 01234567\n").is_err());
    }

    #[test]
    fn encoder_splits_lines() {
        assert_eq!(
            encode_sse_frame("e", "a\r\nb\rc\nd"),
            "event: e\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(encode_sse_frame("", ""), "data: \n\n");
    }
}
