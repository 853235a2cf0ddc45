//! Prometheus metrics for a master, rendered as text on `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric this member exports.
pub struct Metrics {
    registry: Registry,
    /// Renderers of components in the same process, appended to `/metrics`.
    extra: std::sync::Mutex<Vec<Box<dyn Fn() -> String + Send + Sync>>>,
    /// Current Raft term.
    pub raft_term: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// 1 when this member knows a leader.
    pub has_leader: Gauge,
    /// 1 when this member is the leader.
    pub is_leader: Gauge,
    /// Leader changes seen by this member.
    pub leader_changes: Counter,
    /// Index of the last applied log entry.
    pub applied_index: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Current MVCC revision.
    pub revision: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Writes proposed through this member.
    pub proposals: Counter<u64, AtomicU64>,
    /// Proposals that failed (no leader, timeout, ...).
    pub proposals_failed: Counter<u64, AtomicU64>,
    /// Writes dropped unproposed because every client waiting on them had gone (still
    /// queued here, or forwarded to the leader and not yet answered).
    pub proposals_abandoned: Counter<u64, AtomicU64>,
    /// WAL fsync latency.
    pub fsync_seconds: Histogram,
    /// Log appends covered by each fsync (group-commit batch size).
    pub fsync_batch: Histogram,
    /// Open watches on this member.
    pub watchers: Gauge,
    /// Log index covered by the latest snapshot.
    pub snapshot_index: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Highest purged log index.
    pub purged_index: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: Counter,
    /// TCP connections accepted on the client port.
    pub client_connections: Counter,
    /// TCP connections accepted on the peer port (peers keep theirs open: a rising count
    /// is churn, a handshake each on TLS links).
    pub peer_connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under the `flotilla_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flotilla");
        let mut m = Metrics {
            registry: Registry::default(),
            extra: std::sync::Mutex::new(Vec::new()),
            raft_term: Gauge::default(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            applied_index: Gauge::default(),
            revision: Gauge::default(),
            proposals: Counter::default(),
            proposals_failed: Counter::default(),
            proposals_abandoned: Counter::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            fsync_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            watchers: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            snapshots_installed: Counter::default(),
            client_connections: Counter::default(),
            peer_connections: Counter::default(),
        };
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register("has_leader", "1 when this member knows a leader", m.has_leader.clone());
        registry.register("is_leader", "1 when this member is the leader", m.is_leader.clone());
        registry.register("leader_changes", "Leader changes seen by this member", m.leader_changes.clone());
        registry.register("raft_applied_index", "Index of the last applied log entry", m.applied_index.clone());
        registry.register("mvcc_revision", "Current MVCC revision", m.revision.clone());
        registry.register("proposals", "Writes proposed through this member", m.proposals.clone());
        registry.register("proposals_failed", "Proposals that failed", m.proposals_failed.clone());
        registry.register(
            "proposals_abandoned",
            "Writes dropped unproposed because every client waiting on them had gone",
            m.proposals_abandoned.clone(),
        );
        registry.register("wal_fsync_duration_seconds", "WAL fsync latency", m.fsync_seconds.clone());
        registry.register("wal_fsync_batch_size", "Log appends made durable by one fsync", m.fsync_batch.clone());
        registry.register("watchers", "Open watches on this member", m.watchers.clone());
        registry.register("raft_snapshot_index", "Log index covered by the latest snapshot", m.snapshot_index.clone());
        registry.register("raft_purged_index", "Highest purged log index", m.purged_index.clone());
        registry.register(
            "snapshots_installed",
            "Snapshots received from a leader and installed",
            m.snapshots_installed.clone(),
        );
        registry.register(
            "client_connections_accepted",
            "TCP connections accepted on the client port",
            m.client_connections.clone(),
        );
        registry.register(
            "peer_connections_accepted",
            "TCP connections accepted on the peer port",
            m.peer_connections.clone(),
        );
        m.registry = registry;
        m
    }

    /// Records one group-commit fsync.
    pub fn observe_fsync(&self, took: Duration, batch: usize) {
        self.fsync_seconds.observe(took.as_secs_f64());
        self.fsync_batch.observe(batch as f64);
    }

    /// Adds the metrics of a component running in the same process (the scheduler
    /// candidate) to `/metrics`: `render` gives their OpenMetrics text.
    pub fn add_renderer(&self, render: Box<dyn Fn() -> String + Send + Sync>) {
        self.extra.lock().unwrap_or_else(|p| p.into_inner()).push(render);
    }

    /// The Prometheus text exposition of every metric (one `# EOF` at the end).
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        let extra = self.extra.lock().unwrap_or_else(|p| p.into_inner());
        flotilla_core::exposition::join(std::iter::once(s).chain(extra.iter().map(|r| r())))
    }
}
