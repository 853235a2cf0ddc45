//! Watches that survive the loss of a master: the stream is reopened on another master
//! from the last resourceVersion seen (events or bookmarks), so nothing is missed or
//! repeated and nothing is listed again.

use std::time::Duration;

use flotilla_proto::api as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::client::{Client, ListParams};
use crate::error::{is_transport, ClientError};
use crate::resource::Resource;

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    /// The object appeared (or started to match the selectors).
    Added(T),
    /// The object changed.
    Modified(T),
    /// The object went away (or stopped matching); its last state.
    Deleted(T),
}

impl<T: Resource> WatchEvent<T> {
    /// The object of the event.
    pub fn object(&self) -> &T {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }
}

/// How long a watch may stay silent (no event, no bookmark) before its master is
/// considered lost; the server sends bookmarks every 5 s.
const SILENCE: Duration = Duration::from_secs(8);

impl Client {
    /// Watches objects of `T` matching `p` after `resource_version` (empty: from now, that
    /// is, every change made after this call returns). The stream ends only with an error
    /// the caller must act on (`Expired`: list again).
    pub async fn watch<T: Resource>(
        &self,
        p: &ListParams,
        resource_version: &str,
    ) -> Result<ReceiverStream<Result<WatchEvent<T>, ClientError>>, ClientError> {
        let mut rv = resource_version.to_string();
        if rv.is_empty() {
            // "Now" made exact (a linearizable read's revision), so that a resumption
            // cannot skip what happened before the first event.
            let page = self
                .list_page(pb::ListRequest {
                    kind: T::KIND.into(),
                    namespace: p.namespace.clone(),
                    limit: 1,
                    ..Default::default()
                })
                .await?;
            rv = page.resource_version;
        }
        let (tx, rx) = mpsc::channel(256);
        let (client, p) = (self.clone(), p.clone());
        tokio::spawn(async move {
            if let Err(e) = run_watch::<T>(&client, &p, rv, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

async fn run_watch<T: Resource>(
    client: &Client,
    p: &ListParams,
    mut rv: String,
    tx: &mpsc::Sender<Result<WatchEvent<T>, ClientError>>,
) -> Result<(), ClientError> {
    loop {
        let req = pb::WatchRequest {
            kind: T::KIND.into(),
            namespace: p.namespace.clone(),
            label_selector: p.label_selector.clone(),
            field_selector: p.field_selector.clone(),
            resource_version: rv.clone(),
            allow_bookmarks: true,
        };
        let (master, mut stream) = client.open_watch(req).await?;
        loop {
            // Silent too long (None): the master is gone or cut off.
            let item = tokio::time::timeout(SILENCE, stream.next()).await.unwrap_or_default();
            let ev = match item {
                None => {
                    client.pool.mark_bad(master);
                    break;
                }
                Some(Err(s)) if s.code() == Code::OutOfRange => return Err(ClientError::Expired(s.message().into())),
                Some(Err(s)) if is_transport(&s) => {
                    client.pool.mark_bad(master);
                    break;
                }
                Some(Err(s)) => return Err(ClientError::Api(s)),
                Some(Ok(ev)) => ev,
            };
            let Some(obj) = ev.object.and_then(|o| o.kind) else { continue };
            let Some(obj) = T::from_object(obj) else { continue };
            rv = obj.resource_version().to_string();
            let out = match ev.r#type.as_str() {
                "ADDED" => WatchEvent::Added(obj),
                "MODIFIED" => WatchEvent::Modified(obj),
                "DELETED" => WatchEvent::Deleted(obj),
                _ => continue, // BOOKMARK: progress only
            };
            if tx.send(Ok(out)).await.is_err() {
                return Ok(());
            }
        }
        tracing::debug!(resource_version = %rv, "watch lost its master; resuming on another");
    }
}
