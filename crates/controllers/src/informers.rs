//! Shared informers: one reflector per kind for the whole controller manager, however
//! many controllers read that kind, as Kubernetes' SharedInformerFactory.
//!
//! A controller [`Informer::subscribe`]s to the kinds it needs and gets every change of
//! the cache from then on. A subscriber that joins after the first list gets a
//! [`Change::Listed`] first (re-read the cache whole): the cache already holds every
//! change it missed, so it loses nothing. The informers outlive the controllers: a
//! candidate keeps them warm while it waits for the lock, and the controllers of each
//! term subscribe afresh.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_client::reflector::Cache;
use flotilla_client::{Change, Client, ListParams, Reflector, Resource};
use tokio::sync::{mpsc, watch};

type Subscribers<T> = Arc<Mutex<Vec<mpsc::UnboundedSender<Change<T>>>>>;

/// One kind's reflector and the controllers subscribed to its changes.
pub struct Informer<T: Resource> {
    reflector: Reflector<T>,
    subscribers: Subscribers<T>,
    synced: watch::Receiver<bool>,
    fanout: tokio::task::JoinHandle<()>,
}

impl<T: Resource> Informer<T> {
    /// Starts a reflector over every object of the kind.
    pub fn start(client: Client) -> Informer<T> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Change<T>>();
        let reflector = Reflector::<T>::start_notifying(client, ListParams::default(), Some(tx));
        let subscribers: Subscribers<T> = Arc::default();
        let (synced_tx, synced) = watch::channel(false);
        let subs = subscribers.clone();
        let fanout = tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if matches!(c, Change::Listed) {
                    let _ = synced_tx.send(true);
                }
                let mut subs = subs.lock().unwrap_or_else(|p| p.into_inner());
                subs.retain(|s| s.send(c.clone()).is_ok());
            }
        });
        Informer { reflector, subscribers, synced, fanout }
    }

    /// The cache (read it; do not write it).
    pub fn cache(&self) -> Cache<T> {
        self.reflector.cache()
    }

    /// Every change from now on; first a [`Change::Listed`] if the cache is already
    /// filled. Dropping the receiver unsubscribes.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change<T>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock the fan-out task takes: no change falls between this Listed and
        // the first change sent to the new subscriber.
        if *self.synced.borrow() {
            let _ = tx.send(Change::Listed);
        }
        subs.push(tx);
        rx
    }

    /// Waits until the cache holds its first list.
    pub async fn wait_synced(&self) {
        let mut s = self.synced.clone();
        let _ = s.wait_for(|s| *s).await;
    }

    /// Whether the cache holds its first list.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }
}

impl<T: Resource> Drop for Informer<T> {
    fn drop(&mut self) {
        self.fanout.abort();
    }
}

/// The informers of one controller manager, each kind started when first asked for.
pub struct Informers {
    client: Client,
    kinds: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Informers {
    /// No informers yet; they read through `client` (unfenced: reads carry no token).
    pub fn new(client: Client) -> Informers {
        Informers { client, kinds: Mutex::default() }
    }

    /// The informer of kind `T`, started on first use.
    pub fn get<T: Resource>(&self) -> Arc<Informer<T>> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let any = kinds
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(Informer::<T>::start(self.client.clone())) as Arc<dyn Any + Send + Sync>)
            .clone();
        match any.downcast::<Informer<T>>() {
            Ok(i) => i,
            // The map is keyed by the type it holds.
            Err(_) => unreachable!("informer map holds another kind under {}", T::KIND),
        }
    }
}
