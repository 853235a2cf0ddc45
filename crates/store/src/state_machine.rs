//! The Raft state machine: applies committed log entries to the MVCC store, one atomic
//! RocksDB batch per entry (including `last_applied`), feeds the watch hub, and builds and
//! installs snapshots.
//!
//! A snapshot is every record of the state-machine column families, read from one
//! consistent RocksDB view, as a stream of `(family tag, key, value)` records. Installing
//! one replaces the state machine in a single atomic batch.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use flotilla_proto::raft as pb;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use prost::Message;

use crate::codec;
use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::mvcc::Mvcc;
use crate::rocks::{Batch, Cf, Db, Sync};
use crate::types::{Entry, LogId, Membership, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
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
    snapshot: Mutex<Option<(SnapshotMeta, Vec<u8>)>>,
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

impl Shared {
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
        .unwrap_or_else(|| StoredMembership::new(None, Membership::new(vec![], ())));
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

/// Snapshot stream header, so a foreign or damaged stream is refused.
const SNAPSHOT_MAGIC: &[u8] = b"FLOTSNAP1";

impl StateMachine {
    /// Opens the state machine stored in `db`.
    pub fn open(db: Db, metrics: Arc<Metrics>) -> Result<StateMachine, StoreError> {
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
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(cmd) => {
                let applied = s.mvcc.apply(cmd, &mut batch)?;
                if let Some(pb::command_result::Kind::LeaseGrant(g)) = &applied.result.kind {
                    let _ = s.lease_events.send(LeaseEvent::Granted(g.id, g.ttl));
                }
                if let (Some(pb::command::Kind::LeaseRevoke(r)), Some(pb::command_result::Kind::LeaseRevoke(_))) =
                    (&cmd.kind, &applied.result.kind)
                {
                    let _ = s.lease_events.send(LeaseEvent::Revoked(r.id));
                }
                // Readers must see a higher compact revision before any history is deleted,
                // so a read that raced the deletion reports "compacted", never a partial result.
                s.mvcc.raise_compact(applied.compact_revision);
                result = applied.result;
                published = Some((applied.revision, applied.compact_revision, applied.events));
            }
            EntryPayload::Membership(m) => {
                let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                batch.put(&s.db, Cf::SmMeta, META_MEMBERSHIP, codec::stored_membership_to_pb(&sm).encode_to_vec());
                new_membership = Some(sm);
            }
        }
        batch.put(&s.db, Cf::SmMeta, META_APPLIED, codec::log_id_to_pb(&entry.log_id).encode_to_vec());
        s.db.write(batch, Sync::No)?;
        {
            let mut a = s.applied.lock().unwrap_or_else(|p| p.into_inner());
            a.0 = Some(entry.log_id);
            if let Some(m) = new_membership {
                a.1 = m;
            }
        }
        if let Some((rev, compact, events)) = published {
            s.hub.publish(rev, compact, events);
            s.metrics.revision.set(rev);
        }
        s.metrics.applied_index.set(entry.log_id.index as i64);
        Ok(result)
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
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
        let mut data = SNAPSHOT_MAGIC.to_vec();
        for cf in Cf::STATE_MACHINE {
            view.for_each(cf, |k, v| {
                data.push(cf.tag());
                put_varint(&mut data, k.len() as u64);
                data.extend_from_slice(k);
                put_varint(&mut data, v.len() as u64);
                data.extend_from_slice(v);
                Ok(())
            })?;
        }
        let last_log_id = applied.map(|l| codec::log_id_from_pb(&l));
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: membership
                .map(|m| codec::stored_membership_from_pb(&m))
                .unwrap_or_else(|| StoredMembership::new(None, Membership::new(vec![], ()))),
            snapshot_id: match last_log_id {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, std::process::id()),
                None => format!("empty-{}", std::process::id()),
            },
        };
        {
            // A build that started before a snapshot was installed must not replace it.
            let mut cur = s.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            if cur.as_ref().is_none_or(|(m, _)| m.last_log_id <= meta.last_log_id) {
                *cur = Some((meta.clone(), data.clone()));
            }
        }
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }

    fn install(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
        let s = &self.shared;
        if !data.starts_with(SNAPSHOT_MAGIC) {
            return Err(StoreError::Corrupt("snapshot stream has no Flotilla header".into()));
        }
        let mut batch = Batch::new();
        for cf in Cf::STATE_MACHINE {
            s.db.scan(cf, &[], crate::rocks::Dir::Forward, |k, _| {
                batch.delete(&s.db, cf, k);
                Ok(true)
            })?;
        }
        let mut pos = SNAPSHOT_MAGIC.len();
        while pos < data.len() {
            let tag = data[pos];
            pos += 1;
            let cf = Cf::from_tag(tag)
                .filter(|c| Cf::STATE_MACHINE.contains(c))
                .ok_or_else(|| StoreError::Corrupt(format!("snapshot names unknown column family {tag}")))?;
            let k = get_bytes(&data, &mut pos)?;
            let v = get_bytes(&data, &mut pos)?;
            batch.put(&s.db, cf, k, v);
        }
        // The snapshot's own meta is authoritative for applied/membership.
        if let Some(l) = &meta.last_log_id {
            batch.put(&s.db, Cf::SmMeta, META_APPLIED, codec::log_id_to_pb(l).encode_to_vec());
        }
        batch.put(
            &s.db,
            Cf::SmMeta,
            META_MEMBERSHIP,
            codec::stored_membership_to_pb(&meta.last_membership).encode_to_vec(),
        );
        s.db.write(batch, Sync::Yes)?;
        s.mvcc.reload()?;
        *s.applied.lock().unwrap_or_else(|p| p.into_inner()) = (meta.last_log_id, meta.last_membership.clone());
        *s.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), data));
        s.hub.resync_all();
        s.metrics.revision.set(s.mvcc.revision());
        s.metrics.snapshots_installed.inc();
        tracing::info!(last_log_id = ?meta.last_log_id, revision = s.mvcc.revision(), "installed a snapshot from the leader");
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let me = self.clone();
        let snap = tokio::task::spawn_blocking(move || me.build())
            .await
            .map_err(|e| StoreError::Fatal(format!("snapshot task failed: {e}")))??;
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.shared.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<pb::CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            out.push(self.apply_one(&e)?);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner())?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let cur = self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(cur.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
