//! Flotilla's fault-injection harness: [`topology`] puts real `flotilla master` processes
//! in network namespaces; [`runner`] drives the workloads over the etcd API (and
//! [`cross_read`] over the resource API too) while faults are injected on a seeded schedule, then judges the history ([`checker`]) and
//! the members' state; [`report`] prints the result. See `chaos/README.md`.
//!
//! The checkers are pure: they take recorded histories and return verdicts, and must not
//! depend on the store, the network or a runtime.

pub mod checker;
pub mod clock;
pub mod cross_read;
pub mod disk;
pub mod history;
pub mod lease;
pub mod plane;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod topology;

/// What keeps a run from completing (as opposed to a run that completes and fails).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Namespaces, links, processes or files could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// The cluster did not get to where the run needs it (no leader, ...).
    #[error("cluster: {0}")]
    Cluster(String),
}
