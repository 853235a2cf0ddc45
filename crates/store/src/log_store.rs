//! The Raft log on RocksDB, with group commit.
//!
//! `append` writes entries to RocksDB without waiting for the disk (so they are readable at
//! once) and hands openraft's completion callback to a flusher thread. The flusher fsyncs the
//! write-ahead log once for every callback that queued up meanwhile, then reports all of
//! them persisted: many concurrent client writes share one fsync, and no entry is ever
//! reported durable before it is. Votes are written with an fsync of their own.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use flotilla_proto::raft as pb;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use prost::Message;

use crate::codec;
use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::rocks::{Batch, Cf, Db, Dir, Sync};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// The log store. Cheap to clone: clones share the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    flusher: Arc<Flusher>,
}

/// The fsync thread. Dropping the last handle stops and joins it, so the database is
/// closed by the thread that drops the store, never during process exit.
struct Flusher {
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LogStore {
    /// Opens the log in `db` and starts its flusher thread (which ends when the last clone
    /// of the store is dropped).
    pub fn new(db: Db, metrics: Arc<Metrics>) -> LogStore {
        let (flush_tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let fdb = db.clone();
        let spawned = std::thread::Builder::new().name("raft-log-fsync".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let started = Instant::now();
                let res = fdb.sync_wal();
                metrics.observe_fsync(started.elapsed(), waiting.len());
                for cb in waiting {
                    let r = match &res {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    cb.log_io_completed(r);
                }
            }
        });
        let thread = match spawned {
            Ok(t) => t,
            // Without a flusher nothing would ever be acknowledged: fail loudly at start.
            Err(e) => panic!("cannot start the raft log fsync thread: {e}"),
        };
        LogStore { db, flusher: Arc::new(Flusher { tx: Some(flush_tx), thread: Some(thread) }) }
    }

    fn read_meta<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>, StoreError> {
        match self.db.get(Cf::RaftMeta, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode_disk(std::str::from_utf8(key).unwrap_or("meta"), &b)?)),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StoreError> {
        let mut last = None;
        self.db.scan(Cf::RaftLog, &index_key(u64::MAX), Dir::Reverse, |_, v| {
            last = Some(codec::decode_entry(v)?.log_id);
            Ok(false)
        })?;
        Ok(last)
    }

    fn purged(&self) -> Result<Option<LogId>, StoreError> {
        Ok(self.read_meta::<pb::LogId>(KEY_PURGED)?.map(|l| codec::log_id_from_pb(&l)))
    }

    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        self.db.scan(Cf::RaftLog, &index_key(start), Dir::Forward, |k, v| {
            let idx = u64::from_be_bytes(
                k.try_into().map_err(|_| StoreError::Corrupt("raft log key is not 8 bytes".into()))?,
            );
            if !range.contains(&idx) {
                return Ok(false);
            }
            out.push(codec::decode_entry(v)?);
            Ok(true)
        })?;
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.entries(range)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.purged()?;
        let last = self.last_entry_id()?.or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut b = Batch::new();
        b.put(Cf::RaftMeta, KEY_VOTE, codec::vote_to_pb(vote).encode_to_vec());
        self.db.write(b, Sync::Yes)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.read_meta::<pb::Vote>(KEY_VOTE)?.map(|v| codec::vote_from_pb(&v)))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut b = Batch::new();
        match committed {
            Some(c) => b.put(Cf::RaftMeta, KEY_COMMITTED, codec::log_id_to_pb(&c).encode_to_vec()),
            None => b.delete(Cf::RaftMeta, KEY_COMMITTED),
        }
        // Not synced: the committed index is a hint to re-apply sooner at restart.
        self.db.write(b, Sync::No)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<pb::LogId>(KEY_COMMITTED)?.map(|l| codec::log_id_from_pb(&l)))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut b = Batch::new();
        for e in entries {
            b.put(Cf::RaftLog, index_key(e.log_id.index), codec::entry_to_pb(&e).encode_to_vec());
        }
        self.db.write(b, Sync::No)?;
        self.flusher
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::Fatal("raft log fsync thread has stopped".into()))?
            .send(callback)
            .map_err(|_| StoreError::Fatal("raft log fsync thread has stopped".into()))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = Batch::new();
        b.delete_range(Cf::RaftLog, index_key(log_id.index), index_key(u64::MAX));
        b.delete(Cf::RaftLog, index_key(u64::MAX));
        self.db.write(b, Sync::No)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = Batch::new();
        b.put(Cf::RaftMeta, KEY_PURGED, codec::log_id_to_pb(&log_id).encode_to_vec());
        b.delete_range(Cf::RaftLog, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db.write(b, Sync::No)?;
        Ok(())
    }
}
