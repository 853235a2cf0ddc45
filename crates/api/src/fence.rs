//! Fencing tokens (docs/rfcs/0001-fenced-leadership.md): what an elected component sends
//! with each write so that the store refuses it once the component no longer holds its
//! lock. This module is the token's validated form; where it is checked is the apiserver's
//! business.

use flotilla_core::names;
use flotilla_proto::api as pb;

use crate::Error;

/// A validated fencing token: the lock (a Lease), its holder, and the term the holder
/// acquired it in (the Lease's `leaseTransitions` then).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// The holder the lock must still have.
    pub holder: String,
    /// The term the lock must still be in.
    pub term: i32,
}

impl Fence {
    /// The token's protobuf form.
    pub fn to_proto(&self) -> pb::FenceToken {
        pb::FenceToken {
            lease_namespace: self.namespace.clone(),
            lease_name: self.name.clone(),
            holder_identity: self.holder.clone(),
            term: self.term,
        }
    }

    /// `namespace/name` of the lock, for messages.
    pub fn lock(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The token from a request's optional field (None when the request is not fenced).
    pub fn from_request(t: Option<&pb::FenceToken>) -> Result<Option<Fence>, Error> {
        t.map(Fence::try_from).transpose()
    }
}

impl TryFrom<&pb::FenceToken> for Fence {
    type Error = Error;

    fn try_from(t: &pb::FenceToken) -> Result<Fence, Error> {
        names::dns1123_label(&t.lease_namespace).map_err(|e| Error::invalid("fence.leaseNamespace", e))?;
        names::dns1123_subdomain(&t.lease_name).map_err(|e| Error::invalid("fence.leaseName", e))?;
        if t.holder_identity.is_empty() {
            return Err(Error::invalid("fence.holderIdentity", "is required"));
        }
        if t.holder_identity.contains('\0') || t.holder_identity.len() > 253 {
            return Err(Error::invalid("fence.holderIdentity", "must be at most 253 bytes, without NUL"));
        }
        if t.term < 0 {
            return Err(Error::invalid("fence.term", "must not be negative"));
        }
        Ok(Fence {
            namespace: t.lease_namespace.clone(),
            name: t.lease_name.clone(),
            holder: t.holder_identity.clone(),
            term: t.term,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> pb::FenceToken {
        pb::FenceToken {
            lease_namespace: "kube-system".into(),
            lease_name: "flotilla-scheduler".into(),
            holder_identity: "m1/42/x".into(),
            term: 3,
        }
    }

    #[test]
    fn a_token_round_trips_and_each_bad_field_is_named() {
        let f = Fence::try_from(&token()).expect("valid");
        assert_eq!(f.to_proto(), token());
        assert_eq!(Fence::from_request(None), Ok(None));
        let bad = |f: fn(&mut pb::FenceToken), field: &str| {
            let mut t = token();
            f(&mut t);
            match Fence::try_from(&t) {
                Err(Error::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        };
        bad(|t| t.lease_namespace = "Kube".into(), "fence.leaseNamespace");
        bad(|t| t.lease_name.clear(), "fence.leaseName");
        bad(|t| t.holder_identity.clear(), "fence.holderIdentity");
        bad(|t| t.term = -1, "fence.term");
    }
}
