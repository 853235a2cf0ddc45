//! The bench crate's error type.

/// Why a benchmark could not run (failures of individual requests are counted in the
/// report instead).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag or combination of flags is unusable.
    #[error("{0}")]
    Invalid(String),
    /// No endpoint could be reached.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Setting up the run failed (starting clusters, preparing data).
    #[error("{0}")]
    Setup(String),
}
