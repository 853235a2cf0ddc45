//! `flotilla bench`: a load generator that speaks the etcd v3 gRPC API, so the very same
//! binary drives an etcd cluster and a Flotilla cluster; and `compare`, which runs the
//! same workload matrix against both on one machine.
//!
//! `scheduler` measures scheduling on a Flotilla cluster (through the resource API);
//! `hollow` keeps Node objects alive and reports their pods running, without containers
//! (for tests and benchmarks of the control plane).
//!
//! This crate talks to servers only over gRPC; it must not depend on the store.

pub mod compare;
pub mod controllers;
pub mod error;
pub mod hollow;
pub mod pods;
pub mod proxy;
pub mod report;
pub mod scheduler;
pub mod workload;

pub use error::BenchError;
pub use report::Report;
pub use workload::{Common, Consistency, Workload};
