//! Raft peer networking, client side: openraft's `RaftNetwork` over tonic gRPC
//! (`flotilla.raft.v1.RaftPeer`), plus a pool of peer clients used to forward requests to
//! the leader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::raft as pb;
use flotilla_proto::raft::raft_peer_client::RaftPeerClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::SnapshotSegmentId;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::error::StoreError;
use crate::types::{Member, NodeId, TypeConfig};

/// HTTP/2 flow-control window per stream, for peer and client connections.
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection.
pub const H2_CONNECTION_WINDOW: u32 = 32 << 20;

/// Marker text for a snapshot-mismatch refusal carried in a gRPC status.
pub const SNAPSHOT_MISMATCH: &str = "snapshot mismatch";

/// Largest peer message (snapshot chunks and append batches stay well below it).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Largest AppendEntries batch, in bytes, unless it is a single entry. openraft 0.9 gives an
/// AppendEntries one heartbeat interval to complete (transfer and the follower's fsync);
/// a bigger batch would time out again and again and a lagging follower would never catch
/// up, so larger batches are refused with PayloadTooLarge and openraft sends fewer entries.
pub const MAX_APPEND_BYTES: usize = 2 << 20;

/// Builds a lazily connecting channel with the timeouts a failover needs: a dead peer is
/// noticed within seconds by HTTP/2 keepalive, not after a TCP timeout. An `https` URL is
/// dialled with `tls` (this member's peer certificate, the peers' CA); without `tls` it is
/// refused, as an `http` URL is when `tls` is given: peers never fall back to plaintext.
pub fn channel(url: &str, tls: Option<&Arc<flotilla_tls::ClientTls>>) -> Result<Channel, StoreError> {
    let bad = |why: &str| StoreError::InvalidArgument(format!("peer URL {url}: {why}"));
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(&e.to_string()))?
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        // Large HTTP/2 windows: a 1.5 MiB entry should cross in one go, not in 64 KiB
        // steps each waiting for a window update.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    match (url.starts_with("https://"), tls) {
        (true, Some(tls)) => Ok(endpoint.connect_with_connector_lazy(flotilla_tls::Connector::new(tls.clone()))),
        (false, None) => Ok(endpoint.connect_lazy()),
        (true, None) => Err(bad("https needs this member's peer certificate (--peer-cert-file and friends)")),
        (false, Some(_)) => Err(bad("peers talk TLS here; the URL must be https")),
    }
}

/// A client to one peer's `RaftPeer` service.
pub fn peer_client(
    url: &str,
    tls: Option<&Arc<flotilla_tls::ClientTls>>,
) -> Result<RaftPeerClient<Channel>, StoreError> {
    Ok(RaftPeerClient::new(channel(url, tls)?)
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE))
}

/// Whether a failed call certainly never reached the peer (the connection could not be
/// opened), so that even a write may be sent elsewhere. tonic reports connection failures
/// as UNAVAILABLE with hyper-util's connector message; anything else may have been
/// delivered.
pub fn never_sent(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && flotilla_core::limits::is_connect_failure(status.message())
}

/// Clients to peers by peer URL, created on first use and reused.
#[derive(Default)]
pub struct PeerPool {
    clients: Mutex<HashMap<String, RaftPeerClient<Channel>>>,
    tls: Option<Arc<flotilla_tls::ClientTls>>,
}

impl PeerPool {
    /// A pool dialling peers with `tls` (None: plaintext).
    pub fn new(tls: Option<Arc<flotilla_tls::ClientTls>>) -> PeerPool {
        PeerPool { clients: Mutex::default(), tls }
    }

    /// The client for `member`'s first peer URL.
    pub fn get(&self, member: &Member) -> Option<RaftPeerClient<Channel>> {
        let url = member.peer_urls.first()?;
        let mut m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(url) {
            return Some(c.clone());
        }
        let c = match peer_client(url, self.tls.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach a peer");
                return None;
            }
        };
        m.insert(url.clone(), c.clone());
        Some(c)
    }
}

/// gRPC metadata key carrying the sender's cluster id on Raft RPCs.
pub const CLUSTER_HEADER: &str = "x-flotilla-cluster-id";

/// openraft's network factory.
pub struct Network {
    /// This member's cluster id, sent with every Raft RPC.
    pub cluster: Arc<AtomicU64>,
    /// Told when a peer refuses this member's campaign for holding a longer log.
    pub election: Arc<crate::election::Timer>,
    /// One connection per peer, shared by every client openraft asks for. openraft 0.9
    /// asks for a new client for every read-index round and every campaign: a connection
    /// each time (a TLS handshake on TLS peer links) cost more than the round itself —
    /// linearizable reads at half speed with TLS on.
    pub peers: PeerPool,
}

/// A connection to one peer, as openraft uses it.
pub struct PeerConn {
    cluster: Arc<AtomicU64>,
    election: Arc<crate::election::Timer>,
    target: NodeId,
    client: Option<RaftPeerClient<Channel>>,
    url: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        PeerConn {
            cluster: self.cluster.clone(),
            election: self.election.clone(),
            target,
            client: self.peers.get(node),
            url: node.peer_urls.first().cloned().unwrap_or_default(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

fn transport_err<E: std::error::Error>(status: tonic::Status) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    match status.code() {
        // The peer could not be reached: openraft backs off (500 ms) before trying again.
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        // The peer was reached but did not answer within the RPC's deadline (one heartbeat
        // interval for AppendEntries): it is busy, not gone. Backing off from it would
        // starve it of heartbeats until it campaigned against a healthy leader; openraft
        // sends again at once instead.
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl PeerConn {
    // openraft's RPC error type is large by design; it is built only on failures.
    #[allow(clippy::result_large_err)]
    fn client<E: std::error::Error>(
        &self,
    ) -> Result<RaftPeerClient<Channel>, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
        self.client.clone().ok_or_else(|| {
            let e = std::io::Error::other(format!("member {} has no usable peer URL {:?}", self.target, self.url));
            RPCError::Unreachable(Unreachable::new(&e))
        })
    }
}

impl PeerConn {
    fn request<T>(&self, msg: T, option: &RPCOption) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(option.hard_ttl());
        if let Ok(v) = self.cluster.load(Ordering::Acquire).to_string().parse() {
            r.metadata_mut().insert(CLUSTER_HEADER, v);
        }
        r
    }
}

fn bad_reply<E: std::error::Error>(what: &str) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!("malformed {what} reply: missing field"))))
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let req = pb::AppendEntriesRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            prev_log_id: codec::opt_log_id_to_pb(rpc.prev_log_id.as_ref()),
            entries: rpc.entries.iter().map(codec::entry_to_pb).collect(),
            leader_commit: codec::opt_log_id_to_pb(rpc.leader_commit.as_ref()),
        };
        let size = prost::Message::encoded_len(&req);
        if size > MAX_APPEND_BYTES && req.entries.len() > 1 {
            // openraft retries with at most this many entries.
            let fit = (req.entries.len() * MAX_APPEND_BYTES / size).clamp(1, req.entries.len() - 1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit as u64)));
        }
        let resp = self.client()?.append_entries(self.request(req, &option)).await.map_err(transport_err)?.into_inner();
        use pb::append_entries_response::Result as R;
        Ok(match resp.result.ok_or_else(|| bad_reply("append-entries"))? {
            R::Success(_) => AppendEntriesResponse::Success,
            R::PartialSuccess(p) => {
                AppendEntriesResponse::PartialSuccess(codec::opt_log_id_from_pb(p.matching.as_ref()))
            }
            R::Conflict(_) => AppendEntriesResponse::Conflict,
            R::HigherVote(v) => AppendEntriesResponse::HigherVote(codec::vote_from_pb(&v)),
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let req = pb::InstallSnapshotRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            meta: Some(codec::snapshot_meta_to_pb(&rpc.meta)),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let resp = match self.client()?.install_snapshot(self.request(req, &option)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition && s.message().starts_with(SNAPSHOT_MISMATCH) => {
                let seg = |offset| SnapshotSegmentId { id: String::new(), offset };
                let err =
                    InstallSnapshotError::SnapshotMismatch(SnapshotMismatch { expect: seg(0), got: seg(rpc.offset) });
                return Err(RPCError::RemoteError(RemoteError::new(self.target, RaftError::APIError(err))));
            }
            Err(s) => return Err(transport_err(s)),
        };
        Ok(InstallSnapshotResponse {
            vote: codec::vote_from_pb(&resp.vote.ok_or_else(|| bad_reply("install-snapshot"))?),
        })
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let req = pb::VoteRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            last_log_id: codec::opt_log_id_to_pb(rpc.last_log_id.as_ref()),
        };
        let resp = self.client()?.vote(self.request(req, &option)).await.map_err(transport_err)?.into_inner();
        let resp = VoteResponse {
            vote: codec::vote_from_pb(&resp.vote.ok_or_else(|| bad_reply("vote"))?),
            vote_granted: resp.vote_granted,
            last_log_id: codec::opt_log_id_from_pb(resp.last_log_id.as_ref()),
        };
        if !resp.vote_granted && resp.last_log_id > rpc.last_log_id {
            self.election.outlogged(rpc.vote.leader_id().term);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call to a port nobody listens on is recognised as never sent (so a forwarded write
    /// may safely go to the next leader); this pins the transport's error text.
    #[tokio::test]
    async fn call_to_closed_port_is_recognised_as_never_sent() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let mut c = peer_client(&format!("http://127.0.0.1:{port}"), None).expect("client");
        let err = c.read_index(pb::ReadIndexRequest {}).await.expect_err("nobody listens");
        assert!(never_sent(&err), "{err:?}");
    }
}
