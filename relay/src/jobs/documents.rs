//! A job's document as text: plain text and Markdown as written (UTF-8), HTML through
//! `html2text`, PDF through `pdf-extract` (a PDF without a text layer is an error of its own) —
//! and the text split into pieces one model call can read, on paragraph boundaries.

use fm_protocol::DocumentFormat;

use crate::error::{DocumentError, RelayError};

/// The width HTML is laid out at as text (long enough that sentences stay whole).
const HTML_WIDTH: usize = 120;

/// The text of `bytes` written in `format`.
pub fn extract_text(format: DocumentFormat, bytes: &[u8]) -> Result<String, RelayError> {
    let unreadable = |source: Box<dyn std::error::Error + Send + Sync>| {
        RelayError::Document(DocumentError::Unreadable {
            format: format.as_str(),
            source,
        })
    };
    let text = match format {
        DocumentFormat::Text | DocumentFormat::Markdown => {
            let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            std::str::from_utf8(bytes)
                .map_err(|err| unreadable(Box::new(err)))?
                .to_string()
        }
        DocumentFormat::Html => {
            html2text::from_read(bytes, HTML_WIDTH).map_err(|err| unreadable(Box::new(err)))?
        }
        DocumentFormat::Pdf => {
            let text = pdf_extract::extract_text_from_mem(bytes)
                .map_err(|err| unreadable(Box::new(err)))?;
            if text.trim().is_empty() {
                return Err(RelayError::Document(DocumentError::NoTextLayer));
            }
            text
        }
    };
    if text.trim().is_empty() {
        return Err(RelayError::Document(DocumentError::Empty));
    }
    Ok(text)
}

/// `text` in pieces of at most `max_chars` characters: whole paragraphs (split at blank lines)
/// gathered while they fit; a paragraph longer than a piece is cut at line ends, then at
/// sentence ends, then anywhere.
pub fn split(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        for part in cut(paragraph, max_chars) {
            let chars = part.chars().count();
            if current_chars > 0 && current_chars + 2 + chars > max_chars {
                pieces.push(std::mem::take(&mut current));
                current_chars = 0;
            }
            if current_chars > 0 {
                current.push_str("\n\n");
                current_chars += 2;
            }
            current.push_str(part);
            current_chars += chars;
        }
    }
    if current_chars > 0 {
        pieces.push(current);
    }
    pieces
}

/// `paragraph` in parts of at most `max_chars` characters, cut where it reads best.
fn cut(paragraph: &str, max_chars: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = paragraph;
    while rest.chars().count() > max_chars {
        let limit = rest
            .char_indices()
            .nth(max_chars)
            .map_or(rest.len(), |(at, _)| at);
        let window = &rest[..limit];
        let at = ["\n", ". ", "? ", "! ", "; ", ", ", " "]
            .iter()
            .find_map(|mark| {
                window
                    .rfind(mark)
                    .filter(|&at| at > 0)
                    .map(|at| at + mark.len())
            })
            .unwrap_or(limit);
        let (part, after) = rest.split_at(at);
        parts.push(part.trim_end());
        rest = after.trim_start();
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_gathered_while_they_fit_and_long_ones_are_cut() {
        let text = "One.\n\nTwo two.\n\n\n\nThree three three.";
        assert_eq!(split(text, 100), ["One.\n\nTwo two.\n\nThree three three."]);
        assert_eq!(
            split(text, 14),
            ["One.\n\nTwo two.", "Three three", "three."]
        );
        let long = "A sentence here. Another one there. And a third.";
        let pieces = split(long, 20);
        assert!(pieces.iter().all(|p| p.chars().count() <= 20), "{pieces:?}");
        assert_eq!(pieces.join(" "), long);
        // No break at all: cut anywhere, nothing lost.
        assert_eq!(split("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert!(split(" \n\n ", 10).is_empty());
    }

    #[test]
    fn formats_are_read_or_refused_clearly() {
        assert_eq!(
            extract_text(DocumentFormat::Text, b"\xEF\xBB\xBFhello").unwrap(),
            "hello"
        );
        let html = extract_text(
            DocumentFormat::Html,
            b"<html><body><h1>Title</h1><p>Some <b>bold</b> text.</p><script>x()</script></body></html>",
        )
        .unwrap();
        assert!(
            html.contains("Title") && html.contains("Some") && html.contains("text."),
            "{html}"
        );
        assert!(matches!(
            extract_text(DocumentFormat::Text, b"  \n "),
            Err(RelayError::Document(DocumentError::Empty))
        ));
        assert!(matches!(
            extract_text(DocumentFormat::Text, b"\xff\xfe\xfa"),
            Err(RelayError::Document(DocumentError::Unreadable { .. }))
        ));
        assert!(matches!(
            extract_text(DocumentFormat::Pdf, b"not a pdf"),
            Err(RelayError::Document(DocumentError::Unreadable { .. }))
        ));
    }
}
