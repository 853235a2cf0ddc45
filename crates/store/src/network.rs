//! Raft peer networking, client side: openraft's `RaftNetworkV2` over tonic gRPC
//! (`flotilla.raft.v1.RaftPeer`), plus a pool of peer clients used to forward requests to
//! the leader.
//!
//! openraft 0.10 sets no deadline on replication: each call here sets its own, by what it
//! carries. Heartbeats, votes and pre-votes get the deadline openraft gives them (a
//! heartbeat interval, an election timeout); AppendEntries carrying entries get
//! `--replication-timeout` (seconds, not a heartbeat interval: a slow link or a slow fsync
//! on the follower delays replication, it does not restart it from scratch); a snapshot
//! chunk gets openraft's snapshot timeout. Large AppendEntries are split here into
//! requests of at most [`MAX_APPEND_BYTES`], and snapshots are sent in chunks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;

use flotilla_proto::raft as pb;
use flotilla_proto::raft::raft_peer_client::RaftPeerClient;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::error::StoreError;
use crate::types::{LogId, Member, NodeId, Snapshot, TypeConfig, Vote};

/// HTTP/2 flow-control window per stream, for peer and client connections.
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection.
pub const H2_CONNECTION_WINDOW: u32 = 32 << 20;

/// Marker text for a snapshot-mismatch refusal carried in a gRPC status.
pub const SNAPSHOT_MISMATCH: &str = "snapshot mismatch";

/// Largest peer message (snapshot chunks and append batches stay well below it).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Largest AppendEntries request, in bytes, unless it is a single entry: a batch openraft
/// hands over that is larger goes in several requests, one after another, so no request
/// comes near the message limit and each finishes well within the replication deadline.
pub const MAX_APPEND_BYTES: usize = 2 << 20;

/// Default deadline of an AppendEntries carrying entries (`--replication-timeout`).
pub const DEFAULT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// This member's id (named in timeout errors).
    pub id: NodeId,
    /// This member's cluster id, sent with every Raft RPC.
    pub cluster: Arc<AtomicU64>,
    /// Told when a peer refuses this member's campaign for holding a longer log.
    pub election: Arc<crate::election::Timer>,
    /// One connection per peer, shared by every client openraft asks for (a replication
    /// stream, a heartbeat worker and a snapshot sender per peer, and votes). A connection
    /// per client would cost a TCP and TLS handshake each time openraft asks for one.
    pub peers: PeerPool,
    /// Deadline of an AppendEntries carrying entries (`--replication-timeout`).
    pub replication_timeout: Duration,
}

/// What openraft uses a client for, which decides its AppendEntries deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Log replication (and votes, transfers).
    Replication,
    /// Heartbeats (empty AppendEntries), from their own worker.
    Heartbeat,
    /// Snapshot transfer.
    Snapshot,
}

/// A connection to one peer, as openraft uses it.
pub struct PeerConn {
    id: NodeId,
    cluster: Arc<AtomicU64>,
    election: Arc<crate::election::Timer>,
    target: NodeId,
    client: Option<RaftPeerClient<Channel>>,
    url: String,
    role: Role,
    replication_timeout: Duration,
}

impl Network {
    fn conn(&self, target: NodeId, node: &Member, role: Role) -> PeerConn {
        PeerConn {
            id: self.id,
            cluster: self.cluster.clone(),
            election: self.election.clone(),
            target,
            client: self.peers.get(node),
            url: node.peer_urls.first().cloned().unwrap_or_default(),
            role,
            replication_timeout: self.replication_timeout,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        self.conn(target, node, Role::Replication)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        self.conn(target, node, Role::Heartbeat)
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &Member) -> PeerConn {
        self.conn(target, node, Role::Snapshot)
    }
}

type RpcErr = RPCError<TypeConfig>;

impl PeerConn {
    /// openraft's view of a failed call. A peer that cannot be reached is `Unreachable`
    /// (openraft backs off before trying again); a deadline that passed is a `Timeout`
    /// (the peer is slow, not gone: openraft retries at once); anything else `Network`.
    fn transport_err(&self, status: tonic::Status, action: RPCTypes, timeout: Duration) -> RpcErr {
        match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout })
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }

    // openraft's RPC error type is large by design; it is built only on failures.
    #[allow(clippy::result_large_err)]
    fn client(&self) -> Result<RaftPeerClient<Channel>, RpcErr> {
        self.client.clone().ok_or_else(|| {
            let e = std::io::Error::other(format!("member {} has no usable peer URL {:?}", self.target, self.url));
            RPCError::Unreachable(Unreachable::new(&e))
        })
    }

    fn request<T>(&self, msg: T, deadline: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(deadline);
        if let Ok(v) = self.cluster.load(Ordering::Acquire).to_string().parse() {
            r.metadata_mut().insert(CLUSTER_HEADER, v);
        }
        r
    }

    /// One AppendEntries request as it goes on the wire.
    async fn send_append(
        &self,
        req: pb::AppendEntriesRequest,
        deadline: Duration,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let resp = self
            .client()?
            .append_entries(self.request(req, deadline))
            .await
            .map_err(|s| self.transport_err(s, RPCTypes::AppendEntries, deadline))?
            .into_inner();
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

    /// A vote or pre-vote round trip; a refusal for a longer log is told to the election
    /// clock.
    async fn send_vote(
        &self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre: bool,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let req = pb::VoteRequest {
            vote: Some(codec::vote_to_pb(&rpc.vote)),
            last_log_id: codec::opt_log_id_to_pb(rpc.last_log_id.as_ref()),
            leadership_transfer: rpc.leadership_transfer,
        };
        let deadline = option.soft_ttl();
        let mut client = self.client()?;
        let req = self.request(req, deadline);
        let resp = if pre { client.pre_vote(req).await } else { client.vote(req).await };
        let resp = resp.map_err(|s| self.transport_err(s, RPCTypes::Vote, deadline))?.into_inner();
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

fn bad_reply(what: &str) -> RpcErr {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!("malformed {what} reply: missing field"))))
}

/// Splits encoded entries into runs of at most [`MAX_APPEND_BYTES`] (a larger entry goes
/// alone), as (end index in `sizes`) of each run.
fn append_runs(sizes: &[usize]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut run = 0;
    for (i, len) in sizes.iter().enumerate() {
        if run > 0 && run + len > MAX_APPEND_BYTES {
            ends.push(i);
            run = 0;
        }
        run += len;
    }
    ends.push(sizes.len());
    ends
}

/// A fresh name for one sending of a snapshot.
fn transfer_id(meta: &crate::types::SnapshotMeta) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{}-{n}", meta.last_log_id.map_or(0, |l| l.index), std::process::id())
}

/// How many times a snapshot is sent again from the start when the receiver lost track
/// of it (restarted, or began another), before giving up to openraft's retry.
const SNAPSHOT_RESTARTS: u32 = 3;

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = tokio::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let deadline = match (self.role, rpc.entries.is_empty()) {
            (Role::Heartbeat, _) | (_, true) => option.soft_ttl(),
            _ => self.replication_timeout,
        };
        let vote = Some(codec::vote_to_pb(&rpc.vote));
        let leader_commit = codec::opt_log_id_to_pb(rpc.leader_commit.as_ref());
        let encoded: Vec<pb::Entry> = rpc.entries.iter().map(codec::entry_to_pb).collect();
        let sizes: Vec<usize> = encoded.iter().map(prost::Message::encoded_len).collect();
        let mut encoded = encoded.into_iter();
        let mut prev: Option<LogId> = rpc.prev_log_id;
        let mut start = 0;
        for (n, end) in append_runs(&sizes).into_iter().enumerate() {
            let req = pb::AppendEntriesRequest {
                vote,
                prev_log_id: codec::opt_log_id_to_pb(prev.as_ref()),
                entries: encoded.by_ref().take(end - start).collect(),
                leader_commit,
            };
            let res = self.send_append(req, deadline).await;
            if n == 0 {
                // The first request answers for the whole call, whatever it says.
                if !matches!(res, Ok(AppendEntriesResponse::Success)) {
                    return res;
                }
            } else {
                match res {
                    Ok(AppendEntriesResponse::Success) => {}
                    Ok(AppendEntriesResponse::HigherVote(v)) => return Ok(AppendEntriesResponse::HigherVote(v)),
                    // What the earlier requests placed stands; openraft goes on from there.
                    _ => return Ok(AppendEntriesResponse::PartialSuccess(prev)),
                }
            }
            prev = rpc.entries.get(end.wrapping_sub(1)).map(|e| e.log_id).or(prev);
            start = end;
        }
        Ok(AppendEntriesResponse::Success)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.send_vote(rpc, option, false).await
    }

    /// Never a grant the peer did not give: a peer that cannot be asked does not count.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.send_vote(rpc, option, true).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let storage = |e: std::io::Error| -> StreamingError<TypeConfig> {
            let source = <openraft::impls::BoxedErrorSource as openraft::errors::ErrorSource>::from_error(&e);
            StreamingError::StorageError(openraft::StorageError::read_snapshot(None, source))
        };
        let chunk = option.snapshot_chunk_size().unwrap_or(4 << 20).max(1);
        let deadline = option.hard_ttl();
        let Snapshot { meta, snapshot: mut file } = snapshot;
        let len = file.metadata().await.map_err(storage)?.len();
        let mut cancel = std::pin::pin!(cancel);
        let mut restarts = 0;
        'send: loop {
            let transfer = transfer_id(&meta);
            let pb_meta = codec::snapshot_meta_to_pb(&meta, &transfer);
            file.seek(std::io::SeekFrom::Start(0)).await.map_err(storage)?;
            let mut offset = 0u64;
            loop {
                if let Some(closed) = cancel.as_mut().now_or_never() {
                    return Err(StreamingError::Closed(closed));
                }
                let mut data = Vec::with_capacity(chunk.min((len - offset) as usize));
                (&mut file).take(chunk as u64).read_to_end(&mut data).await.map_err(storage)?;
                let done = offset + data.len() as u64 >= len;
                let n = data.len() as u64;
                let req = pb::InstallSnapshotRequest {
                    vote: Some(codec::vote_to_pb(&vote)),
                    meta: Some(pb_meta.clone()),
                    offset,
                    data,
                    done,
                };
                match self.client()?.install_snapshot(self.request(req, deadline)).await {
                    Ok(r) => {
                        let theirs = codec::vote_from_pb(
                            &r.into_inner().vote.ok_or_else(|| StreamingError::from(bad_reply("install-snapshot")))?,
                        );
                        // A higher vote ends the transfer: this member is no longer leader.
                        if done || theirs > vote {
                            return Ok(SnapshotResponse { vote: theirs });
                        }
                        offset += n;
                    }
                    Err(s)
                        if s.code() == tonic::Code::FailedPrecondition
                            && s.message().starts_with(SNAPSHOT_MISMATCH)
                            && restarts < SNAPSHOT_RESTARTS =>
                    {
                        restarts += 1;
                        tracing::info!(
                            target = self.target,
                            reason = s.message(),
                            "sending the snapshot again from the start"
                        );
                        continue 'send;
                    }
                    Err(s) => return Err(self.transport_err(s, RPCTypes::InstallSnapshot, deadline).into()),
                }
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        let deadline = option.soft_ttl();
        let msg = pb::TransferLeaderRequest {
            from_leader: Some(codec::vote_to_pb(req.from_leader())),
            to_node_id: *req.to_node_id(),
            last_log_id: codec::opt_log_id_to_pb(req.last_log_id()),
        };
        let resp = self
            .client()?
            .transfer_leader(self.request(msg, deadline))
            .await
            .map_err(|s| self.transport_err(s, RPCTypes::TransferLeader, deadline))?
            .into_inner();
        Ok(match resp.refused.as_str() {
            "" => Ok(()),
            TRANSFER_LOG_NOT_FLUSHED => Err(TransferLeaderError::LogNotFlushed {
                expected: req.last_log_id().copied(),
                actual: codec::opt_log_id_from_pb(resp.actual_log_id.as_ref()),
            }),
            _ => Err(TransferLeaderError::VoteChanged {
                expected: *req.from_leader(),
                actual: resp.actual_vote.as_ref().map_or(*req.from_leader(), codec::vote_from_pb),
            }),
        })
    }
}

/// `TransferLeaderResponse.refused` when the target's vote is not the leader's.
pub const TRANSFER_VOTE_CHANGED: &str = "vote changed";
/// `TransferLeaderResponse.refused` when the target's log is not flushed far enough.
pub const TRANSFER_LOG_NOT_FLUSHED: &str = "log not flushed";

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries go in runs of at most MAX_APPEND_BYTES; an entry larger than that alone.
    #[test]
    fn large_batches_are_split_into_runs_below_the_byte_cap() {
        let big = MAX_APPEND_BYTES + 1;
        let third = MAX_APPEND_BYTES / 3;
        assert_eq!(append_runs(&[]), vec![0]);
        assert_eq!(append_runs(&[10, 10]), vec![2]);
        assert_eq!(append_runs(&[third, third, third, third]), vec![3, 4]);
        assert_eq!(append_runs(&[big]), vec![1]);
        assert_eq!(append_runs(&[10, big, 10]), vec![1, 2, 3]);
    }

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
