//! The set workload's checker: clients add unique elements; at the end the set is read.
//!
//! * lost: acknowledged adds missing from the final read (must be none);
//! * unexpected: elements in the final read that nobody tried to add (must be none);
//! * recovered: adds of unknown outcome that turned out to have happened (fine);
//! * failed adds that are present anyway count as unexpected: a refused write happened.

use std::collections::BTreeSet;

use crate::history::Outcome;

/// One attempted add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    /// The element (unique per run).
    pub element: u64,
    /// What came back.
    pub outcome: Outcome<()>,
}

/// The set checker's findings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetReport {
    /// Acknowledged, then missing.
    pub lost: BTreeSet<u64>,
    /// Present without an add that may have happened.
    pub unexpected: BTreeSet<u64>,
    /// Unknown outcome, present.
    pub recovered: BTreeSet<u64>,
    /// Acknowledged and present.
    pub ok: usize,
}

impl SetReport {
    /// Whether the run passes.
    pub fn valid(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty()
    }
}

/// Compares the adds with the final read.
pub fn check(adds: &[Add], final_read: &BTreeSet<u64>) -> SetReport {
    let mut r = SetReport::default();
    let mut may_exist = BTreeSet::new();
    for a in adds {
        let present = final_read.contains(&a.element);
        match a.outcome {
            Outcome::Ok(()) if present => r.ok += 1,
            Outcome::Ok(()) => {
                r.lost.insert(a.element);
            }
            Outcome::Info if present => {
                r.recovered.insert(a.element);
            }
            Outcome::Info | Outcome::Fail => {}
        }
        if !matches!(a.outcome, Outcome::Fail) {
            may_exist.insert(a.element);
        }
    }
    r.unexpected = final_read.difference(&may_exist).copied().collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(element: u64, outcome: Outcome<()>) -> Add {
        Add { element, outcome }
    }

    #[test]
    fn set_checker_finds_lost_unexpected_and_recovered() {
        let adds = vec![
            add(1, Outcome::Ok(())),
            add(2, Outcome::Ok(())),
            add(3, Outcome::Info),
            add(4, Outcome::Info),
            add(5, Outcome::Fail),
        ];
        let read: BTreeSet<u64> = [1, 3, 5, 9].into();
        let r = check(&adds, &read);
        assert_eq!(r.lost, [2].into());
        assert_eq!(r.recovered, [3].into());
        assert_eq!(r.unexpected, [5, 9].into(), "a failed add that happened, and a stranger");
        assert_eq!(r.ok, 1);
        assert!(!r.valid());
        let clean = check(&adds[..4], &[1, 2, 4].into());
        assert!(clean.valid(), "{clean:?}");
    }
}
