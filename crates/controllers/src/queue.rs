//! A work queue of object keys (`namespace/name`), with the guarantees a level-triggered
//! controller needs (the same as client-go's rate-limited work queue):
//!
//! * a key waiting in the queue is there once, however many times it was added: a burst
//!   of changes to one object is one reconcile;
//! * a key is handed to one worker at a time: added again while a worker holds it, it
//!   waits until that worker is [`done`](WorkQueue::done) with it, then comes back once;
//! * a failed key comes back after a per-key back-off that doubles with each consecutive
//!   failure ([`retry`](WorkQueue::retry)), from `base` up to `max`, until the controller
//!   [`forget`](WorkQueue::forget)s its failures (after a success);
//! * [`add_after`](WorkQueue::add_after) brings a key back at a later time (a Deployment's
//!   progress deadline, a node's grace period);
//! * [`shut_down`](WorkQueue::shut_down) makes every waiting and later
//!   [`get`](WorkQueue::get) return `None` at once; keys still queued are dropped (the
//!   next controller manager starts from a full resync anyway).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Back-off of a key's first retry, by default.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(5);
/// The longest back-off, by default (client-go's is 1000 s; a controller that waits
/// that long after a transient apiserver error looks stuck to an operator).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);

/// See the module docs.
#[derive(Debug)]
pub struct WorkQueue {
    state: Mutex<State>,
    wake: Notify,
    base: Duration,
    max: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// Keys ready for a worker, first come first served.
    ready: VecDeque<String>,
    /// Keys that need a reconcile: those in `ready`, and those held by a worker that were
    /// added again meanwhile.
    dirty: HashSet<String>,
    /// Keys held by a worker.
    processing: HashSet<String>,
    /// Keys to add at a later time: (when, sequence) → key, and each key's earliest time.
    later: BTreeSet<(Instant, u64, String)>,
    later_at: HashMap<String, (Instant, u64)>,
    seq: u64,
    /// Consecutive failures per key.
    failures: HashMap<String, u32>,
    shut_down: bool,
}

impl State {
    fn add(&mut self, key: &str) -> bool {
        if self.shut_down || self.dirty.contains(key) {
            return false;
        }
        self.dirty.insert(key.to_string());
        if self.processing.contains(key) {
            return false; // comes back when its worker is done
        }
        self.ready.push_back(key.to_string());
        true
    }

    /// Moves keys whose time has come into `ready`; the next time one is due.
    fn release(&mut self, now: Instant) -> (bool, Option<Instant>) {
        let mut woke = false;
        while let Some((at, seq, key)) = self.later.first().cloned() {
            if at > now {
                return (woke, Some(at));
            }
            self.later.remove(&(at, seq, key.clone()));
            self.later_at.remove(&key);
            woke |= self.add(&key);
        }
        (woke, None)
    }
}

impl Default for WorkQueue {
    fn default() -> Self {
        WorkQueue::new(DEFAULT_BASE_DELAY, DEFAULT_MAX_DELAY)
    }
}

impl WorkQueue {
    /// A queue whose retries back off from `base`, doubling, up to `max`.
    pub fn new(base: Duration, max: Duration) -> WorkQueue {
        WorkQueue { state: Mutex::new(State::default()), wake: Notify::new(), base, max: max.max(base) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` for a reconcile (at once, unless a worker holds it: then once that
    /// worker is done).
    pub fn add(&self, key: &str) {
        if self.lock().add(key) {
            self.wake.notify_one();
        }
    }

    /// Queues `key` after `delay` (at once if zero). Of several pending times for one key
    /// the earliest counts.
    pub fn add_after(&self, key: &str, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut s = self.lock();
        if s.shut_down {
            return;
        }
        if let Some(&(prev, seq)) = s.later_at.get(key) {
            if prev <= at {
                return;
            }
            s.later.remove(&(prev, seq, key.to_string()));
        }
        s.seq += 1;
        let seq = s.seq;
        s.later.insert((at, seq, key.to_string()));
        s.later_at.insert(key.to_string(), (at, seq));
        drop(s);
        // A waiting worker may need to wake earlier than it planned.
        self.wake.notify_waiters();
    }

    /// A reconcile of `key` failed: queues it again after its back-off (`base` ·
    /// 2^(failures so far), at most `max`). Returns that delay.
    pub fn retry(&self, key: &str) -> Duration {
        let delay = {
            let mut s = self.lock();
            let n = s.failures.entry(key.to_string()).or_default();
            let delay = self.base.saturating_mul(2u32.saturating_pow((*n).min(31))).min(self.max);
            *n = n.saturating_add(1);
            delay
        };
        self.add_after(key, delay);
        delay
    }

    /// Forgets `key`'s failures (its next retry starts from `base` again).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// Consecutive failures of `key` since it was last forgotten.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to reconcile, waiting until there is one; `None` once the queue is
    /// shut down. The caller must call [`done`](WorkQueue::done) with it afterwards.
    pub async fn get(&self) -> Option<String> {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let next_due = {
                let mut s = self.lock();
                if s.shut_down {
                    return None;
                }
                let (_, next_due) = s.release(Instant::now());
                if let Some(key) = s.ready.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        // Others may be waiting for the rest.
                        self.wake.notify_one();
                    }
                    return Some(key);
                }
                next_due
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// A worker is finished with `key`: if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        // Only a key a worker holds: a stray `done` must not queue a key twice.
        if s.processing.remove(key) && s.dirty.contains(key) && !s.shut_down {
            s.ready.push_back(key.to_string());
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Whether a worker holds `key` now.
    pub fn is_processing(&self, key: &str) -> bool {
        self.lock().processing.contains(key)
    }

    /// Keys waiting for a worker now (not counting those held or due later).
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    /// Whether no key waits for a worker now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the queue: every `get`, waiting or later, returns `None`.
    pub fn shut_down(&self) {
        let mut s = self.lock();
        s.shut_down = true;
        s.ready.clear();
        s.dirty.clear();
        s.later.clear();
        s.later_at.clear();
        drop(s);
        self.wake.notify_waiters();
    }

    /// Whether [`shut_down`](WorkQueue::shut_down) was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `get` without waiting: the key if one is ready now.
    async fn now(q: &WorkQueue) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(1), q.get()).await.ok().flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_many_times_is_handed_out_once() {
        let q = WorkQueue::default();
        for _ in 0..5 {
            q.add("ns/a");
        }
        q.add("ns/b");
        assert_eq!(q.len(), 2);
        assert_eq!(now(&q).await.as_deref(), Some("ns/a"));
        assert_eq!(now(&q).await.as_deref(), Some("ns/b"));
        assert_eq!(now(&q).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_added_while_held_comes_back_once_after_done_never_to_two_workers() {
        let q = WorkQueue::default();
        q.add("ns/a");
        let held = now(&q).await.expect("a");
        q.add("ns/a");
        q.add("ns/a");
        assert_eq!(now(&q).await, None, "held by a worker: not handed to another");
        q.done(&held);
        assert_eq!(now(&q).await.as_deref(), Some("ns/a"));
        q.done("ns/a");
        assert_eq!(now(&q).await, None, "added twice while held: back once");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_doubling_up_to_the_max_and_forget_resets() {
        let q = WorkQueue::new(Duration::from_millis(10), Duration::from_millis(50));
        let delays: Vec<Duration> = (0..5).map(|_| q.retry("ns/a")).collect();
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![10, 20, 40, 50, 50]);
        assert_eq!(q.failures("ns/a"), 5);
        q.forget("ns/a");
        assert_eq!(q.retry("ns/a"), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_key_comes_back_only_after_its_back_off() {
        let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(1));
        q.retry("ns/a");
        let t0 = Instant::now();
        assert_eq!(now(&q).await, None);
        assert_eq!(q.get().await.as_deref(), Some("ns/a"));
        assert!(Instant::now() - t0 >= Duration::from_millis(100), "{:?}", Instant::now() - t0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_earliest_of_several_later_times_counts() {
        let q = WorkQueue::default();
        q.add_after("ns/a", Duration::from_secs(10));
        q.add_after("ns/a", Duration::from_secs(1));
        q.add_after("ns/a", Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(q.get().await.as_deref(), Some("ns/a"));
        assert_eq!((Instant::now() - t0).as_secs(), 1);
        q.done("ns/a");
        assert_eq!(now(&q).await, None, "the later times were folded into the first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_for_a_key_added_later_and_for_shutdown() {
        let q = std::sync::Arc::new(WorkQueue::default());
        let w = tokio::spawn({
            let q = q.clone();
            async move { (q.get().await, q.get().await) }
        });
        tokio::task::yield_now().await;
        q.add("ns/a");
        tokio::task::yield_now().await;
        q.shut_down();
        let (first, second) = w.await.expect("worker");
        assert_eq!(first.as_deref(), Some("ns/a"));
        assert_eq!(second, None);
        q.add("ns/b");
        assert_eq!(q.get().await, None, "nothing is queued after shutdown");
    }

    proptest::proptest! {
        /// Whatever the order of adds, gets and dones: no key is held twice at once, every
        /// key added is handed out after its last add, and nothing is handed out that was
        /// not added.
        #[test]
        fn no_key_is_held_twice_and_no_add_is_lost(ops in proptest::collection::vec((0u8..3, 0u8..4), 0..200)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
            rt.block_on(async {
                let q = WorkQueue::default();
                let mut held: HashSet<String> = HashSet::new();
                let mut owed: HashSet<String> = HashSet::new();
                for (op, k) in ops {
                    let key = format!("ns/{k}");
                    match op {
                        0 => { q.add(&key); owed.insert(key); }
                        1 => if let Some(got) = now(&q).await {
                            assert!(held.insert(got.clone()), "{got} handed out twice");
                            owed.remove(&got);
                        },
                        _ => if held.remove(&key) { q.done(&key); },
                    }
                }
                for k in held.drain() {
                    q.done(&k);
                }
                while let Some(got) = now(&q).await {
                    owed.remove(&got);
                    q.done(&got);
                }
                assert!(owed.is_empty(), "added but never handed out: {owed:?}");
            });
        }
    }
}
