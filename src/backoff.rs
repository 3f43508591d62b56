//! Capped exponential backoff with jitter, for reconnecting to a catalog that went away.
//!
//! rewire never gives up on a catalog (consul-template exits after ~304 s of outage). Each
//! failure doubles the delay up to `max`; jitter spreads reconnects of many containers so a
//! recovering Consul or etcd is not hit by all of them in the same millisecond.

use std::time::Duration;

use rand::Rng;

/// Bounds a backoff cannot have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("retry base must be more than 0")]
    ZeroBase,
    #[error(
        "retry max ({}) is less than base ({})",
        humantime::format_duration(*.max),
        humantime::format_duration(*.base)
    )]
    MaxBelowBase { base: Duration, max: Duration },
}

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// `base` is the first delay, `max` the cap. Rejects `max < base` and a zero base.
    pub fn new(base: Duration, max: Duration) -> Result<Backoff, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if max < base {
            return Err(BackoffError::MaxBelowBase { base, max });
        }
        Ok(Backoff {
            base,
            max,
            attempt: 0,
        })
    }

    /// The delay before the next attempt: between half and all of `base * 2^n`, capped.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = rand::rng().random_range(0..=half.as_micros() as u64);
        half + Duration::from_micros(jitter)
    }

    /// How many failures in a row so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Call after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_max_below_base() {
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn delays_stay_within_bounds_and_grow_to_the_cap() {
        let base = Duration::from_millis(250);
        let max = Duration::from_secs(30);
        let mut b = Backoff::new(base, max).unwrap();
        for n in 0..200u32 {
            let ceiling = base.saturating_mul(1u32 << n.min(20)).min(max);
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            assert!(d >= ceiling / 2, "attempt {n}: {d:?} < half of {ceiling:?}");
        }
        assert_eq!(b.attempts(), 200);
        b.reset();
        assert!(b.next_delay() <= base);
    }
}
