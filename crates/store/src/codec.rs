//! Conversions between openraft's types and their protobuf form (`flotilla.raft.v1`), used
//! both on the wire between peers and for log entries and metadata on disk.
//!
//! Decoding never panics: malformed input is a [`StoreError::Corrupt`] (from disk) or an
//! invalid-argument error (from the network), naming the missing field.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::raft as pb;
use openraft::EntryPayload;
use prost::Message;

use crate::error::StoreError;
use crate::types::{CommittedLeaderId, Entry, LogId, Member, Membership, SnapshotMeta, StoredMembership, Vote};

fn missing(field: &str) -> StoreError {
    StoreError::Corrupt(format!("missing field {field}"))
}

/// Encodes a log id.
pub fn log_id_to_pb(l: &LogId) -> pb::LogId {
    pb::LogId { term: l.leader_id.term, node_id: l.leader_id.node_id, index: l.index }
}

/// Decodes a log id.
pub fn log_id_from_pb(l: &pb::LogId) -> LogId {
    LogId { leader_id: CommittedLeaderId { term: l.term, node_id: l.node_id }, index: l.index }
}

/// Encodes an optional log id.
pub fn opt_log_id_to_pb(l: Option<&LogId>) -> Option<pb::LogId> {
    l.map(log_id_to_pb)
}

/// Decodes an optional log id.
pub fn opt_log_id_from_pb(l: Option<&pb::LogId>) -> Option<LogId> {
    l.map(log_id_from_pb)
}

/// Encodes a vote.
pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

/// Decodes a vote.
pub fn vote_from_pb(v: &pb::Vote) -> Vote {
    if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    }
}

/// Encodes member info.
pub fn member_to_pb(m: &Member) -> pb::Member {
    pb::Member { name: m.name.clone(), peer_urls: m.peer_urls.clone(), client_urls: m.client_urls.clone() }
}

/// Decodes member info.
pub fn member_from_pb(m: &pb::Member) -> Member {
    Member { name: m.name.clone(), peer_urls: m.peer_urls.clone(), client_urls: m.client_urls.clone() }
}

/// Encodes a membership config.
pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m.get_joint_config().iter().map(|s| pb::VoterSet { ids: s.iter().copied().collect() }).collect(),
        nodes: m.nodes().map(|(id, n)| (*id, member_to_pb(n))).collect(),
    }
}

/// Decodes a membership config. A config naming a voter it has no member info for is
/// corrupt (openraft refuses to build one).
pub fn membership_from_pb(m: &pb::Membership) -> Result<Membership, StoreError> {
    let configs: Vec<BTreeSet<u64>> = m.configs.iter().map(|s| s.ids.iter().copied().collect()).collect();
    let nodes: BTreeMap<u64, Member> = m.nodes.iter().map(|(id, n)| (*id, member_from_pb(n))).collect();
    Membership::new(configs, nodes).map_err(|e| StoreError::Corrupt(format!("invalid membership: {e}")))
}

/// Encodes a stored membership.
pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(m.log_id().as_ref()),
        membership: Some(membership_to_pb(m.membership())),
    }
}

/// Decodes a stored membership.
pub fn stored_membership_from_pb(m: &pb::StoredMembership) -> Result<StoredMembership, StoreError> {
    let membership = m.membership.as_ref().map(membership_from_pb).transpose()?.unwrap_or_default();
    Ok(StoredMembership::new(opt_log_id_from_pb(m.log_id.as_ref()), membership))
}

/// Encodes a log entry.
pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(c) => pb::entry::Payload::Command(c.clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry { log_id: Some(log_id_to_pb(&e.log_id)), payload: Some(payload) }
}

/// Decodes a log entry.
pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, StoreError> {
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or_else(|| missing("Entry.log_id"))?);
    let payload = match e.payload.ok_or_else(|| missing("Entry.payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Command(c) => EntryPayload::Normal(c),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)?),
    };
    Ok(Entry { log_id, payload })
}

/// Decodes a log entry from bytes read from disk.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    let e = pb::Entry::decode(bytes).map_err(|err| StoreError::Corrupt(format!("undecodable log entry: {err}")))?;
    entry_from_pb(e)
}

/// Encodes snapshot metadata. `transfer` names one sending of a snapshot (the receiver
/// refuses a chunk of another sending than the one it is assembling).
pub fn snapshot_meta_to_pb(m: &SnapshotMeta, transfer: &str) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(m.last_log_id.as_ref()),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
        snapshot_id: transfer.to_string(),
    }
}

/// Decodes snapshot metadata (the transfer id is `m.snapshot_id`).
pub fn snapshot_meta_from_pb(m: &pb::SnapshotMeta) -> Result<SnapshotMeta, StoreError> {
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(m.last_log_id.as_ref()),
        last_membership: m.last_membership.as_ref().map(stored_membership_from_pb).transpose()?.unwrap_or_default(),
    })
}

/// Decodes any protobuf message read from disk, naming what it was on failure.
pub fn decode_disk<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("undecodable {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_round_trips_with_learners() {
        let mut nodes = BTreeMap::new();
        nodes.insert(1, Member { name: "a".into(), peer_urls: vec!["http://a:1".into()], client_urls: vec![] });
        nodes.insert(2, Member::default());
        nodes.insert(3, Member::default());
        let m = Membership::new(vec![BTreeSet::from([1, 2])], nodes).expect("valid");
        let back = membership_from_pb(&membership_to_pb(&m)).expect("decodes");
        assert_eq!(m, back);
        assert_eq!(back.learner_ids().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn entry_round_trips_through_bytes() {
        let e = Entry {
            log_id: LogId { leader_id: CommittedLeaderId { term: 3, node_id: 7 }, index: 42 },
            payload: EntryPayload::Normal(pb::Command {
                kind: Some(pb::command::Kind::LeaseRevoke(flotilla_proto::etcdserverpb::LeaseRevokeRequest { id: 5 })),
            }),
        };
        let bytes = entry_to_pb(&e).encode_to_vec();
        let back = decode_entry(&bytes).expect("decodes");
        assert_eq!(back.log_id, e.log_id);
        assert!(matches!(back.payload, EntryPayload::Normal(_)));
    }

    #[test]
    fn membership_naming_a_voter_without_member_info_is_corrupt() {
        let pb = pb::Membership { configs: vec![pb::VoterSet { ids: vec![1, 2] }], nodes: Default::default() };
        let err = membership_from_pb(&pb).expect_err("voters 1 and 2 have no member info");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[test]
    fn garbage_bytes_are_a_corruption_error_not_a_panic() {
        let err = decode_entry(&[0xff, 0xff, 0xff]).expect_err("must fail");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
}
