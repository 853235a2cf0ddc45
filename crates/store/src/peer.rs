//! Raft peer networking, server side: the `flotilla.raft.v1.RaftPeer` service that other
//! members call (Raft RPCs, and requests forwarded to the leader).

use std::sync::Arc;

use flotilla_proto::raft as pb;
use flotilla_proto::raft::raft_peer_server::RaftPeer;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::network::SNAPSHOT_MISMATCH;
use crate::node::Node;

/// The peer service of one member.
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    /// Serves `node` to its peers.
    pub fn new(node: Arc<Node>) -> PeerService {
        PeerService { node }
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
        let rpc = AppendEntriesRequest {
            vote: codec::vote_from_pb(r.vote.as_ref().ok_or_else(|| invalid("vote"))?),
            prev_log_id: codec::opt_log_id_from_pb(r.prev_log_id.as_ref()),
            entries,
            leader_commit: codec::opt_log_id_from_pb(r.leader_commit.as_ref()),
        };
        // From the leader this member follows: it is alive, whether or not the answer
        // reaches it in time. (The leader gives up on an answer after one heartbeat
        // interval; when appending takes longer — a busy CPU, a slow fsync — the work is
        // done but the answer is dropped. Counting only answered requests as signs of
        // life made such a follower campaign against a healthy leader, as etcd's
        // followers do not: they reset their election clock when a message arrives.)
        if rpc.vote.is_committed() && self.node.raft.metrics().borrow().vote == rpc.vote {
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
        let r = req.into_inner();
        let rpc = VoteRequest {
            vote: codec::vote_from_pb(r.vote.as_ref().ok_or_else(|| invalid("vote"))?),
            last_log_id: codec::opt_log_id_from_pb(r.last_log_id.as_ref()),
        };
        let resp = self.node.raft.vote(rpc).await.map_err(fatal)?;
        Ok(Response::new(pb::VoteResponse {
            vote: Some(codec::vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: codec::opt_log_id_to_pb(resp.last_log_id.as_ref()),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        self.check_cluster(&req)?;
        let r = req.into_inner();
        let rpc = InstallSnapshotRequest {
            vote: codec::vote_from_pb(r.vote.as_ref().ok_or_else(|| invalid("vote"))?),
            meta: codec::snapshot_meta_from_pb(r.meta.as_ref().ok_or_else(|| invalid("meta"))?),
            offset: r.offset,
            data: r.data,
            done: r.done,
        };
        let vote = rpc.vote;
        match self.node.raft.install_snapshot(rpc).await {
            Ok(resp) => {
                if resp.vote == vote {
                    // A chunk accepted from the current leader: it is alive.
                    self.node.heard_from_leader();
                }
                Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(codec::vote_to_pb(&resp.vote)) }))
            }
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                Err(Status::failed_precondition(format!("{SNAPSHOT_MISMATCH}: {m}")))
            }
            Err(e) => Err(fatal(e)),
        }
    }

    async fn timeout_now(
        &self,
        _req: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        self.node.raft.trigger().elect().await.map_err(fatal)?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }

    async fn propose(&self, req: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let cmd = req.into_inner().command.ok_or_else(|| invalid("command"))?;
        let result = self.node.propose_local(cmd).await?;
        let raft_term = self.node.raft.metrics().borrow().current_term;
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
