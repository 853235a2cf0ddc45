//! Request validation for the etcd API: what etcd refuses before proposing, we refuse too,
//! with the same error.

use std::collections::BTreeSet;

use flotilla_core::keys::KeyRange;
use flotilla_core::limits::{MAX_REQUEST_BYTES, MAX_TXN_OPS};
use flotilla_proto::etcdserverpb as ep;
use prost::Message;

use crate::error::StoreError;

/// Refuses a request whose encoding exceeds the request size limit.
pub fn size<M: Message>(m: &M) -> Result<(), StoreError> {
    if m.encoded_len() > MAX_REQUEST_BYTES {
        return Err(StoreError::RequestTooLarge);
    }
    Ok(())
}

/// Checks a Range request.
pub fn range(r: &ep::RangeRequest) -> Result<(), StoreError> {
    if r.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if ep::range_request::SortOrder::try_from(r.sort_order).is_err() {
        return Err(StoreError::InvalidArgument(format!("etcdserver: invalid sort order {}", r.sort_order)));
    }
    if ep::range_request::SortTarget::try_from(r.sort_target).is_err() {
        return Err(StoreError::InvalidArgument(format!("etcdserver: invalid sort target {}", r.sort_target)));
    }
    if r.limit < 0 {
        return Err(StoreError::InvalidArgument("etcdserver: limit must not be negative".into()));
    }
    Ok(())
}

/// Checks a Put request.
pub fn put(p: &ep::PutRequest) -> Result<(), StoreError> {
    if p.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    if p.lease < 0 {
        return Err(StoreError::LeaseNotFound);
    }
    Ok(())
}

/// Checks a DeleteRange request.
pub fn delete_range(d: &ep::DeleteRangeRequest) -> Result<(), StoreError> {
    if d.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

fn compare(c: &ep::Compare) -> Result<(), StoreError> {
    use ep::compare::{CompareResult, CompareTarget};
    if c.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if CompareTarget::try_from(c.target).is_err() || CompareResult::try_from(c.result).is_err() {
        return Err(StoreError::InvalidArgument("etcdserver: invalid compare target or result".into()));
    }
    Ok(())
}

/// Checks a Txn request (recursively), including that no key is written twice by one
/// execution path: the rule of etcd's `checkIntervals`.
pub fn txn(t: &ep::TxnRequest) -> Result<(), StoreError> {
    shape(t)?;
    intervals(&t.success)?;
    intervals(&t.failure)?;
    Ok(())
}

/// Sizes and per-request rules, recursively.
fn shape(t: &ep::TxnRequest) -> Result<(), StoreError> {
    use ep::request_op::Request;
    if t.compare.len() > MAX_TXN_OPS || t.success.len() > MAX_TXN_OPS || t.failure.len() > MAX_TXN_OPS {
        return Err(StoreError::TooManyOps);
    }
    for c in &t.compare {
        compare(c)?;
    }
    for op in t.success.iter().chain(t.failure.iter()) {
        match &op.request {
            None => return Err(StoreError::InvalidArgument("etcdserver: txn operation has no request".into())),
            Some(Request::RequestRange(r)) => range(r)?,
            Some(Request::RequestPut(p)) => put(p)?,
            Some(Request::RequestDeleteRange(d)) => delete_range(d)?,
            Some(Request::RequestTxn(inner)) => shape(inner)?,
        }
    }
    Ok(())
}

/// The keys put and the ranges deleted by one list of operations (nested transactions
/// included), refusing a key that is written twice on one path. The two branches of a
/// nested transaction may put the same key: only one of them runs.
fn intervals(ops: &[ep::RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), StoreError> {
    use ep::request_op::Request;
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(KeyRange::from_etcd(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    let deleted = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        let Some(Request::RequestTxn(inner)) = &op.request else { continue };
        let (puts_then, dels_then) = intervals(&inner.success)?;
        let (puts_else, dels_else) = intervals(&inner.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(StoreError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else { continue };
        if !puts.insert(p.key.clone()) || deleted(&dels, &p.key) {
            return Err(StoreError::DuplicateKey);
        }
    }
    Ok((puts, dels))
}

/// Whether a Txn only reads (then it is served without going through the log).
pub fn txn_is_read_only(t: &ep::TxnRequest) -> bool {
    use ep::request_op::Request;
    t.success.iter().chain(t.failure.iter()).all(|op| match &op.request {
        Some(Request::RequestRange(_)) | None => true,
        Some(Request::RequestTxn(inner)) => txn_is_read_only(inner),
        _ => false,
    })
}

/// Whether every range in a read-only Txn asked for a serializable read.
pub fn txn_is_serializable(t: &ep::TxnRequest) -> bool {
    use ep::request_op::Request;
    t.success.iter().chain(t.failure.iter()).all(|op| match &op.request {
        Some(Request::RequestRange(r)) => r.serializable,
        Some(Request::RequestTxn(inner)) => txn_is_serializable(inner),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ep::request_op::Request;

    fn put_op(k: &[u8]) -> ep::RequestOp {
        ep::RequestOp { request: Some(Request::RequestPut(ep::PutRequest { key: k.to_vec(), ..Default::default() })) }
    }

    #[test]
    fn txn_writing_a_key_twice_is_refused() {
        let t = ep::TxnRequest { success: vec![put_op(b"a"), put_op(b"a")], ..Default::default() };
        assert_eq!(txn(&t), Err(StoreError::DuplicateKey));
        let del = ep::RequestOp {
            request: Some(Request::RequestDeleteRange(ep::DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                ..Default::default()
            })),
        };
        let t = ep::TxnRequest { success: vec![put_op(b"aa"), del], ..Default::default() };
        assert_eq!(txn(&t), Err(StoreError::DuplicateKey));
        // The two branches are separate.
        let t = ep::TxnRequest { success: vec![put_op(b"a")], failure: vec![put_op(b"a")], ..Default::default() };
        assert_eq!(txn(&t), Ok(()));
    }

    #[test]
    fn nested_txn_writing_a_key_of_the_outer_txn_is_refused() {
        let nested = |ops: Vec<ep::RequestOp>| ep::RequestOp {
            request: Some(Request::RequestTxn(ep::TxnRequest { success: ops, ..Default::default() })),
        };
        let t = ep::TxnRequest { success: vec![put_op(b"a"), nested(vec![put_op(b"a")])], ..Default::default() };
        assert_eq!(txn(&t), Err(StoreError::DuplicateKey));
        let del = ep::RequestOp {
            request: Some(Request::RequestDeleteRange(ep::DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
        };
        let t = ep::TxnRequest { success: vec![del, nested(vec![put_op(b"a")])], ..Default::default() };
        assert_eq!(txn(&t), Err(StoreError::DuplicateKey));
        // Then and else of one nested txn may both put a key: only one runs.
        let both = ep::RequestOp {
            request: Some(Request::RequestTxn(ep::TxnRequest {
                success: vec![put_op(b"b")],
                failure: vec![put_op(b"b")],
                ..Default::default()
            })),
        };
        assert_eq!(txn(&ep::TxnRequest { success: vec![both], ..Default::default() }), Ok(()));
    }

    #[test]
    fn txn_with_too_many_ops_is_refused() {
        let t = ep::TxnRequest {
            success: (0..=MAX_TXN_OPS).map(|i| put_op(format!("k{i}").as_bytes())).collect(),
            ..Default::default()
        };
        assert_eq!(txn(&t), Err(StoreError::TooManyOps));
    }

    #[test]
    fn put_with_empty_key_or_conflicting_flags_is_refused() {
        assert_eq!(put(&ep::PutRequest::default()), Err(StoreError::EmptyKey));
        let p = ep::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ignore_value: true, ..Default::default() };
        assert_eq!(put(&p), Err(StoreError::ValueProvided));
        let p = ep::PutRequest { key: b"k".to_vec(), lease: 5, ignore_lease: true, ..Default::default() };
        assert_eq!(put(&p), Err(StoreError::LeaseProvided));
    }

    #[test]
    fn oversized_request_is_refused() {
        let p = ep::PutRequest { key: b"k".to_vec(), value: vec![0; MAX_REQUEST_BYTES + 1], ..Default::default() };
        assert_eq!(size(&p), Err(StoreError::RequestTooLarge));
    }
}
