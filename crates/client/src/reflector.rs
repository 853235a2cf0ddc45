//! A reflector keeps a local cache of one kind in sync: list, then watch from the list's
//! resourceVersion (resuming across masters), and list again only when the watch's
//! version has expired. Controllers read the cache instead of the API; those that react
//! to changes (the scheduler, controllers) also take its [`Change`] notifications.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::client::{Client, ListParams};
use crate::error::ClientError;
use crate::resource::Resource;
use crate::watch::WatchEvent;

/// The cache: objects by `namespace/name`.
pub type Cache<T> = Arc<RwLock<BTreeMap<String, T>>>;

/// A change to the cache, sent after the cache holds it.
#[derive(Debug, Clone)]
pub enum Change<T> {
    /// An object appeared, or changed (`old` is its previous cached state).
    Upsert {
        /// The state before, if it was cached.
        old: Option<T>,
        /// The state now.
        new: T,
    },
    /// An object went away (its last state).
    Deleted(T),
    /// The cache was filled again from a list (the first one, or after the watch's
    /// version expired): re-read it whole.
    Listed,
}

/// A running reflector. Dropping it stops it.
pub struct Reflector<T: Resource> {
    cache: Cache<T>,
    lists: Arc<std::sync::atomic::AtomicU64>,
    synced: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn key<T: Resource>(o: &T) -> String {
    format!("{}/{}", o.namespace(), o.name())
}

impl<T: Resource> Reflector<T> {
    /// Starts keeping the objects matching `p` in a cache.
    pub fn start(client: Client, p: ListParams) -> Reflector<T> {
        Reflector::start_notifying(client, p, None)
    }

    /// Like [`Reflector::start`], and sends every change of the cache to `changes`.
    pub fn start_notifying(
        client: Client,
        p: ListParams,
        changes: Option<tokio::sync::mpsc::UnboundedSender<Change<T>>>,
    ) -> Reflector<T> {
        let cache: Cache<T> = Arc::new(RwLock::new(BTreeMap::new()));
        let (synced_tx, synced) = watch::channel(false);
        let c = cache.clone();
        let lists = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = lists.clone();
        let task = tokio::spawn(async move {
            loop {
                match sync::<T>(&client, &p, &c, &synced_tx, changes.as_ref(), &counted).await {
                    Err(ClientError::Expired(_)) => continue, // list again
                    Err(e) => {
                        tracing::warn!(kind = T::KIND, error = %e, "reflector: retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Ok(()) => return,
                }
            }
        });
        Reflector { cache, lists, synced, task }
    }

    /// Waits until the first list is in the cache.
    pub async fn wait_synced(&mut self) {
        let _ = self.synced.wait_for(|s| *s).await;
    }

    /// The cache (read it; do not write it).
    pub fn cache(&self) -> Cache<T> {
        self.cache.clone()
    }

    /// How many times it has listed (1 after the first list; each more is a relist,
    /// which a watch resumed across masters avoids).
    pub fn lists(&self) -> u64 {
        self.lists.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A counter of its lists, to read after the reflector is moved.
    pub fn list_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.lists.clone()
    }

    /// A copy of every cached object.
    pub fn snapshot(&self) -> Vec<T> {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

impl<T: Resource> Drop for Reflector<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn sync<T: Resource>(
    client: &Client,
    p: &ListParams,
    cache: &Cache<T>,
    synced: &watch::Sender<bool>,
    changes: Option<&tokio::sync::mpsc::UnboundedSender<Change<T>>>,
    lists: &std::sync::atomic::AtomicU64,
) -> Result<(), ClientError> {
    let list = client.list::<T>(p).await?;
    lists.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    {
        let mut c = cache.write().unwrap_or_else(|p| p.into_inner());
        *c = list.items.into_iter().map(|o| (key(&o), o)).collect();
    }
    let _ = synced.send(true);
    let notify = |c: Change<T>| {
        if let Some(tx) = changes {
            let _ = tx.send(c);
        }
    };
    notify(Change::Listed);
    let mut events = client.watch::<T>(p, &list.resource_version).await?;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let change = {
            let mut c = cache.write().unwrap_or_else(|p| p.into_inner());
            match ev {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    let old = c.insert(key(&o), o.clone());
                    Change::Upsert { old, new: o }
                }
                WatchEvent::Deleted(o) => {
                    c.remove(&key(&o));
                    Change::Deleted(o)
                }
            }
        };
        notify(change);
    }
    Ok(())
}
