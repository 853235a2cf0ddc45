//! The MVCC key-value store: etcd's data model on top of the [`crate::rocks`] engine.
//!
//! Every applied write gets the next cluster-wide revision (a transaction gets one revision
//! however many writes it makes; each write in it gets a sub-revision). Each key keeps
//! `create_revision`, `mod_revision` and `version`; a delete leaves a tombstone, so a range
//! at any revision above the compact revision sees the store exactly as it was. Compaction
//! drops what no read at or above the compact revision can see.
//!
//! Reads run concurrently with apply: a read at revision R only looks at records with
//! revision <= R, all of which were written (in one atomic batch per log entry) before the
//! in-memory revision reached R.

pub mod encoding;
pub mod latest;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use flotilla_core::keys::KeyRange;
use flotilla_core::limits;
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::mvccpb::{event::EventType, Event, KeyValue};
use flotilla_proto::raft as pb;
use prost::Message;

use crate::error::StoreError;
use crate::rocks::{Batch, Cf, Db, Dir};
use encoding::{PUT, TOMBSTONE};
use latest::{LatestCache, Record};

/// Key (in the state machine meta column family) of the current revision.
pub const META_REVISION: &[u8] = b"revision";
/// Key (in the state machine meta column family) of the compact revision.
pub const META_COMPACT: &[u8] = b"compact_revision";

/// The MVCC store of one member.
pub struct Mvcc {
    db: Db,
    revision: AtomicI64,
    compact: AtomicI64,
    latest: LatestCache,
}

/// What applying one command produced.
pub struct Applied {
    /// The response (or request error) for the client.
    pub result: pb::CommandResult,
    /// Watch events, in revision order.
    pub events: Vec<Event>,
    /// Current revision after the command.
    pub revision: i64,
    /// Compact revision after the command.
    pub compact_revision: i64,
    /// The records written, in order: hand them to [`Mvcc::remember`] once the batch is
    /// written.
    pub written: Vec<Record>,
}

fn read_i64(db: &Db, key: &[u8]) -> Result<Option<i64>, StoreError> {
    match db.get(Cf::SmMeta, key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] =
                v.as_slice().try_into().map_err(|_| StoreError::Corrupt(format!("meta {key:?} is not 8 bytes")))?;
            Ok(Some(i64::from_be_bytes(b)))
        }
    }
}

fn decode_record(v: &[u8]) -> Result<(u8, KeyValue), StoreError> {
    let (&kind, body) = v.split_first().ok_or_else(|| StoreError::Corrupt("empty MVCC record".into()))?;
    let kv = KeyValue::decode(body).map_err(|e| StoreError::Corrupt(format!("undecodable MVCC record: {e}")))?;
    Ok((kind, kv))
}

fn encode_record(kind: u8, kv: &KeyValue) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + kv.encoded_len());
    v.push(kind);
    kv.encode(&mut v).unwrap_or_default();
    v
}

fn header(revision: i64) -> Option<ep::ResponseHeader> {
    Some(ep::ResponseHeader { revision, ..Default::default() })
}

fn error_result(e: StoreError) -> pb::CommandResult {
    pb::CommandResult {
        kind: Some(pb::command_result::Kind::Error(pb::CommandError { code: e.code() as i32, message: e.to_string() })),
    }
}

impl Mvcc {
    /// Loads the MVCC state from `db` (a fresh store starts at revision 1, like etcd).
    pub fn open(db: Db) -> Result<Mvcc, StoreError> {
        Mvcc::open_with_cache(db, latest::DEFAULT_BYTES)
    }

    /// [`Mvcc::open`] with a given budget in bytes for the cache of newest records.
    pub fn open_with_cache(db: Db, cache_bytes: usize) -> Result<Mvcc, StoreError> {
        let revision = read_i64(&db, META_REVISION)?.unwrap_or(1);
        let compact = read_i64(&db, META_COMPACT)?.unwrap_or(0);
        Ok(Mvcc {
            db,
            revision: AtomicI64::new(revision),
            compact: AtomicI64::new(compact),
            latest: LatestCache::new(cache_bytes),
        })
    }

    /// The current (last applied) revision.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// The compact revision: reads and watches below it fail.
    pub fn compact_revision(&self) -> i64 {
        self.compact.load(Ordering::Acquire)
    }

    /// Publishes the revisions reached by a batch that has been written.
    pub fn publish(&self, revision: i64, compact: i64) {
        self.compact.store(compact, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
    }

    /// Raises the compact revision ahead of writing the batch that compacts to it.
    pub fn raise_compact(&self, compact: i64) {
        self.compact.fetch_max(compact, Ordering::AcqRel);
    }

    /// Records that a written batch made these the newest records of their keys. Call
    /// after the batch is written and before its revision is published.
    pub fn remember(&self, written: Vec<Record>) {
        for rec in written {
            self.latest.store(rec);
        }
    }

    /// Drops the cache of newest records (the store is about to be replaced).
    pub fn forget_cached(&self) {
        self.latest.clear();
    }

    /// Reloads revisions from disk (after a snapshot was installed).
    pub fn reload(&self) -> Result<(), StoreError> {
        self.latest.clear();
        let revision = read_i64(&self.db, META_REVISION)?.unwrap_or(1);
        let compact = read_i64(&self.db, META_COMPACT)?.unwrap_or(0);
        self.publish(revision, compact);
        Ok(())
    }

    /// Resolves a requested read revision (0 = current) and checks it is readable.
    pub fn check_revision(&self, rev: i64) -> Result<i64, StoreError> {
        let current = self.revision();
        if rev <= 0 {
            return Ok(current);
        }
        if rev > current {
            return Err(StoreError::FutureRevision);
        }
        let compact = self.compact_revision();
        if rev < compact {
            return Err(StoreError::Compacted { compact_revision: compact });
        }
        Ok(rev)
    }

    /// The record of `key` at or below `rev`: `(kind, kv)`.
    fn record_at(&self, key: &[u8], rev: i64) -> Result<Option<Record>, StoreError> {
        if let Some(rec) = self.latest.visible_at(key, rev) {
            return Ok(Some(rec));
        }
        self.record_on_disk(key, rev)
    }

    /// [`Mvcc::record_at`] from RocksDB alone.
    fn record_on_disk(&self, key: &[u8], rev: i64) -> Result<Option<Record>, StoreError> {
        let prefix = encoding::escape(key);
        let mut found = None;
        self.db.scan(Cf::KvIndex, &encoding::index_key(key, rev), Dir::Forward, |k, v| {
            if k.starts_with(&prefix) && k.len() == prefix.len() + 8 {
                found = Some(decode_record(v)?);
            }
            Ok(false)
        })?;
        Ok(found)
    }

    /// The newest record of `key`, for the applier (which alone may fill the cache: the
    /// store holds exactly what it has applied). A key with no record is cached as a
    /// tombstone at revision 0, which every reader may see.
    fn newest(&self, key: &[u8]) -> Result<Record, StoreError> {
        if let Some(rec) = self.latest.newest(key) {
            return Ok(rec);
        }
        let rec = self
            .record_on_disk(key, self.revision())?
            .unwrap_or_else(|| (TOMBSTONE, KeyValue { key: key.to_vec(), ..Default::default() }));
        self.latest.store(rec.clone());
        Ok(rec)
    }

    /// The live value of `key` at `rev`, if any.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.record_at(key, rev)?.and_then(|(kind, kv)| (kind == PUT).then_some(kv)))
    }

    /// Visits the live values in `range` at `rev`, in key order, until `f` returns false.
    pub fn scan_at(&self, range: &KeyRange, rev: i64, mut f: impl FnMut(KeyValue) -> bool) -> Result<(), StoreError> {
        if let KeyRange::Single(k) = range {
            if let Some(kv) = self.get_at(k, rev)? {
                f(kv);
            }
            return Ok(());
        }
        if range.is_empty() {
            return Ok(());
        }
        let mut current: Option<Vec<u8>> = None;
        let mut done_with_current = false;
        self.db.scan(
            Cf::KvIndex,
            &encoding::escape(range.start())[..range_seek_len(range.start())],
            Dir::Forward,
            |k, v| {
                let (key, r) = encoding::parse_index_key(k)
                    .ok_or_else(|| StoreError::Corrupt("malformed MVCC index key".into()))?;
                if !range.contains(&key) {
                    // Keys come in order: past the end means done; before the start cannot happen.
                    return Ok(key.as_slice() < range.start());
                }
                if current.as_deref() != Some(key.as_slice()) {
                    current = Some(key);
                    done_with_current = false;
                }
                if done_with_current || r > rev {
                    return Ok(true);
                }
                done_with_current = true;
                let (kind, kv) = decode_record(v)?;
                if kind == PUT {
                    return Ok(f(kv));
                }
                Ok(true)
            },
        )
    }

    /// Serves a Range request (the header carries only the revision read at).
    pub fn range(&self, req: &ep::RangeRequest) -> Result<ep::RangeResponse, StoreError> {
        let rev = self.check_revision(req.revision)?;
        let range = KeyRange::from_etcd(&req.key, &req.range_end);
        let mut kvs = Vec::new();
        self.scan_at(&range, rev, |kv| {
            kvs.push(kv);
            true
        })?;
        // A compaction past `rev` that ran during the scan may have removed versions it
        // needed: report the read as compacted rather than return a partial result.
        let compact = self.compact_revision();
        if rev < compact {
            return Err(StoreError::Compacted { compact_revision: compact });
        }
        Ok(finish_range(req, kvs, rev))
    }

    /// Events with revisions in `[from, to]`, in order, each with its previous value, but
    /// at most about `max_changes` history records: returns the events and the revision up
    /// to which they are complete (a revision's events are never split).
    pub fn events_between(
        &self,
        from: i64,
        to: i64,
        range: &KeyRange,
        max_changes: usize,
    ) -> Result<(Vec<Event>, i64), StoreError> {
        let mut changes = Vec::new();
        let mut scanned = 0usize;
        let mut covered = to;
        let mut last_rev = from - 1;
        self.db.scan(Cf::KvRev, &encoding::rev_key(from, 0), Dir::Forward, |k, v| {
            let (rev, _) =
                encoding::parse_rev_key(k).ok_or_else(|| StoreError::Corrupt("malformed MVCC history key".into()))?;
            if rev > to {
                return Ok(false);
            }
            if rev != last_rev && scanned >= max_changes {
                covered = last_rev;
                return Ok(false);
            }
            last_rev = rev;
            scanned += 1;
            let key = v.get(1..).unwrap_or_default();
            if range.contains(key) {
                changes.push((rev, key.to_vec()));
            }
            Ok(true)
        })?;
        let mut events = Vec::with_capacity(changes.len());
        for (rev, key) in changes {
            let Some((kind, kv)) = self.record_at(&key, rev)? else { continue };
            let prev_kv = self.get_at(&key, rev - 1)?;
            let ty = if kind == PUT { EventType::Put } else { EventType::Delete };
            events.push(Event { r#type: ty as i32, kv: Some(kv), prev_kv });
        }
        Ok((events, covered))
    }

    /// Whether lease `id` exists.
    pub fn lease_ttl(&self, id: i64) -> Result<Option<i64>, StoreError> {
        match self.db.get(Cf::Lease, encoding::lease_key(id))? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] =
                    v.as_slice().try_into().map_err(|_| StoreError::Corrupt("lease record is not 8 bytes".into()))?;
                Ok(Some(i64::from_be_bytes(b)))
            }
        }
    }

    /// Every lease: `(id, granted ttl)`.
    pub fn leases(&self) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut out = Vec::new();
        self.db.scan(Cf::Lease, &[], Dir::Forward, |k, v| {
            let id =
                u64::from_be_bytes(k.try_into().map_err(|_| StoreError::Corrupt("lease key is not 8 bytes".into()))?)
                    as i64;
            let ttl = i64::from_be_bytes(
                v.try_into().map_err(|_| StoreError::Corrupt("lease record is not 8 bytes".into()))?,
            );
            out.push((id, ttl));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Keys attached to lease `id`.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = encoding::lease_key(id);
        let mut out = Vec::new();
        self.db.scan(Cf::LeaseKeys, &prefix, Dir::Forward, |k, _| {
            if !k.starts_with(&prefix) {
                return Ok(false);
            }
            out.push(k[8..].to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    /// A hash of every MVCC record at or below `rev`: equal on members that agree.
    pub fn hash_kv(&self, rev: i64) -> Result<u32, StoreError> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        self.db.scan(Cf::KvIndex, &[], Dir::Forward, |k, v| {
            let (_, r) =
                encoding::parse_index_key(k).ok_or_else(|| StoreError::Corrupt("malformed MVCC index key".into()))?;
            if r <= rev {
                for b in k.iter().chain(v.iter()) {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
            }
            Ok(true)
        })?;
        Ok((h ^ (h >> 32)) as u32)
    }

    /// Applies one command into `batch` (nothing is written until the caller writes it).
    /// A request error leaves the batch untouched and is returned inside the result.
    /// Only the state machine's applier may call this (it keeps the cache of newest records,
    /// see [`latest`]); it must write the batch, then pass `written` to [`Mvcc::remember`],
    /// then publish the revision.
    pub fn apply(&self, cmd: &pb::Command, batch: &mut Batch) -> Result<Applied, StoreError> {
        self.run(cmd, batch, true)
    }

    /// Evaluates a read-only command (a transaction with no writes) against the current
    /// revision, from any thread; nothing is written.
    pub fn evaluate_read_only(&self, cmd: &pb::Command) -> Result<Applied, StoreError> {
        self.run(cmd, &mut Batch::new(), false)
    }

    fn run(&self, cmd: &pb::Command, batch: &mut Batch, applier: bool) -> Result<Applied, StoreError> {
        use pb::command_result::Kind as R;
        let base = self.revision();
        let mut tx = Tx {
            m: self,
            applier,
            batch: Batch::new(),
            base,
            rev: base + 1,
            sub: 0,
            overlay: BTreeMap::new(),
            undo: Vec::new(),
            events: Vec::new(),
            written: Vec::new(),
            compact: self.compact_revision(),
        };
        let result = match &cmd.kind {
            Some(pb::command::Kind::Batch(b)) => {
                let mut results = Vec::with_capacity(b.commands.len());
                for c in &b.commands {
                    results.push(tx.apply_guarded(c)?);
                }
                pb::CommandResult { kind: Some(R::Batch(pb::CommandResultBatch { results })) }
            }
            _ => tx.apply_guarded(cmd)?,
        };
        let revision = tx.base;
        if revision != base {
            tx.batch.put(Cf::SmMeta, META_REVISION, revision.to_be_bytes());
        }
        *batch = std::mem::take(&mut tx.batch);
        Ok(Applied {
            result,
            events: std::mem::take(&mut tx.events),
            revision,
            compact_revision: tx.compact,
            written: std::mem::take(&mut tx.written),
        })
    }
}

/// How much of the escaped start key to seek to: all of it but the terminator, so that the
/// seek lands on the start key itself or the first key after it.
fn range_seek_len(start: &[u8]) -> usize {
    encoding::escape(start).len() - 2
}

/// Applies a Range request's options to the live values it selected (in key order).
pub fn finish_range(req: &ep::RangeRequest, mut kvs: Vec<KeyValue>, rev: i64) -> ep::RangeResponse {
    use ep::range_request::{SortOrder, SortTarget};
    let count = kvs.len() as i64;
    kvs.retain(|kv| {
        (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
    });
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let o = match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    if req.count_only {
        kvs.clear();
    }
    ep::RangeResponse { header: header(rev), kvs, more, count }
}

/// One command being applied: writes go to `batch` and `overlay`, so that later operations
/// of the same transaction read them.
struct Tx<'a> {
    m: &'a Mvcc,
    /// Run by the applier (may fill the cache of newest records), or by a reader.
    applier: bool,
    batch: Batch,
    base: i64,
    rev: i64,
    sub: i64,
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// Overlay entries as they were before each change, to roll a failed command back.
    undo: Vec<(Vec<u8>, Option<Option<KeyValue>>)>,
    events: Vec<Event>,
    /// Records written so far, for the cache of newest records.
    written: Vec<Record>,
    compact: i64,
}

impl Tx<'_> {
    /// Applies one command of the entry. A request error rolls back everything the command
    /// wrote (earlier commands of a batch stay) and becomes its result; only storage
    /// errors abort the entry.
    fn apply_guarded(&mut self, cmd: &pb::Command) -> Result<pb::CommandResult, StoreError> {
        use pb::command::Kind;
        use pb::command_result::Kind as R;
        let (batch_mark, undo_mark, events_mark, written_mark, compact) =
            (self.batch.mark(), self.undo.len(), self.events.len(), self.written.len(), self.compact);
        let out = match &cmd.kind {
            None => Ok(R::None(pb::Blank {})),
            Some(Kind::Put(p)) => self.put(p).map(R::Put),
            Some(Kind::DeleteRange(d)) => self.delete_range(d).map(R::DeleteRange),
            Some(Kind::Txn(t)) => self.txn(t).map(R::Txn),
            Some(Kind::Compaction(c)) => self.compact(c).map(R::Compaction),
            Some(Kind::LeaseGrant(g)) => self.lease_grant(g).map(R::LeaseGrant),
            Some(Kind::LeaseRevoke(r)) => self.lease_revoke(r).map(R::LeaseRevoke),
            Some(Kind::LeaseCheckpoint(_)) => Ok(R::None(pb::Blank {})),
            Some(Kind::Batch(_)) => Err(StoreError::InvalidArgument("a command batch cannot be nested".into())),
        };
        match out {
            Ok(kind) => {
                if self.sub > 0 {
                    // The command's revision is taken; the next command gets the next one.
                    self.base = self.rev;
                    self.rev += 1;
                    self.sub = 0;
                }
                Ok(pb::CommandResult { kind: Some(kind) })
            }
            Err(e) if e.is_fatal() => Err(e),
            Err(e) => {
                self.batch.rollback(batch_mark);
                while self.undo.len() > undo_mark {
                    let Some((key, before)) = self.undo.pop() else { break };
                    match before {
                        Some(v) => self.overlay.insert(key, v),
                        None => self.overlay.remove(&key),
                    };
                }
                self.events.truncate(events_mark);
                self.written.truncate(written_mark);
                self.compact = compact;
                self.sub = 0;
                Ok(error_result(e))
            }
        }
    }

    /// Records `key`'s state within this entry (None = deleted), remembering the old one.
    fn set_overlay(&mut self, key: Vec<u8>, value: Option<KeyValue>) {
        let before = self.overlay.insert(key.clone(), value);
        self.undo.push((key, before));
    }

    fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None if self.applier => Ok(Some(self.m.newest(key)?).and_then(|(kind, kv)| (kind == PUT).then_some(kv))),
            None => self.m.get_at(key, self.base),
        }
    }

    fn live_in(&self, range: &KeyRange) -> Result<Vec<KeyValue>, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        self.m.scan_at(range, self.base, |kv| {
            merged.insert(kv.key.clone(), kv);
            true
        })?;
        for (k, v) in &self.overlay {
            if range.contains(k) {
                match v {
                    Some(kv) => merged.insert(k.clone(), kv.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_values().collect())
    }

    fn write(&mut self, kind: u8, kv: &KeyValue) {
        self.batch.put(Cf::KvIndex, encoding::index_key(&kv.key, self.rev), encode_record(kind, kv));
        let mut hist = Vec::with_capacity(kv.key.len() + 1);
        hist.push(kind);
        hist.extend_from_slice(&kv.key);
        self.batch.put(Cf::KvRev, encoding::rev_key(self.rev, self.sub), hist);
        self.written.push((kind, kv.clone()));
        self.sub += 1;
    }

    fn put(&mut self, req: &ep::PutRequest) -> Result<ep::PutResponse, StoreError> {
        if req.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        let prev = self.latest(&req.key)?;
        let value = if req.ignore_value {
            prev.as_ref().ok_or(StoreError::KeyNotFound)?.value.clone()
        } else {
            req.value.clone()
        };
        let lease = if req.ignore_lease { prev.as_ref().ok_or(StoreError::KeyNotFound)?.lease } else { req.lease };
        if lease != 0 && self.m.lease_ttl(lease)?.is_none() {
            return Err(StoreError::LeaseNotFound);
        }
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        self.write(PUT, &kv);
        if let Some(p) = prev.as_ref().filter(|p| p.lease != 0 && p.lease != lease) {
            self.batch.delete(Cf::LeaseKeys, encoding::lease_keys_key(p.lease, &kv.key));
        }
        if lease != 0 {
            self.batch.put(Cf::LeaseKeys, encoding::lease_keys_key(lease, &kv.key), []);
        }
        self.set_overlay(kv.key.clone(), Some(kv.clone()));
        self.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev.clone() });
        Ok(ep::PutResponse { header: header(self.rev), prev_kv: if req.prev_kv { prev } else { None } })
    }

    fn delete_keys(&mut self, victims: Vec<KeyValue>) {
        for old in &victims {
            let tomb = KeyValue { key: old.key.clone(), mod_revision: self.rev, ..Default::default() };
            self.write(TOMBSTONE, &tomb);
            if old.lease != 0 {
                self.batch.delete(Cf::LeaseKeys, encoding::lease_keys_key(old.lease, &old.key));
            }
            self.set_overlay(old.key.clone(), None);
            self.events.push(Event { r#type: EventType::Delete as i32, kv: Some(tomb), prev_kv: Some(old.clone()) });
        }
    }

    fn delete_range(&mut self, req: &ep::DeleteRangeRequest) -> Result<ep::DeleteRangeResponse, StoreError> {
        if req.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        let victims = self.live_in(&KeyRange::from_etcd(&req.key, &req.range_end))?;
        let deleted = victims.len() as i64;
        let prev_kvs = if req.prev_kv { victims.clone() } else { vec![] };
        self.delete_keys(victims);
        let rev = if self.sub > 0 { self.rev } else { self.base };
        Ok(ep::DeleteRangeResponse { header: header(rev), deleted, prev_kvs })
    }

    fn range(&self, req: &ep::RangeRequest) -> Result<ep::RangeResponse, StoreError> {
        if req.revision > 0 {
            return self.m.range(req);
        }
        let kvs = self.live_in(&KeyRange::from_etcd(&req.key, &req.range_end))?;
        Ok(finish_range(req, kvs, if self.sub > 0 { self.rev } else { self.base }))
    }

    fn compare(&self, c: &ep::Compare) -> Result<bool, StoreError> {
        use ep::compare::{CompareResult, CompareTarget, TargetUnion};
        let kvs = self.live_in(&KeyRange::from_etcd(&c.key, &c.range_end))?;
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
        if kvs.is_empty() && target == CompareTarget::Value {
            return Ok(false);
        }
        let check = |kv: &KeyValue| {
            let ord = match (&c.target_union, target) {
                (Some(TargetUnion::Value(v)), _) => kv.value.as_slice().cmp(v.as_slice()),
                (Some(TargetUnion::Version(v)), _) => kv.version.cmp(v),
                (Some(TargetUnion::CreateRevision(v)), _) => kv.create_revision.cmp(v),
                (Some(TargetUnion::ModRevision(v)), _) => kv.mod_revision.cmp(v),
                (Some(TargetUnion::Lease(v)), _) => kv.lease.cmp(v),
                (None, CompareTarget::Value) => kv.value.as_slice().cmp(&[][..]),
                (None, CompareTarget::Version) => kv.version.cmp(&0),
                (None, CompareTarget::Create) => kv.create_revision.cmp(&0),
                (None, CompareTarget::Mod) => kv.mod_revision.cmp(&0),
                (None, CompareTarget::Lease) => kv.lease.cmp(&0),
            };
            match result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => ord.is_ne(),
            }
        };
        if kvs.is_empty() {
            return Ok(check(&KeyValue::default()));
        }
        Ok(kvs.iter().all(check))
    }

    /// Runs a transaction. As in etcd, every compare on the path that will run (nested
    /// ones included) is evaluated first, against the state before the transaction.
    fn txn(&mut self, req: &ep::TxnRequest) -> Result<ep::TxnResponse, StoreError> {
        let mut path = Vec::new();
        self.compare_path(req, &mut path)?;
        self.exec_txn(req, &mut path.into_iter())
    }

    fn compare_path(&self, req: &ep::TxnRequest, path: &mut Vec<bool>) -> Result<(), StoreError> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        for op in if succeeded { &req.success } else { &req.failure } {
            if let Some(ep::request_op::Request::RequestTxn(inner)) = &op.request {
                self.compare_path(inner, path)?;
            }
        }
        Ok(())
    }

    fn exec_txn(
        &mut self,
        req: &ep::TxnRequest,
        path: &mut impl Iterator<Item = bool>,
    ) -> Result<ep::TxnResponse, StoreError> {
        use ep::request_op::Request;
        use ep::response_op::Response;
        let succeeded =
            path.next().ok_or_else(|| StoreError::InvalidArgument("txn compare path ended early".into()))?;
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match &op.request {
                Some(Request::RequestRange(r)) => Response::ResponseRange(self.range(r)?),
                Some(Request::RequestPut(p)) => Response::ResponsePut(self.put(p)?),
                Some(Request::RequestDeleteRange(d)) => Response::ResponseDeleteRange(self.delete_range(d)?),
                Some(Request::RequestTxn(t)) => Response::ResponseTxn(self.exec_txn(t, path)?),
                None => return Err(StoreError::InvalidArgument("txn operation has no request".into())),
            };
            responses.push(ep::ResponseOp { response: Some(r) });
        }
        let rev = if self.sub > 0 { self.rev } else { self.base };
        Ok(ep::TxnResponse { header: header(rev), succeeded, responses })
    }

    fn compact(&mut self, req: &ep::CompactionRequest) -> Result<ep::CompactionResponse, StoreError> {
        let old = self.compact;
        if req.revision <= old {
            return Err(StoreError::Compacted { compact_revision: old });
        }
        if req.revision > self.base {
            return Err(StoreError::FutureRevision);
        }
        let new = req.revision;
        let db = &self.m.db;
        let mut history = Vec::new();
        db.scan(Cf::KvRev, &encoding::rev_key(old, 0), Dir::Forward, |k, v| {
            let (rev, sub) =
                encoding::parse_rev_key(k).ok_or_else(|| StoreError::Corrupt("malformed MVCC history key".into()))?;
            if rev >= new {
                return Ok(false);
            }
            history.push((rev, sub, v.get(1..).unwrap_or_default().to_vec()));
            Ok(true)
        })?;
        // Every key changed in the window: drop its versions older than the newest one at
        // or below the new compact revision (and that one too if it is a tombstone).
        // Versions kept by earlier compactions are found the same way, since they sit
        // right after the newest version in the index.
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for (rev, sub, key) in history {
            self.batch.delete(Cf::KvRev, encoding::rev_key(rev, sub));
            keys.push(key);
        }
        keys.sort();
        keys.dedup();
        for key in keys {
            let prefix = encoding::escape(&key);
            let mut first = true;
            let mut doomed = Vec::new();
            db.scan(Cf::KvIndex, &encoding::index_key(&key, new), Dir::Forward, |k, v| {
                if !(k.starts_with(&prefix) && k.len() == prefix.len() + 8) {
                    return Ok(false);
                }
                let (kind, kv) = decode_record(v)?;
                // A tombstone at exactly the compact revision stays: a watch from there
                // must still see the delete.
                if !first || (kind == TOMBSTONE && kv.mod_revision < new) {
                    doomed.push(k.to_vec());
                }
                first = false;
                Ok(true)
            })?;
            for k in doomed {
                self.batch.delete(Cf::KvIndex, k);
            }
        }
        self.batch.put(Cf::SmMeta, META_COMPACT, new.to_be_bytes());
        self.compact = new;
        Ok(ep::CompactionResponse { header: header(self.base) })
    }

    fn lease_grant(&mut self, req: &ep::LeaseGrantRequest) -> Result<ep::LeaseGrantResponse, StoreError> {
        if req.id <= 0 {
            return Err(StoreError::InvalidArgument("lease id must be positive".into()));
        }
        if req.ttl > limits::MAX_LEASE_TTL_SECS {
            return Err(StoreError::LeaseTtlTooLarge);
        }
        if self.m.lease_ttl(req.id)?.is_some() {
            return Err(StoreError::LeaseExists);
        }
        self.batch.put(Cf::Lease, encoding::lease_key(req.id), req.ttl.to_be_bytes());
        Ok(ep::LeaseGrantResponse { header: header(self.base), id: req.id, ttl: req.ttl, error: String::new() })
    }

    fn lease_revoke(&mut self, req: &ep::LeaseRevokeRequest) -> Result<ep::LeaseRevokeResponse, StoreError> {
        if self.m.lease_ttl(req.id)?.is_none() {
            return Err(StoreError::LeaseNotFound);
        }
        let mut victims = Vec::new();
        for key in self.m.lease_keys(req.id)? {
            if let Some(kv) = self.latest(&key)? {
                victims.push(kv);
            }
        }
        self.delete_keys(victims);
        let from = encoding::lease_key(req.id);
        let to = encoding::lease_key(req.id.saturating_add(1));
        self.batch.delete_range(Cf::LeaseKeys, from, to);
        self.batch.delete(Cf::Lease, from);
        let rev = if self.sub > 0 { self.rev } else { self.base };
        Ok(ep::LeaseRevokeResponse { header: header(rev) })
    }
}

#[cfg(test)]
mod tests;
