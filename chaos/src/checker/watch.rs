//! The watch workload's checker. Each watcher records the events it received, with the
//! revision and key of each; the reference is the history of successful writes (with the
//! revision each was acknowledged at), which a watcher must see in full between its
//! first and last revision.
//!
//! * ordered: revisions never go backwards;
//! * unique: no (revision, key) twice;
//! * reliable: no acknowledged write inside the watched window is missing;
//! * nothing invented: every event matches a write that may have happened.

use std::collections::BTreeSet;

/// One event a watcher received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    /// The store revision.
    pub revision: i64,
    /// An id for the key (the workload's key index).
    pub key: u32,
}

/// What is wrong with one watcher's stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchReport {
    /// Positions where the revision went backwards.
    pub out_of_order: Vec<usize>,
    /// Events received twice.
    pub duplicates: Vec<Seen>,
    /// Acknowledged writes inside the window that never arrived.
    pub missing: Vec<Seen>,
    /// Events matching no write that may have happened.
    pub invented: Vec<Seen>,
}

impl WatchReport {
    /// Whether the stream passes.
    pub fn valid(&self) -> bool {
        self.out_of_order.is_empty()
            && self.duplicates.is_empty()
            && self.missing.is_empty()
            && self.invented.is_empty()
    }
}

/// Checks `stream` (in arrival order) against `acked` (acknowledged writes) and
/// `possible` (acknowledged or of unknown outcome), for a watcher that covered revisions
/// `from..=to`.
pub fn check(stream: &[Seen], acked: &BTreeSet<Seen>, possible: &BTreeSet<Seen>, from: i64, to: i64) -> WatchReport {
    let mut r = WatchReport::default();
    let mut got = BTreeSet::new();
    for (i, s) in stream.iter().enumerate() {
        if i > 0 && s.revision < stream[i - 1].revision {
            r.out_of_order.push(i);
        }
        if !got.insert(*s) {
            r.duplicates.push(*s);
        }
        if !possible.contains(s) && !acked.contains(s) {
            r.invented.push(*s);
        }
    }
    r.missing = acked.iter().filter(|a| a.revision >= from && a.revision <= to && !got.contains(a)).copied().collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(revision: i64, key: u32) -> Seen {
        Seen { revision, key }
    }

    #[test]
    fn watch_checker_finds_gaps_duplicates_order_and_inventions() {
        let acked: BTreeSet<Seen> = [s(2, 1), s(3, 2), s(4, 1), s(5, 3)].into();
        let possible: BTreeSet<Seen> = [s(6, 2)].into();
        assert!(check(&[s(2, 1), s(3, 2), s(4, 1), s(5, 3), s(6, 2)], &acked, &possible, 2, 6).valid());
        let r = check(&[s(2, 1), s(4, 1), s(3, 2), s(4, 1), s(7, 9)], &acked, &possible, 2, 7);
        assert_eq!(r.out_of_order, vec![2]);
        assert_eq!(r.duplicates, vec![s(4, 1)]);
        assert_eq!(r.missing, vec![s(5, 3)]);
        assert_eq!(r.invented, vec![s(7, 9)]);
        // A watcher that started at 4 owes nothing before it.
        assert!(check(&[s(4, 1), s(5, 3)], &acked, &possible, 4, 5).valid());
    }
}
