//! The controller manager's one error type.

/// What a controller, or the controller manager, can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Bad settings (an unknown controller in `--controllers`, ...): the process does not
    /// start.
    #[error("controller manager configuration: {0}")]
    Config(String),
    /// A call to the apiserver failed; the key is retried after its back-off.
    #[error(transparent)]
    Client(#[from] flotilla_client::ClientError),
    /// A reconcile could not finish for another reason; the key is retried after its
    /// back-off.
    #[error("{0}")]
    Reconcile(String),
}
