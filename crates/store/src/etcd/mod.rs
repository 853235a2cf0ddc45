//! The etcd v3 gRPC services (KV, Watch, Lease, Cluster, Maintenance), wire-compatible with
//! etcd 3.4 so the stock `etcdctl` works against any member.
//!
//! Every request is validated here, at the boundary, before anything is proposed; errors
//! carry etcd's codes and texts (see [`crate::error`]).

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod validate;
pub mod watch;

/// The server version reported by Status. etcdctl 3.4 checks it for feature support.
pub const ETCD_VERSION: &str = "3.4.0";
