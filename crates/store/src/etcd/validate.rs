//! Request validation for the etcd API: what etcd refuses before proposing, we refuse too,
//! with the same error.

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

/// Checks a Txn request (recursively), including that no key is written twice on one
/// branch.
pub fn txn(t: &ep::TxnRequest) -> Result<(), StoreError> {
    if t.compare.len() > MAX_TXN_OPS || t.success.len() > MAX_TXN_OPS || t.failure.len() > MAX_TXN_OPS {
        return Err(StoreError::TooManyOps);
    }
    for c in &t.compare {
        compare(c)?;
    }
    for branch in [&t.success, &t.failure] {
        let mut puts: Vec<Vec<u8>> = Vec::new();
        let mut deletes: Vec<KeyRange> = Vec::new();
        for op in branch {
            ops(op, &mut puts, &mut deletes)?;
        }
        puts.sort();
        if puts.windows(2).any(|w| w[0] == w[1]) {
            return Err(StoreError::DuplicateKey);
        }
        if puts.iter().any(|k| deletes.iter().any(|d| d.contains(k))) {
            return Err(StoreError::DuplicateKey);
        }
    }
    Ok(())
}

fn ops(op: &ep::RequestOp, puts: &mut Vec<Vec<u8>>, deletes: &mut Vec<KeyRange>) -> Result<(), StoreError> {
    use ep::request_op::Request;
    match &op.request {
        None => Err(StoreError::InvalidArgument("etcdserver: txn operation has no request".into())),
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(p)) => {
            put(p)?;
            puts.push(p.key.clone());
            Ok(())
        }
        Some(Request::RequestDeleteRange(d)) => {
            delete_range(d)?;
            deletes.push(KeyRange::from_etcd(&d.key, &d.range_end));
            Ok(())
        }
        Some(Request::RequestTxn(t)) => txn(t),
    }
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
