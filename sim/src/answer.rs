//! An answer planned before it is sent: its tokens, why it stops, and its usage. Both the
//! streaming and the non-streaming operations send the same plan, so a test can compare a
//! streamed answer with the one-shot answer to the same prompt.
//!
//! A conversation that ends with an assistant message (a prefill) is continued: when the prefill
//! is the start of the answer the conversation without it would get, the continuation is the
//! rest of that answer, so an answer broken off and continued elsewhere reads as one; otherwise
//! a fresh answer is generated for the whole conversation.

use crate::config::{ModelProfile, SimConfig};
use crate::text;
use crate::wire::Prompt;

/// Why a planned answer ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopKind {
    EndTurn,
    MaxTokens,
    /// The answer reached this stop sequence (which is not part of the text).
    StopSequence(String),
}

impl StopKind {
    /// The stop reason as both Converse and Anthropic spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopKind::EndTurn => "end_turn",
            StopKind::MaxTokens => "max_tokens",
            StopKind::StopSequence(_) => "stop_sequence",
        }
    }

    /// The `finish_reason` of an OpenAI answer.
    pub fn openai_finish_reason(&self) -> &'static str {
        match self {
            StopKind::MaxTokens => "length",
            StopKind::EndTurn | StopKind::StopSequence(_) => "stop",
        }
    }

    pub fn stop_sequence(&self) -> Option<&str> {
        match self {
            StopKind::StopSequence(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The model id without any fault suffix.
    pub model: String,
    pub tokens: Vec<String>,
    pub stop: StopKind,
    pub input_tokens: u32,
    pub profile: ModelProfile,
}

impl Answer {
    pub fn plan(config: &SimConfig, model: &str, prompt: &Prompt) -> Answer {
        if prompt.ends_with_assistant() {
            let mut unfilled = prompt.clone();
            let prefill = unfilled
                .messages
                .pop()
                .map(|(_, text)| text)
                .unwrap_or_default();
            let whole = Answer::generate(config, model, &unfilled);
            if let Some(rest) = whole.after_prefix(&prefill) {
                return Answer {
                    tokens: rest,
                    input_tokens: text::estimate_tokens(&prompt.texts()),
                    ..whole
                };
            }
        }
        Answer::generate(config, model, prompt)
    }

    /// The tokens that follow `prefix` when the answer's text starts with it (the token the
    /// prefix ends inside is split); `None` when it does not.
    fn after_prefix(&self, prefix: &str) -> Option<Vec<String>> {
        if !self.text().starts_with(prefix) {
            return None;
        }
        let mut skipped = 0;
        let mut rest = Vec::new();
        for token in &self.tokens {
            if skipped >= prefix.len() {
                rest.push(token.clone());
            } else if skipped + token.len() > prefix.len() {
                rest.push(token[prefix.len() - skipped..].to_string());
                skipped = prefix.len();
            } else {
                skipped += token.len();
            }
        }
        Some(rest)
    }

    fn generate(config: &SimConfig, model: &str, prompt: &Prompt) -> Answer {
        let profile = config.profile(model).clone();
        let texts = prompt.texts();
        let mut parts = texts.clone();
        parts.push(model);
        let seed = text::seed_for(&parts, config.seed);
        let natural = profile
            .answer_tokens
            .unwrap_or_else(|| text::natural_length(seed));
        let (count, mut stop) = if natural <= prompt.max_tokens {
            (natural, StopKind::EndTurn)
        } else {
            (prompt.max_tokens, StopKind::MaxTokens)
        };
        let mut tokens = text::generate_tokens(seed, count);
        if let Some(labels) = prompt.asked_labels() {
            tokens = vec![labels[(seed % labels.len() as u64) as usize].clone()];
        } else if let Some(keys) = prompt.asked_json_keys() {
            tokens = text::json_object(&keys, seed);
        } else if prompt.asks_for_code() {
            tokens = text::with_code_block(tokens, seed);
        }
        if let Some((cut, sequence)) = first_stop_sequence(&tokens, &prompt.stop_sequences) {
            tokens = truncate_tokens(tokens, cut);
            stop = StopKind::StopSequence(sequence);
        }
        Answer {
            model: model.to_string(),
            tokens,
            stop,
            input_tokens: text::estimate_tokens(&texts),
            profile,
        }
    }

    pub fn output_tokens(&self) -> u32 {
        u32::try_from(self.tokens.len()).unwrap_or(u32::MAX)
    }

    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}

/// The byte offset of the earliest stop sequence in the answer's text, and which one it is.
fn first_stop_sequence(tokens: &[String], stops: &[String]) -> Option<(usize, String)> {
    let text = tokens.concat();
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.clone())))
        .min_by_key(|(at, _)| *at)
}

/// Keeps exactly the first `cut` bytes of the concatenated tokens.
fn truncate_tokens(tokens: Vec<String>, cut: usize) -> Vec<String> {
    let mut kept = Vec::new();
    let mut length = 0;
    for mut token in tokens {
        if length + token.len() <= cut {
            length += token.len();
            kept.push(token);
        } else {
            token.truncate(cut - length);
            if !token.is_empty() {
                kept.push(token);
            }
            break;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(max_tokens: u32, stops: &[&str]) -> Prompt {
        Prompt {
            system: vec![],
            messages: vec![("user".into(), "Tell me about relays".into())],
            max_tokens,
            stop_sequences: stops.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn max_tokens_caps_the_answer() {
        let config = SimConfig::default();
        let full = Answer::plan(&config, "m", &prompt(4096, &[]));
        assert_eq!(full.stop, StopKind::EndTurn);
        assert!((40..=160).contains(&full.output_tokens()));
        let short = Answer::plan(&config, "m", &prompt(5, &[]));
        assert_eq!(short.stop, StopKind::MaxTokens);
        assert_eq!(short.output_tokens(), 5);
    }

    #[test]
    fn a_prefill_is_continued_with_the_rest_of_the_answer() {
        let config = SimConfig::default();
        let whole = Answer::plan(&config, "m", &prompt(4096, &[])).text();
        // Cut inside a token and after trailing whitespace was trimmed, as a relay does.
        let cut = whole[..whole.len() / 2].trim_end();
        let mut continued = prompt(4096, &[]);
        continued
            .messages
            .push(("assistant".into(), cut.to_string()));
        let rest = Answer::plan(&config, "m", &continued);
        assert_eq!(format!("{cut}{}", rest.text()), whole);
        assert_eq!(rest.stop, StopKind::EndTurn);

        let mut unrelated = prompt(4096, &[]);
        unrelated
            .messages
            .push(("assistant".into(), "Something else entirely".into()));
        let fresh = Answer::plan(&config, "m", &unrelated);
        assert!(!fresh.tokens.is_empty());
        assert_ne!(fresh.text(), whole);
    }

    #[test]
    fn stop_sequences_end_the_answer_before_them() {
        let config = SimConfig::default();
        let full = Answer::plan(&config, "m", &prompt(4096, &[]));
        let text = full.text();
        let stop = ".";
        let at = text.find(stop).unwrap();
        let stopped = Answer::plan(&config, "m", &prompt(4096, &[stop]));
        assert_eq!(stopped.text(), text[..at]);
        assert_eq!(stopped.stop, StopKind::StopSequence(".".into()));
    }
}
