//! The usage ledger: what every key spent on every model, per UTC day — requests, input and
//! output tokens and cost in micro-dollars (from the model's prices) — for `/v1/usage`, the
//! quotas and the budgets, and for routing to read today's spend.
//!
//! Spend is added to a pending table in memory as requests settle (one row per day, key, model
//! and region, so it stays small) and written out every quarter second, and on demand before a
//! read, in one transaction: to SQLite (`usage.sqlite` in `limits.data_dir`, WAL) by default, to
//! Redis hashes (one per day) with `limits.backend = "redis"`. A crash (`kill -9`) loses at most
//! the last quarter second of spend; a graceful stop loses none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::error::RelayError;

/// What one row of the ledger is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub key: String,
    pub model: String,
    pub region: String,
}

/// What was spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
}

impl Spend {
    pub fn add(&mut self, other: Spend) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_micros += other.cost_micros;
    }

    pub fn tokens(&self) -> i64 {
        self.input_tokens + self.output_tokens
    }
}

/// The ledger's store.
#[derive(Debug)]
enum Store {
    Sqlite {
        path: PathBuf,
        connection: Arc<Mutex<Connection>>,
    },
    Redis(super::redis::RedisLedger),
}

/// The usage ledger.
#[derive(Debug)]
pub struct Ledger {
    store: Store,
    pending: Mutex<HashMap<RowKey, Spend>>,
    /// One write-out at a time, so rows reach the store in order.
    writing: tokio::sync::Mutex<()>,
}

impl Ledger {
    /// The SQLite ledger in `dir` (made when missing).
    pub fn open_sqlite(dir: &Path) -> Result<Ledger, RelayError> {
        let path = dir.join("usage.sqlite");
        let failed = |source| RelayError::Ledger {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|err| {
            RelayError::Startup(format!(
                "cannot make the data folder {} (`limits.data_dir`): {err}",
                dir.display()
            ))
        })?;
        let connection = Connection::open(&path).map_err(failed)?;
        // Another process on the same file (a second relay, `sqlite3`) may hold the lock a while.
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(failed)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS usage (
                     day TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL,
                     region TEXT NOT NULL, requests INTEGER NOT NULL,
                     input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
                     cost_micros INTEGER NOT NULL,
                     PRIMARY KEY (day, key, model, region)
                 );",
            )
            .map_err(failed)?;
        Ok(Ledger::with_store(Store::Sqlite {
            path,
            connection: Arc::new(Mutex::new(connection)),
        }))
    }

    /// The ledger in Redis.
    pub fn in_redis(ledger: super::redis::RedisLedger) -> Ledger {
        Ledger::with_store(Store::Redis(ledger))
    }

    fn with_store(store: Store) -> Ledger {
        Ledger {
            store,
            pending: Mutex::default(),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds spend (written out with the next flush).
    pub fn add(&self, row: RowKey, spend: Spend) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.entry(row).or_default().add(spend);
    }

    /// Writes the pending spend out; how many rows. On failure it stays pending for the next try.
    pub async fn flush(&self) -> Result<usize, RelayError> {
        let _writing = self.writing.lock().await;
        let rows: Vec<(RowKey, Spend)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let written = match &self.store {
            Store::Sqlite { path, connection } => {
                let (path, connection) = (path.clone(), connection.clone());
                let batch = rows.clone();
                tokio::task::spawn_blocking(move || write_sqlite(&path, &connection, &batch))
                    .await
                    .map_err(|err| RelayError::Internal(format!("the ledger's writer: {err}")))?
            }
            Store::Redis(redis) => redis.write(&rows).await,
        };
        if written.is_err() {
            for (row, spend) in rows.iter().cloned() {
                self.add(row, spend);
            }
        }
        written.map(|()| rows.len())
    }

    /// Every row of the days starting with `prefix` (a month `YYYY-MM` or a day), of `key`
    /// only when given; pending spend written out first.
    pub async fn rows(
        &self,
        prefix: &str,
        key: Option<&str>,
    ) -> Result<Vec<(RowKey, Spend)>, RelayError> {
        self.flush().await?;
        match &self.store {
            Store::Sqlite { path, connection } => {
                let (path, connection) = (path.clone(), connection.clone());
                let (prefix, key) = (prefix.to_string(), key.map(str::to_string));
                tokio::task::spawn_blocking(move || {
                    read_sqlite(&path, &connection, &prefix, key.as_deref())
                })
                .await
                .map_err(|err| RelayError::Internal(format!("the ledger's reader: {err}")))?
            }
            Store::Redis(redis) => redis.rows(prefix, key).await,
        }
    }
}

fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> RelayError + '_ {
    move |source| RelayError::Ledger {
        path: path.display().to_string(),
        source,
    }
}

fn write_sqlite(
    path: &Path,
    connection: &Mutex<Connection>,
    rows: &[(RowKey, Spend)],
) -> Result<(), RelayError> {
    let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
    let transaction = connection.transaction().map_err(sqlite_error(path))?;
    {
        let mut upsert = transaction
            .prepare_cached(
                "INSERT INTO usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (day, key, model, region) DO UPDATE SET
                     requests = requests + excluded.requests,
                     input_tokens = input_tokens + excluded.input_tokens,
                     output_tokens = output_tokens + excluded.output_tokens,
                     cost_micros = cost_micros + excluded.cost_micros",
            )
            .map_err(sqlite_error(path))?;
        for (row, spend) in rows {
            upsert
                .execute(rusqlite::params![
                    row.day,
                    row.key,
                    row.model,
                    row.region,
                    spend.requests,
                    spend.input_tokens,
                    spend.output_tokens,
                    spend.cost_micros
                ])
                .map_err(sqlite_error(path))?;
        }
    }
    transaction.commit().map_err(sqlite_error(path))
}

fn read_sqlite(
    path: &Path,
    connection: &Mutex<Connection>,
    prefix: &str,
    key: Option<&str>,
) -> Result<Vec<(RowKey, Spend)>, RelayError> {
    let connection = connection.lock().unwrap_or_else(|e| e.into_inner());
    let mut select = connection
        .prepare_cached(
            "SELECT day, key, model, region, requests, input_tokens, output_tokens, cost_micros
             FROM usage WHERE substr(day, 1, length(?1)) = ?1 AND (?2 IS NULL OR key = ?2)
             ORDER BY day, key, model, region",
        )
        .map_err(sqlite_error(path))?;
    let rows = select
        .query_map(rusqlite::params![prefix, key], |row| {
            Ok((
                RowKey {
                    day: row.get(0)?,
                    key: row.get(1)?,
                    model: row.get(2)?,
                    region: row.get(3)?,
                },
                Spend {
                    requests: row.get(4)?,
                    input_tokens: row.get(5)?,
                    output_tokens: row.get(6)?,
                    cost_micros: row.get(7)?,
                },
            ))
        })
        .map_err(sqlite_error(path))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: &str, key: &str) -> RowKey {
        RowKey {
            day: day.into(),
            key: key.into(),
            model: "m".into(),
            region: "r".into(),
        }
    }

    #[tokio::test]
    async fn spend_adds_up_and_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("fm-ledger-{}", fastrand::u64(..)));
        let spend = Spend {
            requests: 1,
            input_tokens: 10,
            output_tokens: 5,
            cost_micros: 7,
        };
        {
            let ledger = Ledger::open_sqlite(&dir).unwrap();
            ledger.add(row("2026-12-01", "a"), spend);
            ledger.flush().await.unwrap();
            ledger.add(row("2026-12-01", "a"), spend);
            ledger.add(row("2026-12-02", "b"), spend);
            ledger.add(row("2027-01-01", "a"), spend);
            ledger.flush().await.unwrap();
        }
        let ledger = Ledger::open_sqlite(&dir).unwrap();
        let rows = ledger.rows("2026-12", Some("a")).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1.input_tokens, 20);
        assert_eq!(ledger.rows("2026-12", None).await.unwrap().len(), 2);
        assert_eq!(ledger.rows("2026-12-02", None).await.unwrap()[0].0.key, "b");
        std::fs::remove_dir_all(dir).ok();
    }
}
