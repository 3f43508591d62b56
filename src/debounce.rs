//! Waits for catalog changes to settle before rendering (quiescence).
//!
//! A rolling deploy moves dozens of instances in a second; reloading nginx on each would churn
//! workers. `min` lets a burst finish (the timer restarts on every change), `max` bounds the
//! delay under constant change (counted from the first change of the burst). `min = 0`
//! renders at once.

#[cfg(test)]
use tokio::time::Duration;
use tokio::time::Instant;

use crate::config::Wait;

#[derive(Debug, Clone)]
pub struct Debounce {
    wait: Wait,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn new(wait: Wait) -> Debounce {
        Debounce {
            wait,
            first: None,
            last: None,
        }
    }

    /// Records a change now.
    pub fn poke(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending change is due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.wait.min).min(first + self.wait.max))
    }

    pub fn is_due(&self) -> bool {
        self.deadline().is_some_and(|d| d <= Instant::now())
    }

    /// Clears the pending change (call when rendering it).
    pub fn take(&mut self) {
        self.first = None;
        self.last = None;
    }

    pub fn set_wait(&mut self, wait: Wait) {
        self.wait = wait;
    }
}

/// Sleeps until the debounce is due; pending forever when nothing is pending.
pub async fn due(d: &Debounce) {
    match d.deadline() {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wait(min: u64, max: u64) -> Wait {
        Wait {
            min: ms(min),
            max: ms(max),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_renders_once_after_min_wait() {
        let mut d = Debounce::new(wait(200, 1000));
        assert!(!d.is_due());
        d.poke();
        advance(ms(150)).await;
        d.poke();
        advance(ms(199)).await;
        assert!(!d.is_due());
        advance(ms(1)).await;
        assert!(d.is_due());
        d.take();
        assert!(!d.is_due());
        assert!(d.deadline().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn constant_change_is_bounded_by_max() {
        let mut d = Debounce::new(wait(200, 1000));
        d.poke();
        for _ in 0..9 {
            advance(ms(100)).await;
            d.poke();
            assert!(!d.is_due());
        }
        advance(ms(100)).await; // 1000 ms after the first change
        d.poke();
        assert!(d.is_due());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_min_is_due_at_once() {
        let mut d = Debounce::new(wait(0, 0));
        d.poke();
        assert!(d.is_due());
        let start = Instant::now();
        due(&d).await;
        assert_eq!(Instant::now(), start);
    }
}
