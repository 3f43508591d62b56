//! Sorting many items whose full comparison is slow by an integer prefix of it.
//!
//! A one-shot render of 10 000 instances sorts twice: a service directory's file names
//! (string comparisons through `memcmp`) and the instances, by address (the full key parses
//! both addresses at each comparison). Each sort was ~7 M instructions, between the reads and
//! the render where nothing else runs. Here each item's prefix (an integer) is computed once,
//! the sort compares integers, and the full comparison only settles items whose prefixes are
//! equal.

use std::cmp::Ordering;

/// Sorts `items` as `full` orders them (stable on equal items: earlier first). `prefix` must
/// agree with `full`: where two prefixes differ, they order the items as `full` does.
pub fn sort_by_prefix<T, K: Ord + Copy>(
    items: &mut Vec<T>,
    prefix: impl Fn(&T) -> K,
    full: impl Fn(&T, &T) -> Ordering,
) {
    let mut keyed: Vec<(K, usize)> = items.iter().map(prefix).zip(0..).collect();
    // The common case, two prefixes that differ, stays inline in the sort's loop.
    let order = |a: &(K, usize), b: &(K, usize)| match a.0.cmp(&b.0) {
        Ordering::Equal => settle(&items[a.1], &items[b.1], a.1.cmp(&b.1), &full),
        unequal => unequal,
    };
    if keyed.is_sorted_by(|a, b| order(a, b).is_le()) {
        return;
    }
    keyed.sort_unstable_by(order);
    let mut taken: Vec<Option<T>> = std::mem::take(items).into_iter().map(Some).collect();
    *items = keyed
        .into_iter()
        .filter_map(|(_, n)| taken[n].take())
        .collect();
}

/// Two items with one prefix: the full comparison, then their positions.
#[cold]
#[inline(never)]
fn settle<T>(a: &T, b: &T, positions: Ordering, full: &impl Fn(&T, &T) -> Ordering) -> Ordering {
    full(a, b).then(positions)
}

/// The first 16 bytes of `bytes` as a big-endian integer, zero-padded: where two strings
/// without NUL bytes differ in their first 16 bytes, their prefixes order them as the strings
/// order (a shorter string's padding sorts before any byte).
pub fn bytes_prefix(bytes: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = bytes.len().min(16);
    b[..n].copy_from_slice(&bytes[..n]);
    u128::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings that share long prefixes, differ only past byte 16, are prefixes of each other
    /// or repeat come out exactly as a plain sort puts them.
    #[test]
    fn orders_as_the_full_comparison_does() {
        let mut words: Vec<String> = Vec::new();
        for i in 0..300u32 {
            words.push(format!("web-{}.json", i * 7919 % 1000));
            words.push(format!("a-very-long-shared-prefix-{}", i % 37));
            words.push("x".repeat((i % 20) as usize));
        }
        let mut expected = words.clone();
        expected.sort();
        sort_by_prefix(&mut words, |w| bytes_prefix(w.as_bytes()), |a, b| a.cmp(b));
        assert_eq!(words, expected);
    }

    /// Items equal under the full comparison keep their order, so a tie broken by position
    /// (two instances with one id) is deterministic.
    #[test]
    fn equal_items_keep_their_order() {
        let mut items: Vec<(u8, usize)> = (0..50).map(|i| ((i % 3) as u8, i)).rev().collect();
        sort_by_prefix(&mut items, |&(k, _)| k, |a, b| a.0.cmp(&b.0));
        for pair in items.windows(2) {
            let ((ka, ia), (kb, ib)) = (pair[0], pair[1]);
            assert!(ka < kb || (ka == kb && ia > ib), "{pair:?}");
        }
    }

    #[test]
    fn prefixes_agree_with_string_order() {
        for (a, b) in [
            ("", "a"),
            ("ab", "abc"),
            ("abcdefghijklmnop", "abcdefghijklmnoq"),
            ("abcdefghijklmnopqrstuvwxyz", "b"),
        ] {
            assert!(a < b);
            assert!(
                bytes_prefix(a.as_bytes()) < bytes_prefix(b.as_bytes()),
                "{a} {b}"
            );
        }
        assert_eq!(
            bytes_prefix(b"abcdefghijklmnopX"),
            bytes_prefix(b"abcdefghijklmnopY")
        );
    }
}
