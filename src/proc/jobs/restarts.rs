//! When a job comes back after its process exited: the restart policy, a capped exponential
//! backoff (1 s doubling to 30 s, with jitter) and an optional limit.
//!
//! `restart_limit` counts restarts in a row: a run that lasted [`STABLE_RUN`] resets both the
//! backoff and the count, so a sidecar that crashes once a day is never given up on, while one
//! that crashes at once is given up after the limit.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Restart;

/// A run this long counts as a good start: the backoff and the restart count reset.
pub const STABLE_RUN: Duration = Duration::from_secs(60);

/// What to do after the process exited.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Start it again after this delay.
    Restart(Duration),
    /// The policy says no (`never`, or `on-failure` after a success).
    Done,
    /// The limit was reached: given up after this many restarts.
    GaveUp(u32),
}

pub struct Restarts {
    policy: Restart,
    limit: Option<u32>,
    backoff: Backoff,
    /// Restarts in a row (since the last stable run).
    in_a_row: u32,
    /// Every restart since rewire started (for `rewire status`).
    pub total: u32,
}

impl Restarts {
    pub fn new(policy: Restart, limit: Option<u32>) -> Restarts {
        Restarts {
            policy,
            limit,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
                .expect("1s <= 30s"),
            in_a_row: 0,
            total: 0,
        }
    }

    /// Decides after a run that started at `started` and ended with `success`.
    pub fn after_exit(&mut self, success: bool, started: Instant) -> Next {
        let again = match self.policy {
            Restart::Never => false,
            Restart::OnFailure => !success,
            Restart::Always => true,
        };
        if !again {
            return Next::Done;
        }
        if started.elapsed() >= STABLE_RUN {
            self.backoff.reset();
            self.in_a_row = 0;
        }
        if self.limit.is_some_and(|l| self.in_a_row >= l) {
            return Next::GaveUp(self.in_a_row);
        }
        self.in_a_row += 1;
        self.total += 1;
        Next::Restart(self.backoff.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_until_the_limit() {
        let mut r = Restarts::new(Restart::OnFailure, Some(3));
        let mut ceilings = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            advance(Duration::from_millis(10)).await;
            match r.after_exit(false, started) {
                Next::Restart(d) => ceilings.push(d),
                other => panic!("expected a restart, got {other:?}"),
            }
        }
        // Between half and all of 1 s, 2 s, 4 s.
        for (d, ceiling) in ceilings.iter().zip([1, 2, 4]) {
            assert!(
                *d >= secs(ceiling) / 2 && *d <= secs(ceiling),
                "{ceilings:?}"
            );
        }
        assert_eq!(r.after_exit(false, Instant::now()), Next::GaveUp(3));
        assert_eq!(r.total, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_run_resets_the_backoff_and_the_count() {
        let mut r = Restarts::new(Restart::Always, Some(1));
        assert!(matches!(
            r.after_exit(true, Instant::now()),
            Next::Restart(_)
        ));
        assert_eq!(r.after_exit(true, Instant::now()), Next::GaveUp(1));
        let started = Instant::now();
        advance(STABLE_RUN).await;
        match r.after_exit(true, started) {
            Next::Restart(d) => assert!(d <= secs(1), "{d:?}"),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_decides_whether_to_come_back() {
        assert_eq!(
            Restarts::new(Restart::Never, None).after_exit(false, Instant::now()),
            Next::Done
        );
        assert_eq!(
            Restarts::new(Restart::OnFailure, None).after_exit(true, Instant::now()),
            Next::Done
        );
        assert!(matches!(
            Restarts::new(Restart::OnFailure, None).after_exit(false, Instant::now()),
            Next::Restart(_)
        ));
        // The cap: 30 s at most, however many failures.
        let mut r = Restarts::new(Restart::Always, None);
        for _ in 0..20 {
            if let Next::Restart(d) = r.after_exit(false, Instant::now()) {
                assert!(d <= secs(30));
            }
        }
    }
}
