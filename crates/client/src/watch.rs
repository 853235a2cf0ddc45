//! Watches that survive the loss of a master: the stream is reopened on another master
//! from the last resourceVersion seen (events or bookmarks), so nothing is missed or
//! repeated and nothing is listed again.

use std::collections::HashSet;
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
/// How often a watch checks that its master is still healthy.
const HEALTH_CHECK: Duration = Duration::from_millis(500);

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
    rv: String,
    tx: &mpsc::Sender<Result<WatchEvent<T>, ClientError>>,
) -> Result<(), ClientError> {
    let mut progress =
        Progress::new(rv.parse().map_err(|_| ClientError::Config(format!("resourceVersion {rv:?} is not a number")))?);
    let mut health = tokio::time::interval(HEALTH_CHECK);
    loop {
        let req = pb::WatchRequest {
            kind: T::KIND.into(),
            namespace: p.namespace.clone(),
            label_selector: p.label_selector.clone(),
            field_selector: p.field_selector.clone(),
            resource_version: progress.complete.to_string(),
            allow_bookmarks: true,
        };
        let (master, mut stream) = client.open_watch(req).await?;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = tx.closed() => return Ok(()),
                _ = health.tick() => {
                    // A master cut off from the others keeps the stream open (and even
                    // sends bookmarks) but no longer sees changes: leave it once its
                    // health check fails, or when it has been silent too long.
                    if !client.pool.is_healthy(master) || last_heard.elapsed() > SILENCE {
                        client.pool.mark_bad(master);
                        break;
                    }
                    continue;
                }
            };
            last_heard = tokio::time::Instant::now();
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
            let Ok(rev) = obj.resource_version().parse::<i64>() else { continue };
            if ev.r#type == "BOOKMARK" {
                progress.bookmark(rev);
                continue;
            }
            if !progress.event(rev, format!("{}/{}", obj.namespace(), obj.name())) {
                continue; // delivered before a resumption
            }
            let out = match ev.r#type.as_str() {
                "ADDED" => WatchEvent::Added(obj),
                "MODIFIED" => WatchEvent::Modified(obj),
                "DELETED" => WatchEvent::Deleted(obj),
                _ => continue,
            };
            if tx.send(Ok(out)).await.is_err() {
                return Ok(());
            }
        }
        tracing::debug!(resource_version = progress.complete, "watch lost its master; resuming on another");
    }
}

/// What a watch has delivered, so that it resumes without gaps or repeats. Every event at
/// or below `complete` has been delivered. Several objects can change at one revision (a
/// namespace deletion), so the newest revision seen stays `partial`, with the objects
/// already delivered at it, until a later revision or a bookmark shows it is complete; a
/// resumption starts after `complete` and skips those objects.
#[derive(Debug)]
struct Progress {
    complete: i64,
    partial: Option<(i64, HashSet<String>)>,
}

impl Progress {
    fn new(complete: i64) -> Progress {
        Progress { complete, partial: None }
    }

    /// Everything up to `rev` has been sent.
    fn bookmark(&mut self, rev: i64) {
        if rev > self.complete && self.partial.as_ref().is_none_or(|(p, _)| rev >= *p) {
            self.complete = rev;
            self.partial = None;
        }
    }

    /// An event for `key` at `rev`: whether to deliver it (false: already delivered).
    fn event(&mut self, rev: i64, key: String) -> bool {
        if rev <= self.complete {
            return false;
        }
        match &mut self.partial {
            Some((p, keys)) if rev == *p => keys.insert(key),
            Some((p, _)) if rev < *p => false,
            _ => {
                if let Some((p, _)) = self.partial.take() {
                    self.complete = p;
                }
                self.partial = Some((rev, HashSet::from([key])));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    /// Three objects deleted at revision 10; the stream breaks after the first. The
    /// resumed stream (from `complete` = 9) repeats revision 10: only the two not yet
    /// delivered pass, then later revisions.
    #[test]
    fn resumption_in_the_middle_of_a_revision_repeats_and_skips_nothing() {
        let mut p = Progress::new(5);
        assert!(p.event(9, "a".into()));
        assert!(p.event(10, "x".into()));
        assert_eq!(p.complete, 9, "revision 10 may still have more events");
        // Resumed after 9: the server sends 10/x, 10/y, 10/z, 11/w.
        assert!(!p.event(10, "x".into()), "x was delivered");
        assert!(p.event(10, "y".into()));
        assert!(p.event(10, "z".into()));
        assert!(p.event(11, "w".into()));
        assert_eq!(p.complete, 10);
        assert!(!p.event(10, "y".into()) && !p.event(9, "a".into()));
    }

    #[test]
    fn bookmark_completes_the_revision_seen() {
        let mut p = Progress::new(5);
        assert!(p.event(7, "a".into()));
        p.bookmark(6);
        assert_eq!(p.complete, 5, "a bookmark behind the partial revision says nothing");
        p.bookmark(8);
        assert_eq!(p.complete, 8);
        assert!(!p.event(7, "b".into()), "at or below complete");
    }
}
