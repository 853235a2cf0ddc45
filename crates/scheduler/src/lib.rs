//! Flotilla's scheduler: places pending pods on nodes.
//!
//! Exactly one scheduler acts at a time: each candidate campaigns for the lock
//! `kube-system/flotilla-scheduler` through the client's fenced elector, and every write
//! the leader makes (binds, pod status, Events) carries its fencing token, so a deposed
//! scheduler cannot write (docs/rfcs/0001-fenced-leadership.md).
//!
//! * [`cache`]: nodes and what is placed on them (including binds in flight);
//! * [`queue`]: pending pods by priority, back-off, and parking until the cluster changes;
//! * [`plugins`]: filters and scores in one descriptor table;
//! * [`scheduler`]: the loop that ties them together and binds.
//!
//! A client of the apiserver only: it must not depend on the store or the apiserver
//! (`cargo tree -p flotilla-scheduler` shows no RocksDB).

pub mod cache;
pub mod error;
pub mod metrics;
pub mod plugins;
pub mod queue;
pub mod resources;
pub mod scheduler;

use std::collections::BTreeMap;

pub use error::SchedulerError;
pub use metrics::SchedulerMetrics;
pub use scheduler::run;

use flotilla_client::ElectorConfig;

/// The lock's namespace and name.
pub const LOCK: (&str, &str) = ("kube-system", "flotilla-scheduler");

/// A scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The name pods ask for in `spec.schedulerName` (empty and `default-scheduler` are
    /// also taken); also the Events' `source.component`.
    pub name: String,
    /// Plugins switched off, by name (see [`plugins::PLUGINS`]).
    pub disabled_plugins: Vec<String>,
    /// Score weights that differ from the defaults (0 switches a score off).
    pub weights: BTreeMap<String, i64>,
    /// Share of the nodes to find feasible before scoring, in percent (0: adaptive, as
    /// Kubernetes).
    pub percentage_of_nodes_to_score: u32,
    /// Binds sent and not yet answered, at most.
    pub binds_in_flight: usize,
    /// The election: lock, identity and timing.
    pub elector: ElectorConfig,
}

impl SchedulerConfig {
    /// The defaults, campaigning as `identity`.
    pub fn new(identity: &str) -> SchedulerConfig {
        SchedulerConfig {
            name: "flotilla-scheduler".into(),
            disabled_plugins: vec![],
            weights: BTreeMap::new(),
            percentage_of_nodes_to_score: 0,
            binds_in_flight: 256,
            elector: ElectorConfig::new(LOCK.0, LOCK.1, identity),
        }
    }
}
