//! The scheduling loop: one task that owns the cache and the queue, takes in the
//! informers' changes, and — while this scheduler holds its lock — pops pods, runs the
//! filters and scores, assumes the chosen node and sends the bind (several in flight),
//! every write carrying the lock's fencing token.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::Fence;
use flotilla_client::events::pod_ref;
use flotilla_client::{Change, Client, ClientError, Elector, EventRecorder, ListParams, Reflector};
use flotilla_proto::api as pb;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::cache::{node_of, Cache, NodeInfo, PodInfo};
use crate::metrics::SchedulerMetrics;
use crate::plugins::{self, CycleState};
use crate::queue::Queue;
use crate::SchedulerConfig;

/// The names a pod may give in `spec.schedulerName` for this scheduler to place it.
pub fn is_ours(pod: &pb::Pod, name: &str) -> bool {
    let s = pod.spec.as_ref().map_or("", |s| s.scheduler_name.as_str());
    s.is_empty() || s == name || s == "default-scheduler"
}

/// Whether a pod waits to be placed.
pub fn is_pending(pod: &pb::Pod) -> bool {
    let m = pod.metadata.as_ref();
    node_of(pod).is_none()
        && m.is_none_or(|m| m.deletion_timestamp.is_empty())
        && pod.status.as_ref().is_none_or(|s| s.phase.is_empty() || s.phase == "Pending")
}

fn priority(pod: &pb::Pod) -> i32 {
    pod.spec.as_ref().map_or(0, |s| s.priority)
}

fn key_of<T: flotilla_client::Resource>(o: &T) -> String {
    format!("{}/{}", o.namespace(), o.name())
}

/// How many feasible nodes to find before scoring, for `n` nodes (Kubernetes' adaptive
/// percentageOfNodesToScore: all of a small cluster, at least 100, a shrinking share of a
/// large one).
pub fn nodes_to_find(n: usize, percentage: u32) -> usize {
    if n < 100 {
        return n;
    }
    let pct = if percentage > 0 { percentage as usize } else { (50usize.saturating_sub(n / 125)).max(5) };
    (n * pct / 100).max(100).min(n)
}

/// What one attempt to place a pod came to.
enum Placed {
    /// Bind sent.
    Bound,
    /// No node fits; the message says why ("0/5 nodes are available: ...").
    Unschedulable(String),
    /// Nothing to do (gone, bound meanwhile, or a bind already in flight).
    Skip,
}

/// A bind's result, back from its task.
struct BindDone {
    key: String,
    priority: i32,
    result: Result<(), ClientError>,
}

struct Loop {
    cfg: SchedulerConfig,
    client: Client,
    pods: flotilla_client::reflector::Cache<pb::Pod>,
    nodes: flotilla_client::reflector::Cache<pb::Node>,
    cache: Cache,
    queue: Queue,
    filters: plugins::Filters,
    scores: plugins::Scores,
    /// The fenced client while leading.
    leading: Option<Client>,
    binds: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<BindDone>,
    recorder: Arc<EventRecorder>,
    metrics: Arc<SchedulerMetrics>,
    /// Where the next search over the nodes starts.
    next_start: usize,
    /// The last unschedulable message written per pod, not to write it again.
    reported: HashMap<String, String>,
}

/// Runs the scheduler until `shutdown` completes: informers always (so a successor starts
/// warm), scheduling while it holds its lock. On shutdown it releases the lock; the result
/// says whether it held the lock and released it.
pub async fn run(
    client: Client,
    cfg: SchedulerConfig,
    metrics: Arc<SchedulerMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<bool, crate::SchedulerError> {
    let (filters, scores) =
        plugins::build(&cfg.disabled_plugins, &cfg.weights).map_err(crate::SchedulerError::Config)?;
    let elector = Elector::start(client.clone(), cfg.elector.clone());
    let mut leadership = elector.leadership();
    let (pod_tx, mut pod_rx) = mpsc::unbounded_channel();
    let (node_tx, mut node_rx) = mpsc::unbounded_channel();
    let pods = Reflector::<pb::Pod>::start_notifying(client.clone(), ListParams::default(), Some(pod_tx));
    let nodes = Reflector::<pb::Node>::start_notifying(client.clone(), ListParams::default(), Some(node_tx));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut l = Loop {
        recorder: Arc::new(EventRecorder::new(&cfg.name, host.trim())),
        binds: Arc::new(Semaphore::new(cfg.binds_in_flight.max(1))),
        cfg,
        client,
        pods: pods.cache(),
        nodes: nodes.cache(),
        cache: Cache::default(),
        queue: Queue::default(),
        filters,
        scores,
        leading: None,
        done_tx,
        metrics,
        next_start: 0,
        reported: HashMap::new(),
    };
    tokio::pin!(shutdown);
    loop {
        let wake = l.queue.next_ready().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            changed = leadership.changed() => {
                if changed.is_err() { break; }
                let fence = leadership.borrow_and_update().clone();
                l.set_leadership(fence);
            }
            Some(c) = node_rx.recv() => l.node_changed(c),
            Some(c) = pod_rx.recv() => l.pod_changed(c),
            Some(d) = done_rx.recv() => l.bind_done(d),
            () = tokio::time::sleep_until(wake) => {}
        }
        // Take in everything that arrived, then schedule from fresh state.
        while let Ok(c) = node_rx.try_recv() {
            l.node_changed(c);
        }
        while let Ok(c) = pod_rx.try_recv() {
            l.pod_changed(c);
        }
        while let Ok(d) = done_rx.try_recv() {
            l.bind_done(d);
        }
        l.schedule_ready().await;
        l.metrics.pending.set(l.queue.len() as i64);
    }
    drop((pods, nodes));
    Ok(elector.release().await)
}

impl Loop {
    fn set_leadership(&mut self, fence: Option<Fence>) {
        match fence {
            Some(f) => {
                tracing::info!(lock = %f.lock(), term = f.term, "leading: scheduling");
                self.leading = Some(self.client.fenced(&f));
                self.metrics.is_leader.set(1);
                self.metrics.leader_transitions.inc();
                // Start from the informers' state: every pending pod of ours.
                self.rebuild();
            }
            None => {
                if self.leading.take().is_some() {
                    tracing::info!("lost the lock: not scheduling");
                    self.metrics.is_leader.set(0);
                    self.metrics.leader_transitions.inc();
                }
            }
        }
    }

    /// Rebuilds the cache and the queue from the informers' caches.
    fn rebuild(&mut self) {
        let mut cache = Cache::default();
        for n in self.nodes.read().unwrap_or_else(|p| p.into_inner()).values() {
            cache.upsert_node(Arc::new(n.clone()));
        }
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        let mut queue = Queue::default();
        for p in pods.values() {
            cache.upsert_pod(Arc::new(p.clone()));
            if is_pending(p) && is_ours(p, &self.cfg.name) {
                queue.add(&key_of(p), priority(p));
            }
        }
        self.cache = cache;
        self.queue = queue;
    }

    fn node_changed(&mut self, c: Change<pb::Node>) {
        match c {
            Change::Upsert { new, .. } => self.cache.upsert_node(Arc::new(new)),
            Change::Deleted(n) => self.cache.remove_node(n.metadata.as_ref().map_or("", |m| m.name.as_str())),
            Change::Listed => self.rebuild(),
        }
        self.queue.cluster_changed(Instant::now());
    }

    fn pod_changed(&mut self, c: Change<pb::Pod>) {
        match c {
            Change::Upsert { old, new } => {
                let key = key_of(&new);
                let freed = old.as_ref().is_some_and(|o| node_of(o).is_some())
                    && new.status.as_ref().is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed");
                self.cache.upsert_pod(Arc::new(new.clone()));
                if is_pending(&new) && is_ours(&new, &self.cfg.name) {
                    if !self.cache.is_placed(&key) {
                        self.queue.add(&key, priority(&new));
                    }
                } else {
                    self.queue.remove(&key);
                    self.reported.remove(&key);
                }
                if freed {
                    self.queue.cluster_changed(Instant::now());
                }
            }
            Change::Deleted(p) => {
                let key = key_of(&p);
                self.cache.remove_pod(&key);
                self.queue.remove(&key);
                self.reported.remove(&key);
                if node_of(&p).is_some() {
                    self.queue.cluster_changed(Instant::now());
                }
            }
            Change::Listed => self.rebuild(),
        }
    }

    fn bind_done(&mut self, d: BindDone) {
        match d.result {
            Ok(()) => {
                self.metrics.pods_bound.inc();
                self.queue.done(&d.key);
            }
            Err(e) => {
                self.metrics.bind_failures.inc();
                self.cache.forget_assumed(&d.key);
                if e.is_fenced() {
                    self.metrics.fenced_writes.inc();
                    tracing::warn!(pod = %d.key, error = %e, "bind refused as fenced: another scheduler leads");
                } else {
                    tracing::debug!(pod = %d.key, error = %e, "bind failed; will retry from fresh state");
                }
                // From fresh state: if it got bound or deleted meanwhile, the informer
                // takes it out of the queue.
                self.queue.retry_later(&d.key, d.priority, Instant::now());
            }
        }
    }

    /// Schedules pods while some are ready and binds may be sent.
    async fn schedule_ready(&mut self) {
        let Some(client) = self.leading.clone() else { return };
        loop {
            if self.binds.available_permits() == 0 {
                return;
            }
            let Some(key) = self.queue.pop(Instant::now()) else { return };
            let Some(pod) = self.pods.read().unwrap_or_else(|p| p.into_inner()).get(&key).cloned() else {
                continue;
            };
            if !is_pending(&pod) || !is_ours(&pod, &self.cfg.name) {
                continue;
            }
            let prio = priority(&pod);
            match self.place(&client, pod.clone()) {
                Placed::Bound | Placed::Skip => {}
                Placed::Unschedulable(msg) => {
                    self.metrics.unschedulable_attempts.inc();
                    self.queue.park(&key, prio, Instant::now());
                    if self.reported.get(&key) != Some(&msg) {
                        self.reported.insert(key.clone(), msg.clone());
                        tokio::spawn(report_unschedulable(
                            client.clone(),
                            self.recorder.clone(),
                            self.metrics.clone(),
                            pod,
                            msg,
                        ));
                    }
                }
            }
        }
    }

    /// Finds a node for `pod`, assumes it there and sends the bind.
    fn place(&mut self, client: &Client, pod: pb::Pod) -> Placed {
        let info = PodInfo::new(Arc::new(pod));
        if self.cache.is_placed(&info.key) {
            return Placed::Skip;
        }
        let order = self.cache.order();
        let n = order.len();
        if n == 0 {
            return Placed::Unschedulable("0/0 nodes are available: no nodes registered.".into());
        }
        let want = nodes_to_find(n, self.cfg.percentage_of_nodes_to_score);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let start = self.next_start % n;
        let mut visited = 0;
        for i in 0..n {
            if feasible.len() >= want {
                break;
            }
            visited += 1;
            let Some(node) = self.cache.nodes().get(&order[(start + i) % n]) else { continue };
            match self.filters.iter().try_for_each(|(_, f)| f.filter(&info, node)) {
                Ok(()) => feasible.push(node),
                Err(r) => *reasons.entry(r).or_default() += 1,
            }
        }
        self.next_start = (start + visited) % n;
        if feasible.is_empty() {
            let mut hist: Vec<(String, usize)> = reasons.into_iter().collect();
            hist.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let parts: Vec<String> = hist.iter().map(|(r, c)| format!("{c} {r}")).collect();
            return Placed::Unschedulable(format!("0/{n} nodes are available: {}.", parts.join(", ")));
        }
        let state = CycleState::new(&info, &self.cache);
        let mut total = vec![0i64; feasible.len()];
        for (_, s, w) in &self.scores {
            let mut raw: Vec<i64> = feasible.iter().map(|node| s.score(&info, node, &state)).collect();
            s.normalize(&mut raw);
            for (t, r) in total.iter_mut().zip(raw) {
                *t += r * w;
            }
        }
        // The best score; among equals, the first found (the search start rotates).
        let best = total.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).map_or(0, |(i, _)| i);
        let node = feasible[best].name.clone();
        self.cache.assume(&info, &node);
        let Ok(permit) = self.binds.clone().try_acquire_owned() else {
            self.cache.forget_assumed(&info.key);
            self.queue.add(&info.key, priority(&info.pod));
            return Placed::Skip;
        };
        let (client, done, recorder, metrics) =
            (client.clone(), self.done_tx.clone(), self.recorder.clone(), self.metrics.clone());
        let target = node.clone();
        tokio::spawn(async move {
            let m = info.pod.metadata.clone().unwrap_or_default();
            let result = client.bind(&m.namespace, &m.name, &target, &m.uid).await.map(|_| ());
            drop(permit);
            let ok = result.is_ok();
            let _ = done.send(BindDone { key: info.key.clone(), priority: priority(&info.pod), result });
            if ok {
                let msg = format!("Successfully assigned {}/{} to {target}", m.namespace, m.name);
                if let Err(e) = recorder.record(&client, pod_ref(&info.pod), "Normal", "Scheduled", &msg).await {
                    if e.is_fenced() {
                        metrics.fenced_writes.inc();
                    }
                }
            }
        });
        Placed::Bound
    }
}

/// Marks the pod `PodScheduled=False` with the reason, and records a FailedScheduling
/// Event (both fenced: a deposed scheduler's reports are refused too).
async fn report_unschedulable(
    client: Client,
    recorder: Arc<EventRecorder>,
    metrics: Arc<SchedulerMetrics>,
    pod: pb::Pod,
    msg: String,
) {
    let m = pod.metadata.clone().unwrap_or_default();
    let mut conditions: Vec<pb::Condition> =
        pod.status.iter().flat_map(|s| s.conditions.iter().cloned()).filter(|c| c.r#type != "PodScheduled").collect();
    conditions.push(pb::Condition {
        r#type: "PodScheduled".into(),
        status: "False".into(),
        reason: "Unschedulable".into(),
        message: msg.clone(),
        last_transition_time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ..Default::default()
    });
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    let failed = [
        client.patch_object("Pod", &m.namespace, &m.name, &patch, true).await.err(),
        recorder.record(&client, pod_ref(&pod), "Warning", "FailedScheduling", &msg).await.err(),
    ];
    for e in failed.into_iter().flatten() {
        if e.is_fenced() {
            metrics.fenced_writes.inc();
        }
        tracing::debug!(pod = %m.name, error = %e, "cannot report the pod unschedulable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_clusters_are_searched_whole_and_large_ones_in_part() {
        assert_eq!(nodes_to_find(5, 0), 5);
        assert_eq!(nodes_to_find(100, 0), 100);
        assert_eq!(nodes_to_find(1000, 0), 420);
        assert_eq!(nodes_to_find(5000, 0), 500);
        assert_eq!(nodes_to_find(1000, 100), 1000);
    }
}
