//! Where cached answers live: in this process ([`moka`], bounded, with expiry) or in Redis, where
//! every relay instance pointed at the same server shares them.
//!
//! Two kinds of records: answers, under their exact key, and per scope (model, system prompt,
//! parameters, numbers) a bounded list of `(exact key, embedding)` entries the semantic lookup
//! scans. Both expire after the cache's TTL plus its stale window.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fm_protocol::{StopReason, Usage};
use serde::{Deserialize, Serialize};

use crate::error::RelayError;

/// Semantic entries kept per scope; the oldest go first.
pub const SEMANTIC_ENTRIES_PER_SCOPE: usize = 512;

/// A complete answer as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub text: String,
    pub stop_reason: StopReason,
    /// What the answer cost when it was made.
    pub usage: Usage,
    /// The model that made it.
    pub model: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
}

/// One semantic entry: an answer's exact key and its prompt's embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemanticEntry {
    pub key: String,
    pub embedding: Vec<f32>,
}

/// The configured backend.
#[derive(Debug)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    pub async fn get(&self, key: &str) -> Result<Option<CachedAnswer>, RelayError> {
        match self {
            Store::Memory(store) => Ok(store.answers.get(key).map(|answer| (*answer).clone())),
            Store::Redis(store) => store.get(key).await,
        }
    }

    pub async fn put(&self, key: &str, answer: CachedAnswer) -> Result<(), RelayError> {
        match self {
            Store::Memory(store) => {
                store.answers.insert(key.to_string(), Arc::new(answer));
                Ok(())
            }
            Store::Redis(store) => store.put(key, &answer).await,
        }
    }

    pub async fn semantic_entries(&self, scope: &str) -> Result<Vec<SemanticEntry>, RelayError> {
        match self {
            Store::Memory(store) => Ok(store
                .semantic
                .get(scope)
                .map(|entries| {
                    entries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()),
            Store::Redis(store) => store.semantic_entries(scope).await,
        }
    }

    pub async fn add_semantic(&self, scope: &str, entry: SemanticEntry) -> Result<(), RelayError> {
        match self {
            Store::Memory(store) => {
                let entries = store
                    .semantic
                    .get_with(scope.to_string(), || Arc::new(Mutex::new(VecDeque::new())));
                let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
                entries.retain(|known| known.key != entry.key);
                if entries.len() == SEMANTIC_ENTRIES_PER_SCOPE {
                    entries.pop_back();
                }
                entries.push_front(entry);
                Ok(())
            }
            Store::Redis(store) => store.add_semantic(scope, &entry).await,
        }
    }
}

/// Answers and semantic entries in this process.
#[derive(Debug)]
pub struct MemoryStore {
    answers: moka::sync::Cache<String, Arc<CachedAnswer>>,
    semantic: moka::sync::Cache<String, Arc<Mutex<VecDeque<SemanticEntry>>>>,
}

impl MemoryStore {
    /// At most `max_entries` answers (and as many scopes), each kept for `keep_for`.
    pub fn new(max_entries: u64, keep_for: Duration) -> Self {
        MemoryStore {
            answers: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(keep_for)
                .build(),
            semantic: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(keep_for)
                .build(),
        }
    }
}

/// Answers and semantic entries in Redis, under `fm-relay:` keys. Lookups time out after 500 ms
/// (a miss); the connection reconnects by itself.
pub struct RedisStore {
    connection: redis::aio::ConnectionManager,
    keep_for_ms: u64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keep_for_ms", &self.keep_for_ms)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (fails when the server cannot be reached).
    pub async fn connect(url: &str, keep_for: Duration) -> Result<Self, RelayError> {
        let unreachable = |err: redis::RedisError| {
            RelayError::Startup(format!("the cache's Redis at {url}: {err}"))
        };
        let client = redis::Client::open(url).map_err(unreachable)?;
        // A cache must never hold a request up for long: a slow Redis is a miss.
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(200));
        let connection = redis::aio::ConnectionManager::new_with_config(client, settings)
            .await
            .map_err(unreachable)?;
        Ok(RedisStore {
            connection,
            keep_for_ms: u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn answer_key(key: &str) -> String {
        format!("fm-relay:answer:{key}")
    }

    fn scope_key(scope: &str) -> String {
        format!("fm-relay:semantic:{scope}")
    }

    async fn get(&self, key: &str) -> Result<Option<CachedAnswer>, RelayError> {
        let mut connection = self.connection.clone();
        let json: Option<String> = redis::cmd("GET")
            .arg(Self::answer_key(key))
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        json.map(|json| serde_json::from_str(&json).map_err(decode_error))
            .transpose()
    }

    async fn put(&self, key: &str, answer: &CachedAnswer) -> Result<(), RelayError> {
        let mut connection = self.connection.clone();
        let json = serde_json::to_string(answer).map_err(decode_error)?;
        redis::cmd("SET")
            .arg(Self::answer_key(key))
            .arg(json)
            .arg("PX")
            .arg(self.keep_for_ms)
            .query_async::<()>(&mut connection)
            .await
            .map_err(redis_error)
    }

    async fn semantic_entries(&self, scope: &str) -> Result<Vec<SemanticEntry>, RelayError> {
        let mut connection = self.connection.clone();
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(Self::scope_key(scope))
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        entries
            .iter()
            .map(|json| serde_json::from_str(json).map_err(decode_error))
            .collect()
    }

    async fn add_semantic(&self, scope: &str, entry: &SemanticEntry) -> Result<(), RelayError> {
        let mut connection = self.connection.clone();
        let list = Self::scope_key(scope);
        let json = serde_json::to_string(entry).map_err(decode_error)?;
        redis::pipe()
            .cmd("LPUSH")
            .arg(&list)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&list)
            .arg(0)
            .arg(SEMANTIC_ENTRIES_PER_SCOPE - 1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&list)
            .arg(self.keep_for_ms)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(redis_error)
    }
}

fn redis_error(err: redis::RedisError) -> RelayError {
    RelayError::Cache(format!("Redis: {err}"))
}

fn decode_error(err: serde_json::Error) -> RelayError {
    RelayError::Cache(format!(
        "a cache record could not be read or written: {err}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer {
            text: text.into(),
            stop_reason: StopReason::EndTurn,
            usage: Usage::new(3, 4),
            model: "m".into(),
            stored_at_ms: 1,
        }
    }

    #[tokio::test]
    async fn the_memory_store_keeps_answers_and_bounds_semantic_entries() {
        let store = Store::Memory(MemoryStore::new(100, Duration::from_secs(60)));
        assert_eq!(store.get("k").await.unwrap(), None);
        store.put("k", answer("hello")).await.unwrap();
        assert_eq!(store.get("k").await.unwrap(), Some(answer("hello")));
        for index in 0..SEMANTIC_ENTRIES_PER_SCOPE + 10 {
            let entry = SemanticEntry {
                key: format!("k{index}"),
                embedding: vec![1.0],
            };
            store.add_semantic("scope", entry).await.unwrap();
        }
        let entries = store.semantic_entries("scope").await.unwrap();
        assert_eq!(entries.len(), SEMANTIC_ENTRIES_PER_SCOPE);
        assert_eq!(
            entries[0].key,
            format!("k{}", SEMANTIC_ENTRIES_PER_SCOPE + 9)
        );
        assert!(store.semantic_entries("other").await.unwrap().is_empty());
    }
}
