//! The error type for validation failures in this crate.

/// Everything this crate can reject. Each variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A URL was not of the form `http://host:port`.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// `--initial-cluster` did not parse.
    #[error("invalid --initial-cluster entry {entry:?}: {reason}")]
    InvalidInitialCluster {
        /// The offending `name=url` entry.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
}
