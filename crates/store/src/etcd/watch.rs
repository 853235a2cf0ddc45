//! The etcd Watch service: one bidirectional stream carries many watches.
//!
//! Each watch runs as a task reading a [`crate::watch::Cursor`] and writing responses into
//! the stream's bounded outbound queue, so a client that stops reading stalls only its own
//! watches (which then fall back to reading history from disk) and never grows memory.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::keys::KeyRange;
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::watch_server::Watch;
use flotilla_proto::mvccpb::event::EventType;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::StoreError;
use crate::node::Node;
use crate::watch::{Cursor, Next};

/// Responses queued per stream before watch tasks wait for the client.
const OUTBOUND: usize = 128;
/// Interval of progress notifications for watches that asked for them (etcd's default).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// The Watch service of one member.
pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> WatchService {
        WatchService { node }
    }
}

type Out = mpsc::Sender<Result<ep::WatchResponse, Status>>;

struct Spec {
    id: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

/// Runs one watch. `delivered` is the revision up to which every event has been queued
/// for the client (what a progress notification may claim).
async fn run_watch(node: Arc<Node>, spec: Spec, mut cursor: Cursor, delivered: Arc<AtomicI64>, out: Out) {
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    node.metrics.watchers.inc();
    let _guard = scopeguard(node.clone());
    loop {
        let next = tokio::select! {
            n = cursor.next() => n,
            _ = progress.tick(), if spec.progress_notify => {
                let resp = ep::WatchResponse { header: node.header(cursor.next_revision() - 1), watch_id: spec.id, ..Default::default() };
                if out.send(Ok(resp)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        match next {
            Ok(Next::Events(mut events, rev)) => {
                events.retain(|e| {
                    let put = e.r#type == EventType::Put as i32;
                    !(put && spec.no_put || !put && spec.no_delete)
                });
                if !spec.prev_kv {
                    for e in &mut events {
                        e.prev_kv = None;
                    }
                }
                if !events.is_empty() {
                    progress.reset();
                    let resp =
                        ep::WatchResponse { header: node.header(rev), watch_id: spec.id, events, ..Default::default() };
                    if out.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
                delivered.store(rev, Ordering::Release);
            }
            Ok(Next::Compacted(compact)) => {
                let resp = ep::WatchResponse {
                    header: node.header(node.sm.mvcc.revision()),
                    watch_id: spec.id,
                    canceled: true,
                    compact_revision: compact,
                    cancel_reason: StoreError::Compacted { compact_revision: compact }.to_string(),
                    ..Default::default()
                };
                let _ = out.send(Ok(resp)).await;
                return;
            }
            Err(e) => {
                let resp = ep::WatchResponse {
                    header: node.header(node.sm.mvcc.revision()),
                    watch_id: spec.id,
                    canceled: true,
                    cancel_reason: e.to_string(),
                    ..Default::default()
                };
                let _ = out.send(Ok(resp)).await;
                return;
            }
        }
    }
}

/// Decrements the watcher gauge when a watch task ends, however it ends.
struct WatcherGauge(Arc<Node>);
impl Drop for WatcherGauge {
    fn drop(&mut self) {
        self.0.metrics.watchers.dec();
    }
}
fn scopeguard(node: Arc<Node>) -> WatcherGauge {
    WatcherGauge(node)
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<ep::WatchResponse, Status>> + Send>>;

    async fn watch(&self, req: Request<Streaming<ep::WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut watches: HashMap<i64, (tokio::task::JoinHandle<()>, Arc<AtomicI64>)> = HashMap::new();
            let mut next_id: i64 = 0;
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                use ep::watch_request::RequestUnion;
                match msg.request_union {
                    Some(RequestUnion::CreateRequest(c)) => {
                        watches.retain(|_, (h, _)| !h.is_finished());
                        let id = if c.watch_id != 0 {
                            c.watch_id
                        } else {
                            while watches.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        if c.key.is_empty() || watches.contains_key(&id) {
                            let reason = if c.key.is_empty() {
                                "etcdserver: key is not provided"
                            } else {
                                "etcdserver: duplicate watch id"
                            };
                            let resp = ep::WatchResponse {
                                header: node.header(node.sm.mvcc.revision()),
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: reason.into(),
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        use ep::watch_create_request::FilterType;
                        // The cursor fixes its start revision now, before the client hears
                        // "created": a write the client makes after that is always seen.
                        let cursor = node.sm.hub.watch(KeyRange::from_etcd(&c.key, &c.range_end), c.start_revision);
                        let header = node.header(cursor.next_revision() - 1);
                        let delivered = Arc::new(AtomicI64::new(cursor.next_revision() - 1));
                        let spec = Spec {
                            id,
                            prev_kv: c.prev_kv,
                            no_put: c.filters.contains(&(FilterType::Noput as i32)),
                            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
                            progress_notify: c.progress_notify,
                        };
                        let created = ep::WatchResponse { header, watch_id: id, created: true, ..Default::default() };
                        if tx.send(Ok(created)).await.is_err() {
                            break;
                        }
                        let task = tokio::spawn(run_watch(node.clone(), spec, cursor, delivered.clone(), tx.clone()));
                        watches.insert(id, (task, delivered));
                    }
                    Some(RequestUnion::CancelRequest(c)) => {
                        if let Some((h, _)) = watches.remove(&c.watch_id) {
                            h.abort();
                            let resp = ep::WatchResponse {
                                header: node.header(node.sm.mvcc.revision()),
                                watch_id: c.watch_id,
                                canceled: true,
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        let resp = ep::WatchResponse {
                            header: node.header(node.sm.mvcc.revision()),
                            watch_id: -1,
                            ..Default::default()
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                    None => {}
                }
            }
            for (_, (h, _)) in watches {
                h.abort();
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
