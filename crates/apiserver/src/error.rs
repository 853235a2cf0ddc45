//! The apiserver's one error type, and its mapping to gRPC status codes (the only place
//! that mapping is made).

use flotilla_store::StoreError;
use tonic::{Code, Status};

/// Everything a request to the resource API can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or malformed; `field` is its path (`spec.containers[0].image`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request parameter (kind, selector, continue token...) is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of the object.
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
    },
    /// Create of an object that exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Kind of the object.
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
    },
    /// Compare-and-swap lost: the object changed since the version the caller read.
    #[error(
        "conflict: {kind} {name:?} is at resourceVersion {current}, the request was made against {expected}; \
         read it again and retry"
    )]
    Conflict {
        /// Kind of the object.
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
        /// The version the request named.
        expected: String,
        /// The version stored now.
        current: String,
    },
    /// A precondition (uid, resourceVersion) of a delete or bind did not hold, or the
    /// operation is not allowed in the object's state (e.g. binding a bound pod).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A write carrying a fencing token whose lock has changed holder or term since: the
    /// writer is no longer the elected one. Nothing was written.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The resourceVersion asked for has been compacted away: relist (HTTP 410 in
    /// Kubernetes).
    #[error("expired: resourceVersion {requested} is older than the oldest kept ({compacted}); list again")]
    Expired {
        /// The version asked for.
        requested: i64,
        /// The store's compact revision.
        compacted: i64,
    },
    /// Other writers kept changing the object; nothing was written.
    #[error("{0}")]
    Contended(String),
    /// The service IP range is used up.
    #[error("{0}")]
    Exhausted(String),
    /// The store could not serve the request (no leader, timeout, stopped, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A node's kubelet could not be reached (pod logs).
    #[error("{0}")]
    KubeletUnreachable(String),
    /// The caller may not do this (RBAC, the node authorizer, a component without its
    /// fence); the message names the user, the verb and the resource. Nothing was written.
    #[error("{0}")]
    Forbidden(String),
    /// RBAC's cache has not loaded yet (a master just started): try again.
    #[error("{0}")]
    NotReady(String),
    /// Something that should not happen (undecodable stored object, ...).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// An `Invalid` error for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
        ApiError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl From<flotilla_api::Error> for ApiError {
    fn from(e: flotilla_api::Error) -> ApiError {
        match e {
            flotilla_api::Error::Invalid { field, reason } => ApiError::Invalid { field, reason },
            flotilla_api::Error::BadRequest(m) => ApiError::BadRequest(m),
            flotilla_api::Error::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::Invalid { .. } | ApiError::BadRequest(_) => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::Conflict { .. } | ApiError::Contended(_) => Code::Aborted,
            ApiError::FailedPrecondition(_) | ApiError::Fenced(_) => Code::FailedPrecondition,
            ApiError::Expired { .. } => Code::OutOfRange,
            ApiError::Exhausted(_) => Code::ResourceExhausted,
            ApiError::Store(s) => return s.clone().into(),
            ApiError::KubeletUnreachable(_) | ApiError::NotReady(_) => Code::Unavailable,
            ApiError::Forbidden(_) => Code::PermissionDenied,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
