//! openraft's type configuration for Flotilla: what a log entry carries, what apply returns,
//! and what the cluster knows about each member.

use flotilla_proto::raft as pb;

/// A member's id, as in etcd: a non-zero 64-bit number.
pub type NodeId = u64;

/// What the Raft membership records about a member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// `--name`; empty until a member added at run time first starts.
    pub name: String,
    /// Where peers reach it (`http://host:port`).
    pub peer_urls: Vec<String>,
    /// Where clients reach it.
    pub client_urls: Vec<String>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// Flotilla's Raft types: protobuf `Command`s in, `CommandResult`s out.
    pub TypeConfig:
        D = pb::Command,
        R = pb::CommandResult,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle for this configuration.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log position.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A membership config.
pub type Membership = openraft::Membership<NodeId, Member>;
/// A membership config with the log id it was set at.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
/// A storage error as openraft sees it.
pub type StorageError = openraft::StorageError<NodeId>;
