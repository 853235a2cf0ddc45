//! The scheduler's Prometheus metrics: leadership (is-leader, transitions), writes refused
//! as fenced, and what the scheduling loop did.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric the scheduler exports.
pub struct SchedulerMetrics {
    registry: Registry,
    /// 1 while this scheduler holds the lock.
    pub is_leader: Gauge,
    /// Times this scheduler gained or lost the lock.
    pub leader_transitions: Counter<u64, AtomicU64>,
    /// Writes the store refused because this scheduler's fencing token was stale.
    pub fenced_writes: Counter<u64, AtomicU64>,
    /// Pods bound.
    pub pods_bound: Counter<u64, AtomicU64>,
    /// Scheduling attempts that found no node.
    pub unschedulable_attempts: Counter<u64, AtomicU64>,
    /// Binds that failed (lost a race, the pod or node changed, an API error).
    pub bind_failures: Counter<u64, AtomicU64>,
    /// Pods waiting in the queue.
    pub pending: Gauge,
}

impl Default for SchedulerMetrics {
    fn default() -> SchedulerMetrics {
        SchedulerMetrics::new()
    }
}

impl SchedulerMetrics {
    /// Fresh metrics.
    pub fn new() -> SchedulerMetrics {
        let mut registry = Registry::with_prefix("flotilla_scheduler");
        let m = SchedulerMetrics {
            is_leader: Gauge::default(),
            leader_transitions: Counter::default(),
            fenced_writes: Counter::default(),
            pods_bound: Counter::default(),
            unschedulable_attempts: Counter::default(),
            bind_failures: Counter::default(),
            pending: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("is_leader", "1 while this scheduler holds its lock", m.is_leader.clone());
        registry.register(
            "leader_transitions",
            "Times this scheduler gained or lost its lock",
            m.leader_transitions.clone(),
        );
        registry.register(
            "fenced_writes",
            "Writes refused because this scheduler's fencing token was stale",
            m.fenced_writes.clone(),
        );
        registry.register("pods_bound", "Pods bound to a node", m.pods_bound.clone());
        registry.register(
            "unschedulable_attempts",
            "Attempts that found no node for a pod",
            m.unschedulable_attempts.clone(),
        );
        registry.register("bind_failures", "Binds that failed", m.bind_failures.clone());
        registry.register("pending_pods", "Pods waiting in the scheduling queue", m.pending.clone());
        SchedulerMetrics { registry, ..m }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}
