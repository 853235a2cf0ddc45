//! What each decoder the network reaches does with one input: the resource API's objects
//! from protobuf and from JSON (through defaults and validation, as a create takes them),
//! fences from requests, the manifest parser, selectors, the etcd API's requests (their
//! validation), the peer protocol's log entries, key ranges, and the snapshot reader. None
//! may panic, whatever it is given.
//!
//! Shared by `tests/fuzz.rs` (proptest, run briefly in CI) and the cargo-fuzz targets in
//! `fuzz/` (longer runs on a nightly toolchain), so both drive the same code.

use flotilla_api::kinds::{self, Kind};
use flotilla_proto::api as pb;
use flotilla_proto::etcdserverpb as ep;
use prost::Message;

/// What a create does with a decoded object: defaults, then validation. Neither may
/// panic, whatever the object holds.
fn admit(mut o: pb::object::Kind) {
    flotilla_api::defaults::object(&mut o);
    let _ = flotilla_api::validate::object(&o);
    let _ = kinds::to_json(&o);
    let _ = kinds::spec_bytes(&o);
}

/// Stored or sent protobuf bytes, as an object of every kind, a wrapped object, and an
/// update request's fence.
pub fn protobuf_objects(bytes: &[u8]) {
    for kind in Kind::ALL {
        if let Ok(o) = kinds::decode(kind, bytes) {
            admit(o);
        }
    }
    if let Ok(o) = pb::Object::decode(bytes) {
        if let Ok(o) = kinds::unwrap(Some(o)) {
            admit(o);
        }
    }
    if let Ok(r) = pb::UpdateRequest::decode(bytes) {
        let _ = flotilla_api::Fence::from_request(r.fence.as_ref());
    }
}

/// A manifest's or merge patch's JSON, as an object of every kind.
pub fn json_objects(v: &serde_json::Value) {
    for kind in Kind::ALL {
        if let Ok(o) = kinds::from_json(kind, v.clone()) {
            admit(o);
        }
    }
}

/// flotctl's manifest parser on `text`, as it is and under a Pod's header.
pub fn manifest(text: &str) {
    let _ = flotilla_ctl::manifest::parse("fuzz", text);
    let _ = flotilla_ctl::manifest::parse("fuzz", &format!("apiVersion: v1\nkind: Pod\n{text}"));
}

/// Label and field selectors as requests carry them.
pub fn selectors(s: &str) {
    let _ = flotilla_core::selector::LabelSelector::parse(s);
    let _ = flotilla_core::selector::FieldSelector::parse(s);
}

/// The etcd API's requests, validated as the services take them.
pub fn etcd_requests(bytes: &[u8]) {
    use flotilla_store::etcd::validate;
    if let Ok(r) = ep::RangeRequest::decode(bytes) {
        let _ = validate::range(&r);
    }
    if let Ok(p) = ep::PutRequest::decode(bytes) {
        let _ = validate::put(&p);
    }
    if let Ok(d) = ep::DeleteRangeRequest::decode(bytes) {
        let _ = validate::delete_range(&d);
    }
    if let Ok(t) = ep::TxnRequest::decode(bytes) {
        if validate::size(&t).is_ok() && validate::txn(&t).is_ok() {
            let _ = (validate::txn_is_read_only(&t), validate::txn_is_serializable(&t));
        }
    }
}

/// The peer protocol's log entries (what a peer sends in AppendEntries), and an etcd key
/// range from `key` to `end`.
pub fn peer_entries(bytes: &[u8], end: &[u8]) {
    let _ = flotilla_store::codec::decode_entry(bytes);
    if let Ok(req) = flotilla_proto::raft::AppendEntriesRequest::decode(bytes) {
        for e in req.entries {
            let _ = flotilla_store::codec::entry_from_pb(e);
        }
    }
    let r = flotilla_core::keys::KeyRange::from_etcd(bytes, end);
    let _ = r.contains(b"/registry/pods/default/web");
}

/// A snapshot file, whole or damaged, from its header on.
pub fn snapshot(bytes: &[u8]) {
    let _ = flotilla_store::state_machine::check_snapshot(bytes);
    let mut with_header = b"FLOTSNAP1".to_vec();
    with_header.extend_from_slice(bytes);
    let _ = flotilla_store::state_machine::check_snapshot(&with_header);
}
