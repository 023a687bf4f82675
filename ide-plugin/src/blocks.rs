//! A streamed Markdown answer read into prose and fenced code blocks as it arrives, for panels
//! that offer "insert" or "replace selection" on a code block the moment it is complete.
//!
//! [`BlockReader::push`] takes the text in pieces split anywhere (inside a word, a fence, a
//! UTF-8 character's JSON escape is already decoded by then). Whole lines are read as they end;
//! the line still arriving is shown in the open block at once — except a line that may yet turn
//! out to be a closing fence (only backticks or tildes so far), which is held back so that a
//! fence never flashes in a code block. A code block is `complete` when its closing fence has
//! arrived; an answer that ends inside one (cut at `max_tokens`) leaves it incomplete, so a
//! truncated block is never offered as whole. Fences follow CommonMark: up to three spaces of
//! indent, three or more backticks or tildes, closed by at least as many of the same; the info
//! string's first word is the language.

use serde::Serialize;

/// What a block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Prose,
    Code,
}

/// One block of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    pub kind: BlockKind,
    /// A code block's language, from its fence's info string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Prose as written; code without its fences (each line ending in a newline).
    pub text: String,
    /// No more text will be added: the code block's closing fence arrived, or the prose was
    /// followed by a code block or the end of the answer.
    pub complete: bool,
}

/// An open fence: its character and length.
#[derive(Debug, Clone, Copy)]
struct Fence {
    marker: char,
    len: usize,
}

/// Reads an answer's text into [`Block`]s as it streams in.
#[derive(Debug, Default)]
pub struct BlockReader {
    blocks: Vec<Block>,
    /// The line still arriving (no newline yet).
    line: String,
    fence: Option<Fence>,
    /// The index of the first block changed since [`take_changed`](Self::take_changed).
    changed_from: Option<usize>,
    finished: bool,
}

impl BlockReader {
    pub fn new() -> BlockReader {
        BlockReader::default()
    }

    /// Reads the next piece of the answer.
    pub fn push(&mut self, text: &str) {
        let mut rest = text;
        while let Some(newline) = rest.find('\n') {
            self.line.push_str(&rest[..newline]);
            let line = std::mem::take(&mut self.line);
            self.read_line(&line);
            rest = &rest[newline + 1..];
        }
        self.line.push_str(rest);
        if !self.line.is_empty() {
            self.mark(self.blocks.len().saturating_sub(1));
        }
    }

    /// The answer ended: the last line is read, prose is complete; a code block still open stays
    /// incomplete.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.read_line(&line);
            // The last line had no newline: the text does not get one either.
            if let Some(last) = self.blocks.last_mut()
                && last.kind == BlockKind::Prose
            {
                last.text.pop();
            }
        }
        if let Some(last) = self.blocks.last_mut()
            && last.kind == BlockKind::Prose
        {
            last.complete = true;
        }
        self.finished = true;
        self.mark(self.blocks.len().saturating_sub(1));
    }

    /// Drops everything read (a failover that restarts the answer).
    pub fn clear(&mut self) {
        *self = BlockReader::default();
    }

    /// The blocks as they stand, the line still arriving included where it is safe to show.
    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = self.blocks.clone();
        self.show_pending_line(&mut blocks);
        blocks
    }

    /// The blocks changed since the last call, with their indexes, as they stand now.
    pub fn take_changed(&mut self) -> Vec<(usize, Block)> {
        let Some(from) = self.changed_from.take() else {
            return Vec::new();
        };
        self.blocks().into_iter().enumerate().skip(from).collect()
    }

    fn mark(&mut self, index: usize) {
        self.changed_from = Some(self.changed_from.map_or(index, |from| from.min(index)));
    }

    fn show_pending_line(&self, blocks: &mut Vec<Block>) {
        if self.line.is_empty() || self.finished {
            return;
        }
        match self.fence {
            Some(fence) => {
                // Up to three spaces, the fence's character, then nothing but spaces so far.
                let trimmed = self.line.trim_start_matches(' ');
                let run = trimmed.len() - trimmed.trim_start_matches(fence.marker).len();
                let may_close =
                    self.line.len() - trimmed.len() <= 3 && trimmed[run..].trim().is_empty();
                if !may_close && let Some(code) = blocks.last_mut() {
                    code.text.push_str(&self.line);
                }
            }
            None => {
                // A line that may become an opening fence is held back too: fence characters
                // so far, or a fence whose info string is still arriving.
                let trimmed = self.line.trim_start_matches(' ');
                let may_open = opens(&self.line).is_some()
                    || (self.line.len() - trimmed.len() <= 3
                        && !trimmed.is_empty()
                        && trimmed.chars().all(|c| c == '`' || c == '~'));
                if may_open {
                    return;
                }
                match blocks.last_mut() {
                    Some(prose) if prose.kind == BlockKind::Prose => {
                        prose.text.push_str(&self.line)
                    }
                    _ => blocks.push(Block {
                        kind: BlockKind::Prose,
                        language: None,
                        text: self.line.clone(),
                        complete: false,
                    }),
                }
            }
        }
    }

    fn read_line(&mut self, line: &str) {
        let last = self.blocks.len().saturating_sub(1);
        match self.fence {
            Some(open) => {
                if closes(line, open) {
                    self.fence = None;
                    if let Some(code) = self.blocks.last_mut() {
                        code.complete = true;
                    }
                } else if let Some(code) = self.blocks.last_mut() {
                    code.text.push_str(line);
                    code.text.push('\n');
                }
                self.mark(last);
            }
            None => match opens(line) {
                Some((fence, language)) => {
                    if let Some(prose) = self.blocks.last_mut() {
                        prose.complete = true;
                    }
                    self.mark(last);
                    self.fence = Some(fence);
                    self.blocks.push(Block {
                        kind: BlockKind::Code,
                        language,
                        text: String::new(),
                        complete: false,
                    });
                    self.mark(self.blocks.len() - 1);
                }
                None => {
                    match self.blocks.last_mut() {
                        Some(prose) if prose.kind == BlockKind::Prose => {
                            prose.text.push_str(line);
                            prose.text.push('\n');
                        }
                        _ => self.blocks.push(Block {
                            kind: BlockKind::Prose,
                            language: None,
                            text: format!("{line}\n"),
                            complete: false,
                        }),
                    }
                    self.mark(self.blocks.len() - 1);
                }
            },
        }
    }
}

/// The fence `line` opens, with its language.
fn opens(line: &str) -> Option<(Fence, Option<String>)> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = trimmed.chars().take_while(|c| *c == marker).count();
    if len < 3 {
        return None;
    }
    let info = trimmed[len..].trim();
    // A backtick fence's info string has no backticks (else it is inline code).
    if marker == '`' && info.contains('`') {
        return None;
    }
    let language = info.split_whitespace().next().map(str::to_string);
    Some((Fence { marker, len }, language))
}

/// Whether `line` closes `fence`.
fn closes(line: &str, fence: Fence) -> bool {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return false;
    }
    let len = trimmed.chars().take_while(|c| *c == fence.marker).count();
    len >= fence.len && trimmed[len..].trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = "Here is the fix:\n\n```rust\nfn main() {\n    println!(\"ü\");\n}\n```\n\nIt prints `ü`.\n~~~\nraw ``` inside\n~~~~\nThe end";

    fn read(pieces: &[&str]) -> Vec<Block> {
        let mut reader = BlockReader::new();
        for piece in pieces {
            reader.push(piece);
        }
        reader.finish();
        reader.blocks()
    }

    #[test]
    fn prose_and_code_blocks_with_their_languages() {
        let blocks = read(&[SAMPLE]);
        let kinds: Vec<_> = blocks
            .iter()
            .map(|b| (b.kind, b.language.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                (BlockKind::Prose, None),
                (BlockKind::Code, Some("rust")),
                (BlockKind::Prose, None),
                (BlockKind::Code, None),
                (BlockKind::Prose, None),
            ]
        );
        assert_eq!(blocks[1].text, "fn main() {\n    println!(\"ü\");\n}\n");
        assert_eq!(blocks[3].text, "raw ``` inside\n");
        assert_eq!(blocks[4].text, "The end");
        assert!(blocks.iter().all(|b| b.complete));
    }

    #[test]
    fn every_split_of_the_stream_reads_the_same() {
        let whole = read(&[SAMPLE]);
        for (at, _) in SAMPLE.char_indices().skip(1) {
            assert_eq!(
                read(&[&SAMPLE[..at], &SAMPLE[at..]]),
                whole,
                "split at {at}"
            );
        }
        let chars: Vec<String> = SAMPLE.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(read(&pieces), whole);
    }

    /// Markdown-ish text: fences of both kinds and lengths, info strings, indents, line ends.
    #[cfg(not(target_arch = "wasm32"))]
    fn markdown() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just("```"),
            Just("````"),
            Just("~~~"),
            Just("`"),
            Just("~"),
            Just("rust"),
            Just(" "),
            Just("   "),
            Just("    "),
            Just("\n"),
            Just("\n\n"),
            Just("ü"),
            Just("a"),
            Just("\t"),
            Just("\r"),
        ];
        proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest::proptest! {
        #[test]
        fn any_markdown_split_anywhere_reads_as_it_does_whole(
            text in markdown(),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..16),
        ) {
            let whole = read(&[&text]);
            let mut cuts: Vec<usize> = cuts
                .into_iter()
                .map(|cut| cut % (text.len() + 1))
                .filter(|cut| text.is_char_boundary(*cut))
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts {
                pieces.push(&text[start..cut]);
                start = cut;
            }
            pieces.push(&text[start..]);
            let mut reader = BlockReader::new();
            for piece in &pieces {
                reader.push(piece);
                let count = reader.blocks().len();
                for (index, _) in reader.take_changed() {
                    proptest::prop_assert!(index < count);
                }
            }
            reader.finish();
            proptest::prop_assert_eq!(reader.blocks(), whole);
        }
    }

    #[test]
    fn a_block_is_complete_only_once_its_fence_closed_and_never_shows_a_fence() {
        let mut reader = BlockReader::new();
        let mut seen_complete: Vec<Block> = Vec::new();
        for c in SAMPLE.chars() {
            reader.push(&c.to_string());
            // Neither in code nor in prose, not even while its line is arriving.
            for block in reader.blocks() {
                let fence_line = block.text.split('\n').any(|line| {
                    let line = line.trim_start();
                    line.starts_with("``") || line.starts_with("~~")
                });
                assert!(!fence_line, "a fence shown: {block:?}");
            }
            // Once complete, a block never changes.
            for done in &seen_complete {
                assert!(reader.blocks().contains(done), "{done:?} changed");
            }
            seen_complete = reader.blocks().into_iter().filter(|b| b.complete).collect();
        }
        let mut cut = BlockReader::new();
        cut.push("Start:\n```python\nprint(1)\n");
        cut.finish();
        let blocks = cut.blocks();
        assert_eq!(blocks[1].text, "print(1)\n");
        assert!(
            !blocks[1].complete,
            "an answer cut inside a code block leaves it incomplete"
        );
    }

    #[test]
    fn changes_are_reported_from_the_first_changed_block() {
        let mut reader = BlockReader::new();
        reader.push("Intro\n```js\nlet a");
        let changed = reader.take_changed();
        assert_eq!(changed.first().map(|(i, _)| *i), Some(0));
        assert_eq!(changed.last().unwrap().1.text, "let a");
        assert!(reader.take_changed().is_empty());
        reader.push(" = 1;\n```\n");
        let changed = reader.take_changed();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, 1);
        assert!(changed[0].1.complete);
        reader.clear();
        assert!(reader.blocks().is_empty());
    }
}
