//! The kubelet's one error type.

use flotilla_client::ClientError;

/// What the kubelet can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The masters answered with an error, or none could be reached.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The runtime cannot run what the pod asks for (said to the user, never ignored).
    #[error("{0}")]
    Unsupported(String),
    /// The container's image cannot be had; `reason` is the container's waiting reason
    /// (ErrImagePull, InvalidImageName, ErrImageNeverPull).
    #[error("{message}")]
    Image {
        /// The waiting reason.
        reason: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The runtime failed to start, stop or inspect a container.
    #[error("runtime: {0}")]
    Runtime(String),
    /// Reading or writing the worker's own files.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl KubeletError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> KubeletError {
        KubeletError::Io { path: path.display().to_string(), source }
    }
}
