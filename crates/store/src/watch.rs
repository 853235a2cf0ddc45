//! The watch hub: fans applied events out to watchers, with history replay.
//!
//! A watcher starts in *catch-up*: it reads events from the MVCC history, in bounded
//! batches, from the revision it wants up to the current one. When it has caught up it
//! registers with the hub under the hub's lock, which apply also takes to publish a new
//! revision, so no revision can fall between the replay and the live feed: no gap and no
//! duplicate. Live events go through a small bounded buffer per watcher; a watcher whose
//! buffer is full is dropped back to catch-up (reading from disk), so a slow consumer costs
//! bounded memory and never slows apply. A watcher whose next revision has been compacted
//! is cancelled with the compact revision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_core::keys::KeyRange;
use flotilla_proto::mvccpb::Event;
use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::mvcc::Mvcc;

/// Live event batches buffered per watcher before it is dropped back to catch-up.
pub const LIVE_BUFFER: usize = 64;
/// Revisions read from history per catch-up step.
pub const CATCH_UP_REVISIONS: i64 = 1000;

/// Events of one revision, shared by every watcher that sees them.
pub type EventBatch = Arc<Vec<Event>>;

struct Live {
    range: KeyRange,
    tx: mpsc::Sender<(i64, EventBatch)>,
}

/// See the module docs.
pub struct WatchHub {
    mvcc: Arc<Mvcc>,
    live: Mutex<HashMap<u64, Live>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// What a watcher receives next.
pub enum Next {
    /// Events (all of one or more revisions, in order), and the revision they bring the
    /// watcher up to.
    Events(Vec<Event>, i64),
    /// The watcher's next revision was compacted away.
    Compacted(i64),
}

/// One watcher's cursor over the hub.
pub struct Cursor {
    hub: Arc<WatchHub>,
    id: u64,
    range: KeyRange,
    next: i64,
    live: Option<mpsc::Receiver<(i64, EventBatch)>>,
}

impl WatchHub {
    /// A hub over `mvcc`.
    pub fn new(mvcc: Arc<Mvcc>) -> Arc<WatchHub> {
        Arc::new(WatchHub { mvcc, live: Mutex::new(HashMap::new()), next_id: 1.into() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a new revision and fans its events out. Called by apply after the batch
    /// holding them is written.
    pub fn publish(&self, revision: i64, compact: i64, events: Vec<Event>) {
        let mut live = self.lock();
        self.mvcc.publish(revision, compact);
        if events.is_empty() {
            return;
        }
        let batch: EventBatch = Arc::new(events);
        live.retain(|_, w| {
            let mine = batch.iter().any(|e| e.kv.as_ref().is_some_and(|kv| w.range.contains(&kv.key)));
            if !mine {
                return true;
            }
            // Full or closed: drop it; the watcher resumes from disk.
            w.tx.try_send((revision, batch.clone())).is_ok()
        });
    }

    /// Drops every live watcher back to catch-up (after a snapshot replaced the state).
    pub fn resync_all(&self) {
        self.lock().clear();
    }

    /// Number of live watchers.
    pub fn live_count(&self) -> usize {
        self.lock().len()
    }

    /// A cursor over `range` starting at `start` (0 = only changes after now).
    pub fn watch(self: &Arc<Self>, range: KeyRange, start: i64) -> Cursor {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let next = if start <= 0 { self.mvcc.revision() + 1 } else { start };
        Cursor { hub: self.clone(), id, range, next, live: None }
    }
}

impl Cursor {
    /// The next revision this cursor will deliver.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// Waits for the next events.
    pub async fn next(&mut self) -> Result<Next, StoreError> {
        loop {
            if let Some(rx) = &mut self.live {
                match rx.recv().await {
                    Some((rev, batch)) => {
                        self.next = rev + 1;
                        let events: Vec<Event> = batch
                            .iter()
                            .filter(|e| e.kv.as_ref().is_some_and(|kv| self.range.contains(&kv.key)))
                            .cloned()
                            .collect();
                        return Ok(Next::Events(events, rev));
                    }
                    None => {
                        // Dropped by the hub (slow, or state replaced): catch up from disk.
                        self.live = None;
                        continue;
                    }
                }
            }
            let mvcc = &self.hub.mvcc;
            let current = mvcc.revision();
            if self.next <= current {
                let compact = mvcc.compact_revision();
                if self.next < compact {
                    return Ok(Next::Compacted(compact));
                }
                let to = current.min(self.next + CATCH_UP_REVISIONS - 1);
                let events = mvcc.events_between(self.next, to, &self.range)?;
                self.next = to + 1;
                if events.is_empty() {
                    continue;
                }
                return Ok(Next::Events(events, to));
            }
            // Caught up: go live, unless a revision slipped in meanwhile.
            let mut live = self.hub.lock();
            if mvcc.revision() >= self.next {
                continue;
            }
            let (tx, rx) = mpsc::channel(LIVE_BUFFER);
            live.insert(self.id, Live { range: self.range.clone(), tx });
            self.live = Some(rx);
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}
