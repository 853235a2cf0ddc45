//! The scheduling queue: pods waiting to be placed, highest `priority` first and, among
//! equals, first come first served; a pod that failed waits out a back-off (1 s doubling
//! to 10 s, as Kubernetes) before it is tried again; a pod that fit nowhere is parked
//! until something changes that could make it fit (a node added or changed, a pod
//! deleted), with a slow flush as a safety net.
//!
//! The queue holds keys only: a pod is read from the informer's cache when it is popped,
//! so it is always scheduled from fresh state.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// First back-off after a failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long an unschedulable pod waits for a cluster change before it is tried anyway.
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

/// Where a pod is in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
}

/// The queue. Not thread-safe: the scheduling loop owns it.
#[derive(Debug, Default)]
pub struct Queue {
    /// (priority, arrival) → key.
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    /// Back-off expiry → key.
    backoff: BTreeSet<(Instant, String)>,
    /// Where each queued pod is, and its priority.
    place: HashMap<String, (Place, i32)>,
    /// Failed attempts since the pod last got past a cycle.
    attempts: HashMap<String, u32>,
    seq: u64,
}

impl Queue {
    /// Pods queued in any state.
    pub fn len(&self) -> usize {
        self.place.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
    }

    /// Queues `key` to be tried now (unless it is already waiting to be tried).
    pub fn add(&mut self, key: &str, priority: i32) {
        match self.place.get(key) {
            Some((Place::Active, _)) => {}
            Some((Place::Backoff(_), _)) => {} // it will come back by itself
            _ => self.activate(key, priority),
        }
    }

    fn activate(&mut self, key: &str, priority: i32) {
        if let Some((Place::Backoff(at), _)) = self.place.get(key) {
            self.backoff.remove(&(*at, key.to_string()));
        }
        self.seq += 1;
        self.active.push((priority, Reverse(self.seq), key.to_string()));
        self.place.insert(key.to_string(), (Place::Active, priority));
    }

    /// Forgets `key` (the pod was deleted or bound).
    pub fn remove(&mut self, key: &str) {
        if let Some((Place::Backoff(at), _)) = self.place.remove(key) {
            self.backoff.remove(&(at, key.to_string()));
        }
        self.attempts.remove(key);
        // Stale heap entries are skipped when popped.
    }

    /// The next pod to try, moving pods whose back-off or parking is over first.
    pub fn pop(&mut self, now: Instant) -> Option<String> {
        self.release(now);
        while let Some((_, _, key)) = self.active.pop() {
            if matches!(self.place.get(&key), Some((Place::Active, _))) {
                self.place.remove(&key);
                return Some(key);
            }
        }
        None
    }

    /// When the next pod in back-off becomes ready (None if none is waiting).
    pub fn next_ready(&self) -> Option<Instant> {
        self.backoff.iter().next().map(|(at, _)| *at)
    }

    fn release(&mut self, now: Instant) {
        while let Some((at, key)) = self.backoff.first().cloned() {
            if at > now {
                break;
            }
            self.backoff.remove(&(at, key.clone()));
            let prio = self.place.get(&key).map_or(0, |(_, p)| *p);
            self.seq += 1;
            self.active.push((prio, Reverse(self.seq), key.clone()));
            self.place.insert(key, (Place::Active, prio));
        }
        let stale: Vec<(String, i32)> = self
            .place
            .iter()
            .filter(|(_, (p, _))| matches!(p, Place::Unschedulable(since) if now.duration_since(*since) >= UNSCHEDULABLE_FLUSH))
            .map(|(k, (_, prio))| (k.clone(), *prio))
            .collect();
        for (k, prio) in stale {
            self.backoff_or_activate(&k, prio, now);
        }
    }

    fn backoff_for(&self, key: &str) -> Duration {
        let n = self.attempts.get(key).copied().unwrap_or(1).clamp(1, 8);
        (INITIAL_BACKOFF * 2u32.pow(n - 1)).min(MAX_BACKOFF)
    }

    fn backoff_or_activate(&mut self, key: &str, priority: i32, now: Instant) {
        let at = now + self.backoff_for(key);
        self.backoff.insert((at, key.to_string()));
        self.place.insert(key.to_string(), (Place::Backoff(at), priority));
    }

    /// The pod could not be scheduled for a transient reason (a lost bind race, an API
    /// error): try again after its back-off.
    pub fn retry_later(&mut self, key: &str, priority: i32, now: Instant) {
        *self.attempts.entry(key.to_string()).or_default() += 1;
        self.backoff_or_activate(key, priority, now);
    }

    /// The pod fits on no node: park it until the cluster changes.
    pub fn park(&mut self, key: &str, priority: i32, now: Instant) {
        *self.attempts.entry(key.to_string()).or_default() += 1;
        self.place.insert(key.to_string(), (Place::Unschedulable(now), priority));
    }

    /// The pod was placed: forget its failures.
    pub fn done(&mut self, key: &str) {
        self.attempts.remove(key);
    }

    /// Something changed that could make parked pods fit: move them to back-off (those
    /// whose back-off is over become active at once).
    pub fn cluster_changed(&mut self, now: Instant) {
        let parked: Vec<(String, i32)> = self
            .place
            .iter()
            .filter(|(_, (p, _))| matches!(p, Place::Unschedulable(_)))
            .map(|(k, (_, prio))| (k.clone(), *prio))
            .collect();
        for (k, prio) in parked {
            // Counted from when it was parked: one that waited long enough goes now.
            let since = match self.place.get(&k) {
                Some((Place::Unschedulable(s), _)) => *s,
                _ => now,
            };
            let at = since + self.backoff_for(&k);
            if at <= now {
                self.activate(&k, prio);
            } else {
                self.backoff.insert((at, k.clone()));
                self.place.insert(k, (Place::Backoff(at), prio));
            }
        }
    }

    /// Pods parked as unschedulable.
    pub fn parked(&self) -> usize {
        self.place.values().filter(|(p, _)| matches!(p, Place::Unschedulable(_))).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_first_come_first_served() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add("a", 0);
        q.add("b", 10);
        q.add("c", 0);
        q.add("a", 0); // already queued
        assert_eq!(q.pop(now).as_deref(), Some("b"));
        assert_eq!(q.pop(now).as_deref(), Some("a"));
        assert_eq!(q.pop(now).as_deref(), Some("c"));
        assert_eq!(q.pop(now), None);
    }

    #[test]
    fn a_failed_pod_waits_a_doubling_backoff() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.retry_later("a", 0, t0);
        assert_eq!(q.pop(t0), None);
        assert_eq!(q.next_ready(), Some(t0 + INITIAL_BACKOFF));
        assert_eq!(q.pop(t0 + INITIAL_BACKOFF).as_deref(), Some("a"));
        q.retry_later("a", 0, t0);
        assert_eq!(q.next_ready(), Some(t0 + INITIAL_BACKOFF * 2));
        q.add("a", 0); // an update while in back-off does not skip it
        assert_eq!(q.pop(t0 + INITIAL_BACKOFF), None);
    }

    #[test]
    fn a_parked_pod_waits_for_a_cluster_change_or_the_flush() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.park("a", 0, t0);
        assert_eq!(q.pop(t0 + Duration::from_secs(30)), None, "no timer short of the flush");
        q.cluster_changed(t0 + Duration::from_secs(30));
        assert_eq!(q.pop(t0 + Duration::from_secs(30)).as_deref(), Some("a"), "waited its back-off already");
        q.park("b", 0, t0);
        assert_eq!(q.pop(t0 + UNSCHEDULABLE_FLUSH), None, "the flush puts it in back-off");
        assert_eq!(q.pop(t0 + UNSCHEDULABLE_FLUSH + INITIAL_BACKOFF).as_deref(), Some("b"));
        q.park("c", 0, t0);
        q.remove("c");
        q.cluster_changed(t0 + Duration::from_secs(5));
        assert_eq!(q.pop(t0 + Duration::from_secs(5)), None, "removed pods stay gone");
        assert!(q.is_empty());
    }
}
