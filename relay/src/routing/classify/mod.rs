//! The content classifier: labels a request's domain (code, legal, math, general) and complexity
//! (simple, high) from its messages, in microseconds and without a model call.
//!
//! Two layers. A hand-written lexicon (`cues.txt`: weighted cue words and word pairs per domain
//! and per complexity) and the shapes of the text (code fences, `;`/`{` line ends, operators such
//! as `=>` and `::`, file extensions; numbers beside operators, `x^2`, `%`, formula symbols; list
//! items, length, questions) give a few dense scores. A small linear model ([`model`]: softmax
//! regression for the domain, logistic regression for the complexity) weighs those scores with
//! the words of the text, and is trained on first use (milliseconds; [`warm_up`] does it at
//! start-up) from 480 labelled prompts shipped beside it (`train.jsonl`).
//!
//! It reads the last user message (its first [`MAX_CLASSIFIED_BYTES`], so a long paste costs no
//! more than that) and, more lightly, the system prompt. The labelled evaluation set in
//! `relay/tests/data/route_classes.jsonl` (360 other prompts written for this project) measures
//! it; BENCHMARKS.md has the figures and `cargo bench -p fm-bench --bench routing` reproduces
//! them.

use std::sync::LazyLock;

use rustc_hash::FxHashMap;

use fm_protocol::{ChatRequest, Complexity, ContentClass, Domain, Role};

mod model;

/// The most bytes of the last user message the classifier reads.
pub const MAX_CLASSIFIED_BYTES: usize = 8 * 1024;
/// The lowest score that labels a request with a domain other than general.
pub const DOMAIN_THRESHOLD: f32 = 1.5;
/// The lowest complexity score that labels a request high.
pub const HIGH_THRESHOLD: f32 = 1.5;

/// Which score a cue word feeds.
#[derive(Debug, Clone, Copy)]
enum Feeds {
    Domain(Domain),
    High,
    Simple,
    /// A unit or a currency: a math cue only beside numbers.
    Unit,
}

/// The cue words and pairs (see the file's own header for its format).
const CUES: &str = include_str!("cues.txt");

/// The score a section of [`CUES`] feeds.
fn feeds(name: &str) -> Option<Feeds> {
    Some(match name {
        "code" => Feeds::Domain(Domain::Code),
        "legal" => Feeds::Domain(Domain::Legal),
        "math" => Feeds::Domain(Domain::Math),
        "general" => Feeds::Domain(Domain::General),
        "high" => Feeds::High,
        "simple" => Feeds::Simple,
        "unit" => Feeds::Unit,
        _ => return None,
    })
}

/// [`CUES`] as (score, weight, cue) triples.
fn cues() -> impl Iterator<Item = (Feeds, f32, &'static str)> {
    let mut section = None;
    CUES.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .flat_map(move |line| {
            if let Some(header) = line.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                let (name, weight) = header.split_once(' ').unwrap_or((header, "1"));
                section = feeds(name).zip(weight.parse::<f32>().ok());
                return Vec::new();
            }
            let Some((feeds, weight)) = section else {
                return Vec::new();
            };
            line.split(',')
                .map(str::trim)
                .filter(|cue| !cue.is_empty())
                .map(|cue| (feeds, weight, cue))
                .collect()
        })
}

/// Cue weights by word, with the score each feeds.
static CUE_TABLE: LazyLock<FxHashMap<&'static str, Vec<(Feeds, f32)>>> = LazyLock::new(|| {
    let mut table: FxHashMap<&'static str, Vec<(Feeds, f32)>> = FxHashMap::default();
    for (feeds, weight, word) in cues() {
        let entry = table.entry(word).or_default();
        // A word listed twice for the same score keeps its larger weight.
        match entry.iter_mut().find(|(f, _)| same_score(*f, feeds)) {
            Some((_, w)) => *w = w.max(weight),
            None => entry.push((feeds, weight)),
        }
    }
    table
});

/// The first words of the cue pairs: a pair is looked up only after one of them.
static PAIR_STARTS: LazyLock<rustc_hash::FxHashSet<&'static str>> = LazyLock::new(|| {
    cues()
        .filter_map(|(_, _, cue)| cue.split_once(' ').map(|(first, _)| first))
        .collect()
});

fn same_score(a: Feeds, b: Feeds) -> bool {
    match (a, b) {
        (Feeds::Domain(a), Feeds::Domain(b)) => a == b,
        (Feeds::High, Feeds::High)
        | (Feeds::Simple, Feeds::Simple)
        | (Feeds::Unit, Feeds::Unit) => true,
        _ => false,
    }
}

/// The scores behind a label, for tests and tuning.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Code, legal, math, general.
    pub domain: [f32; 4],
    pub high: f32,
    pub simple: f32,
    pub words: usize,
    pub numbers: usize,
    pub questions: usize,
}

pub(crate) fn index(domain: Domain) -> usize {
    match domain {
        Domain::Code => 0,
        Domain::Legal => 1,
        Domain::Math => 2,
        Domain::General => 3,
    }
}

/// Labels a request.
pub fn classify(request: &ChatRequest) -> ContentClass {
    let text = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let model = &*MODEL;
    let mut features = model.features(bounded(text));
    if let Some(system) = &request.system {
        let framing = score(bounded(system));
        for (feature, extra) in features.dense.iter_mut().zip(framing.domain) {
            *feature += extra * 0.5 / 8.0;
        }
    }
    let (domain, complexity) = model.label(&features);
    ContentClass { domain, complexity }
}

/// The linear model, trained on first use.
static MODEL: std::sync::LazyLock<model::Model> = std::sync::LazyLock::new(model::Model::train);

/// Trains the model now (a few milliseconds) rather than on the first request that needs it.
pub fn warm_up() {
    std::sync::LazyLock::force(&MODEL);
}

/// The lexicon's label alone, without the model (for comparison in the benchmark).
pub fn classify_by_lexicon(text: &str) -> ContentClass {
    label(&score(bounded(text)))
}

/// `text` cut to [`MAX_CLASSIFIED_BYTES`] on a character boundary.
pub(crate) fn bounded(text: &str) -> &str {
    if text.len() <= MAX_CLASSIFIED_BYTES {
        return text;
    }
    let mut end = MAX_CLASSIFIED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The label for `scores`.
pub fn label(scores: &Scores) -> ContentClass {
    let [code, legal, math, general] = scores.domain;
    let (best, best_score) = [
        (Domain::Code, code),
        (Domain::Legal, legal),
        (Domain::Math, math),
    ]
    .into_iter()
    .fold((Domain::General, 0.0_f32), |best, candidate| {
        if candidate.1 > best.1 {
            candidate
        } else {
            best
        }
    });
    // A long text needs more cues: one stray word does not make an essay code.
    let threshold = DOMAIN_THRESHOLD + (scores.words as f32 * 0.03).min(4.5);
    let domain = if best_score >= threshold && best_score > general {
        best
    } else {
        Domain::General
    };
    let complexity = if scores.high - scores.simple >= HIGH_THRESHOLD {
        Complexity::High
    } else {
        Complexity::Simple
    };
    ContentClass { domain, complexity }
}

/// Scores one text with the lexicon.
pub fn score(text: &str) -> Scores {
    scan(text, |_| {}).0
}

/// Tokenizes `text` once — the tokenizer the lexicon and the model share: calls `on_word` with
/// each word (lower case, as the lexicon reads them) and returns the lexicon's scores and the
/// text's shapes.
pub(crate) fn scan(text: &str, mut on_word: impl FnMut(&str)) -> (Scores, Shapes) {
    let mut scores = Scores::default();
    let table = &*CUE_TABLE;
    let starts = &*PAIR_STARTS;
    let mut word = String::with_capacity(32);
    let mut numbers = 0usize;
    let mut units = 0.0f32;
    let mut questions = 0usize;
    let mut previous = String::with_capacity(32);
    let mut pair = String::with_capacity(64);
    let mut add = |cues: &[(Feeds, f32)], scores: &mut Scores| {
        for (feeds, weight) in cues {
            match feeds {
                Feeds::Domain(domain) => scores.domain[index(*domain)] += weight,
                Feeds::High => scores.high += weight,
                Feeds::Simple => scores.simple += weight,
                Feeds::Unit => units += weight,
            }
        }
    };
    let mut flush = |word: &mut String, scores: &mut Scores| {
        // A word does not end in what only joins words (the full stop of a sentence).
        while word.ends_with(['.', '-', '\'']) {
            word.pop();
        }
        if word.ends_with("'s") {
            word.truncate(word.len() - 2);
        }
        if word.is_empty() {
            return;
        }
        scores.words += 1;
        on_word(word);
        if word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            numbers += 1;
        } else if let Some(cues) = table.get(word.as_str()) {
            add(cues, scores);
        }
        if !previous.is_empty() && starts.contains(previous.as_str()) {
            pair.clear();
            pair.push_str(&previous);
            pair.push(' ');
            pair.push_str(word);
            if let Some(cues) = table.get(pair.as_str()) {
                add(cues, scores);
            }
        }
        std::mem::swap(&mut previous, word);
        word.clear();
    };
    for c in text.chars() {
        // `+ # ' - .` join a word (c++, c#, what's, package.json, 0.5) but do not start one.
        let joins = matches!(c, '+' | '#' | '\'' | '-' | '.');
        if c.is_ascii_alphanumeric() || (joins && !word.is_empty()) {
            word.push(c.to_ascii_lowercase());
        } else if !c.is_ascii() && c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut scores);
            if c == '?' {
                questions += 1;
            }
        }
    }
    flush(&mut word, &mut scores);
    let shapes = shapes(text);
    let [code, _, math, _] = &mut scores.domain;
    *code += shapes.code;
    // Numbers say more in a short ask ("what's 17% of 2,340") than in a long story.
    let per_number = if scores.words <= 30 { 0.8 } else { 0.25 };
    *math += shapes.math + (numbers.min(4) as f32) * per_number;
    if numbers > 0 {
        *math += units.min(3.0);
    }
    // Length and multi-part asks make a request demanding.
    scores.high += match scores.words {
        0..25 => 0.0,
        25..50 => 0.5,
        50..100 => 1.0,
        100..200 => 1.5,
        _ => 2.5,
    };
    if questions >= 3 {
        scores.high += 1.0;
    }
    scores.high += shapes.list_items.min(5) as f32 * 0.4 + shapes.code_lines.min(30) as f32 * 0.05;
    // Algebra (x^2, f(x), variables beside operators) is past arithmetic.
    scores.high += (shapes.algebra.min(4) as f32) * 0.5;
    scores.numbers = numbers;
    scores.questions = questions;
    (scores, shapes)
}

/// What the text's shape says, beside its words.
#[derive(Debug, Default)]
pub(crate) struct Shapes {
    pub code: f32,
    pub math: f32,
    pub list_items: usize,
    pub code_lines: usize,
    /// Variables beside operators or powers: `x^2`, `3x`, `f(x)`.
    pub algebra: usize,
}

/// Two-byte operators of code; each found adds 1 to the code score (once however often).
const CODE_PAIRS: [[u8; 2]; 12] = [
    *b"=>", *b"->", *b"::", *b"!=", *b"&&", *b"||", *b"</", *b"/>", *b"()", *b"[]", *b"{}", *b"__",
];

/// Letters and white space: bytes that need no look at their neighbours, unless a neighbour is
/// something else.
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        plain[byte] = b.is_ascii_alphabetic() || b == b' ' || b == b'\n' || b == b'\t';
        byte += 1;
    }
    plain
};

/// File extensions of code; each found adds 1.5 (once).
const CODE_EXTENSIONS: [&[u8]; 14] = [
    b"py", b"js", b"rs", b"ts", b"java", b"go", b"cpp", b"sql", b"yml", b"yaml", b"toml", b"sh",
    b"tsx", b"jsx",
];

/// Symbols of formulas; each found adds 1.5 to the math score (once).
const MATH_SYMBOLS: [char; 13] = [
    '∫', '√', 'π', '²', '³', '∑', '≤', '≥', '≠', '∞', '±', 'θ', 'Δ',
];

fn shapes(text: &str) -> Shapes {
    let mut shapes = Shapes::default();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let codeish = trimmed.ends_with(';')
            || trimmed.ends_with('{')
            || trimmed == "}"
            || trimmed.starts_with("def ")
            || trimmed.starts_with("#include")
            || trimmed.starts_with("import ")
            || trimmed.starts_with("from ")
            || trimmed.starts_with("SELECT ")
            || trimmed.starts_with("$ ")
            || trimmed.starts_with("at ") && trimmed.contains('(') && trimmed.contains(':');
        if codeish {
            shapes.code_lines += 1;
        }
        let bytes = trimmed.as_bytes();
        let numbered = bytes.first().is_some_and(u8::is_ascii_digit)
            && bytes.get(1).is_some_and(|b| *b == b'.' || *b == b')');
        if numbered || trimmed.starts_with("- ") || trimmed.starts_with("* ") {
            shapes.list_items += 1;
        }
    }
    shapes.code += (shapes.code_lines.min(8) as f32) * 0.8;
    // One pass over the bytes for every fixed shape; each counts once however often it occurs.
    let bytes = text.as_bytes();
    let mut pairs_seen = 0u16;
    let mut extensions_seen = 0u16;
    let mut fence = false;
    let mut percent = false;
    let operand = |c: u8| c.is_ascii_digit() || matches!(c, b'x' | b'y' | b'n' | b')');
    let variable = |c: u8| matches!(c, b'x' | b'y' | b'z' | b'n' | b'k');
    for (i, &a) in bytes.iter().enumerate() {
        let Some(&op) = bytes.get(i + 1) else { break };
        // Most of a text is letters and spaces, which start no shape.
        if PLAIN[usize::from(a)] && PLAIN[usize::from(op)] {
            continue;
        }
        if let Some(index) = CODE_PAIRS.iter().position(|pair| *pair == [a, op]) {
            pairs_seen |= 1 << index;
        }
        percent |= a.is_ascii_digit() && op == b'%';
        if a == b'.' && op.is_ascii_lowercase() && (i == 0 || bytes[i - 1].is_ascii_alphanumeric())
        {
            let rest = &bytes[i + 1..];
            let end = rest
                .iter()
                .position(|c| !c.is_ascii_lowercase())
                .unwrap_or(rest.len());
            if let Some(index) = CODE_EXTENSIONS.iter().position(|ext| *ext == &rest[..end]) {
                extensions_seen |= 1 << index;
            }
        }
        let Some(&b) = bytes.get(i + 2) else { continue };
        fence |= a == b'`' && op == b'`' && b == b'`';
        if operand(a)
            && matches!(op, b'+' | b'*' | b'/' | b'^' | b'=' | b'<' | b'>')
            && (b.is_ascii_digit() || matches!(b, b'x' | b'(' | b'y' | b'n'))
        {
            shapes.math += 0.8;
        }
        if (variable(a) && op == b'^')
            || (a.is_ascii_digit() && variable(op) && !b.is_ascii_alphanumeric())
            || (a == b'f' && op == b'(' && variable(b))
        {
            shapes.algebra += 1;
        }
    }
    shapes.code += pairs_seen.count_ones() as f32 + extensions_seen.count_ones() as f32 * 1.5;
    if fence {
        shapes.code += 4.0;
    }
    if percent {
        shapes.math += 2.5;
    }
    if !text.is_ascii() {
        shapes.math += MATH_SYMBOLS.iter().filter(|s| text.contains(**s)).count() as f32 * 1.5;
    }
    shapes.math = shapes.math.min(8.0);
    shapes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(prompt: &str) -> (Domain, Complexity) {
        let class = classify(&ChatRequest::from_prompt(prompt));
        (class.domain, class.complexity)
    }

    #[test]
    fn each_domain_has_its_cues() {
        assert_eq!(
            class("Why does my Python script raise a KeyError when I read the dict?").0,
            Domain::Code
        );
        assert_eq!(
            class("Can my landlord keep the deposit if the lease says nothing about cleaning?").0,
            Domain::Legal
        );
        assert_eq!(class("Solve 3x + 7 = 22 for x").0, Domain::Math);
        assert_eq!(
            class("Suggest a vegetarian dinner for six people").0,
            Domain::General
        );
    }

    #[test]
    fn complexity_reads_the_ask() {
        assert_eq!(class("What's the capital of Peru?").1, Complexity::Simple);
        assert_eq!(
            class("Compare event sourcing and CRUD for an order service: the trade-offs in consistency, auditing, scaling and migration, and recommend a design for a team of five.").1,
            Complexity::High
        );
    }

    #[test]
    fn a_long_paste_costs_no_more_than_the_bound() {
        let long = "fn main() { println!(\"hi\"); }\n".repeat(10_000);
        assert!(long.len() > 10 * MAX_CLASSIFIED_BYTES);
        assert_eq!(class(&long).0, Domain::Code);
        // A cut inside a multi-byte character is moved back to its start.
        let text = "é".repeat(MAX_CLASSIFIED_BYTES);
        assert!(bounded(&text).len() <= MAX_CLASSIFIED_BYTES);
    }
}
