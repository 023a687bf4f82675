//! The counters limits are kept in, and the one operation that checks them: an admission of
//! several [`Charge`]s at once — all admitted and committed together, or none (a request refused
//! by one limit uses up no other). [`MemoryCounters`] keeps them in this process under one lock;
//! `limits::redis` runs the same admission as one Lua script in Redis.

use std::collections::HashMap;
use std::sync::Mutex;

use super::gcra::{Check, Headroom, Rate};

/// One counter a request is charged to.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The counter's name, e.g. `rate:requests:key:NAME` or `quota:NAME:requests@2026-12`.
    pub counter: String,
    pub kind: ChargeKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChargeKind {
    /// A GCRA rate: admitted when `cost` fits.
    Rate { rate: Rate, cost: f64 },
    /// A period's quota: admitted when `used + cost <= limit` (`whole`), or while anything is
    /// left (`!whole`: token and dollar quotas, whose reservations settle to less).
    Quota {
        limit: i64,
        cost: i64,
        whole: bool,
        /// How long the counter outlives its period's start (its expiry in Redis).
        keep_secs: u64,
    },
}

/// What an admission decided: every rate's headroom, in the order charged.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Admitted {
        headroom: Vec<Option<Headroom>>,
    },
    Refused {
        /// The first charge that did not fit.
        index: usize,
        /// For a rate, how long until it would fit.
        retry_after_us: f64,
        headroom: Vec<Option<Headroom>>,
    },
}

/// A settled correction: the reserved cost minus the real one, in the charge's units (for a
/// rate, `delta × interval` moves its TAT).
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    pub counter: String,
    pub delta: Delta,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delta {
    RateUs(f64),
    Quota(i64),
}

/// Counters in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    inner: Mutex<Cells>,
}

#[derive(Debug, Default)]
struct Cells {
    rates: HashMap<String, f64>,
    quotas: HashMap<String, i64>,
    /// The periods the quota counters were last pruned for.
    periods: Vec<String>,
}

impl MemoryCounters {
    /// Checks `charges` at `now_us` and commits them when all fit.
    pub fn admit(&self, charges: &[Charge], now_us: f64) -> Verdict {
        let mut cells = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut headroom = Vec::with_capacity(charges.len());
        let mut new_tats = Vec::with_capacity(charges.len());
        let mut refused = None;
        for (index, charge) in charges.iter().enumerate() {
            match charge.kind {
                ChargeKind::Rate { rate, cost } => {
                    let tat = cells.rates.get(&charge.counter).copied().unwrap_or(0.0);
                    match rate.check(tat, now_us, cost) {
                        Check::Admitted {
                            new_tat_us,
                            headroom: room,
                        } => {
                            headroom.push(Some(room));
                            new_tats.push(Some(new_tat_us));
                        }
                        Check::Refused {
                            retry_after_us,
                            headroom: room,
                        } => {
                            headroom.push(Some(room));
                            new_tats.push(None);
                            refused.get_or_insert((index, retry_after_us));
                        }
                    }
                }
                ChargeKind::Quota {
                    limit, cost, whole, ..
                } => {
                    let used = cells.quotas.get(&charge.counter).copied().unwrap_or(0);
                    let fits = if whole {
                        used + cost <= limit
                    } else {
                        used < limit
                    };
                    headroom.push(None);
                    new_tats.push(None);
                    if !fits {
                        refused.get_or_insert((index, 0.0));
                    }
                }
            }
        }
        if let Some((index, retry_after_us)) = refused {
            return Verdict::Refused {
                index,
                retry_after_us,
                headroom,
            };
        }
        for (charge, new_tat) in charges.iter().zip(new_tats) {
            match (charge.kind, new_tat) {
                (ChargeKind::Rate { .. }, Some(tat)) => {
                    cells.rates.insert(charge.counter.clone(), tat);
                }
                (ChargeKind::Quota { cost, .. }, _) => {
                    *cells.quotas.entry(charge.counter.clone()).or_default() += cost;
                }
                _ => {}
            }
        }
        Verdict::Admitted { headroom }
    }

    /// Applies settled corrections at `now_us`: a rate charged more moves on from now at the
    /// earliest (as an admission would), one charged less moves back.
    pub fn correct(&self, corrections: &[Correction], now_us: f64) {
        let mut cells = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for correction in corrections {
            match correction.delta {
                Delta::RateUs(us) => {
                    let tat = cells.rates.entry(correction.counter.clone()).or_insert(0.0);
                    *tat = match us > 0.0 {
                        true => tat.max(now_us) + us,
                        false => *tat + us,
                    };
                }
                Delta::Quota(delta) => {
                    *cells.quotas.entry(correction.counter.clone()).or_default() += delta;
                }
            }
        }
    }

    /// Sets quota counters (from the ledger, at start-up).
    pub fn seed(&self, counter: String, used: i64) {
        let mut cells = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        cells.quotas.insert(counter, used);
    }

    /// Forgets quota counters of periods other than `periods` (called when the day changes).
    pub fn keep_periods(&self, periods: &[String]) {
        let mut cells = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if cells.periods == periods {
            return;
        }
        cells
            .quotas
            .retain(|counter, _| periods.iter().any(|p| counter.ends_with(&format!("@{p}"))));
        cells.periods = periods.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(counter: &str, per_minute: u64, burst: u64) -> Charge {
        Charge {
            counter: counter.into(),
            kind: ChargeKind::Rate {
                rate: Rate::per_minute(per_minute, burst),
                cost: 1.0,
            },
        }
    }

    #[test]
    fn a_request_refused_by_one_limit_uses_up_no_other() {
        let counters = MemoryCounters::default();
        let key = rate("key", 60, 1);
        let global = rate("global", 60, 10);
        assert!(matches!(
            counters.admit(&[key.clone(), global.clone()], 0.0),
            Verdict::Admitted { .. }
        ));
        for _ in 0..20 {
            let Verdict::Refused { index, .. } =
                counters.admit(&[key.clone(), global.clone()], 0.0)
            else {
                panic!("the key's burst of 1 admitted a second request");
            };
            assert_eq!(index, 0);
        }
        // The refusals left the global counter with 9 of 10.
        let Verdict::Admitted { headroom } = counters.admit(&[global], 0.0) else {
            panic!("global refused");
        };
        assert_eq!(headroom[0].unwrap().remaining, 8);
    }

    #[test]
    fn whole_quotas_admit_exactly_their_limit() {
        let counters = MemoryCounters::default();
        let quota = Charge {
            counter: "q@2026-12".into(),
            kind: ChargeKind::Quota {
                limit: 3,
                cost: 1,
                whole: true,
                keep_secs: 60,
            },
        };
        let admitted = (0..10)
            .filter(|_| {
                matches!(
                    counters.admit(std::slice::from_ref(&quota), 0.0),
                    Verdict::Admitted { .. }
                )
            })
            .count();
        assert_eq!(admitted, 3);
        counters.keep_periods(&["2027-01".into()]);
        assert!(matches!(
            counters.admit(&[quota], 0.0),
            Verdict::Admitted { .. }
        ));
    }
}
