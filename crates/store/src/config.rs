//! A master's configuration, as the binary hands it to [`crate::node::Node::start`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::cluster::{InitialMember, Url};

/// Whether this member founds a new cluster or joins one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `initial_cluster`.
    New,
    /// Join a running cluster that has already added this member (`member add`).
    Existing,
}

/// Everything a master needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's name; must appear in `initial_cluster`.
    pub name: String,
    /// Where RocksDB keeps the log and the state machine.
    pub data_dir: PathBuf,
    /// Address the etcd v3 API listens on.
    pub listen_client: Url,
    /// Client URL published to other members and clients (defaults to `listen_client`).
    pub advertise_client: Url,
    /// Address the peer protocol listens on.
    pub listen_peer: Url,
    /// Peer URL published to other members (defaults to `listen_peer`).
    pub advertise_peer: Url,
    /// Address of the HTTP endpoint for `/healthz`, `/readyz` and `/metrics`.
    pub listen_metrics: Option<Url>,
    /// Every member at bootstrap.
    pub initial_cluster: Vec<InitialMember>,
    /// New cluster or existing.
    pub initial_cluster_state: ClusterState,
    /// Separates clusters bootstrapped with the same member URLs.
    pub initial_cluster_token: String,
    /// Leader heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Election timeout (the minimum; the maximum is twice it).
    pub election_timeout: Duration,
    /// How long the leader waits for a follower to answer an AppendEntries carrying
    /// entries before it sends again.
    pub replication_timeout: Duration,
    /// Applied entries between snapshots; the log before a snapshot is purged.
    pub snapshot_count: u64,
    /// How long a client request may wait for the cluster before failing.
    pub request_timeout: Duration,
    /// History older than this is compacted away automatically (zero: never).
    pub compaction_retention: Duration,
    /// TLS of the client listener (and of the metrics listener when its URL is https);
    /// None: plaintext, which `listen_client` must then say.
    pub client_tls: Option<Arc<flotilla_tls::ServerTls>>,
    /// TLS between peers, both ways; None: plaintext.
    pub peer_tls: Option<PeerTls>,
    /// Who the client port lets in (with TLS: authentication; see `auth`).
    pub client_gate: Arc<crate::auth::Gate>,
}

/// Mutual TLS between peers: the peer listener requires a certificate from the peers' CA,
/// and this member presents its own when it dials one.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// The peer listener's side.
    pub server: Arc<flotilla_tls::ServerTls>,
    /// The dialling side.
    pub client: Arc<flotilla_tls::ClientTls>,
}
