//! A Markdown reader for model answers: the CommonMark and GitHub constructs chat models write
//! (paragraphs, ATX headings, fenced code, block quotes, bullet and numbered lists, tables,
//! thematic breaks; code spans, strong, emphasis, strikethrough, links, autolinks, escapes and
//! line breaks), parsed into a tree of [`Node`]s.
//!
//! Written here rather than taken from `pulldown-cmark` for size: with that parser (full
//! CommonMark, the HTML entity table, Unicode case folding) Markdown cost the page 81 KB of WASM
//! (gzip), a third of its 250 KB budget; with this reader, parsing and rendering cost 24 KB. What it does not know (setext headings, indented
//! code, reference links, raw HTML) shows as the text it is, which is also what keeps a model's
//! output from injecting markup.

use std::hash::{DefaultHasher, Hash, Hasher};

/// One node of a parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Element { kind: Element, children: Vec<Node> },
    Text(String),
    InlineCode(String),
    CodeBlock { language: String, code: String },
    SoftBreak,
    HardBreak,
    Rule,
}

/// The elements an answer can contain.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    Paragraph,
    Heading(u8),
    BlockQuote,
    List {
        first_number: Option<u64>,
    },
    Item,
    Emphasis,
    Strong,
    Strikethrough,
    /// A link with a safe target; other links keep only their text.
    Link {
        href: String,
    },
    Table,
    /// The header row of a table.
    TableHead,
    TableRow,
    TableCell {
        header: bool,
    },
    /// Children without a wrapper.
    Plain,
}

/// A top-level block and its key: position and content, so an unchanged block keeps its DOM.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub key: u64,
    pub node: Node,
}

/// Parses `text` into its top-level blocks.
pub fn parse_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let ends_open = !text.ends_with('\n');
    let mut blocks = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let start = at;
        let Some(node) = read_block(&lines, &mut at, ends_open) else {
            continue;
        };
        let mut hasher = DefaultHasher::new();
        blocks.len().hash(&mut hasher);
        lines[start..at].hash(&mut hasher);
        blocks.push(Block {
            key: hasher.finish(),
            node,
        });
    }
    blocks
}

/// Parses block content (a quote's or a list item's) into nodes.
fn parse_nodes(lines: &[&str], ends_open: bool) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        if let Some(node) = read_block(lines, &mut at, ends_open) {
            nodes.push(node);
        }
    }
    nodes
}

/// Reads the block that starts at `lines[*at]` and moves `at` past it; `None` for blank lines.
/// `ends_open`: the last line has no newline yet (the answer is still streaming).
fn read_block(lines: &[&str], at: &mut usize, ends_open: bool) -> Option<Node> {
    let line = lines[*at];
    if line.trim().is_empty() {
        *at += 1;
        return None;
    }
    if let Some(fence) = Fence::open(line) {
        return Some(fence.read(lines, at, ends_open));
    }
    if let Some((level, title)) = heading(line) {
        *at += 1;
        return Some(element(Element::Heading(level), inline(title)));
    }
    if is_rule(line) {
        *at += 1;
        return Some(Node::Rule);
    }
    if quote_content(line).is_some() {
        let mut inner = Vec::new();
        while let Some(content) = lines.get(*at).and_then(|l| quote_content(l)) {
            inner.push(content);
            *at += 1;
        }
        let open = ends_open && *at == lines.len();
        return Some(element(Element::BlockQuote, parse_nodes(&inner, open)));
    }
    if let Some(marker) = ListMarker::of(line) {
        return Some(read_list(lines, at, marker, ends_open));
    }
    if let Some(table) = read_table(lines, at) {
        return Some(table);
    }
    // A paragraph: up to a blank line or the start of another block.
    let start = *at;
    *at += 1;
    while let Some(next) = lines.get(*at) {
        if next.trim().is_empty() || starts_other_block(next) {
            break;
        }
        *at += 1;
    }
    Some(paragraph(&lines[start..*at]))
}

fn element(kind: Element, children: Vec<Node>) -> Node {
    Node::Element { kind, children }
}

fn paragraph(lines: &[&str]) -> Node {
    let mut children = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let last = index + 1 == lines.len();
        let hard = !last && (line.ends_with("  ") || line.ends_with('\\'));
        let content = line.trim_start();
        let content = if hard {
            content.trim_end().trim_end_matches('\\')
        } else {
            content.trim_end()
        };
        children.extend(inline(content));
        if !last {
            children.push(if hard {
                Node::HardBreak
            } else {
                Node::SoftBreak
            });
        }
    }
    element(Element::Paragraph, children)
}

/// Whether a line inside a paragraph starts a new block instead of continuing it.
fn starts_other_block(line: &str) -> bool {
    Fence::open(line).is_some()
        || heading(line).is_some()
        || is_rule(line)
        || quote_content(line).is_some()
        || ListMarker::of(line).is_some_and(|m| !m.ordered || m.number == 1)
}

/// Up to three spaces of indentation, as CommonMark allows before a block's marker.
fn unindented(line: &str) -> Option<&str> {
    let trimmed = line.trim_start_matches(' ');
    (line.len() - trimmed.len() <= 3).then_some(trimmed)
}

/// An open code fence: its character, length and indentation, and the code's language.
struct Fence {
    marker: char,
    length: usize,
    indent: usize,
    language: String,
}

impl Fence {
    fn open(line: &str) -> Option<Fence> {
        let rest = unindented(line)?;
        let marker = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let length = rest.chars().take_while(|c| *c == marker).count();
        let info = rest[length..].trim();
        if length < 3 || (marker == '`' && info.contains('`')) {
            return None;
        }
        Some(Fence {
            marker,
            length,
            indent: line.len() - rest.len(),
            language: info.split_whitespace().next().unwrap_or("").to_string(),
        })
    }

    fn closes(&self, line: &str) -> bool {
        unindented(line).is_some_and(|rest| {
            let run = rest.chars().take_while(|c| *c == self.marker).count();
            run >= self.length && rest[run..].trim().is_empty()
        })
    }

    /// Reads the code up to the closing fence, or to the end while the answer still streams.
    fn read(self, lines: &[&str], at: &mut usize, ends_open: bool) -> Node {
        *at += 1;
        let mut code = String::new();
        let mut closed = false;
        while let Some(line) = lines.get(*at) {
            *at += 1;
            if self.closes(line) {
                closed = true;
                break;
            }
            let drop = line.len() - line.trim_start_matches(' ').len();
            code.push_str(&line[drop.min(self.indent)..]);
            code.push('\n');
        }
        if !closed && ends_open {
            code.pop();
        }
        Node::CodeBlock {
            language: self.language,
            code,
        }
    }
}

/// `# Title` … `###### Title`: the level and the title without closing hashes.
fn heading(line: &str) -> Option<(u8, &str)> {
    let rest = unindented(line)?;
    let level = rest.chars().take_while(|c| *c == '#').count();
    let after = &rest[level..];
    if !(1..=6).contains(&level) || !(after.is_empty() || after.starts_with([' ', '\t'])) {
        return None;
    }
    let title = after.trim();
    let without_closing = title.trim_end_matches('#');
    let title = if without_closing.is_empty() || without_closing.ends_with(' ') {
        without_closing.trim_end()
    } else {
        title
    };
    Some((level as u8, title))
}

/// `---`, `***`, `___` (three or more, spaces allowed between).
fn is_rule(line: &str) -> bool {
    let Some(rest) = unindented(line) else {
        return false;
    };
    let Some(marker) = rest.chars().next().filter(|c| matches!(c, '-' | '*' | '_')) else {
        return false;
    };
    rest.chars().all(|c| c == marker || c == ' ' || c == '\t')
        && rest.chars().filter(|c| *c == marker).count() >= 3
}

/// The text after `>` (and one space), when the line is part of a block quote.
fn quote_content(line: &str) -> Option<&str> {
    let rest = unindented(line)?.strip_prefix('>')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// A list item's marker: `-`, `*`, `+` or `1.` / `1)`.
#[derive(Debug, Clone, Copy)]
struct ListMarker {
    ordered: bool,
    /// The bullet or the delimiter after the number.
    symbol: char,
    number: u64,
    /// Where the item's content starts.
    content_indent: usize,
}

impl ListMarker {
    fn of(line: &str) -> Option<ListMarker> {
        let rest = unindented(line)?;
        let indent = line.len() - rest.len();
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let (ordered, symbol, number, width) = if digits > 0 {
            let symbol = rest[digits..]
                .chars()
                .next()
                .filter(|c| *c == '.' || *c == ')')?;
            (
                true,
                symbol,
                rest[..digits.min(9)].parse().ok()?,
                digits + 1,
            )
        } else {
            let symbol = rest
                .chars()
                .next()
                .filter(|c| matches!(c, '-' | '*' | '+'))?;
            (false, symbol, 0, 1)
        };
        let after = &rest[width..];
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        let spaces = after.len() - after.trim_start_matches(' ').len();
        let spaces = if (1..=4).contains(&spaces) { spaces } else { 1 };
        Some(ListMarker {
            ordered,
            symbol,
            number,
            content_indent: indent + width + spaces,
        })
    }

    fn continues(&self, other: &ListMarker) -> bool {
        self.ordered == other.ordered && self.symbol == other.symbol
    }
}

/// Reads a list: items with the same kind of marker, each with its own blocks.
fn read_list(lines: &[&str], at: &mut usize, first: ListMarker, ends_open: bool) -> Node {
    let mut items: Vec<Vec<&str>> = Vec::new();
    let mut loose = false;
    let mut marker = first;
    loop {
        let line = lines[*at];
        let mut item = vec![line.get(marker.content_indent..).unwrap_or("").trim_start()];
        *at += 1;
        let mut blank_run = 0;
        while let Some(next) = lines.get(*at) {
            let indent = next.len() - next.trim_start_matches(' ').len();
            if next.trim().is_empty() {
                blank_run += 1;
                item.push("");
                *at += 1;
            } else if indent >= marker.content_indent {
                blank_run = 0;
                item.push(&next[marker.content_indent..]);
                *at += 1;
            } else if blank_run == 0 && !starts_other_block(next) && ListMarker::of(next).is_none()
            {
                // A lazy continuation of the item's paragraph.
                item.push(next.trim_start());
                *at += 1;
            } else {
                break;
            }
        }
        // Blank lines at the end belong between items (or after the list), not to the item.
        while item.len() > 1 && item.last() == Some(&"") {
            item.pop();
            *at -= 1;
        }
        items.push(item);
        // The next item, after any blank lines (which make the list loose).
        let mut look = *at;
        while look < lines.len() && lines[look].trim().is_empty() {
            look += 1;
        }
        match lines.get(look).and_then(|l| ListMarker::of(l)) {
            Some(next) if next.continues(&marker) => {
                loose |= look > *at;
                *at = look;
                marker = next;
            }
            _ => break,
        }
    }
    // A blank line inside an item makes the list loose too.
    loose |= items
        .iter()
        .any(|item| item.windows(2).any(|w| w[0].is_empty() && !w[1].is_empty()));
    let last_item = items.len().saturating_sub(1);
    let children = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let open = ends_open && index == last_item && *at == lines.len();
            let mut nodes = parse_nodes(&item, open);
            if !loose {
                // A tight list shows its paragraphs without paragraph spacing.
                nodes = nodes
                    .into_iter()
                    .flat_map(|node| match node {
                        Node::Element {
                            kind: Element::Paragraph,
                            children,
                        } => children,
                        other => vec![other],
                    })
                    .collect();
            }
            element(Element::Item, nodes)
        })
        .collect();
    element(
        Element::List {
            first_number: first.ordered.then_some(first.number),
        },
        children,
    )
}

/// A GitHub table: a header row, a delimiter row (`| --- | :-: |`), then body rows.
fn read_table(lines: &[&str], at: &mut usize) -> Option<Node> {
    let header = table_cells(lines[*at])?;
    let delimiter = table_cells(lines.get(*at + 1)?)?;
    let is_delimiter = delimiter.iter().all(|cell| {
        let cell = cell.trim_matches(':');
        !cell.is_empty() && cell.chars().all(|c| c == '-')
    });
    if !is_delimiter || delimiter.len() != header.len() {
        return None;
    }
    let row = |cells: Vec<&str>, header: bool, kind: Element| {
        element(
            kind,
            cells
                .into_iter()
                .map(|cell| element(Element::TableCell { header }, inline(cell)))
                .collect(),
        )
    };
    let columns = header.len();
    let mut rows = vec![row(header, true, Element::TableHead)];
    *at += 2;
    while let Some(cells) = lines.get(*at).and_then(|l| table_cells(l)) {
        let mut cells = cells;
        cells.resize(columns, "");
        cells.truncate(columns);
        rows.push(row(cells, false, Element::TableRow));
        *at += 1;
    }
    Some(element(Element::Table, rows))
}

/// The cells of a table row (a line with a `|`), trimmed, without the outer pipes.
fn table_cells(line: &str) -> Option<Vec<&str>> {
    let row = line.trim();
    if !row.contains('|') {
        return None;
    }
    let row = row.strip_prefix('|').unwrap_or(row);
    let row = row.strip_suffix('|').unwrap_or(row);
    let mut cells = Vec::new();
    let mut start = 0;
    let bytes = row.as_bytes();
    for (index, byte) in bytes.iter().enumerate() {
        if *byte == b'|' && (index == 0 || bytes[index - 1] != b'\\') {
            cells.push(row[start..index].trim());
            start = index + 1;
        }
    }
    cells.push(row[start..].trim());
    Some(cells)
}

/// Parses inline Markdown (one paragraph's or one cell's text).
pub fn inline(text: &str) -> Vec<Node> {
    let mut reader = Inline {
        text,
        nodes: Vec::new(),
        plain: String::new(),
    };
    reader.run();
    reader.nodes
}

struct Inline<'a> {
    text: &'a str,
    nodes: Vec<Node>,
    /// Text not yet pushed as a node.
    plain: String,
}

impl Inline<'_> {
    fn run(&mut self) {
        let text = self.text;
        let mut at = 0;
        while let Some(c) = text[at..].chars().next() {
            let rest = &text[at..];
            let consumed = match c {
                '\\' => rest[1..]
                    .chars()
                    .next()
                    .filter(char::is_ascii_punctuation)
                    .map(|escaped| {
                        self.plain.push(escaped);
                        2
                    }),
                '`' => self.code_span(rest),
                '*' | '_' | '~' => self.delimited(text, at),
                '[' => self.link(rest),
                '!' if rest.starts_with("![") => self.link(&rest[1..]).map(|n| n + 1),
                '<' => self.autolink(rest),
                '&' => self.entity(rest),
                _ => None,
            };
            match consumed {
                Some(length) => at += length,
                None => {
                    self.plain.push(c);
                    at += c.len_utf8();
                }
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if !self.plain.is_empty() {
            self.nodes.push(Node::Text(std::mem::take(&mut self.plain)));
        }
    }

    fn push(&mut self, node: Node) {
        self.flush();
        self.nodes.push(node);
    }

    /// `` `code` `` with any number of backticks; unmatched backticks are text.
    fn code_span(&mut self, rest: &str) -> Option<usize> {
        let ticks = rest.chars().take_while(|c| *c == '`').count();
        let mut search = ticks;
        while let Some(found) = rest[search..].find('`') {
            let start = search + found;
            let run = rest[start..].chars().take_while(|c| *c == '`').count();
            if run == ticks {
                let inner = &rest[ticks..start];
                let inner = if inner.len() > 1 && inner.starts_with(' ') && inner.ends_with(' ') {
                    &inner[1..inner.len() - 1]
                } else {
                    inner
                };
                self.push(Node::InlineCode(inner.replace('\n', " ")));
                return Some(start + run);
            }
            search = start + run;
        }
        self.plain.push_str(&rest[..ticks]);
        Some(ticks)
    }

    /// `**strong**`, `__strong__`, `*emphasis*`, `_emphasis_`, `~~strikethrough~~`.
    fn delimited(&mut self, text: &str, at: usize) -> Option<usize> {
        let rest = &text[at..];
        let marker = rest.chars().next()?;
        let run = rest.chars().take_while(|c| *c == marker).count();
        let (width, kind) = match (marker, run) {
            ('~', 2..) => (2, Element::Strikethrough),
            ('~', _) => return None,
            (_, 2..) => (2, Element::Strong),
            _ => (1, Element::Emphasis),
        };
        let delimiter = &rest[..width];
        let before = text[..at].chars().next_back();
        let after = rest[width..].chars().next();
        // Opens only before text; `_` only at a word's start (snake_case stays as it is).
        let opens = after.is_some_and(|c| !c.is_whitespace())
            && !(marker == '_' && before.is_some_and(char::is_alphanumeric));
        if !opens {
            return None;
        }
        let mut search = width;
        while let Some(found) = rest[search..].find(delimiter) {
            let close = search + found;
            let closer_run = rest[close..].chars().take_while(|c| *c == marker).count();
            let before_close = rest[..close].chars().next_back();
            let after_close = rest[close + width..].chars().next();
            let closes = close > width
                && before_close.is_some_and(|c| !c.is_whitespace())
                && !(marker == '_' && after_close.is_some_and(char::is_alphanumeric))
                && (width == 2 || closer_run != 2);
            if closes {
                let children = inline(&rest[width..close]);
                self.push(element(kind, children));
                return Some(close + width);
            }
            search = close + closer_run.max(1);
        }
        None
    }

    /// `[text](url)` (and an image `![alt](url)`, shown as its alt text).
    fn link(&mut self, rest: &str) -> Option<usize> {
        let mut depth = 0;
        let mut label_end = None;
        for (index, c) in rest.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        label_end = Some(index);
                        break;
                    }
                }
                _ => {}
            }
        }
        let label_end = label_end?;
        let target = rest[label_end + 1..].strip_prefix('(')?;
        let mut depth = 1;
        let mut target_end = None;
        for (index, c) in target.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        target_end = Some(index);
                        break;
                    }
                }
                _ => {}
            }
        }
        let target_end = target_end?;
        let href = target[..target_end]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_start_matches('<')
            .trim_end_matches('>');
        let children = inline(&rest[1..label_end]);
        let kind = if is_safe_link(href) {
            Element::Link {
                href: href.to_string(),
            }
        } else {
            Element::Plain
        };
        self.push(element(kind, children));
        Some(label_end + 2 + target_end + 1)
    }

    /// `<https://example.com>`.
    fn autolink(&mut self, rest: &str) -> Option<usize> {
        let end = rest.find('>')?;
        let href = &rest[1..end];
        if !is_safe_link(href) || href.contains(char::is_whitespace) {
            return None;
        }
        self.push(element(
            Element::Link {
                href: href.to_string(),
            },
            vec![Node::Text(href.to_string())],
        ));
        Some(end + 1)
    }

    /// The few character references models write.
    fn entity(&mut self, rest: &str) -> Option<usize> {
        const ENTITIES: [(&str, char); 6] = [
            ("&amp;", '&'),
            ("&lt;", '<'),
            ("&gt;", '>'),
            ("&quot;", '"'),
            ("&#39;", '\''),
            ("&nbsp;", '\u{a0}'),
        ];
        let (name, value) = ENTITIES.iter().find(|(name, _)| rest.starts_with(name))?;
        self.plain.push(*value);
        Some(name.len())
    }
}

/// Whether a link target may be followed: web and mail addresses only (no `javascript:`).
fn is_safe_link(href: &str) -> bool {
    let lower = href.trim_start().to_ascii_lowercase();
    ["https://", "http://", "mailto:"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
}

#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn nodes(text: &str) -> Vec<Node> {
        parse_blocks(text).into_iter().map(|b| b.node).collect()
    }

    fn text(value: &str) -> Node {
        Node::Text(value.into())
    }

    fn el(kind: Element, children: Vec<Node>) -> Node {
        element(kind, children)
    }

    #[test]
    fn fenced_code_keeps_language_and_text() {
        let parsed = nodes("Look:\n\n```rust title\nfn main() {}\n  indented\n```\nAfter.");
        assert_eq!(
            parsed,
            vec![
                el(Element::Paragraph, vec![text("Look:")]),
                Node::CodeBlock {
                    language: "rust".into(),
                    code: "fn main() {}\n  indented\n".into()
                },
                el(Element::Paragraph, vec![text("After.")]),
            ]
        );
        let tildes = nodes("~~~\n```\n~~~\n");
        assert_eq!(
            tildes,
            vec![Node::CodeBlock {
                language: String::new(),
                code: "```\n".into()
            }]
        );
    }

    #[test]
    fn an_unclosed_fence_is_code_while_it_streams() {
        assert_eq!(
            nodes("```py\nprint(1)"),
            vec![Node::CodeBlock {
                language: "py".into(),
                code: "print(1)".into()
            }]
        );
    }

    #[test]
    fn inline_markup() {
        assert_eq!(
            inline("a **b** *c* _d_ ~~e~~ `f` snake_case_name 2*3*4 \\*g\\*"),
            vec![
                text("a "),
                el(Element::Strong, vec![text("b")]),
                text(" "),
                el(Element::Emphasis, vec![text("c")]),
                text(" "),
                el(Element::Emphasis, vec![text("d")]),
                text(" "),
                el(Element::Strikethrough, vec![text("e")]),
                text(" "),
                Node::InlineCode("f".into()),
                text(" snake_case_name 2"),
                el(Element::Emphasis, vec![text("3")]),
                text("4 *g*"),
            ]
        );
        assert_eq!(
            inline("``a ` b`` and **bold `code`**"),
            vec![
                Node::InlineCode("a ` b".into()),
                text(" and "),
                el(
                    Element::Strong,
                    vec![text("bold "), Node::InlineCode("code".into())]
                ),
            ]
        );
        assert_eq!(inline("a * b ** c"), vec![text("a * b ** c")]);
        assert_eq!(inline("&lt;b&gt; &amp; &copy;"), vec![text("<b> & &copy;")]);
    }

    #[test]
    fn html_is_text_and_unsafe_links_lose_their_target() {
        let parsed = nodes(
            "<script>x</script>\n\n[a](javascript:alert(1)) [b](https://x.test/(y) \"t\") <https://z.test>",
        );
        assert_eq!(
            parsed[0],
            el(Element::Paragraph, vec![text("<script>x</script>")])
        );
        assert_eq!(
            parsed[1],
            el(
                Element::Paragraph,
                vec![
                    el(Element::Plain, vec![text("a")]),
                    text(" "),
                    el(
                        Element::Link {
                            href: "https://x.test/(y)".into()
                        },
                        vec![text("b")]
                    ),
                    text(" "),
                    el(
                        Element::Link {
                            href: "https://z.test".into()
                        },
                        vec![text("https://z.test")]
                    ),
                ]
            )
        );
    }

    #[test]
    fn headings_rules_quotes_and_breaks() {
        assert_eq!(
            nodes("## Title ##\n#nope\n\n---\n> quoted\n> **more**\n\nline one  \nline two\nthree"),
            vec![
                el(Element::Heading(2), vec![text("Title")]),
                el(Element::Paragraph, vec![text("#nope")]),
                Node::Rule,
                el(
                    Element::BlockQuote,
                    vec![el(
                        Element::Paragraph,
                        vec![
                            text("quoted"),
                            Node::SoftBreak,
                            el(Element::Strong, vec![text("more")])
                        ]
                    )]
                ),
                el(
                    Element::Paragraph,
                    vec![
                        text("line one"),
                        Node::HardBreak,
                        text("line two"),
                        Node::SoftBreak,
                        text("three")
                    ]
                ),
            ]
        );
    }

    #[test]
    fn tight_and_loose_lists_with_nesting_and_code() {
        let tight = nodes("Steps:\n1. one\n2. two\n   - nested\n3. three\n\nAfter");
        assert_eq!(tight.len(), 3, "{tight:?}");
        assert_eq!(
            tight[1],
            el(
                Element::List {
                    first_number: Some(1)
                },
                vec![
                    el(Element::Item, vec![text("one")]),
                    el(
                        Element::Item,
                        vec![
                            text("two"),
                            el(
                                Element::List { first_number: None },
                                vec![el(Element::Item, vec![text("nested")])]
                            )
                        ]
                    ),
                    el(Element::Item, vec![text("three")]),
                ]
            )
        );
        let loose = nodes("- a\n\n- b\n\n  ```sh\n  ls\n  ```\n");
        assert_eq!(
            loose,
            vec![el(
                Element::List { first_number: None },
                vec![
                    el(Element::Item, vec![el(Element::Paragraph, vec![text("a")])]),
                    el(
                        Element::Item,
                        vec![
                            el(Element::Paragraph, vec![text("b")]),
                            Node::CodeBlock {
                                language: "sh".into(),
                                code: "ls\n".into()
                            }
                        ]
                    ),
                ]
            )]
        );
        // A different bullet starts a new list; a star-rule is not an item.
        assert_eq!(nodes("- a\n+ b\n").len(), 2);
        assert_eq!(nodes("* * *\n"), vec![Node::Rule]);
    }

    #[test]
    fn tables() {
        let parsed = nodes("| Model | TTFT |\n|---|:--:|\n| a | **1** ms |\n| b |\n\nend");
        assert_eq!(
            parsed[0],
            el(
                Element::Table,
                vec![
                    el(
                        Element::TableHead,
                        vec![
                            el(Element::TableCell { header: true }, vec![text("Model")]),
                            el(Element::TableCell { header: true }, vec![text("TTFT")]),
                        ]
                    ),
                    el(
                        Element::TableRow,
                        vec![
                            el(Element::TableCell { header: false }, vec![text("a")]),
                            el(
                                Element::TableCell { header: false },
                                vec![el(Element::Strong, vec![text("1")]), text(" ms")]
                            ),
                        ]
                    ),
                    el(
                        Element::TableRow,
                        vec![
                            el(Element::TableCell { header: false }, vec![text("b")]),
                            el(Element::TableCell { header: false }, vec![]),
                        ]
                    ),
                ]
            )
        );
        assert_eq!(nodes("a | b\nnot a delimiter").len(), 1);
    }

    #[test]
    fn earlier_blocks_keep_their_keys_as_text_grows() {
        let before = parse_blocks("One.\n\nTwo");
        let after = parse_blocks("One.\n\nTwo and three");
        assert_eq!(before[0].key, after[0].key);
        assert_ne!(before[1].key, after[1].key);
    }

    #[test]
    fn any_text_parses_without_panicking() {
        // Every prefix of a tricky answer, as a stream would show it, char by char.
        let answer = "# T\n> q *a* [l](https://x) ``c``\n1) x\n   2. y\n- [ ] t\n|a|\n|-|\n|é|\n```\n\u{e9}\\";
        for (index, _) in answer.char_indices() {
            let _ = parse_blocks(&answer[..index]);
        }
        let _ = parse_blocks("*_~`[!<&\\");
    }
}
