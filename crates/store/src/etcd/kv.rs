//! The etcd KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::kv_server::Kv;
use flotilla_proto::raft as pb;
use tonic::{Request, Response, Status};

use super::validate;
use crate::error::StoreError;
use crate::node::Node;

/// The KV service of one member.
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> KvService {
        KvService { node }
    }

    async fn propose(&self, kind: pb::command::Kind) -> Result<pb::command_result::Kind, StoreError> {
        let r = self.node.propose(pb::Command { kind: Some(kind) }).await?;
        r.kind.ok_or_else(|| StoreError::Fatal("apply returned no result".into()))
    }
}

fn unexpected() -> Status {
    StoreError::Fatal("apply returned a result of the wrong kind".into()).into()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<ep::RangeRequest>) -> Result<Response<ep::RangeResponse>, Status> {
        let r = req.into_inner();
        validate::range(&r)?;
        if !r.serializable {
            self.node.linearizable_barrier().await?;
        }
        let mut resp = self.node.sm.mvcc.range(&r)?;
        self.node.fix_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<ep::PutRequest>) -> Result<Response<ep::PutResponse>, Status> {
        let p = req.into_inner();
        validate::size(&p)?;
        validate::put(&p)?;
        match self.propose(pb::command::Kind::Put(p)).await? {
            pb::command_result::Kind::Put(mut r) => {
                self.node.fix_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<ep::DeleteRangeRequest>,
    ) -> Result<Response<ep::DeleteRangeResponse>, Status> {
        let d = req.into_inner();
        validate::size(&d)?;
        validate::delete_range(&d)?;
        match self.propose(pb::command::Kind::DeleteRange(d)).await? {
            pb::command_result::Kind::DeleteRange(mut r) => {
                self.node.fix_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, req: Request<ep::TxnRequest>) -> Result<Response<ep::TxnResponse>, Status> {
        let t = req.into_inner();
        validate::size(&t)?;
        validate::txn(&t)?;
        if validate::txn_is_read_only(&t) {
            if !validate::txn_is_serializable(&t) {
                self.node.linearizable_barrier().await?;
            }
            // Evaluated against the local state, nothing written: the batch is discarded.
            let cmd = pb::Command { kind: Some(pb::command::Kind::Txn(t)) };
            let applied = self.node.sm.mvcc.evaluate_read_only(&cmd)?;
            return match applied.result.kind {
                Some(pb::command_result::Kind::Txn(mut r)) => {
                    self.node.fix_header(&mut r.header);
                    Ok(Response::new(r))
                }
                Some(pb::command_result::Kind::Error(e)) => {
                    Err(StoreError::Remote { code: e.code, message: e.message }.into())
                }
                _ => Err(unexpected()),
            };
        }
        match self.propose(pb::command::Kind::Txn(t)).await? {
            pb::command_result::Kind::Txn(mut r) => {
                self.node.fix_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn compact(&self, req: Request<ep::CompactionRequest>) -> Result<Response<ep::CompactionResponse>, Status> {
        let c = req.into_inner();
        match self.propose(pb::command::Kind::Compaction(c)).await? {
            pb::command_result::Kind::Compaction(mut r) => {
                self.node.fix_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }
}
