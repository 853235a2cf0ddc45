//! The Raft state machine: applies committed log entries to the MVCC store, one atomic
//! RocksDB batch per entry (including `last_applied`), feeds the watch hub, and builds and
//! installs snapshots.
//!
//! A snapshot is every record of the state-machine column families, read from one
//! consistent RocksDB view, as a stream of `(family tag, key, value)` records written to a
//! file under `<data-dir>/snapshots` (so a large store is never held in memory to be
//! snapshotted or sent). Installing one replaces the state machine in a single atomic batch.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flotilla_proto::raft as pb;
use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prost::Message;

use crate::codec;
use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::mvcc::Mvcc;
use crate::rocks::{Batch, Cf, Db, Sync};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::watch::WatchHub;

const META_APPLIED: &[u8] = b"last_applied";
const META_MEMBERSHIP: &[u8] = b"membership";

/// State shared between the state machine (driven by openraft) and the request handlers.
pub struct Shared {
    /// The database.
    pub db: Db,
    /// The MVCC store.
    pub mvcc: Arc<Mvcc>,
    /// The watch hub.
    pub hub: Arc<WatchHub>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// Metadata of the snapshot in `snap_dir/current`, if one was built or installed since
    /// start.
    snapshot: Mutex<Option<SnapshotMeta>>,
    snap_dir: PathBuf,
    /// Files being received, removed once a snapshot is installed.
    receiving: Mutex<Vec<PathBuf>>,
    /// Called with every applied lease grant/revoke, so the leader's lease clock follows.
    pub lease_events: tokio::sync::broadcast::Sender<LeaseEvent>,
}

/// A change to the set of leases, as applied.
#[derive(Debug, Clone, Copy)]
pub enum LeaseEvent {
    /// A lease was granted with this TTL.
    Granted(i64, i64),
    /// A lease was revoked.
    Revoked(i64),
}

/// Where [`Shared::export`] writes.
pub trait SnapshotSink: Write {
    /// The revision of the data about to be written.
    fn revision(&mut self, revision: i64);
}

/// Writes the state machine as of `view` in the snapshot format: the magic, then
/// `(column family tag, varint key length, key, varint value length, value)` records.
fn write_state(view: &crate::rocks::View<'_>, out: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(SNAPSHOT_MAGIC)?;
    let mut record = Vec::new();
    for cf in Cf::STATE_MACHINE {
        view.for_each(cf, |k, v| {
            record.clear();
            record.push(cf.tag());
            put_varint(&mut record, k.len() as u64);
            record.extend_from_slice(k);
            put_varint(&mut record, v.len() as u64);
            record.extend_from_slice(v);
            out.write_all(&record).map_err(|e| StoreError::Storage(format!("writing a snapshot: {e}")))
        })
        .map_err(std::io::Error::other)?;
    }
    Ok(())
}

impl Shared {
    /// Writes a consistent copy of this member's state machine (every key, revision and
    /// lease as of one applied index) to `out`, in the format Raft snapshots use, after
    /// telling `out` the revision it holds.
    pub fn export(&self, out: &mut dyn SnapshotSink) -> Result<(), StoreError> {
        let view = self.db.view();
        let revision = view
            .get(Cf::SmMeta, crate::mvcc::META_REVISION)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(1, i64::from_be_bytes);
        out.revision(revision);
        write_state(&view, out).map_err(|e| StoreError::Storage(format!("exporting a snapshot: {e}")))
    }

    /// The last applied log id and the membership as of it.
    pub fn applied(&self) -> (Option<LogId>, StoredMembership) {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The state machine handed to openraft. Cheap to clone.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

fn read_meta<M: Message + Default>(db: &Db, key: &[u8]) -> Result<Option<M>, StoreError> {
    match db.get(Cf::SmMeta, key)? {
        None => Ok(None),
        Some(b) => Ok(Some(codec::decode_disk("state machine meta", &b)?)),
    }
}

fn load_applied(db: &Db) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let applied = read_meta::<pb::LogId>(db, META_APPLIED)?.map(|l| codec::log_id_from_pb(&l));
    let membership = read_meta::<pb::StoredMembership>(db, META_MEMBERSHIP)?
        .map(|m| codec::stored_membership_from_pb(&m))
        .transpose()?
        .unwrap_or_default();
    Ok((applied, membership))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(data: &[u8], pos: &mut usize) -> Result<u64, StoreError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*pos).ok_or_else(|| StoreError::Corrupt("snapshot truncated".into()))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(StoreError::Corrupt("snapshot varint too long".into()))
}

fn get_bytes<'a>(data: &'a [u8], pos: &mut usize) -> Result<&'a [u8], StoreError> {
    let n = get_varint(data, pos)? as usize;
    let end = pos
        .checked_add(n)
        .filter(|e| *e <= data.len())
        .ok_or_else(|| StoreError::Corrupt("snapshot truncated".into()))?;
    let s = &data[*pos..end];
    *pos = end;
    Ok(s)
}

/// Calls `put` for every record of the snapshot `data` (after its header).
fn decode_records(data: &[u8], mut put: impl FnMut(Cf, &[u8], &[u8])) -> Result<(), StoreError> {
    let mut pos = SNAPSHOT_MAGIC.len();
    while pos < data.len() {
        let tag = data[pos];
        pos += 1;
        let cf = Cf::from_tag(tag)
            .filter(|c| Cf::STATE_MACHINE.contains(c))
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot names unknown column family {tag}")))?;
        let k = get_bytes(data, &mut pos)?;
        let v = get_bytes(data, &mut pos)?;
        put(cf, k, v);
    }
    Ok(())
}

/// How a restore moves the restored revision on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Added to the snapshot's revision: the restored cluster's revisions then stay ahead
    /// of any its clients saw before (writes made after the snapshot was saved).
    pub bump_revision: i64,
    /// Marks every revision up to the restored one compacted, so that a watch resumed
    /// from a revision of the old cluster is refused (compacted) and its client lists
    /// again, instead of waiting for revisions that will mean other things.
    pub mark_compacted: bool,
}

impl RestoreOptions {
    /// The revision a restore of a snapshot saved at `saved` starts at; refuses a
    /// negative bump or one that overflows.
    pub fn bumped(&self, saved: i64) -> Result<i64, StoreError> {
        if self.bump_revision < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "the revision bump must not be negative, not {}",
                self.bump_revision
            )));
        }
        saved
            .checked_add(self.bump_revision)
            .ok_or_else(|| StoreError::InvalidArgument(format!("revision {saved} + {} overflows", self.bump_revision)))
    }
}

/// Writes the key-value state of a saved snapshot (`flotctl cluster snapshot save`) into
/// the fresh database of a member of a new cluster: every key, revision and lease, but
/// not the old cluster's Raft position or membership (the new cluster's log starts from
/// nothing). Returns the revision the restored member starts at (the snapshot's, plus
/// any bump).
pub fn restore(db: &Db, data: &[u8], opts: RestoreOptions) -> Result<i64, StoreError> {
    let revision = opts.bumped(check_snapshot(data)?)?;
    let mut batch = Batch::new();
    decode_records(data, |cf, k, v| {
        if !(cf == Cf::SmMeta && (k == META_APPLIED || k == META_MEMBERSHIP)) {
            batch.put(cf, k, v);
        }
    })?;
    batch.put(Cf::SmMeta, crate::mvcc::META_REVISION, revision.to_be_bytes());
    if opts.mark_compacted {
        batch.put(Cf::SmMeta, crate::mvcc::META_COMPACT, revision.to_be_bytes());
    }
    db.write(batch, Sync::Yes)?;
    Ok(revision)
}

/// Checks that `data` is a whole Flotilla snapshot (header, records, a well-formed
/// revision) without writing anything; returns the revision it holds (1 if none).
pub fn check_snapshot(data: &[u8]) -> Result<i64, StoreError> {
    if !data.starts_with(SNAPSHOT_MAGIC) {
        return Err(StoreError::Corrupt("not a Flotilla snapshot (no FLOTSNAP1 header)".into()));
    }
    let mut revision: Option<Vec<u8>> = None;
    decode_records(data, |cf, k, v| {
        if cf == Cf::SmMeta && k == crate::mvcc::META_REVISION {
            revision = Some(v.to_vec());
        }
    })?;
    match revision {
        None => Ok(1),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(i64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt(format!("the snapshot's revision is {} bytes, not 8", v.len()))),
    }
}

/// Snapshot stream header, so a foreign or damaged stream is refused.
const SNAPSHOT_MAGIC: &[u8] = b"FLOTSNAP1";

impl StateMachine {
    /// Opens the state machine stored in `db`.
    pub fn open(db: Db, metrics: Arc<Metrics>, snap_dir: PathBuf) -> Result<StateMachine, StoreError> {
        std::fs::create_dir_all(&snap_dir)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", snap_dir.display())))?;
        let mvcc = Arc::new(Mvcc::open(db.clone())?);
        let hub = WatchHub::new(mvcc.clone());
        let applied = load_applied(&db)?;
        metrics.revision.set(mvcc.revision());
        let (lease_events, _) = tokio::sync::broadcast::channel(1024);
        Ok(StateMachine {
            shared: Arc::new(Shared {
                db,
                mvcc,
                hub,
                metrics,
                applied: Mutex::new(applied),
                snapshot: Mutex::new(None),
                snap_dir,
                receiving: Mutex::new(Vec::new()),
                lease_events,
            }),
        })
    }

    /// The state shared with request handlers.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn apply_one(&self, entry: &Entry) -> Result<pb::CommandResult, StoreError> {
        let s = &self.shared;
        let mut batch = Batch::new();
        let mut result = pb::CommandResult { kind: Some(pb::command_result::Kind::None(pb::Blank {})) };
        let mut published = None;
        let mut new_membership = None;
        // Sent once the batch is written: the lease clock checks the applied state.
        let mut lease_event = None;
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(cmd) => {
                let applied = s.mvcc.apply(cmd, &mut batch)?;
                if let Some(pb::command_result::Kind::LeaseGrant(g)) = &applied.result.kind {
                    lease_event = Some(LeaseEvent::Granted(g.id, g.ttl));
                }
                if let (Some(pb::command::Kind::LeaseRevoke(r)), Some(pb::command_result::Kind::LeaseRevoke(_))) =
                    (&cmd.kind, &applied.result.kind)
                {
                    lease_event = Some(LeaseEvent::Revoked(r.id));
                }
                // Readers must see a higher compact revision before any history is deleted,
                // so a read that raced the deletion reports "compacted", never a partial result.
                s.mvcc.raise_compact(applied.compact_revision);
                result = applied.result;
                published = Some((applied.revision, applied.compact_revision, applied.events, applied.written));
            }
            EntryPayload::Membership(m) => {
                let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                batch.put(Cf::SmMeta, META_MEMBERSHIP, codec::stored_membership_to_pb(&sm).encode_to_vec());
                new_membership = Some(sm);
            }
        }
        batch.put(Cf::SmMeta, META_APPLIED, codec::log_id_to_pb(&entry.log_id).encode_to_vec());
        s.db.write(batch, Sync::No)?;
        // Readers first, then the applied index: a linearizable read waits until its read
        // index is applied, then reads at the published revision, so the entry's revision
        // must be published before the entry counts as applied. (The other order let a
        // read on a follower find its index applied and read the revision before it: an
        // acknowledged write missing from a linearizable read, issue 10.)
        if let Some((rev, compact, events, written)) = published {
            s.mvcc.remember(written);
            crate::fault::before_publish();
            s.hub.publish(rev, compact, events);
            s.metrics.revision.set(rev);
        }
        {
            let mut a = s.applied.lock().unwrap_or_else(|p| p.into_inner());
            a.0 = Some(entry.log_id);
            if let Some(m) = new_membership {
                a.1 = m;
            }
        }
        if let Some(ev) = lease_event {
            let _ = s.lease_events.send(ev);
        }
        s.metrics.applied_index.set(entry.log_id.index as i64);
        Ok(result)
    }

    fn build(&self) -> Result<Snapshot, StoreError> {
        let s = &self.shared;
        let view = s.db.view();
        let applied = view
            .get(Cf::SmMeta, META_APPLIED)?
            .map(|b| codec::decode_disk::<pb::LogId>("last_applied", &b))
            .transpose()?;
        let membership = view
            .get(Cf::SmMeta, META_MEMBERSHIP)?
            .map(|b| codec::decode_disk::<pb::StoredMembership>("membership", &b))
            .transpose()?;
        let io = |e: std::io::Error| StoreError::Storage(format!("writing a snapshot: {e}"));
        let building = s.snap_dir.join(format!("building-{}", std::process::id()));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&building).map_err(io)?);
        write_state(&view, &mut out).map_err(io)?;
        out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
        let last_log_id = applied.map(|l| codec::log_id_from_pb(&l));
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership.map(|m| codec::stored_membership_from_pb(&m)).transpose()?.unwrap_or_default(),
        };
        {
            // A build that started before a snapshot was installed must not replace it.
            let mut cur = s.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            if cur.as_ref().is_none_or(|m| m.last_log_id <= meta.last_log_id) {
                std::fs::rename(&building, self.current_path()).map_err(io)?;
                *cur = Some(meta.clone());
            } else {
                let _ = std::fs::remove_file(&building);
                return self.current().and_then(|c| c.ok_or_else(|| StoreError::Storage("snapshot vanished".into())));
            }
        }
        self.current().and_then(|c| c.ok_or_else(|| StoreError::Storage("snapshot vanished".into())))
    }

    fn current_path(&self) -> PathBuf {
        self.shared.snap_dir.join("current")
    }

    /// The current snapshot with its data file opened at the start.
    fn current(&self) -> Result<Option<Snapshot>, StoreError> {
        let Some(meta) = self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(None);
        };
        let file = std::fs::File::open(self.current_path())
            .map_err(|e| StoreError::Storage(format!("opening the current snapshot: {e}")))?;
        Ok(Some(Snapshot { meta, snapshot: tokio::fs::File::from_std(file) }))
    }

    /// Replaces the state machine with the snapshot in `data`, then keeps `data` as the
    /// current snapshot file.
    fn install(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let s = &self.shared;
        if !data.starts_with(SNAPSHOT_MAGIC) {
            return Err(StoreError::Corrupt("snapshot stream has no Flotilla header".into()));
        }
        // Readers must not mix cached records of the old state with the new one.
        s.mvcc.forget_cached();
        let mut batch = Batch::new();
        for cf in Cf::STATE_MACHINE {
            s.db.scan(cf, &[], crate::rocks::Dir::Forward, |k, _| {
                batch.delete(cf, k);
                Ok(true)
            })?;
        }
        decode_records(data, |cf, k, v| batch.put(cf, k, v))?;
        // The snapshot's own meta is authoritative for applied/membership.
        if let Some(l) = &meta.last_log_id {
            batch.put(Cf::SmMeta, META_APPLIED, codec::log_id_to_pb(l).encode_to_vec());
        }
        batch.put(Cf::SmMeta, META_MEMBERSHIP, codec::stored_membership_to_pb(&meta.last_membership).encode_to_vec());
        s.db.write(batch, Sync::Yes)?;
        s.mvcc.reload()?;
        *s.applied.lock().unwrap_or_else(|p| p.into_inner()) = (meta.last_log_id, meta.last_membership.clone());
        let keep = |e: std::io::Error| StoreError::Storage(format!("keeping the installed snapshot: {e}"));
        let installing = s.snap_dir.join("installing");
        std::fs::write(&installing, data).map_err(keep)?;
        std::fs::rename(&installing, self.current_path()).map_err(keep)?;
        *s.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
        s.hub.resync_all();
        s.metrics.revision.set(s.mvcc.revision());
        s.metrics.snapshots_installed.inc();
        tracing::info!(last_log_id = ?meta.last_log_id, revision = s.mvcc.revision(), "installed a snapshot from the leader");
        Ok(())
    }
}

impl Shared {
    /// A new file under the snapshot directory for a snapshot arriving from the leader in
    /// chunks; removed once a snapshot is installed.
    pub fn begin_receiving_snapshot(&self) -> Result<tokio::fs::File, StoreError> {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = self.snap_dir.join(format!("receiving-{n}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", path.display())))?;
        self.receiving.lock().unwrap_or_else(|p| p.into_inner()).push(path);
        Ok(tokio::fs::File::from_std(file))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let me = self.clone();
        let snap = tokio::task::spawn_blocking(move || me.build())
            .await
            .map_err(|e| StoreError::Fatal(format!("snapshot task failed: {e}")))??;
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        Ok(self.shared.applied())
    }

    /// Applies each entry in its own atomic batch, and answers the client that proposed it
    /// (on the leader) as soon as that entry is applied, not after the whole run.
    async fn apply<S>(&mut self, mut entries: S) -> Result<(), std::io::Error>
    where
        S: futures::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = self.apply_one(&entry)?;
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: tokio::fs::File) -> Result<(), std::io::Error> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
        // The data may be in a file we created (chunks written to it) or one handed over
        // whole: read it from the start either way.
        let mut file = snapshot;
        let io = |e: std::io::Error| StoreError::Storage(format!("reading a received snapshot: {e}"));
        file.flush().await.map_err(io)?;
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).await.map_err(io)?;
        for p in self.shared.receiving.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = std::fs::remove_file(p);
        }
        let me = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || me.install(&meta, &data))
            .await
            .map_err(|e| StoreError::Fatal(format!("snapshot install task failed: {e}")))??;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        Ok(self.current()?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use flotilla_proto::etcdserverpb as ep;
    use flotilla_proto::raft as pb;
    use openraft::EntryPayload;

    use super::*;
    use crate::metrics::Metrics;
    use crate::types::CommittedLeaderId;

    /// Entries as openraft hands them to `apply` on a follower: no one waits for a result.
    fn entries(v: Vec<Entry>) -> impl futures::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> {
        futures::stream::iter(v.into_iter().map(|e| Ok((e, None))))
    }

    fn put(index: u64, key: &str, value: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId { term: 1, node_id: 1 }, index),
            payload: EntryPayload::Normal(pb::Command {
                kind: Some(pb::command::Kind::Put(ep::PutRequest {
                    key: key.into(),
                    value: value.into(),
                    ..Default::default()
                })),
            }),
        }
    }

    /// Regression (issue 10: an acknowledged create not found by a linearizable get from
    /// another master). A linearizable read waits until its read index is applied, then
    /// reads at the published revision. The applier marked an entry applied before it
    /// published the entry's revision, so a read on a follower that arrived in between
    /// found its index applied and read the revision before the write. Here a reader looks
    /// at the very moment the applier is about to publish: whatever already counts as
    /// applied must be readable.
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_that_finds_its_index_applied_sees_that_entrys_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("db")).expect("open");
        let mut sm = StateMachine::open(db, Arc::new(Metrics::new()), dir.path().join("snapshots")).expect("sm");
        let shared = sm.shared();
        sm.apply(entries(vec![put(1, "k", "v1")])).await.expect("apply 1");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, record) = (shared.clone(), seen.clone());
        crate::fault::set_before_publish(Some(Box::new(move || {
            let applied = s.applied().0.map_or(0, |l| l.index);
            let read = s.mvcc.range(&ep::RangeRequest { key: "k".into(), ..Default::default() }).expect("range");
            let value = read.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            record.lock().expect("lock").push((applied, value));
        })));
        sm.apply(entries(vec![put(2, "k", "v2"), put(3, "k", "v3")])).await.expect("apply 2, 3");
        crate::fault::set_before_publish(None);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2, "the hook ran once per entry: {seen:?}");
        for (applied, value) in &seen {
            let want = format!("v{applied}");
            assert_eq!(value.as_deref(), Some(want.as_str()), "entry {applied} counted as applied but unread");
        }
        let read = shared.mvcc.range(&ep::RangeRequest { key: "k".into(), ..Default::default() }).expect("range");
        assert_eq!(read.kvs[0].value, b"v3");
        assert_eq!(shared.applied().0.map(|l| l.index), Some(3));
    }

    struct Bytes(Vec<u8>);
    impl Write for Bytes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl SnapshotSink for Bytes {
        fn revision(&mut self, _: i64) {}
    }

    /// A restore that bumps the revision and marks it compacted: the keys read as saved,
    /// new writes come after the bumped revision, and a read (or watch) from a revision
    /// of the old cluster is refused as compacted, so its client lists again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_restore_bumped_and_marked_compacted_refuses_the_old_clusters_revisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("old")).expect("open");
        let mut sm = StateMachine::open(db, Arc::new(Metrics::new()), dir.path().join("s1")).expect("sm");
        sm.apply(entries(vec![put(1, "a", "1"), put(2, "b", "2")])).await.expect("apply");
        let mut saved = Bytes(Vec::new());
        sm.shared().export(&mut saved).expect("export");
        let saved_rev = check_snapshot(&saved.0).expect("snapshot");

        let db = Db::open(&dir.path().join("new")).expect("open");
        let opts = RestoreOptions { bump_revision: 1000, mark_compacted: true };
        assert_eq!(restore(&db, &saved.0, opts).expect("restore"), saved_rev + 1000);
        let sm = StateMachine::open(db, Arc::new(Metrics::new()), dir.path().join("s2")).expect("sm");
        let mvcc = &sm.shared().mvcc;
        assert_eq!(mvcc.revision(), saved_rev + 1000);
        let read = mvcc.range(&ep::RangeRequest { key: "b".into(), ..Default::default() }).expect("range");
        assert_eq!((read.kvs[0].value.as_slice(), read.kvs[0].mod_revision), (&b"2"[..], saved_rev));
        assert!(matches!(mvcc.check_revision(saved_rev + 1), Err(StoreError::Compacted { .. })));
        assert_eq!(mvcc.check_revision(saved_rev + 1000).expect("the restored revision reads"), saved_rev + 1000);

        let db = Db::open(&dir.path().join("plain")).expect("open");
        assert_eq!(restore(&db, &saved.0, RestoreOptions::default()).expect("restore"), saved_rev);
        let db = Db::open(&dir.path().join("bad")).expect("open");
        let bad = RestoreOptions { bump_revision: -1, mark_compacted: false };
        assert!(matches!(restore(&db, &saved.0, bad), Err(StoreError::InvalidArgument(_))));
    }
}
