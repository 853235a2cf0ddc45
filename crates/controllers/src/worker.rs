//! Workers: take keys from a controller's [`WorkQueue`] and reconcile them.
//!
//! A reconcile that succeeds forgets the key's failures; one that fails is logged and the
//! key comes back after its back-off. A controller never stops on one bad object: its
//! other keys go on being reconciled while that one backs off.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::PerController;
use crate::queue::WorkQueue;
use crate::ControllerError;

/// What a controller does with a key.
pub trait Reconcile: Send + Sync + 'static {
    /// The controller's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Brings the object named `key` (`namespace/name`, or `name` for cluster-scoped
    /// kinds) to what its spec asks for, from the current state of the caches. Returns
    /// when to look at it again regardless of changes (a deadline to check), if ever.
    fn reconcile(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, ControllerError>> + Send;
}

/// Runs `workers` workers on `queue` until it is shut down, recording into `metrics`.
pub async fn run<R: Reconcile>(queue: Arc<WorkQueue>, reconciler: Arc<R>, workers: usize, metrics: PerController) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (queue, reconciler, metrics) = (queue.clone(), reconciler.clone(), metrics.clone());
        tasks.spawn(async move {
            while let Some(key) = queue.get().await {
                metrics.queue_depth.set(queue.len() as i64);
                let started = tokio::time::Instant::now();
                let ok = reconcile_one(&queue, reconciler.as_ref(), &key).await;
                metrics.observe(started.elapsed(), ok);
                queue.done(&key);
                metrics.queue_depth.set(queue.len() as i64);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                // A bug in a controller: loud, not a silently stuck key.
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// One reconcile; whether it succeeded.
async fn reconcile_one<R: Reconcile>(queue: &WorkQueue, reconciler: &R, key: &str) -> bool {
    match reconciler.reconcile(key).await {
        Ok(again) => {
            queue.forget(key);
            if let Some(after) = again {
                queue.add_after(key, after);
            }
            true
        }
        Err(e) => {
            let delay = queue.retry(key);
            let failures = queue.failures(key);
            tracing::warn!(controller = reconciler.name(), key, error = %e, failures, retry_in = ?delay, "reconcile failed");
            false
        }
    }
}

/// Runs a controller for one term: `workers` workers on `queue`, and `dispatch` (which
/// turns informer changes into keys), until `stop` completes; then shuts the queue down
/// and waits for the reconciles in flight. A panicking worker is re-raised.
pub async fn serve<R: Reconcile>(
    queue: Arc<WorkQueue>,
    reconciler: Arc<R>,
    workers: usize,
    metrics: PerController,
    dispatch: impl Future<Output = ()>,
    stop: impl Future<Output = ()>,
) {
    let mut tasks = tokio::spawn(run(queue.clone(), reconciler, workers, metrics));
    tokio::select! {
        () = stop => {}
        () = dispatch => {}
        r = &mut tasks => {
            // Workers end only on shutdown; earlier, one panicked: a bug, made loud.
            if let Err(e) = r {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
            return;
        }
    }
    queue.shut_down();
    if let Err(e) = tasks.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Fails each key a given number of times, records the reconciles, and checks that
    /// no key is reconciled by two workers at once.
    #[derive(Default)]
    struct Fake {
        fail_first: HashMap<String, u32>,
        calls: Mutex<Vec<(String, tokio::time::Instant)>>,
        in_flight: Mutex<std::collections::HashSet<String>>,
        overlaps: Mutex<Vec<String>>,
    }

    impl Reconcile for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
            if !self.in_flight.lock().expect("lock").insert(key.to_string()) {
                self.overlaps.lock().expect("lock").push(key.to_string());
            }
            let n = {
                let mut calls = self.calls.lock().expect("lock");
                calls.push((key.to_string(), tokio::time::Instant::now()));
                calls.iter().filter(|(k, _)| k == key).count() as u32
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.in_flight.lock().expect("lock").remove(key);
            if n <= self.fail_first.get(key).copied().unwrap_or(0) {
                return Err(ControllerError::Reconcile(format!("{key}: failure {n}")));
            }
            Ok(None)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_key_is_retried_with_back_off_while_the_others_go_on() {
        let q = Arc::new(WorkQueue::new(Duration::from_millis(100), Duration::from_secs(10)));
        let fake = Arc::new(Fake { fail_first: HashMap::from([("ns/bad".to_string(), 3)]), ..Default::default() });
        let t0 = tokio::time::Instant::now();
        q.add("ns/bad");
        q.add("ns/good");
        let run = tokio::spawn(run(q.clone(), fake.clone(), 2, PerController::default()));
        // Failures at 0, then after 100, 200 and 400 ms of back-off: the fourth succeeds.
        while fake.calls.lock().expect("lock").iter().filter(|(k, _)| k == "ns/bad").count() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.shut_down();
        run.await.expect("workers");
        let calls = fake.calls.lock().expect("lock").clone();
        let bad: Vec<u128> = calls.iter().filter(|(k, _)| k == "ns/bad").map(|(_, t)| (*t - t0).as_millis()).collect();
        assert_eq!(bad.len(), 4, "{calls:?}");
        let gaps: Vec<u128> = bad.windows(2).map(|w| w[1] - w[0]).collect();
        // Each gap is the reconcile's own 10 ms plus the back-off.
        assert_eq!(gaps, vec![110, 210, 410], "{bad:?}");
        assert_eq!(calls.iter().filter(|(k, _)| k == "ns/good").count(), 1, "the good key once: {calls:?}");
        assert_eq!(q.failures("ns/bad"), 0, "forgotten after the success");
    }

    #[tokio::test(start_paused = true)]
    async fn many_workers_never_reconcile_one_key_at_once() {
        let q = Arc::new(WorkQueue::default());
        let fake = Arc::new(Fake::default());
        let run = tokio::spawn(run(q.clone(), fake.clone(), 8, PerController::default()));
        for round in 0..20 {
            for k in 0..3 {
                q.add(&format!("ns/{k}"));
            }
            tokio::time::sleep(Duration::from_millis(3 + round % 7)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.shut_down();
        run.await.expect("workers");
        assert_eq!(*fake.overlaps.lock().expect("lock"), Vec::<String>::new(), "keys reconciled twice at once");
        let calls = fake.calls.lock().expect("lock");
        for k in 0..3 {
            assert!(calls.iter().any(|(c, _)| *c == format!("ns/{k}")), "ns/{k} never reconciled");
        }
    }
}
