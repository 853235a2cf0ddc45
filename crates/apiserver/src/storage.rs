//! What the apiserver needs from the store, behind a trait: ranges, transactions and
//! watches over the etcd v3 data model. [`LocalStore`] serves it from the store running
//! in the same master process (no network hop); reads are linearizable (ReadIndex) unless
//! the request asks for a serializable one.

use std::sync::Arc;

use flotilla_core::keys::KeyRange;
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::mvccpb::Event;
use flotilla_proto::raft as rpb;
use flotilla_store::node::Node;
use flotilla_store::watch::{Cursor, Next};
use flotilla_store::StoreError;

use crate::error::ApiError;

/// What a watch feed yields next.
pub enum Feed {
    /// Events of one or more revisions, and the revision they bring the watcher up to
    /// (possibly with no events that match, as progress).
    Events(Vec<Event>, i64),
    /// The requested start revision was compacted away; the compact revision.
    Compacted(i64),
}

/// A stream of changes under a prefix.
#[tonic::async_trait]
pub trait WatchFeed: Send {
    /// Waits for the next changes.
    async fn next(&mut self) -> Result<Feed, ApiError>;
}

/// The store operations the resource API is built from.
#[tonic::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// A range read (linearizable unless `req.serializable`).
    async fn range(&self, req: ep::RangeRequest) -> Result<ep::RangeResponse, ApiError>;
    /// A transaction, replicated.
    async fn txn(&self, req: ep::TxnRequest) -> Result<ep::TxnResponse, ApiError>;
    /// Changes to keys starting with `prefix` from revision `start` (0: from now).
    fn watch(&self, prefix: &[u8], start: i64) -> Box<dyn WatchFeed>;
    /// The newest revision this member has applied.
    fn revision(&self) -> i64;
    /// Grants a store lease of `ttl` seconds (keys written with it go when it expires);
    /// its id.
    async fn lease_grant(&self, ttl: i64) -> Result<i64, ApiError>;
}

/// [`Storage`] on the store of this master process.
pub struct LocalStore {
    node: Arc<Node>,
}

impl LocalStore {
    /// Serves from `node`.
    pub fn new(node: Arc<Node>) -> LocalStore {
        LocalStore { node }
    }
}

struct LocalFeed(Cursor);

#[tonic::async_trait]
impl WatchFeed for LocalFeed {
    async fn next(&mut self) -> Result<Feed, ApiError> {
        Ok(match self.0.next().await? {
            Next::Events(events, rev) => Feed::Events(events, rev),
            Next::Compacted(c) => Feed::Compacted(c),
        })
    }
}

#[tonic::async_trait]
impl Storage for LocalStore {
    async fn range(&self, req: ep::RangeRequest) -> Result<ep::RangeResponse, ApiError> {
        if !req.serializable {
            self.node.linearizable_barrier().await?;
        }
        Ok(self.node.sm.mvcc.range(&req)?)
    }

    async fn txn(&self, req: ep::TxnRequest) -> Result<ep::TxnResponse, ApiError> {
        let r = self.node.propose(rpb::Command { kind: Some(rpb::command::Kind::Txn(req)) }).await?;
        match r.kind {
            Some(rpb::command_result::Kind::Txn(t)) => Ok(t),
            Some(rpb::command_result::Kind::Error(e)) => {
                Err(StoreError::Remote { code: e.code, message: e.message }.into())
            }
            other => Err(ApiError::Internal(format!("a transaction applied to {other:?}"))),
        }
    }

    fn watch(&self, prefix: &[u8], start: i64) -> Box<dyn WatchFeed> {
        let range = KeyRange::from_etcd(prefix, &flotilla_core::keys::prefix_end(prefix));
        Box::new(LocalFeed(self.node.sm.hub.watch(range, start)))
    }

    fn revision(&self) -> i64 {
        self.node.sm.mvcc.revision()
    }

    async fn lease_grant(&self, ttl: i64) -> Result<i64, ApiError> {
        let id = (rand_id() >> 1).max(1) as i64;
        let cmd = rpb::Command { kind: Some(rpb::command::Kind::LeaseGrant(ep::LeaseGrantRequest { id, ttl })) };
        match self.node.propose(cmd).await?.kind {
            Some(rpb::command_result::Kind::LeaseGrant(g)) => Ok(g.id),
            other => Err(ApiError::Internal(format!("a lease grant applied to {other:?}"))),
        }
    }
}

/// A random lease id (the store refuses a duplicate; the caller may try again).
fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    u64::from_le_bytes(b)
}
