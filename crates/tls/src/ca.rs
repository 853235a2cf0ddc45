//! The cluster CA: made once (`flotilla certs init`), then used to issue every other
//! certificate (`flotilla certs issue`). Its files are `ca.crt` and `ca.key` in the
//! certificates directory; an issued certificate is `<file>.crt` and `<file>.key` beside
//! them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// The CA's certificate file in a certificates directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA's key file.
pub const CA_KEY: &str = "ca.key";

/// What a certificate is for; decides its subject, key usages and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A master: serves clients and peers, and is a client of its peers. CN
    /// `system:master:<name>`, O `system:masters`; `addresses` (IPs or DNS names) are its
    /// subject alternative names.
    Master {
        /// The master's name (its --name).
        name: String,
        /// Its addresses.
        addresses: Vec<String>,
    },
    /// A worker: a client of the masters, and serves the kubelet's port. CN
    /// `system:node:<name>`, O `system:nodes`.
    Node {
        /// The node's name.
        name: String,
        /// Its addresses.
        addresses: Vec<String>,
    },
    /// A component run on its own (`scheduler`, `controller-manager`): CN
    /// `system:flotilla-<component>`; with addresses, it serves its metrics in TLS too.
    Component {
        /// `scheduler` or `controller-manager`.
        component: String,
        /// The addresses its metrics endpoint is scraped at (none: a client only).
        addresses: Vec<String>,
    },
    /// A cluster administrator: O `system:masters`.
    Admin {
        /// The user name (CN).
        user: String,
    },
    /// Any other user, with the groups given.
    User {
        /// The user name (CN).
        user: String,
        /// Its groups (O entries).
        groups: Vec<String>,
    },
}

impl Kind {
    /// The certificate's (CN, O entries).
    pub fn subject(&self) -> (String, Vec<String>) {
        match self {
            Kind::Master { name, .. } => (format!("system:master:{name}"), vec!["system:masters".into()]),
            Kind::Node { name, .. } => (format!("system:node:{name}"), vec!["system:nodes".into()]),
            Kind::Component { component, .. } => (format!("system:flotilla-{component}"), vec![]),
            Kind::Admin { user } => (user.clone(), vec!["system:masters".into()]),
            Kind::User { user, groups } => (user.clone(), groups.clone()),
        }
    }

    /// The file name (without extension) its certificate is written to.
    pub fn file_name(&self) -> String {
        match self {
            Kind::Master { name, .. } => format!("master-{name}"),
            Kind::Node { name, .. } => format!("node-{name}"),
            Kind::Component { component, .. } => component.clone(),
            Kind::Admin { user } | Kind::User { user, .. } => format!("user-{user}"),
        }
    }

    fn addresses(&self) -> &[String] {
        match self {
            Kind::Master { addresses, .. } | Kind::Node { addresses, .. } | Kind::Component { addresses, .. } => {
                addresses
            }
            _ => &[],
        }
    }

    /// Serves TLS as well as being a client.
    fn serves(&self) -> bool {
        match self {
            Kind::Master { .. } | Kind::Node { .. } => true,
            Kind::Component { addresses, .. } => !addresses.is_empty(),
            _ => false,
        }
    }

    /// Checks the names it would put in a certificate.
    fn validate(&self) -> Result<(), TlsError> {
        let (cn, groups) = self.subject();
        let printable = |what: &str, s: &str| {
            if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_control()) {
                Err(TlsError::Invalid(format!("{what} {s:?} must be 1 to 64 printable characters")))
            } else {
                Ok(())
            }
        };
        printable("the name", &cn)?;
        for g in &groups {
            printable("the group", g)?;
        }
        // rcgen writes one value per attribute type in a subject, so one O entry.
        if groups.len() > 1 {
            return Err(TlsError::Invalid(format!(
                "a certificate names one group (its O), not {}: bind the user's other roles to the user, or give it a token",
                groups.len()
            )));
        }
        if let Kind::Component { component, .. } = self {
            if !["scheduler", "controller-manager"].contains(&component.as_str()) {
                return Err(TlsError::Invalid(format!("no component {component:?} (scheduler or controller-manager)")));
            }
        }
        if matches!(self, Kind::Master { .. } | Kind::Node { .. }) && self.addresses().is_empty() {
            return Err(TlsError::Invalid(
                "a master's or node's certificate needs its addresses (--address, IPs or DNS names clients use)".into(),
            ));
        }
        for a in self.addresses() {
            san(a)?;
        }
        Ok(())
    }
}

/// An address as a subject alternative name: an IP, or a DNS name.
fn san(a: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !a.is_empty()
        && a.len() <= 253
        && a.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !valid {
        return Err(TlsError::Invalid(format!("address {a:?} is neither an IP address nor a DNS name")));
    }
    let name = a.to_string().try_into().map_err(|e| TlsError::Invalid(format!("address {a:?}: {e}")))?;
    Ok(SanType::DnsName(name))
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The cluster CA.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.display().to_string(), source })
}

/// Writes `text` to `path`, readable by its owner only when `private`; never over an
/// existing file unless `replace`.
fn write(path: &Path, text: &str, private: bool, replace: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.display().to_string(), source };
    // Written beside, then renamed: a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    if !replace && path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(TlsError::Invalid(format!("{} exists (give --force to replace it)", path.display())));
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // An hour back: a machine whose clock is a little behind still accepts it.
    (now - Duration::hours(1), now + Duration::days(i64::from(days)))
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand_bytes(&mut bytes);
    bytes[0] &= 0x7f; // a positive integer
    SerialNumber::from_slice(&bytes)
}

fn rand_bytes(out: &mut [u8]) {
    // ring's system random; failing to get randomness is not recoverable.
    if rustls::crypto::ring::default_provider().secure_random.fill(out).is_err() {
        panic!("no system randomness");
    }
}

impl Ca {
    /// Makes a new CA in `dir` (refusing if one is there), valid for `days`.
    pub fn init(dir: &Path, common_name: &str, days: u32) -> Result<Ca, TlsError> {
        if dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists() {
            return Err(TlsError::Invalid(format!(
                "{} already holds a CA ({CA_CERT}, {CA_KEY}); a second would not be trusted by anything issued so far",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.display().to_string(), source })?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (p.not_before, p.not_after) = validity(days);
        p.serial_number = Some(serial());
        let cert = p.self_signed(&key)?;
        write(&dir.join(CA_KEY), &key.serialize_pem(), true, false)?;
        write(&dir.join(CA_CERT), &cert.pem(), false, false)?;
        Ca::load(dir)
    }

    /// Loads the CA of `dir`, checking that its key is the certificate's.
    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let cert_pem = read(&dir.join(CA_CERT))?;
        let key_pem = read(&dir.join(CA_KEY))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| TlsError::Bad(format!("{}: not a private key: {e}", dir.join(CA_KEY).display())))?;
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Bad(format!("{}: not a certificate: {e}", dir.join(CA_CERT).display())))?;
        let der: rustls::pki_types::CertificateDer<'static> = der;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| TlsError::Bad(format!("{}: not an X.509 certificate: {e}", dir.join(CA_CERT).display())))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(TlsError::Bad(format!(
                "{} is not the key of {}",
                dir.join(CA_KEY).display(),
                dir.join(CA_CERT).display()
            )));
        }
        if !parsed.is_ca() {
            return Err(TlsError::Bad(format!("{} is not a CA certificate", dir.join(CA_CERT).display())));
        }
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca { cert_pem, issuer })
    }

    /// The CA's certificate (PEM): what every party trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate of `kind`, valid for `days`.
    pub fn issue(&self, kind: &Kind, days: u32) -> Result<Issued, TlsError> {
        let (from, until) = validity(days);
        self.issue_valid(kind, from, until)
    }

    /// Issues a certificate of `kind` valid from `from` until `until` (tests use it for
    /// expired certificates).
    pub fn issue_valid(&self, kind: &Kind, from: OffsetDateTime, until: OffsetDateTime) -> Result<Issued, TlsError> {
        kind.validate()?;
        let (cn, groups) = kind.subject();
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn.as_str());
        for g in &groups {
            p.distinguished_name.push(DnType::OrganizationName, g.as_str());
        }
        p.subject_alt_names = kind.addresses().iter().map(|a| san(a)).collect::<Result<_, _>>()?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = if kind.serves() {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = (from, until);
        p.serial_number = Some(serial());
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Issues a certificate of `kind` and writes it to `dir/<file>.crt` and `.key` (the
    /// key 0600); an existing pair is replaced only when `replace`. Returns the paths.
    pub fn issue_to(&self, dir: &Path, kind: &Kind, days: u32, replace: bool) -> Result<(PathBuf, PathBuf), TlsError> {
        let issued = self.issue(kind, days)?;
        let (crt, key) = (dir.join(format!("{}.crt", kind.file_name())), dir.join(format!("{}.key", kind.file_name())));
        if !replace {
            for p in [&crt, &key] {
                if p.exists() {
                    return Err(TlsError::Invalid(format!("{} exists (give --force to replace it)", p.display())));
                }
            }
        }
        // The key first: a certificate on disk always has its key beside it.
        write(&key, &issued.key_pem, true, replace)?;
        write(&crt, &issued.cert_pem, false, replace)?;
        Ok((crt, key))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    use super::*;
    use crate::identity;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().expect("certificates")
    }

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key")
    }

    fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
        let mut r = rustls::RootCertStore::empty();
        for c in certs(ca_pem) {
            r.add(c).expect("root");
        }
        Arc::new(r)
    }

    /// A TLS handshake in memory: a server with `server` (requiring a client certificate
    /// from `server_trusts`), a client trusting `client_trusts` connecting to `name` and
    /// presenting `client`. The client certificate the server verified, or the error.
    fn handshake(
        server: &Issued,
        server_trusts: &str,
        client: &Issued,
        client_trusts: &str,
        name: &str,
    ) -> Result<Vec<CertificateDer<'static>>, rustls::Error> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(server_trusts), provider())
            .build()
            .expect("verifier");
        let scfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&server.cert_pem), key(&server.key_pem))
            .expect("server config");
        let ccfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots(client_trusts))
            .with_client_auth_cert(certs(&client.cert_pem), key(&client.key_pem))
            .expect("client config");
        let mut s = rustls::ServerConnection::new(Arc::new(scfg)).expect("server");
        let mut c =
            rustls::ClientConnection::new(Arc::new(ccfg), ServerName::try_from(name.to_string()).expect("name"))
                .expect("client");
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("client out");
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).expect("server in");
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("server out");
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).expect("client in");
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s.peer_certificates().map(|p| p.to_vec()).unwrap_or_default());
            }
        }
        panic!("the handshake did not finish");
    }

    fn master(name: &str, addresses: &[&str]) -> Kind {
        Kind::Master { name: name.into(), addresses: addresses.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn a_master_and_a_node_issued_by_the_ca_handshake_and_the_node_is_identified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "flotilla-ca", 365).expect("init");
        let m = ca.issue(&master("n1", &["10.0.0.1", "master-1.example"]), 30).expect("master");
        let node = Kind::Node { name: "w1".into(), addresses: vec!["10.0.0.11".into()] };
        let w = ca.issue(&node, 30).expect("node");
        for name in ["10.0.0.1", "master-1.example"] {
            let seen = handshake(&m, ca.cert_pem(), &w, ca.cert_pem(), name).expect("handshake");
            let id = identity(&seen[0]).expect("identity");
            assert_eq!(id, crate::Identity { user: "system:node:w1".into(), groups: vec!["system:nodes".into()] });
        }
        let err = handshake(&m, ca.cert_pem(), &w, ca.cert_pem(), "10.0.0.2").expect_err("not its address");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn certificates_of_another_ca_are_refused_both_ways() {
        let (d1, d2) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let (ours, theirs) =
            (Ca::init(d1.path(), "ours", 365).expect("ca"), Ca::init(d2.path(), "theirs", 365).expect("ca"));
        let m = ours.issue(&master("n1", &["10.0.0.1"]), 30).expect("master");
        let admin = ours.issue(&Kind::Admin { user: "alice".into() }, 30).expect("admin");
        let stranger = theirs.issue(&Kind::Admin { user: "mallory".into() }, 30).expect("stranger");
        assert!(handshake(&m, ours.cert_pem(), &admin, ours.cert_pem(), "10.0.0.1").is_ok());
        let e = handshake(&m, ours.cert_pem(), &stranger, ours.cert_pem(), "10.0.0.1").expect_err("foreign client");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        let fake = theirs.issue(&master("n1", &["10.0.0.1"]), 30).expect("fake master");
        let e = handshake(&fake, ours.cert_pem(), &admin, ours.cert_pem(), "10.0.0.1").expect_err("foreign server");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn a_client_certificate_cannot_serve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "ca", 365).expect("ca");
        let admin = ca.issue(&Kind::Admin { user: "alice".into() }, 30).expect("admin");
        let e = handshake(&admin, ca.cert_pem(), &admin, ca.cert_pem(), "alice").expect_err("not a server");
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn identities_follow_the_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "ca", 365).expect("ca");
        let cases = [
            (Kind::Component { component: "scheduler".into(), addresses: vec![] }, "system:flotilla-scheduler", vec![]),
            (Kind::Admin { user: "alice".into() }, "alice", vec!["system:masters"]),
            (Kind::User { user: "bob".into(), groups: vec!["dev".into()] }, "bob", vec!["dev"]),
            (Kind::User { user: "carol".into(), groups: vec![] }, "carol", vec![]),
            (master("n2", &["10.0.0.2"]), "system:master:n2", vec!["system:masters"]),
        ];
        for (kind, user, groups) in cases {
            let issued = ca.issue(&kind, 1).expect("issue");
            let id = identity(&certs(&issued.cert_pem)[0]).expect("identity");
            assert_eq!((id.user.as_str(), id.groups.iter().map(String::as_str).collect::<Vec<_>>()), (user, groups));
        }
    }

    #[test]
    fn bad_requests_are_refused_and_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "ca", 365).expect("ca");
        let bad = [
            (master("n1", &[]), "needs its addresses"),
            (master("n1", &["not an address!"]), "neither an IP address nor a DNS name"),
            (Kind::Component { component: "proxy".into(), addresses: vec![] }, "no component"),
            (Kind::User { user: String::new(), groups: vec![] }, "1 to 64 printable"),
            (Kind::User { user: "eve".into(), groups: vec!["a\nb".into()] }, "1 to 64 printable"),
            (Kind::User { user: "eve".into(), groups: vec!["a".into(), "b".into()] }, "one group"),
        ];
        for (kind, want) in bad {
            let e = ca.issue_to(dir.path(), &kind, 30, false).expect_err("refused");
            assert!(e.to_string().contains(want), "{kind:?}: {e}");
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(files.len(), 2, "only the CA's files: {files:?}");
    }

    #[test]
    fn keys_are_private_files_are_never_overwritten_unless_asked_and_a_second_ca_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "ca", 365).expect("ca");
        let kind = Kind::Admin { user: "alice".into() };
        let (crt, key) = ca.issue_to(dir.path(), &kind, 30, false).expect("issue");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!((mode(&key), mode(&dir.path().join(CA_KEY)), mode(&crt)), (0o600, 0o600, 0o644));
        let before = std::fs::read_to_string(&crt).expect("read");
        let e = ca.issue_to(dir.path(), &kind, 30, false).expect_err("exists");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&crt).expect("read"), before, "untouched");
        ca.issue_to(dir.path(), &kind, 30, true).expect("replaced");
        assert_ne!(std::fs::read_to_string(&crt).expect("read"), before, "a new certificate");
        assert!(Ca::init(dir.path(), "again", 365).is_err(), "a second CA in the same place");
        // A CA whose key is not its certificate's is refused.
        let other = tempfile::tempdir().expect("tempdir");
        Ca::init(other.path(), "other", 365).expect("ca");
        std::fs::copy(other.path().join(CA_KEY), dir.path().join(CA_KEY)).expect("copy");
        let e = Ca::load(dir.path()).err().expect("mismatched key");
        assert!(e.to_string().contains("is not the key of"), "{e}");
    }
}
