//! Raft peer networking, server side: the `flotilla.raft.v1.RaftPeer` service that other
//! members call (Raft RPCs, and requests forwarded to the leader).

use std::sync::Arc;

use flotilla_proto::raft as pb;
use flotilla_proto::raft::raft_peer_server::RaftPeer;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderError, TransferLeaderRequest, VoteRequest,
};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::network::{SNAPSHOT_MISMATCH, TRANSFER_LOG_NOT_FLUSHED, TRANSFER_VOTE_CHANGED};
use crate::node::Node;
use crate::types::Snapshot;

/// The peer service of one member.
pub struct PeerService {
    node: Arc<Node>,
    /// The snapshot being received in chunks, if any.
    receiving: tokio::sync::Mutex<Option<Receiving>>,
}

/// A snapshot arriving in chunks: which sending, where it is written, how much has come.
struct Receiving {
    transfer: String,
    file: tokio::fs::File,
    offset: u64,
}

impl PeerService {
    /// Serves `node` to its peers.
    pub fn new(node: Arc<Node>) -> PeerService {
        PeerService { node, receiving: tokio::sync::Mutex::new(None) }
    }
}

impl PeerService {
    /// Refuses Raft traffic from another cluster; lets a joining member learn its cluster.
    fn check_cluster<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let theirs = req
            .metadata()
            .get(crate::network::CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        self.node.check_peer_cluster(theirs).map_err(|e| Status::permission_denied(e.to_string()))
    }
}

fn invalid(what: &str) -> Status {
    Status::invalid_argument(format!("peer request is missing {what}"))
}

fn vote_request(r: pb::VoteRequest) -> Result<VoteRequest<crate::types::TypeConfig>, Status> {
    Ok(VoteRequest {
        vote: codec::vote_from_pb(r.vote.as_ref().ok_or_else(|| invalid("vote"))?),
        last_log_id: codec::opt_log_id_from_pb(r.last_log_id.as_ref()),
        leadership_transfer: r.leadership_transfer,
    })
}

fn vote_response(resp: &openraft::raft::VoteResponse<crate::types::TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(codec::vote_to_pb(&resp.vote)),
        vote_granted: resp.vote_granted,
        last_log_id: codec::opt_log_id_to_pb(resp.last_log_id.as_ref()),
    }
}

fn fatal<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(format!("raft stopped: {e}"))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.check_cluster(&req)?;
        let r = req.into_inner();
        let mut entries = Vec::with_capacity(r.entries.len());
        for e in r.entries {
            entries.push(codec::entry_from_pb(e).map_err(|e| Status::invalid_argument(e.to_string()))?);
        }
        let rpc: AppendEntriesRequest<crate::types::TypeConfig> = AppendEntriesRequest {
            vote: codec::vote_from_pb(r.vote.as_ref().ok_or_else(|| invalid("vote"))?),
            prev_log_id: codec::opt_log_id_from_pb(r.prev_log_id.as_ref()),
            entries,
            leader_commit: codec::opt_log_id_from_pb(r.leader_commit.as_ref()),
        };
        // From the leader this member follows: it is alive, whether or not the answer
        // reaches it in time. (The leader gives up on a heartbeat's answer after one
        // heartbeat interval, on a replication request's after --replication-timeout;
        // when appending takes longer — a busy CPU, a slow fsync — the work is done but
        // the answer is dropped. Counting only answered requests as signs of
        // life made such a follower campaign against a healthy leader, as etcd's
        // followers do not: they reset their election clock when a message arrives.)
        if rpc.vote.is_committed() && self.node.raft.metrics().borrow_watched().vote == rpc.vote {
            self.node.heard_from_leader();
        }
        // Appended to completion even when the leader stops waiting for the answer.
        let raft = self.node.raft.clone();
        let resp = tokio::spawn(async move {
            crate::fault::slow_append().await;
            raft.append_entries(rpc).await
        })
        .await
        .map_err(fatal)?
        .map_err(fatal)?;
        if matches!(
            resp,
            AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_) | AppendEntriesResponse::Conflict
        ) {
            // Accepted from the current leader: it is alive.
            self.node.heard_from_leader();
        }
        use pb::append_entries_response::Result as R;
        let result = match resp {
            AppendEntriesResponse::Success => R::Success(pb::Blank {}),
            AppendEntriesResponse::PartialSuccess(m) => {
                R::PartialSuccess(pb::PartialSuccess { matching: codec::opt_log_id_to_pb(m.as_ref()) })
            }
            AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
            AppendEntriesResponse::HigherVote(v) => R::HigherVote(codec::vote_to_pb(&v)),
        };
        Ok(Response::new(pb::AppendEntriesResponse { result: Some(result) }))
    }

    async fn vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        self.check_cluster(&req)?;
        let rpc = vote_request(req.into_inner())?;
        let resp = self.node.raft.vote(rpc).await.map_err(fatal)?;
        Ok(Response::new(vote_response(&resp)))
    }

    async fn pre_vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        self.check_cluster(&req)?;
        let mut rpc = vote_request(req.into_inner())?;
        // A pre-vote never bypasses a lease.
        rpc.leadership_transfer = false;
        let resp = self.node.raft.pre_vote(rpc).await.map_err(fatal)?;
        Ok(Response::new(vote_response(&resp)))
    }

    /// One chunk of a snapshot. Chunks of one sending arrive in order; the last one hands
    /// the whole file to Raft, which installs it if the sender still leads.
    async fn install_snapshot(
        &self,
        req: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        use tokio::io::AsyncWriteExt;
        self.check_cluster(&req)?;
        let r = req.into_inner();
        let vote = codec::vote_from_pb(r.vote.as_ref().ok_or_else(|| invalid("vote"))?);
        let pb_meta = r.meta.as_ref().ok_or_else(|| invalid("meta"))?;
        let mine = self.node.raft.metrics().borrow_watched().vote;
        if mine > vote {
            // From a deposed leader: it learns of the newer vote and stops.
            return Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(codec::vote_to_pb(&mine)) }));
        }
        if mine == vote {
            // A chunk from the current leader: it is alive.
            self.node.heard_from_leader();
        }
        let storage = |e: std::io::Error| Status::internal(format!("writing a received snapshot: {e}"));
        let mut receiving = self.receiving.lock().await;
        if r.offset == 0 {
            let file = self.node.sm.begin_receiving_snapshot().map_err(Status::from)?;
            *receiving = Some(Receiving { transfer: pb_meta.snapshot_id.clone(), file, offset: 0 });
        }
        let cur = match receiving.as_mut() {
            Some(c) if c.transfer == pb_meta.snapshot_id && c.offset == r.offset => c,
            other => {
                let expected = other.as_ref().map_or("none".to_string(), |c| format!("{} at {}", c.transfer, c.offset));
                return Err(Status::failed_precondition(format!(
                    "{SNAPSHOT_MISMATCH}: expected {expected}, got {} at {}",
                    pb_meta.snapshot_id, r.offset
                )));
            }
        };
        cur.file.write_all(&r.data).await.map_err(storage)?;
        cur.offset += r.data.len() as u64;
        if !r.done {
            return Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(codec::vote_to_pb(&vote)) }));
        }
        let Some(done) = receiving.take() else {
            return Err(Status::internal("the snapshot being received vanished"));
        };
        drop(receiving);
        let mut file = done.file;
        file.flush().await.map_err(storage)?;
        let meta = codec::snapshot_meta_from_pb(pb_meta).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let resp =
            self.node.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: file }).await.map_err(fatal)?;
        Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(codec::vote_to_pb(&resp.vote)) }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.check_cluster(&req)?;
        let r = req.into_inner();
        let from = codec::vote_from_pb(r.from_leader.as_ref().ok_or_else(|| invalid("from_leader"))?);
        let rpc = TransferLeaderRequest::new(from, r.to_node_id, codec::opt_log_id_from_pb(r.last_log_id.as_ref()));
        let resp = self.node.raft.handle_transfer_leader(rpc).await.map_err(fatal)?;
        Ok(Response::new(match resp {
            Ok(()) => pb::TransferLeaderResponse::default(),
            Err(TransferLeaderError::VoteChanged { actual, .. }) => pb::TransferLeaderResponse {
                refused: TRANSFER_VOTE_CHANGED.into(),
                actual_vote: Some(codec::vote_to_pb(&actual)),
                actual_log_id: None,
            },
            Err(TransferLeaderError::LogNotFlushed { actual, .. }) => pb::TransferLeaderResponse {
                refused: TRANSFER_LOG_NOT_FLUSHED.into(),
                actual_vote: None,
                actual_log_id: codec::opt_log_id_to_pb(actual.as_ref()),
            },
        }))
    }

    async fn timeout_now(
        &self,
        _req: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        // Kept for peers that still move leadership this way: campaign at once, no pre-vote.
        self.node.raft.trigger().elect(false).await.map_err(fatal)?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let cmd = req.into_inner().command.ok_or_else(|| invalid("command"))?;
        let result = self.node.propose_local(cmd).await?;
        let raft_term = self.node.raft.metrics().borrow_watched().current_term;
        Ok(Response::new(pb::ProposeResponse { result: Some(result), raft_term }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let ttl = crate::lease::keep_alive_local(&self.node, req.into_inner().id).await?;
        Ok(Response::new(pb::LeaseKeepAliveResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = match crate::lease::time_to_live_local(&self.node, req.into_inner().id).await? {
            Some((ttl, granted_ttl)) => pb::LeaseTimeToLiveResponse { found: true, ttl, granted_ttl },
            None => pb::LeaseTimeToLiveResponse { found: false, ttl: -1, granted_ttl: 0 },
        };
        Ok(Response::new(r))
    }

    async fn change_member(
        &self,
        req: Request<pb::MemberChangeRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let change = req.into_inner().change.ok_or_else(|| invalid("change"))?;
        let member_id = self.node.change_member_local(change).await?;
        Ok(Response::new(pb::MemberChangeResponse { member_id }))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.node.move_leader_local(req.into_inner().target).await?;
        Ok(Response::new(pb::MoveLeaderResponse {}))
    }

    async fn read_index(&self, _req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        // Only the leader answers (a follower's round would ask the leader itself).
        if !self.node.is_leader() {
            return Err(crate::error::StoreError::NotLeader.into());
        }
        let index = self.node.read_index().await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }
}
