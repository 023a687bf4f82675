//! An answer planned before it is sent: its tokens, why it stops, and its usage. Both the
//! streaming and the non-streaming operations send the same plan, so a test can compare a
//! streamed answer with the one-shot answer to the same prompt.
//!
//! A conversation that ends with an assistant message (a prefill) is continued: when the prefill
//! is the start of the answer the conversation without it would get, the continuation is the
//! rest of that answer, so an answer broken off and continued elsewhere reads as one; otherwise
//! a fresh answer is generated for the whole conversation.
//!
//! With tools, a prompt that asks for one (see [`Prompt::tool_to_call`]) gets a short sentence
//! and then the call, whose input is the first JSON object in the last user message (`{}` when
//! there is none); a prompt whose last message carries tool results gets an answer that starts
//! with what the tool returned.

use crate::config::{ModelProfile, SimConfig};
use crate::text;
use crate::wire::Prompt;

/// The text tokens before a tool call.
const TOKENS_BEFORE_TOOL_CALL: u32 = 6;
/// How many pieces a tool call's input JSON streams in.
const TOOL_INPUT_PIECES: usize = 3;
/// How many `{` of the last user message are tried as the start of a JSON object.
const MAX_JSON_STARTS_TRIED: usize = 16;
/// How much of a tool's result the answer quotes.
const MAX_QUOTED_RESULT_CHARS: usize = 200;

/// Why a planned answer ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopKind {
    EndTurn,
    MaxTokens,
    /// The answer reached this stop sequence (which is not part of the text).
    StopSequence(String),
    /// The answer ends with a tool call.
    ToolUse,
}

impl StopKind {
    /// The stop reason as both Converse and Anthropic spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopKind::EndTurn => "end_turn",
            StopKind::MaxTokens => "max_tokens",
            StopKind::StopSequence(_) => "stop_sequence",
            StopKind::ToolUse => "tool_use",
        }
    }

    /// The `finish_reason` of an OpenAI answer.
    pub fn openai_finish_reason(&self) -> &'static str {
        match self {
            StopKind::MaxTokens => "length",
            StopKind::ToolUse => "tool_calls",
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
    /// The tool call after the text, if the answer makes one (then `stop` is `ToolUse`).
    pub tool_call: Option<PlannedToolCall>,
    pub stop: StopKind,
    pub input_tokens: u32,
    pub profile: ModelProfile,
}

/// A tool call an answer makes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedToolCall {
    /// Unique per prompt and stable for the same prompt.
    pub id: String,
    pub name: String,
    pub input: serde_json::Value,
}

impl PlannedToolCall {
    /// The input's JSON text in the pieces a stream sends it in (split at character
    /// boundaries); each counts as one output token.
    pub fn input_pieces(&self) -> Vec<String> {
        let json = self.input.to_string();
        let chars: Vec<char> = json.chars().collect();
        let size = chars.len().div_ceil(TOOL_INPUT_PIECES).max(1);
        chars.chunks(size).map(|c| c.iter().collect()).collect()
    }
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
        let mut tool_call = None;
        if let Some(name) = prompt.tool_to_call() {
            let call = PlannedToolCall {
                id: format!("tooluse_{seed:016x}"),
                name: name.to_string(),
                input: first_json_object(prompt.last_user_text()),
            };
            let before = TOKENS_BEFORE_TOOL_CALL.min(count);
            tokens.truncate(before as usize);
            // A call that would not fit in `max_tokens` is not made: the text is cut short.
            if before as usize + call.input_pieces().len() <= prompt.max_tokens as usize {
                tool_call = Some(call);
                stop = StopKind::ToolUse;
            }
        } else if let Some(output) = prompt.answered_tool_results().next() {
            let quoted: String = output.text.chars().take(MAX_QUOTED_RESULT_CHARS).collect();
            let mut answer = vec![format!("The tool returned {quoted}.")];
            answer.extend(tokens);
            answer.truncate(count as usize);
            tokens = answer;
        } else if let Some(labels) = prompt.asked_labels() {
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
            tool_call,
            stop,
            input_tokens: text::estimate_tokens(&texts),
            profile,
        }
    }

    /// The text's tokens and the tool call's input pieces.
    pub fn output_tokens(&self) -> u32 {
        let pieces = self
            .tool_call
            .as_ref()
            .map_or(0, |call| call.input_pieces().len());
        u32::try_from(self.tokens.len() + pieces).unwrap_or(u32::MAX)
    }

    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}

/// The first JSON object in `text` (tried from each of its first `{`), or `{}`.
fn first_json_object(text: &str) -> serde_json::Value {
    text.match_indices('{')
        .take(MAX_JSON_STARTS_TRIED)
        .find_map(|(at, _)| {
            serde_json::Deserializer::from_str(&text[at..])
                .into_iter::<serde_json::Value>()
                .next()
                .and_then(Result::ok)
                .filter(serde_json::Value::is_object)
        })
        .unwrap_or_else(|| serde_json::json!({}))
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
    use crate::wire::{ToolChoice, ToolOutput};

    fn prompt(max_tokens: u32, stops: &[&str]) -> Prompt {
        Prompt {
            system: vec![],
            messages: vec![("user".into(), "Tell me about relays".into())],
            max_tokens,
            stop_sequences: stops.iter().map(|s| s.to_string()).collect(),
            ..Prompt::default()
        }
    }

    fn with_tools(text: &str, choice: ToolChoice) -> Prompt {
        Prompt {
            messages: vec![("user".into(), text.into())],
            max_tokens: 4096,
            tools: vec!["get_weather".into(), "search".into()],
            tool_choice: choice,
            ..Prompt::default()
        }
    }

    #[test]
    fn a_prompt_that_names_a_tool_gets_a_call_with_the_json_it_gives() {
        let config = SimConfig::default();
        let answer = Answer::plan(
            &config,
            "m",
            &with_tools(
                r#"Use search with {"query": "relays", "limit": 2} please"#,
                ToolChoice::Auto,
            ),
        );
        assert_eq!(answer.stop, StopKind::ToolUse);
        let call = answer.tool_call.as_ref().expect("a tool call");
        assert_eq!(call.name, "search");
        assert_eq!(
            call.input,
            serde_json::json!({"query": "relays", "limit": 2})
        );
        assert_eq!(call.input_pieces().concat(), call.input.to_string());
        assert_eq!(call.input_pieces().len(), TOOL_INPUT_PIECES);
        assert_eq!(answer.tokens.len(), TOKENS_BEFORE_TOOL_CALL as usize);

        let unnamed = with_tools("Tell me about relays", ToolChoice::Auto);
        assert!(Answer::plan(&config, "m", &unnamed).tool_call.is_none());
        let required = with_tools("Tell me about relays", ToolChoice::Any);
        let first = Answer::plan(&config, "m", &required).tool_call.unwrap();
        assert_eq!(
            (first.name.as_str(), first.input.clone()),
            ("get_weather", serde_json::json!({}))
        );
        let named = with_tools("search for it", ToolChoice::Tool("get_weather".into()));
        assert_eq!(
            Answer::plan(&config, "m", &named).tool_call.unwrap().name,
            "get_weather"
        );
        let refused = with_tools("search for it", ToolChoice::None);
        assert!(Answer::plan(&config, "m", &refused).tool_call.is_none());
    }

    #[test]
    fn a_tool_result_is_answered_not_called_again() {
        let config = SimConfig::default();
        let mut prompt = with_tools("Use search", ToolChoice::Auto);
        let call = Answer::plan(&config, "m", &prompt).tool_call.unwrap();
        prompt.messages.push(("assistant".into(), String::new()));
        prompt.tool_calls.push((1, call.id.clone()));
        prompt.messages.push(("user".into(), String::new()));
        prompt.tool_results.push((
            2,
            ToolOutput {
                tool_call_id: call.id.clone(),
                text: "42 results".into(),
            },
        ));
        assert_eq!(prompt.check(), Ok(()));
        let answer = Answer::plan(&config, "m", &prompt);
        assert!(answer.tool_call.is_none());
        assert!(answer.text().starts_with("The tool returned 42 results."));

        prompt.tool_results[0].1.tool_call_id = "tooluse_other".into();
        assert!(prompt.check().unwrap_err().contains("tooluse_other"));
        prompt.tools.clear();
        assert!(prompt.check().unwrap_err().contains("toolConfig"));
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
