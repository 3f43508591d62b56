//! Sorting many items whose full comparison is slow by an integer prefix of it.
//!
//! A one-shot render of 10 000 instances sorts twice, serially, where nothing else runs: a
//! service directory's file names (before the first file is read; string comparisons through
//! `memcmp`) and the instances, by address (the full key parses both addresses at each
//! comparison). Each sort was ~7 M instructions. Here each item's prefix (a `u128`) is computed
//! once and the items are ordered by it; only items whose prefixes are equal are compared in
//! full.
//!
//! Long lists are ordered by a radix sort on the prefix's bytes, one pass per byte in which
//! the prefixes differ (IPv4 addresses in one subnet differ in two or three; names such as
//! `web-1234.json` share their first four bytes). Counted with callgrind for 10 000 items: a
//! comparison sort of the prefixes took 4.1-4.2 M instructions per list; the radix sort 0.7 M
//! for the instances and 2.5 M for the file names. Short lists (the daemon's common case) use
//! the comparison sort.

use std::cmp::Ordering;

/// Lists at least this long are radix-sorted. Below it the two cost about the same (an
/// estimate: each radix pass also walks 256 counters, and names can need nine passes), and the
/// comparison sort needs no scratch list.
const RADIX_FROM: usize = 512;

/// Sorts `items` as `full` orders them (stable on equal items: earlier first). `prefix` must
/// agree with `full`: where two prefixes differ, they order the items as `full` does.
pub fn sort_by_prefix<T>(
    items: &mut Vec<T>,
    prefix: impl Fn(&T) -> u128,
    full: impl Fn(&T, &T) -> Ordering,
) {
    let mut keyed: Vec<(u128, usize)> = items.iter().map(prefix).zip(0..).collect();
    // The common case, two prefixes that differ, stays inline in the sort's loop.
    let order = |a: &(u128, usize), b: &(u128, usize)| match a.0.cmp(&b.0) {
        Ordering::Equal => settle(&items[a.1], &items[b.1], a.1.cmp(&b.1), &full),
        unequal => unequal,
    };
    if keyed.is_sorted_by(|a, b| order(a, b).is_le()) {
        return;
    }
    if keyed.len() < RADIX_FROM {
        keyed.sort_unstable_by(order);
    } else {
        radix_sort(&mut keyed);
        // Equal prefixes are next to each other, in their input order: settle each run.
        let mut start = 0;
        while start < keyed.len() {
            let key = keyed[start].0;
            let end = start + keyed[start..].iter().take_while(|k| k.0 == key).count();
            if end - start > 1 {
                keyed[start..end].sort_by(order);
            }
            start = end;
        }
    }
    let mut taken: Vec<Option<T>> = std::mem::take(items).into_iter().map(Some).collect();
    *items = keyed
        .into_iter()
        .filter_map(|(_, n)| taken[n].take())
        .collect();
}

/// A stable least-significant-byte-first radix sort of `keyed` by its `u128`: one pass to
/// count every byte's values, then one scatter pass per byte in which the keys differ.
fn radix_sort(keyed: &mut Vec<(u128, usize)>) {
    let Some(&(first, _)) = keyed.first() else {
        return;
    };
    // The bits in which some key differs from the first: a byte without any is the same in
    // every key and needs no pass.
    let differ = keyed.iter().fold(0u128, |acc, k| acc | (k.0 ^ first));
    let bytes: Vec<usize> = (0..16)
        .filter(|b| (differ >> (b * 8)) & 0xff != 0)
        .collect();
    let mut counts = vec![[0usize; 256]; bytes.len()];
    for k in keyed.iter() {
        let le = k.0.to_le_bytes();
        for (count, &b) in counts.iter_mut().zip(&bytes) {
            count[usize::from(le[b])] += 1;
        }
    }
    let mut scratch = vec![(0u128, 0usize); keyed.len()];
    for (at, &b) in counts.iter_mut().zip(&bytes) {
        let mut sum = 0;
        for slot in at.iter_mut() {
            let count = *slot;
            *slot = sum;
            sum += count;
        }
        for k in keyed.iter() {
            let d = usize::from(k.0.to_le_bytes()[b]);
            scratch[at[d]] = *k;
            at[d] += 1;
        }
        std::mem::swap(keyed, &mut scratch);
    }
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

    /// Both ways of sorting are checked: lists shorter than [`RADIX_FROM`] and longer.
    const SIZES: [usize; 2] = [RADIX_FROM / 4, RADIX_FROM * 4];

    /// Strings that share long prefixes, differ only past byte 16, are prefixes of each other
    /// or repeat come out exactly as a plain sort puts them.
    #[test]
    fn orders_as_the_full_comparison_does() {
        for size in SIZES {
            let mut words: Vec<String> = Vec::new();
            for i in 0..size as u32 / 3 {
                words.push(format!("web-{}.json", i * 7919 % 1000));
                words.push(format!("a-very-long-shared-prefix-{}", i % 37));
                words.push("x".repeat((i % 20) as usize));
            }
            let mut expected = words.clone();
            expected.sort();
            sort_by_prefix(&mut words, |w| bytes_prefix(w.as_bytes()), |a, b| a.cmp(b));
            assert_eq!(words, expected, "{size} words");
        }
    }

    /// Items equal under the full comparison keep their order, so a tie broken by position
    /// (two instances with one id) is deterministic.
    #[test]
    fn equal_items_keep_their_order() {
        for size in SIZES {
            let mut items: Vec<(u8, usize)> = (0..size).map(|i| ((i % 3) as u8, i)).rev().collect();
            sort_by_prefix(&mut items, |&(k, _)| u128::from(k), |a, b| a.0.cmp(&b.0));
            for pair in items.windows(2) {
                let ((ka, ia), (kb, ib)) = (pair[0], pair[1]);
                assert!(ka < kb || (ka == kb && ia > ib), "{pair:?}");
            }
        }
    }

    /// Prefixes that differ in any of their 16 bytes (the radix sort skips only bytes that
    /// are the same in every prefix), with ties settled by the full comparison, come out as a
    /// stable sort by the full key puts them.
    #[test]
    fn any_byte_of_the_prefix_orders() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for size in SIZES {
            // (prefix, tie-breaker, position): a few prefixes repeat, with differing tie-breakers.
            let mut items: Vec<(u128, u8, usize)> = (0..size)
                .map(|i| {
                    let byte = (next() % 16) as u32;
                    let prefix = u128::from(next() % 4) << (8 * byte);
                    (prefix, (next() % 3) as u8, i)
                })
                .collect();
            let mut expected = items.clone();
            expected.sort_by_key(|&(p, t, _)| (p, t));
            sort_by_prefix(&mut items, |i| i.0, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            assert_eq!(items, expected, "{size} items");
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
