//! Resume by replay: continuing a broken-off answer on a surface that cannot take text back.
//!
//! When a stream breaks after text reached the client and the next target takes no prefill, the
//! answer starts again from the beginning. The native surfaces tell their clients to discard
//! what they have (a `failover` event); an OpenAI client has no such event, so there the
//! restarted answer is held back ([`Replay`]) until it has reproduced the text already
//! delivered. Compared with whitespace normalised (a run of whitespace counts as one space,
//! leading whitespace not at all), a match lets the stream continue seamlessly with what comes
//! after it; the first character that differs ends the stream with the error the surface gave
//! before replays existed. A model answering the same prompt the same way (the same model in
//! another region, a deterministic temperature) resumes; another model almost never does, and
//! says so within a few tokens.
//!
//! Bounded: at most the delivered length plus [`margin`] bytes are held, and the replay must
//! catch up within the call's first-token deadline (the stream applies it until the client gets
//! new text).

/// What the restarted answer's text did to the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Reproducing the delivered text so far: nothing for the client yet.
    Behind,
    /// The delivered text is reproduced; this is what comes after it (possibly empty). The
    /// replay is over: the rest of the answer goes to the client as it comes.
    CaughtUp(String),
    /// The restart differs from the delivered text after this many of its normalised bytes.
    Diverged { matched: usize },
    /// The restart ran past the bound without reproducing the delivered text.
    TooLong { held: usize },
}

/// One replay: the delivered text and how much of it the restart has reproduced.
#[derive(Debug)]
pub struct Replay {
    /// The delivered text, normalised.
    expected: String,
    /// Bytes of `expected` reproduced so far.
    matched: usize,
    /// Whether the restart's last character was whitespace (a run counts once; leading
    /// whitespace not at all).
    in_whitespace: bool,
    /// Bytes of the restart held back so far.
    held: usize,
    /// The most bytes that may be held.
    limit: usize,
}

/// How many bytes beyond the delivered length a replay may hold: a quarter more, at least 256
/// (normalising whitespace only ever shortens a text, so a faithful restart needs little).
pub fn margin(delivered: usize) -> usize {
    (delivered / 4).max(256)
}

impl Replay {
    /// A replay of `delivered`, the text the client has.
    pub fn new(delivered: &str) -> Replay {
        let mut in_whitespace = true;
        let expected = delivered
            .chars()
            .filter_map(|c| normalise(c, &mut in_whitespace))
            .collect();
        Replay {
            matched: 0,
            in_whitespace: true,
            held: 0,
            limit: delivered.len() + margin(delivered.len()),
            expected,
        }
    }

    /// What the restart did instead of reproducing the delivered text, in words for the error
    /// that ends the stream: `progress` is how the replay stopped (`Behind` when the restarted
    /// answer ended first).
    pub fn describe(&self, progress: &Progress) -> String {
        let expected = self.expected.len();
        match progress {
            Progress::Diverged { matched } => format!(
                "differed from the text already sent after {matched} of its {expected} bytes (whitespace normalised)"
            ),
            Progress::TooLong { held } => format!(
                "ran {held} bytes without reproducing the {expected} bytes already sent (whitespace normalised)"
            ),
            Progress::Behind | Progress::CaughtUp(_) => format!(
                "ended before it had reproduced the text already sent ({} of {expected} bytes, whitespace normalised)",
                self.matched
            ),
        }
    }

    /// Whether the restart has reproduced all of the delivered text: an answer that stops now is
    /// the one the client has.
    pub fn complete(&self) -> bool {
        self.matched == self.expected.len()
    }

    /// Takes the next piece of the restarted answer.
    pub fn feed(&mut self, text: &str) -> Progress {
        // Past the delivered text's end, a delivered text that ended in whitespace (or had
        // nothing but whitespace) lets the run of whitespace it ended with go on.
        let ends_in_whitespace = self.expected.is_empty() || self.expected.ends_with(' ');
        for (index, c) in text.char_indices() {
            self.held += c.len_utf8();
            if self.complete() {
                if ends_in_whitespace && c.is_whitespace() {
                    continue;
                }
                return Progress::CaughtUp(text[index..].to_string());
            }
            let Some(normalised) = normalise(c, &mut self.in_whitespace) else {
                continue;
            };
            if !self.expected[self.matched..].starts_with(normalised) {
                return Progress::Diverged {
                    matched: self.matched,
                };
            }
            self.matched += normalised.len_utf8();
            if self.complete() && !ends_in_whitespace {
                return Progress::CaughtUp(text[index + c.len_utf8()..].to_string());
            }
        }
        if self.held > self.limit {
            return Progress::TooLong { held: self.held };
        }
        Progress::Behind
    }
}

/// `c` as the comparison sees it: whitespace becomes one space per run (`None` for the rest of
/// the run, and for leading whitespace: `in_whitespace` starts true), anything else itself.
fn normalise(c: char, in_whitespace: &mut bool) -> Option<char> {
    let was_whitespace = std::mem::replace(in_whitespace, c.is_whitespace());
    match c.is_whitespace() {
        true if was_whitespace => None,
        true => Some(' '),
        false => Some(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` in order; the progress after each.
    fn replay(delivered: &str, pieces: &[&str]) -> Vec<Progress> {
        let mut replay = Replay::new(delivered);
        pieces.iter().map(|piece| replay.feed(piece)).collect()
    }

    #[test]
    fn a_faithful_restart_continues_where_the_client_is() {
        assert_eq!(
            replay(
                "The relay keeps",
                &["The", " relay", " keeps answering", "."]
            ),
            [
                Progress::Behind,
                Progress::Behind,
                Progress::CaughtUp(" answering".into()),
                // After catching up the stream passes text on itself; a replay fed more says so.
                Progress::CaughtUp(".".into()),
            ]
        );
        // Caught up exactly at a piece's end: nothing extra yet.
        assert_eq!(
            replay("The relay", &["The relay"]),
            [Progress::CaughtUp(String::new())]
        );
    }

    #[test]
    fn whitespace_is_compared_normalised() {
        // Line breaks for spaces, doubled spaces, leading whitespace: the same text.
        assert_eq!(
            replay("  Two\n\nlines", &["Two  lines", " more"]),
            [
                Progress::CaughtUp(String::new()),
                Progress::CaughtUp(" more".into())
            ]
        );
        // Delivered text that ended in whitespace: the rest of that run is not sent again.
        assert_eq!(
            replay("One ", &["One", "\n\n", "  Two"]),
            [
                Progress::Behind,
                Progress::Behind,
                Progress::CaughtUp("Two".into())
            ]
        );
        // Only whitespace delivered: the restart's first words go straight on.
        assert_eq!(
            replay(" \n", &["  Hello"]),
            [Progress::CaughtUp("Hello".into())]
        );
    }

    #[test]
    fn a_different_restart_diverges_at_the_first_difference() {
        assert_eq!(
            replay("The relay keeps", &["The", " router"]),
            [Progress::Behind, Progress::Diverged { matched: 5 }]
        );
        assert_eq!(
            replay("Héllo wörld", &["Héllo", " wx"]),
            [Progress::Behind, Progress::Diverged { matched: 8 }]
        );
        // A missing space is a difference.
        assert_eq!(
            replay("Hello world", &["Helloworld"]),
            [Progress::Diverged { matched: 5 }]
        );
    }

    #[test]
    fn a_replay_holds_a_bounded_amount_and_knows_when_an_answer_ends_early() {
        let mut replay = Replay::new("Hi");
        let spaces = " ".repeat(300);
        // Leading whitespace is never compared, but it is held: past the margin, it gives up.
        assert_eq!(replay.feed(&spaces), Progress::TooLong { held: 300 });

        let mut replay = Replay::new("Hello there");
        assert_eq!(replay.feed("Hello"), Progress::Behind);
        assert!(!replay.complete(), "an answer that stops here is shorter");
        let mut replay = Replay::new("Hello ");
        assert_eq!(replay.feed("Hello "), Progress::Behind);
        assert!(replay.complete(), "the same answer, ending in whitespace");
        let mut replay = Replay::new("Hello there");
        let stopped = replay.feed("Help");
        assert_eq!(stopped, Progress::Diverged { matched: 3 });
        assert!(
            replay
                .describe(&stopped)
                .contains("after 3 of its 11 bytes")
        );
        assert!(replay.describe(&Progress::Behind).contains("ended before"));
    }
}
