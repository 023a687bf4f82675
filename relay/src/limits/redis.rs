//! Limits and the ledger in Redis, so that every relay pointed at one Redis enforces one limit.
//!
//! An admission is one Lua script (`ADMIT`): it reads the clock of Redis (one clock for every
//! replica), checks every charge of the request and commits them all or none — one round trip
//! per request, however many limits apply. Settled corrections and ledger rows are not on the
//! request's path: they are merged in memory and written every quarter second in one pipeline
//! ([`RedisCounters::write_corrections`], [`RedisLedger::write`]). Rate counters expire when
//! they are full again; quota counters when their period is over; ledger days after 400 days.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::counters::{Charge, ChargeKind, Correction, Delta, Verdict};
use super::gcra::Headroom;
use super::ledger::{RowKey, Spend};
use crate::error::RelayError;

/// Checks every charge (`KEYS[i]`, with five `ARGV` per charge) and commits them all when all
/// fit. Returns the first refused charge (1-based, 0 for none), its wait (µs), and per charge
/// how far ahead of now its TAT is (rates) after the admission.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refused, retry = 0, 0
local ahead, newtat = {}, {}
for i = 1, #KEYS do
  local b = (i - 1) * 5
  if ARGV[b + 1] == 'r' then
    local interval, capacity, cost = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local base = math.max(tat, now)
    local nt = base + cost * interval
    if nt - now <= capacity * interval + 1 then
      newtat[i] = nt
      ahead[i] = string.format('%.3f', nt - now)
    else
      if refused == 0 then refused, retry = i, nt - now - capacity * interval end
      ahead[i] = string.format('%.3f', base - now)
    end
  else
    local limit, cost = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    local fits
    if ARGV[b + 4] == '1' then fits = used + cost <= limit else fits = used < limit end
    if not fits and refused == 0 then refused = i end
    ahead[i] = '0'
  end
end
if refused == 0 then
  for i = 1, #KEYS do
    local b = (i - 1) * 5
    if ARGV[b + 1] == 'r' then
      redis.call('SET', KEYS[i], string.format('%.3f', newtat[i]), 'PX', math.ceil((newtat[i] - now) / 1000) + 1000)
    else
      redis.call('INCRBY', KEYS[i], ARGV[b + 3])
      redis.call('EXPIRE', KEYS[i], ARGV[b + 5])
    end
  end
end
return {refused, string.format('%.3f', retry), unpack(ahead)}
";

/// Applies settled corrections (three `ARGV` per key: kind, delta, keep seconds): a rate charged
/// more moves on from now at the earliest (as an admission would), one charged less moves back.
const CORRECT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local b = (i - 1) * 3
  if ARGV[b + 1] == 'r' then
    local d = tonumber(ARGV[b + 2])
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if d > 0 then tat = math.max(tat, now) + d else tat = tat + d end
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  else
    redis.call('INCRBY', KEYS[i], ARGV[b + 2])
    redis.call('EXPIRE', KEYS[i], ARGV[b + 3])
  end
end
return #KEYS
";

/// Where every key of the relay's limits starts.
const PREFIX: &str = "fm-relay:limits:";

/// How long ledger days are kept in Redis.
const LEDGER_KEEP_SECS: u64 = 400 * 86_400;

/// Connects to Redis at `url`, failing when it cannot be reached.
pub async fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, RelayError> {
    let unreachable =
        |err: redis::RedisError| RelayError::Startup(format!("the limits' Redis at {url}: {err}"));
    let client = redis::Client::open(url).map_err(unreachable)?;
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100));
    ConnectionManager::new_with_config(client, settings)
        .await
        .map_err(unreachable)
}

/// Rate and quota counters in Redis.
pub struct RedisCounters {
    connection: ConnectionManager,
    admit: redis::Script,
    correct: redis::Script,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").finish_non_exhaustive()
    }
}

impl RedisCounters {
    pub fn new(connection: ConnectionManager) -> Self {
        RedisCounters {
            connection,
            admit: redis::Script::new(ADMIT),
            correct: redis::Script::new(CORRECT),
        }
    }

    /// One admission, in one round trip.
    pub async fn admit(&self, charges: &[Charge]) -> Result<Verdict, redis::RedisError> {
        let mut invocation = self.admit.prepare_invoke();
        for charge in charges {
            invocation.key(format!("{PREFIX}{}", charge.counter));
            match charge.kind {
                ChargeKind::Rate { rate, cost } => invocation
                    .arg("r")
                    .arg(rate.interval_us)
                    .arg(rate.capacity)
                    .arg(cost)
                    .arg(0),
                ChargeKind::Quota {
                    limit,
                    cost,
                    whole,
                    keep_secs,
                } => invocation
                    .arg("q")
                    .arg(limit)
                    .arg(cost)
                    .arg(if whole { "1" } else { "0" })
                    .arg(keep_secs),
            };
        }
        let mut connection = self.connection.clone();
        let reply: Vec<String> = invocation.invoke_async(&mut connection).await?;
        let number = |index: usize| -> f64 {
            reply
                .get(index)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0)
        };
        let refused = number(0) as usize;
        let headroom = charges
            .iter()
            .enumerate()
            .map(|(index, charge)| match charge.kind {
                ChargeKind::Rate { rate, .. } => Some(rate.headroom(number(index + 2), 0.0)),
                ChargeKind::Quota { .. } => None,
            })
            .collect::<Vec<Option<Headroom>>>();
        Ok(match refused {
            0 => Verdict::Admitted { headroom },
            index => Verdict::Refused {
                index: index - 1,
                retry_after_us: number(1),
                headroom,
            },
        })
    }

    /// Writes settled corrections, in one round trip.
    pub async fn write_corrections(
        &self,
        corrections: &[(Correction, u64)],
    ) -> Result<(), redis::RedisError> {
        if corrections.is_empty() {
            return Ok(());
        }
        let mut invocation = self.correct.prepare_invoke();
        for (correction, keep_secs) in corrections {
            invocation.key(format!("{PREFIX}{}", correction.counter));
            match correction.delta {
                Delta::RateUs(us) => invocation.arg("r").arg(us).arg(0),
                Delta::Quota(delta) => invocation.arg("q").arg(delta).arg(keep_secs),
            };
        }
        let mut connection = self.connection.clone();
        let _: i64 = invocation.invoke_async(&mut connection).await?;
        Ok(())
    }
}

/// The usage ledger in Redis: a hash per day, a field per key, model, region and figure.
pub struct RedisLedger {
    connection: ConnectionManager,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger").finish_non_exhaustive()
    }
}

/// The figures of a ledger row, in the order of their field suffixes.
const FIGURES: [&str; 4] = ["requests", "input_tokens", "output_tokens", "cost_micros"];

/// Separates the parts of a ledger field (not a character names use).
const SEPARATOR: char = '\u{1f}';

impl RedisLedger {
    pub fn new(connection: ConnectionManager) -> Self {
        RedisLedger { connection }
    }

    fn day_key(day: &str) -> String {
        format!("{PREFIX}usage:{day}")
    }

    /// Adds `rows`, in one round trip.
    pub async fn write(&self, rows: &[(RowKey, Spend)]) -> Result<(), RelayError> {
        let mut pipe = redis::pipe();
        for (row, spend) in rows {
            let values = [
                spend.requests,
                spend.input_tokens,
                spend.output_tokens,
                spend.cost_micros,
            ];
            let day = Self::day_key(&row.day);
            for (figure, value) in FIGURES.iter().zip(values) {
                let field = [row.key.as_str(), &row.model, &row.region, figure]
                    .join(&SEPARATOR.to_string());
                pipe.hincr(&day, field, value).ignore();
            }
            pipe.expire(&day, LEDGER_KEEP_SECS as i64).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|source| RelayError::LimitsUnavailable {
                source: Some(source),
            })
    }

    /// The rows of the days that start with `prefix` (a month or a day), of `key` when given.
    pub async fn rows(
        &self,
        prefix: &str,
        key: Option<&str>,
    ) -> Result<Vec<(RowKey, Spend)>, RelayError> {
        let days: Vec<String> = match prefix.len() {
            7 => (1..=31).map(|day| format!("{prefix}-{day:02}")).collect(),
            _ => vec![prefix.to_string()],
        };
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.hgetall(Self::day_key(day));
        }
        let mut connection = self.connection.clone();
        let hashes: Vec<Vec<(String, i64)>> =
            pipe.query_async(&mut connection).await.map_err(|source| {
                RelayError::LimitsUnavailable {
                    source: Some(source),
                }
            })?;
        let mut rows: std::collections::BTreeMap<(String, String, String, String), Spend> =
            Default::default();
        for (day, fields) in days.iter().zip(hashes) {
            for (field, value) in fields {
                let parts: Vec<&str> = field.split(SEPARATOR).collect();
                let [name, model, region, figure] = parts[..] else {
                    continue;
                };
                if key.is_some_and(|key| key != name) {
                    continue;
                }
                let spend = rows
                    .entry((day.clone(), name.into(), model.into(), region.into()))
                    .or_default();
                match figure {
                    "requests" => spend.requests += value,
                    "input_tokens" => spend.input_tokens += value,
                    "output_tokens" => spend.output_tokens += value,
                    "cost_micros" => spend.cost_micros += value,
                    _ => {}
                }
            }
        }
        Ok(rows
            .into_iter()
            .map(|((day, key, model, region), spend)| {
                (
                    RowKey {
                        day,
                        key,
                        model,
                        region,
                    },
                    spend,
                )
            })
            .collect())
    }
}
