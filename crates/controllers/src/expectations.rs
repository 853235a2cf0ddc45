//! Expectations: what a controller has asked for and not yet seen in its caches.
//!
//! A ReplicaSet controller that creates 3 pods reads its pod cache again before the watch
//! has delivered them; counting from that cache alone it would create 3 more. So before
//! each batch of writes it records what it expects to see — `n` creations, the deletion of
//! these pods (by uid) — and the informer's handlers mark each one observed. Until all are
//! observed (or a write failed and was taken back), the owner is not "satisfied" and its
//! reconcile makes no new creates or deletes. Records expire after a TTL (5 minutes, as in
//! Kubernetes), so a lost watch event delays a controller but never blocks it forever.
//!
//! Deletions are tracked by pod uid, not counted: a pod already terminating when the
//! controller deleted it, or deleted twice, is observed once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a record holds before it no longer blocks its owner.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Outstanding expectations per owner key (`namespace/name`).
#[derive(Debug)]
pub struct Expectations {
    records: Mutex<HashMap<String, Record>>,
    ttl: Duration,
}

#[derive(Debug)]
struct Record {
    creations: u64,
    /// Creations whose outcome is unknown (the master failed before answering): waited
    /// for until `unsure_until`, then assumed lost.
    unsure: u64,
    unsure_until: Option<Instant>,
    deletions: HashSet<String>,
    since: Instant,
}

impl Record {
    fn new(creations: u64, deletions: HashSet<String>) -> Record {
        Record { creations, unsure: 0, unsure_until: None, deletions, since: Instant::now() }
    }
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations::new(DEFAULT_TTL)
    }
}

impl Expectations {
    /// Expectations whose records stop blocking after `ttl`.
    pub fn new(ttl: Duration) -> Expectations {
        Expectations { records: Mutex::new(HashMap::new()), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `owner` may act on its caches now: nothing is outstanding, or what is has
    /// waited longer than the TTL.
    pub fn satisfied(&self, owner: &str) -> bool {
        match self.lock().get(owner) {
            None => true,
            Some(r) => {
                let unsure_settled = r.unsure == 0 || r.unsure_until.is_none_or(|t| Instant::now() >= t);
                (r.creations == 0 && r.deletions.is_empty() && unsure_settled) || r.since.elapsed() >= self.ttl
            }
        }
    }

    /// `owner` is about to create `n` objects (replacing any older record).
    pub fn expect_creations(&self, owner: &str, n: u64) {
        self.lock().insert(owner.to_string(), Record::new(n, HashSet::new()));
    }

    /// `owner` is about to create `n` objects and delete the objects with these uids
    /// (replacing any older record).
    pub fn expect<'a>(&self, owner: &str, n: u64, uids: impl IntoIterator<Item = &'a str>) {
        let deletions = uids.into_iter().map(str::to_string).collect();
        self.lock().insert(owner.to_string(), Record::new(n, deletions));
    }

    /// `owner` is about to delete the objects with these uids (replacing any older record).
    pub fn expect_deletions<'a>(&self, owner: &str, uids: impl IntoIterator<Item = &'a str>) {
        let deletions = uids.into_iter().map(str::to_string).collect();
        self.lock().insert(owner.to_string(), Record::new(0, deletions));
    }

    /// The cache showed one of `owner`'s creations — or a create failed, so it will never
    /// show (the same bookkeeping).
    pub fn creation_observed(&self, owner: &str) {
        if let Some(r) = self.lock().get_mut(owner) {
            if r.creations > 0 {
                r.creations -= 1;
            } else {
                r.unsure = r.unsure.saturating_sub(1);
            }
        }
    }

    /// A create's outcome is unknown (the master failed before answering): it may still
    /// show up. `owner` waits for it `within` (long enough for a write in flight to land
    /// or be lost), not the whole TTL; past that it is taken as lost.
    pub fn creation_unsure(&self, owner: &str, within: Duration) {
        if let Some(r) = self.lock().get_mut(owner) {
            if r.creations > 0 {
                r.creations -= 1;
                r.unsure += 1;
                r.unsure_until = Some(Instant::now() + within);
            }
        }
    }

    /// The cache showed the deletion of `uid` (or the delete failed because it was gone).
    pub fn deletion_observed(&self, owner: &str, uid: &str) {
        if let Some(r) = self.lock().get_mut(owner) {
            r.deletions.remove(uid);
        }
    }

    /// The cache showed the deletion of `uid`, whoever owns the pod now (a pod released
    /// or re-owned between the delete and its observation still counts).
    pub fn deletion_observed_anywhere(&self, uid: &str) {
        for r in self.lock().values_mut() {
            r.deletions.remove(uid);
        }
    }

    /// Drops the records of owners for which `keep` is false (after a cache was filled
    /// again from a list, which shows every acknowledged write).
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    /// A delete of `uid` failed and it still exists: stop waiting for it.
    pub fn deletion_failed(&self, owner: &str, uid: &str) {
        self.deletion_observed(owner, uid);
    }

    /// `owner` is gone: drop its record.
    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unsure_creation_blocks_only_until_its_window_ends_or_it_shows_up() {
        let e = Expectations::default();
        e.expect_creations("ns/a", 2);
        e.creation_observed("ns/a");
        e.creation_unsure("ns/a", Duration::from_secs(15));
        assert!(!e.satisfied("ns/a"), "it may still land");
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(e.satisfied("ns/a"), "taken as lost after its window, not after the TTL");
        // Seen within its window: settled at once.
        e.expect_creations("ns/b", 1);
        e.creation_unsure("ns/b", Duration::from_secs(15));
        assert!(!e.satisfied("ns/b"));
        e.creation_observed("ns/b");
        assert!(e.satisfied("ns/b"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_is_satisfied_once_every_expected_creation_is_seen() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"), "no record: free to act");
        e.expect_creations("ns/rs", 3);
        e.creation_observed("ns/rs");
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"), "one still outstanding");
        e.creation_observed("ns/rs"); // the third create failed: taken back
        assert!(e.satisfied("ns/rs"));
        e.creation_observed("ns/rs"); // a late event does not go below zero
        e.expect_creations("ns/rs", 1);
        assert!(!e.satisfied("ns/rs"));
    }

    #[tokio::test(start_paused = true)]
    async fn deletions_are_tracked_by_uid_so_a_repeat_is_counted_once() {
        let e = Expectations::default();
        e.expect_deletions("ns/rs", ["u1", "u2"]);
        e.deletion_observed("ns/rs", "u1");
        e.deletion_observed("ns/rs", "u1");
        assert!(!e.satisfied("ns/rs"), "u2 is still outstanding");
        e.deletion_observed("ns/rs", "u3");
        assert!(!e.satisfied("ns/rs"), "someone else's pod does not count");
        e.deletion_failed("ns/rs", "u2");
        assert!(e.satisfied("ns/rs"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_whose_events_never_come_stops_blocking_after_the_ttl() {
        let e = Expectations::new(Duration::from_secs(60));
        e.expect_creations("ns/rs", 2);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!e.satisfied("ns/rs"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(e.satisfied("ns/rs"));
        e.forget("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }
}
