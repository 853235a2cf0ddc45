//! The etcd Cluster service: member list, add (voter or learner), remove, update, promote.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::cluster_server::Cluster;
use flotilla_proto::raft as pb;
use tonic::{Request, Response, Status};

use crate::error::StoreError;
use crate::node::Node;

/// The Cluster service of one member.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> ClusterService {
        ClusterService { node }
    }

    /// Every member, as this member's Raft membership has it.
    fn members(&self) -> Vec<ep::Member> {
        let m = self.node.raft.metrics().borrow_watched().membership_config.clone();
        let voters: Vec<u64> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, n)| ep::Member {
                id: *id,
                name: n.name.clone(),
                peer_ur_ls: n.peer_urls.clone(),
                client_ur_ls: n.client_urls.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Waits (briefly) until this member's membership reflects a change made on the leader.
    async fn await_local(&self, done: impl Fn(&[ep::Member]) -> bool) {
        let mut rx = self.node.raft.server_metrics();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !done(&self.members()) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    fn header(&self) -> Option<ep::ResponseHeader> {
        self.node.header(self.node.sm.mvcc.revision())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<ep::MemberAddRequest>) -> Result<Response<ep::MemberAddResponse>, Status> {
        let r = req.into_inner();
        if r.peer_ur_ls.is_empty() {
            return Err(StoreError::MemberBadUrls.into());
        }
        let change = pb::member_change_request::Change::Add(pb::AddMember {
            peer_urls: r.peer_ur_ls.clone(),
            is_learner: r.is_learner,
        });
        let id = self.node.change_member(change).await?;
        self.await_local(|ms| ms.iter().any(|m| m.id == id)).await;
        let member = ep::Member {
            id,
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls,
            client_ur_ls: vec![],
            is_learner: r.is_learner,
        };
        Ok(Response::new(ep::MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<ep::MemberRemoveRequest>,
    ) -> Result<Response<ep::MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        self.node.change_member(pb::member_change_request::Change::Remove(id)).await?;
        self.await_local(|ms| ms.iter().all(|m| m.id != id)).await;
        Ok(Response::new(ep::MemberRemoveResponse { header: self.header(), members: self.members() }))
    }

    async fn member_update(
        &self,
        req: Request<ep::MemberUpdateRequest>,
    ) -> Result<Response<ep::MemberUpdateResponse>, Status> {
        let r = req.into_inner();
        let current = self.node.member(r.id).ok_or(StoreError::MemberNotFound)?;
        for u in &r.peer_ur_ls {
            flotilla_core::cluster::Url::parse(u).map_err(|_| StoreError::MemberBadUrls)?;
        }
        let updated = pb::Member { name: current.name, peer_urls: r.peer_ur_ls, client_urls: current.client_urls };
        self.node
            .change_member(pb::member_change_request::Change::Update(pb::UpdateMember {
                id: r.id,
                member: Some(updated),
            }))
            .await?;
        Ok(Response::new(ep::MemberUpdateResponse { header: self.header(), members: self.members() }))
    }

    async fn member_list(
        &self,
        _req: Request<ep::MemberListRequest>,
    ) -> Result<Response<ep::MemberListResponse>, Status> {
        Ok(Response::new(ep::MemberListResponse { header: self.header(), members: self.members() }))
    }

    async fn member_promote(
        &self,
        req: Request<ep::MemberPromoteRequest>,
    ) -> Result<Response<ep::MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        self.node.change_member(pb::member_change_request::Change::Promote(id)).await?;
        self.await_local(|ms| ms.iter().any(|m| m.id == id && !m.is_learner)).await;
        Ok(Response::new(ep::MemberPromoteResponse { header: self.header(), members: self.members() }))
    }
}
