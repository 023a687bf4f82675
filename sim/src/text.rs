//! Deterministic, plausible answer text: sentences drawn from a small vocabulary with a PRNG
//! seeded from the request, so the same prompt always yields the same answer and tests can
//! compare what went through the relay with what the simulator produced.

use std::hash::{DefaultHasher, Hash, Hasher};

const SUBJECTS: &[&str] = &[
    "the relay",
    "a model",
    "the request",
    "this answer",
    "the stream",
    "each token",
    "the gateway",
    "a retry",
    "the region",
    "the cache",
    "every client",
    "the router",
];
const VERBS: &[&str] = &[
    "carries", "returns", "measures", "shapes", "routes", "protects", "explains", "balances",
    "observes", "delivers", "retries", "records",
];
const OBJECTS: &[&str] = &[
    "the first token",
    "a steady stream",
    "useful context",
    "the final usage",
    "a clear error",
    "every deadline",
    "the budget",
    "the latency",
    "careful backoff",
    "a fallback plan",
    "the prompt",
    "quiet progress",
];
const TAILS: &[&str] = &[
    "without delay",
    "under load",
    "with care",
    "as promised",
    "in order",
    "across regions",
    "for the user",
    "at the edge",
    "on time",
    "when it matters",
];

/// A seed for one prompt: stable for the same inputs within one build of the simulator. The
/// answer's length limit is not part of it, so a lower `max_tokens` cuts the same answer short.
pub fn seed_for(parts: &[&str], config_seed: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    config_seed.hash(&mut hasher);
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

/// A seeded length between 40 and 160 tokens.
pub fn natural_length(seed: u64) -> u32 {
    fastrand::Rng::with_seed(seed ^ 0x5eed).u32(40..=160)
}

/// `count` tokens of text; concatenated they read as sentences.
pub fn generate_tokens(seed: u64, count: u32) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tokens = Vec::with_capacity(count as usize);
    let mut sentence: Vec<&str> = Vec::new();
    while tokens.len() < count as usize {
        if sentence.is_empty() {
            for list in [SUBJECTS, VERBS, OBJECTS, TAILS] {
                sentence.extend(list[rng.usize(..list.len())].split(' '));
            }
            sentence.reverse();
        }
        let word = sentence.pop().unwrap_or("and");
        let start_of_sentence =
            tokens.is_empty() || tokens.last().is_some_and(|t: &String| t.ends_with('.'));
        let mut token = String::with_capacity(word.len() + 2);
        if !tokens.is_empty() {
            token.push(' ');
        }
        if start_of_sentence {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                token.extend(first.to_uppercase());
                token.push_str(chars.as_str());
            }
        } else {
            token.push_str(word);
        }
        if sentence.is_empty() {
            token.push('.');
        }
        tokens.push(token);
    }
    tokens
}

/// Code snippets an answer to a question about code shows, as tokens: `(language, tokens)`.
const SNIPPETS: &[&[&str]] = &[
    &[
        "\n\n```rust\n",
        "fn",
        " first_token",
        "(stream",
        ": &mut",
        " Stream",
        ")",
        " ->",
        " Option",
        "<String>",
        " {\n",
        "    stream",
        ".next",
        "()",
        "\n",
        "}\n",
        "```\n\n",
    ],
    &[
        "\n\n```python\n",
        "def",
        " first_token",
        "(stream",
        "):\n",
        "    return",
        " next",
        "(stream",
        ",",
        " None",
        ")\n",
        "```\n\n",
    ],
    &[
        "\n\n```sh\n",
        "curl",
        " -N",
        " http://127.0.0.1:8080",
        "/v1/chat/stream",
        "\n",
        "```\n\n",
    ],
];

/// The same number of tokens with a fenced code block after the first sentence, as an answer to
/// a question about code would have (the tail is cut so the length stays exact).
pub fn with_code_block(tokens: Vec<String>, seed: u64) -> Vec<String> {
    let count = tokens.len();
    let Some(first_sentence) = tokens.iter().position(|t| t.ends_with('.')) else {
        return tokens;
    };
    let snippet = SNIPPETS[fastrand::Rng::with_seed(seed ^ 0xc0de).usize(..SNIPPETS.len())];
    let mut rest = tokens.into_iter();
    let mut out: Vec<String> = rest.by_ref().take(first_sentence + 1).collect();
    out.extend(snippet.iter().map(|t| t.to_string()));
    // The sentence after the block starts a paragraph: no leading space.
    out.extend(rest.enumerate().map(|(i, t)| {
        if i == 0 {
            t.trim_start().to_string()
        } else {
            t
        }
    }));
    out.truncate(count);
    out
}

/// A JSON object with `keys`, each a few seeded words, as tokens of a few characters each (so a
/// stream of it arrives in pieces like any answer).
pub fn json_object(keys: &[String], seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x0b1ec7);
    let object: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|key| {
            let words = generate_tokens(rng.u64(..), rng.u32(2..=5)).concat();
            let value = words.trim().trim_end_matches('.').to_string();
            (key.clone(), serde_json::Value::String(value))
        })
        .collect();
    let json = serde_json::Value::Object(object).to_string();
    let chars: Vec<char> = json.chars().collect();
    chars
        .chunks(4)
        .map(|chunk| chunk.iter().collect())
        .collect()
}

/// A rough token count of text, as the usage numbers need: one token per four characters.
pub fn estimate_tokens(texts: &[&str]) -> u32 {
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_text_and_exact_length() {
        let a = generate_tokens(7, 50);
        assert_eq!(a, generate_tokens(7, 50));
        assert_eq!(a.len(), 50);
        assert_ne!(a, generate_tokens(8, 50));
        let text: String = a.concat();
        assert!(text.starts_with(char::is_uppercase), "{text}");
        assert!(text.contains(". "), "{text}");
    }

    #[test]
    fn a_code_block_follows_the_first_sentence_and_the_length_stays() {
        let plain = generate_tokens(3, 80);
        let with_code = with_code_block(plain.clone(), 3);
        assert_eq!(with_code.len(), 80);
        let text = with_code.concat();
        let first_sentence = &plain[..=plain.iter().position(|t| t.ends_with('.')).unwrap()];
        assert!(text.starts_with(&first_sentence.concat()), "{text}");
        let fence = text.find("\n\n```").expect("a fenced block");
        let close = text[fence + 5..].find("```\n\n").expect("a closed fence");
        assert!(
            text[fence + 5 + close..].len() > 5,
            "text follows the block: {text}"
        );
    }

    #[test]
    fn lengths_are_in_range() {
        for seed in 0..200 {
            assert!((40..=160).contains(&natural_length(seed)));
        }
    }

    #[test]
    fn a_json_object_has_every_key_and_parses() {
        let keys = vec!["party".to_string(), "due date".to_string()];
        let tokens = json_object(&keys, 7);
        assert!(tokens.len() > 3);
        let value: serde_json::Value = serde_json::from_str(&tokens.concat()).unwrap();
        for key in &keys {
            assert!(
                value[key].as_str().is_some_and(|v| !v.is_empty()),
                "{value}"
            );
        }
    }
}
