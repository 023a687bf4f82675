//! From what the editor shows to a [`ChatRequest`]: the question, the selected code, a bounded
//! excerpt of the lines around it, the language and the file's path, framed by a code-assistant
//! system prompt for the task ([`Task`]: ask about the selection, fix it, or complete the code at
//! the cursor). The request is validated with the same `fm_protocol` function the relay runs,
//! before anything is sent; a context the assistant cannot use is an [`IdeError::Invalid`]
//! naming the editor field (`question`, `selection`, `prefix`, …).

use fm_protocol::{ChatRequest, Message};
use serde::Deserialize;

use crate::error::IdeError;

/// Lines of the file kept above and below the selection.
pub const CONTEXT_LINES: usize = 30;
/// Most characters of the excerpt around the selection (lines farthest from it go first).
pub const MAX_EXCERPT_CHARS: usize = 8_000;
/// Most characters of the selection itself.
pub const MAX_SELECTION_CHARS: usize = 40_000;
/// Most characters of the code before and after the cursor a completion reads.
pub const MAX_COMPLETION_CONTEXT_CHARS: usize = 4_000;
/// The answer's default length for questions and fixes, and for completions.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
pub const COMPLETION_MAX_TOKENS: u32 = 128;

/// What the assistant is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Answer `question` about the selection (or the file, when nothing is selected).
    Ask,
    /// Return the selection fixed, as one code block, and say what changed.
    Fix,
    /// The code that goes at the cursor, between `prefix` and `suffix` (inline suggestions).
    Complete,
}

/// What the editor knows, as the extension sends it (camelCase JSON).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EditorContext {
    pub task: Option<Task>,
    /// The user's question (`ask`); extra instructions (`fix`).
    #[serde(default)]
    pub question: String,
    /// The selected text.
    #[serde(default)]
    pub selection: String,
    /// The whole document, for the excerpt around the selection.
    #[serde(default)]
    pub file_text: String,
    /// The selection's first and last lines (0-based, inclusive) in `file_text`.
    pub selection_start_line: Option<usize>,
    pub selection_end_line: Option<usize>,
    /// `complete`: the document's text before and after the cursor.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub suffix: String,
    /// The editor's language id (`rust`, `typescript`, …): the code fences' language.
    #[serde(default)]
    pub language: String,
    /// The file's path in the workspace.
    #[serde(default)]
    pub path: String,
    /// A relay model id; the relay routes when absent.
    pub model: Option<String>,
    /// A routing hint (`fast`, `balanced`, `quality`, or one the relay's rules name).
    pub routing_hint: Option<String>,
    pub max_tokens: Option<u32>,
}

const ASK_PROMPT: &str = "You are a code assistant in the user's editor. Answer the question \
    about the selected code precisely and briefly. Show code in fenced code blocks marked with \
    their language, each block complete enough to paste.";
const FIX_PROMPT: &str = "You are a code assistant in the user's editor. Fix the selected code. \
    Answer with the corrected code first, as one fenced code block marked with its language that \
    replaces the whole selection, then say briefly what was wrong and what changed.";
const COMPLETE_PROMPT: &str = "You complete code in the user's editor. Answer with only the code \
    that goes at the cursor, with no explanation and no code fences.";

impl EditorContext {
    /// The validated request for this context.
    pub fn to_request(&self) -> Result<ChatRequest, IdeError> {
        let task = self.task.unwrap_or(Task::Ask);
        let (system, content, default_max_tokens) = match task {
            Task::Ask => {
                require("question", &self.question, "ask a question")?;
                (ASK_PROMPT, self.framed(&self.question)?, DEFAULT_MAX_TOKENS)
            }
            Task::Fix => {
                require("selection", &self.selection, "select the code to fix")?;
                let ask = match self.question.trim() {
                    "" => "Fix this code.",
                    extra => extra,
                };
                (FIX_PROMPT, self.framed(ask)?, DEFAULT_MAX_TOKENS)
            }
            Task::Complete => (COMPLETE_PROMPT, self.completion()?, COMPLETION_MAX_TOKENS),
        };
        let request = ChatRequest {
            messages: vec![Message::user(content)],
            system: Some(system.to_string()),
            model: self.model.clone().filter(|m| !m.is_empty()),
            routing_hint: self.routing_hint.clone().filter(|h| !h.is_empty()),
            max_tokens: Some(self.max_tokens.unwrap_or(default_max_tokens)),
            ..ChatRequest::default()
        };
        // The relay knows its models; a client cannot, and leaves that check to it.
        fm_protocol::validate_chat_request(&request, |_| true)?;
        Ok(request)
    }

    /// The file, the excerpt around the selection, the selection, and `ask`.
    fn framed(&self, ask: &str) -> Result<String, IdeError> {
        let selection_chars = self.selection.chars().count();
        if selection_chars > MAX_SELECTION_CHARS {
            return Err(IdeError::Invalid {
                field: "selection".into(),
                message: format!(
                    "at most {MAX_SELECTION_CHARS} characters, got {selection_chars}: select less"
                ),
            });
        }
        let mut content = String::new();
        if !self.path.is_empty() || !self.language.is_empty() {
            content.push_str(&format!("File: {} ({})\n\n", self.path, self.language));
        }
        if let Some((first, last, excerpt)) = self.excerpt() {
            content.push_str(&format!(
                "The code around the selection (lines {}–{}):\n{}\n",
                first + 1,
                last + 1,
                self.fenced(&excerpt)
            ));
        }
        if !self.selection.trim().is_empty() {
            let lines = match (self.selection_start_line, self.selection_end_line) {
                (Some(start), Some(end)) => format!(" (lines {}–{})", start + 1, end + 1),
                _ => String::new(),
            };
            content.push_str(&format!(
                "The selected code{lines}:\n{}\n",
                self.fenced(&self.selection)
            ));
        }
        content.push_str(ask.trim());
        Ok(content)
    }

    /// The lines around the selection, at most [`CONTEXT_LINES`] on each side and
    /// [`MAX_EXCERPT_CHARS`] in all (the lines farthest from the selection dropped first):
    /// `(first line, last line, text)`, or `None` without a file or a selection's lines.
    fn excerpt(&self) -> Option<(usize, usize, String)> {
        let lines: Vec<&str> = self.file_text.lines().collect();
        let start = self.selection_start_line?;
        let end = self.selection_end_line.unwrap_or(start).max(start);
        if lines.is_empty() || start >= lines.len() {
            return None;
        }
        let end = end.min(lines.len() - 1);
        let mut first = start.saturating_sub(CONTEXT_LINES);
        let mut last = (end + CONTEXT_LINES).min(lines.len() - 1);
        let chars = |from: usize, to: usize| -> usize {
            lines[from..=to].iter().map(|l| l.chars().count() + 1).sum()
        };
        while chars(first, last) > MAX_EXCERPT_CHARS && (first < start || last > end) {
            // Drop the line farther from the selection.
            if start - first >= last - end && first < start {
                first += 1;
            } else if last > end {
                last -= 1;
            } else {
                first += 1;
            }
        }
        if chars(first, last) > MAX_EXCERPT_CHARS {
            // The selection's own lines are too long for an excerpt: the selection says it all.
            return None;
        }
        Some((first, last, lines[first..=last].join("\n")))
    }

    /// `code` in a fence that none of its own lines can close.
    fn fenced(&self, code: &str) -> String {
        let longest_run = code
            .lines()
            .map(|line| line.trim_start().chars().take_while(|c| *c == '`').count())
            .max()
            .unwrap_or(0);
        let fence = "`".repeat(longest_run.max(2) + 1);
        format!(
            "{fence}{}\n{}\n{fence}",
            self.language,
            code.trim_end_matches('\n')
        )
    }

    /// `complete`: the code before and after the cursor, the nearest
    /// [`MAX_COMPLETION_CONTEXT_CHARS`] of each.
    fn completion(&self) -> Result<String, IdeError> {
        require(
            "prefix",
            &self.prefix,
            "there is no code before the cursor to continue",
        )?;
        let before: Vec<char> = self.prefix.chars().collect();
        let before: String = before[before.len().saturating_sub(MAX_COMPLETION_CONTEXT_CHARS)..]
            .iter()
            .collect();
        let after: String = self
            .suffix
            .chars()
            .take(MAX_COMPLETION_CONTEXT_CHARS)
            .collect();
        Ok(format!(
            "File: {} ({})\nThe code before the cursor:\n{}\nThe code after the cursor:\n{}\n\
             Write the code that goes at the cursor.",
            self.path,
            self.language,
            self.fenced(&before),
            self.fenced(&after)
        ))
    }
}

/// `text` must not be blank; `what` tells the user what to do instead.
fn require(field: &str, text: &str, what: &str) -> Result<(), IdeError> {
    if text.trim().is_empty() {
        return Err(IdeError::Invalid {
            field: field.into(),
            message: format!("is empty: {what}"),
        });
    }
    Ok(())
}

/// Reads the editor context (JSON) and builds its request.
pub fn request_for(context_json: &str) -> Result<ChatRequest, IdeError> {
    let context: EditorContext =
        serde_json::from_str(context_json).map_err(|err| IdeError::Invalid {
            field: "context".into(),
            message: format!("is not an editor context: {err}"),
        })?;
    context.to_request()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(lines: usize) -> String {
        (0..lines)
            .map(|n| format!("let line_{n} = {n};"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_question_frames_the_selection_and_the_lines_around_it() {
        let context = EditorContext {
            task: Some(Task::Ask),
            question: "What does this do?".into(),
            selection: "let line_50 = 50;".into(),
            file_text: file(200),
            selection_start_line: Some(50),
            selection_end_line: Some(50),
            language: "rust".into(),
            path: "src/main.rs".into(),
            routing_hint: Some("fast".into()),
            ..EditorContext::default()
        };
        let request = context.to_request().unwrap();
        let content = &request.messages[0].content;
        assert!(content.starts_with("File: src/main.rs (rust)"), "{content}");
        assert!(content.contains("(lines 21–81)"), "{content}");
        assert!(content.contains("let line_20 = 20;") && !content.contains("let line_19 ="));
        assert!(
            content.contains("The selected code (lines 51–51):\n```rust\nlet line_50 = 50;\n```")
        );
        assert!(content.ends_with("What does this do?"));
        assert_eq!(request.routing_hint.as_deref(), Some("fast"));
        assert!(request.system.unwrap().contains("code assistant"));
    }

    #[test]
    fn the_excerpt_is_bounded_and_drops_the_farthest_lines_first() {
        let long_lines: String = (0..100)
            .map(|n| format!("{n:03} {}", "x".repeat(300)))
            .collect::<Vec<_>>()
            .join("\n");
        let context = EditorContext {
            question: "Why?".into(),
            selection: "050".into(),
            file_text: long_lines,
            selection_start_line: Some(50),
            selection_end_line: Some(50),
            ..EditorContext::default()
        };
        let (first, last, excerpt) = context.excerpt().unwrap();
        assert!(excerpt.chars().count() <= MAX_EXCERPT_CHARS);
        assert!(first <= 50 && last >= 50 && (50 - first).abs_diff(last - 50) <= 1);
        context.to_request().unwrap();
    }

    #[test]
    fn unusable_contexts_name_the_field() {
        let field = |context: EditorContext| match context.to_request() {
            Err(IdeError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(EditorContext::default()), "question");
        let fix = EditorContext {
            task: Some(Task::Fix),
            ..EditorContext::default()
        };
        assert_eq!(field(fix), "selection");
        let complete = EditorContext {
            task: Some(Task::Complete),
            ..EditorContext::default()
        };
        assert_eq!(field(complete), "prefix");
        let huge = EditorContext {
            question: "?".into(),
            selection: "x".repeat(MAX_SELECTION_CHARS + 1),
            ..EditorContext::default()
        };
        assert_eq!(field(huge), "selection");
        let too_long = EditorContext {
            question: "?".into(),
            max_tokens: Some(100_000),
            ..EditorContext::default()
        };
        assert_eq!(field(too_long), "max_tokens");
        assert!(matches!(
            request_for(r#"{"question": "x", "colour": "red"}"#),
            Err(IdeError::Invalid { field, .. }) if field == "context"
        ));
    }

    #[test]
    fn a_selection_with_fences_gets_a_longer_fence_and_a_completion_reads_both_sides() {
        let context = EditorContext {
            task: Some(Task::Fix),
            selection: "```\nnot closed by this\n```".into(),
            language: "markdown".into(),
            ..EditorContext::default()
        };
        let content = context.to_request().unwrap().messages[0].content.clone();
        assert!(
            content.contains("````markdown\n```\nnot closed by this\n```\n````"),
            "{content}"
        );
        assert!(content.ends_with("Fix this code."));

        let complete = EditorContext {
            task: Some(Task::Complete),
            prefix: format!("{}fn main() {{\n    let x = ", "a".repeat(10_000)),
            suffix: ";\n}\n".into(),
            language: "rust".into(),
            ..EditorContext::default()
        };
        let request = complete.to_request().unwrap();
        assert_eq!(request.max_tokens, Some(COMPLETION_MAX_TOKENS));
        let content = &request.messages[0].content;
        assert!(
            content.contains("fn main() {\n    let x = \n```"),
            "{content}"
        );
        assert!(content.chars().count() < 2 * MAX_COMPLETION_CONTEXT_CHARS + 500);
    }
}
