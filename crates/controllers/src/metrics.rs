//! The controller manager's Prometheus metrics: leadership, writes refused as fenced, and
//! per controller (label `controller`) the queue's depth, reconcile latency, reconciles
//! and failed reconciles.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The label of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// The controller's name in `--controllers`.
    pub controller: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

type HistogramFamily = Family<ControllerLabel, Histogram, fn() -> Histogram>;

/// Every metric the controller manager exports.
pub struct ControllerMetrics {
    registry: Registry,
    /// 1 while this controller manager holds the lock.
    pub is_leader: Gauge,
    /// Times it gained or lost the lock.
    pub leader_transitions: Counter<u64, AtomicU64>,
    /// Writes the store refused because this controller manager's fencing token was stale.
    pub fenced_writes: Counter<u64, AtomicU64>,
    queue_depth: Family<ControllerLabel, Gauge>,
    reconcile_seconds: HistogramFamily,
    reconciles: Family<ControllerLabel, Counter<u64, AtomicU64>>,
    reconcile_errors: Family<ControllerLabel, Counter<u64, AtomicU64>>,
}

impl Default for ControllerMetrics {
    fn default() -> ControllerMetrics {
        ControllerMetrics::new()
    }
}

/// One controller's metrics (cheap to clone; a clone updates the same series).
#[derive(Clone, Default)]
pub struct PerController {
    /// Keys waiting in its queue.
    pub queue_depth: Gauge,
    /// How long reconciles take.
    pub reconcile_seconds: Option<Histogram>,
    /// Reconciles finished.
    pub reconciles: Counter<u64, AtomicU64>,
    /// Reconciles that failed (the key is retried after its back-off).
    pub reconcile_errors: Counter<u64, AtomicU64>,
}

impl PerController {
    /// Records one reconcile (or pass) that took `took`, and whether it went through.
    pub fn observe(&self, took: std::time::Duration, ok: bool) {
        if let Some(h) = &self.reconcile_seconds {
            h.observe(took.as_secs_f64());
        }
        self.reconciles.inc();
        if !ok {
            self.reconcile_errors.inc();
        }
    }
}

impl ControllerMetrics {
    /// Fresh metrics.
    pub fn new() -> ControllerMetrics {
        let mut registry = Registry::with_prefix("flotilla_controller_manager");
        let m = ControllerMetrics {
            registry: Registry::default(),
            is_leader: Gauge::default(),
            leader_transitions: Counter::default(),
            fenced_writes: Counter::default(),
            queue_depth: Family::default(),
            reconcile_seconds: Family::new_with_constructor(latency_histogram),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
        };
        registry.register("is_leader", "1 while this controller manager holds its lock", m.is_leader.clone());
        registry.register(
            "leader_transitions",
            "Times this controller manager gained or lost its lock",
            m.leader_transitions.clone(),
        );
        registry.register(
            "fenced_writes",
            "Writes refused because this controller manager's fencing token was stale",
            m.fenced_writes.clone(),
        );
        registry.register("queue_depth", "Keys waiting in a controller's work queue", m.queue_depth.clone());
        registry.register(
            "reconcile_duration_seconds",
            "How long a controller's reconciles take",
            m.reconcile_seconds.clone(),
        );
        registry.register("reconciles", "Reconciles a controller finished", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed (retried after a back-off)",
            m.reconcile_errors.clone(),
        );
        ControllerMetrics { registry, ..m }
    }

    /// The series of controller `name`.
    pub fn of(&self, name: &str) -> PerController {
        let l = ControllerLabel { controller: name.to_string() };
        PerController {
            queue_depth: self.queue_depth.get_or_create(&l).clone(),
            reconcile_seconds: Some(self.reconcile_seconds.get_or_create(&l).clone()),
            reconciles: self.reconciles.get_or_create(&l).clone(),
            reconcile_errors: self.reconcile_errors.get_or_create(&l).clone(),
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}
