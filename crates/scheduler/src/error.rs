//! The scheduler's one error type.

/// What keeps the scheduler from running.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Bad settings (an unknown plugin, a negative weight, ...).
    #[error("scheduler configuration: {0}")]
    Config(String),
    /// The client could not be set up.
    #[error(transparent)]
    Client(#[from] flotilla_client::ClientError),
}
