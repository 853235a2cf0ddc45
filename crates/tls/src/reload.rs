//! rustls configurations built from certificate files, and rebuilt when the files change.
//!
//! A listener or client asks for [`Reloading::current`] at every new connection. At most
//! once per [`CHECK_EVERY`] that reads the files (a few kilobytes) and compares them with
//! what the configuration was built from (contents, not modification times, which a
//! quick rewrite of the same size can leave unchanged); when any changed, the
//! configuration is built again from them. A new set of
//! files that does not build (a certificate written before its key, a key that is not
//! the certificate's, a file half copied) is logged and the last good configuration kept,
//! so a botched rotation never takes a listener down; the next change is tried again.
//! Connections already open keep the configuration they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::TlsError;

/// How often the files are looked at, at most.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether a server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates asked for (no trusted CA given).
    Off,
    /// A client may present a certificate from the trusted CA (and is then identified by
    /// it) or none; one from another CA is refused.
    Optional,
    /// Every client must present a certificate from the trusted CA (etcd's
    /// `--client-cert-auth`; always so between peers).
    Required,
}

/// The files a TLS server is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates must chain to; required unless `auth` is `Off`.
    pub ca: Option<PathBuf>,
    /// Whether clients present certificates.
    pub auth: ClientAuth,
    /// The protocol spoken inside TLS.
    pub protocol: Protocol,
}

/// The application protocol a TLS server offers (by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2: gRPC.
    Grpc,
    /// HTTP/1.1: the metrics and health endpoints.
    Http1,
}

/// The files a TLS client is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client's own certificate and key, when it presents one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Something a rustls configuration is built from.
pub trait Source: Send + Sync + 'static {
    /// The configuration built.
    type Config: Send + Sync + 'static;
    /// The files it reads (watched for changes).
    fn paths(&self) -> Vec<&Path>;
    /// Reads the files and builds the configuration.
    fn build(&self) -> Result<Arc<Self::Config>, TlsError>;
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.display().to_string(), source })
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad(format!("{}: not a PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Bad(format!("{}: holds no certificate", path.display())));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::Bad(format!("{}: not a PEM private key: {e}", path.display())))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::Bad(format!("{}: not a usable CA certificate: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate with its key, checked to belong together.
fn certified(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(der.clone_key())
        .map_err(|e| TlsError::Bad(format!("{}: unusable private key: {e}", key.display())))?;
    let ck = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    ck.keys_match().map_err(|_| TlsError::Bad(format!("{} is not the key of {}", key.display(), cert.display())))?;
    Ok((chain, der))
}

/// gRPC runs over HTTP/2, which clients ask for by ALPN.
const ALPN_H2: &[u8] = b"h2";

impl Source for ServerFiles {
    type Config = ServerConfig;

    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path()];
        p.extend(self.ca.as_deref());
        p
    }

    fn build(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let (chain, key) = certified(&self.cert, &self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Bad(format!("TLS versions: {e}")))?;
        let builder = match (self.auth, &self.ca) {
            (ClientAuth::Off, _) => builder.with_no_client_auth(),
            (_, None) => return Err(TlsError::Invalid("verifying client certificates needs a trusted CA file".into())),
            (auth, Some(ca)) => {
                let v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
                let v = if auth == ClientAuth::Optional { v.allow_unauthenticated() } else { v };
                builder
                    .with_client_cert_verifier(v.build().map_err(|e| TlsError::Bad(format!("{}: {e}", ca.display())))?)
            }
        };
        let mut cfg =
            builder.with_single_cert(chain, key).map_err(|e| TlsError::Bad(format!("{}: {e}", self.cert.display())))?;
        cfg.alpn_protocols = match self.protocol {
            Protocol::Grpc => vec![ALPN_H2.to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        Ok(Arc::new(cfg))
    }
}

impl Source for ClientFiles {
    type Config = ClientConfig;

    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.ca.as_path()];
        if let Some((c, k)) = &self.identity {
            p.extend([c.as_path(), k.as_path()]);
        }
        p
    }

    fn build(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Bad(format!("TLS versions: {e}")))?
            .with_root_certificates(roots(&self.ca)?);
        let mut cfg = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let (chain, der) = certified(cert, key)?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| TlsError::Bad(format!("{}: {e}", cert.display())))?
            }
        };
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// What a file held when last looked at (None: it could not be read).
type Stamp = Option<Vec<u8>>;

fn stamp(path: &Path) -> Stamp {
    std::fs::read(path).ok()
}

struct State<C> {
    config: Arc<C>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

/// A configuration kept in step with its files.
pub struct Reloading<S: Source> {
    source: S,
    state: Mutex<State<S::Config>>,
    check_every: Duration,
}

impl<S: Source + std::fmt::Debug> std::fmt::Debug for Reloading<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading").field("source", &self.source).finish_non_exhaustive()
    }
}

/// A TLS server's configuration, reloaded from its files.
pub type ServerTls = Reloading<ServerFiles>;
/// A TLS client's configuration, reloaded from its files.
pub type ClientTls = Reloading<ClientFiles>;

impl<S: Source> Reloading<S> {
    /// Builds the configuration from `source` now: files that do not build are an error
    /// here, at start, where an operator sees it.
    pub fn new(source: S) -> Result<Arc<Reloading<S>>, TlsError> {
        Reloading::checking_every(source, CHECK_EVERY)
    }

    /// As [`Reloading::new`], looking at the files at most every `every` (tests use zero).
    pub fn checking_every(source: S, every: Duration) -> Result<Arc<Reloading<S>>, TlsError> {
        let stamps = source.paths().into_iter().map(stamp).collect();
        let config = source.build()?;
        Ok(Arc::new(Reloading {
            source,
            state: Mutex::new(State { config, stamps, checked: Instant::now() }),
            check_every: every,
        }))
    }

    /// What the configuration is built from.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The configuration for a new connection: rebuilt first if the files changed.
    pub fn current(&self) -> Arc<S::Config> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= self.check_every {
            st.checked = Instant::now();
            let stamps: Vec<Stamp> = self.source.paths().into_iter().map(stamp).collect();
            if stamps != st.stamps {
                st.stamps = stamps;
                match self.source.build() {
                    Ok(c) => {
                        tracing::info!(files = ?self.source.paths(), "certificates reloaded");
                        st.config = c;
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "the changed certificate files do not load; still using the previous ones"
                    ),
                }
            }
        }
        st.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, Kind};

    fn master() -> Kind {
        Kind::Master { name: "m1".into(), addresses: vec!["127.0.0.1".into()] }
    }

    fn server_files(dir: &Path) -> ServerFiles {
        ServerFiles {
            cert: dir.join("master-m1.crt"),
            key: dir.join("master-m1.key"),
            ca: Some(dir.join("ca.crt")),
            auth: ClientAuth::Required,
            protocol: Protocol::Grpc,
        }
    }

    #[test]
    fn a_rotated_pair_is_taken_up_and_a_half_written_one_keeps_the_last_good_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "test-ca", 30).expect("ca");
        ca.issue_to(dir.path(), &master(), 30, false).expect("issue");
        let tls = ServerTls::checking_every(server_files(dir.path()), Duration::ZERO).expect("loads");
        let first = tls.current();
        assert!(Arc::ptr_eq(&first, &tls.current()), "unchanged files are not built again");

        // The certificate replaced, its key not yet: the old configuration stays.
        let next = ca.issue(&master(), 30).expect("issue");
        std::fs::write(dir.path().join("master-m1.crt"), &next.cert_pem).expect("write");
        assert!(Arc::ptr_eq(&first, &tls.current()), "a certificate without its key was taken up");
        // Garbage is no better.
        std::fs::write(dir.path().join("master-m1.key"), "not a key").expect("write");
        assert!(Arc::ptr_eq(&first, &tls.current()), "a broken key was taken up");
        // The matching key: the new pair is served from now on.
        std::fs::write(dir.path().join("master-m1.key"), &next.key_pem).expect("write");
        let second = tls.current();
        assert!(!Arc::ptr_eq(&first, &second), "the rotated pair was not taken up");
        assert!(Arc::ptr_eq(&second, &tls.current()));
    }

    #[test]
    fn files_that_do_not_load_are_refused_at_start_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "test-ca", 30).expect("ca");
        ca.issue_to(dir.path(), &master(), 30, false).expect("issue");
        let other = ca.issue(&master(), 30).expect("issue");
        std::fs::write(dir.path().join("other.key"), &other.key_pem).expect("write");
        let files = server_files(dir.path());
        let err = |f: ServerFiles| ServerTls::new(f).expect_err("refused").to_string();

        let e = err(ServerFiles { key: dir.path().join("other.key"), ..files.clone() });
        assert!(e.contains("other.key is not the key of") && e.contains("master-m1.crt"), "{e}");
        let e = err(ServerFiles { cert: dir.path().join("missing.crt"), ..files.clone() });
        assert!(e.contains("missing.crt"), "{e}");
        let e = err(ServerFiles { cert: dir.path().join("master-m1.key"), ..files.clone() });
        assert!(e.contains("master-m1.key: holds no certificate"), "{e}");
        let e = err(ServerFiles { ca: None, ..files.clone() });
        assert!(e.contains("needs a trusted CA"), "{e}");
        let e = ClientTls::new(ClientFiles { ca: dir.path().join("master-m1.key"), identity: None })
            .expect_err("a key is no CA")
            .to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        assert!(ServerTls::new(ServerFiles { auth: ClientAuth::Off, ca: None, ..files }).is_ok());
    }
}
