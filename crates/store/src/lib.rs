//! Flotilla's replicated store: the etcd replacement every master runs.
//!
//! Raft (openraft) replicates a log of [`flotilla_proto::raft::Command`]s; each member
//! applies them to an MVCC key-value store on RocksDB and serves the etcd v3 gRPC API
//! (KV, Watch, Lease, Cluster, Maintenance) on its client URL, and the peer protocol on its
//! peer URL.
//!
//! Layering, bottom up: [`rocks`] (the only module that names RocksDB) → [`log_store`] and
//! [`mvcc`] → [`state_machine`] and [`watch`] → [`node`] (Raft, networking, leases) → the
//! gRPC services in [`etcd`]. Nothing here depends on the apiserver or anything above it.

pub mod audit;
pub mod auth;
pub mod codec;
pub mod compactor;
pub mod config;
pub mod election;
pub mod error;
pub mod etcd;
pub mod fault;
pub mod http;
pub mod lease;
pub mod log_store;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod peer;
pub mod rocks;
pub mod server;
pub mod state_machine;
pub mod types;
pub mod watch;

pub use error::StoreError;
