//! The kubelet's Prometheus metrics: how often its pod reflector listed (a relist means a
//! watch could not be resumed), which master it talks to, its containers and sync passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label naming a master.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MasterLabel {
    /// Its URL.
    pub master: String,
}

/// Every metric the kubelet exports.
pub struct KubeletMetrics {
    registry: Registry,
    /// Lists of this node's pods (1 + relists).
    pub pod_lists: Gauge<u64, AtomicU64>,
    /// 1 for the master calls go to now.
    pub master: Family<MasterLabel, Gauge>,
    /// Containers running.
    pub running_containers: Gauge,
    /// Sync passes made.
    pub sync_passes: Counter<u64, AtomicU64>,
    /// Housekeeping passes made (image garbage collection).
    pub housekeeping_passes: Counter<u64, AtomicU64>,
    current: Mutex<String>,
    lists: Mutex<Option<Arc<AtomicU64>>>,
}

impl Default for KubeletMetrics {
    fn default() -> KubeletMetrics {
        KubeletMetrics::new()
    }
}

impl KubeletMetrics {
    /// The metrics, registered under `flotilla_kubelet_`.
    pub fn new() -> KubeletMetrics {
        let mut registry = Registry::with_prefix("flotilla_kubelet");
        let m = KubeletMetrics {
            registry: Registry::default(),
            pod_lists: Gauge::default(),
            master: Family::default(),
            running_containers: Gauge::default(),
            sync_passes: Counter::default(),
            housekeeping_passes: Counter::default(),
            current: Mutex::default(),
            lists: Mutex::default(),
        };
        registry.register("pod_lists", "Lists of this node's pods: 1, plus one per relist", m.pod_lists.clone());
        registry.register("master", "1 for the master the kubelet's calls go to now", m.master.clone());
        registry.register("running_containers", "Containers running", m.running_containers.clone());
        registry.register("sync_passes", "Passes of the pod sync loop", m.sync_passes.clone());
        registry.register(
            "housekeeping_passes",
            "Housekeeping passes of the runtime (unused images removed)",
            m.housekeeping_passes.clone(),
        );
        KubeletMetrics { registry, ..m }
    }

    /// Reads the pod reflector's list count from `counter` from now on.
    pub fn count_lists(&self, counter: Arc<AtomicU64>) {
        *self.lists.lock().unwrap_or_else(|p| p.into_inner()) = Some(counter);
    }

    /// Says which master calls go to now.
    pub fn set_master(&self, url: &str) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != url {
            if !cur.is_empty() {
                self.master.get_or_create(&MasterLabel { master: cur.clone() }).set(0);
            }
            self.master.get_or_create(&MasterLabel { master: url.to_string() }).set(1);
            *cur = url.to_string();
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        if let Some(c) = self.lists.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            self.pod_lists.set(c.load(Ordering::Relaxed));
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
