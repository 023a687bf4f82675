//! The answer cache: complete, successful answers kept and served again, by exact key or by a
//! similar prompt, and — past their freshness — as a stand-in when every target failed.
//!
//! - **Exact**: the key is a SHA-256 of everything that changes the answer: the model, the system
//!   prompt, the messages, `max_tokens`, the temperature and the stop sequences.
//! - **Semantic**: within one *scope* (same model, system prompt, parameters, the same earlier
//!   conversation word for word, and the same numbers and negations in the new message) the new
//!   message's local [`embedding`] is compared with the cached ones; the most similar at or above
//!   the configured threshold is a hit. Only the last message is compared: a chat resends its
//!   whole history with every question, and a long shared history would otherwise make any two
//!   follow-up questions look alike.
//! - **Freshness**: an answer is served normally for `ttl_secs`; it is kept `stale_secs` longer,
//!   when it is served only if every target of the plan failed (step "cache" of the failover
//!   plan, before the degraded answer).
//!
//! Only answers the requested model gave completely (end of turn, `max_tokens` or a stop
//! sequence) are stored; errors, truncated answers, content-filtered and degraded ones never are.
//! A request opts out with `"no_cache": true`. A cache that fails (Redis down) is a miss, logged,
//! never the request's failure. The backends are in [`store`].

pub mod embedding;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fm_protocol::{CacheStats, ChatRequest, Message, StopReason, Usage};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{CacheBackend, CacheConfig};
use crate::error::RelayError;
pub use store::CachedAnswer;
use store::{MemoryStore, RedisStore, SemanticEntry, Store};

/// The cache, shared by every request.
#[derive(Debug)]
pub struct AnswerCache {
    config: CacheConfig,
    store: Store,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    exact_hits: AtomicU64,
    semantic_hits: AtomicU64,
    stale_hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    errors: AtomicU64,
}

/// Where one request's answer is (or would be) in the cache. The embedding is not kept here:
/// it is computed from the request when a lookup or a write needs it, so an open stream does not
/// carry a kilobyte of floats.
#[derive(Debug, Clone)]
pub struct CacheKeys {
    exact: String,
    scope: String,
}

/// How a cached answer matched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Match {
    Exact,
    /// A similar conversation, with the cosine similarity of the two.
    Semantic(f32),
}

/// A cached answer found for a request.
#[derive(Debug, Clone)]
pub struct Hit {
    pub answer: CachedAnswer,
    pub matched: Match,
    /// Past its freshness: served only because every target failed.
    pub stale: bool,
}

impl Hit {
    /// The sentence the route's reason gets.
    pub fn describe(&self) -> String {
        let how = match self.matched {
            Match::Exact => "the same request".to_string(),
            Match::Semantic(similarity) => {
                format!("a similar request (similarity {similarity:.3})")
            }
        };
        if self.stale {
            format!("served a stale cached answer to {how} because every target failed")
        } else {
            format!("served from the cache: an answer to {how}")
        }
    }
}

/// What makes two answers the same, hashed into the keys.
#[derive(Serialize)]
struct KeyMaterial<'a> {
    model: &'a str,
    system: Option<&'a str>,
    messages: Option<&'a [Message]>,
    max_tokens: u32,
    temperature: Option<f32>,
    stop_sequences: &'a [String],
    response_format: Option<&'a fm_protocol::ResponseFormat>,
    tools: &'a [fm_protocol::ToolDefinition],
    tool_choice: Option<&'a fm_protocol::ToolChoice>,
    guard_terms: Option<Vec<String>>,
}

impl AnswerCache {
    /// The configured cache, or `None` when caching is off.
    pub async fn connect(config: &CacheConfig) -> Result<Option<Arc<AnswerCache>>, RelayError> {
        if !config.enabled {
            return Ok(None);
        }
        let keep_for = config.ttl() + config.stale();
        let store = match config.backend {
            CacheBackend::Memory => Store::Memory(MemoryStore::new(config.max_entries, keep_for)),
            CacheBackend::Redis => {
                Store::Redis(RedisStore::connect(&config.redis_url, keep_for).await?)
            }
        };
        Ok(Some(Arc::new(AnswerCache {
            config: config.clone(),
            store,
            counters: Counters::default(),
        })))
    }

    /// The keys of `request` answered by `model`.
    pub fn keys(&self, model: &str, request: &ChatRequest) -> CacheKeys {
        let (question, earlier) = split_question(request);
        let material = |messages, guard_terms| KeyMaterial {
            model,
            system: request.system.as_deref(),
            messages,
            max_tokens: request.max_tokens_or_default(),
            temperature: request.temperature,
            stop_sequences: &request.stop_sequences,
            response_format: request.response_format.as_ref(),
            tools: &request.tools,
            tool_choice: request.tool_choice.as_ref(),
            guard_terms,
        };
        let exact = digest(&material(Some(&request.messages), None));
        let scope = digest(&material(
            Some(earlier),
            Some(embedding::guard_terms(question)),
        ));
        CacheKeys { exact, scope }
    }

    /// The embedding of `request`'s new message, when the semantic cache is on. A message of
    /// tool results has none: its answer depends on the results, which no similar wording
    /// stands in for.
    fn embedding(&self, request: &ChatRequest) -> Option<embedding::Embedding> {
        let carries_results = request
            .messages
            .last()
            .is_some_and(|last| !last.tool_results.is_empty());
        (self.config.semantic && !carries_results)
            .then(|| embedding::embed(split_question(request).0))
    }

    /// The cached answer for `keys`: exact first, then the most similar; a stale one only when
    /// `allow_stale`.
    pub async fn lookup(
        &self,
        keys: &CacheKeys,
        request: &ChatRequest,
        allow_stale: bool,
    ) -> Option<Hit> {
        let found = self.find(keys, request, allow_stale).await;
        let counter = match &found {
            Ok(Some(hit)) if hit.stale => &self.counters.stale_hits,
            Ok(Some(Hit {
                matched: Match::Exact,
                ..
            })) => &self.counters.exact_hits,
            Ok(Some(_)) => &self.counters.semantic_hits,
            Ok(None) => &self.counters.misses,
            Err(err) => {
                tracing::warn!(error = %err, "cache lookup failed; treating it as a miss");
                &self.counters.errors
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found.ok().flatten()
    }

    async fn find(
        &self,
        keys: &CacheKeys,
        request: &ChatRequest,
        allow_stale: bool,
    ) -> Result<Option<Hit>, RelayError> {
        let usable = |answer: &CachedAnswer| {
            let age = now_ms().saturating_sub(answer.stored_at_ms);
            let stale = age >= duration_ms(self.config.ttl());
            (allow_stale || !stale).then_some(stale)
        };
        if let Some(answer) = self.store.get(&keys.exact).await?
            && let Some(stale) = usable(&answer)
        {
            return Ok(Some(Hit {
                answer,
                matched: Match::Exact,
                stale,
            }));
        }
        let Some(wanted) = self.embedding(request) else {
            return Ok(None);
        };
        let mut candidates: Vec<(f32, SemanticEntry)> = self
            .store
            .semantic_entries(&keys.scope)
            .await?
            .into_iter()
            .map(|entry| (embedding::similarity(&wanted, &entry.embedding), entry))
            .filter(|(similarity, _)| *similarity >= self.config.semantic_threshold)
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (similarity, entry) in candidates {
            if let Some(answer) = self.store.get(&entry.key).await?
                && let Some(stale) = usable(&answer)
            {
                return Ok(Some(Hit {
                    answer,
                    matched: Match::Semantic(similarity),
                    stale,
                }));
            }
        }
        Ok(None)
    }

    /// Whether an answer that ended this way may be stored: not a tool call (the caller acts
    /// on it, and expects a fresh one).
    pub fn is_cacheable(stop_reason: StopReason) -> bool {
        matches!(
            stop_reason,
            StopReason::EndTurn | StopReason::MaxTokens | StopReason::StopSequence
        )
    }

    /// Stores a complete answer under `keys`, in the background (a Redis round trip must not
    /// delay the answer).
    pub fn store(
        self: &Arc<Self>,
        keys: CacheKeys,
        request: &ChatRequest,
        model: &str,
        text: String,
        stop_reason: StopReason,
        usage: Usage,
    ) {
        if !Self::is_cacheable(stop_reason) {
            return;
        }
        let answer = CachedAnswer {
            text,
            stop_reason,
            usage,
            model: model.to_string(),
            stored_at_ms: now_ms(),
        };
        let embedding = self.embedding(request);
        let cache = self.clone();
        let write = async move {
            let stored = async {
                cache.store.put(&keys.exact, answer).await?;
                if let Some(embedding) = embedding {
                    let entry = SemanticEntry {
                        key: keys.exact,
                        embedding,
                    };
                    cache.store.add_semantic(&keys.scope, entry).await?;
                }
                Ok::<_, RelayError>(())
            }
            .await;
            match stored {
                Ok(()) => cache.counters.stored.fetch_add(1, Ordering::Relaxed),
                Err(err) => {
                    tracing::warn!(error = %err, "could not store an answer in the cache");
                    cache.counters.errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        };
        match &self.store {
            // In memory the write is a map insert: do it now, so the next request sees it.
            Store::Memory(_) => futures_util::FutureExt::now_or_never(write)
                .unwrap_or_else(|| tracing::warn!("an in-memory cache write did not complete")),
            Store::Redis(_) => {
                tokio::spawn(write);
            }
        }
    }

    /// The counters, as `GET /v1/stats` shows them.
    pub fn stats(&self) -> CacheStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheStats {
            exact_hits: load(&self.counters.exact_hits),
            semantic_hits: load(&self.counters.semantic_hits),
            stale_hits: load(&self.counters.stale_hits),
            misses: load(&self.counters.misses),
            stored: load(&self.counters.stored),
            errors: load(&self.counters.errors),
        }
    }
}

/// The new message (the last one), and the conversation before it.
fn split_question(request: &ChatRequest) -> (&str, &[Message]) {
    match request.messages.split_last() {
        Some((last, earlier)) => (last.content.as_str(), earlier),
        None => ("", &[]),
    }
}

fn digest(material: &KeyMaterial<'_>) -> String {
    // Serialising these plain types cannot fail.
    let bytes = serde_json::to_vec(material).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cache(semantic: bool) -> Arc<AnswerCache> {
        let config = CacheConfig {
            enabled: true,
            semantic,
            ..CacheConfig::default()
        };
        AnswerCache::connect(&config).await.unwrap().unwrap()
    }

    fn ask(prompt: &str) -> ChatRequest {
        ChatRequest::from_prompt(prompt)
    }

    #[tokio::test]
    async fn every_field_that_changes_the_answer_changes_the_key() {
        let cache = cache(false).await;
        let base = ask("What is the capital of France?");
        let key = |model: &str, request: &ChatRequest| cache.keys(model, request).exact;
        let reference = key("m", &base);
        assert_eq!(reference, key("m", &base.clone()));
        let variants = [
            ChatRequest {
                system: Some("be brief".into()),
                ..base.clone()
            },
            ChatRequest {
                max_tokens: Some(10),
                ..base.clone()
            },
            ChatRequest {
                temperature: Some(0.5),
                ..base.clone()
            },
            ChatRequest {
                stop_sequences: vec!["END".into()],
                ..base.clone()
            },
            ask("What is the capital of Spain?"),
        ];
        for variant in &variants {
            assert_ne!(key("m", variant), reference, "{variant:?}");
        }
        assert_ne!(key("other", &base), reference);
        // The routing hint and the opt-out do not change the answer.
        let hinted = ChatRequest {
            routing_hint: Some("fast".into()),
            ..base.clone()
        };
        assert_eq!(key("m", &hinted), reference);
    }

    #[tokio::test]
    async fn exact_then_semantic_hits_and_numbers_keep_questions_apart() {
        let cache = cache(true).await;
        let asked = ask("What is the capital of France?");
        let keys = cache.keys("m", &asked);
        assert!(cache.lookup(&keys, &asked, false).await.is_none());
        cache.store(
            keys.clone(),
            &asked,
            "m",
            "Paris.".into(),
            StopReason::EndTurn,
            Usage::new(7, 2),
        );
        let exact = cache.lookup(&keys, &asked, false).await.unwrap();
        assert_eq!(exact.matched, Match::Exact);
        assert_eq!(exact.answer.text, "Paris.");
        assert!(!exact.stale);

        let lookup = |model: &'static str, prompt: &'static str| {
            let cache = cache.clone();
            async move {
                let request = ask(prompt);
                cache
                    .lookup(&cache.keys(model, &request), &request, false)
                    .await
            }
        };
        let similar = lookup("m", "what is the capital of france").await.unwrap();
        assert!(matches!(similar.matched, Match::Semantic(s) if s > 0.95));
        assert!(
            lookup("other", "what is the capital of france")
                .await
                .is_none()
        );
        assert!(lookup("m", "How do I sort a list?").await.is_none());

        let sum = ask("What is 2 + 2?");
        cache.store(
            cache.keys("m", &sum),
            &sum,
            "m",
            "4".into(),
            StopReason::EndTurn,
            Usage::default(),
        );
        assert!(lookup("m", "What is 2 + 3?").await.is_none());
        let stats = cache.stats();
        assert_eq!((stats.exact_hits, stats.semantic_hits), (1, 1));
        assert_eq!(stats.misses, 4);
        assert_eq!(stats.stored, 2);
    }

    #[tokio::test]
    async fn follow_ups_match_only_on_the_new_message_of_the_same_conversation() {
        let cache = cache(true).await;
        let history = |question: &str, earlier: &str| ChatRequest {
            messages: vec![
                Message::user(earlier),
                // A long shared answer dominates an embedding of the whole conversation.
                Message::assistant("The relay streams tokens as they arrive. ".repeat(40)),
                Message::user(question),
            ],
            ..ChatRequest::default()
        };
        let first = history(
            "Show me code that reads the first token",
            "How does it stream?",
        );
        cache.store(
            cache.keys("m", &first),
            &first,
            "m",
            "fn first_token() {}".into(),
            StopReason::EndTurn,
            Usage::default(),
        );
        let lookup = |request: ChatRequest| {
            let cache = cache.clone();
            async move {
                cache
                    .lookup(&cache.keys("m", &request), &request, false)
                    .await
            }
        };
        assert!(
            lookup(history(
                "Explain failover across regions in detail",
                "How does it stream?"
            ))
            .await
            .is_none(),
            "another follow-up of the same conversation is another question"
        );
        assert!(
            lookup(history(
                "show me code that reads the first token",
                "Why is it fast?"
            ))
            .await
            .is_none(),
            "the same question after another conversation may mean something else"
        );
        let rephrased = lookup(history(
            "show me code that reads the first token?",
            "How does it stream?",
        ))
        .await
        .expect("the same follow-up, rephrased");
        assert!(matches!(rephrased.matched, Match::Semantic(_)));
    }

    #[tokio::test]
    async fn incomplete_answers_are_not_stored() {
        let cache = cache(false).await;
        let hello = ask("hello");
        let keys = cache.keys("m", &hello);
        for reason in [
            StopReason::ContentFiltered,
            StopReason::ToolUse,
            StopReason::Other,
        ] {
            cache.store(
                keys.clone(),
                &hello,
                "m",
                "x".into(),
                reason,
                Usage::default(),
            );
        }
        assert!(cache.lookup(&keys, &hello, true).await.is_none());
        assert_eq!(cache.stats().stored, 0);
    }

    #[tokio::test]
    async fn a_stale_answer_is_served_only_when_allowed() {
        let config = CacheConfig {
            enabled: true,
            ttl_secs: 0,
            ..CacheConfig::default()
        };
        let cache = AnswerCache::connect(&config).await.unwrap().unwrap();
        let hello = ask("hello");
        let keys = cache.keys("m", &hello);
        cache.store(
            keys.clone(),
            &hello,
            "m",
            "hi".into(),
            StopReason::EndTurn,
            Usage::default(),
        );
        assert!(cache.lookup(&keys, &hello, false).await.is_none());
        let stale = cache.lookup(&keys, &hello, true).await.unwrap();
        assert!(stale.stale);
        assert!(stale.describe().contains("every target failed"));
    }
}
