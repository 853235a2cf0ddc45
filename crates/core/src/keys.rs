//! Key-range rules of the etcd v3 API.
//!
//! A request names a single key (`range_end` empty), the half-open range
//! `[key, range_end)`, or every key `>= key` (`range_end == b"\0"`). A `key` of `b"\0"`
//! with `range_end == b"\0"` means all keys.

use std::cmp::Ordering;

/// A key selection as the etcd API expresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly one key.
    Single(Vec<u8>),
    /// `[start, end)`; `end == None` means unbounded above.
    Range {
        /// Inclusive lower bound.
        start: Vec<u8>,
        /// Exclusive upper bound, or none.
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    /// Interprets an etcd `(key, range_end)` pair.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.to_vec())
        } else if range_end == b"\0" {
            KeyRange::Range { start: key.to_vec(), end: None }
        } else {
            KeyRange::Range { start: key.to_vec(), end: Some(range_end.to_vec()) }
        }
    }

    /// Whether `k` is selected.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(s) => s.as_slice() == k,
            KeyRange::Range { start, end } => k >= start.as_slice() && end.as_deref().is_none_or(|e| k < e),
        }
    }

    /// The inclusive lower bound.
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(s) => s,
            KeyRange::Range { start, .. } => start,
        }
    }

    /// Whether the range selects no key at all (`start >= end`).
    pub fn is_empty(&self) -> bool {
        match self {
            KeyRange::Single(_) => false,
            KeyRange::Range { start, end: Some(end) } => start.cmp(end) != Ordering::Less,
            KeyRange::Range { end: None, .. } => false,
        }
    }
}

/// The `range_end` that selects every key with the given prefix (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key >= prefix.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_selects_only_itself() {
        let r = KeyRange::from_etcd(b"a", b"");
        assert!(r.contains(b"a"));
        assert!(!r.contains(b"ab"));
    }

    #[test]
    fn zero_range_end_selects_everything_above_key() {
        let r = KeyRange::from_etcd(b"b", b"\0");
        assert!(!r.contains(b"a"));
        assert!(r.contains(b"b"));
        assert!(r.contains(b"\xff\xff"));
    }

    #[test]
    fn prefix_end_rolls_over_ff_bytes() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn inverted_range_is_empty() {
        assert!(KeyRange::from_etcd(b"b", b"a").is_empty());
        assert!(!KeyRange::from_etcd(b"a", b"b").is_empty());
    }
}
