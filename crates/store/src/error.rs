//! The store's one error type, and its mapping to gRPC status codes.
//!
//! etcd's Go client recognises server errors by their exact gRPC code *and* message text
//! (etcd `api/v3rpc/rpctypes/error.go`), so request errors carry the same text as etcd's.
//! The mapping to [`tonic::Status`] happens here and nowhere else.

use tonic::Code;

/// Everything the store can fail with.
///
/// Request errors (the caller can fix them or retry) are kept apart from [`StoreError::Fatal`]
/// and [`StoreError::Storage`], which mean this member cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A request named no key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` was set on a put of a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put with `ignore_value` also carried a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` also carried a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction had more operations than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A transaction wrote one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The request is larger than the limit.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The revision asked for has been compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The current compact revision.
        compact_revision: i64,
    },
    /// The revision asked for is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with that id already exists.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The TTL asked for is too large.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// No member with that id.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member already has one of these peer URLs.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Peer URLs were missing or malformed.
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// Only learners can be promoted.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// The learner has not caught up with the leader yet.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// The requested leader transferee cannot take over.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// The cluster has no leader right now.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// This member is not the leader (for leader-only operations).
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The request did not complete in time; it may or may not have been applied.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Any other malformed request; the text says what is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// Another membership change is still being committed; this one was not made.
    #[error("etcdserver: another membership change is still in progress ({0}); nothing was changed, retry")]
    MembershipChangeInProgress(String),
    /// This member is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A request error decided by apply on the leader and carried back verbatim.
    #[error("{message}")]
    Remote {
        /// gRPC status code.
        code: i32,
        /// etcd-compatible message.
        message: String,
    },
    /// The data directory is unusable: corrupt, or from another cluster. Never reset silently.
    #[error("data directory refused: {0}")]
    Corrupt(String),
    /// RocksDB found damaged data (a checksum mismatch) in a running member.
    #[error("damaged data: {0}")]
    Damaged(String),
    /// A disk read or write failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// Raft stopped on this member; it cannot serve until restarted.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl StoreError {
    /// The gRPC status code etcd uses for this error.
    pub fn code(&self) -> Code {
        use StoreError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey | RequestTooLarge
            | MemberBadUrls | InvalidArgument(_) => Code::InvalidArgument,
            Compacted { .. } | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists
            | PeerUrlExists
            | MemberNotLearner
            | LearnerNotReady
            | BadLeaderTransferee
            | NotLeader
            | MembershipChangeInProgress(_) => Code::FailedPrecondition,
            NoLeader | Timeout | Stopped | Fatal(_) => Code::Unavailable,
            Remote { code, .. } => Code::from_i32(*code),
            Corrupt(_) | Damaged(_) => Code::DataLoss,
            Storage(_) => Code::Internal,
        }
    }

    /// Whether this error means the member cannot serve (as opposed to a bad request).
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Fatal(_) | StoreError::Storage(_) | StoreError::Corrupt(_) | StoreError::Damaged(_))
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// openraft's storage traits fail with an `io::Error`: damaged or corrupt data is
/// `InvalidData`, anything else `Other`, the text ours.
impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(_) | StoreError::Damaged(_) => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            _ => std::io::Error::other(e),
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
