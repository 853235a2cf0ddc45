//! The API crate's one error type. The apiserver turns it into its own error (and from
//! there into a gRPC status); clients show it as it is.

/// What is wrong with an object or a request, found without a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field is missing or malformed; `field` is its path (`spec.containers[0].image`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request parameter (kind, selector...) is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Bytes that should hold an object do not decode (a damaged or foreign stored value).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An `Invalid` error for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid { field: field.into(), reason: reason.into() }
    }
}
