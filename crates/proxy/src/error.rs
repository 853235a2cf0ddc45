//! The proxy's one error type.

use flotilla_client::ClientError;

/// What the proxy can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The masters answered with an error, or none could be reached.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// nft refused a transaction or could not be run (the kernel is unchanged).
    #[error("{0}")]
    Nft(String),
    /// A setting the proxy was given cannot work.
    #[error("{0}")]
    Config(String),
    /// A socket, file or kernel setting the proxy needs.
    #[error("{what}: {source}")]
    Io {
        /// What it was doing.
        what: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl ProxyError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> ProxyError {
        ProxyError::Io { what: what.into(), source }
    }
}
