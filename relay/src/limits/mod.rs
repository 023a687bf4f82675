//! Rate limits, token limits, quotas, budgets and the usage ledger: what a caller may still
//! spend, and what everyone spent.
//!
//! A chat request is admitted by [`Limits::admit_chat`] with every limit that applies to it at
//! once — the key's and the global request rate (GCRA with a burst, [`gcra`]), the key's and the
//! model's tokens per minute, the key's monthly request and token quotas and its daily and
//! monthly dollar budgets — all committed together or none ([`counters`]). Its tokens are
//! *reserved*: the estimated input plus `max_tokens`, priced at the model's rates. The
//! [`Reservation`] it gets is the request's [`SpendMeter`]: every upstream call reports what it
//! consumed (answers, broken and cancelled streams, failed attempts and failovers alike), and
//! when the request ends the reservation settles — the counters move by the difference between
//! reserved and real, and the real spend goes to the [`ledger`] under the key, model and region.
//! So concurrent streams cannot overshoot a token limit, and nothing is counted twice.
//!
//! Other routes are admitted by [`Limits::admit_request`] against the request rates alone.
//!
//! With `limits.backend = "memory"` the counters live in this process and the ledger in SQLite
//! (quota counters are rebuilt from it at start-up, so quotas survive a restart); with
//! `"redis"` both live in Redis ([`redis`]): one script per admission, so replicas share every
//! limit. When Redis cannot be reached within `limits.redis_timeout_ms`, `on_redis_error`
//! decides: `fail_open` counts in this process for a second before trying Redis again (warned
//! in the log, counted in `/metrics`), `fail_closed` refuses with 503 `limits_unavailable`.
//!
//! Concurrent streams per key are counted in each process (`max_concurrent_streams` is per
//! replica).

pub mod counters;
pub mod gcra;
pub mod ledger;
pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fm_protocol::{KeyUsage, ModelUsage, UsageReport, UsageTotals};

use crate::auth::Caller;
use crate::config::{BackendFailure, LimitsBackend, RelayConfig};
use crate::error::{Limit, Quota, RelayError};
use crate::telemetry::{AttemptSpend, SpendMeter};
use counters::{Charge, ChargeKind, Correction, Delta, MemoryCounters, Verdict};
use gcra::{Headroom, Rate};
use ledger::{Ledger, RowKey, Spend};

/// How often settled corrections and ledger rows are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How long the relay counts locally after Redis failed, before trying it again.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A day's quota counters outlive it by this much (Redis expiry).
const DAY_KEEP_SECS: u64 = 2 * 86_400;
const MONTH_KEEP_SECS: u64 = 32 * 86_400;

/// The UTC day and month now: the periods of quotas and ledger rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub day: String,
    pub month: String,
}

impl Period {
    /// The period `clock` says it is.
    pub fn now(clock: &Clock) -> Period {
        let date = (time::OffsetDateTime::now_utc() + clock.offset()).date();
        let month = format!("{:04}-{:02}", date.year(), u8::from(date.month()));
        Period {
            day: format!("{month}-{:02}", date.day()),
            month,
        }
    }
}

/// The calendar quotas, budgets and ledger rows are counted by: UTC now, moved on by an offset
/// a test may advance (`Limits::clock`) to see a day or a month end.
#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: std::sync::atomic::AtomicI64,
}

impl Clock {
    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.offset_secs.fetch_add(secs, Ordering::Relaxed);
    }

    fn offset(&self) -> time::Duration {
        time::Duration::seconds(self.offset_secs.load(Ordering::Relaxed))
    }
}

/// What the `x-ratelimit-*` headers of an answer say.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    pub requests: Option<Headroom>,
    pub tokens: Option<Headroom>,
}

/// What a model costs and how fast it may be used.
#[derive(Debug, Clone, Copy)]
struct ModelTerms {
    tokens_per_minute: Option<u64>,
    input_per_1k: f64,
    output_per_1k: f64,
}

impl ModelTerms {
    fn cost_micros(&self, input_tokens: u64, output_tokens: u64) -> i64 {
        // Price per 1k tokens in dollars = micro-dollars per 1k / 1e6: micros per token =
        // price × 1000.
        (input_tokens as f64 * self.input_per_1k * 1000.0
            + output_tokens as f64 * self.output_per_1k * 1000.0)
            .round() as i64
    }
}

/// The terms of each of `models`.
fn model_terms(models: &[crate::config::ModelConfig]) -> HashMap<String, ModelTerms> {
    models
        .iter()
        .map(|model| {
            (
                model.id.clone(),
                ModelTerms {
                    tokens_per_minute: model.tokens_per_minute,
                    input_per_1k: model.input_price_per_1k,
                    output_per_1k: model.output_price_per_1k,
                },
            )
        })
        .collect()
}

/// Where the counters live.
#[derive(Debug)]
enum Counters {
    Memory(MemoryCounters),
    Redis {
        redis: redis::RedisCounters,
        /// Counts while Redis cannot be reached (fail open).
        local: MemoryCounters,
        on_error: BackendFailure,
        timeout: Duration,
        /// Until when (ms since the epoch) Redis is skipped after a failure.
        skip_until_ms: AtomicU64,
        /// Corrections waiting for the next write, by counter.
        pending: Mutex<HashMap<String, (Delta, u64)>>,
    },
}

/// Which counters answered an admission: corrections go back to the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CountedIn {
    Shared,
    Local,
}

/// Failures of the limits' store, for `/metrics`.
#[derive(Debug, Default)]
pub struct LimitsHealth {
    /// Round trips to Redis: admissions (one per admitted or refused request) ...
    pub redis_admissions: AtomicU64,
    /// ... and write-outs of settled corrections and ledger rows (a few a second, whatever the
    /// rate of requests).
    pub redis_writes: AtomicU64,
    pub redis_errors: AtomicU64,
    pub served_locally: AtomicU64,
    pub refused_unavailable: AtomicU64,
}

/// Every limit and the ledger.
#[derive(Debug)]
pub struct Limits {
    global: Option<Rate>,
    global_per_minute: u32,
    /// Each model's prices and token rate; a reload replaces them ([`Limits::set_models`]).
    models: std::sync::RwLock<HashMap<String, ModelTerms>>,
    counters: Counters,
    ledger: Ledger,
    /// Open streams per key, in this process.
    streams: Mutex<HashMap<String, u32>>,
    health: LimitsHealth,
    clock: Clock,
}

fn now_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64() * 1e6)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The charges of an admission, and beside each the limit it stands for.
#[derive(Default)]
struct Plan {
    charges: Vec<Charge>,
    refusals: Vec<Refusal>,
}

impl Plan {
    fn push(&mut self, charge: Charge, refusal: Refusal) {
        self.charges.push(charge);
        self.refusals.push(refusal);
    }

    /// The index the next charge gets.
    fn next_index(&self) -> usize {
        self.charges.len()
    }
}

/// What a refused charge means for the caller.
enum Refusal {
    Rate(Limit),
    Quota(Quota),
}

/// The charges of one chat request, and which of them are token counters to settle.
struct ChatCharges {
    planned: Plan,
    /// The token and dollar quota counters charged (with their expiry): settled to the real
    /// spend.
    token_quotas: Vec<(String, u64)>,
    usd_quotas: Vec<(String, u64)>,
    /// Indexes of the request-rate charges (for the headers).
    requests_at: Option<usize>,
    tokens_at: Option<usize>,
}

impl Limits {
    /// The limits of `config`, their counters and ledger opened (the SQLite file made, Redis
    /// connected), with the task that writes them out.
    pub async fn open(config: &RelayConfig) -> Result<Arc<Limits>, RelayError> {
        let limits_config = &config.limits;
        let (counters, ledger) = match limits_config.backend {
            LimitsBackend::Memory => (
                Counters::Memory(MemoryCounters::default()),
                Ledger::open_sqlite(&limits_config.data_dir)?,
            ),
            LimitsBackend::Redis => {
                let timeout = Duration::from_millis(limits_config.redis_timeout_ms);
                let connection = redis::connect(&limits_config.redis_url, timeout).await?;
                (
                    Counters::Redis {
                        redis: redis::RedisCounters::new(connection.clone()),
                        local: MemoryCounters::default(),
                        on_error: limits_config.on_redis_error,
                        timeout,
                        skip_until_ms: AtomicU64::new(0),
                        pending: Mutex::default(),
                    },
                    Ledger::in_redis(redis::RedisLedger::new(connection)),
                )
            }
        };
        let global = limits_config.global_requests_per_minute.map(|per_minute| {
            let burst = limits_config
                .global_burst
                .unwrap_or_else(|| default_burst(per_minute));
            Rate::per_minute(u64::from(per_minute), u64::from(burst))
        });
        let models = std::sync::RwLock::new(model_terms(&config.models));
        let limits = Arc::new(Limits {
            global,
            global_per_minute: limits_config.global_requests_per_minute.unwrap_or(0),
            models,
            counters,
            ledger,
            streams: Mutex::default(),
            health: LimitsHealth::default(),
            clock: Clock::default(),
        });
        limits.seed_quotas().await?;
        let writer = Arc::downgrade(&limits);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(limits) = writer.upgrade() else {
                    return;
                };
                if let Err(err) = limits.flush().await {
                    tracing::warn!(%err, "could not write the usage ledger; will retry");
                }
            }
        });
        Ok(limits)
    }

    /// Memory counters start from the ledger: this month's requests, tokens and dollars per
    /// key, and today's dollars.
    async fn seed_quotas(&self) -> Result<(), RelayError> {
        let Counters::Memory(counters) = &self.counters else {
            return Ok(());
        };
        let period = Period::now(&self.clock);
        counters.keep_periods(&[period.day.clone(), period.month.clone()]);
        let mut month: HashMap<String, Spend> = HashMap::new();
        let mut today: HashMap<String, Spend> = HashMap::new();
        for (row, spend) in self.ledger.rows(&period.month, None).await? {
            month.entry(row.key.clone()).or_default().add(spend);
            if row.day == period.day {
                today.entry(row.key).or_default().add(spend);
            }
        }
        for (key, spend) in month {
            counters.seed(
                quota_counter(&key, "requests", &period.month),
                spend.requests,
            );
            counters.seed(quota_counter(&key, "tokens", &period.month), spend.tokens());
            counters.seed(quota_counter(&key, "usd", &period.month), spend.cost_micros);
        }
        for (key, spend) in today {
            counters.seed(quota_counter(&key, "usd", &period.day), spend.cost_micros);
        }
        Ok(())
    }

    /// The prices and token rate of `model`, when it is configured.
    fn terms(&self, model: &str) -> Option<ModelTerms> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .copied()
    }

    /// Puts a reloaded configuration's models' prices and token rates in force (requests
    /// admitted before keep what they reserved; their spend is priced at the new terms).
    pub fn set_models(&self, models: &[crate::config::ModelConfig]) {
        *self.models.write().unwrap_or_else(|e| e.into_inner()) = model_terms(models);
    }

    /// The calendar quotas and the ledger count by.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The store's failures so far.
    pub fn health(&self) -> &LimitsHealth {
        &self.health
    }

    /// Admits a request of a route without a model call: the request rates only.
    pub async fn admit_request(&self, caller: &Caller) -> (Result<(), RelayError>, RateHeaders) {
        let mut planned = Plan::default();
        let requests_at = self.request_charges(caller, &mut planned);
        match self.run(&planned.charges).await {
            Ok((verdict, _)) => {
                let headers = RateHeaders {
                    requests: headroom_at(&verdict, requests_at),
                    tokens: None,
                };
                (
                    refusal_error(&planned.refusals, &verdict).map_or(Ok(()), Err),
                    headers,
                )
            }
            Err(err) => (Err(err), RateHeaders::default()),
        }
    }

    /// Admits a chat request for `model` that sends about `estimated_input` tokens and may get
    /// `max_tokens` back; a `stream` also takes one of the key's concurrent streams.
    pub async fn admit_chat(
        self: &Arc<Self>,
        caller: &Caller,
        model: &str,
        estimated_input: u64,
        max_tokens: u64,
        stream: bool,
    ) -> (Result<Reservation, RelayError>, RateHeaders) {
        let reserved_tokens = estimated_input + max_tokens;
        let terms = self.terms(model);
        let reserved_micros =
            terms.map_or(0, |terms| terms.cost_micros(estimated_input, max_tokens));
        let period = Period::now(&self.clock);
        let charges =
            match self.chat_charges(caller, model, reserved_tokens, reserved_micros, &period) {
                Ok(charges) => charges,
                Err(err) => return (Err(err), RateHeaders::default()),
            };
        let slot = match stream {
            true => match self.open_stream(caller) {
                Ok(slot) => Some(slot),
                Err(err) => return (Err(err), RateHeaders::default()),
            },
            false => None,
        };
        let (verdict, counted_in) = match self.run(&charges.planned.charges).await {
            Ok(result) => result,
            Err(err) => return (Err(err), RateHeaders::default()),
        };
        let headers = RateHeaders {
            requests: headroom_at(&verdict, charges.requests_at),
            tokens: headroom_at(&verdict, charges.tokens_at),
        };
        if let Some(err) = refusal_error(&charges.planned.refusals, &verdict) {
            return (Err(err), headers);
        }
        let reservation = Reservation {
            limits: self.clone(),
            key: caller.name().to_string(),
            model: model.to_string(),
            period,
            reserved_tokens,
            reserved_micros,
            key_tokens: caller.key().limits.tokens_per_minute.map(token_rate),
            counted_in,
            token_quotas: charges.token_quotas,
            usd_quotas: charges.usd_quotas,
            spent: Mutex::default(),
            _stream: slot,
        };
        (Ok(reservation), headers)
    }

    /// The request-rate charges of `caller` (the key's, then the global one); the index of the
    /// one the headers report.
    fn request_charges(&self, caller: &Caller, planned: &mut Plan) -> Option<usize> {
        let limits = &caller.key().limits;
        let mut shown = None;
        if let Some(per_minute) = limits.requests_per_minute {
            let burst = limits.burst.unwrap_or_else(|| default_burst(per_minute));
            shown = Some(planned.next_index());
            planned.push(
                Charge {
                    counter: format!("rate:requests:key:{}", caller.name()),
                    kind: ChargeKind::Rate {
                        rate: Rate::per_minute(u64::from(per_minute), u64::from(burst)),
                        cost: 1.0,
                    },
                },
                Refusal::Rate(Limit::KeyRequests {
                    key: caller.name().to_string(),
                    per_minute,
                }),
            );
        }
        if let Some(rate) = self.global {
            shown.get_or_insert(planned.next_index());
            planned.push(
                Charge {
                    counter: "rate:requests:global".into(),
                    kind: ChargeKind::Rate { rate, cost: 1.0 },
                },
                Refusal::Rate(Limit::GlobalRequests {
                    per_minute: self.global_per_minute,
                }),
            );
        }
        shown
    }

    fn chat_charges(
        &self,
        caller: &Caller,
        model: &str,
        reserved_tokens: u64,
        reserved_micros: i64,
        period: &Period,
    ) -> Result<ChatCharges, RelayError> {
        let key = caller.name();
        let limits = &caller.key().limits;
        let mut planned = Plan::default();
        let requests_at = self.request_charges(caller, &mut planned);
        let mut tokens_at = None;
        let token_limits = [
            limits.tokens_per_minute.map(|per_minute| {
                (
                    format!("rate:tokens:key:{key}"),
                    Limit::KeyTokens {
                        key: key.to_string(),
                        per_minute,
                    },
                    per_minute,
                )
            }),
            self.terms(model)
                .and_then(|terms| terms.tokens_per_minute)
                .map(|per_minute| {
                    (
                        model_tokens_counter(model),
                        Limit::ModelTokens {
                            model: model.to_string(),
                            per_minute,
                        },
                        per_minute,
                    )
                }),
        ];
        for (counter, limit, per_minute) in token_limits.into_iter().flatten() {
            if reserved_tokens > per_minute {
                return Err(RelayError::LargerThanLimit {
                    reserved: reserved_tokens,
                    limit,
                });
            }
            tokens_at.get_or_insert(planned.next_index());
            planned.push(
                Charge {
                    counter,
                    kind: ChargeKind::Rate {
                        rate: token_rate(per_minute),
                        cost: reserved_tokens as f64,
                    },
                },
                Refusal::Rate(limit),
            );
        }
        let quota = |figure: &str, period: &str, limit: i64, cost: i64, whole: bool, keep| Charge {
            counter: quota_counter(key, figure, period),
            kind: ChargeKind::Quota {
                limit,
                cost,
                whole,
                keep_secs: keep,
            },
        };
        let key_name = || key.to_string();
        if let Some(limit) = limits.monthly_requests {
            planned.push(
                quota(
                    "requests",
                    &period.month,
                    limit as i64,
                    1,
                    true,
                    MONTH_KEEP_SECS,
                ),
                Refusal::Quota(Quota::MonthlyRequests {
                    key: key_name(),
                    limit,
                }),
            );
        }
        let mut token_quotas = Vec::new();
        let mut usd_quotas = Vec::new();
        if let Some(limit) = limits.monthly_tokens {
            let charge = quota(
                "tokens",
                &period.month,
                limit as i64,
                reserved_tokens as i64,
                false,
                MONTH_KEEP_SECS,
            );
            token_quotas.push((charge.counter.clone(), MONTH_KEEP_SECS));
            planned.push(
                charge,
                Refusal::Quota(Quota::MonthlyTokens {
                    key: key_name(),
                    limit,
                }),
            );
        }
        for (usd, period, keep, refusal) in [
            (
                limits.daily_usd,
                &period.day,
                DAY_KEEP_SECS,
                (|key, limit| Quota::DailyUsd { key, limit }) as fn(String, f64) -> Quota,
            ),
            (
                limits.monthly_usd,
                &period.month,
                MONTH_KEEP_SECS,
                (|key, limit| Quota::MonthlyUsd { key, limit }) as fn(String, f64) -> Quota,
            ),
        ] {
            if let Some(usd) = usd {
                let charge = quota(
                    "usd",
                    period,
                    (usd * 1e6).round() as i64,
                    reserved_micros,
                    false,
                    keep,
                );
                usd_quotas.push((charge.counter.clone(), keep));
                planned.push(charge, Refusal::Quota(refusal(key_name(), usd)));
            }
        }
        Ok(ChatCharges {
            planned,
            token_quotas,
            usd_quotas,
            requests_at,
            tokens_at,
        })
    }

    /// Runs an admission in the configured counters.
    async fn run(&self, charges: &[Charge]) -> Result<(Verdict, CountedIn), RelayError> {
        if charges.is_empty() {
            let verdict = Verdict::Admitted {
                headroom: Vec::new(),
            };
            return Ok((verdict, CountedIn::Shared));
        }
        match &self.counters {
            Counters::Memory(counters) => {
                Ok((counters.admit(charges, now_us()), CountedIn::Shared))
            }
            Counters::Redis {
                redis,
                local,
                on_error,
                timeout,
                skip_until_ms,
                ..
            } => {
                let failure = if now_ms() < skip_until_ms.load(Ordering::Relaxed) {
                    None
                } else {
                    self.health.redis_admissions.fetch_add(1, Ordering::Relaxed);
                    match tokio::time::timeout(*timeout, redis.admit(charges)).await {
                        Ok(Ok(verdict)) => return Ok((verdict, CountedIn::Shared)),
                        Ok(Err(err)) => Some(err),
                        Err(_) => Some(::redis::RedisError::from((
                            ::redis::ErrorKind::Io,
                            "no answer within limits.redis_timeout_ms",
                        ))),
                    }
                };
                if let Some(err) = &failure {
                    self.health.redis_errors.fetch_add(1, Ordering::Relaxed);
                    skip_until_ms.store(
                        now_ms() + REDIS_RETRY_AFTER.as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(
                        %err, on_redis_error = ?on_error,
                        "the limits' Redis failed; trying it again in a second"
                    );
                }
                match on_error {
                    BackendFailure::FailOpen => {
                        self.health.served_locally.fetch_add(1, Ordering::Relaxed);
                        Ok((local.admit(charges, now_us()), CountedIn::Local))
                    }
                    BackendFailure::FailClosed => {
                        self.health
                            .refused_unavailable
                            .fetch_add(1, Ordering::Relaxed);
                        Err(RelayError::LimitsUnavailable { source: failure })
                    }
                }
            }
        }
    }

    /// Takes one of the caller's concurrent streams.
    fn open_stream(self: &Arc<Self>, caller: &Caller) -> Result<StreamSlot, RelayError> {
        let max = caller.key().limits.max_concurrent_streams;
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let open = streams.entry(caller.name().to_string()).or_default();
        if let Some(max) = max
            && *open >= max
        {
            return Err(RelayError::RateLimited {
                limit: Limit::ConcurrentStreams {
                    key: caller.name().to_string(),
                    max,
                },
                retry_after: Duration::from_secs(1),
            });
        }
        *open += 1;
        Ok(StreamSlot {
            limits: self.clone(),
            key: caller.name().to_string(),
        })
    }

    /// Settles a finished request: corrections to the counters it was admitted by, its spend
    /// to the ledger.
    fn settle(&self, settlement: Settlement) {
        for (row, spend) in settlement.rows {
            self.ledger.add(row, spend);
        }
        match (&self.counters, settlement.counted_in) {
            (Counters::Memory(counters), _)
            | (
                Counters::Redis {
                    local: counters, ..
                },
                CountedIn::Local,
            ) => {
                let corrections: Vec<Correction> =
                    settlement.corrections.into_iter().map(|(c, _)| c).collect();
                counters.correct(&corrections, now_us());
            }
            (Counters::Redis { pending, .. }, CountedIn::Shared) => {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                for (correction, keep) in settlement.corrections {
                    add_pending(&mut pending, correction, keep);
                }
            }
        }
    }

    /// Writes settled corrections and ledger rows out.
    pub async fn flush(&self) -> Result<(), RelayError> {
        if let Counters::Redis { redis, pending, .. } = &self.counters {
            let corrections: Vec<(Correction, u64)> = {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                pending
                    .drain()
                    .map(|(counter, (delta, keep))| (Correction { counter, delta }, keep))
                    .collect()
            };
            if !corrections.is_empty() {
                self.health.redis_writes.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(err) = redis.write_corrections(&corrections).await {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                for (correction, keep) in corrections {
                    add_pending(&mut pending, correction, keep);
                }
                return Err(RelayError::LimitsUnavailable { source: Some(err) });
            }
        }
        if let Counters::Memory(counters) = &self.counters {
            let period = Period::now(&self.clock);
            counters.keep_periods(&[period.day, period.month]);
        }
        let rows = self.ledger.flush().await?;
        if rows > 0 && matches!(self.counters, Counters::Redis { .. }) {
            self.health.redis_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The spend of `key` (today and this month), from the ledger.
    pub async fn key_usage(&self, key: &str) -> Result<KeyUsage, RelayError> {
        let period = Period::now(&self.clock);
        let rows = self.ledger.rows(&period.month, Some(key)).await?;
        Ok(key_usage(key, &period, &rows))
    }

    /// Every key's spend, and every model's today.
    pub async fn report(&self) -> Result<UsageReport, RelayError> {
        let period = Period::now(&self.clock);
        let rows = self.ledger.rows(&period.month, None).await?;
        let mut by_key: BTreeMap<&str, Vec<(RowKey, Spend)>> = BTreeMap::new();
        let mut models_today: BTreeMap<&str, Spend> = BTreeMap::new();
        for (row, spend) in &rows {
            by_key
                .entry(row.key.as_str())
                .or_default()
                .push((row.clone(), *spend));
            if row.day == period.day {
                models_today
                    .entry(row.model.as_str())
                    .or_default()
                    .add(*spend);
            }
        }
        Ok(UsageReport {
            keys: by_key
                .iter()
                .map(|(key, rows)| key_usage(key, &period, rows))
                .collect(),
            models_today: models_today
                .into_iter()
                .map(|(model, spend)| model_usage(model, spend))
                .collect(),
            day: period.day,
            month: period.month,
        })
    }
}

/// Adds a correction to those waiting for the next write (one per counter).
fn add_pending(pending: &mut HashMap<String, (Delta, u64)>, correction: Correction, keep: u64) {
    match pending.entry(correction.counter) {
        std::collections::hash_map::Entry::Vacant(entry) => {
            entry.insert((correction.delta, keep));
        }
        std::collections::hash_map::Entry::Occupied(mut entry) => {
            let merged = match (entry.get().0, correction.delta) {
                (Delta::RateUs(a), Delta::RateUs(b)) => Delta::RateUs(a + b),
                (Delta::Quota(a), Delta::Quota(b)) => Delta::Quota(a + b),
                (_, other) => other,
            };
            entry.insert((merged, keep));
        }
    }
}

/// A tenth of a minute's requests, at least one.
fn default_burst(per_minute: u32) -> u32 {
    (per_minute / 10).max(1)
}

/// A token rate: a minute's worth at once.
fn token_rate(per_minute: u64) -> Rate {
    Rate::per_minute(per_minute, per_minute)
}

fn quota_counter(key: &str, figure: &str, period: &str) -> String {
    format!("quota:{key}:{figure}@{period}")
}

fn model_tokens_counter(model: &str) -> String {
    format!("rate:tokens:model:{model}")
}

fn headroom_at(verdict: &Verdict, index: Option<usize>) -> Option<Headroom> {
    let headroom = match verdict {
        Verdict::Admitted { headroom } | Verdict::Refused { headroom, .. } => headroom,
    };
    index.and_then(|index| headroom.get(index).copied().flatten())
}

fn refusal_error(refusals: &[Refusal], verdict: &Verdict) -> Option<RelayError> {
    let Verdict::Refused {
        index,
        retry_after_us,
        ..
    } = verdict
    else {
        return None;
    };
    Some(match refusals.get(*index)? {
        Refusal::Rate(limit) => RelayError::RateLimited {
            limit: limit.clone(),
            retry_after: Duration::from_micros(retry_after_us.max(0.0).ceil() as u64),
        },
        Refusal::Quota(quota) => RelayError::QuotaExceeded(quota.clone()),
    })
}

fn totals(spend: Spend) -> UsageTotals {
    UsageTotals {
        requests: spend.requests.max(0) as u64,
        input_tokens: spend.input_tokens.max(0) as u64,
        output_tokens: spend.output_tokens.max(0) as u64,
        cost_usd: spend.cost_micros as f64 / 1e6,
    }
}

fn model_usage(model: &str, spend: Spend) -> ModelUsage {
    ModelUsage {
        model: model.to_string(),
        totals: totals(spend),
    }
}

fn key_usage(key: &str, period: &Period, rows: &[(RowKey, Spend)]) -> KeyUsage {
    let (mut today, mut month) = (Spend::default(), Spend::default());
    let mut today_by_model: BTreeMap<&str, Spend> = BTreeMap::new();
    let mut month_by_model: BTreeMap<&str, Spend> = BTreeMap::new();
    for (row, spend) in rows.iter().filter(|(row, _)| row.key == key) {
        month.add(*spend);
        month_by_model.entry(&row.model).or_default().add(*spend);
        if row.day == period.day {
            today.add(*spend);
            today_by_model.entry(&row.model).or_default().add(*spend);
        }
    }
    let list = |by_model: BTreeMap<&str, Spend>| {
        by_model
            .into_iter()
            .map(|(model, spend)| model_usage(model, spend))
            .collect()
    };
    KeyUsage {
        key: key.to_string(),
        day: period.day.clone(),
        month: period.month.clone(),
        today: totals(today),
        month_to_date: totals(month),
        today_by_model: list(today_by_model),
        month_by_model: list(month_by_model),
    }
}

/// One of a key's concurrent streams, given back when dropped.
#[derive(Debug)]
struct StreamSlot {
    limits: Arc<Limits>,
    key: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self
            .limits
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = streams.get_mut(&self.key) {
            *open = open.saturating_sub(1);
        }
    }
}

/// What a request's calls spent so far.
#[derive(Debug, Default)]
struct Spent {
    /// Per model and region.
    calls: Vec<(String, String, Spend)>,
    answered_by: Option<(String, String)>,
}

/// A request's admitted reservation and its meter: settles when dropped (see the module docs).
#[derive(Debug)]
pub struct Reservation {
    limits: Arc<Limits>,
    key: String,
    /// The model the tokens were reserved on.
    model: String,
    period: Period,
    reserved_tokens: u64,
    reserved_micros: i64,
    key_tokens: Option<Rate>,
    counted_in: CountedIn,
    token_quotas: Vec<(String, u64)>,
    usd_quotas: Vec<(String, u64)>,
    spent: Mutex<Spent>,
    _stream: Option<StreamSlot>,
}

impl SpendMeter for Reservation {
    fn record(&self, spend: AttemptSpend<'_>) {
        let terms = self.limits.terms(spend.model);
        let (input, output) = (
            u64::from(spend.usage.input_tokens),
            u64::from(spend.usage.output_tokens),
        );
        let entry = Spend {
            requests: 0,
            input_tokens: input as i64,
            output_tokens: output as i64,
            cost_micros: terms.map_or(0, |terms| terms.cost_micros(input, output)),
        };
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent
            .calls
            .push((spend.model.to_string(), spend.region.to_string(), entry));
    }

    fn answered_by(&self, model: &str, region: &str) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.answered_by = Some((model.to_string(), region.to_string()));
    }
}

/// What settling a reservation changes.
struct Settlement {
    counted_in: CountedIn,
    corrections: Vec<(Correction, u64)>,
    rows: Vec<(RowKey, Spend)>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let spent = std::mem::take(&mut *self.spent.lock().unwrap_or_else(|e| e.into_inner()));
        let row = |model: &str, region: &str| RowKey {
            day: self.period.day.clone(),
            key: self.key.clone(),
            model: model.to_string(),
            region: region.to_string(),
        };
        // The request itself is counted under the model that answered it (the one it was
        // routed to, when none did), beside what each call spent.
        let (model, region) = spent
            .answered_by
            .clone()
            .unwrap_or_else(|| (self.model.clone(), "-".into()));
        let mut rows = vec![(
            row(&model, &region),
            Spend {
                requests: 1,
                ..Spend::default()
            },
        )];
        let mut total = Spend::default();
        let mut per_model: HashMap<&str, i64> = HashMap::new();
        for (model, region, spend) in &spent.calls {
            total.add(*spend);
            *per_model.entry(model.as_str()).or_default() += spend.tokens();
            rows.push((row(model, region), *spend));
        }
        let mut corrections = Vec::new();
        let reserved = self.reserved_tokens as i64;
        let mut rate = |counter: String, rate: Rate, delta_tokens: i64| {
            if delta_tokens != 0 {
                corrections.push((
                    Correction {
                        counter,
                        delta: Delta::RateUs(delta_tokens as f64 * rate.interval_us),
                    },
                    0,
                ));
            }
        };
        if let Some(key_rate) = self.key_tokens {
            rate(
                format!("rate:tokens:key:{}", self.key),
                key_rate,
                total.tokens() - reserved,
            );
        }
        // Each model's counter: the reserved model's corrected, others charged what they used.
        let mut models: Vec<&str> = per_model.keys().copied().collect();
        if !models.contains(&self.model.as_str()) {
            models.push(&self.model);
        }
        for model in models {
            let Some(per_minute) = self
                .limits
                .terms(model)
                .and_then(|terms| terms.tokens_per_minute)
            else {
                continue;
            };
            let used = per_model.get(model).copied().unwrap_or(0);
            let delta = match model == self.model {
                true => used - reserved,
                false => used,
            };
            rate(model_tokens_counter(model), token_rate(per_minute), delta);
        }
        let quotas =
            self.token_quotas
                .iter()
                .map(|(counter, keep)| (counter, total.tokens() - reserved, *keep))
                .chain(self.usd_quotas.iter().map(|(counter, keep)| {
                    (counter, total.cost_micros - self.reserved_micros, *keep)
                }));
        for (counter, delta, keep) in quotas {
            if delta != 0 {
                corrections.push((
                    Correction {
                        counter: counter.clone(),
                        delta: Delta::Quota(delta),
                    },
                    keep,
                ));
            }
        }
        self.limits.settle(Settlement {
            counted_in: self.counted_in,
            corrections,
            rows,
        });
    }
}
