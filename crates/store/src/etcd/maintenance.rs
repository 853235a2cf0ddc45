//! The etcd Maintenance service: Status, HashKV, Hash, MoveLeader, Snapshot, and no-op
//! Alarm and Defragment (RocksDB compacts itself). Snapshot streams this member's state
//! machine in Flotilla's snapshot format (not etcd's bbolt file): `etcdctl snapshot save`
//! and `flotctl cluster snapshot save` store it; it is not for `etcdctl snapshot restore`.

use openraft::async_runtime::WatchReceiver;
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
        let m = self.node.raft.metrics().borrow_watched().clone();
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
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = self.node.clone();
        let header = self.header();
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(SNAPSHOT_CHUNK), header };
            let res = node.sm.export(&mut w).and_then(|_| w.finish());
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<ep::MoveLeaderRequest>,
    ) -> Result<Response<ep::MoveLeaderResponse>, Status> {
        self.node.move_leader(req.into_inner().target_id).await?;
        Ok(Response::new(ep::MoveLeaderResponse { header: self.header() }))
    }
}

/// Bytes per streamed snapshot message.
const SNAPSHOT_CHUNK: usize = 256 * 1024;

/// How long a snapshot waits for a client that stopped reading before giving up.
const SNAPSHOT_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Cuts a snapshot being written into stream messages. Every message but the last has
/// `remaining_bytes` 1 (the size is not known in advance); the last has 0, so a client
/// can tell a complete snapshot from a cut one.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<ep::SnapshotResponse, Status>>,
    buf: Vec<u8>,
    header: Option<ep::ResponseHeader>,
}

impl ChunkWriter {
    fn send(&mut self, last: bool) -> std::io::Result<()> {
        use tokio::sync::mpsc::error::TrySendError;
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        let mut msg = Ok(ep::SnapshotResponse { header: self.header, remaining_bytes: u64::from(!last), blob });
        let deadline = std::time::Instant::now() + SNAPSHOT_STALL;
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(std::io::Error::other("the client went away")),
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return Err(std::io::Error::other("the client stopped reading")),
            }
        }
    }

    fn finish(mut self) -> Result<(), crate::StoreError> {
        self.send(true).map_err(|e| crate::StoreError::Storage(e.to_string()))
    }
}

impl crate::state_machine::SnapshotSink for ChunkWriter {
    fn revision(&mut self, revision: i64) {
        if let Some(h) = &mut self.header {
            h.revision = revision;
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= SNAPSHOT_CHUNK {
            self.send(false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
