//! Flotilla's certificates (docs/rfcs/0002-security.md): the cluster CA, the certificates
//! it issues to masters, nodes, components, admins and users, and the identity (user and
//! groups) a verified certificate carries.
//!
//! Identities follow Kubernetes: the subject's CN is the user, its O entries the groups.
//! Keys are ECDSA P-256; private keys are written readable by their owner only (0600).
//! `reload` builds rustls configurations from such files and rebuilds them when the files
//! change; `net` puts them on sockets, for tonic servers and channels.

pub mod ca;
pub mod net;
pub mod reload;

pub use ca::{Ca, Issued, Kind};
pub use net::{incoming, Connector, PeerInfo, TlsConn};
pub use reload::{ClientAuth, ClientFiles, ClientTls, Protocol, Reloading, ServerFiles, ServerTls};
pub use time::{self, OffsetDateTime};

/// What can go wrong with certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A request for a certificate that cannot be made (a bad name, address, ...).
    #[error("{0}")]
    Invalid(String),
    /// A certificate or key that is not what it should be.
    #[error("{0}")]
    Bad(String),
    /// The certificate library refused.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The user and groups a certificate names: its subject's CN and O entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The CN.
    pub user: String,
    /// The O entries.
    pub groups: Vec<String>,
}

/// Reads the identity from a DER certificate (one a TLS handshake already verified).
pub fn identity(der: &[u8]) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Bad(format!("not an X.509 certificate: {e}")))?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| TlsError::Bad("the certificate's subject has no common name".into()))?
        .to_string();
    let groups = subject.iter_organization().filter_map(|a| a.as_str().ok()).map(str::to_string).collect();
    Ok(Identity { user, groups })
}

/// The identity of the client certificate a TLS connection presented (verified by the
/// handshake), for a request a tonic server took over [`incoming`]; None when the client
/// presented none, or the connection is not TLS.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<Result<Identity, TlsError>> {
    let id = req.extensions().get::<net::PeerInfo>()?.identity.clone()?;
    Some(id.as_ref().clone().map_err(TlsError::Bad))
}
