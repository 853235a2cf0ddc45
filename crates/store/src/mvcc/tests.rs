//! The MVCC store against a simple in-memory reference model: a full copy of the key space
//! per revision. Random sequences of put / delete / txn / compact / range must give the same
//! responses and revisions from both.

use std::collections::BTreeMap;

use flotilla_core::keys::KeyRange;
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::mvccpb::KeyValue;
use flotilla_proto::raft as pb;
use proptest::prelude::*;

use super::{finish_range, Mvcc};
use crate::error::StoreError;
use crate::rocks::{Batch, Db, Sync};

type State = BTreeMap<Vec<u8>, KeyValue>;

/// The reference: every revision's whole state.
struct Model {
    rev: i64,
    compact: i64,
    states: BTreeMap<i64, State>,
}

fn hdr(rev: i64) -> Option<ep::ResponseHeader> {
    Some(ep::ResponseHeader { revision: rev, ..Default::default() })
}

struct ModelTx {
    base: i64,
    rev: i64,
    wrote: bool,
    state: State,
}

impl ModelTx {
    fn cur(&self) -> i64 {
        if self.wrote {
            self.rev
        } else {
            self.base
        }
    }
    fn in_range(&self, key: &[u8], end: &[u8]) -> Vec<KeyValue> {
        let r = KeyRange::from_etcd(key, end);
        self.state.values().filter(|kv| r.contains(&kv.key)).cloned().collect()
    }
    fn put(&mut self, p: &ep::PutRequest) -> ep::PutResponse {
        let prev = self.state.get(&p.key).cloned();
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |x| x.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |x| x.version + 1),
            value: p.value.clone(),
            lease: 0,
        };
        self.state.insert(p.key.clone(), kv);
        self.wrote = true;
        ep::PutResponse { header: hdr(self.rev), prev_kv: if p.prev_kv { prev } else { None } }
    }
    fn delete(&mut self, d: &ep::DeleteRangeRequest) -> ep::DeleteRangeResponse {
        let victims = self.in_range(&d.key, &d.range_end);
        for v in &victims {
            self.state.remove(&v.key);
            self.wrote = true;
        }
        ep::DeleteRangeResponse {
            header: hdr(self.cur()),
            deleted: victims.len() as i64,
            prev_kvs: if d.prev_kv { victims } else { vec![] },
        }
    }
    fn txn(&mut self, t: &ep::TxnRequest) -> ep::TxnResponse {
        use ep::request_op::Request;
        use ep::response_op::Response;
        let ok = t.compare.iter().all(|c| {
            let kvs = self.in_range(&c.key, &c.range_end);
            let want = match &c.target_union {
                Some(ep::compare::TargetUnion::Version(v)) => *v,
                _ => unreachable!("the generator only makes version compares"),
            };
            let check = |kv: &KeyValue| kv.version == want;
            if kvs.is_empty() {
                check(&KeyValue::default())
            } else {
                kvs.iter().all(check)
            }
        });
        let ops = if ok { &t.success } else { &t.failure };
        let mut responses = vec![];
        for op in ops {
            let r = match op.request.as_ref().expect("generated ops have requests") {
                Request::RequestRange(r) => {
                    let kvs = self.in_range(&r.key, &r.range_end);
                    Response::ResponseRange(finish_range(r, kvs, self.cur()))
                }
                Request::RequestPut(p) => Response::ResponsePut(self.put(p)),
                Request::RequestDeleteRange(d) => Response::ResponseDeleteRange(self.delete(d)),
                Request::RequestTxn(t) => Response::ResponseTxn(self.txn(t)),
            };
            responses.push(ep::ResponseOp { response: Some(r) });
        }
        ep::TxnResponse { header: hdr(self.cur()), succeeded: ok, responses }
    }
}

impl Model {
    fn new() -> Model {
        Model { rev: 1, compact: 0, states: BTreeMap::from([(1, State::new())]) }
    }

    fn apply(&mut self, cmd: &pb::Command) -> pb::CommandResult {
        use pb::command::Kind;
        use pb::command_result::Kind as R;
        let mut tx = ModelTx { base: self.rev, rev: self.rev + 1, wrote: false, state: self.states[&self.rev].clone() };
        let kind = match cmd.kind.as_ref().expect("generated commands have a kind") {
            Kind::Put(p) => R::Put(tx.put(p)),
            Kind::DeleteRange(d) => R::DeleteRange(tx.delete(d)),
            Kind::Txn(t) => R::Txn(tx.txn(t)),
            Kind::Compaction(c) => {
                let err = if c.revision <= self.compact {
                    Some(StoreError::Compacted { compact_revision: self.compact })
                } else if c.revision > self.rev {
                    Some(StoreError::FutureRevision)
                } else {
                    None
                };
                match err {
                    Some(e) => R::Error(pb::CommandError { code: e.code() as i32, message: e.to_string() }),
                    None => {
                        self.compact = c.revision;
                        R::Compaction(ep::CompactionResponse { header: hdr(self.rev) })
                    }
                }
            }
            _ => unreachable!("the generator makes no lease commands"),
        };
        if tx.wrote {
            self.rev += 1;
            self.states.insert(self.rev, tx.state);
        }
        pb::CommandResult { kind: Some(kind) }
    }

    fn range(&self, r: &ep::RangeRequest) -> Result<ep::RangeResponse, StoreError> {
        let rev = if r.revision <= 0 { self.rev } else { r.revision };
        if rev > self.rev {
            return Err(StoreError::FutureRevision);
        }
        if rev < self.compact {
            return Err(StoreError::Compacted { compact_revision: self.compact });
        }
        let range = KeyRange::from_etcd(&r.key, &r.range_end);
        let kvs = self.states[&rev].values().filter(|kv| range.contains(&kv.key)).cloned().collect();
        Ok(finish_range(r, kvs, rev))
    }
}

// ------------------------------------------------------------------ generators ----

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"a".to_vec()),
        Just(b"a\0".to_vec()),
        Just(b"ab".to_vec()),
        Just(b"b".to_vec()),
        Just(b"c".to_vec())
    ]
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => Just(vec![]), 1 => Just(b"b".to_vec()), 1 => Just(b"d".to_vec()), 1 => Just(vec![0])]
}

fn put() -> impl Strategy<Value = ep::PutRequest> {
    (key(), proptest::collection::vec(any::<u8>(), 0..3), any::<bool>())
        .prop_map(|(key, value, prev_kv)| ep::PutRequest { key, value, prev_kv, ..Default::default() })
}

fn delete() -> impl Strategy<Value = ep::DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| ep::DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range(max_rev: i64) -> impl Strategy<Value = ep::RangeRequest> {
    (key(), range_end(), 0..max_rev, 0i64..3, 0i32..3, 0i32..5, any::<bool>(), any::<bool>()).prop_map(
        |(key, range_end, revision, limit, sort_order, sort_target, keys_only, count_only)| ep::RangeRequest {
            key,
            range_end,
            revision,
            limit,
            sort_order,
            sort_target,
            keys_only,
            count_only,
            ..Default::default()
        },
    )
}

fn op() -> impl Strategy<Value = ep::RequestOp> {
    use ep::request_op::Request;
    prop_oneof![
        put().prop_map(Request::RequestPut),
        delete().prop_map(Request::RequestDeleteRange),
        range(1).prop_map(Request::RequestRange),
    ]
    .prop_map(|r| ep::RequestOp { request: Some(r) })
}

fn txn() -> impl Strategy<Value = ep::TxnRequest> {
    (key(), range_end(), 0i64..3, proptest::collection::vec(op(), 0..4), proptest::collection::vec(op(), 0..4))
        .prop_map(|(key, range_end, version, success, failure)| ep::TxnRequest {
            compare: vec![ep::Compare {
                key,
                range_end,
                target: ep::compare::CompareTarget::Version as i32,
                result: ep::compare::CompareResult::Equal as i32,
                target_union: Some(ep::compare::TargetUnion::Version(version)),
            }],
            success,
            failure,
        })
}

#[derive(Debug, Clone)]
enum Step {
    Apply(pb::Command),
    Range(ep::RangeRequest),
}

fn write_command() -> impl Strategy<Value = pb::Command> {
    use pb::command::Kind;
    prop_oneof![
        put().prop_map(|p| pb::Command { kind: Some(Kind::Put(p)) }),
        delete().prop_map(|d| pb::Command { kind: Some(Kind::DeleteRange(d)) }),
        txn().prop_map(|t| pb::Command { kind: Some(Kind::Txn(t)) }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    use pb::command::Kind;
    prop_oneof![
        4 => put().prop_map(|p| Step::Apply(pb::Command { kind: Some(Kind::Put(p)) })),
        2 => delete().prop_map(|d| Step::Apply(pb::Command { kind: Some(Kind::DeleteRange(d)) })),
        3 => txn().prop_map(|t| Step::Apply(pb::Command { kind: Some(Kind::Txn(t)) })),
        1 => (0i64..30).prop_map(|revision| Step::Apply(pb::Command {
            kind: Some(Kind::Compaction(ep::CompactionRequest { revision, physical: false })),
        })),
        3 => range(30).prop_map(Step::Range),
        2 => proptest::collection::vec(write_command(), 1..6).prop_map(|commands| Step::Apply(pb::Command {
            kind: Some(Kind::Batch(pb::CommandBatch { commands })),
        })),
    ]
}

fn apply_real(m: &Mvcc, db: &Db, cmd: &pb::Command) -> pb::CommandResult {
    let mut batch = Batch::new();
    let applied = m.apply(cmd, &mut batch).expect("no storage error");
    db.write(batch, Sync::No).expect("write");
    m.remember(applied.written);
    m.publish(applied.revision, applied.compact_revision);
    applied.result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random put/delete/txn/compact/range sequences give the same responses and revisions
    /// from the RocksDB MVCC store as from the reference model, and the store's history
    /// (watch events) matches the model's revisions — with the cache of newest records
    /// off, tiny (constant eviction) or at its default size.
    #[test]
    fn mvcc_store_matches_reference_model(
        steps in proptest::collection::vec(step(), 1..60),
        cache_bytes in prop_oneof![Just(0usize), Just(600), Just(super::latest::DEFAULT_BYTES)],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let real = Mvcc::open_with_cache(db.clone(), cache_bytes).expect("mvcc");
        let mut model = Model::new();
        for s in &steps {
            match s {
                Step::Apply(cmd) => {
                    // The server refuses invalid transactions before they reach the log.
                    let valid = |c: &pb::Command| match &c.kind {
                        Some(pb::command::Kind::Txn(t)) => crate::etcd::validate::txn(t).is_ok(),
                        _ => true,
                    };
                    let cmd = match &cmd.kind {
                        Some(pb::command::Kind::Batch(b)) => pb::Command {
                            kind: Some(pb::command::Kind::Batch(pb::CommandBatch {
                                commands: b.commands.iter().filter(|c| valid(c)).cloned().collect(),
                            })),
                        },
                        _ if !valid(cmd) => continue,
                        _ => cmd.clone(),
                    };
                    // A batch applies like its commands one after another.
                    let want = match &cmd.kind {
                        Some(pb::command::Kind::Batch(b)) => pb::CommandResult {
                            kind: Some(pb::command_result::Kind::Batch(pb::CommandResultBatch {
                                results: b.commands.iter().map(|c| model.apply(c)).collect(),
                            })),
                        },
                        _ => model.apply(&cmd),
                    };
                    let got = apply_real(&real, &db, &cmd);
                    prop_assert_eq!(got, want, "command {:?}", cmd);
                }
                Step::Range(r) => {
                    prop_assert_eq!(real.range(r), model.range(r), "range {:?}", r);
                }
            }
            prop_assert_eq!(real.revision(), model.rev);
            prop_assert_eq!(real.compact_revision(), model.compact);
        }
        // Every revision still readable replays as the model's state transitions.
        let all = KeyRange::from_etcd(&[0], &[0]);
        let from = model.compact.max(2);
        let (events, covered) = real.events_between(from, model.rev, &all, usize::MAX).expect("events");
        prop_assert_eq!(covered, model.rev);
        let mut by_rev: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
        for e in &events {
            let kv = e.kv.as_ref().expect("event kv");
            by_rev.entry(kv.mod_revision).or_default().push(kv.key.clone());
        }
        for rev in from..=model.rev {
            let (before, after) = (&model.states[&(rev - 1).max(1)], &model.states[&rev]);
            let mut changed: Vec<Vec<u8>> = after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect();
            changed.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
            changed.sort();
            let mut got = by_rev.remove(&rev).unwrap_or_default();
            got.sort();
            prop_assert_eq!(got, changed, "events at revision {}", rev);
        }
    }
}

/// A state machine reopened from disk has the same revisions and data.
#[test]
fn mvcc_state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Db::open(dir.path()).expect("open");
        let m = Mvcc::open(db.clone()).expect("mvcc");
        let put = pb::Command {
            kind: Some(pb::command::Kind::Put(ep::PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        apply_real(&m, &db, &put);
        apply_real(&m, &db, &put);
        assert_eq!(m.revision(), 3);
    }
    let db = Db::open(dir.path()).expect("reopen");
    let m = Mvcc::open(db).expect("mvcc");
    assert_eq!(m.revision(), 3);
    let kv = m.get_at(b"k", 3).expect("read").expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
}

/// Leases: a put with an unknown lease is refused and writes nothing; revoking a lease
/// deletes its keys in one revision.
#[test]
fn lease_revoke_deletes_attached_keys() {
    use pb::command::Kind;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    let m = Mvcc::open(db.clone()).expect("mvcc");
    let put = |k: &[u8], lease| pb::Command {
        kind: Some(Kind::Put(ep::PutRequest { key: k.to_vec(), value: b"v".to_vec(), lease, ..Default::default() })),
    };
    let r = apply_real(&m, &db, &put(b"x", 7));
    assert!(
        matches!(r.kind, Some(pb::command_result::Kind::Error(ref e)) if e.message == "etcdserver: requested lease not found"),
        "{r:?}"
    );
    assert_eq!(m.revision(), 1, "nothing written");
    apply_real(&m, &db, &pb::Command { kind: Some(Kind::LeaseGrant(ep::LeaseGrantRequest { id: 7, ttl: 10 })) });
    apply_real(&m, &db, &put(b"x", 7));
    apply_real(&m, &db, &put(b"y", 7));
    apply_real(&m, &db, &put(b"z", 0));
    assert_eq!(m.lease_keys(7).expect("keys"), vec![b"x".to_vec(), b"y".to_vec()]);
    let before = m.revision();
    apply_real(&m, &db, &pb::Command { kind: Some(Kind::LeaseRevoke(ep::LeaseRevokeRequest { id: 7 })) });
    assert_eq!(m.revision(), before + 1, "one revision for the whole revoke");
    assert!(m.get_at(b"x", m.revision()).expect("read").is_none());
    assert!(m.get_at(b"y", m.revision()).expect("read").is_none());
    assert!(m.get_at(b"z", m.revision()).expect("read").is_some());
    assert_eq!(m.lease_ttl(7).expect("read"), None);
}

/// In a batch, a command that fails (here: a put with an unknown lease, after a put that
/// succeeded inside the same transaction) leaves no trace, and the commands around it
/// apply with consecutive revisions.
#[test]
fn failed_command_in_a_batch_is_rolled_back_alone() {
    use ep::request_op::Request;
    use pb::command::Kind;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    let m = Mvcc::open(db.clone()).expect("mvcc");
    let put = |k: &str, lease| ep::PutRequest { key: k.into(), value: b"v".to_vec(), lease, ..Default::default() };
    let bad_txn = ep::TxnRequest {
        success: vec![
            ep::RequestOp { request: Some(Request::RequestPut(put("t1", 0))) },
            ep::RequestOp { request: Some(Request::RequestPut(put("t2", 99))) },
        ],
        ..Default::default()
    };
    let batch = pb::Command {
        kind: Some(Kind::Batch(pb::CommandBatch {
            commands: vec![
                pb::Command { kind: Some(Kind::Put(put("a", 0))) },
                pb::Command { kind: Some(Kind::Txn(bad_txn)) },
                pb::Command { kind: Some(Kind::Put(put("b", 0))) },
            ],
        })),
    };
    let r = apply_real(&m, &db, &batch);
    let Some(pb::command_result::Kind::Batch(b)) = r.kind else { panic!("batch result expected: {r:?}") };
    assert!(matches!(b.results[1].kind, Some(pb::command_result::Kind::Error(_))), "{:?}", b.results[1]);
    assert_eq!(m.revision(), 3, "two writes, two revisions");
    assert_eq!(m.get_at(b"a", 3).expect("read").map(|kv| kv.mod_revision), Some(2));
    assert_eq!(m.get_at(b"b", 3).expect("read").map(|kv| kv.mod_revision), Some(3));
    assert!(m.get_at(b"t1", 3).expect("read").is_none(), "the failed txn's first put is gone");
    let all = KeyRange::from_etcd(&[0], &[0]);
    let (events, _) = m.events_between(1, 3, &all, usize::MAX).expect("events");
    assert_eq!(events.len(), 2);
}
