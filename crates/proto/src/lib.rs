//! Generated protobuf and gRPC code, and the one trait impl openraft needs on the log's
//! `Command` (`Display`, for its logs), which the orphan rule keeps here.
//!
//! * [`mvccpb`] and [`etcdserverpb`]: the etcd v3 wire-compatible subset (our own
//!   `.proto` text under `proto/etcd`, with etcd's package names and field numbers).
//! * [`api`]: the resource API (`proto/flotilla/api/v1`), with serde derives for its JSON
//!   form.
//! * [`raft`]: Flotilla's peer RPC and the replicated log's `Command` union
//!   (`proto/flotilla/raft/v1`).
//!
//! Conversions into domain types live in the crates that own those types.
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    //! etcd's `mvccpb` package: KeyValue and Event.
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    //! etcd's `etcdserverpb` package: the v3 KV, Watch, Lease, Cluster and Maintenance services.
    tonic::include_proto!("etcdserverpb");
}

pub mod flotilla {
    //! Flotilla's own packages, nested as their protobuf package names are.
    pub mod api {
        //! `flotilla.api.*`
        pub mod v1 {
            //! `flotilla.api.v1`: the resource API (objects, verbs, watch). Every message also
            //! (de)serialises as JSON in Kubernetes' field names.
            tonic::include_proto!("flotilla.api.v1");
        }
    }
    pub mod raft {
        //! `flotilla.raft.*`
        pub mod v1 {
            //! `flotilla.raft.v1`: peer RPC between masters and the log Command union.
            tonic::include_proto!("flotilla.raft.v1");
        }
    }
}

pub use flotilla::api::v1 as api;
pub use flotilla::raft::v1 as raft;

/// Whether a field holds its default value (left out of the JSON form).
pub fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl std::fmt::Display for raft::Command {
    /// The kind of command, and for a batch how many it holds: openraft logs entries by
    /// their `Display`, and a key or value has no place in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use raft::command::Kind;
        match &self.kind {
            None => f.write_str("empty"),
            Some(Kind::Put(_)) => f.write_str("put"),
            Some(Kind::DeleteRange(_)) => f.write_str("delete-range"),
            Some(Kind::Txn(_)) => f.write_str("txn"),
            Some(Kind::Compaction(c)) => write!(f, "compaction({})", c.revision),
            Some(Kind::LeaseGrant(l)) => write!(f, "lease-grant({:x})", l.id),
            Some(Kind::LeaseRevoke(l)) => write!(f, "lease-revoke({:x})", l.id),
            Some(Kind::LeaseCheckpoint(_)) => f.write_str("lease-checkpoint"),
            Some(Kind::Batch(b)) => write!(f, "batch({})", b.commands.len()),
        }
    }
}
