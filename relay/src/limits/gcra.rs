//! The generic cell rate algorithm (GCRA), the arithmetic of every rate limit here: a limit of
//! `capacity` units that refills one unit per `interval`, kept as one number per counter — the
//! theoretical arrival time (TAT) at which the counter would be full again. A request of `cost`
//! units pushes the TAT `cost × interval` later and is admitted when that leaves it at most
//! `capacity × interval` ahead of now. Requests count 1 (capacity = the burst), token
//! reservations count their tokens (capacity = a minute's worth); settling a reservation to
//! the real usage moves the TAT back by the tokens not used.
//!
//! Times are microseconds as `f64`: the same numbers the Redis script computes with, so both
//! stores agree to the microsecond.

/// One rate: `capacity` units at once, one more every `interval_us`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub interval_us: f64,
    pub capacity: f64,
}

impl Rate {
    /// `per_minute` units a minute, at most `burst` at once.
    pub fn per_minute(per_minute: u64, burst: u64) -> Rate {
        Rate {
            interval_us: 60_000_000.0 / per_minute.max(1) as f64,
            capacity: burst.max(1) as f64,
        }
    }

    /// What admitting `cost` units at `now_us` to a counter whose TAT is `tat_us` gives.
    pub fn check(&self, tat_us: f64, now_us: f64, cost: f64) -> Check {
        let base = tat_us.max(now_us);
        let new_tat = base + cost * self.interval_us;
        let allowed_ahead = self.capacity * self.interval_us;
        // A microsecond of slack absorbs float rounding of exact fits.
        if new_tat - now_us <= allowed_ahead + 1.0 {
            Check::Admitted {
                new_tat_us: new_tat,
                headroom: self.headroom(new_tat, now_us),
            }
        } else {
            Check::Refused {
                retry_after_us: new_tat - now_us - allowed_ahead,
                headroom: self.headroom(base, now_us),
            }
        }
    }

    /// How much of the rate is left when the TAT is `tat_us`.
    pub fn headroom(&self, tat_us: f64, now_us: f64) -> Headroom {
        let ahead = (tat_us - now_us).max(0.0);
        let left = ((self.capacity * self.interval_us - ahead) / self.interval_us).floor();
        Headroom {
            limit: self.capacity as u64,
            remaining: left.max(0.0) as u64,
            reset_us: ahead,
        }
    }
}

/// The outcome of [`Rate::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    Admitted {
        new_tat_us: f64,
        headroom: Headroom,
    },
    Refused {
        retry_after_us: f64,
        headroom: Headroom,
    },
}

/// What a caller may still send: the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headroom {
    pub limit: u64,
    pub remaining: u64,
    /// Until the counter is full again.
    pub reset_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_steady_rate_holds() {
        // 60 a minute (one a second), bursts of 5.
        let rate = Rate::per_minute(60, 5);
        let mut tat = 0.0;
        let now = 1_000_000_000.0;
        for expected_left in (0..5).rev() {
            match rate.check(tat, now, 1.0) {
                Check::Admitted {
                    new_tat_us,
                    headroom,
                } => {
                    assert_eq!(headroom.remaining, expected_left);
                    tat = new_tat_us;
                }
                refused => panic!("burst refused: {refused:?}"),
            }
        }
        let Check::Refused { retry_after_us, .. } = rate.check(tat, now, 1.0) else {
            panic!("the sixth request at once was admitted");
        };
        assert!(
            (retry_after_us - 1_000_000.0).abs() < 1.0,
            "{retry_after_us}"
        );
        // A second later exactly one more fits.
        let later = now + 1_000_000.0;
        let Check::Admitted { new_tat_us, .. } = rate.check(tat, later, 1.0) else {
            panic!("refused after the interval");
        };
        assert!(matches!(
            rate.check(new_tat_us, later, 1.0),
            Check::Refused { .. }
        ));
    }

    #[test]
    fn a_refusal_leaves_the_counter_as_it_was_and_headroom_recovers() {
        let rate = Rate::per_minute(600, 600);
        let now = 5_000_000.0;
        let Check::Refused { headroom, .. } = rate.check(now, now, 601.0) else {
            panic!("more than the capacity was admitted");
        };
        assert_eq!(headroom.remaining, 600);
        let spent = now + 300.0 * rate.interval_us;
        let headroom = rate.headroom(spent, now + 30_000_000.0);
        assert_eq!(headroom.remaining, 600, "half a minute refills 300 of 600");
    }
}
