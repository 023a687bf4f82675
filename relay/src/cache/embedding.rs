//! A local text embedding for the semantic cache: no model, no network, a few microseconds per
//! prompt.
//!
//! Signed feature hashing ("the hashing trick") of three kinds of features — lower-cased words,
//! word pairs, and character trigrams inside words — into [`DIMENSIONS`] buckets, then L2
//! normalisation, so the cosine similarity of two embeddings is their dot product. Rephrasings
//! that keep most words ("What's the capital of France?" / "what is the capital of france")
//! land close together; different questions do not. It is deliberately lexical: it finds the
//! same question asked again, not the same meaning in other words. Numbers and negations are not
//! left to similarity but made part of the cache scope (see [`guard_terms`]), so "2 + 2" never
//! matches "2 + 3" and "Should I restart it?" never matches "Should I not restart it?".

/// The embedding's length.
pub const DIMENSIONS: usize = 256;

/// A normalised embedding.
pub type Embedding = Vec<f32>;

/// The embedding of `text`.
pub fn embed(text: &str) -> Embedding {
    let mut vector = vec![0.0f32; DIMENSIONS];
    let words: Vec<String> = words(text).collect();
    for word in &words {
        add(&mut vector, b"w", word.as_bytes(), 1.0);
        let padded: Vec<char> = format!("^{word}$").chars().collect();
        for gram in padded.windows(3) {
            let gram: String = gram.iter().collect();
            add(&mut vector, b"c", gram.as_bytes(), 0.5);
        }
    }
    for pair in words.windows(2) {
        add(
            &mut vector,
            b"p",
            format!("{} {}", pair[0], pair[1]).as_bytes(),
            1.0,
        );
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// The cosine similarity of two normalised embeddings.
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What a semantic match must share exactly: the numbers of `text` and its negations, in order.
pub fn guard_terms(text: &str) -> Vec<String> {
    let mut terms = numbers(text);
    terms.extend(
        words(text).filter(|word| matches!(word.as_str(), "not" | "no" | "never" | "without")),
    );
    terms
}

/// The numbers in `text`, in order.
fn numbers(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|part| part.trim_matches('.'))
        .filter(|part| part.chars().any(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

/// Lower-cased alphabetic words, with common English contractions spelled out ("what's" is
/// "what is"); digits are left to [`numbers`].
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic() && c != '\'' && c != '’')
        .map(|word| {
            word.trim_matches(['\'', '’'])
                .to_lowercase()
                .replace('’', "'")
        })
        .filter(|word| !word.is_empty())
        .flat_map(|word| match expand_contraction(&word) {
            Some(expanded) => expanded.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            None => vec![word],
        })
}

fn expand_contraction(word: &str) -> Option<&'static [&'static str]> {
    Some(match word {
        "what's" => &["what", "is"],
        "it's" => &["it", "is"],
        "that's" => &["that", "is"],
        "there's" => &["there", "is"],
        "who's" => &["who", "is"],
        "where's" => &["where", "is"],
        "how's" => &["how", "is"],
        "i'm" => &["i", "am"],
        "you're" => &["you", "are"],
        "we're" => &["we", "are"],
        "they're" => &["they", "are"],
        "i've" => &["i", "have"],
        "don't" => &["do", "not"],
        "doesn't" => &["does", "not"],
        "isn't" => &["is", "not"],
        "aren't" => &["are", "not"],
        "can't" => &["can", "not"],
        "won't" => &["will", "not"],
        "let's" => &["let", "us"],
        _ => return None,
    })
}

/// Adds one feature: FNV-1a of its kind and bytes picks the bucket; a high bit picks the sign, so
/// collisions cancel out on average instead of piling up.
fn add(vector: &mut [f32], kind: &[u8], bytes: &[u8], weight: f32) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in kind.iter().chain(bytes) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let bucket = (hash % DIMENSIONS as u64) as usize;
    let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
    vector[bucket] += sign * weight;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn similar(a: &str, b: &str) -> f32 {
        similarity(&embed(a), &embed(b))
    }

    #[test]
    fn the_same_question_rephrased_is_close_and_another_is_far() {
        let same = similar(
            "What is the capital of France?",
            "what is the capital of france",
        );
        assert!(same > 0.99, "{same}");
        let close = similar(
            "What is the capital of France?",
            "What's the capital of France?",
        );
        assert!(close > 0.8, "{close}");
        let far = similar(
            "What is the capital of France?",
            "How do I sort a list in Python?",
        );
        assert!(far < 0.3, "{far}");
    }

    #[test]
    fn embeddings_are_normalised_and_deterministic() {
        let a = embed("Tell me about relays");
        assert_eq!(a, embed("Tell me about relays"));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert!(embed("").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn numbers_are_read_exactly() {
        assert_eq!(numbers("What is 2 + 2?"), ["2", "2"]);
        assert_eq!(numbers("Pi is 3.14, e is 2.718."), ["3.14", "2.718"]);
        assert!(numbers("no digits here.").is_empty());
        assert_eq!(guard_terms("Don't restart 2 servers"), ["2", "not"]);
        assert!(guard_terms("Restart the servers").is_empty());
    }
}
