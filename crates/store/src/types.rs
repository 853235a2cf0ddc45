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
    /// Flotilla's Raft types: protobuf `Command`s in, `CommandResult`s out. Everything else
    /// is openraft's default: a leader id of (term, node id), the `Entry` and `EntryPayload`
    /// of openraft, the tokio runtime.
    pub TypeConfig:
        D = pb::Command,
        R = pb::CommandResult,
        NodeId = NodeId,
        Node = Member,
);

use openraft::type_config::alias;

/// The Raft handle for this configuration.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
/// A log entry.
pub type Entry = alias::EntryOf<TypeConfig>;
/// A log position.
pub type LogId = alias::LogIdOf<TypeConfig>;
/// The leader id a log position carries: (term, node id).
pub type CommittedLeaderId = alias::CommittedLeaderIdOf<TypeConfig>;
/// A vote.
pub type Vote = alias::VoteOf<TypeConfig>;
/// A membership config.
pub type Membership = openraft::Membership<NodeId, Member>;
/// A membership config with the log id it was set at.
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot: its metadata and the file holding it.
pub type Snapshot = alias::SnapshotOf<TypeConfig, tokio::fs::File>;
/// A storage error as openraft sees it.
pub type StorageError = openraft::StorageError<TypeConfig>;
