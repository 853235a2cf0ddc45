//! The Raft log on RocksDB, with group commit.
//!
//! `append` writes entries to RocksDB without waiting for the disk (so they are readable at
//! once) and hands openraft's completion callback to a flusher thread. The flusher fsyncs the
//! write-ahead log once for every callback that queued up meanwhile, then reports all of
//! them persisted: many concurrent client writes share one fsync, and no entry is ever
//! reported durable before it is. Votes are written with an fsync of their own.
//!
//! openraft 0.10 does not wait for the flush before it replicates or appends again
//! (the leader counts itself toward the quorum only once its callback fires), so appends
//! made while an fsync runs pile up and share the next one. Callbacks fire in the order
//! the appends were made, each only after an fsync that covers it and everything written
//! before it (truncations, purges and the state machine's writes share the one WAL). The
//! first failed fsync is latched: no later callback reports success, and `append` refuses.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Instant;

use flotilla_proto::raft as pb;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use prost::Message;

use crate::codec;
use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::rocks::{Batch, Cf, Db, Dir, Sync};
use crate::types::{Entry, LogId, TypeConfig, Vote};

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
    tx: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first fsync failure; once set, the log is never reported durable again.
    failed: Arc<OnceLock<String>>,
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
        let (flush_tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let fdb = db.clone();
        let failed: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let latched = failed.clone();
        let spawned = std::thread::Builder::new().name("raft-log-fsync".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let started = Instant::now();
                // An fsync that failed once is not retried: the kernel may have dropped the
                // dirty pages it could not write, and a later "success" would be a lie.
                let res = match latched.get() {
                    Some(e) => Err(e.clone()),
                    None => fdb.sync_wal().map_err(|e| e.to_string()),
                };
                if let Err(e) = &res {
                    let _ = latched.set(e.clone());
                }
                metrics.observe_fsync(started.elapsed(), waiting.len());
                for cb in waiting {
                    cb.io_completed(res.clone().map_err(std::io::Error::other));
                }
            }
        });
        let thread = match spawned {
            Ok(t) => t,
            // Without a flusher nothing would ever be acknowledged: fail loudly at start.
            Err(e) => panic!("cannot start the raft log fsync thread: {e}"),
        };
        LogStore { db, flusher: Arc::new(Flusher { tx: Some(flush_tx), thread: Some(thread), failed }) }
    }

    /// Writes a founding member's first log entry, the initial membership, unless the log
    /// already holds anything (a restart). Every founding member writes the very same entry,
    /// with the very same log id (term 0, member 0, index 0), so their logs agree from the
    /// start and the first election is an ordinary one among equals. (openraft's own
    /// `initialize` writes the entry under this member's id and campaigns at once: every
    /// founding member then holds a different entry 0, the one with the largest id the
    /// "longest" log, and the first seconds of a new cluster are an election storm.)
    /// Returns whether it wrote.
    pub fn bootstrap(&self, membership: crate::types::Membership) -> Result<bool, StoreError> {
        if self.last_entry_id()?.is_some() || self.purged()?.is_some() {
            return Ok(false);
        }
        let first = Entry {
            log_id: LogId { leader_id: crate::types::CommittedLeaderId { term: 0, node_id: 0 }, index: 0 },
            payload: openraft::EntryPayload::Membership(membership),
        };
        let mut b = Batch::new();
        b.put(Cf::RaftLog, index_key(0), codec::entry_to_pb(&first).encode_to_vec());
        self.db.write(b, Sync::Yes)?;
        Ok(true)
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
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        Ok(self.entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        Ok(self.read_meta::<pb::Vote>(KEY_VOTE)?.map(|v| codec::vote_from_pb(&v)))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let purged = self.purged()?;
        let last = self.last_entry_id()?.or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Synced, and in the same WAL as the log: a synced write makes every earlier write
    /// durable too, so when openraft counts the log as flushed on becoming leader under
    /// this vote, it is (openraft#2118). Never make this asynchronous or move it elsewhere.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let mut b = Batch::new();
        b.put(Cf::RaftMeta, KEY_VOTE, codec::vote_to_pb(vote).encode_to_vec());
        self.db.write(b, Sync::Yes)?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let mut b = Batch::new();
        match committed {
            Some(c) => b.put(Cf::RaftMeta, KEY_COMMITTED, codec::log_id_to_pb(&c).encode_to_vec()),
            None => b.delete(Cf::RaftMeta, KEY_COMMITTED),
        }
        // Not synced: the committed index is a hint to re-apply sooner at restart.
        self.db.write(b, Sync::No)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.read_meta::<pb::LogId>(KEY_COMMITTED)?.map(|l| codec::log_id_from_pb(&l)))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(e) = self.flusher.failed.get() {
            return Err(StoreError::Storage(format!("an earlier fsync of the raft log failed: {e}")).into());
        }
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

    /// Deletes every entry after `last` (all of them for `None`). Not synced: a later
    /// append's callback fires only after an fsync that covers this write too.
    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        let mut b = Batch::new();
        b.delete_range(Cf::RaftLog, index_key(from), index_key(u64::MAX));
        b.delete(Cf::RaftLog, index_key(u64::MAX));
        self.db.write(b, Sync::No)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let mut b = Batch::new();
        b.put(Cf::RaftMeta, KEY_PURGED, codec::log_id_to_pb(&log_id).encode_to_vec());
        b.delete_range(Cf::RaftLog, index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db.write(b, Sync::No)?;
        Ok(())
    }
}
