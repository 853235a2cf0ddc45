//! The RocksDB engine: the only module in Flotilla that names `rocksdb`.
//!
//! One RocksDB instance holds both the Raft log and the state machine, in separate column
//! families, so that they share one write-ahead log: a state-machine write can never be
//! durable while the log entries before it are not. Everything above this module sees
//! [`Db`], [`Cf`], [`Batch`] and plain byte slices.

use std::path::Path;
use std::sync::Arc;

use crate::error::StoreError;

/// The column families, one per kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Raft log entries by big-endian index.
    RaftLog,
    /// Raft vote, committed log id, purged log id, and this data dir's identity.
    RaftMeta,
    /// MVCC versions: escaped key ++ inverted revision -> record.
    KvIndex,
    /// MVCC history by revision: revision ++ sub-revision -> record kind ++ key.
    KvRev,
    /// Leases by id.
    Lease,
    /// Keys attached to each lease: lease id ++ key.
    LeaseKeys,
    /// State-machine meta: last applied log id, membership, revisions.
    SmMeta,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 7] = [Cf::RaftLog, Cf::RaftMeta, Cf::KvIndex, Cf::KvRev, Cf::Lease, Cf::LeaseKeys, Cf::SmMeta];

    /// The column families that make up the state machine (what a snapshot carries).
    pub const STATE_MACHINE: [Cf; 5] = [Cf::KvIndex, Cf::KvRev, Cf::Lease, Cf::LeaseKeys, Cf::SmMeta];

    /// The on-disk name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::KvIndex => "kv_index",
            Cf::KvRev => "kv_rev",
            Cf::Lease => "lease",
            Cf::LeaseKeys => "lease_keys",
            Cf::SmMeta => "sm_meta",
        }
    }

    /// A stable one-byte tag, used in snapshot streams.
    pub fn tag(self) -> u8 {
        Cf::ALL.iter().position(|c| *c == self).unwrap_or(0) as u8
    }

    /// The inverse of [`Cf::tag`].
    pub fn from_tag(t: u8) -> Option<Cf> {
        Cf::ALL.get(t as usize).copied()
    }
}

/// Memory for memtables, across all column families.
const MEMTABLE_BUDGET: usize = 64 << 20;

/// RocksDB's log format (the MANIFEST is written in it): 32 KiB blocks of records, each
/// with a 7-byte header — masked CRC32C of type and payload, payload length, type.
const LOG_BLOCK: usize = 32 * 1024;
const LOG_HEADER: usize = 7;

/// Checks every record of the current MANIFEST before RocksDB reads it. RocksDB's own
/// reader takes a record whose header is damaged so that it seems to run past the end
/// for a torn final write, stops there, and opens the database as of an older version:
/// table files and write-ahead logs recorded after that point are then silently gone
/// (synced raft entries included). A process kill cannot tear a record (each is one
/// write, synced), so any damage here refuses the open.
fn verify_manifest(dir: &Path) -> Result<(), StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("cannot open RocksDB at {}: {what}", dir.display()));
    let current = match std::fs::read_to_string(dir.join("CURRENT")) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()), // a new database
        Err(e) => return Err(corrupt(format!("reading CURRENT: {e}"))),
    };
    let name = current.trim_end_matches('\n');
    if !name.starts_with("MANIFEST-") || name.contains('/') {
        return Err(corrupt(format!("CURRENT names {name:?}, not a MANIFEST")));
    }
    let bytes = std::fs::read(dir.join(name)).map_err(|e| corrupt(format!("reading {name}: {e}")))?;
    let mut pos = 0;
    while pos < bytes.len() {
        let left_in_block = LOG_BLOCK - pos % LOG_BLOCK;
        if left_in_block < LOG_HEADER {
            pos += left_in_block; // a block's trailer: padding
            continue;
        }
        let end = (pos + LOG_HEADER).min(bytes.len());
        let header = &bytes[pos..end];
        if header.iter().all(|b| *b == 0) {
            // Preallocated space: the rest of the file must be zeros too.
            if bytes[pos..].iter().any(|b| *b != 0) {
                return Err(corrupt(format!("{name}: data after zero padding at offset {pos}")));
            }
            return Ok(());
        }
        if header.len() < LOG_HEADER {
            return Err(corrupt(format!("{name}: truncated record header at offset {pos}")));
        }
        let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        if len > left_in_block - LOG_HEADER || pos + LOG_HEADER + len > bytes.len() || !(1..=4).contains(&kind) {
            return Err(corrupt(format!("{name}: damaged record header at offset {pos}")));
        }
        let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let payload = &bytes[pos + LOG_HEADER..pos + LOG_HEADER + len];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
        let masked = (crc.rotate_right(15)).wrapping_add(0xa282_ead8);
        if stored != masked {
            return Err(corrupt(format!("{name}: record checksum mismatch at offset {pos}")));
        }
        pos += LOG_HEADER + len;
    }
    Ok(())
}

/// An open database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<rocksdb::DB>,
    /// Set (with what was found) the first time RocksDB reports damaged data.
    corrupt: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// Maps a RocksDB error; damaged data (a checksum that does not match) is also reported
/// on [`Db::corruption`], so the member can stop instead of serving around it.
fn storage_err(corrupt: &tokio::sync::watch::Sender<Option<String>>, what: &str, e: rocksdb::Error) -> StoreError {
    let msg = format!("{what}: {e}");
    if e.kind() == rocksdb::ErrorKind::Corruption {
        corrupt.send_if_modified(|c| c.is_none() && c.replace(msg.clone()).is_none());
        return StoreError::Damaged(msg);
    }
    StoreError::Storage(msg)
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.inner.path()).finish()
    }
}

/// One recorded write.
enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// A set of writes applied atomically by [`Db::write`]. Writes are recorded and turned into
/// one RocksDB write batch at write time, so a caller can roll back to an earlier point
/// ([`Batch::mark`], [`Batch::rollback`]).
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }
    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(Op::Put(cf, key.as_ref().to_vec(), value.as_ref().to_vec()));
    }
    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.ops.push(Op::Delete(cf, key.as_ref().to_vec()));
    }
    /// Adds a delete of every key in `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        self.ops.push(Op::DeleteRange(cf, from.as_ref().to_vec(), to.as_ref().to_vec()));
    }
    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// A point to roll back to.
    pub fn mark(&self) -> usize {
        self.ops.len()
    }
    /// Forgets every write added since `mark`.
    pub fn rollback(&mut self, mark: usize) {
        self.ops.truncate(mark);
    }
    /// Adds every write of `other`, after this batch's.
    pub fn append(&mut self, mut other: Batch) {
        self.ops.append(&mut other.ops);
    }
}

/// Whether a write must reach the disk before [`Db::write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync the WAL before returning.
    Yes,
    /// Leave durability to a later [`Db::sync_wal`] (group commit).
    No,
}

/// Iteration direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Ascending key order from the seek key (inclusive).
    Forward,
    /// Descending key order from the seek key (inclusive).
    Reverse,
}

impl Db {
    /// Opens (creating if needed) the database under `path`, with all column families.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        verify_manifest(path)?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // Seven column families would each grow a 64 MiB memtable by default; cap them
        // together, and flush the write-ahead log's oldest family when it grows.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        opts.set_max_total_wal_size(MEMTABLE_BUDGET as u64 * 2);
        // An incomplete record at the very end of the WAL (a torn final write) is
        // tolerated; damage anywhere else fails the open. (Point-in-time recovery would
        // open without every record after the damage: synced raft entries and votes
        // silently gone.)
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_paranoid_checks(true);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = rocksdb::Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.set_write_buffer_size(MEMTABLE_BUDGET / 4);
            rocksdb::ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = rocksdb::DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|e| StoreError::Corrupt(format!("cannot open RocksDB at {}: {e}", path.display())))?;
        Ok(Db { inner: Arc::new(db), corrupt: Arc::new(tokio::sync::watch::channel(None).0) })
    }

    /// Becomes `Some(what)` once a read or write found damaged data.
    pub fn corruption(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.corrupt.subscribe()
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // All column families are created at open, so the handle always exists.
        #[allow(clippy::expect_used)]
        self.inner.cf_handle(cf.name()).expect("column family created at open")
    }

    /// Reads one value.
    pub fn get(&self, cf: Cf, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_cf(self.cf(cf), key).map_err(|e| storage_err(&self.corrupt, "read", e))
    }

    /// Applies a batch atomically.
    pub fn write(&self, batch: Batch, sync: Sync) -> Result<(), StoreError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(*cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(*cf), k),
                Op::DeleteRange(cf, from, to) => wb.delete_range_cf(self.cf(*cf), from, to),
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync == Sync::Yes);
        self.inner.write_opt(wb, &wo).map_err(|e| storage_err(&self.corrupt, "write", e))
    }

    /// fsyncs the write-ahead log: every write that returned before this call is durable
    /// when it returns.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.inner.flush_wal(true).map_err(|e| storage_err(&self.corrupt, "fsync WAL", e))
    }

    /// Visits `(key, value)` pairs from `from` in direction `dir` until `f` returns false.
    pub fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        dir: Dir,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut it = self.inner.raw_iterator_cf(self.cf(cf));
        match dir {
            Dir::Forward => it.seek(from),
            Dir::Reverse => it.seek_for_prev(from),
        }
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !f(k, v)? {
                return Ok(());
            }
            match dir {
                Dir::Forward => it.next(),
                Dir::Reverse => it.prev(),
            }
        }
        it.status().map_err(|e| storage_err(&self.corrupt, "iterate", e))
    }

    /// A consistent point-in-time view for reading many records (snapshots).
    pub fn view(&self) -> View<'_> {
        View { db: self, snap: self.inner.snapshot() }
    }

    /// Size of the database directory on disk (SST files, WAL, manifests), in bytes.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(self.inner.path())
            .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

/// A point-in-time view of the database.
pub struct View<'a> {
    db: &'a Db,
    snap: rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>,
}

impl View<'_> {
    /// Visits every `(key, value)` of `cf` in order, as of the view.
    pub fn for_each(
        &self,
        cf: Cf,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&self.snap);
        let mut it = self.db.inner.raw_iterator_cf_opt(self.db.cf(cf), ro);
        it.seek_to_first();
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            f(k, v)?;
            it.next();
        }
        it.status().map_err(|e| storage_err(&self.db.corrupt, "iterate snapshot", e))
    }

    /// Reads one value as of the view.
    pub fn get(&self, cf: Cf, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.snap.get_cf(self.db.cf(cf), key).map_err(|e| storage_err(&self.db.corrupt, "read snapshot", e))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(i: u32) -> Vec<u8> {
        format!("{i:08}-").repeat(64).into_bytes()
    }

    /// Writes `n` synced records (one key each) into a new database under `dir`.
    fn fill(dir: &Path, n: u32) {
        let db = Db::open(dir).expect("open");
        for i in 0..n {
            let mut b = Batch::new();
            b.put(Cf::RaftLog, i.to_be_bytes(), value(i));
            db.write(b, Sync::Yes).expect("write");
        }
    }

    fn files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        v
    }

    fn flip(path: &Path, at_fraction: f64) {
        let mut bytes = std::fs::read(path).unwrap();
        let i = (bytes.len() as f64 * at_fraction) as usize;
        bytes[i] ^= 0x5a;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_flipped_byte_in_the_middle_of_the_write_ahead_log_refuses_to_open() {
        for at in [0.1, 0.5, 0.9] {
            let dir = tempfile::tempdir().unwrap();
            fill(dir.path(), 300);
            let wal = files(dir.path(), "log");
            assert_eq!(wal.len(), 1, "one write-ahead log: {wal:?}");
            flip(&wal[0], at);
            // Point-in-time recovery would stop at the damaged record and open without
            // the records after it: synced raft entries (and votes) silently gone.
            let err = Db::open(dir.path()).expect_err("a damaged write-ahead log must not open");
            assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        }
    }

    /// Regression (found by the chaos harness, full run seed 324: a follower whose MANIFEST
    /// had bytes flipped opened an older state, and the leader panicked on its reverted
    /// log): a flipped byte anywhere in the MANIFEST refuses the open or changes nothing.
    #[test]
    fn a_flipped_byte_anywhere_in_the_manifest_refuses_to_open_or_loses_nothing() {
        let build = |dir: &Path| {
            let db = Db::open(dir).expect("open");
            for i in 0..200u32 {
                let mut b = Batch::new();
                b.put(Cf::RaftLog, i.to_be_bytes(), value(i));
                db.write(b, Sync::Yes).expect("write");
                if i % 50 == 49 {
                    db.inner.flush_cf(db.cf(Cf::RaftLog)).expect("flush");
                }
            }
        };
        let template = tempfile::tempdir().unwrap();
        build(template.path());
        let manifest = |dir: &Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST-"))
                .unwrap()
        };
        let len = std::fs::read(manifest(template.path())).unwrap().len();
        assert!(len > 500, "a MANIFEST with several edits: {len} bytes");
        for at in 0..len {
            let dir = tempfile::tempdir().unwrap();
            for e in std::fs::read_dir(template.path()).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
            let m = manifest(dir.path());
            let mut bytes = std::fs::read(&m).unwrap();
            bytes[at] ^= 0x5a;
            std::fs::write(&m, &bytes).unwrap();
            if let Ok(db) = Db::open(dir.path()) {
                for i in 0..200u32 {
                    let got = db.get(Cf::RaftLog, i.to_be_bytes());
                    assert!(matches!(&got, Ok(Some(v)) if *v == value(i)), "byte {at} flipped: key {i} read {got:?}");
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_in_a_table_file_is_an_error_never_a_wrong_value() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 300);
        {
            let db = Db::open(dir.path()).expect("open");
            db.inner.flush_cf(db.cf(Cf::RaftLog)).expect("flush");
        }
        let tables = files(dir.path(), "sst");
        assert!(!tables.is_empty());
        for t in &tables {
            flip(t, 0.3);
        }
        let Ok(db) = Db::open(dir.path()) else {
            return; // refusing to open is fine
        };
        let mut errors = 0;
        for i in 0..300u32 {
            match db.get(Cf::RaftLog, i.to_be_bytes()) {
                Ok(Some(v)) => assert_eq!(v, value(i), "key {i} read back a different value"),
                Ok(None) => panic!("key {i} read back as absent"),
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0, "the damaged block was never reported");
    }
}
