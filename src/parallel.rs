//! Mapping over many items on a few threads: the dir catalog's full read (10 000 files) and
//! the first conversion of as many instances to template values.
//!
//! Threads take batches from a shared counter rather than fixed shares. With fixed shares (a
//! quarter of the files each, four threads on two cores), the thread the scheduler served
//! least was still reading alone after the others had finished: the last ~8 ms of a ~60 ms
//! one-shot render ran on one core of two.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Items a thread takes at a time: small enough that threads finish together, large enough
/// that the counter is touched rarely and each thread's results lie together in memory.
pub const BATCH: usize = 64;

/// `items.iter().map(f).collect()`, on up to `threads` threads when there is more than one
/// batch. A panic in `f` is resumed in the caller.
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= BATCH || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done: Vec<(usize, Vec<R>)> = Vec::new();
        loop {
            let start = next.fetch_add(BATCH, Ordering::Relaxed);
            if start >= items.len() {
                return done;
            }
            let batch = &items[start..items.len().min(start + BATCH)];
            done.push((start, batch.iter().map(&f).collect()));
        }
    };
    let mut batches: Vec<(usize, Vec<R>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(items.len().div_ceil(BATCH)))
            .map(|_| s.spawn(work))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    batches.sort_unstable_by_key(|(start, _)| *start);
    batches.into_iter().flat_map(|(_, b)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item is mapped once and the results come back in the items' order, whatever
    /// thread mapped which batch and whether the last batch is full.
    #[test]
    fn results_keep_the_order_of_the_items() {
        for n in [0, 1, BATCH, BATCH + 1, 10 * BATCH + 7] {
            let items: Vec<usize> = (0..n).collect();
            let mapped = map(&items, 4, |i| {
                // Uneven work, so batches finish out of order.
                if i % 3 == 0 {
                    std::thread::yield_now();
                }
                i * 2
            });
            assert_eq!(
                mapped,
                items.iter().map(|i| i * 2).collect::<Vec<_>>(),
                "{n}"
            );
        }
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let items: Vec<usize> = (0..4 * BATCH).collect();
        let caught = std::panic::catch_unwind(|| {
            map(&items, 3, |&i| {
                assert!(i != 3 * BATCH + 1, "item {i} is bad");
                i
            })
        });
        let message = caught.unwrap_err();
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains("is bad"), "{text}");
    }
}
