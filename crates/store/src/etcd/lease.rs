//! The etcd Lease service: grant, revoke, keep-alive (stream), time-to-live, list.
//! Deadlines live on the leader (see [`crate::lease`]), so keep-alive and time-to-live are
//! answered by the leader wherever they arrive.

use std::pin::Pin;
use std::sync::Arc;

use flotilla_core::limits::{MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS};
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::lease_server::Lease;
use flotilla_proto::raft as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::StoreError;
use crate::node::Node;

/// The Lease service of one member.
pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> LeaseService {
        LeaseService { node }
    }
}

/// Renews lease `id` on the leader; `Ok(0)` if the lease is unknown.
async fn keep_alive(node: &Node, id: i64) -> Result<i64, StoreError> {
    if node.lessor.is_active() {
        return crate::lease::keep_alive_local(node, id).await;
    }
    let mut client = node.peer_client(node.leader().ok_or(StoreError::NoLeader)?)?;
    let mut req = tonic::Request::new(pb::LeaseKeepAliveRequest { id });
    req.set_timeout(node.config.request_timeout);
    let r = client
        .lease_keep_alive(req)
        .await
        .map_err(|s| StoreError::Remote { code: s.code() as i32, message: s.message().into() })?;
    Ok(r.into_inner().ttl)
}

/// `(remaining, granted)` of lease `id` from the leader, or `None` if unknown.
async fn time_to_live(node: &Node, id: i64) -> Result<Option<(i64, i64)>, StoreError> {
    if node.lessor.is_active() {
        return crate::lease::time_to_live_local(node, id).await;
    }
    let mut client = node.peer_client(node.leader().ok_or(StoreError::NoLeader)?)?;
    let mut req = tonic::Request::new(pb::LeaseTimeToLiveRequest { id });
    req.set_timeout(node.config.request_timeout);
    let r = client
        .lease_time_to_live(req)
        .await
        .map_err(|s| StoreError::Remote { code: s.code() as i32, message: s.message().into() })?
        .into_inner();
    Ok(r.found.then_some((r.ttl, r.granted_ttl)))
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<ep::LeaseGrantRequest>,
    ) -> Result<Response<ep::LeaseGrantResponse>, Status> {
        let r = req.into_inner();
        if r.ttl > MAX_LEASE_TTL_SECS {
            return Err(StoreError::LeaseTtlTooLarge.into());
        }
        if r.id < 0 {
            return Err(StoreError::InvalidArgument("etcdserver: lease ID must be positive".into()).into());
        }
        let ttl = r.ttl.max(MIN_LEASE_TTL_SECS);
        let mut attempts = 0;
        loop {
            let id = if r.id != 0 { r.id } else { (rand::random::<u64>() >> 1).max(1) as i64 };
            let cmd = pb::Command { kind: Some(pb::command::Kind::LeaseGrant(ep::LeaseGrantRequest { ttl, id })) };
            match self.node.propose(cmd).await {
                Ok(pb::CommandResult { kind: Some(pb::command_result::Kind::LeaseGrant(mut g)) }) => {
                    self.node.fix_header(&mut g.header);
                    return Ok(Response::new(g));
                }
                // A randomly chosen id collided: choose another.
                Err(StoreError::Remote { message, .. })
                    if r.id == 0 && attempts < 3 && message == StoreError::LeaseExists.to_string() =>
                {
                    attempts += 1;
                }
                Err(e) => return Err(e.into()),
                Ok(_) => return Err(StoreError::Fatal("apply returned a result of the wrong kind".into()).into()),
            }
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<ep::LeaseRevokeRequest>,
    ) -> Result<Response<ep::LeaseRevokeResponse>, Status> {
        let r = req.into_inner();
        let cmd = pb::Command { kind: Some(pb::command::Kind::LeaseRevoke(r)) };
        match self.node.propose(cmd).await? {
            pb::CommandResult { kind: Some(pb::command_result::Kind::LeaseRevoke(mut g)) } => {
                self.node.fix_header(&mut g.header);
                Ok(Response::new(g))
            }
            _ => Err(StoreError::Fatal("apply returned a result of the wrong kind".into()).into()),
        }
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<ep::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<ep::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                let resp = match keep_alive(&node, msg.id).await {
                    Ok(ttl) => {
                        Ok(ep::LeaseKeepAliveResponse { header: node.header(node.sm.mvcc.revision()), id: msg.id, ttl })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let stop = resp.is_err();
                if tx.send(resp).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<ep::LeaseTimeToLiveRequest>,
    ) -> Result<Response<ep::LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        let header = self.node.header(self.node.sm.mvcc.revision());
        let Some((ttl, granted_ttl)) = time_to_live(&self.node, r.id).await? else {
            return Ok(Response::new(ep::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            }));
        };
        let keys = if r.keys {
            self.node.linearizable_barrier().await?;
            self.node.sm.mvcc.lease_keys(r.id)?
        } else {
            vec![]
        };
        Ok(Response::new(ep::LeaseTimeToLiveResponse { header, id: r.id, ttl, granted_ttl, keys }))
    }

    async fn lease_leases(
        &self,
        _req: Request<ep::LeaseLeasesRequest>,
    ) -> Result<Response<ep::LeaseLeasesResponse>, Status> {
        self.node.linearizable_barrier().await?;
        let leases = self.node.sm.mvcc.leases()?.into_iter().map(|(id, _)| ep::LeaseStatus { id }).collect();
        Ok(Response::new(ep::LeaseLeasesResponse { header: self.node.header(self.node.sm.mvcc.revision()), leases }))
    }
}
