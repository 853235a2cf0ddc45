//! Flotilla's controller manager: the controllers that drive the cluster's objects toward
//! what their specs ask for (ReplicaSets, Deployments, endpoints, node lifecycle, ...).
//!
//! Every controller has the same shape, as in Kubernetes' controller manager:
//!
//! * informer caches (the client's reflector) say what exists; a change to an object, or
//!   to something it depends on, adds the object's key to the controller's queue;
//! * [`queue`]: a work queue of keys — each key once however often it was added, never
//!   handed to two workers at once, and retried after a failure with a per-key back-off;
//! * [`worker`]: workers take keys and call the controller's [`worker::Reconcile`], which
//!   reads the caches and makes the writes that close the gap. Reconciling is
//!   level-triggered: it looks at the current state, not at the event that woke it, so a
//!   restart or a failover to another master converges to the same state;
//! * [`expectations`]: what a controller asked for and has not yet seen in its caches,
//!   so that a cache lagging behind its own writes never makes it act twice;
//! * [`descriptor`]: every controller is registered in one table (name, on by default),
//!   selected with `--controllers` (`*`, `name`, `-name`), as Kubernetes'
//!   `--controllers` flag does.
//!
//! * [`informers`]: one reflector per kind, shared by every controller that reads it;
//! * [`manager`]: one controller manager acts at a time (lock
//!   `kube-system/flotilla-controller-manager`, the client's fenced elector); while it
//!   holds the lock it runs the selected controllers, and their writes carry the fencing
//!   token; [`metrics`] says what they do.
//!
//! Controllers: [`replicaset`], [`deployment`], [`daemonset`], [`job`], [`endpoints`],
//! [`nodelifecycle`], [`podgc`], [`gc`], [`namespace`], [`nodeipam`], [`loadbalancer`].
//!
//! A client of the apiserver only: it must not depend on the store or the apiserver.

pub mod allocator;
pub mod daemonset;
pub mod deployment;
pub mod descriptor;
pub mod endpoints;
pub mod error;
pub mod expectations;
pub mod gc;
pub mod informers;
pub mod job;
pub mod loadbalancer;
pub mod manager;
pub mod metrics;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podcontrol;
pub mod podgc;
pub mod pods;
pub mod queue;
pub mod recent;
pub mod replicaset;
pub mod worker;

pub use error::ControllerError;
pub use manager::{run, ManagerConfig, CONTROLLERS};
pub use metrics::ControllerMetrics;

/// The controller manager's lock: namespace and name.
pub const LOCK: (&str, &str) = ("kube-system", "flotilla-controller-manager");
