//! The etcd Maintenance service: Status, HashKV, Hash, MoveLeader, and no-op Alarm and
//! Defragment (RocksDB compacts itself). Snapshot is refused with a clear message: Flotilla
//! has no bbolt file to stream.

use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::maintenance_server::Maintenance;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::ETCD_VERSION;
use crate::node::Node;

/// The Maintenance service of one member.
pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> MaintenanceService {
        MaintenanceService { node }
    }

    fn header(&self) -> Option<ep::ResponseHeader> {
        self.node.header(self.node.sm.mvcc.revision())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _req: Request<ep::AlarmRequest>) -> Result<Response<ep::AlarmResponse>, Status> {
        Ok(Response::new(ep::AlarmResponse { header: self.header(), alarms: vec![] }))
    }

    async fn status(&self, _req: Request<ep::StatusRequest>) -> Result<Response<ep::StatusResponse>, Status> {
        let m = self.node.raft.metrics().borrow().clone();
        let is_learner = !m.membership_config.membership().voter_ids().any(|v| v == self.node.id);
        let size = self.node.sm.db.size_on_disk() as i64;
        Ok(Response::new(ep::StatusResponse {
            header: self.header(),
            version: ETCD_VERSION.into(),
            db_size: size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: vec![],
            db_size_in_use: size,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        _req: Request<ep::DefragmentRequest>,
    ) -> Result<Response<ep::DefragmentResponse>, Status> {
        Ok(Response::new(ep::DefragmentResponse { header: self.header() }))
    }

    async fn hash(&self, _req: Request<ep::HashRequest>) -> Result<Response<ep::HashResponse>, Status> {
        let rev = self.node.sm.mvcc.revision();
        let hash = self.node.sm.mvcc.hash_kv(rev)?;
        Ok(Response::new(ep::HashResponse { header: self.header(), hash }))
    }

    async fn hash_kv(&self, req: Request<ep::HashKvRequest>) -> Result<Response<ep::HashKvResponse>, Status> {
        let mvcc = &self.node.sm.mvcc;
        let rev = mvcc.check_revision(req.into_inner().revision)?;
        let hash = mvcc.hash_kv(rev)?;
        Ok(Response::new(ep::HashKvResponse {
            header: self.node.header(rev),
            hash,
            compact_revision: mvcc.compact_revision(),
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<ep::SnapshotResponse, Status>> + Send>>;

    async fn snapshot(&self, _req: Request<ep::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "flotilla: snapshot streaming in etcd's bbolt format is not supported; back up a stopped member's data dir instead",
        ))
    }

    async fn move_leader(
        &self,
        req: Request<ep::MoveLeaderRequest>,
    ) -> Result<Response<ep::MoveLeaderResponse>, Status> {
        self.node.move_leader(req.into_inner().target_id).await?;
        Ok(Response::new(ep::MoveLeaderResponse { header: self.header() }))
    }
}
